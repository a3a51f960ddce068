"""Adaptive moments kernel (hpcblend.kernels.moments) against a plain NumPy reference and analytic truth."""

import math

import numpy as np
import pytest

from hpcblend.kernels import moments as km


def _reference_adaptive_moments(image, y0, x0, sigma0=2.0, max_iter=200, tol=1e-6, max_shift=15.0,
                                max_moment=8000.0, nsig2=25.0):
    """The same algorithm in vectorised NumPy (whole-image sums, no bounding box)."""
    image = np.asarray(image, dtype=np.float64)
    yy, xx = np.indices(image.shape, dtype=np.float64)
    mxx = myy = sigma0 ** 2
    mxy = 0.0
    y, x = float(y0), float(x0)
    flux = np.nan
    flag = km.MOMENTS_NOT_CONVERGED
    n_iter = 0
    for it in range(1, max_iter + 1):
        n_iter = it
        minv = np.linalg.inv(np.array([[mxx, mxy], [mxy, myy]]))
        dx, dy = xx - x, yy - y
        rho2 = minv[0, 0] * dx * dx + 2 * minv[0, 1] * dx * dy + minv[1, 1] * dy * dy
        wi = np.where(rho2 < nsig2, np.exp(-0.5 * rho2), 0.0) * image
        a = wi.sum()
        if not a > 0:
            flag = km.MOMENTS_BAD_FLUX
            break
        flux = 2 * a
        sx, sy = 2 * (wi * dx).sum() / a, 2 * (wi * dy).sum() / a
        nxx, nyy, nxy = (2 * (wi * dx * dx).sum() / a, 2 * (wi * dy * dy).sum() / a,
                         2 * (wi * dx * dy).sum() / a)
        if not (nxx > 0 and nyy > 0 and nxx * nyy - nxy * nxy > 0):
            flag = km.MOMENTS_SINGULAR
            break
        if nxx > max_moment or nyy > max_moment:
            flag = km.MOMENTS_TOO_LARGE
            break
        if math.hypot(x + sx - x0, y + sy - y0) > max_shift:
            flag = km.MOMENTS_SHIFT
            break
        size = mxx + myy
        dm = abs(nxx - mxx) + abs(nyy - myy) + abs(nxy - mxy)
        x, y, mxx, myy, mxy = x + sx, y + sy, nxx, nyy, nxy
        if math.hypot(sx, sy) < tol * math.sqrt(size) and dm < tol * size:
            flag = km.MOMENTS_OK
            break
    return mxx, myy, mxy, x, y, flux, n_iter, flag


def _gaussian(shape, y, x, cov, flux=1.0):
    """Elliptical Gaussian with covariance cov = [[xx, xy], [xy, yy]], sampled at pixel centres."""
    yy, xx = np.indices(shape, dtype=np.float64)
    d = np.stack([xx - x, yy - y], axis=-1)
    inv = np.linalg.inv(cov)
    rho2 = np.einsum("...i,ij,...j->...", d, inv, d)
    return flux * np.exp(-0.5 * rho2) / (2 * math.pi * math.sqrt(np.linalg.det(cov)))


@pytest.mark.parametrize("cov", [[[9.0, 2.5], [2.5, 4.0]], [[3.0, -1.0], [-1.0, 6.5]], [[2.25, 0.0], [0.0, 2.25]]])
def test_recovers_elliptical_gaussian_moments(cov):
    cov = np.array(cov)
    y, x, flux = 30.3, 28.6, 1234.0
    img = _gaussian((61, 59), y, x, cov, flux)
    xx, yy, xy, cx, cy, f, n_iter, flag = km.adaptive_moments(img, 29.0, 30.0)
    assert flag == km.MOMENTS_OK and 1 < n_iter < 100
    assert xx == pytest.approx(cov[0, 0], rel=1e-2)
    assert yy == pytest.approx(cov[1, 1], rel=1e-2)
    assert xy == pytest.approx(cov[0, 1], abs=1e-2 * math.sqrt(cov[0, 0] * cov[1, 1]))
    assert (cx, cy) == (pytest.approx(x, abs=1e-3), pytest.approx(y, abs=1e-3))
    assert f == pytest.approx(flux, rel=1e-2)


def test_kernel_matches_numpy_reference_on_noisy_galaxy():
    rng = np.random.default_rng(0)
    cov = np.array([[6.0, 1.2], [1.2, 3.5]])
    core = _gaussian((48, 52), 23.4, 26.1, cov, 800.0)
    wing = _gaussian((48, 52), 23.4, 26.1, 4 * cov, 400.0)  # non-Gaussian profile
    img = (core + wing + rng.normal(scale=0.3, size=core.shape)).astype(np.float32)
    got = km.adaptive_moments(img, 24.0, 25.0, 2.5)
    ref = _reference_adaptive_moments(img, 24.0, 25.0, 2.5)
    assert got[7] == ref[7] == km.MOMENTS_OK
    assert got[6] == ref[6]
    np.testing.assert_allclose(np.array(got[:6]), np.array(ref[:6]), rtol=1e-9, atol=1e-9)
    # the weighted sums alone
    sums = km.weighted_moment_sums(img.astype(np.float64), 24.0, 25.0, 5.0, 3.0, 0.5, 25.0)
    yy, xx = np.indices(img.shape, dtype=np.float64)
    minv = np.linalg.inv([[5.0, 0.5], [0.5, 3.0]])
    dx, dy = xx - 25.0, yy - 24.0
    rho2 = minv[0, 0] * dx * dx + 2 * minv[0, 1] * dx * dy + minv[1, 1] * dy * dy
    wi = np.where(rho2 < 25.0, np.exp(-0.5 * rho2), 0.0) * img
    expect = [wi.sum(), (wi * dx).sum(), (wi * dy).sum(), (wi * dx * dx).sum(), (wi * dy * dy).sum(),
              (wi * dx * dy).sum()]
    np.testing.assert_allclose(sums, expect, rtol=1e-9, atol=1e-9)


def test_failures_are_flagged_like_the_reference():
    zero = np.zeros((20, 20))
    got = km.adaptive_moments(zero, 10.0, 10.0)
    assert got[7] == km.MOMENTS_BAD_FLUX == _reference_adaptive_moments(zero, 10.0, 10.0)[7]
    assert np.isnan(got[5])
    neg = -_gaussian((30, 30), 15, 15, np.eye(2) * 4)
    assert km.adaptive_moments(neg, 15.0, 15.0)[7] == km.MOMENTS_BAD_FLUX
    far = _gaussian((80, 80), 60, 60, np.eye(2) * 9)  # starting 42 px away: shift limit
    assert km.adaptive_moments(far, 20.0, 20.0, 15.0, 200, 1e-6, 5.0)[7] == km.MOMENTS_SHIFT
    img = _gaussian((40, 40), 20, 20, np.diag([9.0, 4.0]))
    got = km.adaptive_moments(img, 20.0, 20.0, 2.0, 2)  # too few iterations
    assert got[6] == 2 and got[7] == km.MOMENTS_NOT_CONVERGED
    assert got[7] == _reference_adaptive_moments(img, 20.0, 20.0, 2.0, 2)[7]
    nan_img = img.copy()
    nan_img[20, 20] = np.nan
    assert km.adaptive_moments(nan_img, 20.0, 20.0)[7] == km.MOMENTS_BAD_FLUX
    assert np.isnan(km.adaptive_moments(img, 20.0, 20.0, 0.0)[0])
