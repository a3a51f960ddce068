"""``hpcblend bench deblend``: smoke tests of the benchmark, beside scarlet_lite and without it.

scarlet_lite (the reference, ``../shared/reference/README.txt``) is optional: CI does not install
it. The first test checks the reference's figures when it can be imported and the one-line notice
when it cannot; the second makes the import fail on purpose, so both paths run on every machine.
"""

import json
import sys

import numpy as np
import pytest

from hpcblend.analysis.bench import FAR_WORSE_CHI2_FACTOR, _far_worse_fits, _far_worse_line, load_scarlet_lite
from hpcblend.cli import main
from hpcblend.io.blends import write_blend
from hpcblend.simulate.synthetic import make_synthetic_blend

NOTICE = "scarlet_lite is not installed"

HPCBLEND_FIGURES = ("n_blends", "total_s", "cpu_s", "init_s", "fit_s", "measure_s", "fit_fft_floor_s",
                    "median_chi2", "p90_chi2", "total_iterations", "exceptions", "not_converged")
REFERENCE_FIGURES = ("total_s", "cpu_s", "init_s", "fit_s", "chi2_median", "chi2_p90", "iterations_total",
                     "iterations_median", "exceptions", "not_converged", "settings", "warm_up_s")


def _scarlet_lite_importable() -> bool:
    try:
        load_scarlet_lite()
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def blend_files(tmp_path_factory):
    """Two small synthetic blends (2 and 3 sources, about 30 px) in the hsc_blends layout."""
    directory = tmp_path_factory.mktemp("bench_blends")
    paths = []
    for i, (n, shape) in enumerate([(2, (27, 27)), (3, (33, 31))]):
        blend, _ = make_synthetic_blend(seed=40 + i, n_sources=n, shape=shape, blend_id=i + 1)
        paths.append(write_blend(directory / f"{i + 1}.npz", blend))
    return [str(p) for p in paths]


def _run(paths, out, capfd):
    rc = main(["bench", "deblend", *paths, "--reference", "scarlet_lite", "--json", str(out), "--top", "2"])
    captured = capfd.readouterr()
    with open(out) as fh:
        report = json.load(fh)
    return rc, report, captured.out + captured.err


def _check_hpcblend(report, n):
    summary = report["summary"]
    for key in HPCBLEND_FIGURES:
        assert key in summary, key
    assert summary["n_blends"] == n and summary["total_s"] > 0 and summary["exceptions"] == 0
    assert len(report["blends"]) == n
    for row in report["blends"]:
        assert row["wall"] > 0 and row["iterations"] > 0 and np.isfinite(row["chi2_per_pixel"])


def test_bench_deblend_beside_reference(blend_files, tmp_path, capfd):
    rc, report, text = _run(blend_files, tmp_path / "bench.json", capfd)
    assert rc == 0, text
    _check_hpcblend(report, len(blend_files))
    if _scarlet_lite_importable():
        assert NOTICE not in text
        assert report["reference_status"] == "ok"
        ref = report["reference"]
        for key in REFERENCE_FIGURES:
            assert key in ref, key
        assert ref["total_s"] > 0 and ref["exceptions"] == 0 and ref["iterations_total"] > 0
        cmp_ = report["comparison"]
        assert cmp_["total_wall_ratio"] == pytest.approx(ref["total_s"] / report["summary"]["total_s"])
        summary = report["summary"]
        assert cmp_["init_fit_ratio"] == pytest.approx((ref["init_s"] + ref["fit_s"])
                                                       / (summary["init_s"] + summary["fit_s"]))
        assert summary["init_s"] + summary["fit_s"] < summary["total_s"]  # the measurement is in the total only
        assert cmp_["per_blend_wall_ratio"]["n"] == len(blend_files)
        assert cmp_["flux_ratio"]["n"] >= 4  # 2 + 3 children, one may have no flux in one of the two
        assert 0.5 < cmp_["flux_ratio"]["median"] < 2.0
        for row in report["blends"]:
            assert row["ref_wall"] > 0 and np.isfinite(row["ref_chi2_per_pixel"])
        assert "scarlet_lite/hpcblend" in text and "largest blend" in text
        fw = cmp_["far_worse_fits"]
        assert fw["rest_n"] + fw["scarlet_lite"]["n"] + fw["hpcblend"]["n"] == len(blend_files)
        assert "the other's chi2/px" in text
    else:
        _check_notice(report, text)


def test_far_worse_fits_are_counted_both_ways_and_left_out_of_the_like_for_like_ratio():
    def row(chi2, ref_chi2, wall, ref_wall):
        return dict(chi2_per_pixel=chi2, ref_chi2_per_pixel=ref_chi2, wall=wall, ref_wall=ref_wall)

    f = FAR_WORSE_CHI2_FACTOR
    rows = [row(1.0, 1.1, 1.0, 10.0),             # alike
            row(1.2, 1.0, 2.0, 12.0),             # alike
            row(1.0, 1.01 * f, 3.0, 0.5),         # scarlet_lite stopped early and wrong
            row(2.0, float("nan"), 1.0, 0.1),     # scarlet_lite's chi2 not finite: far worse too
            row(1.01 * f * 1.5, 1.5, 4.0, 9.0),   # hpcblend far worse
            row(float("nan"), float("nan"), 1.0, 1.0)]  # neither finite: neither far worse
    fw = _far_worse_fits(rows)
    assert fw["factor"] == f
    assert fw["scarlet_lite"] == dict(n=2, hpcblend_s=4.0, scarlet_lite_s=0.6)
    assert fw["hpcblend"] == dict(n=1, hpcblend_s=4.0, scarlet_lite_s=9.0)
    assert fw["rest_n"] == 3
    assert fw["rest_wall_ratio"] == pytest.approx((10.0 + 12.0 + 1.0) / (1.0 + 2.0 + 1.0))
    at_the_factor = _far_worse_fits([row(1.0, f, 1.0, 2.0)])  # "more than" the factor, not "at"
    assert at_the_factor["scarlet_lite"]["n"] == 0 and at_the_factor["rest_n"] == 1
    none_left = _far_worse_fits([row(1.0, 3 * f, 1.0, 2.0)])
    assert np.isnan(none_left["rest_wall_ratio"]) and none_left["rest_n"] == 0
    assert _far_worse_line(none_left).endswith("; no other blend to compare")
    line = _far_worse_line(fw)
    assert "scarlet_lite on 2 blends (scarlet_lite 0.600 s, hpcblend 4.000 s there)" in line
    assert "hpcblend on 1 (hpcblend 4.000 s, scarlet_lite 9.000 s)" in line
    assert line.endswith("total wall ratio over the other 3 blends 5.75x")


def _check_notice(report, text):
    lines = [line for line in text.splitlines() if NOTICE in line]
    assert len(lines) == 1, text
    assert "../shared/reference/README.txt" in lines[0] and lines[0].endswith("running hpcblend alone")
    assert report["reference"] is None and report["comparison"] is None
    assert report["reference_status"] == lines[0]
    assert "ref_wall" not in report["blends"][0]


def test_bench_deblend_reference_not_installed(blend_files, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "lsst.scarlet.lite", None)  # any import of it now raises ImportError
    rc, report, text = _run(blend_files[:1], tmp_path / "bench.json", capfd)
    assert rc == 0, text
    _check_hpcblend(report, 1)
    _check_notice(report, text)


def test_bench_tract_reports_every_stage_and_throughput(tmp_path, capsys):
    """``hpcblend bench tract JOB``: stage seconds that add up to the busy time, shares, throughput."""
    job = tmp_path / "tract.yaml"
    job.write_text("input:\n  kind: tract\n  tract_dir: tract\n  patch_inner_size: 200\n  patch_overlap: 40\n"
                   "  simulate:\n    enabled: true\n    shape: [400, 400]\n    bands: [g, r, i]\n    density: 40.0\n"
                   "    seed: 2\nrun:\n  progress: false\n")
    out = tmp_path / "bench.json"
    assert main(["bench", "tract", str(job), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "throughput:" in text and "measure" in text
    r = json.loads(out.read_text())
    assert r["n_patches"] == 4 and r["pixels"] == 400 * 400 and r["n_bands"] == 3
    assert abs(sum(r["stages"].values()) - r["busy_s"]) < 1e-6 and abs(sum(r["share"].values()) - 1) < 1e-6
    assert r["stages"]["fit"] > 0 and r["stages"]["detect"] > 0 and r["n_parents"] > 10
    assert r["mpx_bands_per_core_s"] == pytest.approx(0.16 * 3 / r["busy_s"])
    b = r["blended"]
    assert b["n"] > 0 and 0 < b["fit"] <= r["stages"]["fit"] * 1.01 + 1e-3  # within the fit stage
    assert b["fit_share"] == pytest.approx(b["fit"] / (b["init"] + b["fit"] + b["measure"]))
    assert "blended parents (" in text
    assert main(["bench", "tract", "--set", "input.kind=blends"]) == 2  # not a tract job: one line


def test_bench_deblend_scores_files_with_truth(tmp_path, capfd, monkeypatch):
    """Files of the simulated sets carry their truth: the bench scores each deblender's model flux against it."""
    from hpcblend.analysis.truth_metrics import OUTLIER_TOLERANCE
    from hpcblend.io.blend_truth import read_blend_truth
    from hpcblend.simulate.blend_sets import make_bright_galaxy_blends

    monkeypatch.setitem(sys.modules, "lsst.scarlet.lite", None)  # hpcblend alone: the same figures either way
    paths = make_bright_galaxy_blends(tmp_path / "bright", 2, seed=7)
    rc, report, text = _run([str(p) for p in paths], tmp_path / "bench.json", capfd)
    assert rc == 0, text
    truth = report["truth"]
    assert truth is not None and truth["scarlet_lite"] is None
    got = truth["hpcblend"]
    dff, bright = [], []
    for path, row in zip(paths, report["blends"]):
        t = read_blend_truth(path)
        i = t["bands"].index("i")
        d = (np.asarray(row["flux_model"]) - t["flux_image"][:, i]) / t["flux_image"][:, i]
        scored = ~t["saturated"] & (t["snr"][:, i] > 10)
        dff.extend(d[scored])
        bright.extend(d[scored & (t["snr"][:, i] > 50) & (t["nn_arcsec"] >= 1.0)])
    assert got["n"] == len(dff) > 0
    assert got["median_abs"] == pytest.approx(np.median(np.abs(dff)))
    assert got["bias"] == pytest.approx(np.median(dff))
    assert got["n_bright_isolated"] == len(bright)
    assert got["outliers"] == sum(abs(v) > OUTLIER_TOLERANCE for v in bright)
    assert "model flux vs truth, band i" in text
    floor = truth["known shapes"]  # the files' known-shape floor, on the same sources
    assert floor["n"] == got["n"] and floor["median_abs"] < got["median_abs"]
    assert "flux with the true shapes known (the noise's floor) vs truth, band i" in text


def test_bench_deblend_without_truth_reports_none(blend_files, tmp_path, capfd, monkeypatch):
    monkeypatch.setitem(sys.modules, "lsst.scarlet.lite", None)
    rc, report, text = _run(blend_files[:1], tmp_path / "bench.json", capfd)
    assert rc == 0 and report["truth"] is None and "vs truth" not in text
    assert "truth_flux" not in report["blends"][0]


def test_bench_deblend_takes_deblender_settings(blend_files, tmp_path, capfd):
    """``--set deblend.KEY=VALUE`` reaches hpcblend's fit and is named in the output; other sections and bad
    values stop with one line and exit 2."""
    out = tmp_path / "set.json"
    runs = {}
    for label, extra in (("default", []), ("weighted", ["--set", "deblend.morph_row_gamma=0.5"])):
        rc = main(["bench", "deblend", *blend_files, "--json", str(out), *extra])
        text = capfd.readouterr().out
        assert rc == 0, text
        with open(out) as fh:
            runs[label] = json.load(fh)
        line = [x for x in text.splitlines() if x.startswith("hpcblend settings")]
        assert line == ["hpcblend settings   " + ("default" if label == "default" else "deblend.morph_row_gamma=0.5")]
    assert runs["default"]["settings_changed"] == {}
    assert runs["weighted"]["settings_changed"] == {"morph_row_gamma": 0.5}
    paths = [[r["iterations"], r["chi2_per_pixel"]] for label in runs for r in runs[label]["blends"]]
    assert paths[:len(blend_files)] != paths[len(blend_files):]  # the setting changed the fits
    for bad, message in ((["--set", "run.numba_threads=2"], "deblend.KEY=VALUE only"),
                         (["--set", "deblend.morph_row_gamma=-1"], "key 'deblend.morph_row_gamma': must be >= 0")):
        assert main(["bench", "deblend", *blend_files, *bad]) == 2
        assert message in capfd.readouterr().err
