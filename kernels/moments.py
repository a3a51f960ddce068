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

:func:`windowed_centroid` is SExtractor's Gaussian-windowed centroid (``XWIN_IMAGE``; Bertin &
Arnouts 1996) with a fixed circular window, compiled;
:func:`windowed_centroid_reference` is the same iteration in NumPy.

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
    "nonzero_row_extents",
    "windowed_centroid",
    "windowed_centroid_reference",
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
def nonzero_row_extents(image):
    """First and last column of each row that holds a nonzero (or NaN) pixel; ``first > last`` for empty rows.

    Parameters
    ----------
    image : ndarray, shape (H, W)

    Returns
    -------
    first, last : ndarray, shape (H,), int64
    """
    h, w = image.shape
    first = np.full(h, w, dtype=np.int64)
    last = np.full(h, -1, dtype=np.int64)
    for i in range(h):
        for j in range(w):
            if image[i, j] != 0.0:
                first[i] = j
                break
        for j in range(w - 1, first[i] - 1, -1):
            if image[i, j] != 0.0:
                last[i] = j
                break
    return first, last


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
    first, last = nonzero_row_extents(image)
    return _moment_sums(image, first, last, y, x, mxx, myy, mxy, nsig2)


@njit(cache=True, nogil=True)
def _moment_sums(image, first, last, y, x, mxx, myy, mxy, nsig2):
    """:func:`weighted_moment_sums` over the pixels of each row from ``first`` to ``last`` (the image is zero
    elsewhere: those pixels add exactly nothing), the Gaussian weight by recurrence along each row."""
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
    step2 = math.exp(-ixx)
    for i in range(i0, i1 + 1):
        dy = i - y
        inside = False
        e = 0.0
        r = 0.0
        for j in range(max(j0, first[i]), min(j1, last[i]) + 1):
            dx = j - x
            rho2 = ixx * dx * dx + 2.0 * ixy * dx * dy + iyy * dy * dy
            if not (rho2 < nsig2):
                inside = False
                continue
            if not inside:
                # the weight along a run of pixels inside the ellipse by recurrence (two products instead
                # of an exponential per pixel, half the time): w(j+1) = w(j) r(j), r(j+1) = r(j) exp(-ixx),
                # both exact at the run's first pixel, where 1 >= w > exp(-nsig2/2); relative error ~1e-14
                inside = True
                e = math.exp(-0.5 * rho2)
                r = math.exp(-0.5 * (ixx * (2.0 * dx + 1.0) + 2.0 * ixy * dy))
            v = image[i, j]
            if v != 0.0:  # a zero pixel adds exactly nothing
                wi = e * v
                a += wi
                bx += wi * dx
                by += wi * dy
                cxx += wi * dx * dx
                cyy += wi * dy * dy
                cxy += wi * dx * dy
            e *= r
            r *= step2
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
    first, last = nonzero_row_extents(image)
    for it in range(1, max_iter + 1):
        n_iter = it
        a, bx, by, cxx, cyy, cxy = _moment_sums(image, first, last, y, x, mxx, myy, mxy, nsig2)
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


@njit(cache=True, nogil=True)
def windowed_centroid(image, y0, x0, sigma, max_iter, max_shift):
    """Gaussian-windowed centroid (SExtractor's ``XWIN_IMAGE`` iteration) started at a peak.

    ``c ← c + 2 Σ w I (r − c) / Σ w I`` with ``w`` a circular Gaussian of ``sigma`` px about ``c``
    (pixels of the box ``floor(c) − ceil(4σ) … floor(c) + ceil(4σ) + 1``). Falls back to the start
    if the windowed flux is not positive or the centroid moves more than ``max_shift`` px; stops
    when both coordinates move by less than 1e-4 px. :func:`windowed_centroid_reference` is the
    NumPy reference.

    Parameters
    ----------
    image : ndarray, shape (H, W), float
    y0, x0 : float
        Start (pixels, image frame), e.g. the peak pixel.
    sigma : float
        Window σ (pixels), > 0.
    max_iter : int
    max_shift : float
        Pixels.

    Returns
    -------
    y, x : float
        The centroid (pixels, image frame).
    """
    h, w = image.shape
    r = int(math.ceil(4.0 * sigma))
    two_s2 = 2.0 * sigma ** 2
    cy = y0
    cx = x0
    for _ in range(max_iter):
        iy0 = max(int(math.floor(cy)) - r, 0)
        iy1 = min(int(math.floor(cy)) + r + 2, h)
        ix0 = max(int(math.floor(cx)) - r, 0)
        ix1 = min(int(math.floor(cx)) + r + 2, w)
        s = 0.0
        sy = 0.0
        sx = 0.0
        for i in range(iy0, iy1):
            yy = i - cy
            for j in range(ix0, ix1):
                xx = j - cx
                wi = math.exp(-(yy ** 2 + xx ** 2) / two_s2) * image[i, j]
                s += wi
                sy += wi * yy
                sx += wi * xx
        if not (s > 0.0):
            return y0, x0
        dy = 2.0 * sy / s
        dx = 2.0 * sx / s
        cy = cy + dy
        cx = cx + dx
        if not (math.isfinite(cy) and math.isfinite(cx)) or math.hypot(cy - y0, cx - x0) > max_shift:
            return y0, x0
        if abs(dy) < 1e-4 and abs(dx) < 1e-4:
            break
    return cy, cx


def windowed_centroid_reference(image, y0: float, x0: float, sigma: float, max_iter: int = 50,
                                max_shift: float = 3.0) -> tuple:
    """:func:`windowed_centroid` in vectorised NumPy (the reference); same parameters and returns."""
    h, w = image.shape
    r = int(np.ceil(4 * sigma))
    cy, cx = y0, x0
    for _ in range(max_iter):
        iy0, iy1 = max(int(np.floor(cy)) - r, 0), min(int(np.floor(cy)) + r + 2, h)
        ix0, ix1 = max(int(np.floor(cx)) - r, 0), min(int(np.floor(cx)) + r + 2, w)
        yy = np.arange(iy0, iy1, dtype=np.float64)[:, None] - cy
        xx = np.arange(ix0, ix1, dtype=np.float64)[None, :] - cx
        wi = np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2)) * image[iy0:iy1, ix0:ix1]
        s = wi.sum()
        if not s > 0:
            return y0, x0
        dy, dx = 2 * (wi * yy).sum() / s, 2 * (wi * xx).sum() / s
        cy, cx = cy + dy, cx + dx
        if not (np.isfinite(cy) and np.isfinite(cx)) or np.hypot(cy - y0, cx - x0) > max_shift:
            return y0, x0
        if abs(dy) < 1e-4 and abs(dx) < 1e-4:
            break
    return cy, cx
