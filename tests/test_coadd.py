"""Tests of hpcblend.io.coadd: tract FITS round trip, patch reads, validation errors."""

import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from hpcblend.io.coadd import (TractData, TractPaths, read_patch, read_tract, read_tract_shape, tract_paths,
                            write_tract)
from hpcblend.errors import InputError, PsfError
from hpcblend.io.masks import MASK_PLANES
from hpcblend.geometry import Box
from hpcblend.skymap import make_patches

BANDS = ("g", "r", "i")
SHAPE = (60, 80)


def _wcs(crval=(150.0, 2.0), crpix=(40.5, 30.5), scale=0.168):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = [[-scale / 3600.0, 0.0], [0.0, scale / 3600.0]]
    return w


def _psf(size=11, sigma=1.5):
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return p / p.sum()


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (len(BANDS),) + SHAPE).astype(np.float32)
    variance = np.full(images.shape, 1.0, np.float32) + rng.uniform(0, 0.1, images.shape).astype(np.float32)
    mask = np.zeros(images.shape, np.int32)
    mask[:, 0, :] |= 1 << MASK_PLANES["EDGE"]
    mask[1, 5:8, 9:12] |= 1 << MASK_PLANES["SAT"]
    psfs = np.stack([_psf(11, s) for s in (1.4, 1.5, 1.6)])
    return images, variance, mask, psfs


@pytest.fixture
def tract_dir(tmp_path):
    images, variance, mask, psfs = _arrays()
    write_tract(tmp_path, BANDS, images, variance, mask, _wcs(), psfs, tract=42)
    return tmp_path


def test_round_trip(tmp_path):
    images, variance, mask, psfs = _arrays()
    paths = write_tract(tmp_path, BANDS, images, variance, mask, _wcs(), psfs, tract=42, zero_point=27.0)
    assert isinstance(paths, TractPaths)
    assert sorted(os.listdir(tmp_path)) == sorted([f"coadd_{b}.fits" for b in BANDS] +
                                                   [f"psf_{b}.fits" for b in BANDS])
    data = read_tract(tmp_path)  # bands discovered, ordered g r i
    assert isinstance(data, TractData)
    assert data.bands == BANDS and data.tract == 42 and data.zero_point == 27.0
    assert data.images.dtype == np.float32 and data.variance.dtype == np.float32
    assert data.mask.dtype == np.int32 and data.psfs.dtype == np.float64
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.variance, variance)
    np.testing.assert_array_equal(data.mask, mask)
    np.testing.assert_allclose(data.psfs, psfs, rtol=1e-12)
    assert data.box == Box((0, 0), SHAPE) and data.tract_shape == SHAPE
    assert data.mask_planes == MASK_PLANES
    ra, dec = _wcs().pixel_to_world_values([0.0, 79.0], [0.0, 59.0])
    ra2, dec2 = data.pixel_to_sky([0.0, 59.0], [0.0, 79.0])
    np.testing.assert_allclose(ra2, ra, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dec2, dec, rtol=0, atol=1e-12)
    # MP_ cards in the MASK header, celestial WCS in IMAGE
    with fits.open(paths.coadds["r"]) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "VARIANCE", "MASK"]
        assert hdul["MASK"].header["MP_NO_DATA"] == MASK_PLANES["NO_DATA"]
        assert hdul["IMAGE"].header["CTYPE1"] == "RA---TAN"
    # a subset of bands, other order, via a mapping and via TractPaths
    sub = read_tract({"i": paths.coadds["i"], "g": (paths.coadds["g"], paths.psfs["g"])})
    assert sub.bands == ("i", "g")
    np.testing.assert_array_equal(sub.images[1], images[0])
    sub2 = read_tract(paths, bands=["r"])
    np.testing.assert_array_equal(sub2.images[0], images[1])
    assert read_tract_shape(tmp_path) == SHAPE
    # bad_pixels: EDGE and SAT set
    bad = data.bad_pixels()
    assert bad[:, 0, :].all() and bad[1, 5:8, 9:12].all() and not bad[0, 5:8, 9:12].any()


def test_deterministic_bytes(tmp_path):
    images, variance, mask, psfs = _arrays()
    a, b = tmp_path / "a", tmp_path / "b"
    pa = write_tract(a, BANDS, images, variance, mask, _wcs(), psfs)
    pb = write_tract(b, BANDS, images, variance, mask, _wcs(), psfs)
    for f1, f2 in zip(pa.files(), pb.files()):
        assert open(f1, "rb").read() == open(f2, "rb").read()


def test_read_patch_matches_tract(tract_dir):
    full = read_tract(tract_dir)
    patches = make_patches(SHAPE, inner_size=25, overlap=4, tract=42)
    for patch in patches:
        data = read_patch(tract_dir, patch)
        assert data.box == patch.outer and data.patch is patch
        assert data.images.shape == (3,) + patch.outer.shape
        np.testing.assert_array_equal(data.images, full.images[(slice(None),) + patch.outer.slices])
        np.testing.assert_array_equal(data.variance, full.variance[(slice(None),) + patch.outer.slices])
        np.testing.assert_array_equal(data.mask, full.mask[(slice(None),) + patch.outer.slices])
        # local WCS: array pixel (0, 0) is tract pixel outer.origin
        lw = data.local_wcs()
        ra, dec = lw.pixel_to_world_values(3.0, 2.0)
        ra2, dec2 = full.wcs.pixel_to_world_values(3.0 + patch.outer.x0, 2.0 + patch.outer.y0)
        assert abs(ra - ra2) < 1e-12 and abs(dec - dec2) < 1e-12
    with pytest.raises(InputError, match="tract 3"):
        read_patch(tract_dir, make_patches(SHAPE, 25, 4, tract=3)[0])
    with pytest.raises(InputError, match="not inside"):
        read_patch(tract_dir, make_patches((100, 100), 50, 4, tract=42)[3])


def test_patch_reads_only_outer_box(tract_dir):
    """A NaN outside the patch's outer box is not seen by read_patch (it reads the box only)."""
    path = tract_dir / "coadd_g.fits"
    with fits.open(path, mode="update") as hdul:
        hdul["IMAGE"].data[55, 75] = np.nan
    patch = make_patches(SHAPE, 25, 4, tract=42)[0]
    data = read_patch(tract_dir, patch)
    assert np.isfinite(data.images).all()
    assert data.n_bad_pixels.tolist() == [0, 0, 0]
    full = read_tract(tract_dir)  # the whole tract sees it: masked on reading, not an error
    assert full.n_bad_pixels.tolist() == [1, 0, 0]
    assert full.mask[0, 55, 75] & (1 << MASK_PLANES["NO_DATA"])


def _rewrite(path, hdu_name, func):
    with fits.open(path, mode="update") as hdul:
        func(hdul[hdu_name])


def test_error_different_shape(tract_dir):
    images, variance, mask, psfs = _arrays()
    # the r band file with a different shape
    write_tract(tract_dir, ["r"], images[1:2, :, :-1], variance[1:2, :, :-1], mask[1:2, :, :-1], _wcs(),
                psfs[1:2], tract=42)
    with pytest.raises(InputError, match=r"coadd_r\.fits: HDU 'IMAGE': shape \(60, 79\) differs"):
        read_tract(tract_dir)


def test_error_variance_hdu_shape(tract_dir):
    path = str(tract_dir / "coadd_i.fits")
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    hdus[2] = fits.ImageHDU(np.ones((3, 3), np.float32), header=hdus[2].header, name="VARIANCE")
    fits.HDUList(hdus).writeto(path, overwrite=True)
    with pytest.raises(InputError, match=r"coadd_i\.fits: HDU 'VARIANCE': shape \(3, 3\) differs"):
        read_tract(tract_dir)


def test_error_different_wcs(tract_dir):
    images, variance, mask, psfs = _arrays()
    write_tract(tract_dir, ["i"], images[2:], variance[2:], mask[2:], _wcs(crval=(150.0, 2.0001)),
                psfs[2:], tract=42)
    with pytest.raises(InputError, match=r"coadd_i\.fits: HDU 'IMAGE': WCS differs .*CRVAL"):
        read_tract(tract_dir)
    write_tract(tract_dir, ["i"], images[2:], variance[2:], mask[2:], _wcs(crpix=(40.5, 31.5)),
                psfs[2:], tract=42)
    with pytest.raises(InputError, match=r"coadd_i\.fits: HDU 'IMAGE': WCS differs .*CRPIX"):
        read_tract(tract_dir)
    write_tract(tract_dir, ["i"], images[2:], variance[2:], mask[2:], _wcs(scale=0.2), psfs[2:], tract=42)
    with pytest.raises(InputError, match=r"coadd_i\.fits: HDU 'IMAGE': WCS differs .*CD"):
        read_tract(tract_dir)


def test_error_missing_wcs(tract_dir):
    def strip(hdu):
        for key in ("CTYPE1", "CTYPE2"):
            del hdu.header[key]
    _rewrite(tract_dir / "coadd_g.fits", "IMAGE", strip)
    with pytest.raises(InputError, match=r"coadd_g\.fits: HDU 'IMAGE': no 2-axis celestial WCS"):
        read_tract(tract_dir)


def test_nan_unmasked_becomes_no_data(tract_dir):
    def poke(hdu):
        hdu.data[10:12, 20:25] = np.nan
    _rewrite(tract_dir / "coadd_r.fits", "IMAGE", poke)
    data = read_tract(tract_dir)  # masked on reading (image 0, variance inf, NO_DATA), counted, not an error
    assert data.n_bad_pixels.tolist() == [0, 10, 0]
    assert (data.images[1, 10:12, 20:25] == 0).all() and np.isinf(data.variance[1, 10:12, 20:25]).all()
    assert (data.mask[1, 10:12, 20:25] & (1 << MASK_PLANES["NO_DATA"])).all()
    assert data.bad_pixels()[1, 10:12, 20:25].all() and np.count_nonzero(data.bad_pixels()[1]) == 10 + 80 + 9
    # the same region flagged NO_DATA is accepted as stored
    def flag(hdu):
        hdu.data[10:12, 20:25] |= 1 << MASK_PLANES["NO_DATA"]
    _rewrite(tract_dir / "coadd_r.fits", "MASK", flag)
    data = read_tract(tract_dir)
    assert np.isnan(data.images[1, 10:12, 20:25]).all()
    assert data.bad_pixels()[1, 10:12, 20:25].all()
    assert data.n_bad_pixels.tolist() == [0, 0, 0]


def test_zero_variance_becomes_no_data(tract_dir):
    def poke(hdu):
        hdu.data[3, 4] = 0.0
    _rewrite(tract_dir / "coadd_i.fits", "VARIANCE", poke)
    data = read_tract(tract_dir)
    assert data.n_bad_pixels.tolist() == [0, 0, 1]
    assert data.images[2, 3, 4] == 0 and np.isinf(data.variance[2, 3, 4])
    assert data.mask[2, 3, 4] & (1 << MASK_PLANES["NO_DATA"])


def test_error_missing_files(tract_dir):
    os.remove(tract_dir / "psf_r.fits")
    with pytest.raises(PsfError, match=r"psf_r\.fits: PSF file for band 'r' not found"):
        read_tract(tract_dir)
    os.remove(tract_dir / "coadd_i.fits")
    with pytest.raises(InputError, match=r"coadd_i\.fits: coadd file not found"):
        read_tract(tract_dir, bands=BANDS)


def test_error_missing_hdu(tract_dir):
    path = str(tract_dir / "coadd_g.fits")
    with fits.open(path) as hdul:
        keep = fits.HDUList([h.copy() for h in hdul if h.name != "MASK"])
    keep.writeto(path, overwrite=True)
    with pytest.raises(InputError, match=r"coadd_g\.fits: HDU 'MASK' missing"):
        read_tract(tract_dir)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_error_truncated_file(tract_dir):
    path = tract_dir / "coadd_r.fits"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"coadd_r\.fits"):
        read_tract(tract_dir)


def _write_psf(path, arr, name="PSF"):
    if name == "PRIMARY":
        fits.HDUList([fits.PrimaryHDU(arr)]).writeto(path, overwrite=True)
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(arr, name=name)]).writeto(path, overwrite=True)


def test_psf_errors(tract_dir):
    path = tract_dir / "psf_g.fits"
    _write_psf(path, _psf(11) * 1.01)
    with pytest.raises(PsfError, match=r"psf_g\.fits: HDU 'PSF': PSF sums to 1.01"):
        read_tract(tract_dir)
    _write_psf(path, _psf(11) * (1 + 5e-4))  # within 1e-3: accepted and renormalised
    assert abs(read_tract(tract_dir).psfs[0].sum() - 1) < 1e-12
    even = _psf(12)
    _write_psf(path, even / even.sum())
    with pytest.raises(PsfError, match=r"psf_g\.fits: HDU 'PSF': PSF shape \(12, 12\) is not odd"):
        read_tract(tract_dir)
    bad = _psf(11)
    bad[0, 0] = np.nan
    _write_psf(path, bad)
    with pytest.raises(PsfError, match=r"psf_g\.fits: HDU 'PSF': PSF has 1 non-finite"):
        read_tract(tract_dir)
    _write_psf(path, np.stack([_psf(11)] * 2))
    with pytest.raises(PsfError, match=r"psf_g\.fits: HDU 'PSF': expected a 2-D PSF"):
        read_tract(tract_dir)
    # a PSF in the primary HDU, of another odd size: accepted and zero-padded
    _write_psf(path, _psf(15, 1.4), name="PRIMARY")
    data = read_tract(tract_dir)
    assert data.psfs.shape == (3, 15, 15)
    np.testing.assert_allclose(data.psfs[0], _psf(15, 1.4), rtol=1e-12)
    np.testing.assert_allclose(data.psfs[1, 2:-2, 2:-2], _psf(11, 1.5), rtol=1e-12)
    assert np.allclose(data.psfs.sum(axis=(1, 2)), 1)


def test_header_checks(tract_dir):
    def set_tract(hdu):
        hdu.header["TRACT"] = 7
    _rewrite(tract_dir / "coadd_i.fits", "PRIMARY", set_tract)
    with pytest.raises(InputError, match=r"coadd_i\.fits: HDU 'PRIMARY': TRACT = 7"):
        read_tract(tract_dir)
    with pytest.raises(InputError, match=r"coadd_g\.fits: HDU 'PRIMARY': BAND = 'g'.*band 'r'"):
        read_tract({"r": str(tract_dir / "coadd_g.fits")})


def test_mask_plane_remap(tmp_path):
    images, variance, mask, psfs = _arrays()
    # a file using another bit layout: NO_DATA at bit 2, an extra plane at bit 3, SAT at bit 0
    planes = {"SAT": 0, "NO_DATA": 2, "CROSSTALK": 3}
    mask = np.zeros(images.shape, np.int32)
    mask[0, 1, 1] = 1 << 2
    mask[0, 2, 2] = 1 << 3
    mask[0, 3, 3] = 1 << 0
    images[0, 1, 1] = np.nan  # NO_DATA pixel: allowed
    write_tract(tmp_path, BANDS, images, variance, mask, _wcs(), psfs, mask_planes=planes)
    data = read_tract(tmp_path)
    assert data.mask_planes["CROSSTALK"] not in MASK_PLANES.values()
    assert {k: v for k, v in data.mask_planes.items() if k in MASK_PLANES} == MASK_PLANES
    assert data.mask[0, 1, 1] == 1 << MASK_PLANES["NO_DATA"]
    assert data.mask[0, 2, 2] == 1 << data.mask_planes["CROSSTALK"]
    assert data.mask[0, 3, 3] == 1 << MASK_PLANES["SAT"]
    assert data.bad_pixels(["CROSSTALK"])[0, 2, 2]


def test_write_errors(tmp_path):
    images, variance, mask, psfs = _arrays()
    with pytest.raises(InputError):
        write_tract(tmp_path, BANDS[:2], images, variance, mask, _wcs(), psfs)
    with pytest.raises(PsfError):
        write_tract(tmp_path, BANDS, images, variance, mask, _wcs(), psfs[:, :-1, :-1][:, :, :])
    with pytest.raises(InputError):
        write_tract(tmp_path, BANDS, images, variance, mask, WCS(naxis=2), psfs)
    write_tract(tmp_path, BANDS, images, variance, None, _wcs(), psfs)
    with pytest.raises(InputError, match="exists"):
        write_tract(tmp_path, BANDS, images, variance, None, _wcs(), psfs, overwrite=False)
    with pytest.raises(InputError, match="not found"):
        tract_paths(tmp_path / "nope")
    with pytest.raises(InputError, match="no coadd file"):
        tract_paths(tmp_path, pattern="x_{band}.fits")


def test_read_patch_memory_is_outer_box_sized(tmp_path):
    """read_patch allocates about B x outer-box rows, not the tract (reads of the box's rows only)."""
    import tracemalloc

    shape = (1200, 1200)
    images = np.zeros((1,) + shape, np.float32)
    write_tract(tmp_path, ["i"], images, images + 1, None, _wcs(), _psf(11)[None])
    del images
    patch = make_patches(shape, inner_size=200, overlap=20)[8]
    tracemalloc.start()
    try:
        data = read_patch(tmp_path, patch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.images.shape == (1, 240, 240)
    tract_bytes = 3 * 4 * shape[0] * shape[1]  # image + variance + mask of the whole tract: 17 MB
    assert peak < 0.2 * tract_bytes, peak


def test_read_box_matches_astropy_and_scaled_hdus(tract_dir):
    """The row reads give astropy's pixels (native byte order); scaled HDUs fall back to sections."""
    from hpcblend.io.coadd import read_box
    from hpcblend.geometry import Box

    box = Box((7, 11), (40, 52))
    data = read_box(tract_dir, box)
    for i, band in enumerate(data.bands):
        with fits.open(tract_dir / f"coadd_{band}.fits") as hdul:
            np.testing.assert_array_equal(data.images[i], hdul["IMAGE"].data[box.slices])
            np.testing.assert_array_equal(data.variance[i], hdul["VARIANCE"].data[box.slices])
    assert data.images.dtype.isnative and data.mask.dtype.isnative
    # a BSCALE/BZERO-scaled variance plane goes through ImageHDU.section and reads the same values
    path = tract_dir / "coadd_g.fits"
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    var = hdus[[h.name for h in hdus].index("VARIANCE")]
    var.scale("int16", bscale=1e-3, bzero=30.0)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    scaled = read_box(tract_dir, box)
    with fits.open(path) as hdul:
        np.testing.assert_allclose(scaled.variance[0], hdul["VARIANCE"].data[box.slices], rtol=1e-6)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_read_patch_truncated_rows(tract_dir):
    """Rows past the end of a truncated file: an InputError naming the file, not short arrays."""
    path = tract_dir / "coadd_i.fits"
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * 0.9)])
    patches = make_patches(SHAPE, inner_size=25, overlap=4, tract=42)
    with pytest.raises(InputError, match=r"coadd_i\.fits"):
        for patch in patches:
            read_patch(tract_dir, patch)
