"""A patch's isolated footprints measured together (issue 15) against the one-by-one path they replace.

:func:`hpcblend.measure.isolated.measure_isolated_footprints` must give every column the one-by-one path
(:func:`hpcblend.detect.footprint_to_blend`, :func:`hpcblend.measure.patch.measure_isolated`,
:func:`hpcblend.measure.patch.forced_on_patch`) gives, on a simulated patch with what makes the cut-outs
differ: close neighbours whose pixels fall in the apertures, NaN and infinite pixels, zero variance,
masked bits (bad and not bad), sources at the patch edge. The footprint fluxes are summed in float64
instead of float32 (relative difference < 1e-5); everything else is equal to the bit.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from hpcblend.detect import detect_footprints, detection_image, footprint_to_blend
from hpcblend.geometry import Box
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, mask_bits
from hpcblend.io.schema import source_spec
from hpcblend.kernels.isolated import aperture_planes, aperture_planes_reference
from hpcblend.measure.isolated import measure_isolated_footprints
from hpcblend.measure.patch import forced_on_patch, measure_isolated
from hpcblend.units.rows import nan_float_columns

BANDS = ("g", "r", "i")
RADII = (3.0, 6.0, 12.0)
PAD, FORCED_PAD = 5, 14


def _patch(seed: int, shape=(160, 190)):
    """A simulated patch: Gaussian sources (some close pairs, some at the edges), noise, bad pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.indices(shape)
    nb = len(BANDS)
    images = np.zeros((nb, h, w))
    positions = [(rng.uniform(3, h - 3), rng.uniform(60, w - 3)) for _ in range(22)]  # x < 55 kept free
    positions += [(1.5, 80.2), (h - 2.2, 120.7), (80.3, w - 1.6)]  # at the edges
    y0, x0 = positions[0]
    positions += [(y0 + 4.0, x0 + 9.0)]  # a close neighbour (often one blend)
    compact = [(40.3, 15.4), (39.8, 35.6), (110.2, 25.0)]  # two footprints 20 px apart, one alone
    positions += compact
    for i, (y, x) in enumerate(positions):
        flux = rng.uniform(200, 3000) if i < len(positions) - 3 else 500.0
        size = rng.uniform(1.3, 3.0) if i < len(positions) - 3 else 1.2
        sed = rng.uniform(0.5, 1.5, nb)
        prof = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * size ** 2)) / (2 * np.pi * size ** 2)
        images += flux * sed[:, None, None] * prof[None]
    variance = np.full(images.shape, 4.0) * rng.uniform(0.8, 1.2, nb)[:, None, None]
    images += rng.normal(size=images.shape) * np.sqrt(variance)
    mask = np.zeros(images.shape, dtype=np.int32)
    images = images.astype(np.float32)
    variance = variance.astype(np.float32)
    # bad pixels in the compact sources: NaN, zero and infinite variance, a bad and a harmless mask bit
    (ya, xa), (yb, xb), (yc, xc) = [(int(round(y)), int(round(x))) for y, x in compact]
    images[0, ya, xa + 1] = np.nan
    variance[1, ya - 1, xa] = 0.0
    variance[2, yb + 1, xb] = np.inf
    mask[2, yb, xb - 1] |= 1 << MASK_PLANES["SAT"]
    mask[0, yc, xc] |= 1 << MASK_PLANES["DETECTED"]
    variance[1, yc - 8:yc + 9, xc - 8:xc + 9] = 0.0  # the lone compact source has no data in band r
    g = np.exp(-(np.indices((15, 15)) - 7.0) ** 2 / (2 * 1.6 ** 2)).prod(axis=0)
    psfs = np.repeat((g / g.sum())[None], nb, 0) * np.array([1.0, 1.1, 0.9])[:, None, None]
    return images, variance, mask, psfs


def _detected_patch(seed: int):
    """(images, data (variance, mask, psfs), outer box, footprints, label image) of a simulated patch."""
    images, variance, mask, psfs = _patch(seed)
    data = SimpleNamespace(variance=variance, mask=mask, psfs=psfs)
    outer = Box((400, 250), images.shape[1:])
    det, sigma = detection_image(images, variance, mask)
    footprints = detect_footprints(det, sigma, threshold=5.0, grow=2)
    labels = np.zeros(images.shape[1:], dtype=np.int32)
    for fp in footprints:
        labels[fp.bbox.slices][fp.mask] = fp.label
    return images, data, outer, footprints, labels


def _one_by_one(fp, images, data, labels, outer, running: int):
    """The former per-footprint path: the child's row."""
    blend = footprint_to_blend(fp, images, data.variance, data.mask, data.psfs, BANDS, blend_id=running,
                               source="test", origin=outer.origin, pad=PAD)
    src = source_spec(BANDS, tract=True, radii=RADII).empty(1)
    nan_float_columns(src)
    src["peak_y"] = blend.peaks[:, 0] + blend.origin[0]
    src["peak_x"] = blend.peaks[:, 1] + blend.origin[1]
    measure_isolated(blend, src, BANDS)
    models = (blend.images * blend.footprint[None])[None].astype(np.float32)
    forced_on_patch(blend, fp.label, models, src, outer, data, images, labels, BANDS, pad=FORCED_PAD,
                    bad_mask_planes=(), radii=RADII)
    no_data = (blend.mask & np.int32(mask_bits("NO_DATA"))) != 0
    return src, bool(np.any(no_data[:, blend.footprint])), blend


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolated_footprints_together_match_one_by_one(seed):
    images, data, outer, footprints, labels = _detected_patch(seed)
    isolated = [fp for fp in footprints if fp.n_peaks == 1]
    assert len(isolated) >= 8 and len(isolated) < len(footprints)  # some blended neighbours too
    ref, ref_incomplete, blends = zip(*(_one_by_one(fp, images, data, labels, outer, i)
                                        for i, fp in enumerate(isolated)))
    ref = np.concatenate(ref)

    n = len(isolated)
    h, w = images.shape[1:]
    fboxes = np.array([[fp.bbox.y0, fp.bbox.stop[0], fp.bbox.x0, fp.bbox.stop[1]] for fp in isolated])
    bboxes = np.stack([np.maximum(fboxes[:, 0] - PAD, 0), np.minimum(fboxes[:, 1] + PAD, h),
                       np.maximum(fboxes[:, 2] - PAD, 0), np.minimum(fboxes[:, 3] + PAD, w)], 1)
    origins = bboxes[:, [0, 2]] + np.array(outer.origin)
    assert all(tuple(o) == b.origin for o, b in zip(origins, blends))  # the same blend boxes
    src = source_spec(BANDS, tract=True, radii=RADII).empty(n)
    nan_float_columns(src)
    src["peak_y"], src["peak_x"] = ref["peak_y"], ref["peak_x"]
    incomplete = measure_isolated_footprints(
        src, fboxes, bboxes, np.array([fp.label for fp in isolated]), np.array([fp.peaks[0] for fp in isolated]),
        origins, outer, data, images, labels, BANDS, forced_pad=FORCED_PAD, bad_mask_planes=(), radii=RADII)

    np.testing.assert_array_equal(incomplete, ref_incomplete)
    assert np.any(incomplete) and np.any(ref["forced_flags"] != 0)  # the bad pixels were met
    lone = np.isnan(ref["flux_r"])  # no data in a band: NaN, not 0 ± 0 (both paths)
    assert lone.sum() == 1 and np.isnan(ref["flux_err_r"][lone]) and np.isfinite(ref["flux_g"][lone])
    for name in ref.dtype.names:
        a, b = src[name], ref[name]
        if name.startswith("flux_") and not name.startswith("flux_model"):
            np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=name)  # float64 vs float32 sums
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    # an aperture holding a neighbour's pixels is flagged as masked, as before
    assert np.any(src["ap_flux_flag_12_g"] & 16)


def test_aperture_planes_match_reference():
    images, variance, mask, _ = _patch(5)
    images[0, 3, 4] = np.inf
    variance[1, 5, 6] = -1.0
    labels = np.zeros(images.shape[1:], dtype=np.int32)
    labels[10:20, 10:30] = 3
    labels[1:6, 1:8] = 1
    bits = mask_bits(DEFAULT_BAD_MASK_PLANES)
    new = aperture_planes(images, variance, mask, labels, bits)
    ref = aperture_planes_reference(images, variance, mask, labels, bits)
    for a, b in zip(new, ref):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert new[2].sum() > 3  # bad pixels were found


def test_forced_on_patch_gives_the_same_rows_with_models_rendered_one_at_a_time():
    """A large parent's children are rendered one at a time (``models`` callable) instead of K dense models: the
    same forced photometry, value for value."""
    images, data, outer, footprints, labels = _detected_patch(4)
    fp = max(footprints, key=lambda f: (f.n_peaks, f.mask.sum()))
    blend = footprint_to_blend(fp, images, data.variance, data.mask, data.psfs, BANDS, blend_id=1, source="test",
                               origin=outer.origin, pad=PAD)
    rng = np.random.default_rng(4)
    models = (blend.images * blend.footprint[None])[None] * rng.uniform(0.2, 0.8, (blend.n_peaks, 1, 1, 1))
    models = models.astype(np.float32)
    rows = []
    for source in (models, lambda k: models[k]):
        src = source_spec(BANDS, tract=True, radii=RADII).empty(blend.n_peaks)
        nan_float_columns(src)
        src["peak_y"] = blend.peaks[:, 0] + blend.origin[0]
        src["peak_x"] = blend.peaks[:, 1] + blend.origin[1]
        forced_on_patch(blend, fp.label, source, src, outer, data, images, labels, BANDS, pad=FORCED_PAD,
                        bad_mask_planes=(), radii=RADII)
        rows.append(src)
    assert np.isfinite(rows[0]["psf_flux_g"]).all()
    for name in rows[0].dtype.names:
        np.testing.assert_array_equal(rows[0][name], rows[1][name], err_msg=name)
