"""Numba kernels against plain NumPy/SciPy references."""

import numpy as np
from scipy.signal import fftconvolve

from hpcblend.kernels import convolution, fit, operators, psf


def _double_gaussian(n, s1=1.6, s2=4.0, f=0.1):
    yy, xx = np.indices((n, n)) - n // 2
    r2 = yy ** 2 + xx ** 2
    p = (1 - f) * np.exp(-r2 / (2 * s1 ** 2)) / s1 ** 2 + f * np.exp(-r2 / (2 * s2 ** 2)) / s2 ** 2
    return p / p.sum()


def test_difference_kernel_reproduces_psf():
    p = _double_gaussian(41)
    m = psf.gaussian_psf(41, 0.8)
    d = psf.psf_difference_kernel(p, m, regularization=1e-5)
    rec = fftconvolve(d, m, mode="same")
    assert np.abs(rec - p).max() < 1e-3 * p.max()


def test_convolution_matches_fftconvolve_and_adjoint():
    rng = np.random.default_rng(3)
    img = rng.random((2, 30, 37)).astype(np.float32)
    k = rng.random((2, 9, 9))
    hp, wp = psf.fft_shape_for((30, 37), 4)
    t = psf.kernel_transfer_function(k, (hp, wp))
    out = np.asarray(convolution.convolve_bands(img, t, hp, wp))
    ref = np.array([fftconvolve(img[b].astype(float), k[b], mode="same") for b in range(2)])
    assert np.abs(out - ref).max() < 1e-5 * np.abs(ref).max()
    r = rng.random((2, 30, 37)).astype(np.float32)
    g = np.asarray(convolution.correlate_bands(r, t, hp, wp))
    assert abs((out * r).sum() - (img * g).sum()) < 1e-5 * abs((out * r).sum())


def test_gradients_against_finite_differences():
    rng = np.random.default_rng(5)
    nb, h, w = 2, 16, 16
    k = np.stack([_double_gaussian(7, 1.0, 2.0), _double_gaussian(7, 1.2, 2.5)])
    hp, wp = psf.fft_shape_for((h, w), 3)
    t = psf.kernel_transfer_function(k, (hp, wp), dtype=np.complex128)
    images = rng.normal(size=(nb, h, w))
    weights = rng.uniform(0.5, 2.0, size=(nb, h, w))
    sed = np.array([[2.0, 1.0], [0.5, 1.5]])
    morph = rng.random((2, h, w))
    boxes = np.array([[0, h, 0, w], [0, h, 0, w]], dtype=np.int64)
    alive = np.ones(2, dtype=bool)

    def loss(sed_, morph_):
        model = np.zeros((nb, h, w))
        fit.render_model(sed_, morph_, boxes, alive, model)
        res = np.zeros((nb, h, w))
        return fit.blend_loss(model, images, weights, t, hp, wp, res), res

    l0, res = loss(sed, morph)
    grad = np.asarray(convolution.correlate_bands(res, t, hp, wp))
    g_sed = np.einsum("byx,kyx->kb", grad, morph)
    g_morph = np.einsum("kb,byx->kyx", sed, grad)
    eps = 1e-6
    for (kk, b) in [(0, 0), (1, 1)]:
        s2 = sed.copy(); s2[kk, b] += eps
        s1 = sed.copy(); s1[kk, b] -= eps
        fd = (loss(s2, morph)[0] - loss(s1, morph)[0]) / (2 * eps)
        assert abs(fd - g_sed[kk, b]) < 1e-5 * abs(g_sed[kk, b])
    for (kk, y, x) in [(0, 5, 7), (1, 10, 3)]:
        m2 = morph.copy(); m2[kk, y, x] += eps
        m1 = morph.copy(); m1[kk, y, x] -= eps
        fd = (loss(sed, m2)[0] - loss(sed, m1)[0]) / (2 * eps)
        assert abs(fd - g_morph[kk, y, x]) < 1e-5 * max(abs(g_morph[kk, y, x]), 1e-3)


def test_monotonic_rays_idempotent_and_non_increasing():
    rng = np.random.default_rng(7)
    h, w, cy, cx = 21, 25, 9, 12
    m = rng.random((h, w))
    m[cy, cx] = 2.0
    orig = m.copy()
    operators.prox_monotonic(m, cy, cx, 0, h, 0, w)
    assert np.all(m <= orig + 1e-15)
    for dy, dx in [(0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)]:
        vals = []
        y, x = cy, cx
        while 0 <= y < h and 0 <= x < w:
            vals.append(m[y, x]); y += dy; x += dx
        assert np.all(np.diff(vals) <= 1e-15)
    for y in range(h):
        for x in range(w):
            if (y, x) != (cy, cx):
                assert m[y, x] <= operators.monotonic_reference(m, y, x, cy, cx, 0, h, 0, w) + 1e-12
    again = m.copy()
    operators.prox_monotonic(again, cy, cx, 0, h, 0, w)
    np.testing.assert_array_equal(again, m)


def test_symmetric_positive_threshold():
    rng = np.random.default_rng(9)
    m = rng.normal(size=(15, 15))
    operators.prox_symmetric(m, 7, 7, 0, 15, 0, 15)
    np.testing.assert_array_equal(m, m[::-1, ::-1])
    operators.prox_positive(m, 0, 15, 0, 15)
    assert m.min() >= 0
    m[7, 7] = 0.01
    operators.prox_threshold(m, 0.5, 7, 7, 0, 15, 0, 15)
    keep = m > 0
    keep[7, 7] = False
    assert np.all(m[keep] >= 0.5) and m[7, 7] == 0.01
