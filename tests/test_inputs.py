"""Tests of hpcblend.io.blends: npz blend readers, validation, expand_inputs."""

import os
from pathlib import Path

import numpy as np
import pytest

from hpcblend.errors import BlendDataError, InputError, PsfError
from hpcblend.io.blends import (
    BlendData,
    expand_inputs,
    peek_blend,
    read_blend,
    write_blend,
)
from hpcblend.io.masks import MASK_PLANES, mask_bits
from hpcblend.simulate.synthetic import make_synthetic_blend

NO_DATA = 1 << MASK_PLANES["NO_DATA"]


# -- real data -----------------------------------------------------------------

def test_hsc_blends_all_files(shared_data):
    files = expand_inputs(str(shared_data / "hsc_blends" / "set*" / "*.npz"))
    assert len(files) == 164
    total = 0
    for path in files:
        blend = read_blend(path)
        total += blend.n_peaks
        assert blend.id == int(Path(path).stem)
        assert blend.bands == ("g", "r", "i", "z", "y")
        assert blend.images.dtype == np.float32 and blend.variance.dtype == np.float32
        assert blend.mask.dtype == np.int32
        # 126 files have 43x43 PSFs, 38 have 41x43 (non-square, still odd)
        assert blend.psfs.dtype == np.float64 and blend.psfs.shape[1:] in ((43, 43), (41, 43))
        np.testing.assert_allclose(blend.psfs.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-12)
        assert blend.peaks.dtype == np.int64 and blend.peaks.shape[1] == 2
        assert blend.footprint.dtype == np.bool_ and blend.footprint.shape == blend.shape
        assert blend.footprint[blend.peaks[:, 0], blend.peaks[:, 1]].all()
        assert 0 < blend.footprint_area < blend.shape[0] * blend.shape[1]
    assert total == 853


def test_peek_agrees_with_read(shared_data):
    files = expand_inputs(str(shared_data / "hsc_blends" / "set3"))
    assert len(files) == 14
    for path in files:
        info = peek_blend(path)
        blend = read_blend(path)
        assert "error" not in info
        assert info["id"] == blend.id
        assert info["n_peaks"] == blend.n_peaks
        assert info["shape"] == blend.shape
        assert info["footprint_area"] == blend.footprint_area


def test_hsc_cosmos_35(shared_data):
    path = shared_data / "scarlet_examples" / "hsc_cosmos_35.npz"
    with pytest.raises(InputError, match="hsc_cosmos_35"):
        read_blend(path)  # stem is not an integer id and no blend_id
    blend = read_blend(path, blend_id=35)
    assert blend.id == 35
    assert blend.n_peaks == 7
    assert blend.bands == ("g", "r", "i", "z", "y")
    assert blend.footprint.all()  # no footprint in the file: everything inside
    assert blend.psfs.shape == (5, 43, 43)
    with np.load(path) as data:
        cat = data["catalog"]
    np.testing.assert_array_equal(blend.peaks[:, 0], np.floor(cat["y"] + 0.5))
    np.testing.assert_array_equal(blend.peaks[:, 1], np.floor(cat["x"] + 0.5))
    info = peek_blend(path)
    assert info["n_peaks"] == 7 and info["footprint_area"] == 58 * 48 and info["id"] is None


def test_testdata_3_0(shared_data):
    blend = read_blend(shared_data / "scarlet_examples" / "testdata_3_0.npz", blend_id=3)
    assert blend.n_peaks == 11
    assert blend.shape == (92, 141)
    assert blend.footprint[blend.peaks[:, 0], blend.peaks[:, 1]].all()


def test_hsc_cosmos_without_variance(shared_data):
    path = shared_data / "scarlet_examples" / "hsc_cosmos.npz"
    with pytest.raises(InputError, match=r"hsc_cosmos\.npz.*'variance'"):
        read_blend(path, blend_id=1)
    info = peek_blend(path)
    assert info["n_peaks"] == 0 and "variance" in info["error"]


def test_expand_inputs_shared(shared_data):
    base = shared_data / "hsc_blends"
    by_glob = expand_inputs("set*/*.npz", base_dir=base)
    by_dirs = expand_inputs(["set1", "set2", str(base / "set3")], base_dir=base)
    assert by_glob == by_dirs and len(by_glob) == 164
    assert by_glob == sorted(by_glob)


# -- synthetic files for validation tests -------------------------------------------

@pytest.fixture()
def good_blend():
    blend, _ = make_synthetic_blend(seed=3, n_sources=2, shape=(36, 36))
    return blend


def _write(tmp_path, blend, name="12345.npz"):
    path = tmp_path / name
    write_blend(path, blend)
    return path


def _arrays(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_roundtrip_good(tmp_path, good_blend):
    path = _write(tmp_path, good_blend)
    blend = read_blend(path)
    assert blend.id == 12345 and blend.source == str(path)
    np.testing.assert_array_equal(blend.images, good_blend.images)
    np.testing.assert_array_equal(blend.footprint, good_blend.footprint)
    np.testing.assert_array_equal(blend.peaks, good_blend.peaks)
    assert blend.meta["n_no_data_pixels"] == 0


def test_missing_key(tmp_path, good_blend):
    arrays = _arrays(_write(tmp_path, good_blend))
    del arrays["variance"]
    path = tmp_path / "7.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=r"7\.npz: missing key 'variance'"):
        read_blend(path)
    assert "variance" in peek_blend(path)["error"]


def test_missing_peaks(tmp_path, good_blend):
    arrays = _arrays(_write(tmp_path, good_blend))
    del arrays["centers"]
    path = tmp_path / "8.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=r"8\.npz: missing key 'centers'"):
        read_blend(path)


def test_nan_inside_footprint(tmp_path, good_blend):
    y, x = good_blend.peaks[0]
    good_blend.images[1, y, x] = np.nan
    path = _write(tmp_path, good_blend)
    with pytest.raises(BlendDataError, match=r"12345\.npz: key 'images'.*NaN"):
        read_blend(path)


def test_inf_variance_inside_footprint(tmp_path, good_blend):
    y, x = good_blend.peaks[0]
    good_blend.variance[0, y, x] = np.inf
    with pytest.raises(BlendDataError, match=r"12345\.npz: key 'variance'"):
        read_blend(_write(tmp_path, good_blend))


def test_nan_outside_footprint_is_flagged(tmp_path, good_blend):
    ys, xs = np.nonzero(~good_blend.footprint)
    good_blend.images[2, ys[0], xs[0]] = np.nan
    blend = read_blend(_write(tmp_path, good_blend))
    assert blend.images[2, ys[0], xs[0]] == 0.0
    assert blend.mask[2, ys[0], xs[0]] & NO_DATA
    assert blend.meta["n_no_data_pixels"] == 1
    assert blend.weights()[2, ys[0], xs[0]] == 0.0


def test_band_count_mismatch(tmp_path, good_blend):
    path = _write(tmp_path, good_blend)
    with pytest.raises(BlendDataError, match=r"12345\.npz: key 'images'.*5.*3"):
        read_blend(path, bands=("g", "r", "i"))
    assert read_blend(path, bands=("g", "r", "i", "z", "y")).bands == ("g", "r", "i", "z", "y")
    with pytest.raises(BlendDataError, match="filters"):
        read_blend(path, bands=("u", "g", "r", "i", "z"))


def test_zero_variance_band(tmp_path, good_blend):
    # a band without data is read as all NO_DATA (the deblender fits the other bands), not an error
    good_blend.variance[2] = 0.0
    blend = read_blend(_write(tmp_path, good_blend))
    assert np.all(blend.mask[2] & NO_DATA) and not np.any(blend.mask[1] & NO_DATA)
    assert np.all(blend.weights()[2] == 0) and not np.any(blend.peak_flags)


def test_band_of_nan_is_a_band_without_data(tmp_path, good_blend):
    """A band not observed here (NaN image, inf variance everywhere) is no data in that band, not a failed blend
    (it was a BlendDataError: one missing band lost every child)."""
    from hpcblend.config import DeblendConfig
    from hpcblend.deblend import deblend_blend

    good_blend.images[4] = np.nan
    good_blend.variance[4] = np.inf
    blend = read_blend(_write(tmp_path, good_blend))
    assert np.all(blend.mask[4] & NO_DATA) and np.all(blend.images[4] == 0) and np.all(blend.weights()[4] == 0)
    result = deblend_blend(blend, DeblendConfig())
    assert result.fitted and result.flags["flag_incomplete_data"]
    assert np.all(np.isnan(result.children["flux_model"][:, 4])) and np.all(result.children["flux_model"][:, :4] > 0)


def test_nan_on_pixels_masked_bad_is_no_data(tmp_path, good_blend):
    """NaN where the mask already says SAT (an empty saturated core) is read as no data; NaN on a pixel the mask
    does not mark bad stays an error (test_nan_inside_footprint)."""
    y, x = good_blend.peaks[0]
    good_blend.images[:, y, x] = np.nan
    good_blend.mask[:, y, x] |= 1 << MASK_PLANES["SAT"]
    blend = read_blend(_write(tmp_path, good_blend))
    assert np.all(blend.images[:, y, x] == 0) and np.all(blend.weights()[:, y, x] == 0)
    assert blend.peak_flags[0] == 0  # a peak on a saturated core is kept


def test_isolated_nonpositive_variance_flagged(tmp_path, good_blend):
    y, x = good_blend.peaks[0]
    good_blend.variance[3, y, x] = 0.0
    good_blend.variance[1, y, x + 1] = -1.0
    blend = read_blend(_write(tmp_path, good_blend))
    assert blend.mask[3, y, x] & NO_DATA and blend.mask[1, y, x + 1] & NO_DATA
    assert blend.meta["n_no_data_pixels"] == 2
    w = blend.weights()
    assert w[3, y, x] == 0 and w[1, y, x + 1] == 0 and np.isfinite(w).all()


def test_truncated_file(tmp_path, good_blend):
    path = _write(tmp_path, good_blend)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 100):
        path.write_bytes(raw[:cut])
        with pytest.raises(InputError, match=r"12345\.npz"):
            read_blend(path)
        info = peek_blend(path)
        assert info["n_peaks"] == 0 and "error" in info


def test_not_a_zip(tmp_path):
    path = tmp_path / "5.npz"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"5\.npz"):
        read_blend(path)
    with pytest.raises(InputError, match="not found"):
        read_blend(tmp_path / "6.npz")


def test_object_array_not_unpickled(tmp_path, good_blend):
    arrays = _arrays(_write(tmp_path, good_blend))
    arrays["centers"] = np.array([[1, 2], "x"], dtype=object)
    path = tmp_path / "9.npz"
    np.savez(path, **arrays)  # numpy pickles object arrays
    with pytest.raises(InputError, match=r"9\.npz: key 'centers'.*unpickle"):
        read_blend(path)


def test_even_sized_psf(tmp_path, good_blend):
    good_blend.psfs = good_blend.psfs[:, 1:, 1:] / good_blend.psfs[:, 1:, 1:].sum(axis=(1, 2))[:, None, None]
    with pytest.raises(PsfError, match=r"12345\.npz: key 'psfs'.*odd"):
        read_blend(_write(tmp_path, good_blend))


def test_psf_not_normalised(tmp_path, good_blend):
    good_blend.psfs[1] *= 0.9
    with pytest.raises(PsfError, match=r"12345\.npz: key 'psfs'.*band 'r'.*0\.9"):
        read_blend(_write(tmp_path, good_blend))


def test_psf_renormalised_within_tolerance(tmp_path, good_blend):
    good_blend.psfs[1] *= 1.005
    blend = read_blend(_write(tmp_path, good_blend))
    assert blend.psfs[1].sum() == pytest.approx(1.0, abs=1e-14)


def test_psf_nan_and_band_count(tmp_path, good_blend):
    psfs = good_blend.psfs.copy()
    good_blend.psfs[0, 0, 0] = np.nan
    with pytest.raises(PsfError, match=r"12345\.npz: key 'psfs'.*NaN"):
        read_blend(_write(tmp_path, good_blend))
    good_blend.psfs = psfs[:4]
    with pytest.raises(PsfError, match=r"12345\.npz: key 'psfs'.*4 PSFs for 5"):
        read_blend(_write(tmp_path, good_blend))
    good_blend.psfs = psfs[0]
    with pytest.raises(PsfError, match=r"key 'psfs'.*3-D"):
        read_blend(_write(tmp_path, good_blend))


def test_shape_mismatches(tmp_path, good_blend):
    variance = good_blend.variance
    good_blend.variance = variance[:, :-1]
    with pytest.raises(InputError, match=r"12345\.npz: key 'variance'.*shape"):
        read_blend(_write(tmp_path, good_blend))
    good_blend.variance = variance
    good_blend.footprint = good_blend.footprint[:, :-2]
    with pytest.raises(InputError, match=r"12345\.npz: key 'footprint'.*shape"):
        read_blend(_write(tmp_path, good_blend))


def test_bad_peaks(tmp_path, good_blend):
    # peaks outside the image or footprint are flagged (kept as given), not errors
    from hpcblend.io.blends import PEAK_OUTSIDE_FOOTPRINT, PEAK_OUTSIDE_IMAGE

    good_blend.peaks = np.array([[5, 5], [40, 3]], dtype=np.int64)
    blend = read_blend(_write(tmp_path, good_blend))
    assert blend.peaks.tolist() == [[5, 5], [40, 3]]
    assert blend.peak_flags[1] == PEAK_OUTSIDE_IMAGE | PEAK_OUTSIDE_FOOTPRINT
    good_blend.peaks = np.zeros((0, 2), dtype=np.int64)
    with pytest.raises(BlendDataError, match=r"12345\.npz: key 'centers': no peaks"):
        read_blend(_write(tmp_path, good_blend))
    good_blend.peaks = np.array([[0, 0]], dtype=np.int64)  # a corner, outside the footprint
    assert read_blend(_write(tmp_path, good_blend)).peak_flags.tolist() == [PEAK_OUTSIDE_FOOTPRINT]


def test_id_rules(tmp_path, good_blend):
    path = _write(tmp_path, good_blend, name="blend_a.npz")
    with pytest.raises(InputError, match="blend_a"):
        read_blend(path)
    assert read_blend(path, blend_id=42).id == 42
    big = _write(tmp_path, good_blend, name=f"{2**63}.npz")  # does not fit int64
    assert read_blend(big, blend_id=7).id == 7
    assert read_blend(_write(tmp_path, good_blend, name="99.npz"), blend_id=7).id == 99


def test_bands_defaults(tmp_path, good_blend):
    arrays = _arrays(_write(tmp_path, good_blend))
    del arrays["filters"]
    path = tmp_path / "10.npz"
    np.savez(path, **arrays)
    assert read_blend(path).bands == ("g", "r", "i", "z", "y")
    assert read_blend(path, bands=list("abcde")).bands == tuple("abcde")
    for key in ("images", "variance", "mask", "psfs"):
        arrays[key] = arrays[key][:3]
    np.savez(path, **arrays)
    assert read_blend(path).bands == ("b0", "b1", "b2")


def test_mask_bits():
    assert mask_bits(["BAD", "SAT"]) == 3
    assert mask_bits("no_data") == 256
    assert mask_bits([]) == 0
    with pytest.raises(KeyError):
        mask_bits(["NOPE"])


# -- expand_inputs -------------------------------------------------------------

def test_expand_inputs(tmp_path, good_blend, monkeypatch):
    d = tmp_path / "blends"
    for name in ("2.npz", "1.npz", "3.npz"):
        _write(d, good_blend, name=name)
    (d / "notes.txt").write_text("x")
    sub = d / "sub"
    _write(sub, good_blend, name="4.npz")
    expected = [str(d / n) for n in ("1.npz", "2.npz", "3.npz")]
    assert expand_inputs(str(d)) == expected  # not recursive, only *.npz
    assert expand_inputs("blends/*.npz", base_dir=tmp_path) == expected
    assert expand_inputs("blends/**/*.npz", base_dir=tmp_path) == sorted(expected + [str(sub / "4.npz")])
    assert expand_inputs(["blends/1.npz", str(d / "2.npz"), "blends"], base_dir=tmp_path) == expected
    os.symlink(d / "1.npz", tmp_path / "link.npz")
    assert expand_inputs([str(d / "1.npz"), str(tmp_path / "link.npz")]) == [str(d / "1.npz")]
    monkeypatch.chdir(tmp_path)
    assert expand_inputs("blends") == expected
    with pytest.raises(InputError, match=r"nothing_\*\.npz"):
        expand_inputs(["blends", "nothing_*.npz"])
    with pytest.raises(InputError, match="missing.npz"):
        expand_inputs("missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        expand_inputs("empty")
    with pytest.raises(InputError):
        expand_inputs([])


def test_weights(good_blend):
    b = good_blend
    b.mask[0, 0, 0] = 1 << MASK_PLANES["SAT"]
    w = b.weights()
    assert w.dtype == np.float32 and w.shape == b.images.shape
    assert w[0, 0, 0] == 0
    assert np.all(w[:, ~b.footprint] == 0)
    y, x = b.peaks[0]
    np.testing.assert_allclose(w[:, y, x], 1.0 / b.variance[:, y, x])
    assert isinstance(b, BlendData)
    assert b.weights(use_footprint=False)[0, 0, 1] > 0
