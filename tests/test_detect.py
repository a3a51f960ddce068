"""Detection on a patch: background, detection image, footprints, peaks, cut-outs (hpcblend.detect)."""

import math

import numpy as np
import pytest

from hpcblend import detect
from hpcblend.detect import footprints
from hpcblend.errors import BlendDataError
from hpcblend.io.blends import BlendData
from hpcblend.io.masks import MASK_PLANES

BANDS = ("g", "r", "i", "z", "y")
NOISE = np.array([1.0, 1.2, 1.5, 2.0, 3.0])  # per-band noise sigma (counts)
PSF_SIGMA = 1.5  # px; also the default matched-filter sigma


def _gauss_stamp(shape, y, x, sigma, q=1.0, theta=0.0):
    """Unit-flux elliptical Gaussian sampled at pixel centres, (H, W)."""
    yy, xx = np.indices(shape, dtype=np.float64)
    dy, dx = yy - y, xx - x
    c, s = math.cos(theta), math.sin(theta)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return np.exp(-0.5 * ((u / sigma) ** 2 + (v / (q * sigma)) ** 2)) / (2 * math.pi * sigma * sigma * q)


def _sigma_det(noise=NOISE):
    """Noise sigma of the inverse-variance weighted detection image."""
    return 1.0 / math.sqrt(np.sum(1.0 / noise ** 2))


def _flux_for_snr(snr, sigma=PSF_SIGMA, noise=NOISE):
    """Per-band flux (flat SED) of a Gaussian of ``sigma`` with matched-filter S/N ``snr`` in the det image."""
    return snr * _sigma_det(noise) * math.sqrt(4 * math.pi * sigma * sigma)


def _field(shape, sources, seed, noise=NOISE, background=0.0):
    """(images, variance, mask) of Gaussian sources [(y, x, flux, sigma), ...] with a flat SED plus noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    model = np.zeros((h, w))
    for y, x, flux, sigma in sources:
        model += flux * _gauss_stamp(shape, y, x, sigma)
    nb = len(noise)
    images = model[None] + rng.normal(size=(nb, h, w)) * noise[:, None, None] + background
    variance = np.broadcast_to((noise ** 2)[:, None, None], (nb, h, w)).astype(np.float32).copy()
    return images.astype(np.float32), variance, np.zeros((nb, h, w), dtype=np.int32)


def _detect(images, variance, mask, **kw):
    det, sig = detect.detection_image(images, variance, mask)
    return detect.detect_footprints(det, sig, **kw)


def _all_peaks(footprints):
    if not footprints:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate([f.peaks for f in footprints])


# ----------------------------------------------------------------------- background


def test_background_recovers_smooth_sky_and_ignores_masked_pixels():
    rng = np.random.default_rng(1)
    nb, h, w = 2, 256, 256
    yy, xx = np.indices((h, w))
    sky = 50.0 + 0.005 * yy + 0.0025 * xx  # counts, a gentle gradient
    images = (sky[None] + rng.normal(size=(nb, h, w)) * np.array([1.0, 2.0])[:, None, None])
    mask = np.zeros((nb, h, w), dtype=np.int32)
    images[:, 100:140, 100:140] = 1e6  # a saturated block: masked, must not bias the sky
    mask[:, 100:140, 100:140] = 1 << MASK_PLANES["SAT"]
    images[1, 10, 10] = np.nan  # non-finite pixels are ignored
    big_endian = images.astype(">f8")  # sep needs native order; the function must convert
    res = detect.estimate_background(big_endian, mask, box_size=64, filter_size=3)
    assert res.images.shape == (nb, h, w) and res.images.dtype == np.float32
    assert res.background.dtype == np.float32 and res.rms.dtype == np.float32
    good = mask[0] == 0
    good[10, 10] = False
    for b, sigma in enumerate((1.0, 2.0)):
        assert np.abs(res.background[b][good] - sky[good]).max() < 0.5 * sigma
        assert abs(np.median(res.rms[b][good]) - sigma) < 0.05 * sigma
        assert abs(res.global_rms[b] - sigma) < 0.05 * sigma
        assert abs(np.mean(res.images[b][good])) < 0.05 * sigma
    assert np.isnan(res.images[1, 10, 10])


def test_background_fully_masked_band_and_bad_arguments():
    images = np.ones((2, 40, 50), dtype=np.float32)
    mask = np.zeros(images.shape, dtype=np.int32)
    mask[1] = 1 << MASK_PLANES["NO_DATA"]
    res = detect.estimate_background(images, mask, box_size=16)
    assert np.all(np.isnan(res.rms[1])) and np.isnan(res.global_rms[1])
    assert np.all(res.background[1] == 0)
    assert np.allclose(res.images[0], 0.0, atol=1e-4)
    with pytest.raises(BlendDataError, match="mask"):
        detect.estimate_background(images, mask[:, :10])
    with pytest.raises(BlendDataError, match="3-D"):
        detect.estimate_background(images[0])
    with pytest.raises(ValueError, match="box_size"):
        detect.estimate_background(images, box_size=0)


# ----------------------------------------------------------------------- detection image


def test_detection_image_is_inverse_variance_mean_with_masks():
    images = np.array([[[2.0, 1.0]], [[4.0, 100.0]]], dtype=np.float32)  # (2, 1, 2)
    variance = np.array([[[1.0, 1.0]], [[4.0, 4.0]]], dtype=np.float32)
    mask = np.zeros(images.shape, dtype=np.int32)
    mask[1, 0, 1] = 1 << MASK_PLANES["BAD"]
    det, sig = detect.detection_image(images, variance, mask)
    assert det.shape == (1, 2) and det.dtype == np.float32 and sig.dtype == np.float32
    # pixel 0: (2/1 + 4/4) / (1 + 1/4) = 2.4; sigma = 1/sqrt(1.25)
    assert det[0, 0] == pytest.approx(2.4)
    assert sig[0, 0] == pytest.approx(1 / math.sqrt(1.25))
    # pixel 1: band 1 is masked -> band 0 only
    assert det[0, 1] == pytest.approx(1.0) and sig[0, 1] == pytest.approx(1.0)
    # a pixel bad in every band: det 0, sigma inf
    variance2 = variance.copy()
    variance2[:, 0, 0] = 0.0
    det2, sig2 = detect.detection_image(images, variance2, None)
    assert det2[0, 0] == 0 and np.isinf(sig2[0, 0])
    with pytest.raises(ValueError, match="method"):
        detect.detection_image(images, variance, mask, method="max")
    with pytest.raises(BlendDataError, match="variance"):
        detect.detection_image(images, variance[:1], mask)


def test_detection_images_of_pure_noise_have_unit_significance():
    rng = np.random.default_rng(7)
    nb, h, w = 5, 200, 200
    images = rng.normal(size=(nb, h, w)) * NOISE[:, None, None]
    variance = np.broadcast_to((NOISE ** 2)[:, None, None], images.shape)
    det, sig = detect.detection_image(images, variance)
    z = det / sig
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    s = detect.significance_image(det, sig)
    assert abs(s[20:-20, 20:-20].std() - 1) < 0.1  # filtered noise keeps unit variance
    chi, one = detect.detection_image(images, variance, method="chi2")
    assert np.all(one == 1)
    assert abs(chi.mean()) < 0.02 and abs(chi.std() - 1) < 0.03


# ----------------------------------------------------------------------- footprints and peaks


def test_all_sources_above_snr10_detected_at_their_positions():
    shape = (240, 240)
    rng = np.random.default_rng(11)
    grid = [(y, x) for y in range(25, 230, 38) for x in range(25, 230, 38)]
    sources = []
    for (y, x), snr in zip(grid, np.linspace(10, 60, len(grid))):
        sources.append((y + rng.uniform(-0.5, 0.5), x + rng.uniform(-0.5, 0.5), _flux_for_snr(snr), PSF_SIGMA))
    images, variance, mask = _field(shape, sources, seed=2)
    fps = _detect(images, variance, mask)
    peaks = _all_peaks(fps)
    assert len(fps) == len(sources)  # one footprint per source, nothing spurious
    for y, x, _, _ in sources:
        d = np.hypot(peaks[:, 0] - y, peaks[:, 1] - x)
        assert d.min() <= 1.5, (y, x)
    for f in fps:
        assert f.n_peaks == 1 and detect.is_isolated(f)
        assert f.peaks.dtype == np.int64 and f.peaks.shape == (1, 2)
        assert f.area == int(f.mask.sum()) >= 5
        assert f.bbox.contains(f.peaks[:, 0], f.peaks[:, 1]).all()
        assert f.mask[f.peaks[0, 0] - f.bbox.y0, f.peaks[0, 1] - f.bbox.x0]


@pytest.mark.parametrize("method", ["weighted", "chi2"])
def test_pure_noise_gives_almost_no_footprints(method):
    # 5-band 1000x1000 noise: expect < 1 false footprint per 10^6 px at 5 sigma
    rng = np.random.default_rng(5)
    nb, h, w = 5, 1000, 1000
    images = (rng.standard_normal(size=(nb, h, w), dtype=np.float32) * NOISE[:, None, None].astype(np.float32))
    variance = np.broadcast_to((NOISE ** 2)[:, None, None].astype(np.float32), images.shape)
    det, sig = detect.detection_image(images, variance, method=method)
    fps = detect.detect_footprints(det, sig, threshold=5.0)
    assert len(fps) <= 1


def test_two_close_sources_one_footprint_two_peaks_brightest_first():
    shape = (64, 64)
    a = (30.2, 28.0, _flux_for_snr(60), PSF_SIGMA)
    b = (31.0, 34.8, _flux_for_snr(35), PSF_SIGMA)  # 6.85 px away
    images, variance, mask = _field(shape, [a, b], seed=3)
    fps = _detect(images, variance, mask)
    assert len(fps) == 1
    f = fps[0]
    assert f.n_peaks == 2 and not detect.is_isolated(f)
    assert np.hypot(*(f.peaks[0] - (30.2, 28.0))) <= 1.5
    assert np.hypot(*(f.peaks[1] - (31.0, 34.8))) <= 1.5
    assert f.peak_significance[0] > f.peak_significance[1]
    assert f.peak_values.shape == (2,)


def test_noise_bumps_on_an_extended_galaxy_are_not_peaks():
    # a large faint galaxy (sigma 12 px, S/N 40): its flat top holds ~10 noise local maxima
    shape = (128, 128)
    for seed in range(3):
        images, variance, mask = _field(shape, [(64, 64, _flux_for_snr(40, 12.0), 12.0)], seed=seed)
        loose = _detect(images, variance, mask, min_prominence=0.0, min_peak_separation=0.0)
        assert len(loose) == 1 and loose[0].n_peaks >= 5  # every candidate kept
        fps = _detect(images, variance, mask)  # default: prominence >= 3 sigma
        assert len(fps) == 1 and fps[0].n_peaks == 1
        assert fps[0].meta["n_candidates"] == loose[0].n_peaks
        assert np.hypot(*(fps[0].peaks[0] - 64)) < 8  # the flat top lets the peak wander


def test_growing_merges_nearby_footprints():
    shape = (80, 100)
    images, variance, mask = _field(shape, [(40, 35, _flux_for_snr(25), PSF_SIGMA),
                                            (40, 53, _flux_for_snr(25), PSF_SIGMA)], seed=6)
    det, sig = detect.detection_image(images, variance, mask)
    apart = detect.detect_footprints(det, sig, grow=0)
    assert len(apart) == 2
    pa = np.argwhere(apart[0].full_mask(shape))
    pb = np.argwhere(apart[1].full_mask(shape))
    gap = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min()  # px between the regions
    assert gap > 3
    still_apart = detect.detect_footprints(det, sig, grow=int(gap // 2) - 1)
    assert len(still_apart) == 2
    merged = detect.detect_footprints(det, sig, grow=int(math.ceil(gap / 2)))
    assert len(merged) == 1 and merged[0].n_peaks == 2
    assert merged[0].area > apart[0].area + apart[1].area
    # grown footprint contains both ungrown ones
    full = merged[0].full_mask(shape)
    assert full[apart[0].full_mask(shape)].all() and full[apart[1].full_mask(shape)].all()
    large = detect.detect_footprints(det, sig, grow=8)  # distance-transform path
    assert len(large) == 1


def test_detect_footprints_rejects_bad_arguments_and_handles_empty():
    det = np.zeros((20, 20), dtype=np.float32)
    sig = np.ones((20, 20), dtype=np.float32)
    assert detect.detect_footprints(det, sig) == []
    with pytest.raises(ValueError, match="threshold"):
        detect.detect_footprints(det, sig, threshold=0)
    with pytest.raises(ValueError, match="min_area"):
        detect.detect_footprints(det, sig, min_area=0)
    with pytest.raises(BlendDataError, match="det_sigma"):
        detect.detect_footprints(det, sig[:5])
    with pytest.raises(ValueError, match="odd"):
        detect.significance_image(det, sig, kernel=np.ones((4, 4)))


# ----------------------------------------------------------------------- cut-outs


def test_footprint_to_blend_round_trip_of_coordinates():
    shape = (90, 110)
    sources = [(45, 50, _flux_for_snr(50), PSF_SIGMA), (47, 57, _flux_for_snr(30), PSF_SIGMA),
               (3, 4, _flux_for_snr(40), PSF_SIGMA)]  # the last one at the corner: box clipped
    images, variance, mask = _field(shape, sources, seed=8)
    images[2, 60, 80] = np.nan  # non-finite pixel inside a cut-out -> NO_DATA
    fps = _detect(images, variance, mask)
    assert sorted(f.n_peaks for f in fps) == [1, 2]
    psfs = np.stack([_gauss_stamp((15, 15), 7, 7, PSF_SIGMA) * 2.0] * 5)  # not normalised on purpose
    patch_origin = (4000, 12000)
    for n, f in enumerate(fps):
        blend = detect.footprint_to_blend(f, images, variance, mask, psfs, BANDS, blend_id=100 + n,
                                          source="tract0/patch1,2", origin=patch_origin, pad=5)
        assert isinstance(blend, BlendData)
        y0, x0, bh, bw = blend.meta["bbox_patch"]
        assert blend.images.shape == (5, bh, bw) and blend.images.dtype == np.float32
        assert blend.variance.dtype == np.float32 and blend.mask.dtype == np.int32
        assert blend.peaks.dtype == np.int64 and blend.footprint.dtype == bool
        assert blend.origin == (patch_origin[0] + y0, patch_origin[1] + x0)
        # absolute peak positions are preserved
        assert np.array_equal(blend.peaks + np.array(blend.origin), f.peaks + np.array(patch_origin))
        # pixel values at the peaks are those of the patch
        assert np.array_equal(blend.images[:, blend.peaks[:, 0], blend.peaks[:, 1]],
                              images[:, f.peaks[:, 0], f.peaks[:, 1]])
        # footprint: True inside, same pixels as in the patch; peaks inside it
        assert np.array_equal(blend.footprint, f.full_mask(shape)[y0:y0 + bh, x0:x0 + bw])
        assert blend.footprint[blend.peaks[:, 0], blend.peaks[:, 1]].all()
        assert np.allclose(blend.psfs.sum(axis=(1, 2)), 1.0)
        assert blend.meta["isolated"] == (f.n_peaks == 1)
        fb = f.bbox
        if fb.y0 >= 5 and fb.x0 >= 5:
            assert (y0, x0, bh, bw) == (fb.y0 - 5, fb.x0 - 5, fb.height + 10, fb.width + 10)
        else:  # clipped at the patch corner
            assert y0 == 0 and x0 == 0 and bh <= fb.stop[0] + 5
        detected = (blend.mask & (1 << MASK_PLANES["DETECTED"])) != 0
        assert np.array_equal(detected[0], blend.footprint)
        if y0 <= 60 < y0 + bh and x0 <= 80 < x0 + bw:
            assert blend.images[2, 60 - y0, 80 - x0] == 0
            assert blend.mask[2, 60 - y0, 80 - x0] & (1 << MASK_PLANES["NO_DATA"])
            assert blend.meta["n_no_data_pixels"] == 1
        assert np.all(np.isfinite(blend.images))
    with pytest.raises(BlendDataError, match="band names"):
        detect.footprint_to_blend(fps[0], images, variance, mask, psfs, BANDS[:4], 1, "x")
    with pytest.raises(BlendDataError, match="psfs"):
        detect.footprint_to_blend(fps[0], images, variance, mask, psfs[:, :14], BANDS, 1, "x")


def test_grid_prominence_equals_exact_per_candidate_test():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(9)
    yy, xx = np.indices((90, 90))
    s = 9.0 * np.exp(-0.5 * ((yy - 45) ** 2 + (xx - 45) ** 2) / 30.0 ** 2) + rng.normal(size=(90, 90))
    s = ndi.gaussian_filter(s, 1.0) * 2.0  # smooth, with many local maxima
    mask = s > 2.0
    lm = (s >= ndi.maximum_filter(s, size=3, mode="constant", cval=-np.inf)) & mask
    cand = np.argwhere(lm)
    vals = s[cand[:, 0], cand[:, 1]]
    order = np.argsort(-vals, kind="stable")
    cand, vals = cand[order], vals[order]
    assert len(cand) > 30
    for h in (0.5, 1.0, 3.0):
        exact = np.zeros(len(cand), dtype=bool)
        for i, ((y, x), v) in enumerate(zip(cand, vals)):
            lab, _ = ndi.label(mask & (s >= v - h), structure=np.ones((3, 3)))
            exact[i] = not np.any(s[lab == lab[y, x]] > v)
        got = footprints._prominent(cand, vals, s, mask, h)
        exact[0] = True
        assert np.array_equal(got, exact), h
        assert 1 < got.sum() < len(cand) or h == 3.0


def test_significance_image_matches_direct_matched_filter():
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(12)
    det = rng.normal(size=(60, 70))
    sig = rng.uniform(0.5, 2.0, size=(60, 70))
    sig[10:15, 20:30] = np.inf  # no data
    det[30, 40] += 50.0
    ivar = np.where(np.isfinite(sig), 1 / sig ** 2, 0.0)
    for kernel in (None, detect.gaussian_kernel(1.5) + 1e-3):  # separable and general paths
        k = detect.gaussian_kernel(1.5) if kernel is None else kernel / kernel.sum()
        num = fftconvolve(det * ivar, k[::-1, ::-1], mode="same")
        den = fftconvolve(ivar, (k * k)[::-1, ::-1], mode="same")
        got = detect.significance_image(det, sig, kernel=kernel)
        np.testing.assert_allclose(got, num / np.sqrt(den), rtol=1e-6, atol=1e-8)


def test_footprint_bbox_is_the_skymap_box():
    from hpcblend.geometry import Box

    images, variance, mask = _field((50, 50), [(20, 30, _flux_for_snr(30), PSF_SIGMA)], seed=13)
    (f,) = _detect(images, variance, mask)
    assert isinstance(f.bbox, Box)
    assert f.mask.shape == f.bbox.shape
    assert f.bbox.contains(20, 30)
    assert np.array_equal(f.full_mask((50, 50))[f.bbox.slices], f.mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_detection_image_equals_numpy_reference(dtype):
    """kernels.detection.weighted_detection_image (one pass) against the NumPy reference, bit for bit."""
    from hpcblend.detect.image import detection_image, detection_image_reference
    from hpcblend.io.masks import mask_bits

    rng = np.random.default_rng(7)
    img = rng.normal(size=(4, 61, 83)).astype(dtype)
    var = rng.uniform(0.2, 3.0, size=img.shape).astype(dtype)
    mask = np.zeros(img.shape, np.int32)
    img[0, 5, 5] = np.nan
    img[1, 5, 6] = np.inf
    var[1, 6, 6] = 0
    var[2, 7, 7] = np.inf
    var[3, 7, 8] = np.nan
    var[:, 10, 10] = -1  # no band has data here: D = 0, sigma = inf
    mask[3, 8, 8] = mask_bits("BAD")
    mask[:, 9, 9] = mask_bits("SAT")
    mask[2, 11, 11] = mask_bits("DETECTED")  # not a bad plane: kept
    for m in (mask, None, mask.astype(np.uint16)):
        got = detection_image(img, var, m)
        ref = detection_image_reference(img, var, m)
        for g, r in zip(got, ref):
            assert g.dtype == np.float32 and np.array_equal(g, r)
    det, sigma = detection_image(img, var, mask)
    assert det[10, 10] == 0 and np.isinf(sigma[10, 10]) and np.isinf(sigma[9, 9])
    assert np.isfinite(sigma[8, 8]) and np.isfinite(sigma[5, 5])


@pytest.mark.parametrize("radius", [0, 1, 2, 4, 5, 6, 11])
def test_compiled_footprint_growth_equals_distance_transform(radius):
    """kernels.detection.dilate_disk (edge pixels paint their disk) against SciPy, at every radius."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(radius)
    mask = ndi.binary_dilation(rng.random((157, 203)) > 0.995, iterations=3)
    mask[0, :7] = True  # touching the edges
    mask[-3:, -1] = True
    mask[60:100, 50:120] = True  # a large region: interior pixels paint nothing
    got = footprints._grow_mask(mask, radius)
    assert np.array_equal(got, footprints.grow_mask_reference(mask, radius))
    if radius:
        assert np.array_equal(got, ndi.distance_transform_edt(~mask) <= radius)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_significance_equals_numpy_reference(dtype):
    """The matched filter's compiled elementwise steps against NumPy, bit for bit (separable and 2-D kernels)."""
    from hpcblend.detect.image import significance_image, significance_image_reference

    rng = np.random.default_rng(3)
    det = rng.normal(size=(70, 90)).astype(dtype)
    sigma = rng.uniform(0.5, 2.0, size=det.shape).astype(dtype)
    sigma[3, 4] = np.inf  # no data
    sigma[5, 6] = 0.0
    sigma[7, 8] = np.nan
    sigma[40:60, 0:25] = np.inf  # a block without data: S = 0 where the kernel sees none
    yy, xx = np.mgrid[-3:4, -3:4]
    for kernel in (None, np.exp(-(yy ** 2 + 2 * xx ** 2 + xx * yy) / 4.0)):  # Gaussian (separable), not separable
        got = significance_image(det, sigma, kernel)
        ref = significance_image_reference(det, sigma, kernel)
        assert got.dtype == np.float64 and np.array_equal(got, ref)
        assert got[50, 5] == 0 and np.all(np.isfinite(got))


def test_compiled_separable_correlation_equals_scipy_bit_for_bit():
    """kernels.detection.correlate_separable: SciPy's correlate1d on both axes, same summation order, for
    symmetric, antisymmetric and asymmetric kernels, and images smaller than the kernel."""
    from scipy import ndimage as ndi

    from hpcblend.detect.image import _separable, gaussian_kernel
    from hpcblend.kernels.detection import correlate_separable

    rng = np.random.default_rng(11)
    a, b = _separable(gaussian_kernel(1.5))  # SVD factors: symmetric only to ~1e-16 (SciPy's two paths)
    kernels = [(a, b), (a * a, b * b), (np.array([-1.0, 0.0, 1.0]), np.array([0.5, 0.0, -0.5])),
               (rng.uniform(size=5), rng.uniform(size=7))]
    for shape in ((60, 75), (3, 40), (40, 2)):
        image = rng.normal(size=shape) * (rng.uniform(size=shape) > 0.2)
        for ka, kb in kernels:
            ref = ndi.correlate1d(ndi.correlate1d(image, ka, axis=0, mode="constant", cval=0.0), kb, axis=1,
                                  mode="constant", cval=0.0)
            got = correlate_separable(image, ka, kb)
            assert np.array_equal(got, ref), (shape, ka, kb)
