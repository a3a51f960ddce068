"""The compiled measurement path (issue 15) against the NumPy code it replaced: same values to rounding.

* :func:`hpcblend.measure.forced.forced_photometry` (PSF fit in Numba on the PSF stamp, a PSF spectrum per
  PSF, planes in one pass, shared masked-pixel counts) against
  :func:`~hpcblend.measure.forced.forced_photometry_reference` (the former child-by-child NumPy loop) on
  simulated blends: truth models, deblended models, masked pixels, edges, an off-image position;
* each kernel of :mod:`hpcblend.kernels.photometry` and the windowed centroid of
  :mod:`hpcblend.kernels.moments` against its NumPy reference.

Tolerances: PSF fluxes and errors agree to ~1e-12 of their errors (a Fourier shift in compiled code and
another summation order), apertures to ~1e-12 σ (the same ``sep`` calls on the same residual), moments
to 1e-9 (the moments' Gaussian weight is evaluated by recurrence along rows); every flag bit is equal.
"""

import math

import numpy as np
import pytest
import sep

from hpcblend.config import DeblendConfig
from hpcblend.deblend.deblender import deblend_blend
from hpcblend.kernels import moments as km
from hpcblend.kernels import photometry as kp
from hpcblend.measure import forced
from hpcblend.measure.forced import forced_columns, forced_photometry, forced_photometry_reference
from hpcblend.simulate.synthetic import make_synthetic_blend

BANDS = ("g", "r", "i", "z", "y")


def _assert_same_table(new, ref, bands, radii=(3.0, 6.0, 12.0)):
    """Every column of two forced-photometry tables equal: fluxes to 1e-9 of their errors, moments to 1e-9."""
    assert new.dtype == ref.dtype and len(new) == len(ref)
    for name in new.dtype.names:
        a, b = new[name], ref[name]
        if a.dtype.kind in "iu" or name in ("y", "x"):
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        ok = ~np.isnan(b)
        if "_flux_" in name and "_err_" not in name:
            err = ref[name.replace("_flux_", "_flux_err_")][ok]
            assert np.all(np.abs(a[ok] - b[ok]) <= 1e-9 * err + 1e-12 * np.abs(b[ok])), name
        else:
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9, err_msg=name)


def _scene(seed, n_sources=4, shape=(56, 60)):
    blend, truth = make_synthetic_blend(seed=seed, n_sources=n_sources, shape=shape)
    positions = np.stack([truth["y"], truth["x"]], 1)
    return blend, truth, positions


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_forced_matches_reference_with_truth_models(seed):
    blend, truth, positions = _scene(seed)
    args = (blend.images, blend.variance, positions, blend.psfs, BANDS, truth["models"])
    _assert_same_table(forced_photometry(*args), forced_photometry_reference(*args), BANDS)
    for band in ("r", 0):
        _assert_same_table(forced_photometry(*args, shape_band=band),
                           forced_photometry_reference(*args, shape_band=band), BANDS)


def test_forced_matches_reference_with_deblended_models_weights_and_flags():
    blend, truth, _ = _scene(11, n_sources=3)
    result = deblend_blend(blend, DeblendConfig())
    models = result.child_models()
    positions = np.stack([result.children["y"], result.children["x"]], 1)  # the centroids, as a tract run
    positions = np.where(np.isfinite(positions), positions, blend.peaks.astype(float))
    weights = np.where(blend.footprint[None], 1.0 / blend.variance, 0.0).astype(np.float32)
    weights[:, int(positions[0, 0]), int(positions[0, 1]) + 1] = 0.0  # a masked pixel by a centre
    weights[2, 3, 4] = np.nan  # a non-finite weight counts as 0
    # one position near the edge (PSF and apertures truncated) and one off the image
    k = models.shape[0]
    models = np.concatenate([models, np.zeros((2,) + models.shape[1:], dtype=models.dtype)])
    positions = np.concatenate([positions, [[1.3, 2.6], [-3.0, 10.0]]])
    args = (blend.images, blend.variance, positions, blend.psfs, BANDS, models)
    new = forced_photometry(*args, weights=weights)
    ref = forced_photometry_reference(*args, weights=weights)
    _assert_same_table(new, ref, BANDS)
    assert new["flags"][k + 1] == forced.FORCED_OFF_IMAGE
    assert new["flags"][k] & forced.FORCED_PSF_EDGE and new["flags"][k] & forced.FORCED_AP_TRUNCATED
    assert new["flags"][0] & forced.FORCED_PSF_MASKED
    # callable models give the same rows
    again = forced_photometry(*args[:5], lambda i: models[i], weights=weights)
    for name in new.dtype.names:
        np.testing.assert_array_equal(new[name], again[name])


def test_forced_table_empty_and_columns():
    blend, truth, positions = _scene(2, n_sources=1)
    out = forced_photometry(blend.images, blend.variance, np.zeros((0, 2)), blend.psfs, BANDS,
                            np.zeros((0,) + blend.images.shape))
    assert len(out) == 0 and list(out.dtype.names) == [n for n, _, _ in forced_columns(BANDS)]


def test_shifted_psf_matches_fourier_shift():
    rng = np.random.default_rng(0)
    psfs = rng.uniform(size=(2, 21, 17))
    padded, spectra = kp.padded_psf_spectra(psfs)
    for dy, dx in [(0.3, -0.4), (-0.5, 0.49), (0.0, 0.0), (0.0, 0.2)]:
        for b in range(2):
            np.testing.assert_allclose(kp.shifted_psf(padded[b], spectra[b], dy, dx),
                                       kp.shift_image(psfs[b], dy, dx), rtol=0, atol=1e-14)


def test_psf_fluxes_match_reference_per_band():
    blend, truth, positions = _scene(5, n_sources=2)
    psfs = blend.psfs / blend.psfs.sum(axis=(1, 2))[:, None, None]
    padded, spectra = kp.padded_psf_spectra(psfs)
    img = blend.images.astype(np.float64)
    var = blend.variance.astype(np.float64)
    w = 1.0 / var
    w[:, 20:23, 30:33] = 0.0
    model = truth["models"][0]
    base = img - model  # the kernel fits base + model: here the image itself
    for y, x in list(positions) + [(0.2, 58.7), (21.0, 31.4)]:
        flux, err, flag = np.empty(5), np.empty(5), np.zeros(5, dtype=np.int32)
        kp.psf_fluxes(base, model, w, var, padded, spectra, float(y), float(x), flux, err, flag)
        for b in range(5):
            f, e, fl = kp.psf_flux_reference(img[b], w[b], var[b], psfs[b], float(y), float(x))
            assert fl == flag[b]
            assert flux[b] == pytest.approx(f, abs=1e-10 * e) and err[b] == pytest.approx(e, rel=1e-12)


def test_plane_kernels_match_numpy():
    rng = np.random.default_rng(4)
    images = rng.normal(size=(3, 30, 40)).astype(np.float32)
    variance = rng.uniform(0.5, 2.0, size=images.shape).astype(np.float32)
    images[0, 3, 4] = np.nan
    variance[1, 5, 6] = 0.0
    variance[2, 7, 8] = np.inf
    total = np.abs(rng.normal(size=images.shape))
    weights = np.divide(1.0, variance, out=np.zeros(images.shape, dtype=np.float32), where=variance > 0)
    weights[0, 10:12, 10:12] = 0.0
    weights[1, 0, 0] = np.nan
    for w, use in ((weights, True), (images, False)):
        wts, good, var, base, dom, sigma = kp.weighted_planes(images, variance, w, use, total)
        data_r, var_r, wts_r, good_r = forced._weighted_pixels(images, variance, w if use else None)
        np.testing.assert_array_equal(wts, wts_r)
        np.testing.assert_array_equal(good, good_r)
        np.testing.assert_array_equal(var, var_r)
        np.testing.assert_array_equal(base, np.where(good_r, data_r - total, 0.0))
        np.testing.assert_array_equal(dom, np.where(good_r, data_r, total))
        np.testing.assert_array_equal(sigma, np.sqrt(var_r))
    mask = np.zeros(images.shape, dtype=np.int32)
    mask[2, 1:4, 1:4] = 4
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[:, 20:] = 2
    labels[:, 30:] = 3
    got = kp.cutout_planes(images, variance, mask, 4, labels, 2)
    ref = kp.cutout_planes_reference(images, variance, mask, 4, labels, 2)
    finite = np.isfinite(images)
    np.testing.assert_array_equal(got[0][finite], ref[0][finite])  # non-finite pixels have weight 0
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[2], ref[2])
    model = np.abs(rng.normal(size=images.shape))
    for band in (-1, 1):
        heavy = np.where(total > 0, dom * model / np.where(total > 0, total, 1.0), 0.0)
        expect = heavy.sum(axis=0) if band < 0 else heavy[band]
        np.testing.assert_array_equal(kp.heavy_footprint(dom, total, model, band), expect)


def test_masked_near_finds_every_band_sep_counts():
    rng = np.random.default_rng(9)
    good = rng.uniform(size=(4, 50, 50)) > 0.002
    good[3] = True
    ys, xs = rng.uniform(-2, 52, size=(2, 12))
    rr = np.array([3.0, 6.0, 12.0])
    near = kp.masked_near(good, ys, xs, rr.max() + 1.0)
    assert not near[3]
    for b in range(4):
        n_bad, _, _ = sep.sum_circle((~good[b]).astype(np.float64), np.repeat(xs, 3), np.repeat(ys, 3),
                                     np.tile(rr, 12), subpix=0)
        assert near[b] or not np.any(n_bad > 0)


def test_windowed_centroid_and_moments_match_reference():
    rng = np.random.default_rng(2)
    yy, xx = np.indices((48, 52), dtype=np.float64)
    img = 50 * np.exp(-((yy - 23.6) ** 2 / 8 + (xx - 26.3) ** 2 / 5 + (yy - 23.6) * (xx - 26.3) / 9))
    img += rng.normal(scale=0.5, size=img.shape)
    for y0, x0, sigma in [(24.0, 26.0, 1.8), (20.0, 30.0, 2.5), (2.0, 2.0, 1.2)]:
        got = km.windowed_centroid(img, y0, x0, sigma, 50, 3.0)
        ref = km.windowed_centroid_reference(img, y0, x0, sigma, 50, 3.0)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    zero_outside = np.where(img > 5, img, 0.0)  # zero rows and columns around an object
    got = km.adaptive_moments(zero_outside, 24.0, 26.0, 2.0)
    first, last = km.nonzero_row_extents(zero_outside)
    assert np.all(first[~np.any(zero_outside != 0, axis=1)] > last[~np.any(zero_outside != 0, axis=1)])
    full = km.weighted_moment_sums(zero_outside, got[4], got[3], got[0], got[1], got[2], 25.0)
    d = np.stack([xx - got[3], yy - got[4]], -1)
    minv = np.linalg.inv([[got[0], got[2]], [got[2], got[1]]])
    rho2 = np.einsum("...i,ij,...j->...", d, minv, d)
    wi = np.where(rho2 < 25.0, np.exp(-0.5 * rho2), 0.0) * zero_outside
    expect = [wi.sum(), (wi * d[..., 0]).sum(), (wi * d[..., 1]).sum(), (wi * d[..., 0] ** 2).sum(),
              (wi * d[..., 1] ** 2).sum(), (wi * d[..., 0] * d[..., 1]).sum()]
    np.testing.assert_allclose(full, expect, rtol=1e-11, atol=1e-9 * math.fabs(expect[0]))
