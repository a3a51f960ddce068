"""Run report: power-law fit, figures hold the catalog's data, HTML sections, gallery storage, headless render."""

import base64
import json
import os
import re
import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest

from hpcblend.io.catalog import read_table
from hpcblend.config import default_job
from hpcblend.parallel.driver import run_job
from hpcblend.io.blends import write_blend
from hpcblend.diagnostics.sampler import StackSampler
from hpcblend.io.profiles import read_profiles, write_profiles
from hpcblend.diagnostics.gallery import gallery_record
from hpcblend.io.gallery import read_gallery, write_gallery
from hpcblend.report import (SECTION_IDS, fit_power_law, load_run, make_report, report_main, run_numbers,
                             scaling_mask, select_gallery_blends)
from hpcblend.report.figures import (fig_compare_runtime, fig_flags, fig_gallery_record, fig_rank_time,
                                     fig_runtime_scaling)
from hpcblend.simulate.synthetic import make_synthetic_blend, write_demo_blends

HEADINGS = ("Run overview", "1. How long does it take?", "2. What do failures look like?",
            "3. What fraction of blends raise exceptions?", "4. What fraction of blends are flagged?",
            "5. How does runtime per blend grow with n_peaks and footprint area?", "6. Where does the time go?")


# --------------------------------------------------------------------------- power law


def test_power_law_recovers_known_exponents():
    rng = np.random.default_rng(42)
    n = 600
    k = rng.integers(1, 40, n)
    area = np.exp(rng.uniform(np.log(100), np.log(30000), n)).round()
    t = 2e-5 * k ** 0.3 * area ** 1.2 * np.exp(rng.normal(0, 0.25, n))
    f = fit_power_law(t, k, area)
    assert abs(f["a"] - 0.3) < 0.05 and abs(f["b"] - 1.2) < 0.05
    assert f["c"] == pytest.approx(2e-5, rel=0.5)
    assert f["n"] == n and f["r2"] > 0.9
    assert 0 < f["a_err"] < 0.05 and 0 < f["b_err"] < 0.05 and f["c_err"] > 0
    assert abs(f["a"] - 0.3) < 4 * f["a_err"] and abs(f["b"] - 1.2) < 4 * f["b_err"]
    assert f["rms_dex"] == pytest.approx(0.25 / np.log(10), rel=0.15)
    # rows with t <= 0 or NaN are left out
    t2 = t.copy()
    t2[:10] = 0.0
    t2[10:20] = np.nan
    assert fit_power_law(t2, k, area)["n"] == n - 20


def test_power_law_degenerate_inputs():
    f = fit_power_law([1.0, 2.0], [1, 2], [10, 20])
    assert f["n"] == 2 and np.isnan(f["a"]) and "too few" in f["note"]
    f = fit_power_law(np.arange(1, 11.0), np.full(10, 3), np.arange(10, 20))
    assert np.isnan(f["a"]) and "not identifiable" in f["note"]


# --------------------------------------------------------------------------- a small real catalog


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """A demo run (6 synthetic blends + 1 that fails), a bare copy, and a copy with /gallery and /profile.

    The full copy keeps the /gallery the run wrote itself (records made during the run, with models) and gets
    a hand-made record of the failed blend (which has no pixels in the run: its file fails to read).
    """
    d = tmp_path_factory.mktemp("report")
    inp = d / "in"
    write_demo_blends(str(inp), n_blends=6)
    bad, _ = make_synthetic_blend(seed=7, n_sources=2, blend_id=7)
    bad.images[1, bad.peaks[0, 0], bad.peaks[0, 1]] = np.nan  # NaN inside the footprint: the blend fails
    write_blend(str(inp / "7.npz"), bad)
    out = d / "run.h5"
    job = default_job(("input.kind=blends", f"input.paths=['{inp}']", "input.bands=[g, r, i, z, y]",
                       "run.progress=false", f"output.path={out}"))
    sampler = StackSampler(rate_hz=200.0).start()
    with sampler.stage("fit"):
        run_job(job, output=str(out), progress=False)
    sampler.stop()
    bare = d / "bare.h5"
    shutil.copy(out, bare)
    with h5py.File(bare, "a") as f:  # whatever the driver stored itself: the report must cope without it
        for name in ("profile", "gallery"):
            if name in f:
                del f[name]
    full = d / "full.h5"
    shutil.copy(out, full)
    with h5py.File(full, "a") as f:
        if "profile" in f:
            del f["profile"]
    # profiles: the real one (rank 0) and a made-up rank 1 that waited half of the time
    p1 = dict(sampler.results(rank=1), stage_seconds={"fit": 0.5, "wait": 0.4, "mpi": 0.1})
    write_profiles(full, [sampler.results(rank=0), p1])
    # gallery: the run's own records, and a hand-made record of the failed blend (no model)
    raw = np.load(inp / "7.npz")
    rec7 = gallery_record(7, np.nan_to_num(raw["images"]), None, [[5, 5, 9, 9], [20, 20, 9, 9]], [True, True],
                          "grizy", "failed", info={"error": "made by the test"})
    write_gallery(full, [rec7])
    return {"dir": d, "run": str(out), "bare": str(bare), "full": str(full),
            "n_records": len(read_gallery(str(out))) + 1}


def test_catalog_fixture_has_a_failure(catalogs):
    b = read_table(catalogs["run"], "blends")
    assert len(b) == 7
    failed = b["error_type"] != b""
    assert failed.sum() == 1 and b["flag_failed"][failed].all()
    nums = run_numbers(load_run(catalogs["run"]))
    assert nums["exception_fraction"] == pytest.approx(1 / 7)
    assert nums["flags"]["flag_failed"]["count"] == 1
    assert nums["wall_s"] > 0 and nums["blends_per_s"] == pytest.approx(7 / nums["wall_s"])
    assert nums["core_hours"] == pytest.approx(nums["wall_s"] / 3600)


def test_run_writes_its_gallery(catalogs):
    """Records are made during the run: the fitted blends' records carry the observed-frame model."""
    run_recs = read_gallery(catalogs["run"])
    assert run_recs and all(r["model"] is not None for r in run_recs)
    b = read_table(catalogs["run"], "blends")
    rows = {int(i): k for k, i in enumerate(b["id"])}
    for r in run_recs:
        row = b[rows[r["blend_id"]]]
        assert "slowest" in r["reason"] and r["images"].shape == r["model"].shape
        assert r["child_boxes"].shape == (int(row["n_peaks"]), 4) and r["info"]["iterations"] == row["iterations"]
        # the residual of a converged fit is noise-like: much smaller than the data
        assert np.abs(r["residual"]).max() < np.abs(r["images"]).max()
    recs = read_gallery(catalogs["full"])
    assert len(recs) == catalogs["n_records"]
    by = {r["blend_id"]: r for r in recs}
    assert by[7]["model"] is None and by[7]["child_bad"].all() and by[7]["reason"] == "failed"


def test_gallery_round_trip(tmp_path, catalogs):
    blend, truth = make_synthetic_blend(seed=3, n_sources=3, blend_id=3)
    boxes = [[int(y) - 4, int(x) - 4, 9, 9] for y, x in blend.peaks]
    orig = gallery_record(3, blend.images, truth["noiseless"], boxes, [False, True, False], blend.bands, "x",
                          footprint=blend.footprint, info={"chi2_per_pixel": 1.0})
    path = tmp_path / "c.h5"
    shutil.copy(catalogs["bare"], path)
    # float16 storage keeps about three significant digits of each array
    write_gallery(path, [orig])
    (r,) = read_gallery(path)
    scale = np.abs(orig["images"]).max()
    assert np.abs(r["images"] - orig["images"]).max() < 1e-3 * scale
    res = orig["images"] - orig["model"]
    assert np.abs(r["residual"] - res).max() < 1e-3 * np.abs(res).max()
    np.testing.assert_array_equal(r["child_bad"], [False, True, False])
    np.testing.assert_array_equal(r["footprint"], blend.footprint)
    # float32 storage is exact; a second record of the same blend merges the reasons
    write_gallery(path, [orig], storage="float32")
    write_gallery(path, [dict(orig, reason="slowest")], storage="float32")
    (back,) = read_gallery(path)
    np.testing.assert_array_equal(back["images"], orig["images"])
    np.testing.assert_array_equal(back["model"], orig["model"])
    assert back["reason"] == "x; slowest"
    with pytest.raises(ValueError):
        gallery_record(1, np.zeros((3, 4, 4)), np.zeros((3, 4, 5)), [[0, 0, 1, 1]], [False], "gri", "x")
    assert read_gallery(catalogs["bare"]) == []


def test_select_gallery_blends(catalogs):
    b = read_table(catalogs["full"], "blends")
    chosen = select_gallery_blends(b, 2)
    assert chosen[0] == (7, "failed")  # the failed blend first
    assert [g for _, g in chosen].count("slowest") == 2 and len({i for i, _ in chosen}) == len(chosen)
    slow = [i for i, g in chosen if g == "slowest"]
    t = {int(i): float(v) for i, v in zip(b["id"], b["t_total"]) if int(i) != 7}
    assert slow == sorted(t, key=lambda i: -t[i])[:2]
    # only blends with a stored record are chosen
    have = [r["blend_id"] for r in read_gallery(catalogs["full"])]
    assert {i for i, _ in select_gallery_blends(b, 10, have)} == set(have)
    assert select_gallery_blends(b, 10, []) == []


# --------------------------------------------------------------------------- figures hold the data


def test_scaling_figure_holds_catalog_columns(catalogs):
    b = read_table(catalogs["run"], "blends")
    sel = scaling_mask(b)
    assert sel.sum() == 6 and not sel[b["error_type"] != b""].any()
    f = fit_power_law(b["t_total"][sel], b["n_peaks"][sel], b["footprint_area"][sel])
    fig = fig_runtime_scaling(b, f)
    ax0, ax1 = fig.axes[0], fig.axes[1]
    np.testing.assert_allclose(ax0.collections[0].get_offsets(),
                               np.column_stack([b["n_peaks"][sel], b["t_total"][sel]]))
    np.testing.assert_allclose(ax1.collections[0].get_offsets(),
                               np.column_stack([b["footprint_area"][sel], b["t_total"][sel]]))
    np.testing.assert_allclose(ax0.collections[0].get_array(), b["footprint_area"][sel])
    np.testing.assert_allclose(ax1.collections[0].get_array(), b["n_peaks"][sel])
    assert ax0.get_xscale() == "log" and ax0.get_yscale() == "log"


def test_other_figures_hold_catalog_values(catalogs):
    run = load_run(catalogs["full"])
    nums = run_numbers(run)
    fig = fig_flags(run)
    widths = [p.get_width() for p in fig.axes[0].patches]
    expected = [100 * nums["exception_fraction"]] + [100 * v["fraction"] for v in nums["flags"].values()] \
        + [100 * nums["any_flag_fraction"]]
    np.testing.assert_allclose(widths, expected)
    fig = fig_rank_time(run)
    by_stage = {c.get_label(): [p.get_width() for p in c.patches] for c in fig.axes[0].containers}
    np.testing.assert_allclose(by_stage["fit"], [run.profiles[0]["stage_seconds"]["fit"], 0.5])
    np.testing.assert_allclose(by_stage["wait"], [0.0, 0.4])
    np.testing.assert_allclose(by_stage["mpi"], [0.0, 0.1])
    fig = fig_compare_runtime(run, load_run(catalogs["run"]))
    b = run.blends
    ok = b["t_total"] > 0
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(),
                               np.column_stack([b["t_total"][ok], b["t_total"][ok]]))
    rec = read_gallery(catalogs["full"], [7])[0]
    fig = fig_gallery_record(rec, b[b["id"] == 7][0])
    title = fig.get_suptitle()
    assert "made by the test" not in title and "nan" in title.lower()  # the catalog's error message wins
    assert "flag_failed" in title
    reds = [p for p in fig.axes[0].patches if p.get_edgecolor()[0] > 0.9]
    assert len(reds) == 2


# --------------------------------------------------------------------------- the HTML report


def _sections(html):
    return re.findall(r'<section id="([a-z]+)">', html)


def test_report_on_bare_catalog(tmp_path, catalogs):
    index = make_report(catalogs["bare"], tmp_path / "bare")
    html = open(index, encoding="utf-8").read()
    assert _sections(html) == list(SECTION_IDS[:-1])
    assert "no <code>/gallery</code>" in html
    assert "Profiling was off" in html
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)  # nothing external
    etype = read_table(catalogs["bare"], "blends")["error_type"]
    assert etype[etype != b""][0].decode() in html  # the failed blend's exception type is listed
    for name in ("runtime_hist", "rank_time", "flags", "runtime_scaling"):
        assert open(tmp_path / "bare" / f"{name}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(tmp_path / "bare" / "summary.json"))
    assert summary["a"]["n_blends"] == 7


def test_report_full_with_compare_and_headless_render(tmp_path, catalogs):
    out = tmp_path / "full"
    assert report_main([catalogs["full"], "--out", str(out), "--compare", catalogs["run"]]) == 0
    index = out / "index.html"
    html = index.read_text(encoding="utf-8")
    assert _sections(html) == list(SECTION_IDS)
    for h in HEADINGS:
        assert h in html
    # images are embedded, and the same PNGs are files
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 8
    files = {p for p in os.listdir(out) if p.endswith(".png")}
    assert {"runtime_scaling.png", "compare_runtime.png", "compare_flux.png", "gallery_7.png"} <= files
    assert base64.b64decode(imgs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(base64.b64decode(i) for i in imgs) >= {open(out / "runtime_scaling.png", "rb").read()}
    assert 'id="gallery-7"' in html
    assert "<svg" in html and "stage:fit" in html  # the inline flame graph
    assert (out / "flamegraph.svg").exists() and (out / "profile.speedscope.json").exists()
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    summary = json.load(open(out / "summary.json"))
    assert summary["compare"]["runtime_ratio_median"] == pytest.approx(1.0)
    assert summary["compare"]["n_matched_sources"] > 0
    assert all(v["median_abs_rel"] == 0 for v in summary["compare"]["flux"].values())
    assert len(read_profiles(catalogs["full"])) == 2

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("headless Chromium not installed")
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-background-networking", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'chrome'}", "--dump-dom", index.resolve().as_uri()]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert time.time() - t0 < 120
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in dom
    for h in HEADINGS:
        assert f"<h2>{h}</h2>" in dom.replace("&gt;", ">")


def test_gallery_collector_keeps_failed_flagged_and_slowest():
    from hpcblend.diagnostics.gallery import GalleryCollector
    from hpcblend.io.schema import blend_spec

    rows = blend_spec().empty(12)
    rows["id"] = np.arange(1, 13)
    rows["t_total"] = [0.1, 0.5, 0.2, 0.9, 0.3, 0.05, 0.7, 0.01, 0.02, 0.03, 0.04, 0.8]
    rows["flag_failed"][[0, 2, 4]] = True
    rows["error_type"][0] = b"BlendDataError"
    rows["flag_not_converged"][[5, 6]] = True
    made = []

    def make(row):
        def f(reason):
            made.append(int(row["id"]))
            if int(row["id"]) == 3:
                raise RuntimeError("cannot make this one")
            return gallery_record(int(row["id"]), np.ones((3, 4, 4)), None, np.zeros((0, 4)), [], "gri", reason)
        return f

    g = GalleryCollector(max_failed=2, max_flagged=5, n_slowest=2)
    for r in rows:
        g.offer(r, make(r))
    recs = {r["blend_id"]: r["reason"] for r in g.records()}
    # failed: 1 kept, 3 raised while making (left out, counted), 5 kept (cap 2 reached after 1 and 5)
    assert g.n_errors == 1
    assert recs[1] == "failed" and recs[5] == "failed"
    assert recs[6] == "flagged" and recs[7] == "flagged"
    # slowest two: 4 (0.9) and 12 (0.8); 7 (0.7) was slow when offered but pushed out
    assert recs[4] == "slowest" and recs[12] == "slowest"
    assert set(recs) == {1, 5, 6, 7, 4, 12}
    assert 8 not in made and 9 not in made  # never made for blends that are not kept
