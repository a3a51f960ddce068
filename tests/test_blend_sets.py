"""Seeded simulated blend sets with truth inside the files, and the truth metric (issue 14 item 4)."""

import hashlib
import json
import os

import numpy as np
import pytest

from hpcblend.analysis.truth_metrics import flux_accuracy, format_accuracy
from hpcblend.cli import main as cli_main
from hpcblend.config import job_from_dict
from hpcblend.errors import ConfigError
from hpcblend.io.blend_truth import read_blend_truth
from hpcblend.io.blends import MASK_PLANES, peek_blend, read_blend
from hpcblend.io.npz import atomic_write, npz_bytes
from hpcblend.parallel.driver import run_job
from hpcblend.simulate.blend_sets import make_bright_galaxy_blends, make_large_blends
from hpcblend.simulate.known_shapes import known_shape_fluxes

SAT = 1 << MASK_PLANES["SAT"]
SMALL = dict(shape_range=(72, 96), n_sources_range=(8, 12), n_saturated_range=(2, 2))


def _digests(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def small_large(tmp_path_factory):
    """Two small 'large-set' blends (parametric galaxies, two saturated stars each)."""
    return make_large_blends(str(tmp_path_factory.mktemp("large")), 2, 5, **SMALL)


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    return make_bright_galaxy_blends(str(tmp_path_factory.mktemp("bright")), 2, 3)


def test_same_seed_same_bytes(tmp_path, small_large, bright):
    again = make_large_blends(str(tmp_path / "a"), 2, 5, **SMALL)
    assert [os.path.basename(p) for p in again] == [os.path.basename(p) for p in small_large]
    assert _digests(again) == _digests(small_large)
    assert _digests(make_bright_galaxy_blends(str(tmp_path / "b"), 2, 3)) == _digests(bright)
    first = make_bright_galaxy_blends(str(tmp_path / "c"), 1, 3)  # blend i does not depend on n_blends
    assert _digests(first) == _digests(bright[:1])
    assert _digests(make_bright_galaxy_blends(str(tmp_path / "d"), 2, 4)) != _digests(bright)


def test_shapes_peaks_and_reading(small_large, bright):
    for p in small_large:
        b, t = read_blend(p), read_blend_truth(p)
        assert all(72 <= n <= 96 for n in b.shape) and b.bands == ("g", "r", "i", "z", "y")
        assert 1 <= b.n_peaks <= 30 and t["n_peaks"] == b.n_peaks == peek_blend(p)["n_peaks"]
        assert t["set"] == "large" and t["flux"].shape == (b.n_peaks, 5) and t["is_star"].sum() >= 2
        assert np.all(t["det_snr"] > 5) and np.all(np.diff(t["det_snr"]) <= 0)  # peak order: detection S/N
        np.testing.assert_array_equal(b.peaks, np.floor(t["yx"] + 0.5).astype(np.int64))
        assert b.footprint[b.peaks[:, 0], b.peaks[:, 1]].all()  # every peak inside the parent
        np.testing.assert_allclose(b.psfs.sum(axis=(1, 2)), 1.0)
    for p in bright:
        b, t = read_blend(p), read_blend_truth(p)
        assert all(64 <= n <= 100 for n in b.shape) and 2 <= b.n_peaks <= 4 and t["set"] == "bright"
        main = int(np.argmax(t["snr_i"]))
        assert 100 <= t["snr_i"][main] <= 500 + 1e-6 and 0.5 <= t["hlr"][main] <= 1.5
        others = np.delete(np.arange(b.n_peaks), main)
        assert np.all((t["snr_i"][others] >= 10 - 1e-6) & (t["snr_i"][others] <= 40 + 1e-6))
        sep = np.hypot(*(t["yx"][others] - t["yx"][main]).T) * t["pixel_scale"]
        assert np.all((sep >= 0.8 - 1e-9) & (sep <= 2.0 + 1e-9))


def test_saturated_cores_masked(small_large):
    n_sat_stars = 0
    for p in small_large:
        b, t = read_blend(p), read_blend_truth(p)
        level = t["saturation"].astype(np.float32)[:, None, None]
        assert np.all(b.images <= level)
        np.testing.assert_array_equal((b.mask & SAT) != 0, b.images == level)  # SAT == clipped, exactly
        assert ((b.mask & SAT) != 0).any()
        assert b.bad_pixels()[(b.mask & SAT) != 0].all()  # the deblender gives them zero weight
        n_sat_stars += int(np.sum(t["saturated"] & t["is_star"]))
    assert n_sat_stars >= 2


def test_truth_flux_is_the_noiseless_stamp(tmp_path):
    (p,) = make_bright_galaxy_blends(str(tmp_path), 1, 11, n_neighbours_range=(0, 0), noise=False)
    b, t = read_blend(p), read_blend_truth(p)
    assert b.n_peaks == 1 and t["undetected_yx"].shape == (0, 2)
    np.testing.assert_allclose(t["flux_image"][0], b.images.sum(axis=(1, 2), dtype=np.float64), rtol=1e-5)
    share = t["flux_image"][0] / t["flux"][0]  # the box holds nearly all of the profile's flux
    assert np.all((share > 0.95) & (share <= 1.0 + 1e-6))
    assert np.isinf(t["nn_arcsec"][0]) and not t["saturated"][0]


def test_known_shape_floor_is_exact_without_noise_and_noise_limited_with_it(tmp_path, bright):
    """``truth_flux_known_shape``: weighted least squares with the true shapes recovers every flux exactly from
    a noiseless blend, and from a noisy one to within its noise (the floor ``hpcblend truth`` prints)."""
    paths = make_bright_galaxy_blends(str(tmp_path), 2, 3, noise=False)
    for p in paths:
        t = read_blend_truth(p)
        np.testing.assert_allclose(t["flux_known_shape"], t["flux"], rtol=1e-5)
    for p in bright:  # the same blends with noise: within 5σ of the truth, σ = 1/S/N of the source alone or more
        t = read_blend_truth(p)
        dff = t["flux_known_shape"] / t["flux"] - 1.0
        assert np.all(np.isfinite(dff))
        assert np.all(np.abs(dff[0]) < 5.0 / t["snr"][0])  # the bright galaxy: neighbours faint beside it
        assert np.any(dff != 0.0)


def test_known_shape_fluxes_fits_only_the_usable_pixels():
    """Two overlapping sources: both fluxes exact; in a band where one has no usable pixel, NaN for it and the
    other's flux from the pixels left."""
    y, x = np.mgrid[:20, :20]
    a = np.exp(-0.5 * ((y - 8) ** 2 + (x - 8) ** 2) / 2.0 ** 2)
    b = np.exp(-0.5 * ((y - 11) ** 2 + (x - 11) ** 2) / 2.0 ** 2) * (np.hypot(y - 11, x - 11) <= 4)
    stamps = [(0, 0, np.stack([a, a]) / a.sum()), (0, 0, np.stack([b, b]) / b.sum())]
    images = 300.0 * stamps[0][2] + 100.0 * stamps[1][2]
    usable = np.ones((2, 20, 20), dtype=bool)
    usable[1][b > 0] = False  # band 1: the second source's pixels all masked
    got = known_shape_fluxes(images, np.ones_like(images), usable, stamps)
    np.testing.assert_allclose(got[:, 0], [300.0, 100.0], rtol=1e-9)
    assert got[0, 1] == pytest.approx(300.0) and np.isnan(got[1, 1])


def test_psf_scale_widens_the_psf_and_nothing_else(tmp_path, bright):
    """``psf_scale`` (other seeing): the same blend (positions, S/N), every PSF FWHM times the scale."""
    (p,) = make_bright_galaxy_blends(str(tmp_path / "wide"), 1, 3, psf_scale=1.6)
    b0, t0, b1, t1 = read_blend(bright[0]), read_blend_truth(bright[0]), read_blend(p), read_blend_truth(p)
    np.testing.assert_allclose(t1["psf_fwhm"], 1.6 * t0["psf_fwhm"], rtol=1e-12)
    np.testing.assert_allclose(t1["yx"], t0["yx"])
    np.testing.assert_allclose(t1["snr_i"], t0["snr_i"], rtol=1e-9)  # the bright set draws S/N, not flux
    assert b1.psfs.max() < 0.5 * b0.psfs.max()  # a wider PSF: its peak pixel (1/FWHM²) well below
    np.testing.assert_allclose(b1.psfs.sum(axis=(1, 2)), 1.0)
    for bad in (0.2, 5.0, "1.6"):
        with pytest.raises(ConfigError, match="psf_scale"):
            make_large_blends(str(tmp_path / "bad"), 1, 5, psf_scale=bad, **SMALL)


def test_truth_metrics_on_a_run(tmp_path, bright, capsys):
    job = job_from_dict({"input": {"paths": list(bright), "bands": ["g", "r", "i", "z", "y"]},
                         "deblend": {"optimizer": "fista", "e_rel": 1e-3, "max_iter": 300},
                         "output": {"path": str(tmp_path / "run.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    cat = run_job(job, progress=False)
    m = flux_accuracy(cat, bright, isolation_arcsec=0.0)
    assert m["n_peaks"] == sum(read_blend(p).n_peaks for p in bright) and m["status"]["ok"] == m["n_peaks"]
    for est in ("model", "conserving"):
        assert m["pooled"][est]["n"] > 0
        assert all(np.isfinite(m["pooled"][est][k]) for k in ("bias", "median_abs", "p90_abs", "noise"))
    assert "pooled" in format_accuracy(m)
    floor = m["pooled"]["known_shape"]  # the known-shape floor on the same sources, and printed beside them
    assert floor["n"] == m["pooled"]["model"]["n"] and floor["median_abs"] < m["pooled"]["model"]["median_abs"]
    assert "known shapes" in format_accuracy(m).splitlines()[3]

    # a corrupted flux is caught: the truth of the brightest peak of the first file tripled
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    with np.load(bright[0], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    k = int(np.argmax(arrays["truth_snr_i"]))
    arrays["truth_flux_image"][k] *= 3.0
    paths = [str(corrupt / os.path.basename(bright[0]))] + list(bright[1:])
    atomic_write(paths[0], npz_bytes(arrays))
    bad = flux_accuracy(cat, paths, isolation_arcsec=0.0)
    hit = [o for o in bad["outliers"] if o["file"] == os.path.basename(bright[0]) and o["peak_index"] == k]
    assert hit and hit[0]["dff_model"]["i"] < -0.5 and hit[0]["dff_conserving"]["i"] < -0.5
    assert hit[0]["off_by"] == ["model", "conserving"]
    by_model = sum("model" in o["off_by"] for o in bad["outliers"])
    assert f": {len(bad['outliers'])} (model flux {by_model}, conserving flux only {len(bad['outliers']) - by_model})" \
        in format_accuracy(bad)
    before = [o for o in m["outliers"] if o["file"] == hit[0]["file"] and o["peak_index"] == k]
    if before:  # already off before: the error grew exactly as the tripled truth says
        np.testing.assert_allclose(hit[0]["dff_model"]["i"], (1.0 + before[0]["dff_model"]["i"]) / 3.0 - 1.0)
    assert bad["per_band"]["i"] != m["per_band"]["i"]

    out = tmp_path / "m.json"
    assert cli_main(["truth", cat, *bright, "--json", str(out)]) == 0
    assert "truth flux accuracy" in capsys.readouterr().out and json.loads(out.read_text())["n_files"] == 2
    assert cli_main(["truth", cat, str(tmp_path / "nothing*.npz")]) == 2
