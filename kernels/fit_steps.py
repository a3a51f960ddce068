"""The per-source steps of the fit loop and its state bookkeeping (Numba, ``nogil``, cached).

:func:`hpcblend.kernels.fit.fit_blend` runs one iteration as: render and
convolve the model, loss and weighted residual, gradient ``G_b``, then for
every live source k one optimiser step (:func:`adaprox_update` or
:func:`fista_update`), its constraints (:func:`prox_source`) and, for FISTA,
the Nesterov extrapolation (:func:`extrapolate`). This module holds those
per-source steps, the Lipschitz bounds they need (:func:`curvature_bound`,
:func:`neighbour_sums`, :func:`support_sum`) and the divergence guard's
memory of the best state (:func:`snapshot`, :func:`restore`).

Morphologies are full-frame arrays (K, H, W) that are zero outside their
boxes ``(y0, y1, x0, x1)`` (half-open, pixels); every step works inside the
boxes only. Arrays in, arrays out: nothing here imports hpcblend.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .convolution import correlate_bands
from .operators import (prox_monotonic, prox_positive, prox_symmetric, prox_threshold, prox_threshold_monotonic,
                        prox_threshold_monotonic_exact, scale_nonzero_box)

__all__ = ["EXACT_SWEEPS", "SUPPORT_BLOCK", "ADAPROX_BETA1", "ADAPROX_BETA2", "ADAPROX_EPS", "curvature_bound",
           "symmetric_box", "prox_source", "support_sum", "neighbour_sums", "snapshot", "restore", "adaprox_update",
           "fista_update", "extrapolate"]

#: Sweeps (out from the peak and back) of the exact monotonicity projection per step of a stalled fit, from the
#: previous step's multipliers (:func:`prox_source`).
EXACT_SWEEPS = 1
SUPPORT_BLOCK = 8  # pixels: block size of the coarse maxima of Σ_k S_k used for SED steps
#: Adaprox (AMSGrad) decay of the first moment: Reddi et al. 2018's and scarlet's default.
ADAPROX_BETA1 = 0.9
#: Adaprox (AMSGrad) decay of the second moment: Reddi et al. 2018's and scarlet's default.
ADAPROX_BETA2 = 0.999
#: Adaprox: added to √v̂ so that a pixel with a vanishing gradient history takes no infinite step; far below
#: any squared gradient of a real blend, so it never changes a step that has one.
ADAPROX_EPS = 1e-30


@njit(nogil=True, cache=True)
def curvature_bound(weights, abs_transfer, l1_norms, hp, wp):
    """Per-pixel curvature bound ``c_b = ||D_b||₁ (|D_b|ᵀ * W_b)`` of the loss, for FISTA's steps.

    Parameters
    ----------
    weights : ndarray, shape (B, H, W), float32
        Inverse variance.
    abs_transfer : ndarray, shape (B, Hp, Wp//2+1), complex64
        Transfer functions of ``|D_b|``.
    l1_norms : ndarray, shape (B,), float64
        ``Σ |D_b|``.
    hp, wp : int

    Returns
    -------
    curvature : ndarray, shape (B, H, W), float32, ≥ 0
    """
    c = correlate_bands(weights, abs_transfer, hp, wp)
    nb, h, w = weights.shape
    out = np.empty((nb, h, w), dtype=np.float32)
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                v = c[b, y, x] * l1_norms[b]
                out[b, y, x] = v if v > 0.0 else 0.0
    return out


@njit(nogil=True, cache=True)
def _morph_threshold(sed_k, noise_rms, bg_thresh):
    """Per-pixel noise of a source's optimal band combination, times bg_thresh (morph units)."""
    s = 0.0
    for b in range(sed_k.shape[0]):
        s += (sed_k[b] / noise_rms[b]) ** 2
    if s <= 0.0:
        return np.inf
    return bg_thresh / math.sqrt(s)


@njit(nogil=True, cache=True)
def symmetric_box(cy, cx, y0, y1, x0, x1, h, w):
    """Smallest box centred on the peak (cy, cx) holding (y0, y1, x0, x1), clipped to the frame (H=h, W=w)."""
    ey = max(cy - y0, y1 - 1 - cy)
    ex = max(cx - x0, x1 - 1 - cx)
    return max(cy - ey, 0), min(cy + ey + 1, h), max(cx - ex, 0), min(cx + ex + 1, w)


@njit(nogil=True, cache=True)
def prox_source(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, monotonic, symmetric,
                margin, h, w, m1, m2, m3, cap=0):
    """Apply the morphology and SED constraints of source k, renormalise, and resize its box (in place).

    SED: non-negative. Morphology: threshold at ``bg_thresh`` times the noise of the source's optimal
    band combination, point symmetry and monotonicity about the peak (as asked), positivity; then
    scaled to peak 1 (the SED takes the factor). A morphology with nothing left kills the source
    (``alive[k] = False``, zero SED and morphology). The box shrinks to the non-zero support plus
    ``margin`` pixels (symmetric about the peak when ``symmetric``), and to at most ``cap`` pixels
    from the peak along each axis when ``cap > 0`` (a faint peak on a brighter source's slope,
    :func:`hpcblend.deblend.initialization.slope_peak_caps`; the morphology beyond is zeroed); the
    optimiser state ``m1``, ``m2``, ``m3`` (K, H, W) of pixels leaving it is set to zero (``m1`` and ``m3``
    may be (K, 0, 0): FISTA keeps no such state). Once a FISTA fit has stalled (:func:`hpcblend.kernels.fit.fit_blend`,
    Notes), ``m3`` (K, H, W) holds the multipliers of the exact monotonicity projection
    (:func:`prox_threshold_monotonic_exact`), which then comes before the ring pass; they follow the
    morphology's normalisation.
    """
    nb = sed.shape[1]
    for b in range(nb):
        if sed[k, b] < 0.0:
            sed[k, b] = 0.0
    cy, cx = peaks[k, 0], peaks[k, 1]
    y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
    mk = morph[k]
    threshold = _morph_threshold(sed[k], noise_rms, bg_thresh) if bg_thresh > 0.0 else 0.0
    exact = m3.shape[1] > 0 and m1.shape[1] == 0  # FISTA keeps the multipliers of the exact projection in m3
    if monotonic and not symmetric and exact:
        # nearest monotonic point (EXACT_SWEEPS from the last step's multipliers, so nearly), then the ring
        # pass: exactly in the set, and its support cut at the first empty ring as in every other step
        prox_threshold_monotonic_exact(mk, m3[k], threshold, cy, cx, y0, y1, x0, x1, EXACT_SWEEPS, 0.0)
        prox_threshold_monotonic(mk, threshold, cy, cx, y0, y1, x0, x1)
    elif monotonic and not symmetric:
        # one ring pass: threshold, positivity and monotonicity (see prox_threshold_monotonic)
        prox_threshold_monotonic(mk, threshold, cy, cx, y0, y1, x0, x1)
        if mk[cy, cx] < 0.0:
            mk[cy, cx] = 0.0
    else:
        if bg_thresh > 0.0:
            prox_threshold(mk, threshold, cy, cx, y0, y1, x0, x1)
        if symmetric:
            prox_symmetric(mk, cy, cx, y0, y1, x0, x1)
        if monotonic:
            prox_monotonic(mk, cy, cx, y0, y1, x0, x1)
        prox_positive(mk, y0, y1, x0, x1)
    norm = 0.0
    if monotonic:
        norm = mk[cy, cx]
    else:
        for y in range(y0, y1):
            for x in range(x0, x1):
                if mk[y, x] > norm:
                    norm = mk[y, x]
    if not norm > 0.0:
        alive[k] = False
        for y in range(y0, y1):
            for x in range(x0, x1):
                mk[y, x] = 0.0
        for b in range(nb):
            sed[k, b] = 0.0
        return
    # renormalise (peak 1) and find the non-zero support in the same pass
    ny0, ny1, nx0, nx1 = scale_nonzero_box(mk, 1.0 / norm, cy, cx, y0, y1, x0, x1)
    for b in range(nb):
        sed[k, b] *= norm
    if exact:
        for y in range(y0, y1):
            for x in range(x0, x1):
                m3[k, y, x] /= norm
    # resize: non-zero support plus a margin of zeros to grow into
    ny0 = max(ny0 - margin, 0)
    ny1 = min(ny1 + margin, h)
    nx0 = max(nx0 - margin, 0)
    nx1 = min(nx1 + margin, w)
    if symmetric:
        ny0, ny1, nx0, nx1 = symmetric_box(cy, cx, ny0, ny1, nx0, nx1, h, w)
    if cap > 0:
        ny0 = max(ny0, cy - cap)
        ny1 = min(ny1, cy + cap + 1)
        nx0 = max(nx0, cx - cap)
        nx1 = min(nx1, cx + cap + 1)
    # pixels leaving the box are zero; forget their optimiser state (FISTA has no m1, m3: shape (K, 0, 0))
    moments = m1.shape[1] > 0
    for y in range(y0, y1):
        for x in range(x0, x1):
            if y < ny0 or y >= ny1 or x < nx0 or x >= nx1:
                mk[y, x] = 0.0
                m2[k, y, x] = 0.0
                if m3.shape[1] > 0:
                    m3[k, y, x] = 0.0
                if moments:
                    m1[k, y, x] = 0.0
    boxes[k, 0] = ny0
    boxes[k, 1] = ny1
    boxes[k, 2] = nx0
    boxes[k, 3] = nx1


@njit(nogil=True, cache=True)
def support_sum(morph, boxes, alive, out, block_max):
    """``Σ_k S_k`` over all live sources, written into ``out`` (H, W), and its maxima over
    ``SUPPORT_BLOCK``² pixel blocks into ``block_max`` (⌈H/8⌉, ⌈W/8⌉)."""
    out[:, :] = 0.0
    for k in range(morph.shape[0]):
        if not alive[k]:
            continue
        for y in range(boxes[k, 0], boxes[k, 1]):
            for x in range(boxes[k, 2], boxes[k, 3]):
                out[y, x] += morph[k, y, x]
    block_max[:, :] = 0.0
    for y in range(out.shape[0]):
        by = y // SUPPORT_BLOCK
        for x in range(out.shape[1]):
            v = out[y, x]
            bx = x // SUPPORT_BLOCK
            if v > block_max[by, bx]:
                block_max[by, bx] = v


@njit(nogil=True, cache=True)
def neighbour_sums(sed, boxes, alive, radius, neighbour_sed, gamma=0.0):
    """The row-sum factors of FISTA's morphology preconditioners (:func:`fista_update`), for every source k.

    Over the live sources l (k included) whose boxes, dilated by ``radius``, intersect k's:
    ``neighbour_sed[k, b] = Σ_l a_lb`` (the Gershgorin row) and, when ``gamma > 0``,
    ``neighbour_sed[k, B + b] = Σ_l a_lb (ā_k / ā_l)^γ`` (the row weighted by ``v_l = ā_l^−γ``, Schur's test),
    with ``ā_l = Σ_b a_lb``; a source with no flux weighs 1 (its terms are zero).

    Parameters
    ----------
    sed : ndarray, shape (K, B), float64
    boxes : ndarray, shape (K, 4), int64
    alive : ndarray, shape (K,), bool
    radius : int
        Pixels (the PSF-difference kernel radius).
    neighbour_sed : ndarray, shape (K, 2B), float64
        Overwritten (the weighted half with zeros when ``gamma`` is 0).
    gamma : float
        γ ≥ 0 of the weighted row (``deblend.morph_row_gamma``); 0: the Gershgorin row alone.
    """
    nk, nb = sed.shape
    scale = np.zeros(nk)  # ā_l^γ (only with gamma > 0)
    for l in range(nk if gamma > 0.0 else 0):
        total = 0.0
        for b in range(nb):
            total += sed[l, b]
        scale[l] = total ** gamma if total > 0.0 else 0.0
    for k in range(nk):
        for b in range(2 * nb):
            neighbour_sed[k, b] = 0.0
        if not alive[k]:
            continue
        for l in range(nk):
            if not alive[l]:
                continue
            if (boxes[l, 0] - radius < boxes[k, 1] + radius and boxes[k, 0] - radius < boxes[l, 1] + radius
                    and boxes[l, 2] - radius < boxes[k, 3] + radius and boxes[k, 2] - radius < boxes[l, 3] + radius):
                weight = scale[k] / scale[l] if l != k and scale[k] > 0.0 and scale[l] > 0.0 else 1.0
                for b in range(nb):
                    neighbour_sed[k, b] += sed[l, b]
                    if gamma > 0.0:
                        neighbour_sed[k, nb + b] += sed[l, b] * weight


@njit(nogil=True, cache=True)
def snapshot(sed, morph, boxes, alive, sed_keep, morph_keep, boxes_keep, alive_keep):
    """Copy the fit's state into the ``*_keep`` arrays: SEDs, boxes, alive flags, and each live
    source's morphology inside its box (only those pixels are read back by :func:`restore`)."""
    nk, nb = sed.shape
    for k in range(nk):
        alive_keep[k] = alive[k]
        for j in range(4):
            boxes_keep[k, j] = boxes[k, j]
        for b in range(nb):
            sed_keep[k, b] = sed[k, b]
        if not alive[k]:
            continue
        for y in range(boxes[k, 0], boxes[k, 1]):
            for x in range(boxes[k, 2], boxes[k, 3]):
                morph_keep[k, y, x] = morph[k, y, x]


@njit(nogil=True, cache=True)
def restore(sed, morph, boxes, alive, sed_keep, morph_keep, boxes_keep, alive_keep, sed_prev, morph_prev):
    """Put a :func:`snapshot` back, in place.

    SEDs, boxes and alive flags are copied back; each morphology is cleared in
    its current box and refilled inside the kept box (so it stays zero outside
    its box). FISTA's previous iterate (``sed_prev``, ``morph_prev``, zero
    outside the boxes) becomes the same state, so the next step carries no
    momentum.
    """
    nk, nb = sed.shape
    for k in range(nk):
        for y in range(boxes[k, 0], boxes[k, 1]):
            for x in range(boxes[k, 2], boxes[k, 3]):
                morph[k, y, x] = 0.0
                morph_prev[k, y, x] = 0.0
        alive[k] = alive_keep[k]
        for j in range(4):
            boxes[k, j] = boxes_keep[k, j]
        for b in range(nb):
            sed[k, b] = sed_keep[k, b]
            sed_prev[k, b] = sed_keep[k, b]
        if not alive[k]:
            continue
        for y in range(boxes[k, 0], boxes[k, 1]):
            for x in range(boxes[k, 2], boxes[k, 3]):
                v = morph_keep[k, y, x]
                morph[k, y, x] = v
                morph_prev[k, y, x] = v


@njit(nogil=True, cache=True)
def adaprox_update(k, sed, mk, y0, y1, x0, x1, grad, m1, m2, m3, s1, s2, s3, grad_sed, bc1, bc2,
                   morph_step, sed_step_factor, noise_rms):
    """One proximal-AMSGrad (adaprox) gradient step of source k's morphology and SED, in place.

    Parameters
    ----------
    k : int
    sed : ndarray, shape (K, B), float64
    mk : ndarray, shape (H, W), float32
        Source k's morphology (``morph[k]``), stepped inside its box ``(y0, y1, x0, x1)``.
    grad : ndarray, shape (B, ≥H, ≥W), float32
        ``G_b = D_bᵀ * [W_b (D_b * M_b − Y_b)]`` (the (H, W) corner is read).
    m1, m2, m3 : ndarray, shape (K, H, W), float32
        Morphology moments ``m``, ``v``, ``v̂`` (updated).
    s1, s2, s3 : ndarray, shape (K, B), float64
        SED moments (updated).
    grad_sed : ndarray, shape (B,), float64
        Work space.
    bc1, bc2 : float
        Bias corrections ``1 − β1^t``, ``1 − β2^t``.
    morph_step, sed_step_factor : float
        Step sizes (see :func:`hpcblend.kernels.fit.fit_blend`).
    noise_rms : ndarray, shape (B,), float64
        Floor of the SED step per band (counts).
    """
    nb = sed.shape[1]
    beta1 = ADAPROX_BETA1
    beta2 = ADAPROX_BETA2
    eps = ADAPROX_EPS
    for b in range(nb):
        s = 0.0
        for y in range(y0, y1):
            for x in range(x0, x1):
                s += grad[b, y, x] * mk[y, x]
        grad_sed[b] = s
    mean_sed = 0.0
    for b in range(nb):
        mean_sed += sed[k, b]
    mean_sed /= nb
    for y in range(y0, y1):
        for x in range(x0, x1):
            g = 0.0
            for b in range(nb):
                g += sed[k, b] * grad[b, y, x]
            a1 = beta1 * m1[k, y, x] + (1.0 - beta1) * g
            a2 = beta2 * m2[k, y, x] + (1.0 - beta2) * g * g
            a3 = max(m3[k, y, x], a2)
            m1[k, y, x] = a1
            m2[k, y, x] = a2
            m3[k, y, x] = a3
            if a3 > 0.0:
                mk[y, x] -= morph_step * (a1 / bc1) / (math.sqrt(a3 / bc2) + eps)
    for b in range(nb):
        g = grad_sed[b]
        a1 = beta1 * s1[k, b] + (1.0 - beta1) * g
        a2 = beta2 * s2[k, b] + (1.0 - beta2) * g * g
        a3 = max(s3[k, b], a2)
        s1[k, b] = a1
        s2[k, b] = a2
        s3[k, b] = a3
        sed_step = max(sed_step_factor * mean_sed, noise_rms[b])
        if a3 > 0.0:
            sed[k, b] -= sed_step * (a1 / bc1) / (math.sqrt(a3 / bc2) + eps)


@njit(nogil=True, cache=True)
def fista_update(k, sed, mk, y0, y1, x0, x1, grad, curvature, support_block_max, neighbour_sed, kernel_radius,
                 step, lip_sed, grad_sed, coupling, weighted_row=False):
    """One preconditioned proximal-gradient (FISTA) step of source k's morphology and SED, in place.

    The step is diagonally preconditioned by Gershgorin row sums of the Hessian (Beck & Teboulle
    2009 with a variable metric):

    * morphology pixel p of source k: ``P_k(p) = Σ_b a_kb A_kb c_b(p)``, ``A_kb = Σ_l a_lb`` over the
      sources l whose grown boxes meet k's (k included; ``neighbour_sed[:, :B]``);
    * SED entry (k, b): ``S_max,k Σ_p S_k(p) c_b(p)``, ``S_max,k = max Σ_l S_l`` near k,

    with ``c_b = ||D_b||₁ (|D_b|ᵀ * W_b)`` (``curvature``); both majorise the Hessian's blocks, so a
    step of ``step`` / row-sum (``step`` ≤ 2) decreases the loss. Bright sources (low weights at
    their cores) get large steps where a global bound would crawl. With ``weighted_row`` the morphology
    steps by the longer of ``step / P`` and ``1 / Q``, ``Q_k(p) = Σ_b a_kb A'_kb c_b(p)`` the weighted row
    (``A'_kb = Σ_l a_lb (ā_k/ā_l)^γ``, ``neighbour_sed[:, B:]``; Schur's test, ``diag(Σ_j |H_ij| v_j / v_i) ⪰ H``
    for any ``v > 0``, here ``v_l = ā_l^−γ``): a whole step of a majorant, as the tighter row cannot take
    twice it. Beside a source 10⁴ times brighter, ``P`` is the bright one's SED and, at γ = ½, ``Q`` only
    √10⁴ of it, so a faint source's morphology no longer crawls. One pass over the box gathers both
    gradients and the preconditioners; the morphology step uses the SEDs before their own step (a
    simultaneous update).

    Parameters
    ----------
    k : int
    sed : ndarray, shape (K, B), float64
    mk : ndarray, shape (H, W), float32
        Source k's morphology, stepped inside its box ``(y0, y1, x0, x1)``.
    grad : ndarray, shape (B, ≥H, ≥W), float32
        ``G_b`` (the (H, W) corner is read).
    curvature : ndarray, shape (B, H, W), float32
    support_block_max : ndarray, shape (⌈H/8⌉, ⌈W/8⌉), float32
        Block maxima of ``Σ_l S_l`` (:func:`support_sum`).
    neighbour_sed : ndarray, shape (K, 2B), float64
        ``A_kb`` and ``A'_kb`` (:func:`neighbour_sums`).
    kernel_radius : int
        Pixels: the SED bound looks at k's box grown by this.
    step : float
        Fraction of 1/row-sum to step.
    lip_sed, grad_sed : ndarray, shape (B,), float64
        Work space.
    coupling : ndarray, shape (2B,), float64
        Work space.
    weighted_row : bool
        Step by the longer of the two rows (``deblend.morph_row_gamma > 0``).
    """
    nb = sed.shape[1]
    h, w = mk.shape
    # max of Σ_l S_l near k (its box grown by r), from 8×8-pixel block maxima: an
    # upper bound of the exact local maximum, so the step still descends
    smax = 0.0
    for by in range(max(y0 - kernel_radius, 0) // SUPPORT_BLOCK,
                    (min(y1 + kernel_radius, h) - 1) // SUPPORT_BLOCK + 1):
        for bx in range(max(x0 - kernel_radius, 0) // SUPPORT_BLOCK,
                        (min(x1 + kernel_radius, w) - 1) // SUPPORT_BLOCK + 1):
            if support_block_max[by, bx] > smax:
                smax = support_block_max[by, bx]
    for b in range(nb):
        lip_sed[b] = 0.0
        grad_sed[b] = 0.0
        coupling[b] = sed[k, b] * neighbour_sed[k, b]
        coupling[nb + b] = sed[k, b] * neighbour_sed[k, nb + b]
    for y in range(y0, y1):
        for x in range(x0, x1):
            g = 0.0
            pre = 0.0
            pre_weighted = 0.0
            v = mk[y, x]
            for b in range(nb):
                gb = grad[b, y, x]
                cb = curvature[b, y, x]
                grad_sed[b] += gb * v
                g += sed[k, b] * gb
                pre += coupling[b] * cb
                if weighted_row:
                    pre_weighted += coupling[nb + b] * cb
                lip_sed[b] += v * cb
            if pre > 0.0:
                length = step / pre
                if weighted_row and pre_weighted > 0.0:
                    length = max(length, 1.0 / pre_weighted)
                mk[y, x] = v - length * g
    for b in range(nb):
        lip = smax * lip_sed[b]
        if lip > 0.0:
            sed[k, b] -= step * grad_sed[b] / lip


@njit(nogil=True, cache=True)
def extrapolate(k, sed, mk, boxes, sed_prev, m2, momentum):
    """FISTA's Nesterov extrapolation of source k, in place, clipped at zero.

    ``x ← max(x + momentum (x − x_prev), 0)`` for its SED and its morphology inside its box;
    the un-extrapolated values become the previous iterate (``sed_prev`` (K, B) and ``m2``
    (K, H, W), zero outside the box).
    """
    nb = sed.shape[1]
    y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
    for b in range(nb):
        new = sed[k, b]
        sed[k, b] = max(new + momentum * (new - sed_prev[k, b]), 0.0)
        sed_prev[k, b] = new
    for y in range(y0, y1):
        for x in range(x0, x1):
            new = mk[y, x]
            ext = new + momentum * (new - m2[k, y, x])
            mk[y, x] = ext if ext > 0.0 else 0.0
            m2[k, y, x] = new
