"""A fit whose loss rises and falls by turns must not count a lull as convergence (issue 14, item 2).

Around a saturated star of S/N ~10⁴–10⁵ with its core masked, FISTA's step can be too long without
the loss ever rising ``DIVERGENCE_TOL`` above its best: it rose 2–7 % and fell again by turns, and
the convergence test (one change below ``e_rel``) fired on a small fall between two large ones. A
51-peak simulated parent so ended "converged" at iteration 39 with χ²/px 45 (it reaches 1.1 with a
shorter step). :func:`hpcblend.kernels.fit.fit_blend` now treats rise, fall, rise (each rise above
``OSCILLATION_TOL``) as a divergence, going back to the best state with half the step, and scales
the convergence tolerance with the step multiplier.

The case below (a star of 2.4·10⁶ counts per band clipped at 5 % of its peak and flagged SAT, three
faint galaxies, 64 × 64 px) fails the same way with the loop as it was
(:func:`fit_reference.fit_blend_reference` with ``oscillation_test=False`` and ``lull_test=False``):
after a rise of 7 %, a fall and a rise of 3 %, the loss falls 1–2 % per iteration, and a fall of
0.1 % at iteration 41 ends the fit at χ²/px ~340. (The lull test, ``kernels.fit._converged``, would
also have refused that fall as convergence.)
"""

from dataclasses import replace

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, deblend_blend, initialize_sources
from hpcblend.kernels import fit
from hpcblend.simulate.synthetic import make_saturated_star_blend
from fit_reference import fit_blend_reference
from test_fit_stall import galaxy_with_knot_blend
from test_saturated_stars import SAT


def _chi2_per_pixel(obs, sed, morph, boxes, alive):
    hp, wp = obs.fft_shape
    model = np.zeros(obs.images.shape, dtype=np.float32)
    fit.render_model(sed, morph, boxes, np.asarray(alive, dtype=np.bool_), model)
    residual = np.zeros(obs.images.shape, dtype=np.float32)
    loss = fit.blend_loss(model, obs.images, obs.weights, obs.transfer, hp, wp, residual)
    return 2.0 * loss / (obs.weights > 0).sum()


def test_saturated_star_fit_does_not_stop_on_a_lull_between_oscillations():
    blend, _ = make_saturated_star_blend(41, (37.62, 26.63), 2.41e6, saturation=0.0506)
    config = DeblendConfig()
    assert (blend.mask[:, blend.peaks[0, 0], blend.peaks[0, 1]] & SAT).all()  # the star's core is masked
    obs = build_observation(blend, config)
    peaks = np.ascontiguousarray(blend.peaks, dtype=np.int64)
    sed, morph, boxes, _ = initialize_sources(obs, peaks, config)
    # the loop without the oscillation test: "converged" early, far above what the fit reaches
    hist, s, m, b, alive, converged, _ = fit_blend_reference(
        obs.images, obs.weights, obs.curvature, obs.transfer, *obs.fft_shape, peaks, sed, morph, boxes, obs.noise_rms,
        config.max_iter, config.min_iter, config.e_rel, config.bg_thresh, config.box_margin, obs.kernel_radius,
        config.step_scale, oscillation_test=False, lull_test=False)
    before = _chi2_per_pixel(obs, s, m, b, alive)
    rel = np.diff(hist) / hist[1:]
    assert converged and len(hist) < 60 and np.all(rel[-6:-1] < -5 * config.e_rel), (len(hist), rel[-6:])
    # rises of more than OSCILLATION_TOL at every other evaluation before that
    assert np.any((rel[:-2] > fit.OSCILLATION_TOL) & (rel[1:-1] < 0) & (rel[2:] > fit.OSCILLATION_TOL))
    r = deblend_blend(blend, config)
    assert r.iterations > len(hist)
    assert r.chi2_per_pixel < before / 3, (r.chi2_per_pixel, before)
    # converged, or still falling at max_iter: since the fit may no longer converge above its best loss
    # (test below) this star runs to max_iter, its loss falling 0.6 % per iteration (it had stopped at
    # iteration 191, 6.5 % above its best, χ²/px 76; now 39)
    losses = r.loss_history[:r.iterations]
    assert r.converged or losses[-1] < (1 - 10 * config.e_rel) * losses[-11]


def _knot_fit_inputs(blend, config):
    """(kernel arguments up to the peaks, reference-loop arguments, box caps, initial SEDs, morphologies, boxes)."""
    obs = build_observation(blend, config)
    peaks = np.ascontiguousarray(blend.peaks, dtype=np.int64)
    sed, morph, boxes, caps = initialize_sources(obs, peaks, config)
    args = (obs.images, obs.weights, obs.curvature, obs.transfer, *obs.fft_shape, peaks)
    reference_args = (*args, sed, morph, boxes, obs.noise_rms, config.max_iter, config.min_iter, config.e_rel,
                      config.bg_thresh, config.box_margin, obs.kernel_radius, config.step_scale)
    return obs, args, reference_args, caps, sed, morph, boxes


def _fit_kernel(obs, args, caps, sed, morph, boxes, config):
    """:func:`hpcblend.kernels.fit.fit_blend` (FISTA, monotonic) from copies: (n_iter, converged, status, history)."""
    settings = fit.FitSettings(optimizer=fit.OPT_FISTA, max_iter=config.max_iter, min_iter=config.min_iter,
                               e_rel=config.e_rel, bg_thresh=config.bg_thresh, monotonic=True, symmetric=False,
                               sed_step_factor=0.0, morph_step=0.0, margin=config.box_margin,
                               step_scale=config.step_scale)
    history = np.zeros(config.max_iter)
    n_iter, converged, status, _ = fit.fit_blend(*args, caps, sed.copy(), morph.copy(), boxes.copy(), obs.noise_rms,
                                                 obs.kernel_radius, settings, history)
    return n_iter, converged, status, history


def test_one_small_change_amid_a_steep_descent_is_not_convergence():
    """A galaxy with an off-peak knot (:func:`test_fit_stall.galaxy_with_knot_blend`, seed 1): FISTA's
    loss fell by turns 2.5–3.7 % and 0.1–0.2 % per step, and the loop without the lull test
    "converged" at iteration 29 on a fall of 0.05 % right after one of 1.8 %, at χ²/px 1.77. The
    loss must also have settled over the last ``SETTLE_WINDOW`` evaluations now: the fit goes on to
    iteration 85 and χ²/px 1.49."""
    blend = galaxy_with_knot_blend(1e4, 0.25, (3, -2), seed=1)
    config = replace(DeblendConfig(), bg_thresh=1.0)  # the case as found: scarlet's 1σ threshold in the fit
    obs, args, reference_args, caps, sed, morph, boxes = _knot_fit_inputs(blend, config)
    old, *_, old_converged, _ = fit_blend_reference(*reference_args, caps=caps, lull_test=False)
    window = fit.SETTLE_WINDOW
    assert old_converged and len(old) < 40
    assert abs(old[-1] - old[-2]) < config.e_rel * old[-1]  # one small change ...
    assert old[-1 - window] - old[-1] > window * fit.SETTLE_RATE * config.e_rel * old[-1]  # ... amid a descent
    n_iter, converged, status, history = _fit_kernel(obs, args, caps, sed, morph, boxes, config)
    assert status == fit.STATUS_OK and converged and n_iter > 2 * len(old)
    assert history[n_iter - 1] < 0.9 * old[-1], (history[n_iter - 1], old[-1])
    reference = fit_blend_reference(*reference_args, caps=caps)[0]  # the kernel's loop, step by step
    np.testing.assert_allclose(history[:n_iter], reference, rtol=1e-4)


def test_a_fit_does_not_converge_above_its_best_loss():
    """A galaxy with a knot of half its flux (:func:`test_fit_stall.galaxy_with_knot_blend`, 10⁴ counts, knot at
    (2, 4) px, seed 0): FISTA's loss rose after a run of falls, the adaptive restart took the momentum, and the
    loop without the test "converged" at iteration 27 on the small first steps after the restarts, 1.1 % above the
    lowest loss it had evaluated. Convergence now also needs the loss within the tolerance of that lowest one
    (``kernels.fit._converged``): the fit goes on, with momentum again, to a loss 11 % below that lowest one.
    (Found on simulated bright COSMOS galaxies: χ²/px 2.20 → 1.25 and 1.61 → 1.15 on two of them.)"""
    blend = galaxy_with_knot_blend(1e4, 0.5, (2, 4), seed=0)
    config = DeblendConfig()
    obs, args, reference_args, caps, sed, morph, boxes = _knot_fit_inputs(blend, config)
    old, *_, old_converged, _ = fit_blend_reference(*reference_args, caps=caps, best_test=False)
    old = np.asarray(old)
    assert old_converged and len(old) < 40
    assert old[-1] > (1 + 5 * config.e_rel) * old.min(), (old[-1], old.min())  # "converged" above its best
    n_iter, converged, status, history = _fit_kernel(obs, args, caps, sed, morph, boxes, config)
    assert status == fit.STATUS_OK and converged and n_iter > len(old)
    assert history[n_iter - 1] <= (1 + config.e_rel) * history[:n_iter].min()  # ends at (nearly) its best
    assert history[n_iter - 1] < 0.95 * old.min(), (history[n_iter - 1], old.min())
    reference = fit_blend_reference(*reference_args, caps=caps)[0]  # the kernel's loop, step by step
    np.testing.assert_allclose(history[:n_iter], reference, rtol=1e-4)
