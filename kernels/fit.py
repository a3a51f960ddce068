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
  loss more than ``DIVERGENCE_TOL`` above the best one so far, or rising by more
  than ``OSCILLATION_TOL`` at every other evaluation, sends the fit back to the
  best state with half the step (see :func:`fit_blend`).

Every fit returns the best state it evaluated when its last one ended higher
(by more than ``e_rel``) or was not evaluated (``max_iter`` reached).

Morphologies live in full-frame arrays (K, H, W) with per-source boxes that
grow and shrink with the support; every operation is confined to the boxes.
The per-source steps, constraints and the best-state memory are in
:mod:`hpcblend.kernels.fit_steps`; the fit's settings come as one
:class:`FitSettings` (a named tuple Numba types field by field).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from .convolution import convolve_bands
from .fit_steps import (ADAPROX_BETA1, ADAPROX_BETA2, adaprox_update, extrapolate, fista_update, neighbour_sums,
                        prox_source, restore, snapshot, support_sum, symmetric_box, SUPPORT_BLOCK)

__all__ = ["OPT_ADAPROX", "OPT_FISTA", "STATUS_OK", "STATUS_NONFINITE", "DIVERGENCE_TOL", "OSCILLATION_TOL",
           "MIN_STEP_MULT", "FitSettings", "render_model", "blend_loss", "fit_blend"]

OPT_ADAPROX = 0
OPT_FISTA = 1
STATUS_OK = 0
STATUS_NONFINITE = 1
DIVERGENCE_TOL = 0.1  # FISTA: a loss this far (relative) above the best one so far is a divergence
OSCILLATION_TOL = 0.01  # FISTA: rise, fall, rise, each rise this large (relative): the step is too long
STALL_RISES = 4  # FISTA: this many rises in a row: monotonicity by exact projection from then on
SETTLE_WINDOW = 3  # evaluations: converged also needs the loss to have fallen less than
SETTLE_RATE = 2.0  # SETTLE_WINDOW × SETTLE_RATE × the tolerance over this many evaluations (not a lull)
MIN_STEP_MULT = 0.125  # FISTA: the divergence guard halves the step at most down to this fraction


class FitSettings(NamedTuple):
    """The settings of one fit, as one argument of :func:`fit_blend` (a named tuple; Numba types it field by field).

    Build it from plain Python ``int``, ``float`` and ``bool`` values: each distinct set of field
    types compiles (and caches) its own :func:`fit_blend`.

    Attributes
    ----------
    optimizer : int
        ``OPT_ADAPROX`` or ``OPT_FISTA``.
    max_iter, min_iter : int
        Iteration bounds.
    e_rel : float
        Converged when ``|L_t − L_{t−1}| < e_rel · m · |L_t|`` and ``t ≥ min_iter``, with ``L_{t−1}``
        the loss of the state iteration t stepped from and ``m`` FISTA's step multiplier (1 until the
        divergence guard halves the step; 1 for adaprox), unless ``L_{t−1}`` itself was a rise
        (``L_{t−1} > L_{t−2}``) or the loss fell by more than ``SETTLE_WINDOW · SETTLE_RATE · e_rel · m``
        (relative) over the last ``SETTLE_WINDOW`` evaluations (a lull, not convergence), or (FISTA) ``L_t`` is
        more than ``e_rel · m`` (relative) above the lowest loss evaluated (:func:`_converged`).
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
    step_scale : float
        FISTA step as a fraction of 1/L (L from Gershgorin row-sum bounds,
        per pixel for morphologies and per band for SEDs). The divergence guard
        halves it (down to ``MIN_STEP_MULT × step_scale``) each time the loss
        rises more than ``DIVERGENCE_TOL`` above the best loss so far, or
        oscillates (rises more than ``OSCILLATION_TOL`` now and two evaluations
        before, with a fall between), after putting the best state back.
    row_gamma : float
        FISTA: γ of the weighted morphology row (:func:`~hpcblend.kernels.fit_steps.fista_update`); 0: the
        Gershgorin row alone.
    """

    optimizer: int
    max_iter: int
    min_iter: int
    e_rel: float
    bg_thresh: float
    monotonic: bool
    symmetric: bool
    sed_step_factor: float
    morph_step: float
    margin: int
    step_scale: float
    row_gamma: float = 0.0


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
def _evaluate(sed, morph, boxes, alive, images, weights, transfer, hp, wp, model, residual):
    """Loss of the current state; the weighted residual ``W (D * M − Y)`` goes into ``residual``.

    ``model`` and ``residual`` are zero-padded (B, Hp, Wp) grids, so the transforms need no copies.
    """
    h = images.shape[1]
    w = images.shape[2]
    _render_padded(sed, morph, boxes, alive, model, h, w)
    spec = np.fft.rfft2(model)
    spec *= transfer
    return _loss_residual(np.fft.irfft2(spec, s=(hp, wp)), images, weights, residual)


@njit(nogil=True, cache=True)
def _gradient(residual, transfer_adjoint, hp, wp):
    """``G_b = D_bᵀ * residual_b`` on the padded grid, a new (B, Hp, Wp) float32 array; (B, H, W) is used."""
    spec = np.fft.rfft2(residual)
    spec *= transfer_adjoint
    return np.fft.irfft2(spec, s=(hp, wp))


@njit(nogil=True, cache=True)
def _symmetric_boxes(peaks, boxes, h, w):
    """Grow every box (K, 4) to the smallest one centred on its peak (clipped to the (h, w) frame), in place."""
    for k in range(boxes.shape[0]):
        y0, y1, x0, x1 = symmetric_box(peaks[k, 0], peaks[k, 1], boxes[k, 0], boxes[k, 1], boxes[k, 2],
                                       boxes[k, 3], h, w)
        boxes[k, 0] = y0
        boxes[k, 1] = y1
        boxes[k, 2] = x0
        boxes[k, 3] = x1


@njit(nogil=True, cache=True)
def _project_state(sed, morph, boxes, alive, peaks, noise_rms, settings, m1, m2, m3, sed_prev, box_cap):
    """Apply every live source's constraints (:func:`prox_source`) to the fit's state, in place.

    FISTA evaluates its extrapolated points, which its momentum may carry outside the constraints;
    the divergence guard goes back to the best of them. Returns True when the constraints changed
    that state (a source's box, liveness, SED or a morphology pixel by more than 1e-6 of its peak);
    FISTA's previous iterate (``sed_prev``, ``m2``) becomes the projected state (no momentum).
    """
    h = morph.shape[1]
    w = morph.shape[2]
    changed = False
    for k in range(sed.shape[0]):
        if not alive[k]:
            continue
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        before = morph[k, y0:y1, x0:x1].copy()
        sed_before = sed[k].copy()
        prox_source(k, sed, morph, boxes, peaks, alive, noise_rms, settings.bg_thresh, settings.monotonic,
                    settings.symmetric, settings.margin, h, w, m1, m2, m3, box_cap[k])
        if (not alive[k] or boxes[k, 0] != y0 or boxes[k, 1] != y1 or boxes[k, 2] != x0 or boxes[k, 3] != x1
                or np.max(np.abs(morph[k, y0:y1, x0:x1] - before)) > 1e-6 * max(np.max(before), 1e-30)
                or np.max(np.abs(sed[k] - sed_before)) > 1e-6 * max(np.max(sed_before), 1e-30)):
            changed = True
        sed_prev[k] = sed[k]
        m2[k, boxes[k, 0]:boxes[k, 1], boxes[k, 2]:boxes[k, 3]] = morph[k, boxes[k, 0]:boxes[k, 1],
                                                                        boxes[k, 2]:boxes[k, 3]]
    return changed


@njit(nogil=True, cache=True)
def _work_space(morph, nb, fista):
    """The optimiser's state and work arrays of :func:`fit_blend` for morphologies ``morph`` (K, H, W), B bands.

    Returns ``(m1, m2, m3, s1, s2, s3, grad_sed, neighbour_sed, lip_sed, coupling, support, support_block_max)``:
    adaprox's moments m1, m2, m3 (K, H, W) and s1, s2, s3 (K, B); FISTA's previous iterate in m2, with
    m1 and m3 (K, 0, 0) (m3 becomes the exact monotonicity projection's multipliers if the fit stalls);
    the SED gradient (B,), neighbour SED sums (K, 2B), SED curvature (B,) and coupling (2B,), Σ_k S_k (H, W)
    and its ``SUPPORT_BLOCK``² block maxima.
    """
    nk, h, w = morph.shape
    m1 = np.zeros(morph.shape if not fista else (nk, 0, 0), dtype=np.float32)
    m2 = np.zeros(morph.shape, dtype=np.float32)
    m3 = np.zeros(m1.shape, dtype=np.float32)
    s1, s2, s3 = np.zeros((nk, nb)), np.zeros((nk, nb)), np.zeros((nk, nb))
    neighbour_sed, lip_sed, coupling = np.zeros((nk, 2 * nb)), np.zeros(nb), np.zeros(2 * nb)
    support = np.zeros((h, w), dtype=np.float32)
    support_block_max = np.zeros(((h + SUPPORT_BLOCK - 1) // SUPPORT_BLOCK, (w + SUPPORT_BLOCK - 1) // SUPPORT_BLOCK),
                                 dtype=np.float32)
    return m1, m2, m3, s1, s2, s3, np.zeros(nb), neighbour_sed, lip_sed, coupling, support, support_block_max


@njit(nogil=True, cache=True)
def _converged(loss_history, it, prev_loss, best_loss, rose, fell, tolerance):
    """:func:`fit_blend`'s convergence test at evaluation ``it`` (loss ``loss_history[it]``).

    A change of the loss below ``tolerance`` (relative), but not right after the loss went up (a step
    from a worse state can land as high as that state), nor a small rise right after a large fall
    (momentum overshooting a steady descent), nor a lull in a descent: the loss must also have
    fallen less than ``SETTLE_WINDOW × SETTLE_RATE × tolerance`` over the last ``SETTLE_WINDOW``
    evaluations. FISTA's steps are uneven, and one small change amid falls of 0.5–3 % per step had
    ended fits at χ²/px 1.8 and 8.8 (simulated parents with saturated stars; they reach 1.1 and 3.1).
    Nor more than ``tolerance`` above ``best_loss``, the lowest loss evaluated (FISTA; ``inf`` for adaprox
    and after the divergence guard went back to a state it had to project): after a rise, FISTA's adaptive
    restart takes the momentum, and its first steps from there are small; fits had "converged" on them
    1–7 % above a state reached a few steps before, in a descent of a few per cent per step (simulated
    bright galaxies ending at χ²/px 2.2, 1.8 and 1.6 reach 1.25, 1.10 and 1.15).
    """
    loss = loss_history[it]
    if rose or not abs(prev_loss - loss) < tolerance * abs(loss) or (fell and loss > prev_loss):
        return False
    if loss - best_loss > tolerance * abs(loss):
        return False
    settled = SETTLE_WINDOW * SETTLE_RATE * tolerance * abs(loss)
    return it < SETTLE_WINDOW or loss_history[it - SETTLE_WINDOW] - loss < settled


@njit(nogil=True, cache=True)
def _return_to_best(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best, sed_prev, m1, m2, m3,
                    peaks, noise_rms, settings, box_cap, step_mult, halve):
    """The divergence guard's return to the best state (:func:`fit_blend`, Notes), in place.

    Returns ``(stop, projected, step_mult)``: ``stop`` when the step is to be halved (``halve``) but
    its multiplier is already at its floor (the best state is then kept as it was); ``projected``
    when the best state, an extrapolated point, was outside the constraints and was projected onto
    them (:func:`_project_state`; it is then the best state kept, to be evaluated afresh); the step
    multiplier, halved when ``halve`` (a divergence; not when the fit stalled: its step is not too long).
    """
    restore(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best, sed_prev, m2)
    if halve and step_mult <= MIN_STEP_MULT:
        return True, False, step_mult
    projected = _project_state(sed, morph, boxes, alive, peaks, noise_rms, settings, m1, m2, m3, sed_prev, box_cap)
    if projected:
        snapshot(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best)
    return False, projected, max(0.5 * step_mult, MIN_STEP_MULT) if halve else step_mult


@njit(nogil=True, cache=True)
def _step_sources(settings, step, momentum, bc1, bc2, grad, curvature, noise_rms, kernel_radius, peaks, box_cap,
                  sed, morph, boxes, alive, m1, m2, m3, s1, s2, s3, sed_prev, grad_sed, neighbour_sed,
                  support_block_max, lip_sed, coupling):
    """One optimiser step of every live source, in place: gradient step, constraints, (FISTA) extrapolation.

    ``step`` is FISTA's fraction of 1/row-sum, ``momentum`` its extrapolation weight, ``bc1``/``bc2``
    adaprox's bias corrections; the arrays are the fit's state and work space (see :func:`fit_blend`
    and :mod:`hpcblend.kernels.fit_steps`); FISTA keeps its previous iterate in ``sed_prev`` and ``m2``.
    """
    h = morph.shape[1]
    w = morph.shape[2]
    for k in range(sed.shape[0]):
        if not alive[k]:
            continue
        y0, y1, x0, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        mk = morph[k]
        if settings.optimizer == OPT_ADAPROX:
            adaprox_update(k, sed, mk, y0, y1, x0, x1, grad, m1, m2, m3, s1, s2, s3, grad_sed, bc1, bc2,
                           settings.morph_step, settings.sed_step_factor, noise_rms)
        else:
            fista_update(k, sed, mk, y0, y1, x0, x1, grad, curvature, support_block_max, neighbour_sed,
                         kernel_radius, step, lip_sed, grad_sed, coupling, settings.row_gamma > 0.0)
        prox_source(k, sed, morph, boxes, peaks, alive, noise_rms, settings.bg_thresh, settings.monotonic,
                    settings.symmetric, settings.margin, h, w, m1, m2, m3, box_cap[k])
        if settings.optimizer == OPT_FISTA and alive[k]:
            extrapolate(k, sed, mk, boxes, sed_prev, m2, momentum)


@njit(nogil=True, cache=True)
def fit_blend(images, weights, curvature, transfer, hp, wp, peaks, box_cap, sed, morph, boxes, noise_rms,
              kernel_radius, settings, loss_history):
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
        the loss (see :func:`hpcblend.kernels.fit_steps.curvature_bound`); sets FISTA's step sizes.
    transfer : ndarray, shape (B, Hp, Wp//2+1), complex64
        Transfer functions of the difference kernels ``D_b``.
    hp, wp : int
        Padded FFT grid.
    peaks : ndarray, shape (K, 2), int64
        Peak pixels (y, x).
    box_cap : ndarray, shape (K,), int64
        Largest distance (pixels, along each axis) of a source's box from its peak; 0: none
        (:func:`hpcblend.deblend.initialization.slope_peak_caps`).
    sed : ndarray, shape (K, B), float64
        Initial SEDs ``a_k`` (peak counts per band); updated in place.
    morph : ndarray, shape (K, H, W), float32
        Initial morphologies ``S_k`` (peak 1, zero outside their boxes); updated in place.
    boxes : ndarray, shape (K, 4), int64
        Boxes (y0, y1, x0, x1), half-open; updated in place.
    noise_rms : ndarray, shape (B,), float64
        Background noise σ_b per band (counts).
    kernel_radius : int
        Radius of the difference kernels (pixels): sources whose boxes come
        closer than twice this interact.
    settings : FitSettings
        Optimiser, iteration bounds, convergence, constraints and steps.
    loss_history : ndarray, shape (settings.max_iter,), float64
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

    FISTA's divergence guard: when a loss rises more than ``DIVERGENCE_TOL`` above the best loss
    so far, the steps (``step_scale`` / Gershgorin bound, for SEDs and morphologies at once) are
    too long for this blend: a bright, extended source under near-uniform weights makes the
    morphology bound tight for its smooth modes, and its SED and morphology steps overshoot its
    flux together, so the flux oscillates with growing amplitude (momentum restarts alone do not
    stop it). The fit goes back to the best state, restarts the momentum there and halves the
    step; once the step is at its floor (``MIN_STEP_MULT``), it stops at the best state.

    A step can also be too long without a rise of ``DIVERGENCE_TOL``: around a saturated star of
    S/N ~5·10⁴ with most of its core masked, the loss rose 2–7 % and fell again by turns, and the
    convergence test fired on a small fall between two large ones (χ²/px 45; it reaches 1.1). So a
    rise of more than ``OSCILLATION_TOL`` at this evaluation and two evaluations before, with no such
    rise between (rise, fall, rise), is treated as a divergence too (above the step floor only). With
    a halved step every change of the loss is smaller, so the convergence tolerance is scaled by the
    step multiplier: a shorter step must also change the loss less before the fit counts as converged.

    A fit can also stall: after a few steps the loss rises at every step, by 0.01–1 %, with the
    momentum restarted each time, too little for the guard until the rises add up to
    ``DIVERGENCE_TOL``; the convergence test then fires at a state 5–10 % above the best, or the
    guard ends the fit at the step floor (a bright galaxy whose light is not monotonic about its
    peak, two faint stars beside it: χ²/px 3.2 where 1.3 is reachable). The cause is the
    monotonicity operator, not the step: scarlet's ring pass clips each pixel to the weighted mean of
    its inner neighbours, which maps into the monotonic set but not to its nearest point; when a pixel
    above the data holds down outer pixels below it, the gradient lowers it and the pass lowers them
    all with it, so every step length goes uphill (from the best state: +1.4 % at the full step,
    +0.005 % at a hundredth). So after ``STALL_RISES`` rises in a row the guard goes back to the
    best state (without halving the step) and from then on the morphologies are projected exactly
    onto the same set (:func:`hpcblend.kernels.operators.prox_threshold_monotonic_exact`, its
    multipliers kept in ``m3`` from one step to the next), under which a short enough step cannot go
    uphill. Fits that do not stall (none of the 164 HSC blends, the simulated tracts or the large
    simulated blends) are unchanged: the exact projection costs a few times the ring pass.

    The states FISTA evaluates are its extrapolated points ``x + momentum (x − x_prev)``, which
    the constraints (monotonicity above all) need not hold. For most sources the difference is
    below the noise; for a star of S/N ~10⁴ it is not: its best point could lie 20 % of the loss
    below the nearest state that holds them, and the guard, going back to it, met that 20 % again
    after every smaller step, until it stopped the fit at the step floor with 5× the loss it could
    reach. So the guard projects the best state onto the constraints when it goes back (no change
    for a state that holds them) and, if that changed it, evaluates it afresh as the new reference.
    """
    fista = settings.optimizer == OPT_FISTA
    e_rel = settings.e_rel
    nk, nb = sed.shape
    h, w = images.shape[1], images.shape[2]
    alive = np.ones(nk, dtype=np.bool_)
    model = np.zeros((nb, hp, wp), dtype=np.float32)
    residual = np.zeros((nb, hp, wp), dtype=np.float32)
    transfer_adjoint = np.conj(transfer)
    m1, m2, m3, s1, s2, s3, grad_sed, neighbour_sed, lip_sed, coupling, support, support_block_max = _work_space(
        morph, nb, fista)
    if settings.symmetric:  # mirrored pixels of a box centred on the peak stay inside it
        _symmetric_boxes(peaks, boxes, h, w)
    sed_prev = sed.copy()
    if settings.optimizer == OPT_FISTA:  # FISTA's previous iterate; adaprox's second moments start at zero
        for k in range(nk):
            m2[k] = morph[k]
    momentum, t_fista, n_iter, converged, status = 0.0, 1.0, 0, False, STATUS_OK
    # the best state evaluated so far, its loss and (FISTA) its gradient
    best_loss = np.inf
    sed_best, boxes_best, alive_best = sed.copy(), boxes.copy(), alive.copy()
    morph_best = np.zeros(morph.shape, dtype=np.float32)
    grad_best = np.zeros((nb, hp, wp), dtype=np.float32)
    prev_loss = np.inf  # loss of the state the current one was stepped from
    rose = fell = False  # at the previous evaluation the loss went up / fell by more than e_rel
    rises = 0  # evaluations in a row whose loss went up
    rose_one_before = rose_two_before = False  # the loss rose more than OSCILLATION_TOL one / two evaluations before
    evaluated = False  # the current state is the one evaluated last
    step_mult = 1.0  # FISTA: step_scale multiplier, halved by the divergence guard
    for it in range(settings.max_iter):
        loss = _evaluate(sed, morph, boxes, alive, images, weights, transfer, hp, wp, model, residual)
        loss_history[it] = loss
        n_iter = it + 1
        evaluated = True
        if not math.isfinite(loss):
            status = STATUS_NONFINITE
            break
        lowest = best_loss if fista else np.inf
        if it >= settings.min_iter and _converged(loss_history, it, prev_loss, lowest, rose, fell, e_rel * step_mult):
            converged = True
            break
        rose, fell = loss > prev_loss, prev_loss - loss > e_rel * abs(loss)
        rises = rises + 1 if rose else 0
        stalled = fista and rises >= STALL_RISES and m3.shape[1] == 0 and settings.monotonic and not settings.symmetric
        rose_now = loss - prev_loss > OSCILLATION_TOL * abs(loss)
        # rise, fall, rise: the step is too long (see Notes; at the step floor it cannot be halved again)
        oscillating = rose_now and rose_two_before and not rose_one_before and step_mult > MIN_STEP_MULT
        rose_two_before, rose_one_before = rose_one_before, rose_now
        improved = loss <= best_loss
        if improved:
            best_loss = loss
            snapshot(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best)
        if fista and (loss > (1.0 + DIVERGENCE_TOL) * best_loss or oscillating or stalled):
            # divergence guard (see Notes): back to the best state, no momentum, half the step
            if stalled:  # the ring pass takes every step uphill (Notes): project exactly from here on
                m3 = np.zeros(morph.shape, dtype=np.float32)
            stop, projected, step_mult = _return_to_best(sed, morph, boxes, alive, sed_best, morph_best, boxes_best,
                                                         alive_best, sed_prev, m1, m2, m3, peaks, noise_rms,
                                                         settings, box_cap, step_mult, not stalled)
            if stop:
                break  # not converged; the best state is returned
            t_fista, rises = 1.0, 0
            rose = rose_one_before = rose_two_before = False
            if projected:  # evaluated afresh, its loss the new reference
                best_loss = prev_loss = np.inf
                evaluated = False
                continue
            grad = grad_best
            prev_loss = best_loss
        else:
            if fista and loss > prev_loss:
                t_fista = 1.0  # adaptive restart (O'Donoghue & Candès 2015)
            grad = _gradient(residual, transfer_adjoint, hp, wp)
            if improved:
                grad_best = grad  # a new array each iteration: keep a reference, no copy
            prev_loss = loss
        evaluated = False
        bc1, bc2 = 1.0 - ADAPROX_BETA1 ** (it + 1), 1.0 - ADAPROX_BETA2 ** (it + 1)
        if fista:
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t_fista * t_fista))
            momentum, t_fista = (t_fista - 1.0) / t_new, t_new
            neighbour_sums(sed, boxes, alive, kernel_radius, neighbour_sed, settings.row_gamma)
            support_sum(morph, boxes, alive, support, support_block_max)
        _step_sources(settings, settings.step_scale * step_mult, momentum, bc1, bc2, grad, curvature, noise_rms,
                      kernel_radius, peaks, box_cap, sed, morph, boxes, alive, m1, m2, m3, s1, s2, s3, sed_prev,
                      grad_sed, neighbour_sed, support_block_max, lip_sed, coupling)
    if status == STATUS_OK and (not evaluated or loss_history[n_iter - 1] > (1.0 + e_rel) * best_loss):
        # the last step was not evaluated (max_iter reached) or the last state is worse than the best
        # (m2 is overwritten: FISTA's previous iterate, or adaprox's second moments, no longer needed)
        restore(sed, morph, boxes, alive, sed_best, morph_best, boxes_best, alive_best, sed_prev, m2)
    return n_iter, converged, status, alive
