"""Faults in a tract's inputs (failure policy: bad data become masked pixels or flagged rows, never a lost patch).

One simulated tract per module (600 x 600 px, bands g r i, 60 galaxies/arcmin², seed 3; 2 x 2 patches of
300 px with 40 px overlap; ~110 ``/blends`` rows) and one clean run of it; every case copies the tract, damages
the copy's FITS files and runs it again (1 rank, in process) or only plans it:

* one NaN / one inf image pixel (no mask bit) at a child's peak, a 10 x 10 block of zero variance: the pixels
  are masked on reading (``n_bad_pixels``), every patch is ``ok``, >= 95 % of the clean run's blends keep
  their ids, the touched blend is measured with finite fluxes;
* a band NaN over a patch's whole outer box: only that patch fails, naming the file, band and patch;
* a missing ``coadd_<band>.fits``: an :class:`InputError` at planning naming the file (whether the band's PSF
  file, a ``BANDS`` card or ``truth.fits`` says it should exist), unless ``input.bands`` leaves the band out;
* WCS-difference messages print plain numbers;
* a programming error in a patch or a blend stops the job instead of becoming a failed row.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from hpcblend.io.catalog import read_table
from hpcblend.config import job_from_dict
from hpcblend.errors import InputError, NumericalFailure
from hpcblend.io.masks import MASK_PLANES
from hpcblend.geometry import Box
from hpcblend.skymap import make_patches

SHAPE = (600, 600)
BANDS = ("g", "r", "i")
INNER, OVERLAP = 300, 40
NO_DATA = 1 << MASK_PLANES["NO_DATA"]
PATCHES = make_patches(SHAPE, INNER, OVERLAP)


def _job(tract_dir, out, **sections):
    data = {"input": {"kind": "tract", "tract_dir": str(tract_dir), "patch_inner_size": INNER,
                      "patch_overlap": OVERLAP},
            "run": {"progress": False, "log_level": "ERROR", "warmup": False},
            "profile": {"sample_hz": 0},
            "output": {"path": str(out)}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return job_from_dict(data, base_dir=os.path.dirname(str(out)))


def _run(job):
    from hpcblend.parallel.driver import run_job

    return run_job(job, progress=False)


def _tables(out):
    return {name: read_table(str(out), name) for name in ("patches", "blends", "sources")}


def _copy(tract, tmp_path, name="copy"):
    d = tmp_path / name
    shutil.copytree(tract, d)
    for f in os.listdir(d):
        os.chmod(d / f, 0o644)
    return d


def _poke(path, hdu_name, func):
    with fits.open(path, mode="update") as hdul:
        func(hdul[hdu_name].data)


# --------------------------------------------------------------------------------------------------------------
# the shared tract and its clean run
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tract(tmp_path_factory):
    from hpcblend.simulate.tract import simulate_tract

    d = tmp_path_factory.mktemp("faults") / "tract"
    simulate_tract(d, shape=SHAPE, bands=BANDS, density=60.0, star_density=1.0, seed=3)
    for name in os.listdir(d):  # the shared copy must stay clean: every case works on its own copy
        os.chmod(d / name, 0o444)
    return d


@pytest.fixture(scope="module")
def clean(tract):
    out = tract.parent / "clean.h5"
    _run(_job(tract, out))
    tabs = _tables(out)
    assert list(tabs["patches"]["status"]) == [b"ok"] * 4
    assert (tabs["patches"]["n_bad_pixels"] == 0).all()
    assert len(tabs["blends"]) > 60 and np.count_nonzero(tabs["blends"]["n_peaks"] >= 2) >= 10
    return tabs


def _multi_peak(clean, *, shared=False, max_area=None):
    """A /blends row of the clean run with >= 2 peaks, not truncated; ``shared``: seen by two patches."""
    b = clean["blends"]
    ok = (b["n_peaks"] >= 2) & b["primary"] & ~b["flag_footprint_truncated"] & ~b["flag_failed"]
    ok &= (b["n_peaks_owned"] < b["n_peaks"]) if shared else (b["n_peaks_owned"] == b["n_peaks"])
    if max_area is not None:
        ok &= b["footprint_area"] <= max_area
    rows = b[ok]
    assert len(rows), "no such blend in the simulated tract"
    return rows[np.argmin(rows["footprint_area"])]


def _peak(clean, blend):
    """(y, x) tract pixel of the blend's first child owned by the blend's patch."""
    s = clean["sources"]
    kids = s[s["parent_id"] == blend["id"]]
    kids = kids[np.argsort(kids["peak_index"])]
    return int(kids["peak_y"][0]), int(kids["peak_x"][0])


def _expected_bad(box: Box) -> dict:
    """Patch number -> pixels of ``box`` inside the patch's outer box (what n_bad_pixels counts per band)."""
    return {p.flat: (p.outer & box).area for p in PATCHES}


def _check_masked_run(clean, bad, box, yx):
    """The common checks of a run with bad pixels in ``box`` (one band) around the child peak ``yx``."""
    pat = bad["patches"]
    assert list(pat["status"]) == [b"ok"] * 4, pat[["patch", "status", "error_message"]]
    got = {int(p["patch"]): int(p["n_bad_pixels"]) for p in pat}
    assert got == _expected_bad(box)
    assert sum(got.values()) >= 1
    kept = np.isin(clean["blends"]["id"], bad["blends"]["id"])
    assert kept.mean() >= 0.95, (kept.mean(), len(clean["blends"]))
    failed = bad["blends"]["flag_failed"]
    assert np.count_nonzero(failed) <= np.count_nonzero(clean["blends"]["flag_failed"]), \
        bad["blends"][failed][["id", "error_message"]]
    # the child at the damaged pixel is still found, and its blend measured with finite fluxes in every band
    s = bad["sources"]
    d = np.hypot(s["peak_y"] - yx[0], s["peak_x"] - yx[1])
    assert d.min() <= 2.0, d.min()
    child = s[np.argmin(d)]
    parent = bad["blends"][bad["blends"]["id"] == child["parent_id"]]
    assert len(parent) == 1 and not parent["flag_failed"][0]
    kids = s[s["parent_id"] == child["parent_id"]]
    for b in BANDS:
        assert np.isfinite(kids[f"flux_{b}"]).all() and np.isfinite(kids[f"flux_model_{b}"]).all(), b
    return parent[0]


# --------------------------------------------------------------------------------------------------------------
# bad pixels are masked, counted, and cost no patch
# --------------------------------------------------------------------------------------------------------------


def test_one_nan_pixel_is_masked(tract, clean, tmp_path):
    blend = _multi_peak(clean)
    y, x = _peak(clean, blend)
    d = _copy(tract, tmp_path)

    def nan(a):
        a[y, x] = np.nan
    _poke(d / "coadd_r.fits", "IMAGE", nan)
    out = tmp_path / "nan.h5"
    _run(_job(d, out))
    parent = _check_masked_run(clean, _tables(out), Box((y, x), (1, 1)), (y, x))
    # one masked pixel of a footprint of several hundred: the blend touching it is flagged (a tract blend with
    # any NO_DATA pixel in its footprint), the pixel has zero weight, the fluxes are finite
    assert parent["n_peaks"] >= 2
    assert parent["flag_incomplete_data"], parent
    flagged = _tables(out)["blends"]["flag_incomplete_data"]
    assert flagged.sum() <= 2  # only the blend(s) touching the pixel (one per patch that holds it)


def test_one_inf_pixel_in_overlap_is_masked(tract, clean, tmp_path):
    blend = _multi_peak(clean, shared=True)  # in the overlap of two patches: both count the pixel
    y, x = _peak(clean, blend)
    d = _copy(tract, tmp_path)

    def inf(a):
        a[y, x] = np.inf
    _poke(d / "coadd_g.fits", "IMAGE", inf)
    out = tmp_path / "inf.h5"
    _run(_job(d, out))
    bad = _tables(out)
    parent = _check_masked_run(clean, bad, Box((y, x), (1, 1)), (y, x))
    assert np.count_nonzero(bad["patches"]["n_bad_pixels"] == 1) >= 2
    assert parent["flag_incomplete_data"], parent


def test_zero_variance_block_is_masked_and_flagged(tract, clean, tmp_path):
    blend = _multi_peak(clean, max_area=600)  # small: 100 masked pixels are > 10 % of the footprint
    y, x = _peak(clean, blend)
    box = Box((y - 5, x - 5), (10, 10))
    d = _copy(tract, tmp_path)

    def zero(a):
        a[box.slices] = 0.0
    _poke(d / "coadd_i.fits", "VARIANCE", zero)
    out = tmp_path / "zerovar.h5"
    _run(_job(d, out))
    bad = _tables(out)
    parent = _check_masked_run(clean, bad, box, (y, x))
    assert parent["n_peaks"] >= 2
    assert parent["flag_incomplete_data"], parent  # the deblender's flag for > 10 % of the footprint masked
    assert int(np.sum(bad["patches"]["n_bad_pixels"])) >= 100


def test_band_bad_everywhere_fails_only_its_patch(tract, clean, tmp_path):
    p0 = PATCHES[0]
    d = _copy(tract, tmp_path)

    def nan(a):
        a[p0.outer.slices] = np.nan
    _poke(d / "coadd_i.fits", "IMAGE", nan)
    out = tmp_path / "bandnan.h5"
    _run(_job(d, out))
    bad = _tables(out)
    pat = bad["patches"]
    status = {int(p["patch"]): p["status"] for p in pat}
    assert status == {0: b"failed", 1: b"ok", 2: b"ok", 3: b"ok"}
    row = pat[pat["patch"] == 0][0]
    msg = row["error_message"].decode()
    assert row["error_type"] == b"InputError"
    assert "coadd_i.fits" in msg and "band 'i'" in msg and f"patch {p0.name}" in msg, msg
    # the other patches lose only their overlap with it, masked and counted
    expected = _expected_bad(p0.outer)
    for p in pat[pat["patch"] != 0]:
        assert int(p["n_bad_pixels"]) == expected[int(p["patch"])] > 0
    assert 0 not in set(bad["sources"]["patch"].tolist()) and 0 not in set(bad["blends"]["patch"].tolist())
    others = clean["blends"][clean["blends"]["patch"] != 0]
    assert np.isin(others["id"], bad["blends"]["id"]).mean() >= 0.95


def test_read_masks_every_kind_of_bad_pixel(tmp_path):
    """NaN/inf image, NaN/inf/0/negative variance: masked (image 0, variance inf, NO_DATA), counted per band."""
    from hpcblend.io.coadd import check_tract, read_box, read_tract, write_tract

    d, images, variance, mask = _tiny_tract(tmp_path)
    images[0, 1, 1], images[0, 2, 2] = np.nan, -np.inf
    variance[1, 3, 3], variance[1, 4, 4], variance[1, 5, 5], variance[1, 6, 6] = np.nan, np.inf, 0.0, -1.0
    images[2, 7, 7] = np.nan
    mask[2, 7, 7] = NO_DATA  # already flagged: kept as stored, not counted
    images[2, 0, 0] = np.nan  # the pixel check_tract reads: not an error at planning
    write_tract(d, BANDS, images, variance, mask, _wcs(), _psfs(), tract=0)
    assert check_tract(d) == (20, 30)
    data = read_tract(d)
    assert data.n_bad_pixels.tolist() == [2, 4, 1]
    for b, y, x in [(0, 1, 1), (0, 2, 2), (1, 3, 3), (1, 4, 4), (1, 5, 5), (1, 6, 6), (2, 0, 0)]:
        assert data.images[b, y, x] == 0 and np.isinf(data.variance[b, y, x]) and data.mask[b, y, x] & NO_DATA
    assert np.isnan(data.images[2, 7, 7])
    assert np.count_nonzero(data.bad_pixels()) == 8
    assert read_box(d, Box((10, 10), (5, 5))).n_bad_pixels.tolist() == [0, 0, 0]
    # a box where one band has no usable pixel at all: an error naming file, band and box ...
    images[1, :10, :10] = np.nan
    write_tract(d, BANDS, images, variance, mask, _wcs(), _psfs(), tract=0)
    with pytest.raises(InputError, match=r"coadd_r\.fits: band 'r': no usable pixel in box \[0:8, 0:8\]"):
        read_box(d, Box((0, 0), (8, 8)))
    # ... but not where NO_DATA says so (the box's other bad pixels: g (1, 1), (2, 2) and i (0, 0))
    mask[1, :10, :10] = NO_DATA
    write_tract(d, BANDS, images, variance, mask, _wcs(), _psfs(), tract=0)
    assert read_box(d, Box((0, 0), (8, 8))).n_bad_pixels.tolist() == [2, 0, 1]


# --------------------------------------------------------------------------------------------------------------
# a missing band file
# --------------------------------------------------------------------------------------------------------------


def test_missing_coadd_is_an_error_at_planning(tract, tmp_path):
    from hpcblend.units.source import plan_units

    d = _copy(tract, tmp_path)
    os.remove(d / "coadd_i.fits")
    out = tmp_path / "missing.h5"
    with pytest.raises(InputError, match=r"coadd_i\.fits: coadd file for band 'i' not found.*psf_i\.fits exists"):
        plan_units(_job(d, out))
    with pytest.raises(InputError, match=r"coadd_i\.fits"):
        _run(_job(d, out))
    assert not out.exists()
    # the job lists the remaining bands: it runs on them
    _run(_job(d, out, input={"bands": ["g", "r"]}))
    tabs = _tables(out)
    assert list(tabs["patches"]["status"]) == [b"ok"] * 4
    assert "flux_g" in tabs["sources"].dtype.names and "flux_i" not in tabs["sources"].dtype.names
    assert len(tabs["sources"]) > 50


def test_missing_band_found_from_bands_card_and_truth(tract, tmp_path):
    """Without the band's PSF file, the coadds' BANDS cards name it; without those, truth.fits does."""
    from hpcblend.io.coadd import check_tract, tract_paths

    d = _copy(tract, tmp_path)
    os.remove(d / "coadd_i.fits")
    os.remove(d / "psf_i.fits")
    with pytest.raises(InputError, match=r"coadd_i\.fits: coadd file for band 'i' not found.*coadd_g\.fits lists "
                                         r"BANDS = 'g,r,i'"):
        check_tract(d)
    for b in ("g", "r"):
        with fits.open(d / f"coadd_{b}.fits", mode="update") as hdul:
            del hdul[0].header["BANDS"]
    with pytest.raises(InputError, match=r"coadd_i\.fits: .*truth\.fits has a column 'flux_i'"):
        check_tract(d)
    assert check_tract(d, ("g", "r")) == SHAPE  # listed bands: only those are required
    os.remove(d / "truth.fits")
    assert tract_paths(d).bands == ("g", "r")  # nothing names the band any more


def test_truth_file_name_matches_simulate():
    import hpcblend.io.coadd as coadd
    import hpcblend.simulate.tract as simulate

    assert coadd._TRUTH_FILE == simulate.TRUTH_FILE


# --------------------------------------------------------------------------------------------------------------
# WCS messages
# --------------------------------------------------------------------------------------------------------------


def _wcs(crval=(150.0, 2.0), crpix=(15.5, 10.5), scale=0.168):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = [[-scale / 3600.0, 0.0], [0.0, scale / 3600.0]]
    return w


def _psfs(size=11):
    yy, xx = np.mgrid[:size, :size] - size // 2
    p = np.exp(-(xx * xx + yy * yy) / 4.5)
    return np.stack([p / p.sum()] * len(BANDS))


def _tiny_tract(tmp_path):
    from hpcblend.io.coadd import write_tract

    rng = np.random.default_rng(1)
    images = rng.normal(0.0, 1.0, (len(BANDS), 20, 30)).astype(np.float32)
    variance = np.ones(images.shape, np.float32)
    mask = np.zeros(images.shape, np.int32)
    d = tmp_path / "tiny"
    write_tract(d, BANDS, images, variance, mask, _wcs(), _psfs(), tract=0)
    return d, images, variance, mask


@pytest.mark.parametrize("kind, wcs, expect", [
    ("CRVAL", _wcs(crval=(150.01, 2.0)), "CRVAL [150.01, 2.0] != [150.0, 2.0]"),
    ("CRPIX", _wcs(crpix=(15.5, 11.25)), "CRPIX [15.5, 11.25] != [15.5, 10.5]"),
    ("CD", _wcs(scale=0.2), "CD (pixel scale matrix) [-5.5555"),
])
def test_wcs_message_plain_numbers(tmp_path, kind, wcs, expect):
    from hpcblend.io.coadd import check_tract, write_tract

    d, images, variance, mask = _tiny_tract(tmp_path)
    write_tract(d, ("r",), images[1:2], variance[1:2], mask[1:2], wcs, _psfs()[1:2], tract=0)
    with pytest.raises(InputError) as info:
        check_tract(d)
    msg = str(info.value)
    assert "coadd_r.fits: HDU 'IMAGE': WCS differs" in msg and expect in msg, msg
    assert "np." not in msg and "float64" not in msg, msg


# --------------------------------------------------------------------------------------------------------------
# programming errors are never swallowed; data errors still are flagged rows
# --------------------------------------------------------------------------------------------------------------


def test_programming_error_in_a_blend_propagates(tract, tmp_path, monkeypatch):
    import hpcblend.units.tract

    def broken(*args, **kwargs):
        raise TypeError("broken deblender call")
    monkeypatch.setattr(hpcblend.units.tract, "deblend_blend", broken)
    with pytest.raises(TypeError, match="broken deblender call"):
        _run(_job(tract, tmp_path / "typeerror.h5"))


def test_programming_error_in_an_isolated_source_propagates(tract, tmp_path, monkeypatch):
    import hpcblend.units.tract

    def broken(*args, **kwargs):
        raise AttributeError("no such attribute")
    monkeypatch.setattr(hpcblend.units.tract, "measure_isolated_footprints", broken)
    with pytest.raises(AttributeError, match="no such attribute"):
        _run(_job(tract, tmp_path / "attrerror.h5"))


def test_programming_error_in_a_patch_propagates(tract, tmp_path, monkeypatch):
    import hpcblend.units.tract

    def broken(*args, **kwargs):
        raise NameError("name 'pixels' is not defined")
    monkeypatch.setattr(hpcblend.units.tract, "read_patch", broken)
    with pytest.raises(NameError, match="pixels"):
        _run(_job(tract, tmp_path / "nameerror.h5"))


def test_data_error_in_a_blend_is_a_flagged_row(tract, clean, tmp_path, monkeypatch):
    import hpcblend.units.tract

    def diverged(*args, **kwargs):
        raise NumericalFailure("loss is NaN")
    monkeypatch.setattr(hpcblend.units.tract, "deblend_blend", diverged)
    out = tmp_path / "numerical.h5"
    _run(_job(tract, out))
    tabs = _tables(out)
    assert list(tabs["patches"]["status"]) == [b"ok"] * 4
    b = tabs["blends"]
    fitted = b["n_peaks"] >= 2
    assert fitted.any() and b["flag_failed"][fitted].all() and not b["flag_failed"][~fitted].any()
    assert set(b["error_type"][fitted].tolist()) == {b"NumericalFailure"}
    assert np.array_equal(np.sort(b["id"]), np.sort(clean["blends"]["id"]))
