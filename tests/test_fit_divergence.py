"""The fit must not diverge on bright galaxies (issue 14, item 2).

A bright, extended galaxy under near-uniform weights (sky-limited noise, as in the simulated tracts)
makes the Gershgorin bound of its morphology block tight for smooth modes, so FISTA's step
(``step_scale`` = 2 / bound) overshoots its flux, and the SED step overshoots it again in the same
iteration: the flux oscillated with growing amplitude, and the momentum restart kept the state whose
loss had gone up, so nothing stopped it. Fits ended with the galaxy's model at +90 % of its flux
after 300 iterations, or at zero (the source died) with chi2/px in the hundreds.
``kernels.fit.fit_blend`` now has a divergence guard (a loss more than ``DIVERGENCE_TOL`` above the
best one so far sends the fit back to the best state with half the step) and returns the best state
it evaluated when its last one is worse.

These cases (a bright galaxy with two faint neighbours ~6 px = 1" away, sky noise only, seeded) all
failed before the guard: not converged at 300 iterations or converged with the galaxy dead.
The second half checks ``fit_blend`` against a plain NumPy/Python reference of its FISTA loop.
"""

import math

import numpy as np
import pytest

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, deblend_blend, initialize_sources
from hpcblend.io.blends import BlendData, read_blend
from hpcblend.kernels import fit, fit_steps
from hpcblend.simulate.synthetic import _grow, make_synthetic_blend
from fit_reference import adaprox_reference, fit_blend_reference

NEIGHBOURS = ((28.2, 27.9), (28.0, 34.1), (33.1, 24.3))  # bright galaxy first; neighbours 6.1 and 6.2 px away


def bright_blend(seed, flux, sizes, profile, centers=NEIGHBOURS, shape=(56, 56), neighbour_ratio=60.0,
                 bands=("g", "r", "i", "z", "y"), psf_sigma=(1.7, 1.6, 1.5, 1.5, 1.6)):
    """A bright galaxy (total flux ``flux``) and faint neighbours (``flux / neighbour_ratio`` each), noise σ = 1.

    Built from :func:`make_synthetic_blend`'s per-source truth images (its fluxes are drawn at random),
    rescaled to these fluxes, plus new seeded noise; footprint as in ``make_synthetic_blend``.
    """
    blend, truth = make_synthetic_blend(seed, centers=np.array(centers), shape=shape, profile=profile, sizes=sizes,
                                        bands=bands, psf_sigma=psf_sigma, flux_range=(1e3, 1e3))
    fluxes = np.array([flux] + [flux / neighbour_ratio] * (len(centers) - 1))
    models = truth["models"] / truth["total_flux"][:, None, None, None] * fluxes[:, None, None, None]
    noiseless = models.sum(axis=0)
    rng = np.random.default_rng(1000 + seed)
    images = (noiseless + rng.standard_normal(noiseless.shape)).astype(np.float32)
    detection = noiseless.sum(axis=0) > 0.5 * math.sqrt(len(bands))
    detection[blend.peaks[:, 0], blend.peaks[:, 1]] = True
    out = BlendData(id=1, source=f"bright:{profile}:{flux:g}:{seed}", bands=blend.bands, images=images,
                    variance=blend.variance, mask=blend.mask, footprint=_grow(detection, 2), psfs=blend.psfs,
                    peaks=blend.peaks)
    return out, models.sum(axis=(2, 3))


def returned_loss(blend, result, config):
    """The loss of the state the fit returned (as the fit computes it)."""
    obs = build_observation(blend, config)
    hp, wp = obs.fft_shape
    model = np.zeros(obs.images.shape, dtype=np.float32)
    fit.render_model(result.sed, result.morphs, result.boxes, np.ones(len(result.sed), dtype=np.bool_), model)
    residual = np.zeros(obs.images.shape, dtype=np.float32)
    return fit.blend_loss(model, obs.images, obs.weights, obs.transfer, hp, wp, residual)


# (profile, total flux of the bright galaxy, half-light radius range, seed): its i-band matched-filter
# S/N, and what the fit did before the divergence guard (300 iterations = max_iter)
CASES = [
    ("exponential", 1e4, (3.0, 5.0), 1),  # S/N 146: "converged" after 108 iterations, galaxy dead, chi2/px 7.6
    ("exponential", 2e4, (3.0, 5.0), 1),  # S/N 293: "converged" after 99 iterations, galaxy dead, chi2/px 23
    ("exponential", 1e4, (2.0, 3.0), 1),  # S/N 185: not converged, galaxy +87..91 % in every band, chi2/px 54
    ("gaussian", 2e4, (2.0, 3.0), 0),  # S/N 712: not converged, galaxy +141..148 %, chi2/px 761
    ("exponential", 6e4, (2.0, 3.0), 1),  # S/N 1108 (core + halo): not converged, galaxy -61 %, chi2/px 919
]


@pytest.mark.parametrize("profile,flux,sizes,seed", CASES)
def test_bright_galaxy_with_faint_neighbours_converges(profile, flux, sizes, seed):
    blend, true_flux = bright_blend(seed, flux, sizes, profile)
    config = DeblendConfig()
    r = deblend_blend(blend, config)
    assert r.fitted and r.converged and r.iterations < config.max_iter, (r.iterations, r.converged)
    assert r.chi2_per_pixel < 1.1, r.chi2_per_pixel
    # the bright galaxy's model flux, every band
    rel = r.children["flux_model"][0] / true_flux[0] - 1
    assert np.all(np.abs(rel) < 0.03), rel
    # the loss never ends far above the lowest loss the fit saw
    history = r.loss_history
    assert returned_loss(blend, r, config) <= (1 + 2 * config.e_rel) * history.min(), (history[-5:], history.min())


def test_real_blend_not_converged_right_after_a_rise(shared_data):
    """HSC blend 43161432027561989: the loss rose by 0.8 % at iteration 17 (momentum restart), and
    the next step from that state landed within e_rel of it, which was taken as convergence at
    chi2/px 1.69 after 20 iterations. A small change straight after a rise is not convergence
    now: the fit goes on to chi2/px 1.35 (65 iterations)."""
    blend = read_blend(shared_data / "hsc_blends" / "set3" / "43161432027561989.npz")
    config = DeblendConfig()
    r = deblend_blend(blend, config)
    assert r.converged
    assert r.chi2_per_pixel < 1.45, r.chi2_per_pixel


def _small_bright_blend(seed, flux, sizes):
    """Two sources, three bands, 36x36 px: fast enough for the Python reference."""
    blend, _ = bright_blend(seed, flux, sizes, "exponential", centers=((18.2, 17.9), (18.0, 24.1)), shape=(36, 36),
                            bands=("g", "r", "i"), psf_sigma=(1.7, 1.6, 1.5))
    return blend


@pytest.mark.parametrize("case", [
    # (blend, step_scale, max_iter, returns to the best state expected, deblend.morph_row_gamma)
    ("bright", 2.0, 60, True, 0.0),  # one return, then converged
    ("bright", 12.0, 60, True, 0.0),  # returns down to the step floor, then stops (not converged)
    ("bright", 2.0, 12, True, 0.0),  # max_iter reached: the best state is returned
    ("three", 2.0, 60, False, 0.0),  # an ordinary blend: momentum restarts only
    ("three-capped", 2.0, 60, False, 0.0),  # the same with two boxes limited (slope peaks)
    ("bright", 2.0, 60, None, 0.5),  # the weighted morphology row
    ("three", 2.0, 60, None, 0.5),
])
def test_fit_blend_matches_reference(case):
    kind, step_scale, max_iter, expect_back, row_gamma = case
    if kind == "bright":
        blend = _small_bright_blend(0, 3e4, (3.0, 4.0))
    else:  # "three", "three-capped"
        blend, _ = make_synthetic_blend(3, n_sources=3, shape=(41, 41), flux_range=(2e4, 5e4), min_separation=8.0)
    config = DeblendConfig()
    obs = build_observation(blend, config)
    peaks = np.ascontiguousarray(blend.peaks, dtype=np.int64)
    sed, morph, boxes, _ = initialize_sources(obs, peaks, config)
    args = (obs.images, obs.weights, obs.curvature, obs.transfer, *obs.fft_shape, peaks)
    s, m, b = sed.copy(), morph.copy(), boxes.copy()
    history = np.zeros(max_iter)
    caps = np.zeros(len(peaks), dtype=np.int64)
    if kind == "three-capped":
        caps[1:] = 3
    settings = fit.FitSettings(optimizer=fit.OPT_FISTA, max_iter=max_iter, min_iter=config.min_iter,
                               e_rel=config.e_rel, bg_thresh=config.bg_thresh, monotonic=True, symmetric=False,
                               sed_step_factor=0.0, morph_step=0.0, margin=config.box_margin, step_scale=step_scale,
                               row_gamma=row_gamma)
    n_iter, converged, status, alive = fit.fit_blend(*args, caps, s, m, b, obs.noise_rms, obs.kernel_radius,
                                                     settings, history)
    ref_hist, ref_sed, ref_morph, ref_boxes, ref_alive, ref_converged, n_back = fit_blend_reference(
        *args, sed, morph, boxes, obs.noise_rms, max_iter, config.min_iter, config.e_rel, config.bg_thresh,
        config.box_margin, obs.kernel_radius, step_scale, caps=caps, row_gamma=row_gamma)
    if kind == "three-capped":  # the limited boxes held
        assert np.all(b[1:, 1] - peaks[1:, 0] <= 4) and np.all(peaks[1:, 0] - b[1:, 0] <= 3)
    assert status == fit.STATUS_OK
    assert expect_back is None or (n_back > 0) == expect_back, n_back
    assert n_iter == len(ref_hist) and converged == ref_converged
    np.testing.assert_allclose(history[:n_iter], ref_hist, rtol=1e-4)
    np.testing.assert_array_equal(b, ref_boxes)
    np.testing.assert_array_equal(alive, ref_alive)
    np.testing.assert_allclose(s, ref_sed, rtol=1e-4, atol=1e-4 * np.abs(ref_sed).max())
    np.testing.assert_allclose(m, ref_morph, atol=1e-4)


def test_snapshot_restore_match_reference():
    """restore(snapshot(state)) is the state; the FISTA previous iterate becomes it; morphologies are
    zero outside the restored boxes."""
    rng = np.random.default_rng(3)
    nk, nb, h, w = 3, 2, 20, 24
    boxes = np.array([[2, 9, 3, 11], [5, 17, 4, 20], [0, 4, 0, 5]], dtype=np.int64)
    alive = np.array([True, True, False])

    def state():
        morph = np.zeros((nk, h, w), np.float32)
        for k in range(nk):
            if alive[k]:
                y0, y1, x0, x1 = boxes[k]
                morph[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
        return rng.random((nk, nb)), morph

    sed, morph = state()
    kept = (sed.copy(), morph.copy(), boxes.copy(), alive.copy())
    sed_keep, morph_keep = np.zeros_like(sed), np.full_like(morph, np.nan)  # untouched pixels must not matter
    boxes_keep, alive_keep = np.zeros_like(boxes), np.zeros_like(alive)
    fit_steps.snapshot(sed, morph, boxes, alive, sed_keep, morph_keep, boxes_keep, alive_keep)
    # move on: other values, other boxes (grown, shrunk), a dead source revived, one killed
    sed2, morph2 = state()
    boxes2 = np.array([[1, 12, 2, 14], [7, 12, 8, 12], [0, 6, 0, 6]], dtype=np.int64)
    morph2[:] = 0
    for k in range(nk):
        y0, y1, x0, x1 = boxes2[k]
        morph2[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    alive2 = np.array([True, False, True])
    sed_prev, morph_prev = rng.random((nk, nb)), np.zeros((nk, h, w), np.float32)
    for k in range(nk):
        y0, y1, x0, x1 = boxes2[k]
        morph_prev[k, y0:y1, x0:x1] = 5.0
    fit_steps.restore(sed2, morph2, boxes2, alive2, sed_keep, morph_keep, boxes_keep, alive_keep, sed_prev, morph_prev)
    np.testing.assert_array_equal(sed2, kept[0])
    np.testing.assert_array_equal(boxes2, kept[2])
    np.testing.assert_array_equal(alive2, kept[3])
    np.testing.assert_array_equal(morph2, kept[1])
    np.testing.assert_array_equal(sed_prev, kept[0])
    np.testing.assert_array_equal(morph_prev, kept[1])


@pytest.mark.parametrize("kind,max_iter", [("three", 40), ("bright", 25)])
def test_fit_blend_adaprox_matches_reference(kind, max_iter):
    if kind == "bright":
        blend = _small_bright_blend(0, 3e4, (3.0, 4.0))
    else:
        blend, _ = make_synthetic_blend(3, n_sources=3, shape=(41, 41), flux_range=(2e4, 5e4), min_separation=8.0)
    config = DeblendConfig(optimizer="adaprox")
    obs = build_observation(blend, config)
    peaks = np.ascontiguousarray(blend.peaks, dtype=np.int64)
    sed, morph, boxes, _ = initialize_sources(obs, peaks, config)
    s, m, b = sed.copy(), morph.copy(), boxes.copy()
    history = np.zeros(max_iter)
    settings = fit.FitSettings(optimizer=fit.OPT_ADAPROX, max_iter=max_iter, min_iter=config.min_iter,
                               e_rel=config.e_rel, bg_thresh=config.bg_thresh, monotonic=True, symmetric=False,
                               sed_step_factor=config.sed_step_factor, morph_step=config.morph_step,
                               margin=config.box_margin, step_scale=config.step_scale)
    n_iter, converged, status, alive = fit.fit_blend(obs.images, obs.weights, obs.curvature, obs.transfer,
                                                     *obs.fft_shape, peaks, np.zeros(len(peaks), dtype=np.int64),
                                                     s, m, b, obs.noise_rms,
                                                     obs.kernel_radius, settings, history)
    ref_hist, ref_sed, ref_morph, ref_boxes, ref_alive, ref_converged = adaprox_reference(
        obs.images, obs.weights, obs.transfer, *obs.fft_shape, peaks, sed, morph, boxes, obs.noise_rms, max_iter,
        config.min_iter, config.e_rel, config.bg_thresh, config.box_margin, config.sed_step_factor, config.morph_step)
    assert status == fit.STATUS_OK
    assert n_iter == len(ref_hist) and converged == ref_converged
    assert ref_hist[-1] < ref_hist[0]  # the fit went somewhere
    np.testing.assert_allclose(history[:n_iter], ref_hist, rtol=1e-4)
    np.testing.assert_array_equal(b, ref_boxes)
    np.testing.assert_array_equal(alive, ref_alive)
    np.testing.assert_allclose(s, ref_sed, rtol=1e-4, atol=1e-4 * np.abs(ref_sed).max())
    np.testing.assert_allclose(m, ref_morph, atol=1e-4)


def test_bright_star_guard_projects_the_extrapolated_best_state(tmp_path, monkeypatch):
    """A bright unsaturated star (i-band S/N ~4e4, fitted with a core component) and two faint sources.

    FISTA evaluates its extrapolated points, and momentum carries them outside the monotonicity
    constraint; for a star this bright that costs a lot of loss. At iteration 38 the loss rose more
    than the guard allows above the best point (iteration 37); the guard went back to that point, whose
    constraints alone raised the loss by 19 %, so every smaller step landed above the guard's limit too,
    and the fit stopped at the step floor after 42 iterations, "not converged", at 5× the loss it
    reaches now. The best point is now projected on return and evaluated afresh as the new reference.
    """
    from hpcblend.simulate import blend_sets

    monkeypatch.setattr(blend_sets, "SATURATION_MAG", 5.0)  # the star unsaturated: its core has data
    paths = blend_sets.make_large_blends(tmp_path, 2, 11, None, shape_range=(90, 110), n_sources_range=(1, 3),
                                         n_saturated_range=(1, 2))
    r = deblend_blend(read_blend(paths[1]), DeblendConfig())
    history = r.loss_history[:r.iterations]
    best = np.minimum.accumulate(history)
    trips = np.flatnonzero(history[1:] > (1 + fit.DIVERGENCE_TOL) * best[:-1]) + 1
    assert trips.size, "the case no longer makes the guard go back"
    first = int(trips[0])
    assert r.iterations > first + 10, (first, r.iterations)
    assert history[first:].min() < 0.5 * best[first - 1], (best[first - 1], history[first:].min())


def test_small_rise_after_a_steady_fall_is_not_convergence(tmp_path):
    """A saturated star (SAT-masked core) and three faint sources: the loss fell ~2 % per iteration
    for 40 iterations, then rose by 0.01 % (momentum overshooting); that small change was taken as
    convergence after 51 iterations, at 3.2× the loss the fit reaches when it goes on (the momentum
    restarts there and the descent continues). A small change counts only when it is not a rise
    right after a fall larger than ``e_rel``."""
    from hpcblend.simulate import blend_sets

    paths = blend_sets.make_large_blends(tmp_path, 9, 11, None, shape_range=(90, 110), n_sources_range=(1, 3),
                                         n_saturated_range=(1, 2))
    r = deblend_blend(read_blend(paths[8]), DeblendConfig())
    history = r.loss_history[:r.iterations]
    assert r.iterations > 60, (r.iterations, history[-3:])
    assert history.min() < 0.5 * history[50], (history[50], history.min())
