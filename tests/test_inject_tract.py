"""Source injection into a tract's coadds (issue 16): determinism, the truth, the metrics, the scorecard."""

import glob
import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest
from astropy.io import fits

from hpcblend.analysis.injection import find_injection_truth, injection_metrics
from hpcblend.analysis.injection_tract import tract_sample
from hpcblend.cli import main
from hpcblend.config import job_from_dict
from hpcblend.errors import InputError
from hpcblend.io.coadd import read_tract, tract_paths
from hpcblend.io.ledger import LEDGER_GROUP
from hpcblend.io.truth import read_truth
from hpcblend.parallel.driver import run_job
from hpcblend.simulate.inject_tract import STAMPS_FILE, inject_tract, read_stamps, stamp_of
from hpcblend.simulate.tract import simulate_tract

BANDS = ("g", "r", "i")
SHAPE = (256, 256)
N_INJ = 12


def _digest(d):
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(os.path.join(str(d), "*")))}


def _inject(src, out, **kw):
    args = dict(n=N_INJ, seed=4, morphology="sersic", mag_range=(20.5, 23.5))
    args.update(kw)
    return inject_tract(str(src), str(out), **args)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small simulated tract (truth included)."""
    d = tmp_path_factory.mktemp("inject_tract") / "base"
    simulate_tract(d, shape=SHAPE, bands=BANDS, density=40.0, star_density=1.0, seed=5)
    return d


@pytest.fixture(scope="module")
def injected(base):
    return _inject(base, base.parent / "injected")


@pytest.fixture(scope="module")
def run(injected):
    """hpcblend on the injected tract (one patch); its /config records the tract, hence the truth."""
    out = os.path.join(os.path.dirname(injected.directory), "run.h5")
    job = job_from_dict({"input": {"kind": "tract", "tract_dir": injected.directory, "patch_inner_size": 256,
                                   "patch_overlap": 0},
                         "run": {"progress": False, "warmup": False}, "output": {"path": out}},
                        base_dir=os.path.dirname(out))
    return run_job(job, progress=False)


def _corrupted(run, tmp_path, even, odd):
    """A copy of the run's catalog with the model fluxes of even rows scaled by ``even``, of odd rows by ``odd``."""
    bad = str(tmp_path / "corrupted.h5")
    shutil.copy(run, bad)
    with h5py.File(bad, "r+") as f:
        rows = f["sources"][...]
        factor = np.where(np.arange(len(rows)) % 2 == 0, even, odd)
        for b in BANDS:
            rows[f"flux_model_{b}"] *= factor
        f["sources"][...] = rows
        f[LEDGER_GROUP].attrs["n_checksums"] = 0  # on purpose: no checksum may catch this edit
    return bad


def test_deterministic_and_source_untouched(base, injected, tmp_path):
    before = _digest(base)
    mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(str(base), "*"))}
    again = _inject(base, tmp_path / "again")
    assert again.n_injected == injected.n_injected == N_INJ
    assert _digest(tmp_path / "again") == _digest(injected.directory)  # same seed: the same bytes
    assert _digest(base) == before and {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
    other = _inject(base, tmp_path / "other", seed=5)
    assert _digest(other.directory)["coadd_i.fits"] != _digest(injected.directory)["coadd_i.fits"]
    with pytest.raises(InputError, match="refusing to overwrite"):
        _inject(base, base)
    # PSF files copied byte for byte, headers kept, the new directory is a tract
    for b in BANDS:
        assert _digest(injected.directory)[f"psf_{b}.fits"] == before[f"psf_{b}.fits"]
        for hdu in (0, "IMAGE", "VARIANCE", "MASK"):
            h_old = fits.getheader(base / f"coadd_{b}.fits", hdu)
            h_new = fits.getheader(os.path.join(injected.directory, f"coadd_{b}.fits"), hdu)
            assert list(h_old.items()) == list(h_new.items()), (b, hdu)
    assert tract_paths(injected.directory).bands == BANDS


def test_added_counts_are_the_truth_flux(base, tmp_path):
    res = _inject(base, tmp_path / "clean", add_noise=False)
    old, new = read_tract(str(base)), read_tract(res.directory)
    truth = read_truth(res.truth_path)
    inj = truth[truth["injected"]]
    stamps, bands, meta = read_stamps(res.directory)
    assert bands == BANDS and meta["n_injected"] == N_INJ and not meta["add_noise"]
    placed = np.zeros(old.images.shape)
    for row in inj:
        stamp, box = stamp_of(row, stamps, len(bands))
        placed[(slice(None),) + box.slices] += stamp
        np.testing.assert_allclose(stamp.sum(axis=(1, 2)), [row[f"stamp_flux_{b}"] for b in bands], rtol=1e-5)
        # the stamp holds the profile's light (the truth flux) up to what falls outside its box
        np.testing.assert_allclose([row[f"stamp_flux_{b}"] for b in bands], [row[f"flux_{b}"] for b in bands],
                                   rtol=0.02)
    diff = new.images.astype(np.float64) - old.images
    np.testing.assert_allclose(diff.sum(axis=(1, 2)), [inj[f"stamp_flux_{b}"].sum() for b in bands], rtol=1e-5)
    np.testing.assert_allclose(diff, placed, atol=1e-5)
    np.testing.assert_array_equal(new.variance, old.variance)  # no noise added: no variance either
    np.testing.assert_array_equal(new.mask, old.mask)


def test_variance_grows_only_where_sources_were_added(base, injected):
    old, new = read_tract(str(base)), read_tract(injected.directory)
    truth = read_truth(injected.truth_path)
    stamps, bands, _ = read_stamps(injected.directory)
    placed = np.zeros(old.images.shape)
    for row in truth[truth["injected"]]:
        stamp, box = stamp_of(row, stamps, len(bands))
        placed[(slice(None),) + box.slices] += stamp
    dv = new.variance.astype(np.float64) - old.variance
    assert np.all(dv >= 0)
    assert np.all(dv[placed > 1e-3] > 0) and np.all(dv[placed <= 0] == 0)
    np.testing.assert_array_equal(new.images[placed == 0], old.images[placed == 0])


def test_truth_lists_every_source(base, injected):
    orig, truth = read_truth(str(base)), read_truth(injected.truth_path)
    assert len(truth) == len(orig) + N_INJ
    inj = np.asarray(truth["injected"])
    assert not inj[:len(orig)].any() and inj[len(orig):].all()
    for col in ("id", "x", "y", "flux_i", "type"):
        np.testing.assert_array_equal(truth[col][:len(orig)], orig[col])
    assert len(set(truth["id"])) == len(truth)
    assert truth.meta["INJECTED"] and truth.meta["INJNOISE"] == "simulation" and injected.yard_noise == "simulation"
    assert truth.meta["SKYSIG_I"] == orig.meta["SKYSIG_I"]
    rows = truth[inj]
    assert np.all(rows["snr"] > 0) and np.all(np.isfinite(rows["blendedness_true"]))
    assert np.all(np.isfinite(rows["yard_psf_flux_i"])) and np.all(np.isfinite(rows["yard_ap_flux_6_i"]))
    assert np.all(rows["separation"] > 0) and np.all(rows["host_id"] == -1)
    # the true-profile yardstick is unbiased: its errors are noise (yard_true_flux_err), not a bias
    pull = (rows["yard_true_flux_i"] - rows["stamp_flux_i"]) / rows["yard_true_flux_err_i"]
    assert np.all(np.abs(pull) < 5)
    assert os.path.isfile(os.path.join(injected.directory, STAMPS_FILE))


def test_real_tract_without_truth_and_separation(base, tmp_path):
    """A tract without truth.fits: hosts are detected peaks, the yardstick's noise is resampled."""
    real = tmp_path / "real"
    real.mkdir()
    for p in glob.glob(os.path.join(str(base), "*_*.fits")):
        shutil.copy(p, real)
    assert main(["inject", "tract", str(real), str(tmp_path / "out"), "--n", "5", "--sersic", "--seed", "2",
                 "--separation", "1.0", "2.0"]) == 0
    truth = read_truth(str(tmp_path / "out"))
    assert len(truth) == 5 and np.all(truth["injected"])
    assert truth.meta["INJNOISE"] == "resampled" and truth.meta["SKYSIG_I"] > 0 and truth.meta["NX"] == SHAPE[1]
    assert np.all(truth["host_id"] == -1)  # detected hosts have no truth id
    assert np.all((truth["host_separation"] >= 1.0) & (truth["host_separation"] <= 2.0))


def test_metrics_find_the_injections_and_the_yardstick_beats_a_corrupted_catalog(run, injected, tmp_path, capsys):
    assert find_injection_truth(run) == injected.truth_path
    s = tract_sample(run, injected.truth_path)
    assert s.n == N_INJ and s.found.sum() >= N_INJ - 2
    m = injection_metrics(run)
    assert m["kind"] == "tract" and m["completeness"] >= (N_INJ - 2) / N_INJ
    assert m["purity_by_mag"] is not None and sum(r["n"] for r in m["by_mag"]) == N_INJ
    all_ = m["all"]
    assert all_["centroid"]["catalog"] < 1.0
    assert np.isfinite(all_["ratio"]["conserving"])
    bad = injection_metrics(_corrupted(run, tmp_path, 1.3, 0.7))
    # the perfect deblender's flux errors are at most the corrupted catalog's (30 % off)
    yard = min(bad["all"]["stats"][y][1] for y in bad["yardsticks"])
    assert yard <= bad["all"]["stats"]["model"][1]
    assert bad["all"]["stats"]["model"][1] > 0.25 and bad["all"]["ratio"]["model"] > 1.5
    assert main(["inject", "metrics", run, "--truth", injected.directory, "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "by blendedness (truth)" in out and "purity" in out and "targets:" in out


def test_scorecard_fails_on_a_corrupted_injection_metric(run, injected, tmp_path, capsys):
    rules = tmp_path / "thresholds.yaml"
    rules.write_text("injection.completeness_snr10: {min: 0.8}\n"
                     "injection.flux_model_median_abs_snr10: {max: 0.2}\n"
                     "injection.flux_model_yardstick_ratio_snr10: {max: 20.0}\n")
    assert main(["scorecard", run, "--thresholds", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "injection.completeness_snr10" in out and "injection.flux_model_yardstick_ratio_snr10" in out
    bad = _corrupted(run, tmp_path, 1.5, 1.5)
    assert main(["scorecard", bad, "--thresholds", str(rules), "--truth", injected.truth_path]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL") and "injection.flux_model_median_abs_snr10" in last
