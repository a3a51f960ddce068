"""Plain NumPy/Python references of :func:`hpcblend.kernels.fit.fit_blend`'s FISTA and adaprox loops.

Whole-array NumPy where the kernel loops over pixels, and the morphology constraints pixel by pixel in
plain Python; the tests (``test_fit_divergence``, ``test_fit_oscillation``, ``test_fit_stall``) compare
the kernel with them iteration by iteration, and run them with a switch off to show how the loop as it
was failed.
"""

import math

import numpy as np
import scipy.fft

from hpcblend.kernels import fit, fit_steps

BLOCK = fit_steps.SUPPORT_BLOCK


def _prox_morph(img, thr, cy, cx, y0, y1, x0, x1):
    """Threshold (peak kept), then ring by ring from the peak min(value, cap), at least 0; in place."""
    box = img[y0:y1, x0:x1]
    keep = img[cy, cx]
    box[box < thr] = 0.0
    img[cy, cx] = keep
    for ring in range(1, max(cy - y0, y1 - 1 - cy, cx - x0, x1 - 1 - cx) + 1):
        for y in range(max(cy - ring, y0), min(cy + ring, y1 - 1) + 1):
            for x in range(max(cx - ring, x0), min(cx + ring, x1 - 1) + 1):
                if max(abs(y - cy), abs(x - cx)) == ring:
                    img[y, x] = max(min(float(img[y, x]), monotonic_cap(img, y, x, cy, cx, y0, y1, x0, x1)), 0.0)
    img[cy, cx] = max(float(img[cy, cx]), 0.0)


def _inner_weights(y, x, cy, cx):
    """The inner neighbours of (y, x) that :func:`monotonic_cap` averages, with their normalised cosine weights."""
    dy, dx = cy - y, cx - x
    r = math.hypot(dy, dx)
    sy, sx = int(np.sign(dy)), int(np.sign(dx))
    found = []
    for i, (oy, ox) in enumerate(((sy, 0), (0, sx), (sy, sx))):
        if (oy, ox) == (0, 0) or (i == 2 and (sy == 0 or sx == 0)):
            continue
        cos = (oy * dy + ox * dx) / (math.hypot(oy, ox) * r)
        if cos > 1 / math.sqrt(2) + 1e-9:
            found.append((y + oy, x + ox, cos))
    total = sum(c for _, _, c in found)
    return [(ny, nx, c / total) for ny, nx, c in found]


def monotonic_cap(out, y, x, cy, cx, y0, y1, x0, x1):
    """Weighted mean of the neighbours of (y, x) nearer the peak (cosine weights, Melchior et al. 2018,
    Sect. 2.3), zero outside the box."""
    return sum(wt * (float(out[ny, nx]) if (y0 <= ny < y1 and x0 <= nx < x1) else 0.0)
               for ny, nx, wt in _inner_weights(y, x, cy, cx))


def _ring_pixels(cy, cx, ring, y0, y1, x0, x1):
    """The box pixels of Chebyshev ring ``ring`` about (cy, cx), row by row, left to right."""
    return [(y, x) for y in range(max(cy - ring, y0), min(cy + ring, y1 - 1) + 1)
            for x in range(max(cx - ring, x0), min(cx + ring, x1 - 1) + 1) if max(abs(y - cy), abs(x - cx)) == ring]


def _prox_morph_exact(img, dual, thr, cy, cx, y0, y1, x0, x1, sweeps=fit_steps.EXACT_SWEEPS):
    """Threshold (peak kept, negatives zeroed), then Hildreth's method for the nearest weighted-monotonic image,
    warm-started from the multipliers ``dual`` (H, W) and updating them, ``sweeps`` passes out from the peak and
    back; negatives clipped at the end. In place, in the order and float32 roundings of
    :func:`hpcblend.kernels.operators.prox_threshold_monotonic_exact`."""
    box = img[y0:y1, x0:x1]
    keep = img[cy, cx]
    box[(box < thr) | (box < 0)] = 0.0
    img[cy, cx] = keep
    for y in range(y0, y1):  # img = y − Aᵀλ
        for x in range(x0, x1):
            lam = float(dual[y, x])
            if lam > 0 and (y, x) != (cy, cx):
                img[y, x] = float(img[y, x]) - lam
                for ny, nx, wt in _inner_weights(y, x, cy, cx):
                    img[ny, nx] = float(img[ny, nx]) + wt * lam
    rmax = max(cy - y0, y1 - 1 - cy, cx - x0, x1 - 1 - cx)
    rings = list(range(1, rmax + 1)) + list(range(rmax, 0, -1))
    for _ in range(sweeps):
        for y, x in (p for ring in rings for p in _ring_pixels(cy, cx, ring, y0, y1, x0, x1)):
            if not (img[y, x] > 0 or dual[y, x] > 0):
                continue
            near = [(ny, nx, wt) for ny, nx, wt in _inner_weights(y, x, cy, cx) if y0 <= ny < y1 and x0 <= nx < x1]
            ref = sum(wt * float(img[ny, nx]) for ny, nx, wt in near)
            lam = float(dual[y, x])
            new = max(lam + (float(img[y, x]) - ref) / (1.0 + sum(wt * wt for _, _, wt in near)), 0.0)
            if new != lam:
                dual[y, x] = new
                img[y, x] = float(img[y, x]) - (new - lam)
                for ny, nx, wt in near:
                    img[ny, nx] = float(img[ny, nx]) + wt * (new - lam)
    box[box < 0] = 0.0


def _settled(losses, tolerance):
    """True unless the loss fell by more than ``SETTLE_WINDOW × SETTLE_RATE × tolerance`` (relative to the
    last loss) over the last ``SETTLE_WINDOW`` evaluations."""
    window = fit.SETTLE_WINDOW
    if len(losses) <= window:
        return True
    return losses[-1 - window] - losses[-1] < window * fit.SETTLE_RATE * tolerance * abs(losses[-1])


def _convolve(img, transfer, hp, wp, adjoint=False):
    h, w = img.shape[1:]
    spec = scipy.fft.rfft2(img, s=(hp, wp), workers=1)
    spec *= np.conj(transfer) if adjoint else transfer
    return scipy.fft.irfft2(spec, s=(hp, wp), workers=1)[:, :h, :w]


def _residual_and_loss(sed, morph, boxes, alive, images, weights, transfer, hp, wp):
    """The weighted residual W ⊙ (D * M − Y) (B, H, W) float32 and the loss ½ Σ W (D * M − Y)² of the live sources."""
    nb, h, w = images.shape
    model = np.zeros((nb, h, w), np.float32)
    for k in np.flatnonzero(alive):
        y0, y1, x0, x1 = boxes[k]
        model[:, y0:y1, x0:x1] += (sed[k][:, None, None] * morph[k, y0:y1, x0:x1]).astype(np.float32)
    d = _convolve(model, transfer, hp, wp) - images
    res = (weights * d).astype(np.float32)
    return res, float(0.5 * np.sum(res.astype(np.float64) * d))


def fit_blend_reference(images, weights, curvature, transfer, hp, wp, peaks, sed, morph, boxes, noise_rms,
                        max_iter, min_iter, e_rel, bg_thresh, margin, kernel_radius, step_scale, caps=None,
                        oscillation_test=True, stall_switch=True, lull_test=True, best_test=True, row_gamma=0.0):
    """FISTA of :func:`hpcblend.kernels.fit.fit_blend` (monotonic, not symmetric), whole-array NumPy.

    ``oscillation_test=False``: the loop as it was before the oscillation test (no return to the best
    state on rise-fall-rise, convergence tolerance not scaled with the step). ``stall_switch=False``: the
    loop as it was before the stall test (after ``STALL_RISES`` rises in a row, back to the best state and
    exact monotonicity projections from then on). ``lull_test=False``: convergence on one small change
    even amid a steep descent (:func:`_settled` not required). ``best_test=False``: convergence even at a
    loss more than the tolerance above the lowest one evaluated. ``row_gamma > 0``: morphology steps by the
    longer of the Gershgorin row and a whole step of the weighted row (``FitSettings.row_gamma``).
    Returns (loss history, sed, morph, boxes, alive, converged, number of returns to the best state).
    """
    sed, morph, boxes = sed.copy(), morph.copy(), boxes.copy()
    nk, nb = sed.shape
    h, w = images.shape[1:]
    alive = np.ones(nk, bool)
    sed_prev, morph_prev = sed.copy(), morph.copy()  # FISTA's previous (not extrapolated) iterate
    t_f, momentum, step_mult = 1.0, 0.0, 1.0
    best_loss, best, grad_best = np.inf, None, None
    prev_loss, rose, fell, evaluated = np.inf, False, False, False
    rose_one_before = rose_two_before = False  # rises above OSCILLATION_TOL one / two evaluations before
    losses, converged, n_back = [], False, 0
    rises, dual = 0, None  # rises in a row; the exact projection's multipliers (K, H, W) once the fit stalled
    for it in range(max_iter):
        res, loss = _residual_and_loss(sed, morph, boxes, alive, images, weights, transfer, hp, wp)
        losses.append(loss)
        evaluated = True
        if not math.isfinite(loss):
            break
        # a small change (e_rel scaled with the step), not right after a rise, and not a rise right after
        # a fall larger than e_rel
        tolerance = e_rel * (step_mult if oscillation_test else 1.0)
        if (it >= min_iter and not rose and abs(prev_loss - loss) < tolerance * abs(loss)
                and not (fell and loss > prev_loss) and (not lull_test or _settled(losses, tolerance))
                and (not best_test or loss - best_loss <= tolerance * abs(loss))):
            converged = True
            break
        rose, fell = loss > prev_loss, prev_loss - loss > e_rel * abs(loss)
        rises = rises + 1 if rose else 0
        stalled = stall_switch and rises >= fit.STALL_RISES and dual is None
        rose_now = loss - prev_loss > fit.OSCILLATION_TOL * abs(loss)
        # rise, fall, rise: an oscillation (above the step floor)
        oscillating = (oscillation_test and rose_now and rose_two_before and not rose_one_before
                       and step_mult > fit.MIN_STEP_MULT)
        rose_two_before, rose_one_before = rose_one_before, rose_now
        improved = loss <= best_loss
        if improved:
            best_loss, best = loss, (sed.copy(), morph.copy(), boxes.copy(), alive.copy())
        # back to the best state, half the step (not when stalled: exact projections from then on)
        if loss > (1 + fit.DIVERGENCE_TOL) * best_loss or oscillating or stalled:
            n_back += 1
            sed, morph, boxes, alive = (a.copy() for a in best)
            sed_prev, morph_prev = sed.copy(), morph.copy()
            if stalled:
                dual = np.zeros(morph.shape, np.float32)
            elif step_mult <= fit.MIN_STEP_MULT:
                break
            else:
                step_mult = max(0.5 * step_mult, fit.MIN_STEP_MULT)
            t_f, rose, rose_one_before, rose_two_before, rises = 1.0, False, False, False, 0
            # an extrapolated best state outside the constraints is projected and evaluated afresh
            before = (sed.copy(), morph.copy(), boxes.copy(), alive.copy())
            for k in np.flatnonzero(alive):
                _prox_and_resize(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, margin,
                                 () if dual is None else (dual,), caps, dual)
            if (not np.array_equal(boxes, before[2]) or not np.array_equal(alive, before[3])
                    or np.any(np.abs(morph - before[1]) > 1e-6 * np.abs(before[1]).max(axis=(1, 2))[:, None, None])
                    or np.any(np.abs(sed - before[0]) > 1e-6 * np.abs(before[0]).max(axis=1)[:, None])):
                sed_prev, morph_prev = sed.copy(), morph.copy()
                best = (sed.copy(), morph.copy(), boxes.copy(), alive.copy())  # the best state kept, not its loss
                best_loss = prev_loss = np.inf
                evaluated = False
                continue
            grad, prev_loss = grad_best, best_loss
        else:
            if loss > prev_loss:
                t_f = 1.0
            grad = _convolve(res, transfer, hp, wp, adjoint=True)
            if improved:
                grad_best = grad
            prev_loss = loss
        evaluated = False
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t_f * t_f))
        momentum, t_f = (t_f - 1) / t_new, t_new
        step = step_scale * step_mult
        # A_kb: SED sums of the live sources whose boxes, grown by the kernel radius, meet k's; A'_kb: the same
        # weighted by (ā_k/ā_m)^γ (ā: the summed SED; 1 for k itself or a source with no flux)
        near = np.zeros((nk, nb))
        near_weighted = np.zeros((nk, nb))
        r = kernel_radius
        total = sed.sum(axis=1)
        for k in np.flatnonzero(alive):
            for m in np.flatnonzero(alive):
                if (boxes[m, 0] - r < boxes[k, 1] + r and boxes[k, 0] - r < boxes[m, 1] + r
                        and boxes[m, 2] - r < boxes[k, 3] + r and boxes[k, 2] - r < boxes[m, 3] + r):
                    near[k] += sed[m]
                    weighted = m != k and total[k] > 0 and total[m] > 0
                    near_weighted[k] += sed[m] * ((total[k] / total[m]) ** row_gamma if weighted else 1.0)
        support = np.zeros((h, w), np.float32)
        for k in np.flatnonzero(alive):
            y0, y1, x0, x1 = boxes[k]
            support[y0:y1, x0:x1] += morph[k, y0:y1, x0:x1]
        for k in np.flatnonzero(alive):
            y0, y1, x0, x1 = boxes[k]
            # S_max: the maximum of Σ_l S_l over the 8x8-pixel blocks that meet k's box grown by r
            by0, by1 = max(y0 - r, 0) // BLOCK, (min(y1 + r, h) - 1) // BLOCK + 1
            bx0, bx1 = max(x0 - r, 0) // BLOCK, (min(x1 + r, w) - 1) // BLOCK + 1
            smax = max(float(support[by0 * BLOCK:by1 * BLOCK, bx0 * BLOCK:bx1 * BLOCK].max()), 0.0)
            v = morph[k, y0:y1, x0:x1].astype(np.float64)
            g = grad[:, y0:y1, x0:x1].astype(np.float64)
            c = curvature[:, y0:y1, x0:x1].astype(np.float64)
            grad_sed, lip_sed = (g * v).sum(axis=(1, 2)), (c * v).sum(axis=(1, 2))
            pre = np.tensordot(sed[k] * near[k], c, axes=1)
            length = step / np.where(pre > 0, pre, 1)
            if row_gamma > 0:
                pre_weighted = np.tensordot(sed[k] * near_weighted[k], c, axes=1)
                length = np.where(pre_weighted > 0, np.maximum(length, 1 / np.where(pre_weighted > 0, pre_weighted, 1)),
                                  length)
            delta = np.where(pre > 0, length * np.tensordot(sed[k], g, axes=1), 0)
            morph[k, y0:y1, x0:x1] = (v - delta).astype(np.float32)
            lip = smax * lip_sed
            sed[k] = np.where(lip > 0, sed[k] - step * grad_sed / np.where(lip > 0, lip, 1), sed[k])
            # constraints: SED >= 0; morphology thresholded at bg_thresh x the source's noise, monotonic,
            # peak 1 (the SED takes the norm), box = support + margin; the source dies when its peak is 0
            state = (morph_prev,) if dual is None else (morph_prev, dual)
            if not _prox_and_resize(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, margin, state, caps,
                                    dual):
                continue
            mk = morph[k]
            ny0, ny1, nx0, nx1 = boxes[k]
            # Nesterov extrapolation
            new = sed[k].copy()
            sed[k] = np.maximum(new + momentum * (new - sed_prev[k]), 0.0)
            sed_prev[k] = new
            newm = mk[ny0:ny1, nx0:nx1].astype(np.float64)
            mk[ny0:ny1, nx0:nx1] = np.maximum(newm + momentum * (newm - morph_prev[k, ny0:ny1, nx0:nx1]),
                                              0).astype(np.float32)
            morph_prev[k, ny0:ny1, nx0:nx1] = newm.astype(np.float32)
    if math.isfinite(losses[-1]) and (not evaluated or losses[-1] > (1 + e_rel) * best_loss):
        sed, morph, boxes, alive = best
    return np.array(losses), sed, morph, boxes, alive, converged, n_back


def _prox_and_resize(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, margin, state, caps=None, dual=None):
    """The constraints of source k (monotonic, not symmetric) as :func:`fit_steps.prox_source` applies them,
    box limits ``caps`` (K,) included; ``state`` arrays (K, H, W) are zeroed outside the new box. With
    ``dual`` (K, H, W), the multipliers of a stalled fit, the morphology is first projected exactly
    (:func:`_prox_morph_exact`) and the multipliers take the morphology's normalisation. Returns False when
    the source died."""
    nk, h, w = morph.shape
    y0, y1, x0, x1 = boxes[k]
    sed[k] = np.maximum(sed[k], 0.0)
    cy, cx = peaks[k]
    s = float(np.sum((sed[k] / noise_rms) ** 2))
    thr = (bg_thresh / math.sqrt(s) if s > 0 else np.inf) if bg_thresh > 0 else 0.0
    mk = morph[k]
    if dual is not None:
        _prox_morph_exact(mk, dual[k], thr, cy, cx, y0, y1, x0, x1)
    _prox_morph(mk, thr, cy, cx, y0, y1, x0, x1)
    norm = float(mk[cy, cx])
    if not norm > 0:
        alive[k] = False
        mk[y0:y1, x0:x1] = 0
        sed[k] = 0
        return False
    box = mk[y0:y1, x0:x1]
    pos = box > 0
    box[pos] = (box[pos].astype(np.float64) * (1.0 / norm)).astype(np.float32)
    sed[k] *= norm
    if dual is not None:
        dual[k, y0:y1, x0:x1] = (dual[k, y0:y1, x0:x1].astype(np.float64) / norm).astype(np.float32)
    ys, xs = np.nonzero(pos)
    ny0, ny1 = max(min(ys.min() + y0, cy) - margin, 0), min(max(ys.max() + y0 + 1, cy + 1) + margin, h)
    nx0, nx1 = max(min(xs.min() + x0, cx) - margin, 0), min(max(xs.max() + x0 + 1, cx + 1) + margin, w)
    if caps is not None and caps[k] > 0:
        ny0, ny1 = max(ny0, cy - caps[k]), min(ny1, cy + caps[k] + 1)
        nx0, nx1 = max(nx0, cx - caps[k]), min(nx1, cx + caps[k] + 1)
    outside = np.ones((h, w), bool)
    outside[ny0:ny1, nx0:nx1] = False
    mk[outside] = 0.0
    for arr in state:
        arr[k][outside] = 0.0
    boxes[k] = (ny0, ny1, nx0, nx1)
    return True


def adaprox_reference(images, weights, transfer, hp, wp, peaks, sed, morph, boxes, noise_rms, max_iter, min_iter,
                      e_rel, bg_thresh, margin, sed_step_factor, morph_step):
    """Adaprox (proximal AMSGrad) of :func:`hpcblend.kernels.fit.fit_blend` (monotonic, not symmetric), NumPy.

    The moments start at zero (Kingma & Ba 2015; Reddi et al. 2018). Returns (loss history, sed, morph, boxes,
    alive, converged).
    """
    sed, morph, boxes = sed.copy(), morph.copy(), boxes.copy()
    nk, nb = sed.shape
    h, w = images.shape[1:]
    alive = np.ones(nk, bool)
    m1, m2, m3 = np.zeros_like(morph), np.zeros_like(morph), np.zeros_like(morph)
    s1, s2, s3 = np.zeros((nk, nb)), np.zeros((nk, nb)), np.zeros((nk, nb))
    beta1, beta2, eps = fit_steps.ADAPROX_BETA1, fit_steps.ADAPROX_BETA2, fit_steps.ADAPROX_EPS
    best_loss, best = np.inf, None
    prev_loss, rose, evaluated = np.inf, False, False
    losses, converged = [], False
    for it in range(max_iter):
        res, loss = _residual_and_loss(sed, morph, boxes, alive, images, weights, transfer, hp, wp)
        losses.append(loss)
        evaluated = True
        if not math.isfinite(loss):
            break
        if it >= min_iter and not rose and abs(prev_loss - loss) < e_rel * abs(loss) and _settled(losses, e_rel):
            converged = True
            break
        rose = loss > prev_loss
        if loss <= best_loss:
            best_loss, best = loss, (sed.copy(), morph.copy(), boxes.copy(), alive.copy())
        grad = _convolve(res, transfer, hp, wp, adjoint=True).astype(np.float32)
        prev_loss = loss
        evaluated = False
        bc1, bc2 = 1.0 - beta1 ** (it + 1), 1.0 - beta2 ** (it + 1)
        for k in np.flatnonzero(alive):
            y0, y1, x0, x1 = boxes[k]
            v = morph[k, y0:y1, x0:x1]
            g = grad[:, y0:y1, x0:x1].astype(np.float64)
            grad_sed = (g * v).sum(axis=(1, 2))
            gm = np.tensordot(sed[k], g, axes=1)  # ∂L/∂S_k on the box
            a1 = beta1 * m1[k, y0:y1, x0:x1] + (1 - beta1) * gm
            a2 = beta2 * m2[k, y0:y1, x0:x1] + (1 - beta2) * gm * gm
            a3 = np.maximum(m3[k, y0:y1, x0:x1], a2)
            m1[k, y0:y1, x0:x1], m2[k, y0:y1, x0:x1], m3[k, y0:y1, x0:x1] = a1, a2, a3
            upd = np.where(a3 > 0, morph_step * (a1 / bc1) / (np.sqrt(np.where(a3 > 0, a3, 1) / bc2) + eps), 0.0)
            morph[k, y0:y1, x0:x1] = (v - upd).astype(np.float32)
            b1 = beta1 * s1[k] + (1 - beta1) * grad_sed
            b2 = beta2 * s2[k] + (1 - beta2) * grad_sed ** 2
            b3 = np.maximum(s3[k], b2)
            s1[k], s2[k], s3[k] = b1, b2, b3
            sed_step = np.maximum(sed_step_factor * sed[k].mean(), noise_rms)
            sed[k] = np.where(b3 > 0, sed[k] - sed_step * (b1 / bc1) / (np.sqrt(b3 / bc2) + eps), sed[k])
            _prox_and_resize(k, sed, morph, boxes, peaks, alive, noise_rms, bg_thresh, margin, (m1, m2, m3))
    if math.isfinite(losses[-1]) and (not evaluated or losses[-1] > (1 + e_rel) * best_loss):
        sed, morph, boxes, alive = best
    return np.array(losses), sed, morph, boxes, alive, converged
