"""Each Numba/NumPy kernel of hpcblend.kernels against a plain NumPy/SciPy reference."""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from hpcblend.deblend.component_models import ComponentModels
from hpcblend.kernels import convolution, fit, fit_steps, initialization, operators, psf
from fit_reference import monotonic_cap

# ---------------------------------------------------------------- PSF kernels


def _gauss2d(shape, sy, sx, cy=0.0, cx=0.0, theta=0.0):
    yy, xx = np.indices(shape, dtype=np.float64)
    yy -= shape[0] // 2 + cy
    xx -= shape[1] // 2 + cx
    c, s = np.cos(theta), np.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    g = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return g / g.sum()


def _double_gaussian(shape, s1=1.6, s2=4.0, f=0.1):
    p = (1 - f) * _gauss2d(shape, s1, s1) + f * _gauss2d(shape, s2, s2)
    return p / p.sum()


def _real_like_psf(shape=(41, 43)):
    """Elliptical, rotated, slightly off-centre core plus a wide wing: not symmetric."""
    p = 0.85 * _gauss2d(shape, 1.5, 1.9, cy=0.2, cx=-0.15, theta=0.4) + 0.15 * _gauss2d(shape, 4.0, 4.6, theta=-0.3)
    return p / p.sum()


def test_psf_difference_kernel_double_gaussian():
    p = _double_gaussian((41, 41))
    m = psf.gaussian_psf(41, 0.8)
    d = psf.psf_difference_kernel(p, m)
    assert d.shape == p.shape
    assert d.sum() == pytest.approx(1.0, abs=1e-12)
    rec = fftconvolve(d, m, mode="same")
    assert np.abs(rec - p).max() < 1e-3 * p.max()


def test_psf_difference_kernel_rectangular_real_like():
    p = _real_like_psf((41, 43))
    m = psf.gaussian_psf(43, 0.8)
    d = psf.psf_difference_kernel(p, m)
    assert d.shape == (41, 43)
    # pad D to the model's square grid (centred) so 'same' keeps the common centre, then crop back
    d_pad = np.zeros((43, 43))
    d_pad[1:42, :] = d
    rec = fftconvolve(d_pad, m, mode="same")[1:42, :]
    assert np.abs(rec - p).max() < 1e-3 * p.max()


@pytest.mark.parametrize("psf_shape, model_size, regularization", [((41, 43), 43, 1e-7), ((25, 25), 41, 1e-5),
                                                                  ((43, 41), 31, 1e-7)])
def test_psf_difference_kernels_compiled_match_numpy_reference(psf_shape, model_size, regularization):
    """The compiled deconvolution (rocket-fft, one call) against the NumPy/SciPy reference, on a stack of
    different asymmetric PSFs, PSFs smaller and larger than the model PSF."""
    psfs = np.stack([_real_like_psf(psf_shape), _double_gaussian(psf_shape), np.roll(_real_like_psf(psf_shape), 1, 1)])
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    m = psf.gaussian_psf(model_size, 0.8)
    got = psf.psf_difference_kernels(psfs, m, regularization)
    ref = psf.psf_difference_kernels_reference(psfs, m, regularization)
    assert got.shape == ref.shape == psfs.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    assert not np.allclose(got[0], got[1])  # the planes are not mixed up


# ---------------------------------------------------------------- convolution


@pytest.fixture(scope="module")
def conv_setup():
    rng = np.random.default_rng(3)
    img = rng.random((2, 30, 37)).astype(np.float32)
    k = rng.random((2, 9, 9))
    hp, wp = psf.fft_shape_for((30, 37), 4)
    t = psf.kernel_transfer_function(k, (hp, wp))
    return img, k, hp, wp, t


def test_kernel_transfer_function_compiled_matches_numpy_reference():
    """The compiled complex64 transfer functions against the complex128 NumPy/SciPy path, on a non-square
    grid with kernels whose wings wrap to the far edges."""
    kernels = np.random.default_rng(5).random((3, 11, 11)) - 0.2
    fast = psf.kernel_transfer_function(kernels, (24, 30))
    ref = psf.kernel_transfer_function(kernels, (24, 30), dtype=np.complex128)
    assert fast.dtype == np.complex64 and fast.shape == ref.shape == (3, 24, 16)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_convolve_bands_matches_fftconvolve(conv_setup):
    img, k, hp, wp, t = conv_setup
    out = np.asarray(convolution.convolve_bands(img, t, hp, wp), dtype=np.float64)
    for b in range(2):
        ref = fftconvolve(img[b].astype(np.float64), k[b], mode="same")
        assert np.abs(out[b] - ref).max() / np.abs(ref).max() < 1e-5


def test_correlate_bands_is_adjoint(conv_setup):
    img, k, hp, wp, t = conv_setup
    rng = np.random.default_rng(4)
    y = rng.random(img.shape).astype(np.float32)
    cx = np.asarray(convolution.convolve_bands(img, t, hp, wp), dtype=np.float64)
    cty = np.asarray(convolution.correlate_bands(y, t, hp, wp), dtype=np.float64)
    lhs = np.sum(cx * y.astype(np.float64))
    rhs = np.sum(img.astype(np.float64) * cty)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    # and correlation is the flipped-kernel convolution
    for b in range(2):
        ref = fftconvolve(y[b].astype(np.float64), k[b][::-1, ::-1], mode="same")
        assert np.abs(cty[b] - ref).max() / np.abs(ref).max() < 1e-5


# ---------------------------------------------------------------- gradients of the loss


def _grad_problem():
    """Small float64 problem: K=2 sources, B=3 bands, 14x13 frame, 5x5 kernels."""
    rng = np.random.default_rng(7)
    nk, nb, h, w = 2, 3, 14, 13
    kern = rng.random((nb, 5, 5)) + 0.2
    kern /= kern.sum(axis=(1, 2), keepdims=True)
    hp, wp = psf.fft_shape_for((h, w), 2)
    transfer = psf.kernel_transfer_function(kern, (hp, wp), dtype=np.complex128)
    sed = rng.random((nk, nb)) + 0.5
    morph = np.zeros((nk, h, w))
    boxes = np.array([[0, h, 0, w], [3, 11, 2, 9]], dtype=np.int64)
    for k in range(nk):
        y0, y1, x0, x1 = boxes[k]
        morph[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    alive = np.ones(nk, dtype=np.bool_)
    images = rng.normal(1.0, 0.5, (nb, h, w))
    weights = rng.random((nb, h, w)) + 0.1
    weights[:, 0, :3] = 0.0  # some zero-weight pixels
    return sed, morph, boxes, alive, images, weights, transfer, hp, wp


def _loss(sed, morph, boxes, alive, images, weights, transfer, hp, wp):
    model = np.zeros(images.shape)
    fit.render_model(sed, morph, boxes, alive, model)
    residual = np.zeros(images.shape)
    loss = fit.blend_loss(model, images, weights, transfer, hp, wp, residual)
    return loss, residual


def test_render_model_matches_numpy():
    sed, morph, boxes, alive, images, *_ = _grad_problem()
    out = np.zeros(images.shape)
    fit.render_model(sed, morph, boxes, alive, out)
    ref = np.einsum("kb,khw->bhw", sed, morph)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_blend_loss_matches_numpy():
    sed, morph, boxes, alive, images, weights, transfer, hp, wp = _grad_problem()
    # the problem's kernels are not kept: recover them from the transfer functions
    loss, residual = _loss(sed, morph, boxes, alive, images, weights, transfer, hp, wp)
    model = np.einsum("kb,khw->bhw", sed, morph)
    conv = np.fft.irfft2(np.fft.rfft2(model, s=(hp, wp)) * transfer, s=(hp, wp))[:, :images.shape[1], :images.shape[2]]
    ref_res = weights * (conv - images)
    np.testing.assert_allclose(residual, ref_res, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(0.5 * np.sum(weights * (conv - images) ** 2), rel=1e-12)


def test_gradients_match_finite_differences():
    """Analytic gradients vs central differences, float64 throughout (complex128 transfer).

    The loss is quadratic in each parameter, so central differences are exact
    up to rounding; tolerance: 1e-5 relative.
    """
    sed, morph, boxes, alive, images, weights, transfer, hp, wp = _grad_problem()
    args = (images, weights, transfer, hp, wp)
    _, residual = _loss(sed, morph, boxes, alive, *args)
    g = np.asarray(convolution.correlate_bands(residual, transfer, hp, wp))
    grad_sed = np.einsum("bhw,khw->kb", g, morph)
    grad_morph = np.einsum("kb,bhw->khw", sed, g)

    step = 1e-4
    for k in range(sed.shape[0]):
        for b in range(sed.shape[1]):
            sp, sm = sed.copy(), sed.copy()
            sp[k, b] += step
            sm[k, b] -= step
            fd = (_loss(sp, morph, boxes, alive, *args)[0] - _loss(sm, morph, boxes, alive, *args)[0]) / (2 * step)
            assert fd == pytest.approx(grad_sed[k, b], rel=1e-5, abs=1e-8)

    rng = np.random.default_rng(11)
    for k in range(morph.shape[0]):
        y0, y1, x0, x1 = boxes[k]
        for _ in range(8):
            y, x = int(rng.integers(y0, y1)), int(rng.integers(x0, x1))
            mp, mm = morph.copy(), morph.copy()
            mp[k, y, x] += step
            mm[k, y, x] -= step
            fd = (_loss(sed, mp, boxes, alive, *args)[0] - _loss(sed, mm, boxes, alive, *args)[0]) / (2 * step)
            assert fd == pytest.approx(grad_morph[k, y, x], rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------- proximal operators

_RAYS = [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]


def _peaked_image(shape=(23, 21), peak=(11, 8), seed=5):
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    img = np.exp(-((yy - peak[0]) ** 2 + (xx - peak[1]) ** 2) / 20.0) + 0.3 * rng.random(shape)
    img[peak] = img.max() + 0.5
    return img


@pytest.mark.parametrize("box", [(0, 23, 0, 21), (3, 19, 2, 17)])
def test_prox_monotonic(box):
    cy, cx = 11, 8
    y0, y1, x0, x1 = box
    img = _peaked_image(peak=(cy, cx))
    out = img.copy()
    operators.prox_monotonic(out, cy, cx, y0, y1, x0, x1)
    # pixels never increase, nothing outside the box changes, the peak is kept
    assert np.all(out <= img)
    inside = np.zeros(img.shape, bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(out[~inside], img[~inside])
    assert out[cy, cx] == img[cy, cx]
    assert np.all(out >= 0)
    # non-increasing along the 8 principal rays
    for dy, dx in _RAYS:
        prof = []
        y, x = cy, cx
        while y0 <= y < y1 and x0 <= x < x1:
            prof.append(out[y, x])
            y, x = y + dy, x + dx
        assert np.all(np.diff(prof) <= 0), (dy, dx, prof)
    # every pixel is at most its reference (weighted mean of inner neighbours)
    for y in range(y0, y1):
        for x in range(x0, x1):
            if (y, x) == (cy, cx):
                continue
            ref = operators.monotonic_reference(out, y, x, cy, cx, y0, y1, x0, x1)
            assert out[y, x] <= ref + 1e-12, (y, x, out[y, x], ref)
    # idempotent
    again = out.copy()
    operators.prox_monotonic(again, cy, cx, y0, y1, x0, x1)
    np.testing.assert_array_equal(again, out)


def test_prox_symmetric_symmetric_box():
    cy, cx = 10, 9
    y0, y1, x0, x1 = 4, 17, 3, 16  # symmetric about (10, 9)
    img = np.random.default_rng(2).random((22, 20))
    out = img.copy()
    operators.prox_symmetric(out, cy, cx, y0, y1, x0, x1)
    sub = out[y0:y1, x0:x1]
    np.testing.assert_array_equal(sub, sub[::-1, ::-1])
    # the Euclidean projection: each pair becomes the mean of the two
    ref = 0.5 * (img[y0:y1, x0:x1] + img[y0:y1, x0:x1][::-1, ::-1])
    np.testing.assert_allclose(sub, ref, rtol=1e-12)
    # and it is a projection: applying it again changes nothing
    again = out.copy()
    operators.prox_symmetric(again, cy, cx, y0, y1, x0, x1)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(out[:y0], img[:y0])


def test_prox_symmetric_asymmetric_box_zeroes_unpaired():
    cy, cx = 10, 9
    y0, y1, x0, x1 = 4, 19, 3, 16  # rows 17, 18 have no mirror in the box
    img = np.random.default_rng(3).random((22, 20)) + 0.1
    out = img.copy()
    operators.prox_symmetric(out, cy, cx, y0, y1, x0, x1)
    assert np.all(out[17:19, x0:x1] == 0)
    sub = out[4:17, x0:x1]
    np.testing.assert_array_equal(sub, sub[::-1, ::-1])


def test_prox_positive():
    img = np.random.default_rng(8).normal(0, 1, (15, 16))
    out = img.copy()
    operators.prox_positive(out, 0, 15, 0, 16)
    assert np.all(out >= 0)
    np.testing.assert_array_equal(out, np.maximum(img, 0))
    part = img.copy()
    operators.prox_positive(part, 2, 10, 3, 12)
    assert np.all(part[2:10, 3:12] >= 0)
    assert (part[:2] < 0).any()  # outside the box untouched


def test_prox_threshold():
    rng = np.random.default_rng(9)
    img = rng.normal(0.5, 1.0, (15, 16))
    cy, cx = 7, 6
    img[cy, cx] = -0.3  # the peak is kept even below the threshold
    thr = 0.4
    out = img.copy()
    operators.prox_threshold(out, thr, cy, cx, 0, 15, 0, 16)
    assert out[cy, cx] == img[cy, cx]
    mask = np.ones(img.shape, bool)
    mask[cy, cx] = False
    below = (img < thr) & mask
    assert np.all(out[below] == 0)
    np.testing.assert_array_equal(out[~below], img[~below])
    # threshold then positive: no negatives at all with a positive peak
    img[cy, cx] = 2.0
    out = img.copy()
    operators.prox_threshold(out, thr, cy, cx, 0, 15, 0, 16)
    operators.prox_positive(out, 0, 15, 0, 16)
    assert np.all(out >= 0)
    assert np.all((out == 0) | (out >= thr))


# ------------------------------------------ monotonicity: fused/early-stopping kernels vs a plain reference


def _threshold_monotonic_py(img, thr, cy, cx, y0, y1, x0, x1):
    """Threshold (peak kept), then ring-by-ring monotonic caps over the whole box, then positivity."""
    out = img.copy()
    box = out[y0:y1, x0:x1]
    keep_peak = out[cy, cx]
    box[box < thr] = 0.0
    out[cy, cx] = keep_peak
    rmax = max(cy - y0, y1 - 1 - cy, cx - x0, x1 - 1 - cx)
    for ring in range(1, rmax + 1):
        for y in range(y0, y1):
            for x in range(x0, x1):
                if max(abs(y - cy), abs(x - cx)) != ring:
                    continue
                ref = monotonic_cap(out, y, x, cy, cx, y0, y1, x0, x1)
                out[y, x] = max(min(out[y, x], ref), 0.0)
    return out


@pytest.mark.parametrize("thr,box", [(0.0, (0, 23, 0, 21)), (0.55, (0, 23, 0, 21)), (0.45, (3, 19, 2, 17)),
                                     (0.9, (5, 20, 1, 14))])
def test_prox_threshold_monotonic_matches_reference(thr, box):
    cy, cx = 11, 8
    img = _peaked_image(peak=(cy, cx)) - 0.1  # some negative pixels
    out = img.copy()
    ring = operators.prox_threshold_monotonic(out, thr, cy, cx, *box)
    ref = _threshold_monotonic_py(img, thr, cy, cx, *box)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-15)
    # the returned ring bounds the support
    nz = np.argwhere(out[box[0]:box[1], box[2]:box[3]] > 0) + [box[0], box[2]]
    assert np.max(np.abs(nz - [cy, cx]), axis=1).max(initial=0) == ring
    # prox_monotonic is the threshold-free case
    out0 = img.copy()
    operators.prox_monotonic(out0, cy, cx, *box)
    np.testing.assert_allclose(out0, _threshold_monotonic_py(img, -np.inf, cy, cx, *box), rtol=1e-12, atol=1e-15)


def _init_morphology_py(detect, cy, cx, threshold, symmetric, margin):
    """The full-frame initial morphology (clip, symmetrise, threshold, monotonic, normalise)."""
    h, w = detect.shape
    out = np.maximum(detect.astype(np.float64), 0.0)
    if symmetric:
        sym = out.copy()
        for y in range(h):
            for x in range(w):
                my, mx = 2 * cy - y, 2 * cx - x
                if 0 <= my < h and 0 <= mx < w:
                    sym[y, x] = min(out[y, x], out[my, mx])
        out = sym
    out = _threshold_monotonic_py(out, threshold, cy, cx, 0, h, 0, w)
    out /= out[cy, cx]
    nz = np.argwhere(out > 0)
    (y0, x0), (y1, x1) = nz.min(axis=0), nz.max(axis=0) + 1
    return out, (max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w))


@pytest.mark.parametrize("symmetric", [False, True])
def test_init_morphology_matches_reference(symmetric):
    rng = np.random.default_rng(4)
    yy, xx = np.indices((40, 37))
    detect = (5 * np.exp(-((yy - 15) ** 2 + (xx - 12) ** 2) / 18.0) + 3 * np.exp(-((yy - 27) ** 2 + (xx - 25) ** 2) / 8.0)
              + rng.normal(0, 0.2, yy.shape)).astype(np.float32)
    for cy, cx in ((15, 12), (27, 25)):
        out = np.zeros(detect.shape, np.float32)
        box = initialization.init_morphology(detect, cy, cx, 0.5, symmetric, 2, out)
        ref, ref_box = _init_morphology_py(detect, cy, cx, 0.5, symmetric, 2)
        np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-7)
        assert tuple(box) == ref_box
        assert out[cy, cx] == 1.0


def test_convolve_components_fills_each_block_as_the_single_convolutions_do():
    """One call over several components, on the frame's grid or a small one, writes each block exactly as
    convolve_morphology (frame) and convolve_box (small grid) give it, and no other block."""
    from hpcblend.deblend.component_models import ComponentModels, grown_boxes

    rng = np.random.default_rng(5)
    h, w, r = 40, 44, 6
    kernels = np.stack([_gauss2d((2 * r + 1, 2 * r + 1), s, s + 0.3) for s in (1.2, 2.0)])
    boxes = np.array([[10, 22, 8, 19], [0, 9, 25, 40], [3, 40, 0, 44]], dtype=np.int64)
    morphs = np.zeros((3, h, w), np.float32)
    for c, (y0, y1, x0, x1) in enumerate(boxes):
        morphs[c, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    hp, wp = psf.fft_shape_for((h, w), r)
    n = 48
    frame_transfer = psf.kernel_transfer_function(kernels, (hp, wp))
    small_transfer = psf.kernel_transfer_function(kernels, (n, n))
    out = ComponentModels.zeros(grown_boxes(boxes, r, (h, w)), 2, (h, w))
    convolution.convolve_components(morphs, boxes, np.array([0, 1]), small_transfer, n, n, r, out.offsets, out.grown,
                                    out.flat, False)
    assert not out.component(2).any()
    convolution.convolve_components(morphs, boxes, np.array([2]), frame_transfer, hp, wp, r, out.offsets, out.grown,
                                    out.flat, True)
    for c in range(2):
        single = np.zeros_like(out.component(c))
        convolution.convolve_box(morphs[c], *boxes[c], small_transfer, n, n, r, single)
        np.testing.assert_array_equal(out.component(c), single)
    gy0, gy1, gx0, gx1 = out.grown[2]
    frame = np.asarray(convolution.convolve_morphology(morphs[2], frame_transfer, hp, wp))
    np.testing.assert_array_equal(out.component(2), frame[:, gy0:gy1, gx0:gx1])


@pytest.mark.parametrize("box", [(10, 22, 8, 19), (0, 9, 25, 40), (3, 40, 0, 44)])
def test_convolve_box_matches_frame_convolution(box):
    """A box convolved on its own small grid equals the full-frame convolution (and fftconvolve)."""
    rng = np.random.default_rng(21)
    h, w, r = 40, 44, 6
    kernels = np.stack([_gauss2d((2 * r + 1, 2 * r + 1), s, s + 0.3) for s in (1.2, 2.0)])
    morph = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = box
    morph[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    hp, wp = psf.fft_shape_for((h, w), r)
    frame = np.asarray(convolution.convolve_morphology(morph, psf.kernel_transfer_function(kernels, (hp, wp)), hp, wp))
    n = max(y1 - y0, x1 - x0) + 2 * r + 1
    gy0, gy1, gx0, gx1 = max(y0 - r, 0), min(y1 + r, h), max(x0 - r, 0), min(x1 + r, w)
    out = np.full((2, gy1 - gy0, gx1 - gx0), -7.0, np.float32)  # the grown box's block: written whole
    convolution.convolve_box(morph, y0, y1, x0, x1, psf.kernel_transfer_function(kernels, (n, n)), n, n, r, out)
    np.testing.assert_allclose(out, frame[:, gy0:gy1, gx0:gx1], atol=2e-6 * frame.max())
    # nothing of the convolution lies outside the grown box
    outside = frame.copy()
    outside[:, gy0:gy1, gx0:gx1] = 0
    assert np.abs(outside).max() < 2e-6 * frame.max()
    for b in range(2):
        ref = fftconvolve(morph.astype(np.float64), kernels[b], mode="same")
        np.testing.assert_allclose(out[b], ref[gy0:gy1, gx0:gx1], atol=2e-6 * ref.max())


# ---------------------------------------------------------------- curvature bound, SEDs, boxes


def test_curvature_bound_matches_numpy():
    """c_b = ||D_b||₁ (|D_b|ᵀ * W_b): the correlation of the weights with |D_b|, clipped at 0."""
    rng = np.random.default_rng(8)
    nb, h, w, r = 3, 30, 27, 4
    kernels = rng.normal(0.0, 1.0, (nb, 2 * r + 1, 2 * r + 1))
    kernels[:, r, r] += 5.0
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    weights = rng.random((nb, h, w)).astype(np.float32)
    weights[:, :4, :] = 0.0
    hp, wp = psf.fft_shape_for((h, w), r)
    abs_k = np.abs(kernels)
    got = fit_steps.curvature_bound(weights, psf.kernel_transfer_function(abs_k, (hp, wp)), abs_k.sum(axis=(1, 2)),
                                    hp, wp)
    for b in range(nb):
        ref = abs_k[b].sum() * fftconvolve(weights[b].astype(np.float64), abs_k[b][::-1, ::-1], mode="same")
        np.testing.assert_allclose(got[b], np.maximum(ref, 0.0), rtol=1e-5, atol=1e-6 * ref.max())


def test_fit_seds_matches_nnls():
    """Per band: min Σ W (Y − Σ_k a_k C_k)² + ridge·mean(diag)·|a|², a ≥ 0, against scipy's NNLS."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(12)
    nk, nb, h, w = 3, 2, 24, 26
    yy, xx = np.indices((h, w))
    conv = np.zeros((nk, nb, h, w), np.float32)
    support = np.array([[2, 16, 3, 15], [6, 22, 9, 24], [0, 12, 14, 26]], dtype=np.int64)
    for k, (cy, cx) in enumerate(((9, 9), (14, 16), (6, 20))):
        for b in range(nb):
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (2.0 + b) ** 2))
            y0, y1, x0, x1 = support[k]
            conv[k, b, y0:y1, x0:x1] = g[y0:y1, x0:x1]
    # band 1: source 2 has a negative unconstrained amplitude, so the constraint is active
    truth = np.array([[50.0, 30.0], [20.0, 40.0], [10.0, -15.0]])
    images = (np.einsum("kb,kbhw->bhw", truth, conv) + rng.normal(0, 0.5, (nb, h, w))).astype(np.float32)
    weights = rng.uniform(1.0, 4.0, (nb, h, w)).astype(np.float32)
    ridge = 1e-6
    packed = ComponentModels.from_dense(conv, support)  # each source's block over its support
    got = initialization.fit_seds(images, weights, packed.flat, packed.offsets, packed.grown, ridge)
    for b in range(nb):
        c = conv[:, b].reshape(nk, -1).astype(np.float64)
        wt = weights[b].ravel().astype(np.float64)
        a = (c * wt) @ c.T
        a += ridge * np.trace(a) / nk * np.eye(nk)
        rhs = (c * wt) @ images[b].ravel().astype(np.float64)
        chol = np.linalg.cholesky(a)
        ref, _ = nnls(chol.T, np.linalg.solve(chol, rhs))
        np.testing.assert_allclose(got[:, b], ref, rtol=1e-4, atol=1e-4 * ref.max())
    assert got[2, 1] == 0.0


@pytest.mark.parametrize("factor", [1.0, 0.25])
def test_scale_nonzero_box_matches_numpy(factor):
    rng = np.random.default_rng(2)
    img = np.where(rng.random((20, 23)) < 0.1, rng.random((20, 23)), 0.0).astype(np.float32)
    img[3, 4] = -1.0  # negative pixels are neither scaled nor in the box
    cy, cx, box = 12, 9, (2, 18, 1, 21)
    ref = img.copy()
    y0, y1, x0, x1 = box
    sub = ref[y0:y1, x0:x1]
    sub[sub > 0] *= np.float32(factor)
    ys, xs = np.nonzero(img[y0:y1, x0:x1] > 0)
    ref_box = (min(ys.min() + y0, cy), max(ys.max() + y0 + 1, cy + 1), min(xs.min() + x0, cx),
               max(xs.max() + x0 + 1, cx + 1))
    out = img.copy()
    got = operators.scale_nonzero_box(out, factor, cy, cx, *box)
    assert tuple(got) == ref_box
    np.testing.assert_array_equal(out, ref)
    if factor == 1.0:
        assert tuple(operators.nonzero_box(img, cy, cx, *box)) == ref_box
