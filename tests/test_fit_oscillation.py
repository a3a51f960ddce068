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
(:func:`fit_reference.fit_blend_reference` with ``oscillation_test=False``): after a rise of
7 %, a fall and a rise of 3 %, the loss falls 1–2 % per iteration, and a fall of 0.1 % at
iteration 41 ends the fit at χ²/px ~340.
"""

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, deblend_blend, initialize_sources
from hpcblend.kernels import fit
from hpcblend.simulate.synthetic import make_saturated_star_blend
from fit_reference import fit_blend_reference
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
        config.step_scale, oscillation_test=False)
    before = _chi2_per_pixel(obs, s, m, b, alive)
    rel = np.diff(hist) / hist[1:]
    assert converged and len(hist) < 60 and np.all(rel[-6:-1] < -5 * config.e_rel), (len(hist), rel[-6:])
    # rises of more than OSCILLATION_TOL at every other evaluation before that
    assert np.any((rel[:-2] > fit.OSCILLATION_TOL) & (rel[1:-1] < 0) & (rel[2:] > fit.OSCILLATION_TOL))
    r = deblend_blend(blend, config)
    assert r.converged and r.iterations > len(hist)
    assert r.chi2_per_pixel < before / 3, (r.chi2_per_pixel, before)
