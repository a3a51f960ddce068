"""Bad data inside a blend become flags, not whole-blend errors.

Duplicate peaks, peaks outside the footprint or image or on pixels masked in
every band are dropped from the fit (their rows stay, flagged); a band without
data is fitted around; a terrible fit is flagged; a non-npz file and a
pickled member get messages that say which.
"""

import dataclasses
import os

import numpy as np
import pytest

import hpcblend.deblend.deblender as deblend_mod
from hpcblend.io.catalog import read_table
from hpcblend.config import DeblendConfig, job_from_dict
from hpcblend.deblend.deblender import deblend_blend
from hpcblend.parallel.driver import run_job
from hpcblend.errors import BlendDataError, InputError
from hpcblend.io.masks import MASK_PLANES
from hpcblend.io.blends import (
    PEAK_DROPPED,
    PEAK_DUPLICATE,
    PEAK_MASKED,
    PEAK_MERGED,
    PEAK_OUTSIDE_FOOTPRINT,
    PEAK_OUTSIDE_IMAGE,
    BlendData,
    read_blend,
    write_blend,
)
from hpcblend.units.rows import fill_child_rows
from hpcblend.io.schema import blend_spec, source_spec
from hpcblend.simulate.synthetic import make_synthetic_blend

BANDS = ("g", "r", "i", "z", "y")
BAD = 1 << MASK_PLANES["BAD"]


def _blend(seed=1, blend_id=1):
    blend, _ = make_synthetic_blend(seed=seed, n_sources=2, blend_id=blend_id)
    return blend


def _with_peaks(blend, peaks):
    return dataclasses.replace(blend, peaks=np.asarray(peaks, dtype=np.int64), peak_flags=None)


def _read(tmp_path, blend, name="11.npz"):
    return read_blend(write_blend(os.path.join(tmp_path, name), blend))


def _after_path(msg):
    """The message after the file's path (a test's tmp path may contain any word)."""
    return msg.split(".npz", 1)[1]


def _outside_footprint_pixel(blend):
    y, x = np.argwhere(~blend.footprint)[0]
    return int(y), int(x)


def _inside_footprint_pixel(blend):
    """A footprint pixel at least 3 px from every peak."""
    for y, x in np.argwhere(blend.footprint):
        if np.min(np.abs(blend.peaks - [y, x]).max(axis=1)) >= 3:
            return int(y), int(x)
    raise AssertionError("no such pixel")


def _fitted_ok(result, k):
    ch = result.children
    return (ch["alive"][k] and np.all(np.isfinite(ch["flux_model"][k])) and np.isfinite(ch["x"][k])
            and np.all(ch["flux_model"][k] > 0))


def _dropped(result, k):
    ch = result.children
    return (not ch["alive"][k] and np.all(np.isnan(ch["flux_model"][k])) and np.all(np.isnan(ch["flux"][k]))
            and np.isnan(ch["x"][k]) and np.isnan(ch["y"][k]))


def test_duplicate_peak_merged(tmp_path):
    base = _blend()
    ref = deblend_blend(_read(tmp_path, base, "10.npz"), DeblendConfig())
    p0, p1 = base.peaks.tolist()
    blend = _read(tmp_path, _with_peaks(base, [p0, p0, p1]))
    assert blend.n_peaks == 3 and blend.peaks.tolist() == [p0, p0, p1]  # ids and rows do not change
    assert blend.peak_flags.tolist() == [PEAK_MERGED, PEAK_DUPLICATE, 0]
    assert blend.kept_peaks.tolist() == [True, False, True]
    r = deblend_blend(blend, DeblendConfig())
    assert r.flags["n_peaks_dropped"] == 1 and not r.flags["flag_failed"]
    assert _fitted_ok(r, 0) and _fitted_ok(r, 2) and _dropped(r, 1)
    # the kept child's flux is that of the same blend without the duplicate
    np.testing.assert_allclose(r.children["flux_model"][0], ref.children["flux_model"][0], rtol=1e-3)
    np.testing.assert_allclose(r.children["flux"][[0, 2]], ref.children["flux"], rtol=1e-3)
    # component layout: main components in peak order (a zero placeholder for the dropped one)
    models = r.child_models()
    assert models.shape[0] == 3 and not models[1].any() and models[0].sum() > 0
    assert r.sed.shape[0] >= 3 and not r.sed[1].any() and r.owner[1] == 1


def test_duplicate_peak_rows(tmp_path):
    base = _blend()
    p0, p1 = base.peaks.tolist()
    blend = _read(tmp_path, _with_peaks(base, [p0, p1, p0]))
    r = deblend_blend(blend, DeblendConfig())
    src = source_spec(BANDS).empty(3)
    fill_child_rows(src, r, blend.origin, BANDS)
    assert src["flag_peak_duplicate"].tolist() == [False, False, True]
    assert src["flag_peak_merged"].tolist() == [True, False, False]
    assert not src["flag_peak_masked"].any() and not src["flag_peak_outside_footprint"].any()
    assert not src["flag_model_zero"].any()  # a dropped peak is not a "zero model" child
    assert np.isnan(src["flux_r"][2]) and np.all(np.isfinite(src["flux_r"][:2]))


def test_peak_outside_footprint_dropped(tmp_path):
    base = _blend()
    off = _outside_footprint_pixel(base)
    blend = _read(tmp_path, _with_peaks(base, base.peaks.tolist() + [list(off)]))
    assert blend.peak_flags.tolist() == [0, 0, PEAK_OUTSIDE_FOOTPRINT]
    r = deblend_blend(blend, DeblendConfig())
    assert r.flags["n_peaks_dropped"] == 1
    assert _fitted_ok(r, 0) and _fitted_ok(r, 1) and _dropped(r, 2)
    assert np.isfinite(r.chi2_per_pixel) and not r.flags["flag_bad_fit"]


def test_peak_outside_image_kept_as_given(tmp_path):
    base = _blend()
    h, w = base.shape
    far = [[-3, 5], [h + 7, w + 400]]
    blend = _read(tmp_path, _with_peaks(base, base.peaks.tolist() + far))
    assert blend.peaks[2:].tolist() == far  # not clipped
    assert np.all(blend.peak_flags[2:] == PEAK_OUTSIDE_IMAGE | PEAK_OUTSIDE_FOOTPRINT)
    r = deblend_blend(blend, DeblendConfig())
    assert r.flags["n_peaks_dropped"] == 2
    assert _fitted_ok(r, 0) and _fitted_ok(r, 1) and _dropped(r, 2) and _dropped(r, 3)
    src = source_spec(BANDS).empty(4)
    fill_child_rows(src, r, blend.origin, BANDS)
    assert src["flag_peak_outside_footprint"].tolist() == [False, False, True, True]
    # a BlendData built without read_blend (no peak_flags): an off-image peak is still dropped, not an IndexError
    direct = _with_peaks(base, base.peaks.tolist() + [[-3, 5]])
    r2 = deblend_blend(direct, DeblendConfig())
    assert r2.peak_flags[2] & PEAK_OUTSIDE_IMAGE and _dropped(r2, 2) and _fitted_ok(r2, 0)


def test_peak_on_fully_masked_pixel(tmp_path):
    base = _blend()
    y, x = _inside_footprint_pixel(base)
    masked = _with_peaks(base, base.peaks.tolist() + [[y, x]])
    masked.mask = masked.mask.copy()
    masked.mask[:, y, x] |= BAD
    blend = _read(tmp_path, masked)
    assert blend.peak_flags.tolist() == [0, 0, PEAK_MASKED]
    r = deblend_blend(blend, DeblendConfig())
    assert _fitted_ok(r, 0) and _fitted_ok(r, 1) and _dropped(r, 2)
    ref = deblend_blend(_read(tmp_path, base, "10.npz"), DeblendConfig())
    np.testing.assert_allclose(r.children["flux"][:2], ref.children["flux"], rtol=0.02)
    # bad in 4 of 5 bands only: kept
    partial = _with_peaks(base, base.peaks.tolist() + [[y, x]])
    partial.mask = partial.mask.copy()
    partial.mask[:4, y, x] |= BAD
    assert _read(tmp_path, partial, "12.npz").peak_flags.tolist() == [0, 0, 0]
    # zero variance in every band counts as masked too
    novar = _with_peaks(base, base.peaks.tolist() + [[y, x]])
    novar.variance = novar.variance.copy()
    novar.variance[:, y, x] = 0.0
    assert _read(tmp_path, novar, "13.npz").peak_flags.tolist() == [0, 0, PEAK_MASKED]


def test_all_peaks_dropped_is_a_data_error(tmp_path):
    base = _blend()
    off = _outside_footprint_pixel(base)
    blend = _read(tmp_path, _with_peaks(base, [list(off), [-1, -1]]), "77.npz")
    assert np.all(blend.peak_flags & PEAK_DROPPED)
    with pytest.raises(BlendDataError, match=r"77\.npz: key 'centers': none of the 2 peaks.*outside the footprint"):
        deblend_blend(blend, DeblendConfig())


def test_zero_variance_band_fitted_on_others(tmp_path):
    base = _blend()
    ref = deblend_blend(_read(tmp_path, base, "10.npz"), DeblendConfig())
    empty = _with_peaks(base, base.peaks)
    empty.variance = empty.variance.copy()
    empty.variance[2] = 0.0
    blend = _read(tmp_path, empty)
    assert not np.any(blend.peak_flags)
    r = deblend_blend(blend, DeblendConfig())
    assert not r.flags["flag_failed"] and r.flags["flag_incomplete_data"] and not r.flags["flag_bad_fit"]
    assert r.bands_fitted.tolist() == [True, True, False, True, True]
    ch = r.children
    assert np.all(np.isnan(ch["flux_model"][:, 2])) and np.all(np.isnan(ch["flux"][:, 2]))
    assert np.all(np.isnan(ch["flux_err"][:, 2]))
    other = [0, 1, 3, 4]
    assert np.all(np.isfinite(ch["flux_model"][:, other])) and np.all(ch["alive"])
    np.testing.assert_allclose(ch["flux"][:, other], ref.children["flux"][:, other], rtol=0.05)
    assert r.sed.shape[1] == 5 and not r.sed[:, 2].any()  # the model has no light in the empty band
    assert np.isfinite(r.chi2_per_pixel)


def test_fully_masked_band_fitted_on_others(tmp_path):
    base = _blend()
    masked = _with_peaks(base, base.peaks)
    masked.mask = masked.mask.copy()
    masked.mask[4] |= BAD
    r = deblend_blend(_read(tmp_path, masked), DeblendConfig())
    assert r.flags["flag_incomplete_data"] and not r.flags["flag_failed"]
    assert np.all(np.isnan(r.children["flux_model"][:, 4])) and np.all(np.isfinite(r.children["flux_model"][:, :4]))
    # no band at all with data: still an error naming the file and key
    novar = _with_peaks(base, base.peaks)
    novar.variance = np.zeros_like(novar.variance)
    with pytest.raises(BlendDataError, match=r"11\.npz: key 'variance': every pixel has zero weight"):
        deblend_blend(_read(tmp_path, novar), DeblendConfig())


def test_bad_fit_flag(tmp_path, monkeypatch):
    base = _blend()
    good = deblend_blend(_read(tmp_path, base, "10.npz"), DeblendConfig())
    assert good.chi2_per_pixel < 3 and not good.flags["flag_bad_fit"]
    # an over-subtracted background: a -1000 σ pedestal no non-negative model can follow
    hole = _with_peaks(base, base.peaks)
    hole.images = hole.images - 1000.0 * np.sqrt(hole.variance) * hole.footprint[None]
    r = deblend_blend(_read(tmp_path, hole), DeblendConfig())
    assert not r.flags["flag_failed"]
    assert r.chi2_per_pixel > DeblendConfig().max_chi2_per_pixel and r.flags["flag_bad_fit"]
    # the threshold is the config's deblend.max_chi2_per_pixel
    strict = DeblendConfig(max_chi2_per_pixel=0.5 * good.chi2_per_pixel)
    assert deblend_blend(_read(tmp_path, base, "10.npz"), strict).flags["flag_bad_fit"]
    # and a χ² that is not finite is a bad fit
    real = deblend_mod.measure_children
    monkeypatch.setattr(deblend_mod, "measure_children", lambda *a, **k: (real(*a, **k)[0], float("inf")))
    assert deblend_blend(_read(tmp_path, base, "10.npz"), DeblendConfig()).flags["flag_bad_fit"]


def test_text_file_is_not_called_pickled(tmp_path):
    path = tmp_path / "5.npz"
    path.write_text("id,x,y\n1,2,3\n")
    with pytest.raises(InputError) as info:
        read_blend(str(path))
    msg = str(info.value)
    assert "5.npz" in msg and "not an npz (zip) archive" in msg and "pickle" not in _after_path(msg).lower()
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"5\.npz: not an npz \(zip\) archive \(an empty file\)"):
        read_blend(str(path))


def test_pickled_member_is_called_pickled(tmp_path):
    base = _blend()
    path = write_blend(str(tmp_path / "9.npz"), base)
    arrays = dict(np.load(path))
    arrays["centers"] = np.array([object(), object()], dtype=object)
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=r"9\.npz: key 'centers': holds Python objects \(pickled\)"):
        read_blend(path)
    # a zip member that is not a .npy at all: an InputError, not an AttributeError on raw bytes
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for key, val in dict(np.load(write_blend(str(tmp_path / "8.npz"), base))).items():
            if key != "psfs":
                with zf.open(key + ".npy", "w") as fh:
                    np.lib.format.write_array(fh, val)
        zf.writestr("psfs.npy", b"just text")
    with pytest.raises(InputError) as info:
        read_blend(path)
    assert "key 'psfs'" in str(info.value) and "pickle" not in _after_path(str(info.value)).lower()


def test_peak_flags_default_and_schema():
    base = _blend()
    b = BlendData(id=1, source="x", bands=base.bands, images=base.images, variance=base.variance, mask=None,
                  footprint=base.footprint, psfs=base.psfs, peaks=base.peaks)
    assert b.peak_flags.tolist() == [0, 0] and b.kept_peaks.all()
    with pytest.raises(ValueError, match="peak_flags"):
        dataclasses.replace(b, peak_flags=np.zeros(3, dtype=np.int32))
    names = source_spec(BANDS).dtype.names
    for n in ("flag_peak_duplicate", "flag_peak_merged", "flag_peak_masked", "flag_peak_outside_footprint"):
        assert n in names and source_spec(BANDS, tract=True).dtype[n] == np.bool_
    assert blend_spec().dtype["n_peaks_dropped"] == np.int64 and blend_spec().dtype["flag_bad_fit"] == np.bool_


def test_whole_job_flags_bad_peaks_and_bands(tmp_path):
    d = str(tmp_path / "in")
    os.makedirs(d)
    base = _blend(seed=1, blend_id=1)
    write_blend(os.path.join(d, "1.npz"), base)
    p0, p1 = base.peaks.tolist()
    write_blend(os.path.join(d, "2.npz"), _with_peaks(base, [p0, p1, p0]))  # duplicate
    off = _outside_footprint_pixel(base)
    write_blend(os.path.join(d, "3.npz"), _with_peaks(base, [p0, list(off), p1, [-4, 2]]))  # off footprint, image
    write_blend(os.path.join(d, "4.npz"), _with_peaks(base, [list(off)]))  # nothing left to fit
    empty = _with_peaks(base, base.peaks)
    empty.variance = empty.variance.copy()
    empty.variance[1] = 0.0
    write_blend(os.path.join(d, "5.npz"), empty)  # a band without data
    with open(os.path.join(d, "6.npz"), "w") as fh:
        fh.write("not a blend\n")
    job = job_from_dict({"input": {"paths": [d], "bands": list(BANDS)},
                         "output": {"path": str(tmp_path / "out.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    out = run_job(job, progress=False)
    blends = {int(r["id"]): r for r in read_table(out, "blends")}
    src = read_table(out, "sources")
    assert sorted(blends) == [1, 2, 3, 4, 5, 6]
    for i in (1, 2, 3, 5):
        assert not blends[i]["flag_failed"], blends[i]["error_message"]
        assert not blends[i]["flag_bad_fit"]
    assert [int(blends[i]["n_peaks_dropped"]) for i in (1, 2, 3, 5)] == [0, 1, 2, 0]
    assert [int(blends[i]["n_peaks"]) for i in (1, 2, 3, 5)] == [2, 3, 4, 2]
    assert blends[5]["flag_incomplete_data"] and not blends[1]["flag_incomplete_data"]

    def rows(pid):
        r = src[src["parent_id"] == pid]
        return r[np.argsort(r["peak_index"])]

    s2 = rows(2)
    assert s2["flag_peak_duplicate"].tolist() == [False, False, True]
    assert s2["flag_peak_merged"].tolist() == [True, False, False]
    assert np.isnan(s2["flux_r"][2]) and np.all(np.isfinite(s2["flux_r"][:2]))
    s1 = rows(1)
    np.testing.assert_allclose(s2["flux_model_r"][:2], s1["flux_model_r"], rtol=1e-3)
    s3 = rows(3)
    assert s3["flag_peak_outside_footprint"].tolist() == [False, True, False, True]
    assert s3["peak_y"][3] == -4 and s3["peak_x"][3] == 2  # as given
    assert np.all(np.isfinite(s3["flux_i"][[0, 2]])) and np.all(np.isnan(s3["flux_i"][[1, 3]]))
    s5 = rows(5)
    assert np.all(np.isnan(s5["flux_r"])) and np.all(np.isfinite(s5["flux_g"]))
    for i, words in ((4, "none of the 1 peaks"), (6, "not an npz (zip) archive")):
        r = blends[i]
        msg = r["error_message"].decode()
        assert r["flag_failed"] and f"{i}.npz" in msg and words in msg, msg
        assert "pickle" not in _after_path(msg).lower()
    assert np.all(rows(4)["flag_parent_failed"])
