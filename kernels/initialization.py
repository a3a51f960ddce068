"""Source initialisation kernels (Numba): morphologies from the detection image, SEDs by least squares.

Follows scarlet's initialisation (Melchior et al. 2018, Sect. 3.1;
scarlet_lite's ``init_monotonic_morph`` and ``multifit_seds``): each source's
morphology starts as the detection image cut around its peak, made symmetric
and monotonic about the peak and trimmed at the background level; all SEDs
are then fitted at once, per band, by non-negative least squares against the
data with the morphologies convolved to each band's PSF.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .convolution import block_row
from .operators import monotonic_rings, scale_nonzero_box

__all__ = ["COMPACT_HALF_SIZE", "COMPACT_SIGMA2", "NNLS_MAX_SWEEPS", "NNLS_TOL", "init_morphology", "fit_seds",
           "nonnegative_least_squares"]

#: A source whose peak is below the threshold starts as a Gaussian in a (2·this + 1)² box (pixels) ...
COMPACT_HALF_SIZE = 2
#: ... of variance 0.64 px² (σ = 0.8 px, the default model PSF's: a point source in the model frame).
COMPACT_SIGMA2 = 0.64
#: The initial SEDs' non-negative least squares stops after this many Gauss–Seidel sweeps at most
#: (a few tens are typical; the cap only bounds pathological, near-singular systems) ...
NNLS_MAX_SWEEPS = 500
#: ... or when no coordinate changes by more than this fraction of the largest (far below the
#: accuracy the fit needs from a starting point).
NNLS_TOL = 1e-6


@njit(nogil=True, cache=True)
def init_morphology(detect, cy, cx, threshold, symmetric, margin, out):
    """Initial morphology of one source from the detection image.

    Steps: clip at zero; optionally point-symmetrise about the peak (each
    pixel becomes the minimum of itself and its mirror; pixels whose mirror
    is off the frame are kept); zero pixels below ``threshold``; project on
    weighted radial monotonicity (:func:`prox_monotonic`); normalise so the
    peak pixel is 1. If the peak itself is below ``threshold`` the source
    starts compact: a pixel-sampled Gaussian of σ = 0.8 px (the model PSF) in
    a 5 × 5 box (``COMPACT_SIGMA2``, ``COMPACT_HALF_SIZE``).

    Parameters
    ----------
    detect : ndarray, shape (H, W), float32
        Detection image (inverse-variance weighted mean over bands), counts.
    cy, cx : int
        Peak pixel.
    threshold : float
        Background level in counts (``bg_thresh × σ`` of the detection image).
    symmetric : bool
        Symmetrise before the monotonic projection.
    margin : int
        Pixels of zeros kept around the non-zero support in the returned box.
    out : ndarray, shape (H, W), float32
        Must be zero on entry (e.g. from ``np.zeros``); written with the
        morphology inside the returned box.

    Returns
    -------
    box : tuple (y0, y1, x0, x1) of int
        Half-open bounds in pixels.
    """
    h, w = detect.shape
    peak = detect[cy, cx]
    if not peak > threshold:
        r = COMPACT_HALF_SIZE
        for y in range(max(cy - r, 0), min(cy + r + 1, h)):
            for x in range(max(cx - r, 0), min(cx + r + 1, w)):
                d2 = (y - cy) ** 2 + (x - cx) ** 2
                out[y, x] = math.exp(-0.5 * d2 / COMPACT_SIGMA2)
        return max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    # one pass in Chebyshev rings outward from the peak, stopping at the first ring left
    # empty (monotonic_rings); the rest of ``out`` stays zero
    out[cy, cx] = peak
    last = monotonic_rings(detect, out, threshold, symmetric, cy, cx, 0, h, 0, w)
    y0, y1 = max(cy - last, 0), min(cy + last + 1, h)
    x0, x1 = max(cx - last, 0), min(cx + last + 1, w)
    y0, y1, x0, x1 = scale_nonzero_box(out, 1.0 / peak, cy, cx, y0, y1, x0, x1)
    return max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w)


@njit(nogil=True, cache=True)
def nonnegative_least_squares(a, rhs, max_sweeps, tol):
    """Solve ``min ||A^{1/2} x − ...||`` in normal form: ``A x = rhs`` with ``x ≥ 0``.

    Projected Gauss–Seidel (cyclic coordinate descent) on the normal
    equations; robust to singular ``A`` (identical or nearly identical
    columns, e.g. two peaks on the same pixel): a zero diagonal leaves its
    coordinate at zero, and degenerate coordinates share the solution
    instead of diverging.

    Parameters
    ----------
    a : ndarray, shape (K, K), float64
        Symmetric positive semi-definite normal matrix.
    rhs : ndarray, shape (K,), float64
    max_sweeps : int
    tol : float
        Stop when no coordinate changes by more than ``tol × max|x|``.

    Returns
    -------
    x : ndarray, shape (K,), float64, ≥ 0
    """
    k = rhs.shape[0]
    x = np.zeros(k)
    for _ in range(max_sweeps):
        change = 0.0
        scale = 0.0
        for i in range(k):
            if a[i, i] <= 0.0:
                continue
            s = rhs[i]
            for j in range(k):
                if j != i:
                    s -= a[i, j] * x[j]
            new = s / a[i, i]
            if new < 0.0:
                new = 0.0
            d = abs(new - x[i])
            if d > change:
                change = d
            x[i] = new
            if new > scale:
                scale = new
        if change <= tol * scale:
            break
    return x


@njit(nogil=True, cache=True)
def fit_seds(images, weights, conv_flat, offsets, grown, ridge):
    """All SEDs at once, per band, by weighted non-negative least squares.

    Minimises ``Σ_px W_b (Y_b − Σ_k a_kb C_kb)²`` for each band b, where
    ``C_kb = D_b * S_k`` is source k's morphology convolved to band b.

    Parameters
    ----------
    images : ndarray, shape (B, H, W), float32
    weights : ndarray, shape (B, H, W), float32
        Inverse variance (zero where masked or outside the footprint).
    conv_flat, offsets, grown
        The convolved morphologies as
        :class:`hpcblend.deblend.component_models.ComponentModels` holds them:
        source k's ``(B, gh, gw)`` block ``conv_flat[offsets[k]:offsets[k + 1]]``
        (float32) over its box ``grown[k]`` = (y0, y1, x0, x1), int64 (C, 4),
        zero outside it.
    ridge : float
        Tikhonov term added to the diagonal, relative to its mean (guards
        against singular systems).

    Returns
    -------
    sed : ndarray, shape (K, B), float64, ≥ 0
    """
    nk = grown.shape[0]
    nb = images.shape[0]
    sed = np.zeros((nk, nb))
    for b in range(nb):
        a = np.zeros((nk, nk))
        rhs = np.zeros(nk)
        for k in range(nk):
            ky0, ky1, kx0, kx1 = grown[k, 0], grown[k, 1], grown[k, 2], grown[k, 3]
            s = 0.0
            for y in range(ky0, ky1):
                row = block_row(offsets, grown, k, b, y)
                for x in range(kx0, kx1):
                    s += weights[b, y, x] * conv_flat[row + x] * images[b, y, x]
            rhs[k] = s
            for l in range(k, nk):
                y0 = max(ky0, grown[l, 0])
                y1 = min(ky1, grown[l, 1])
                x0 = max(kx0, grown[l, 2])
                x1 = min(kx1, grown[l, 3])
                s = 0.0
                for y in range(y0, y1):
                    krow = block_row(offsets, grown, k, b, y)
                    lrow = block_row(offsets, grown, l, b, y)
                    for x in range(x0, x1):
                        s += weights[b, y, x] * conv_flat[krow + x] * conv_flat[lrow + x]
                a[k, l] = s
                a[l, k] = s
        mean_diag = 0.0
        for k in range(nk):
            mean_diag += a[k, k]
        mean_diag /= nk
        for k in range(nk):
            a[k, k] += ridge * mean_diag
        x = nonnegative_least_squares(a, rhs, NNLS_MAX_SWEEPS, NNLS_TOL)
        for k in range(nk):
            sed[k, b] = x[k]
    return sed
