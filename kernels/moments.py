"""Adaptive second moments of an image (Numba).

Elliptical-Gaussian-weighted moments iterated until the weight matches the
object's own moments — the "adaptive moments" of Bernstein & Jarvis 2002
(AJ 123, 583, Sect. 3) as implemented by HSM (Hirata & Seljak 2003, MNRAS 343,
459; Mandelbaum et al. 2005; GalSim's ``FindAdaptiveMom``) and by the LSST/HSC
``SdssShape`` algorithm (Bosch et al. 2018, PASJ 70, S5, Sect. 4.9.3).

Iteration, for the weight ``w(p) = exp(-ρ²/2)``, ``ρ² = dᵀ M⁻¹ d``,
``d = p − c`` (pixel centre minus the current centroid ``c``), summing only
over pixels with ``ρ² < nsig2``::

    A = Σ w I,   B = Σ w I d,   C = Σ w I d dᵀ
    c ← c + 2 B / A,            M ← 2 C / A

For an elliptical Gaussian image of covariance Σ the fixed point is
``M = Σ`` (the product of two Gaussians of covariance Σ has covariance Σ/2,
hence the factors 2), reached in one step when ``M = Σ`` already, and the
amplitude ``flux = 2 A`` is then the Gaussian's total flux. For other profiles
the result is the covariance of the best-matching elliptical Gaussian, not the
unweighted second moment.

Conventions: ``image[y, x]``, pixel centres at integer coordinates; moments
in pixels², centroid in pixels of the image's frame, flux in the image's
units. Arrays in, scalars out; this module imports nothing of hpcblend.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "MOMENTS_OK",
    "MOMENTS_NOT_CONVERGED",
    "MOMENTS_BAD_FLUX",
    "MOMENTS_SINGULAR",
    "MOMENTS_SHIFT",
    "MOMENTS_TOO_LARGE",
    "adaptive_moments",
    "weighted_moment_sums",
]

MOMENTS_OK = 0
#: max_iter reached before the convergence test passed (last iterate returned).
MOMENTS_NOT_CONVERGED = 1
#: the weighted flux A is not > 0 (or NaN): no (positive) object under the weight.
MOMENTS_BAD_FLUX = 2
#: the moment matrix became non-positive-definite or non-finite.
MOMENTS_SINGULAR = 4
#: the centroid moved more than max_shift px from the start.
MOMENTS_SHIFT = 8
#: a moment exceeded max_moment px².
MOMENTS_TOO_LARGE = 16


@njit(cache=True, nogil=True)
def weighted_moment_sums(image, y, x, mxx, myy, mxy, nsig2):
    """Sums of one iteration: ``(A, Bx, By, Cxx, Cyy, Cxy)`` for the weight of ``(mxx, myy, mxy)`` at ``(y, x)``.

    Parameters
    ----------
    image : ndarray, shape (H, W), float
    y, x : float
        Weight centre (pixels).
    mxx, myy, mxy : float
        Weight covariance (pixels²), positive definite.
    nsig2 : float
        Only pixels with ``ρ² < nsig2`` contribute.

    Returns
    -------
    tuple of 6 float
        ``A = Σ w I``, ``Bx = Σ w I dx``, ``By = Σ w I dy``, ``Cxx = Σ w I dx²``,
        ``Cyy = Σ w I dy²``, ``Cxy = Σ w I dx dy``; NaN if the matrix is not
        positive definite.
    """
    det = mxx * myy - mxy * mxy
    if not (det > 0.0) or not (mxx > 0.0) or not (myy > 0.0):
        nan = np.nan
        return nan, nan, nan, nan, nan, nan
    ixx = myy / det
    iyy = mxx / det
    ixy = -mxy / det
    h, w = image.shape
    # bounding box of the ellipse ρ² = nsig2: |dy| <= sqrt(nsig2 * myy), |dx| <= sqrt(nsig2 * mxx)
    ry = math.sqrt(nsig2 * myy)
    rx = math.sqrt(nsig2 * mxx)
    i0 = max(0, int(math.ceil(y - ry)))
    i1 = min(h - 1, int(math.floor(y + ry)))
    j0 = max(0, int(math.ceil(x - rx)))
    j1 = min(w - 1, int(math.floor(x + rx)))
    a = 0.0
    bx = 0.0
    by = 0.0
    cxx = 0.0
    cyy = 0.0
    cxy = 0.0
    for i in range(i0, i1 + 1):
        dy = i - y
        for j in range(j0, j1 + 1):
            dx = j - x
            rho2 = ixx * dx * dx + 2.0 * ixy * dx * dy + iyy * dy * dy
            if rho2 < nsig2:
                wi = math.exp(-0.5 * rho2) * image[i, j]
                a += wi
                bx += wi * dx
                by += wi * dy
                cxx += wi * dx * dx
                cyy += wi * dy * dy
                cxy += wi * dx * dy
    return a, bx, by, cxx, cyy, cxy


@njit(cache=True, nogil=True)
def adaptive_moments(image, y0, x0, sigma0=2.0, max_iter=200, tol=1e-6, max_shift=15.0,
                     max_moment=8000.0, nsig2=25.0):
    """Adaptive second moments of ``image`` about a starting centroid.

    Parameters
    ----------
    image : ndarray, shape (H, W), float32 or float64
        Background-subtracted pixels (any units; e.g. counts). Non-finite
        pixels under the weight make the result fail (``MOMENTS_BAD_FLUX``).
    y0, x0 : float
        Starting centroid (pixels, image frame, (y, x) order).
    sigma0 : float
        Starting weight: circular with σ = ``sigma0`` px.
    max_iter : int
        Maximum number of iterations.
    tol : float
        Converged when the centroid moves by less than ``tol · sqrt(Mxx + Myy)``
        and the moments change by less than ``tol · (Mxx + Myy)`` (sum of
        absolute changes) in one iteration.
    max_shift : float
        Failure if the centroid wanders farther than this from ``(y0, x0)`` (px).
    max_moment : float
        Failure if ``Mxx`` or ``Myy`` exceeds this (px²).
    nsig2 : float
        Weight truncation: pixels with ``ρ² >= nsig2`` are ignored (HSM's
        ``max_moment_nsig2``, 25).

    Returns
    -------
    xx, yy, xy : float
        Adaptive moments ``M`` (pixels²): the covariance of the best-matching
        elliptical Gaussian (for a Gaussian image, its covariance).
    x, y : float
        Adaptive centroid (pixels).
    flux : float
        ``2 A``: the matched Gaussian's total flux (image units).
    n_iter : int
        Iterations done.
    flag : int
        Bit mask: 0 on success, else ``MOMENTS_NOT_CONVERGED`` (1),
        ``MOMENTS_BAD_FLUX`` (2), ``MOMENTS_SINGULAR`` (4),
        ``MOMENTS_SHIFT`` (8), ``MOMENTS_TOO_LARGE`` (16). On failure the last
        accepted iterate is returned (the starting weight and centroid if the
        first iteration failed; ``flux`` NaN if ``A`` was never > 0); all NaN
        for an empty image or ``sigma0 <= 0``.
    """
    mxx = sigma0 * sigma0
    myy = sigma0 * sigma0
    mxy = 0.0
    y = float(y0)
    x = float(x0)
    flux = np.nan
    flag = MOMENTS_NOT_CONVERGED
    n_iter = 0
    if not (sigma0 > 0.0) or image.shape[0] == 0 or image.shape[1] == 0:
        return np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 0, MOMENTS_SINGULAR
    for it in range(1, max_iter + 1):
        n_iter = it
        a, bx, by, cxx, cyy, cxy = weighted_moment_sums(image, y, x, mxx, myy, mxy, nsig2)
        if not (a > 0.0):
            flag = MOMENTS_BAD_FLUX
            break
        flux = 2.0 * a
        dx = 2.0 * bx / a
        dy = 2.0 * by / a
        nxx = 2.0 * cxx / a
        nyy = 2.0 * cyy / a
        nxy = 2.0 * cxy / a
        ndet = nxx * nyy - nxy * nxy
        if not (ndet > 0.0) or not (nxx > 0.0) or not (nyy > 0.0) or not math.isfinite(ndet):
            flag = MOMENTS_SINGULAR
            break
        if nxx > max_moment or nyy > max_moment:
            flag = MOMENTS_TOO_LARGE
            break
        nx = x + dx
        ny = y + dy
        if (nx - x0) * (nx - x0) + (ny - y0) * (ny - y0) > max_shift * max_shift:
            flag = MOMENTS_SHIFT
            break
        size = mxx + myy
        dm = abs(nxx - mxx) + abs(nyy - myy) + abs(nxy - mxy)
        shift = math.sqrt(dx * dx + dy * dy)
        x = nx
        y = ny
        mxx = nxx
        myy = nyy
        mxy = nxy
        if shift < tol * math.sqrt(size) and dm < tol * size:
            flag = MOMENTS_OK
            break
    return mxx, myy, mxy, x, y, flux, n_iter, flag
