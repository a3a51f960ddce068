"""Source injection into real blend files (issue 16): determinism, truth, end-to-end metrics."""

import glob
import hashlib
import os

import numpy as np
import pytest

from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job
from hpcblend.analysis.injection import inject_main, injection_metrics
from hpcblend.simulate.inject import PIXEL_SCALE, TRUTH_FILE, inject_blend, inject_blends, mag_to_flux, read_truth
from hpcblend.io.blends import BlendData, read_blend

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
BLENDS = sorted(glob.glob(os.path.join(DATA, "hsc_blends", "set1", "*.npz")))
COSMOS = os.path.join(DATA, "cosmos")

pytestmark = pytest.mark.skipif(not BLENDS or not os.path.isdir(COSMOS), reason="shared HSC/COSMOS data not found")


def _digest(paths):
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def _outputs(d):
    return sorted(glob.glob(os.path.join(d, "*.npz")) + [os.path.join(d, TRUTH_FILE)])


def test_deterministic_and_inputs_untouched(tmp_path):
    inputs = BLENDS[:3]
    before = _digest(inputs)
    mtimes = [os.stat(p).st_mtime_ns for p in inputs]
    outs = []
    for run in ("a", "b"):
        inject_blends(inputs, str(tmp_path / run), seed=7, per_blend=2, morphology="cosmos", cosmos_dir=COSMOS)
        outs.append(_digest(_outputs(str(tmp_path / run))))
    assert outs[0] == outs[1] and len(outs[0]) == 4  # 3 blend files + truth, byte-identical
    assert _digest(inputs) == before and [os.stat(p).st_mtime_ns for p in inputs] == mtimes
    inject_blends(inputs, str(tmp_path / "c"), seed=8, per_blend=2, morphology="cosmos", cosmos_dir=COSMOS)
    assert _digest(_outputs(str(tmp_path / "c"))) != outs[0]  # the seed matters

    # the new peaks are in the written files, kept (inside the grown footprint, unmasked)
    table, stamps, bands, meta = read_truth(str(tmp_path / "a" / TRUTH_FILE))
    assert len(table) == 6 and meta["n_injected"] == 6 and bands == ("g", "r", "i", "z", "y")
    for r in table:
        orig = read_blend(str(r["source_file"]))
        new = read_blend(str(tmp_path / "a" / str(r["blend_file"])))
        k = int(r["peak_index"])
        assert k >= orig.n_peaks and tuple(new.peaks[k]) == (r["peak_y"], r["peak_x"])
        assert new.peak_flags[k] == 0
        np.testing.assert_array_equal(new.peaks[:orig.n_peaks], orig.peaks)
        assert (new.footprint | ~orig.footprint).all()  # the footprint only grows
        assert 0.5 - 1e-9 <= r["separation"] * 1.0 and r["separation"] <= 3.0 + 1e-9
        # the stored stamp is the noiseless source, and its sum is the truth flux (within its box)
        n = len(bands) * r["stamp_h"] * r["stamp_w"]
        st = stamps[r["stamp_offset"]:r["stamp_offset"] + n].reshape(len(bands), r["stamp_h"], r["stamp_w"])
        np.testing.assert_allclose(st.sum(axis=(1, 2)), [r[f"flux_{b}"] for b in bands], rtol=1e-3)


def test_noiseless_injected_flux_matches_truth():
    real = read_blend(BLENDS[0])
    h = w = 101
    blend = BlendData(id=1, source="synthetic", bands=real.bands, images=np.zeros((5, h, w), np.float32),
                      variance=np.full((5, h, w), 1e-3, np.float32), mask=np.zeros((5, h, w), np.int32),
                      footprint=np.ones((h, w), bool), psfs=real.psfs, peaks=np.array([[50, 50]]))
    for morph, cos in (("sersic", None), ("cosmos", None)):
        if morph == "cosmos":
            from hpcblend.simulate.inject import load_cosmos_sample
            cos = load_cosmos_sample(COSMOS)
        new, rows = inject_blend(blend, np.random.default_rng(3), 2, mag_range=(22.0, 24.0), sep_range=(0.5, 1.0),
                                 morphology=morph, cosmos=cos, add_noise=False)
        assert len(rows) == 2
        np.testing.assert_array_equal(new.variance, blend.variance)
        assert np.all(blend.images == 0)  # the input is not modified
        diff = new.images.astype(np.float64).sum(axis=(1, 2))
        total = sum(r["flux_total"] for r in rows)
        np.testing.assert_allclose(diff, total, rtol=0.01)
        for r in rows:
            np.testing.assert_allclose(r["flux_total"], mag_to_flux(r["mag"]))
            np.testing.assert_allclose(r["flux"], r["flux_total"], rtol=0.01)
            d = np.hypot(r["y"] - 50, r["x"] - 50) * PIXEL_SCALE
            assert 0.5 <= d <= 1.0 and np.isclose(d, r["separation"])
            assert tuple(new.peaks[r["peak_index"]]) == (r["peak_y"], r["peak_x"])
            # without noise the yardstick's whole-image sum is the flux itself
            np.testing.assert_allclose(r["yard"]["sum"], r["flux"], rtol=1e-9)


def test_end_to_end_run_and_metrics(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for p in BLENDS[:5]:
        (src / os.path.basename(p)).write_bytes(open(p, "rb").read())
    out = str(tmp_path / "inj")
    assert inject_main(["blends", str(src), out, "--seed", "3", "--per-blend", "3", "--separation-range", "0.5",
                        "1.5", "--morphology", "cosmos", "--cosmos", COSMOS]) == 0
    truth = os.path.join(out, TRUTH_FILE)
    table = read_truth(truth)[0]
    assert len(table) >= 12
    job = job_from_dict({"input": {"paths": [out], "bands": ["g", "r", "i", "z", "y"]},
                         "output": {"path": str(tmp_path / "inj.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    cat = run_job(job, progress=False)
    m = injection_metrics(cat, truth)
    assert m["kind"] == "blends" and m["n"] == len(table) and 0 < m["completeness"] <= 1
    for est in ("model", "conserving", "yard_ap", "yard_psf", "yard_sum"):
        assert all(np.isfinite(m["all"]["stats"][est])), est
    assert np.isfinite(m["all"]["centroid"]["catalog"]) and np.isfinite(m["all"]["centroid"]["yardstick"])
    assert np.isfinite(m["all"]["ratio"]["model"]) and m["all"]["yardstick"] in ("yard_ap", "yard_psf")
    assert sum(r["n"] for r in m["by_mag"]) == len(table)
    assert np.all(table["snr"] > 0) and m["blendedness_from"] == "truth"
    # the truth is found from the run's /config; TRUTH positional or --truth
    assert inject_main(["metrics", cat]) == 0
    assert inject_main(["metrics", cat, "--truth", truth]) == 0
    text = capsys.readouterr().out
    assert "completeness" in text and "Y:ap" in text and "by magnitude" in text
