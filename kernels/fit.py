"""The fit loop of one blend, in one compiled call (Numba + rocket-fft).

Model (Melchior et al. 2018, Eqs. 1–3): ``M_b = Σ_k a_kb S_k`` in the model
frame (model PSF), observed as ``D_b * M_b``; loss
``L = ½ Σ_b Σ_px W_b (D_b * M_b − Y_b)²``; with ``G_b = D_bᵀ * [W_b (D_b * M_b − Y_b)]``
the gradients are ``∂L/∂a_kb = Σ_px G_b S_k`` and ``∂L/∂S_k = Σ_b a_kb G_b``.

Optimisers:

* ``OPT_ADAPROX`` — proximal AMSGrad ("adaprox", Melchior et al. 2019,
  arXiv:1910.10094, Algorithm 1 with the AMSGrad scheme of Reddi et al. 2018):
  ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``, ``v̂ ← max(v̂, v)``,
  ``x ← prox(x − η m̂ / (√v̂ + ε))`` with bias-corrected ``m̂``, ``v̂``.
* ``OPT_FISTA`` — accelerated proximal gradient (Beck & Teboulle 2009) with
  per-source step sizes ``1/L`` from Lipschitz bounds of each block, the
  adaptive restart of O'Donoghue & Candès (2015), and a divergence guard: a
  loss more than ``DIVERGENCE_TOL`` above the best one so far sends the fit
  back to the best state with half the step (see :func:`fit_blend`).

Every fit returns the best state it evaluated when its last one ended higher
(by more than ``e_rel``) or was not evaluated (``max_iter`` reached).

Morphologies live in full-frame arrays (K, H, W) with per-source boxes that
grow and shrink with the support; every operation is confined to the boxes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .convolution import convolve_bands, correlate_bands
from .operators import (prox_monotonic, prox_positive, prox_symmetric, prox_threshold, prox_threshold_monotonic,
                        scale_nonzero_box)

__all__ = ["OPT_ADAPROX", "OPT_FISTA", "STATUS_OK", "STATUS_NONFINITE", "render_model", "blend_loss", "fit_blend", "curvature_bound"]

OPT_ADAPROX = 0
OPT_FISTA = 1
STATUS_OK = 0
STATUS_NONFINITE = 1
SUPPORT_BLOCK = 8  # pixels: block size of the coarse maxima of Σ_k S_k used for SED steps
DIVERGENCE_TOL = 0.1  # FISTA: a loss this far (relative) above the best one so far is a divergence
MIN_STEP_MULT = 0.125  # FISTA: the divergence guard halves the step at most down to this fraction


@njit(nogil=True, cache=True)
def render_model(sed, morph, boxes, alive, out):
    """Model-frame image ``M_b = Σ_k a_kb S_k``, written into ``out``.

    Parameters
    ----------
    sed : ndarray, shape (K, B)
    morph : ndarray, shape (K, H, W)
    boxes : ndarray, shape (K, 4), int64 (y0, y1, x0, x1)
    alive : ndarray, shape (K,), bool
    out : ndarray, shape (B, H, W), float32, overwritten
    """
    out[:, :, :] = 0.0
    _add_sources(sed, morph, boxes, alive, out)


@njit(nogil=True, cache=True)
def _add_sources(sed, morph, boxes, alive, out):
    """``out_b += Σ_k a_kb S_k`` over the live sources, inside their boxes."""
    nb = out.shape[0]
    for k in range(sed.shape[0]):
        if not alive[k]:
            continue
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        for b in range(nb):
            a = sed[k, b]
            if a == 0.0:
                continue
            for y in range(y0, y1):
                for x in range(x0, x1):
                    out[b, y, x] += a * morph[k, y, x]


@njit(nogil=True, cache=True)
def blend_loss(model, images, weights, transfer, hp, wp, residual):
    """Loss ``½ Σ W (D * M − Y)²`` and weighted residual ``W (D * M − Y)``.

    Parameters
    ----------
    model : ndarray, shape (B, H, W), float32
    images, weights : ndarray, shape (B, H, W), float32
    transfer : ndarray, shape (B, Hp, Wp//2+1), complex64
    hp, wp : int
    residual : ndarray, shape (B, H, W), float32, overwritten

    Returns
    -------
    loss : float (float64 accumulation)
    """
    return _loss_residual(convolve_bands(model, transfer, hp, wp), images, weights, residual)


@njit(nogil=True, cache=True)
def _render_padded(sed, morph, boxes, alive, out, h, w):
    """:func:`render_model` into the (H, W) corner of a zero-padded (B, Hp, Wp) grid."""
    out[:, :h, :w] = 0.0
    _add_sources(sed, morph, boxes, alive, out)


@njit(nogil=True, cache=True)
def _loss_residual(conv, images, weights, residual):
    """Loss and weighted residual from the convolved model ``conv`` (its (H, W) corner is used);
    the residual goes into the (H, W) corner of ``residual`` (padding, if any, is not touched)."""
    nb, h, w = images.shape
    loss = 0.0
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                wt = weights[b, y, x]
                if wt == 0.0:
                    residual[b, y, x] = 0.0
                    continue
                d = conv[b, y, x] - images[b, y, x]
                r = wt * d
                residual[b, y, x] = r
                loss += 0.5 * r * d
    return loss


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
def _symmetric_box(cy, cx, y0, y1, x0, x1, h, w):
    """Smallest box centred on the peak (cy, cx) holding (y0, y1, x0, x1), clipped to the frame."""
    ey = max(cy - y0, y1 - 1 - cy)
    ex = max(cx - x0, x1 - 1 - cx)
    return max(cy - ey, 0), min(cy + ey + 1, h), max(cx - ex, 0), min(cx + ex + 1, w)


@njit(nogil=True, cache=True)
def _prox_source(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, monotonic, symmetric,
                 margin, h, w, m1, m2, m3):
    """Apply the morphology and SED constraints of source k, renormalise, and resize its box."""
    nb = sed.shape[1]
    for b in range(nb):
        if sed[k, b] < 0.0:
            sed[k, b] = 0.0
    cy, cx = peaks[k, 0], peaks[k, 1]
    y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
    mk = morph[k]
    threshold = _morph_threshold(sed[k], noise_rms, bg_thresh) if bg_thresh > 0.0 else 0.0
    if monotonic and not symmetric:
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
    # resize: non-zero support plus a margin of zeros to grow into
    ny0 = max(ny0 - margin, 0)
    ny1 = min(ny1 + margin, h)
    nx0 = max(nx0 - margin, 0)
    nx1 = min(nx1 + margin, w)
    if symmetric:
        ny0, ny1, nx0, nx1 = _symmetric_box(cy, cx, ny0, ny1, nx0, nx1, h, w)
    # pixels leaving the box are zero; forget their optimiser state
    for y in range(y0, y1):
        for x in range(x0, x1):
            if y < ny0 or y >= ny1 or x < nx0 or x >= nx1:
                m1[k, y, x] = 0.0
                m2[k, y, x] = 0.0
                m3[k, y, x] = 0.0
    boxes[k, 0] = ny0
    boxes[k, 1] = ny1
    boxes[k, 2] = nx0
    boxes[k, 3] = nx1


@njit(nogil=True, cache=True)
def _support_sum(morph, boxes, alive, out, block_max):
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
def _neighbour_sums(sed, boxes, alive, radius, neighbour_sed):
    """For every source k: ``Σ_l a_lb`` over the live sources l (k included) whose boxes,
    dilated by ``radius``, intersect k's, written into ``neighbour_sed`` (K, B)."""
    nk, nb = sed.shape
    for k in range(nk):
        for b in range(nb):
            neighbour_sed[k, b] = 0.0
        if not alive[k]:
            continue
        for l in range(nk):
            if not alive[l]:
                continue
            if (boxes[l, 0] - radius < boxes[k, 1] + radius and boxes[k, 0] - radius < boxes[l, 1] + radius
                    and boxes[l, 2] - radius < boxes[k, 3] + radius and boxes[k, 2] - radius < boxes[l, 3] + radius):
                for b in range(nb):
                    neighbour_sed[k, b] += sed[l, b]


@njit(nogil=True, cache=True)
def _snapshot(sed, morph, boxes, alive, sed_keep, morph_keep, boxes_keep, alive_keep):
    """Copy the fit's state into the ``*_keep`` arrays: SEDs, boxes, alive flags, and each live
    source's morphology inside its box (only those pixels are read back by :func:`_restore`)."""
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
def _restore(sed, morph, boxes, alive, sed_keep, morph_keep, boxes_keep, alive_keep, sed_prev, morph_prev):
    """Put a :func:`_snapshot` back, in place.

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
def fit_blend(images, weights, curvature, transfer, hp, wp, peaks, sed, morph, boxes, noise_rms,
              optimizer, max_iter, min_iter, e_rel, bg_thresh, monotonic, symmetric,
              sed_step_factor, morph_step, margin, kernel_radius, step_scale, loss_history):
    """Fit all sources of a blend (SEDs and morphologies) in place.

    Parameters
    ----------
    images : ndarray, shape (B, H, W), float32
        Data ``Y`` in counts.
    weights : ndarray, shape (B, H, W), float32
        Inverse variance ``W`` (counts⁻²), zero for masked pixels and
        pixels outside the footprint.
    curvature : ndarray, shape (B, H, W), float32
        ``c_b = ||D_b||₁ (|D_b|ᵀ * W_b)``: per-pixel bound on the curvature of
        the loss (see :func:`curvature_bound`); sets FISTA's step sizes.
    transfer : ndarray, shape (B, Hp, Wp//2+1), complex64
        Transfer functions of the difference kernels ``D_b``.
    hp, wp : int
        Padded FFT grid.
    peaks : ndarray, shape (K, 2), int64
        Peak pixels (y, x).
    sed : ndarray, shape (K, B), float64
        Initial SEDs ``a_k`` (peak counts per band); updated in place.
    morph : ndarray, shape (K, H, W), float32
        Initial morphologies ``S_k`` (peak 1, zero outside their boxes); updated in place.
    boxes : ndarray, shape (K, 4), int64
        Boxes (y0, y1, x0, x1), half-open; updated in place.
    noise_rms : ndarray, shape (B,), float64
        Background noise σ_b per band (counts).
    optimizer : int
        ``OPT_ADAPROX`` or ``OPT_FISTA``.
    max_iter, min_iter : int
    e_rel : float
        Converged when ``|L_t − L_{t−1}| < e_rel · |L_t|`` and ``t ≥ min_iter``, with ``L_{t−1}``
        the loss of the state iteration t stepped from, unless ``L_{t−1}`` itself was a rise
        (``L_{t−1} > L_{t−2}``).
    bg_thresh : float
        Morphology threshold in units of the source's noise level (0 disables).
    monotonic, symmetric : bool
        Constraints on morphologies.
    sed_step_factor : float
        Adaprox SED step: ``max(sed_step_factor · mean(a_k), σ_b)``.
    morph_step : float
        Adaprox morphology step (morphology units, peak = 1).
    margin : int
        Zero pixels kept around each support so boxes can grow.
    kernel_radius : int
        Radius of the difference kernels (pixels): sources whose boxes come
        closer than twice this interact.
    step_scale : float
        FISTA step as a fraction of 1/L (L from Gershgorin row-sum bounds,
        per pixel for morphologies and per band for SEDs). The divergence guard
        halves it (down to ``MIN_STEP_MULT × step_scale``) each time the loss
        rises more than ``DIVERGENCE_TOL`` above the best loss so far, after
        putting the best state back.
    loss_history : ndarray, shape (max_iter,), float64
        Filled with the loss of each iteration (of the state evaluated then,
        including the states the divergence guard went back from).

    Returns
    -------
    n_iter : int
        Iterations run (entries of ``loss_history`` written).
    converged : bool
        False when ``max_iter`` was reached, or when the divergence guard
        found the loss diverging again with the step at its floor.
    status : int
        ``STATUS_OK`` or ``STATUS_NONFINITE`` (the loss became NaN or inf).
    alive : ndarray, shape (K,), bool
        False for sources whose morphology collapsed to zero.

    Notes
    -----
    With ``STATUS_OK`` the parameters returned (``sed``, ``morph``, ``boxes``,
    ``alive``) are those of the last evaluated state, unless its loss is more
    than ``e_rel`` above the lowest loss evaluated or the last step was never
    evaluated (``max_iter`` reached): then they are those of the lowest.
    """
    nk, nb = sed.shape
    h = images.shape[1]
    w = images.shape[2]
    alive = np.ones(nk, dtype=np.bool_)
    model = np.zeros((nb, hp, wp), dtype=np.float32)
    residual = np.zeros((nb, hp, wp), dtype=np.float32)
    transfer_adjoint = np.conj(transfer)
    # optimiser state
    m1 = np.zeros(morph.shape, dtype=np.float32)
    m2 = np.zeros(morph.shape, dtype=np.float32)
    m3 = np.zeros(morph.shape, dtype=np.float32)
    s1 = np.zeros((nk, nb))
    s2 = np.zeros((nk, nb))
    s3 = np.zeros((nk, nb))
    grad_sed = np.zeros(nb)
    wmax = np.zeros(nb)
    for b in range(nb):
        wmax[b] = weights[b].max()
    tmax = np.zeros(nb)
    for b in range(nb):
        tmax[b] = np.abs(transfer[b]).max() ** 2
    if symmetric:  # mirrored pixels of a box centred on the peak stay inside it
        for k in range(nk):
            y0, y1, x0, x1 = _symmetric_box(peaks[k, 0], peaks[k, 1], boxes[k, 0], boxes[k, 1], boxes[k, 2],
                                            boxes[k, 3], h, w)
            boxes[k, 0] = y0
            boxes[k, 1] = y1
            boxes[k, 2] = x0
            boxes[k, 3] = x1
    # FISTA keeps the previous iterate
    sed_prev = sed.copy()
    for k in range(nk):
        m2[k] = morph[k]
    neighbour_sed = np.zeros((nk, nb))
    lip_sed = np.zeros(nb)
    coupling = np.zeros(nb)
    support_sum = np.zeros((h, w), dtype=np.float32)
    support_block_max = np.zeros(((h + SUPPORT_BLOCK - 1) // SUPPORT_BLOCK, (w + SUPPORT_BLOCK - 1) // SUPPORT_BLOCK),
                                 dtype=np.float32)
    momentum = 0.0
    t_fista = 1.0
    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-30
    n_iter = 0
    converged = False
    status = STATUS_OK
    # the best state evaluated so far, its loss and (FISTA) its gradient
    best_loss = np.inf
    sed_best = sed.copy()
    morph_best = np.zeros(morph.shape, dtype=np.float32)
    boxes_best = boxes.copy()
    alive_best = alive.copy()
    grad_best = np.zeros((nb, hp, wp), dtype=np.float32)
    prev_loss = np.inf  # loss of the state the current one was stepped from
    rose = False  # the loss went up at the previous evaluation
    evaluated = False  # the current state is the one evaluated last
    step_mult = 1.0  # FISTA: step_scale multiplier, halved by the divergence guard
    for it in range(max_iter):
        # model and residual live in zero-padded FFT grids, so the transforms need no copies
        _render_padded(sed, morph, boxes, alive, model, h, w)
        spec = np.fft.rfft2(model)
        spec *= transfer
        loss = _loss_residual(np.fft.irfft2(spec, s=(hp, wp)), images, weights, residual)
        loss_history[it] = loss
        n_iter = it + 1
        evaluated = True
        if not math.isfinite(loss):
            status = STATUS_NONFINITE
            break
        # converged: a small change, but not right after the loss went up (a step from a worse
        # state can land as high as that state: a small change that is no convergence)
        if it >= min_iter and not rose and abs(prev_loss - loss) < e_rel * abs(loss):
            converged = True
            break
        rose = loss > prev_loss
        improved = loss <= best_loss
        if improved:
            best_loss = loss
            _snapshot(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best)
        if optimizer == OPT_FISTA and loss > (1.0 + DIVERGENCE_TOL) * best_loss:
            # Divergence guard. The steps (step_scale / Gershgorin bound, for SEDs and morphologies at
            # once) are too long for this blend: a bright, extended source under near-uniform weights
            # makes the morphology bound tight for its smooth modes, and its SED and morphology steps
            # overshoot its flux together, so the flux oscillates with growing amplitude (momentum
            # restarts alone do not stop it). Go back to the best state, restart the momentum there
            # and halve the step; once the step is at its floor, stop at the best state.
            _restore(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best, sed_prev, m2)
            if step_mult <= MIN_STEP_MULT:
                break  # not converged; the best state is returned
            step_mult = max(0.5 * step_mult, MIN_STEP_MULT)
            t_fista = 1.0
            grad = grad_best
            prev_loss = best_loss
            rose = False
        else:
            if optimizer == OPT_FISTA and loss > prev_loss:
                t_fista = 1.0  # adaptive restart (O'Donoghue & Candès 2015)
            spec = np.fft.rfft2(residual)
            spec *= transfer_adjoint
            grad = np.fft.irfft2(spec, s=(hp, wp))  # D_bᵀ * residual on the padded grid; (B, H, W) used
            if improved:
                grad_best = grad  # a new array each iteration: keep a reference, no copy
            prev_loss = loss
        evaluated = False
        t = it + 1
        bc1 = 1.0 - beta1 ** t
        bc2 = 1.0 - beta2 ** t
        if optimizer == OPT_FISTA:
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t_fista * t_fista))
            momentum = (t_fista - 1.0) / t_new
            t_fista = t_new
            _neighbour_sums(sed, boxes, alive, kernel_radius, neighbour_sed)
            _support_sum(morph, boxes, alive, support_sum, support_block_max)
        step = step_scale * step_mult
        for k in range(nk):
            if not alive[k]:
                continue
            y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
            mk = morph[k]
            if optimizer == OPT_ADAPROX:
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
            else:
                # proximal gradient, diagonally preconditioned by Gershgorin row sums of the
                # Hessian (Beck & Teboulle 2009 with a variable metric):
                #   morphology pixel p of source k:  Σ_b a_kb A_kb c_b(p),  A_kb = Σ_l a_lb over
                #     the sources l whose grown boxes meet k's (k included);
                #   SED entry (k, b):                S_max,k Σ_p S_k(p) c_b(p),  S_max,k = max Σ_l S_l
                # with c_b = ||D_b||₁ (|D_b|ᵀ * W_b); both majorise the Hessian's blocks, so a
                # step of 1/row-sum decreases the loss. Bright sources (low weights at their
                # cores) get large steps where a global bound would crawl.
                # One pass over the box gathers both gradients and both preconditioners; the
                # morphology step uses the SEDs before their own step (a simultaneous update).
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
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        g = 0.0
                        pre = 0.0
                        v = mk[y, x]
                        for b in range(nb):
                            gb = grad[b, y, x]
                            cb = curvature[b, y, x]
                            grad_sed[b] += gb * v
                            g += sed[k, b] * gb
                            pre += coupling[b] * cb
                            lip_sed[b] += v * cb
                        if pre > 0.0:
                            mk[y, x] = v - step * g / pre
                for b in range(nb):
                    lip = smax * lip_sed[b]
                    if lip > 0.0:
                        sed[k, b] -= step * grad_sed[b] / lip
            _prox_source(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, monotonic,
                         symmetric, margin, h, w, m1, m2, m3)
            if optimizer == OPT_FISTA and alive[k]:
                # Nesterov extrapolation; m2 holds the previous iterate (zero outside the box)
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
    if status == STATUS_OK and (not evaluated or loss_history[n_iter - 1] > (1.0 + e_rel) * best_loss):
        # the last step was not evaluated (max_iter reached) or the last state is worse than the best
        # (m2 is overwritten: FISTA's previous iterate, or adaprox's second moments, no longer needed)
        _restore(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best, sed_prev, m2)
    return n_iter, converged, status, alive
