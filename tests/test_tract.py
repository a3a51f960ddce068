"""End-to-end tract runs (issue 4, "Tracts and patches"): a simulated 2x2-patch tract with overlap, checked
against its truth catalog with :mod:`hpcblend.analysis.validate`.

The shared tract (module scope): 1000 x 1000 px (2.8' square, 0.168"/px), five HSC bands, 60 galaxies/arcmin²
(+ 1 star/arcmin²), seed 3, cut into 2 x 2 patches of 500 px with 50 px overlap. Runs on it:

* ``default_run``: the pipeline's default settings (no background re-subtraction: coadds come
  background-subtracted; footprints grown by 6 px), ``run.schedule: cost`` — detection, ownership, losses,
  astrometry, forced photometry, models;
* ``file_order_run``: the same job with ``run.schedule: file`` (another patch order) — identical rows;
* ``photometry_run``: the default run validated at band S/N > 30 — the flux test. (The earlier defaults,
  a 128-px background re-subtraction and 2-px growth, read isolated fluxes 8-9 % low: -3 to -4 % from
  the background mesh eating galaxy light at this density, -4 % from footprints cutting the wings; the
  flux-conserving flux is a footprint sum, so these biases were the footprint's, not the deblender's.)
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest

from hpcblend.io.catalog import read_table
from hpcblend.config import job_from_dict
from hpcblend.errors import CatalogError, InputError
from hpcblend.analysis.validate import validate_tract
from hpcblend.analysis.validate_match import match_positions
from hpcblend.analysis.validate_report import format_report

SHAPE = (1000, 1000)
INNER, OVERLAP = 500, 50
DENSITY, SEED = 60.0, 3
BANDS = ("g", "r", "i", "z", "y")
VOLATILE = {"t_load", "t_detect", "t_deblend", "t_init", "t_fit", "t_measure", "t_total", "rank"}


def _job(tract_dir, out, *, inner=INNER, overlap=OVERLAP, **sections):
    data = {"input": {"kind": "tract", "tract_dir": str(tract_dir), "patch_inner_size": inner,
                      "patch_overlap": overlap},
            "run": {"progress": False, "log_level": "WARNING"},
            "profile": {"sample_hz": 0},
            "output": {"path": str(out)}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return job_from_dict(data, base_dir=os.path.dirname(str(out)))


def _run(job, out=None):
    from hpcblend.parallel.driver import run_job

    return run_job(job, output=out, progress=False)


# --------------------------------------------------------------------------------------------------------------
# the shared simulated tract and its runs
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tract(tmp_path_factory):
    from hpcblend.simulate.tract import simulate_tract

    d = tmp_path_factory.mktemp("tract") / "tract"
    simulate_tract(d, shape=SHAPE, bands=BANDS, density=DENSITY, star_density=1.0, seed=SEED)
    return d


@pytest.fixture(scope="module")
def default_run(tract):
    out = tract.parent / "default.h5"
    _run(_job(tract, out, run={"schedule": "cost"}))
    res, report = validate_tract(str(out), str(tract))
    print("\n--- default settings ---\n" + report)
    return out, res


@pytest.fixture(scope="module")
def photometry_run(tract, default_run):
    out, _ = default_run
    res, report = validate_tract(str(out), str(tract), flux_snr_min=30.0)
    print("\n--- default settings, band S/N > 30 ---\n" + report)
    return out, res


# --------------------------------------------------------------------------------------------------------------
# (a) detected once and only once; losses few and explained
# --------------------------------------------------------------------------------------------------------------

#: Loss-fraction bound for truth S/N > 10. Measured on this tract (seed 3): 31 of 333 (9.3 %) with either
#: settings: 12 "blended_unresolved" (a brighter neighbour's light at the source's centre is >= 1/4 of its own
#: expected peak significance, or it lies within one PSF FWHM), 16-17 "peak_culled" (a separate local maximum,
#: but inside a neighbour's footprint and less than detect.min_prominence = 3 sigma above the saddle), 1
#: "tract_edge", 1 "offset" (a galaxy 8 px from a twice brighter one: its deblended child is 3 px off), and
#: with the default settings 1 "patch_border" (see test_detected_once_default_settings). Seeds 1, 2, 4, 5 gave 10.3, 8.3, 8.2, 8.2 % (default settings) and
#: 10.6, 8.0, 7.9, 7.9 % (photometry settings), all explained, never a duplicate. At 60 galaxies/arcmin² these
#: are the expected blending losses of a 5-sigma, 3-sigma-prominence detection; 0.15 is 1.4x the worst seed.
MAX_LOSS_FRACTION = 0.15


def _check_once(res):
    d = res["duplicates"]
    assert d["n_truth_with_duplicates"] == 0, d["truth_ids"]
    assert d["repeated_ids"] == []
    assert d["n_cross_patch_pairs"] == 0, d["cross_patch_pairs"]
    assert d["n_cross_patch_pairs_within_radius"] == 0
    c = res["completeness"]
    assert res["sample"]["n"] > 250  # a real sample: ~330 truth sources above S/N 10
    assert c["loss_fraction"] < MAX_LOSS_FRACTION, res["losses"]["by_reason"]
    for loss in res["losses"]["sources"]:
        assert loss["reason"] != "unexplained", loss
        assert loss["reason"] != "failed_patch" and loss["reason"] != "parent_failed", loss
    assert res["patches"]["n"] == 4 and res["patches"]["n_failed"] == 0


def test_detected_once_default_settings(default_run):
    out, res = default_run
    _check_once(res)
    # Known defect, not of the ownership rule: with background re-subtraction each patch estimates its own
    # background over its outer box, so in the overlap the two patches' significance images differ (~0.2 sigma)
    # and a source near the threshold next to an inner border can be detected only by the patch that does
    # not own its peak (seed 3: truth 46, 0.4 px from the y = 500 border, significance 5.44 in patch 0 vs 5.26
    # in patch 2, which owns the peak pixel but fails min_area; seeds 1-5: 0-1 per tract). validate re-runs
    # each patch's detection to name this reason. No duplicate can arise that way (peaks are the same local
    # maxima), only such a loss.
    assert res["losses"]["by_reason"].get("patch_border", 0) <= 2
    # the blends are real: several deblended (multi-peak) parents, some written by two patches
    blends = read_table(str(out), "blends")
    multi = blends[blends["n_peaks"] > 1]
    assert len(multi) >= 10
    assert np.any(multi["n_peaks_owned"] < multi["n_peaks"]) or np.any(~blends["primary"])


def test_detected_once_consistent_detection(photometry_run):
    out, res = photometry_run
    _check_once(res)
    # without per-patch background re-estimation both patches see the same pixels in their overlap: no
    # border losses at all
    assert res["losses"]["by_reason"].get("patch_border", 0) == 0
    src = read_table(str(out), "sources")
    # every child lies in the inner box of the patch that wrote it
    pat = read_table(str(out), "patches")
    inner = {int(p["patch"]): p["inner_bbox"] for p in pat}
    for row in src:
        y0, x0, h, w = inner[int(row["patch"])]
        iy, ix = math.floor(row["peak_y"] + 0.5), math.floor(row["peak_x"] + 0.5)
        assert y0 <= iy < y0 + h and x0 <= ix < x0 + w


# --------------------------------------------------------------------------------------------------------------
# (b) flux-conserving fluxes; (c) astrometry
# --------------------------------------------------------------------------------------------------------------


def test_flux_conserving_isolated(photometry_run):
    _, res = photometry_run
    flux = res["flux"]
    for b in BANDS:
        st = flux["isolated"][b]
        assert st["n"] >= 10, (b, st)
        # measured (seed 3): g 3.5 %, r 3.4 %, i 4.3 %, z 3.1 %, y 1.6 %, the catalog's own errors alone giving
        # 2.6-3.4 %; biases within +-1 %
        assert st["median_abs"] <= 0.05, (b, st)
        assert abs(st["median"]) <= 0.03, (b, st)
    print("blendedness bins (band S/N > 30): " + "; ".join(
        f"[{r['lo']:.2f}, {r['hi']:.2f}) n={r['n']} " + " ".join(
            f"{b}={100 * r['bands'][b]['median_abs']:.1f}%" if r["bands"][b]["median_abs"] is not None else f"{b}=-"
            for b in BANDS) for r in flux["bins"]))
    # stars: the PSF flux on the neighbour-subtracted image is close to the truth
    for b in BANDS:
        st = flux["psf_flux_stars"][b]
        if st["n"] >= 3:
            assert st["median_abs"] <= 0.03, (b, st)


def test_astrometry_bright_isolated(default_run):
    _, res = default_run
    a = res["astrometry"]
    assert a["n"] >= 30 and a["n_nonfinite"] == 0
    # measured (seed 3): median 0.017", 90th percentile 0.047"
    assert a["median_arcsec"] < 0.05, a
    assert a["p90_arcsec"] < 0.15, a
    assert abs(a["median_dra_arcsec"]) < 0.02 and abs(a["median_ddec_arcsec"]) < 0.02, a


# --------------------------------------------------------------------------------------------------------------
# (d) forced photometry, (e) stored models
# --------------------------------------------------------------------------------------------------------------


def test_forced_photometry_every_child(default_run):
    out, res = default_run
    src = read_table(str(out), "sources")
    assert len(src) > 300
    assert np.all(np.isfinite(src["ra"])) and np.all(np.isfinite(src["dec"]))
    ok = ~(src["flag_parent_failed"] | src["flag_parent_skipped"])
    assert ok.sum() == len(src)  # nothing failed on this tract
    for b in BANDS:
        for col in (f"psf_flux_{b}", f"psf_flux_err_{b}", f"ap_flux_3_{b}", f"ap_flux_err_3_{b}", f"flux_{b}",
                    f"flux_err_{b}"):
            assert np.all(np.isfinite(src[col][ok])), col
        assert np.all(src[f"psf_flux_err_{b}"][ok] > 0)
    assert all(v == 0 for v in res["forced"]["missing_psf_flux"].values())


def test_model_renders(default_run):
    from hpcblend.io.models import read_model, render_model_rgb

    out, _ = default_run
    src = read_table(str(out), "sources")
    fitted = src[~src["flag_isolated_unfitted"] & ~src["flag_parent_failed"] & ~src["flag_parent_skipped"]]
    assert len(fitted) >= 10
    brightest = fitted[np.argmax(fitted["flux_model_i"])]
    model = read_model(str(out), int(brightest["id"]))
    assert model.id == int(brightest["id"]) and model.parent_id == int(brightest["parent_id"])
    y0, x0, h, w = model.box
    assert 0 <= y0 and 0 <= x0 and y0 + h <= SHAPE[0] and x0 + w <= SHAPE[1] and h > 0 and w > 0
    assert y0 <= brightest["peak_y"] < y0 + h and x0 <= brightest["peak_x"] < x0 + w
    cube = model.image()
    assert cube.shape == (len(BANDS), h, w) and np.all(np.isfinite(cube)) and cube.min() >= 0
    # the stored model is the fitted one: its sums are the catalog's model fluxes
    for k, b in enumerate(BANDS):
        assert cube[k].sum() == pytest.approx(brightest[f"flux_model_{b}"], rel=1e-3)
    rgb = render_model_rgb(model)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8 and rgb.max() > 0
    # an isolated, unfitted child has no stored model: a clear error
    unfitted = src[src["flag_isolated_unfitted"]]
    with pytest.raises(CatalogError, match="no model for id"):
        read_model(str(out), int(unfitted["id"][0]))


# --------------------------------------------------------------------------------------------------------------
# (f) patch order does not change the rows
# --------------------------------------------------------------------------------------------------------------


def _same_rows(a, b, table):
    assert a.dtype == b.dtype and len(a) == len(b), table
    for name in a.dtype.names:
        if name in VOLATILE:
            continue
        x, y = a[name], b[name]
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{table}.{name}")
            np.testing.assert_array_equal(x[~np.isnan(x)], y[~np.isnan(y)], err_msg=f"{table}.{name}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{table}.{name}")


def test_patch_order_identical_rows(tract, default_run):
    out_cost, _ = default_run
    out_file = tract.parent / "file_order.h5"
    _run(_job(tract, out_file, run={"schedule": "file"}))
    for table in ("sources", "blends", "patches", "models", "model_pixels"):
        _same_rows(read_table(str(out_cost), table), read_table(str(out_file), table), table)


# --------------------------------------------------------------------------------------------------------------
# (g) sources exactly on patch borders and corners
# --------------------------------------------------------------------------------------------------------------

_STAR_SIGMA = 1.7  # px, Gaussian PSF of the hand-made tracts
_SKY = 0.05  # counts per pixel, sky noise


def _gauss_pixels(shape, y, x, sigma):
    """A unit-flux circular Gaussian integrated over pixels (centres at integers), centred at (y, x)."""
    from scipy.special import erf

    def axis(n, c):
        e = (np.arange(n + 1) - 0.5 - c) / (math.sqrt(2.0) * sigma)
        return 0.5 * np.diff(erf(e))

    return np.outer(axis(shape[0], y), axis(shape[1], x))


def _write_star_tract(d, stars, shape=(400, 400), bands=("g", "r", "i"), seed=0, nan_box=None, psf_bands=None):
    """Stars (y, x, flux) on a noisy tract written with :func:`hpcblend.io.coadd.write_tract`; returns the WCS."""
    from hpcblend.io.coadd import write_tract
    from hpcblend.simulate.tract import make_tract_wcs

    rng = np.random.default_rng(seed)
    img = np.zeros((len(bands),) + tuple(shape), np.float64)
    for y, x, f in stars:
        prof = _gauss_pixels(shape, y, x, _STAR_SIGMA)
        for k in range(len(bands)):
            img[k] += f * (1.0 + 0.2 * k) * prof
    img += rng.normal(0.0, _SKY, img.shape)
    if nan_box is not None:
        y0, y1, x0, x1 = nan_box
        img[:, y0:y1, x0:x1] = np.nan
    var = np.full(img.shape, _SKY ** 2, np.float32)
    wcs, _ = make_tract_wcs(shape, 150.0, 2.0, 0.168)
    psf = _gauss_pixels((25, 25), 12, 12, _STAR_SIGMA)
    psf /= psf.sum()
    write_tract(d, bands, img.astype(np.float32), var, None, wcs, np.stack([psf] * len(bands)))
    return wcs


def test_border_and_corner_sources(tmp_path):
    # 400 x 400, inner 200, overlap 30: borders at y = 200 and x = 200; pixel 199 | 200 edge at 199.5
    stars = [(199.5, 100.0, 80.0),   # exactly on the pixel edge at the border (half-open: pixel 200 owns it)
             (200.0, 300.0, 80.0),   # first pixel of the second patch row
             (199.0, 260.0, 80.0),   # last pixel of the first patch row
             (100.0, 199.5, 80.0),   # on the vertical border
             (300.0, 200.5, 80.0),
             (199.5, 199.5, 120.0),  # the corner of four patches
             (60.0, 330.0, 80.0),    # away from borders
             (215.0, 60.0, 60.0),    # inside the overlap of two patches, not on the border
             (196.5, 140.0, 70.0),   # a blend straddling the border: 6 px apart across y = 199.5
             (202.5, 141.0, 50.0),
             (330.0, 197.0, 70.0),   # a blend straddling the vertical border
             (334.0, 203.0, 60.0)]
    d = tmp_path / "stars"
    _write_star_tract(d, stars)
    out = tmp_path / "stars.h5"
    _run(_job(d, out, inner=200, overlap=30))
    src = read_table(str(out), "sources")
    pat = read_table(str(out), "patches")
    assert list(pat["status"]) == [b"ok"] * 4
    assert len(np.unique(src["id"])) == len(src)
    truth = np.array([[x, y] for y, x, _ in stars])
    cat = np.stack([np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]),
                    np.where(np.isfinite(src["y"]), src["y"], src["peak_y"])], 1)
    t2c, c2t, dist = match_positions(truth, cat, 2.0, np.arange(len(stars)))
    assert np.all(t2c >= 0), [stars[i] for i in np.nonzero(t2c < 0)[0]]  # every star found ...
    assert len(src) == len(stars), src[["id", "peak_y", "peak_x", "patch"]]  # ... once, and nothing else
    for i, (y, x, _) in enumerate(stars):
        n_near = np.count_nonzero(np.hypot(cat[:, 0] - x, cat[:, 1] - y) < 3.0)
        assert n_near == 1, (stars[i], n_near)
    # the patch that wrote each star owns its peak pixel (half-open inner boxes)
    inner = {int(p["patch"]): p["inner_bbox"] for p in pat}
    for row in src:
        y0, x0, h, w = inner[int(row["patch"])]
        assert y0 <= row["peak_y"] < y0 + h and x0 <= row["peak_x"] < x0 + w
    # both stars of each straddling blend were deblended together (two peaks) in both patches that see them,
    # and each patch wrote only the child it owns
    blends = read_table(str(out), "blends")
    shared = blends[(blends["n_peaks"] == 2) & (blends["n_peaks_owned"] == 1)]
    assert len(shared) == 4, blends[["id", "patch", "n_peaks", "n_peaks_owned", "primary"]]
    assert np.count_nonzero(shared["primary"]) == 2
    assert np.max(dist) < 0.5


# --------------------------------------------------------------------------------------------------------------
# (h) bad tracts
# --------------------------------------------------------------------------------------------------------------

_FEW_STARS = [(80.0, 80.0, 60.0), (90.0, 300.0, 60.0), (300.0, 90.0, 60.0), (310.0, 310.0, 60.0)]


def _replace_band(d, band, shape=(400, 400), crval=(150.0, 2.0)):
    """Overwrite one band's coadd with a tract of another shape or WCS."""
    from hpcblend.io.coadd import write_tract
    from hpcblend.simulate.tract import make_tract_wcs

    other = d.parent / f"other_{band}"
    wcs, _ = make_tract_wcs(shape, crval[0], crval[1], 0.168)
    psf = _gauss_pixels((25, 25), 12, 12, _STAR_SIGMA)
    write_tract(other, (band,), np.zeros((1,) + shape, np.float32), np.full((1,) + shape, _SKY ** 2, np.float32),
                None, wcs, (psf / psf.sum())[None])
    os.replace(other / f"coadd_{band}.fits", d / f"coadd_{band}.fits")


@pytest.mark.parametrize("what", ["shape", "wcs"])
def test_bad_band_error_at_planning(tmp_path, what):
    """A band of another shape or WCS stops the run before any patch, naming the file and the HDU."""
    from hpcblend.units.source import plan_units

    d = tmp_path / "bad"
    _write_star_tract(d, _FEW_STARS)
    if what == "shape":
        _replace_band(d, "r", shape=(400, 410))
    else:
        _replace_band(d, "r", crval=(150.01, 2.0))
    with pytest.raises(InputError, match=r"coadd_r\.fits: HDU 'IMAGE'") as info:
        plan_units(_job(d, tmp_path / "x.h5", inner=200, overlap=30))
    assert ("(400, 410)" in str(info.value)) if what == "shape" else ("WCS" in str(info.value))
    with pytest.raises(InputError):  # and the run itself stops with the same error, writing nothing
        _run(_job(d, tmp_path / "x.h5", inner=200, overlap=30))
    assert not (tmp_path / "x.h5").exists()


def test_nan_region_fails_only_its_patch(tmp_path):
    # NaNs (no NO_DATA bit) over the whole outer box of patch 0,0 (rows/cols 0-230): that patch has no usable
    # pixel and fails; the others (outer boxes from 170) lose only their overlap with it, masked on reading.
    # (A NaN region covering part of a patch is masked, not a failure: tests/test_faults_tract.py.)
    d = tmp_path / "nan"
    _write_star_tract(d, _FEW_STARS, nan_box=(0, 230, 0, 230))
    out = tmp_path / "nan.h5"
    _run(_job(d, out, inner=200, overlap=30))
    pat = read_table(str(out), "patches")
    status = {int(p["patch"]): p["status"] for p in pat}
    assert status == {0: b"failed", 1: b"ok", 2: b"ok", 3: b"ok"}
    bad = pat[pat["patch"] == 0][0]
    assert bad["error_type"] == b"InputError"
    assert b"non-finite" in bad["error_message"] and b"coadd_g.fits" in bad["error_message"]
    src = read_table(str(out), "sources")
    assert 0 not in set(src["patch"].tolist())
    assert sorted(set(src["patch"].tolist())) == [1, 2, 3] and len(src) == 3  # the three other stars


def test_missing_psf_file(tmp_path):
    from hpcblend.units.source import plan_units

    d = tmp_path / "nopsf"
    _write_star_tract(d, _FEW_STARS)
    os.remove(d / "psf_i.fits")
    job = _job(d, tmp_path / "nopsf.h5", inner=200, overlap=30)
    with pytest.raises(InputError, match=r"psf_i\.fits"):
        plan_units(job)


# --------------------------------------------------------------------------------------------------------------
# MPI: 1 rank vs 2 ranks
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.mpi(min_size=2)
def test_one_and_two_ranks_identical_tract_rows(root_check):
    from mpi4py import MPI

    from hpcblend.parallel.driver import run_job
    from hpcblend.simulate.tract import simulate_tract

    comm = MPI.COMM_WORLD
    tmp = comm.bcast(tempfile.mkdtemp() if comm.rank == 0 else None, root=0)
    d = os.path.join(tmp, "tract")
    if comm.rank == 0:
        simulate_tract(d, shape=(400, 400), bands=("g", "r", "i"), density=80.0, seed=11)
    comm.Barrier()
    job = _job(d, os.path.join(tmp, "two.h5"), inner=200, overlap=30)
    out2 = run_job(job, progress=False)
    comm.Barrier()

    def check():
        out1 = run_job(job, output=os.path.join(tmp, "one.h5"), progress=False, comm=MPI.COMM_SELF)
        for table in ("sources", "blends", "patches", "models", "model_pixels"):
            _same_rows(read_table(out1, table), read_table(out2, table), table)
        pat = read_table(out2, "patches")
        assert len(pat) == 4 and set(pat["status"]) == {b"ok"}
        assert set(pat["rank"]) == {0, 1}
        assert len(read_table(out2, "sources")) > 20

    root_check(comm, check)


def test_report_text(default_run):
    """The text report names every section (what ``hpcblend validate`` prints)."""
    _, res = default_run
    text = format_report(res)
    for needle in ("truth S/N > 10", "duplicates:", "flux-conserving", "astrometry", "forced photometry",
                   "patches: 4", "targets:"):
        assert needle in text


def test_validate_cli(default_run, tmp_path, capsys):
    import json

    from hpcblend.analysis.validate import validate_main

    out, _ = default_run
    js = tmp_path / "v.json"
    # truth directory from the catalog's /config; the default settings miss the 5 % flux target: --check says so
    assert validate_main([str(out), "--json", str(js), "--check"]) == 1
    text = capsys.readouterr().out
    assert "flux_isolated_le_5pct FAIL" in text and "no_duplicates PASS" in text
    res = json.loads(js.read_text())
    assert res["duplicates"]["n_truth_with_duplicates"] == 0 and res["sample"]["n"] > 250
    assert validate_main([str(tmp_path / "missing.h5")]) == 2


def test_match_positions_one_to_one_brightest_first():
    truth = np.array([[10.0, 10.0], [11.0, 10.0], [50.0, 50.0]])
    cat = np.array([[10.6, 10.0], [np.nan, np.nan], [50.5, 50.0], [51.0, 50.0]])
    # truth 1 is brighter: it takes the catalog source nearest to it (0.4 px), truth 0 (0.6 px away) is unmatched
    t2c, c2t, dist = match_positions(truth, cat, 2.0, np.array([1, 0, 2]))
    assert t2c.tolist() == [-1, 0, 2] and c2t.tolist() == [1, -1, 2, -1]
    assert dist[1] == pytest.approx(0.4) and np.isnan(dist[0])


def test_fit_isolated_fits_one_peak_footprints_the_same_footprints(tract, default_run, tmp_path):
    """detect.fit_isolated: one-peak footprints go through the deblender (converged fits, model fluxes) instead
    of the patch's batch of unfitted ones; the same footprints and children either way."""
    out, _ = default_run
    fitted = tmp_path / "fit_isolated.h5"
    _run(_job(tract, fitted, detect={"fit_isolated": True}))
    b0, b1 = read_table(str(out), "blends"), read_table(str(fitted), "blends")
    s0, s1 = read_table(str(out), "sources"), read_table(str(fitted), "sources")
    np.testing.assert_array_equal(np.sort(b0["id"]), np.sort(b1["id"]))
    np.testing.assert_array_equal(np.sort(s0["id"]), np.sort(s1["id"]))
    iso0, iso1 = b0[b0["isolated"]], b1[b1["isolated"]]
    assert len(iso0) > 50 and len(iso0) == len(iso1)
    assert np.all(iso0["iterations"] == 0) and np.all(iso1["iterations"] > 0)
    assert np.all(iso1["converged"]) and not np.any(iso1["flag_not_converged"])
    single0 = np.isin(s0["parent_id"], iso0["id"])
    single1 = np.isin(s1["parent_id"], iso1["id"])
    assert np.all(s0["flag_isolated_unfitted"][single0]) and not np.any(s1["flag_isolated_unfitted"][single1])
    assert np.all(np.isnan(s0["flux_model_i"][single0])) and np.all(np.isfinite(s1["flux_model_i"][single1]))
    # both measure the same sources: forced PSF fluxes of the isolated children agree to a few per cent
    a = s0[single0][np.argsort(s0["id"][single0])]
    c = s1[single1][np.argsort(s1["id"][single1])]
    bright = a["psf_flux_i"] > 20 * a["psf_flux_err_i"]
    assert bright.sum() > 20
    assert np.median(np.abs(c["psf_flux_i"][bright] / a["psf_flux_i"][bright] - 1)) < 0.05
