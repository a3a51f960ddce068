"""End-to-end deblending: synthetic truth, a real HSC blend, and bad inputs."""

from dataclasses import replace

import numpy as np
import pytest

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, deblend_blend, initialize_sources
from hpcblend.errors import BlendDataError, PsfError
from hpcblend.io.blends import BlendData, read_blend
from hpcblend.simulate.synthetic import make_synthetic_blend

FLUX_RANGE = (2e4, 5e4)


def _match(children, truth):
    """Index of the nearest true source for each child, and the distances (px)."""
    d = np.hypot(children["x"][:, None] - truth["x"][None], children["y"][:, None] - truth["y"][None])
    m = d.argmin(axis=1)
    return m, d[np.arange(len(m)), m]


def _deblend_synthetic(seed, min_separation=8.0, **config):
    blend, truth = make_synthetic_blend(seed, n_sources=3, shape=(41, 41), flux_range=FLUX_RANGE,
                                        min_separation=min_separation)
    result = deblend_blend(blend, DeblendConfig(**config))
    return blend, truth, result


def _errors(truth, r):
    m, dist = _match(r.children, truth)
    rel = np.abs(r.children["flux"] / truth["flux"][m] - 1)
    return m, dist, rel


# Three Gaussian sources (sigma 1-3 px, PSF sigma ~1.6 px) whose centres are >= 8 px apart: their
# light overlaps (FWHM up to ~8 px) — a blend — but each has its own core. Every seed must pass, with
# one component per source (the model family of the truth: within 2 % in every band) and with the
# default configuration (sources of peak S/N >= 300 get a core and a halo, each with its own SED:
# that freedom, which real galaxies' colour gradients need, costs these single-profile sources up to
# 2.9 % in their faintest band over the 16 seeds; 1.9 % with the threshold at 500; 7.9 % at 300 with
# the core started as the inner part of the profile instead of scarlet's split).
@pytest.mark.parametrize("components, tolerance", [(2, 0.03), (1, 0.02)])
@pytest.mark.parametrize("seed", range(16))
def test_synthetic_three_sources_flux_and_centroid(seed, components, tolerance):
    _, truth, r = _deblend_synthetic(seed, max_components=components)
    assert r.fitted and r.converged
    assert r.children["alive"].all()
    m, dist, rel = _errors(truth, r)
    assert sorted(m) == [0, 1, 2]  # one-to-one
    assert np.all(dist < 0.2), dist
    assert np.all(rel < tolerance), rel


def test_synthetic_close_pairs_statistics():
    """Centres only >= 6 px apart: the monotonic model cannot always tell which source owns the
    light between two close, broad cores, so some fluxes swap a few per cent (measured on seeds
    0-15, default configuration: 11 of 16 blends within 2 % / 0.2 px, worst 21 % / 0.43 px, median
    error 0.3 %; with one component per source 10 of 16, worst 44 % / 0.72 px).
    Guard the statistics so a regression shows."""
    n_ok, medians = 0, []
    for seed in range(16):
        _, truth, r = _deblend_synthetic(seed, min_separation=6.0)
        _, dist, rel = _errors(truth, r)
        n_ok += bool(np.all(rel < 0.02) and np.all(dist < 0.2))
        medians.append(np.median(rel))
    assert n_ok >= 8, n_ok
    assert np.median(medians) < 0.01, np.median(medians)


@pytest.fixture(scope="module")
def hsc35_result(shared_data):
    blend = read_blend(shared_data / "scarlet_examples" / "hsc_cosmos_35.npz", blend_id=1)
    return deblend_blend(blend, DeblendConfig())


def test_hsc_cosmos_35(hsc35_result):
    r = hsc35_result
    assert r.fitted and r.converged
    assert not any(r.flags.values()), r.flags
    assert np.all(r.children["flux_model"] >= 0)
    # flux-conserving fluxes sum the data, which noise can take below 0 for a faint child (child 5: -0.006 in r)
    assert np.all(r.children["flux"] >= -3 * r.children["flux_err"])
    assert np.all(np.isfinite(r.children["flux"]))
    # measured 1.268 (two components for the two bright galaxies; one component per source: 1.340)
    assert r.chi2_per_pixel <= 1.30, r.chi2_per_pixel
    assert len(r.owner) > r.n_peaks  # the bright ones did get a core


# ---------------------------------------------------------------- bad inputs


def _small_blend(**overrides):
    blend, _ = make_synthetic_blend(1, n_sources=3, shape=(41, 41), flux_range=FLUX_RANGE)
    fields = dict(id=blend.id, source="<test>", bands=blend.bands, images=blend.images.copy(),
                  variance=blend.variance.copy(), mask=blend.mask, footprint=blend.footprint,
                  psfs=blend.psfs.copy(), peaks=blend.peaks)
    fields.update(overrides)
    return BlendData(**fields)


def test_nan_inside_footprint_raises_blend_data_error():
    blend = _small_blend()
    y, x = blend.peaks[0]
    assert blend.footprint[y, x]
    blend.images[2, y, x] = np.nan
    with pytest.raises(BlendDataError, match="NaN"):
        build_observation(blend, DeblendConfig())
    with pytest.raises(BlendDataError):
        deblend_blend(blend, DeblendConfig())


def test_nan_outside_footprint_is_ignored():
    blend = _small_blend()
    ys, xs = np.nonzero(~blend.footprint)
    blend.images[:, ys[0], xs[0]] = np.nan
    obs = build_observation(blend, DeblendConfig())
    assert np.all(np.isfinite(obs.images))


def test_psf_not_normalised_raises_psf_error():
    blend = _small_blend()
    blend.psfs[1] *= 1.1
    with pytest.raises(PsfError, match="sums to"):
        build_observation(blend, DeblendConfig())


def test_blend_too_big_for_memory_is_skipped_not_fitted():
    """A parent whose model arrays would exceed deblend.max_model_memory_mb is a flagged row, not an OOM."""
    from hpcblend.deblend.result import model_memory_bytes

    blend = _small_blend()
    h, w = blend.shape
    n_components = len(deblend_blend(blend, DeblendConfig()).owner)  # peaks, and the bright ones' cores
    need = model_memory_bytes(n_components, len(blend.bands), blend.shape)
    assert need == h * w * (24 * n_components + 32 * len(blend.bands))
    r = deblend_blend(blend, DeblendConfig(max_model_memory_mb=0.9 * need / 1e6))
    assert r.flags["flag_skipped_too_large"] is True and not r.fitted and r.children == {}
    ok = deblend_blend(blend, DeblendConfig(max_model_memory_mb=1.1 * need / 1e6))
    assert ok.flags["flag_skipped_too_large"] is False and ok.fitted
    # the default leaves room for the largest simulated parents (94 peaks on 295 x 324 px, five bands, with
    # a core for every peak)
    assert model_memory_bytes(2 * 94, 5, (295, 324)) < DeblendConfig().max_model_memory_mb * 1e6


def test_memory_guard_counts_the_cores_once_they_are_known():
    """Bright sources get a second (core) component: a parent that fits the guard with one component per peak
    but not with its cores is skipped after the layout, before anything is allocated for the fit."""
    from hpcblend.deblend.result import model_memory_bytes

    blend = _small_blend()
    cfg = DeblendConfig(multi_component_snr=1.0)  # every peak bright: a core each
    n_components = len(deblend_blend(blend, cfg).owner)
    assert n_components == 2 * blend.n_peaks
    one_each = model_memory_bytes(blend.n_peaks, len(blend.bands), blend.shape)
    with_cores = model_memory_bytes(n_components, len(blend.bands), blend.shape)
    limit = (one_each + with_cores) / 2 / 1e6
    r = deblend_blend(blend, DeblendConfig(multi_component_snr=1.0, max_model_memory_mb=limit))
    assert r.flags["flag_skipped_too_large"] is True and not r.fitted and r.children == {}
    # cores allowed but none bright enough: fitted (the guard used to count a core for every peak and skip it)
    ok = deblend_blend(blend, DeblendConfig(multi_component_snr=1e12, max_model_memory_mb=limit))
    assert ok.fitted and len(ok.owner) == blend.n_peaks


def test_too_many_peaks_is_skipped():
    blend = _small_blend()
    r = deblend_blend(blend, DeblendConfig(max_n_peaks=2))
    assert r.flags["flag_skipped_too_many_peaks"] is True
    assert not r.fitted
    assert r.iterations == 0 and r.sed is None and r.children == {}
    assert np.isnan(r.chi2_per_pixel)


# --------------------------------------------------------------------------------------------------------------
# faint peaks on a brighter source's slope (issue 14: bright galaxies with faint close neighbours)
# --------------------------------------------------------------------------------------------------------------


def _ridge_blend(seed: int, faint: float = 40.0, far: bool = False):
    """A bright galaxy (exponential disc plus a bar along x, 3300 counts in i) and a faint compact galaxy on
    its bar 9 px from its centre (or, with ``far``, 26 px away beyond its light); 3 bands, noise σ = 1."""
    import math

    from scipy.ndimage import gaussian_filter

    from hpcblend.io.blends import BlendData
    from hpcblend.simulate.synthetic import _grow

    h, w = 64, 64
    yy, xx = np.indices((h, w)).astype(float)
    psf_s = 1.5

    def gauss(y, x, sy, sx):
        g = np.exp(-0.5 * (((yy - y) / sy) ** 2 + ((xx - x) / sx) ** 2))
        return g / g.sum()

    disc = np.exp(-np.hypot(yy - 32, xx - 24) / 2.5)
    bright_img = 0.4 * gaussian_filter(disc / disc.sum(), psf_s) + 0.6 * gauss(32, 24, math.hypot(1.8, psf_s),
                                                                               math.hypot(8.0, psf_s))
    fy, fx = (32.3, 50.2) if far else (32.3, 33.2)
    faint_img = gauss(fy, fx, math.hypot(0.7, psf_s), math.hypot(0.7, psf_s))
    truth = np.array([3000.0 * np.array([0.8, 1.0, 1.1]), faint * np.array([1.2, 1.0, 0.8])])
    noiseless = truth[0][:, None, None] * bright_img[None] + truth[1][:, None, None] * faint_img[None]
    images = (noiseless + np.random.default_rng(seed).standard_normal(noiseless.shape)).astype(np.float32)
    g = np.exp(-0.5 * ((np.indices((21, 21)) - 10.0) / psf_s) ** 2).prod(axis=0)
    psfs = np.repeat((g / g.sum())[None], 3, 0)
    footprint = _grow(noiseless.sum(0) > 0.5 * math.sqrt(3), 2)
    peaks = np.array([[32, 24], [32, int(round(fx))]])
    blend = BlendData(id=1, source=f"ridge:{seed}", bands=("g", "r", "i"), images=images,
                      variance=np.ones_like(images), mask=np.zeros(images.shape, np.int32), footprint=footprint,
                      psfs=psfs, peaks=peaks)
    return blend, truth


def test_slope_peak_caps_mark_a_bump_on_a_brighter_slope_only():
    import dataclasses

    from hpcblend.deblend import build_observation
    from hpcblend.deblend.initialization import _detection_image, slope_peak_caps

    config = DeblendConfig()
    for far, expect in ((False, [0, config.slope_peak_box]), (True, [0, 0])):
        blend, _ = _ridge_blend(0, far=far)
        obs = build_observation(blend, config)
        detect, threshold, _ = _detection_image(obs, config)
        peaks = np.asarray(blend.peaks, dtype=np.int64)
        morphs = np.zeros((2,) + detect.shape, dtype=np.float32)
        for i, (py, px) in enumerate(peaks):
            morphs[i, py - 3:py + 4, px - 3:px + 4] = 1.0  # flux ranks the bar galaxy first
        morphs[0, 20:44, 10:40] = 1.0
        assert slope_peak_caps(detect, threshold, peaks, morphs, config).tolist() == expect
        off = dataclasses.replace(config, slope_peak_ratio=0.0)
        assert slope_peak_caps(detect, threshold, peaks, morphs, off).tolist() == [0, 0]


def test_slope_peak_below_the_resolved_snr_keeps_the_model_psf_box():
    """With the detection noise given, a slope peak fainter than deblend.slope_peak_resolved_snr gets the
    compact start's box (the model PSF's, 2 px); with slope_peak_resolved_snr 0, or without the noise,
    deblend.slope_peak_box; the brighter source is never limited. (This peak rises less than
    SLOPE_PEAK_RESOLVED_RISE above the slope, so the case just above the threshold is in the next test.)"""
    import dataclasses

    from hpcblend.deblend import build_observation
    from hpcblend.deblend.initialization import _detection_image, slope_peak_caps
    from hpcblend.kernels.initialization import COMPACT_HALF_SIZE

    config = DeblendConfig()
    blend, _ = _ridge_blend(0)
    obs = build_observation(blend, config)
    detect, threshold, sigma_det = _detection_image(obs, config)
    peaks = np.asarray(blend.peaks, dtype=np.int64)
    morphs = np.zeros((2,) + detect.shape, dtype=np.float32)
    morphs[0, 20:44, 10:40] = 1.0
    morphs[1, 29:36, 30:37] = 1.0
    snr = float(detect[peaks[1, 0], peaks[1, 1]]) / sigma_det
    assert snr > 1.0
    for resolved_snr, expect in ((1.01 * snr, [0, COMPACT_HALF_SIZE]), (0.0, [0, config.slope_peak_box])):
        cfg = dataclasses.replace(config, slope_peak_resolved_snr=resolved_snr)
        assert slope_peak_caps(detect, threshold, peaks, morphs, cfg, None, sigma_det).tolist() == expect
        assert slope_peak_caps(detect, threshold, peaks, morphs, cfg).tolist() == [0, config.slope_peak_box]


def _host_with_bump(host_amp: float, bump: float):
    """A broad host (Gaussian σ 12 px, peak ``host_amp``) at (24, 16) and a bump (σ 1 px, peak ``bump``) on its
    slope at (24, 26), as a detection image of noise σ_det = 1, with the peaks, flat morphologies that rank the host
    brighter, the bump's height and the share of it the host's monotonic profile explains."""
    from hpcblend.kernels.initialization import init_morphology

    yy, xx = np.mgrid[0:48, 0:48]
    detect = (host_amp * np.exp(-((yy - 24) ** 2 + (xx - 16) ** 2) / (2 * 12.0 ** 2))
              + bump * np.exp(-((yy - 24) ** 2 + (xx - 26) ** 2) / 2.0)).astype(np.float32)
    peaks = np.array([[24, 16], [24, 26]], dtype=np.int64)
    morphs = np.zeros((2, 48, 48), dtype=np.float32)
    morphs[0, 4:44, 0:40] = 1.0
    morphs[1, 21:28, 23:30] = 1.0
    profile = np.zeros_like(detect)
    init_morphology(detect, 24, 16, 1.0, False, 0, profile)
    height = float(detect[24, 26])
    return detect, peaks, morphs, height, float(detect[24, 16] * profile[24, 26]) / height


def test_high_slope_peak_rising_little_above_the_slope_keeps_the_model_psf_box():
    """A slope peak above deblend.slope_peak_resolved_snr but rising less than SLOPE_PEAK_RESOLVED_RISE σ above
    the brighter source's profile (high only by that source's light) gets the compact box; one rising more,
    deblend.slope_peak_box unless it is below slope_peak_resolved_snr; slope_peak_resolved_snr 0 turns both
    tests off."""
    import dataclasses

    from hpcblend.deblend.initialization import SLOPE_PEAK_RESOLVED_RISE, slope_peak_caps
    from hpcblend.kernels.initialization import COMPACT_HALF_SIZE

    config = DeblendConfig()
    for amplitude, expect in ((5.0, COMPACT_HALF_SIZE), (25.0, config.slope_peak_box)):
        detect, peaks, morphs, height, share = _host_with_bump(100.0, amplitude)  # host S/N 100
        rise = height * (1.0 - share)
        assert (rise < SLOPE_PEAK_RESOLVED_RISE) == (expect == COMPACT_HALF_SIZE)
        assert height > config.slope_peak_resolved_snr  # resolved by its height alone
        assert slope_peak_caps(detect, 1.0, peaks, morphs, config, None, 1.0).tolist() == [0, expect]
        faint = dataclasses.replace(config, slope_peak_resolved_snr=1.01 * height)
        assert slope_peak_caps(detect, 1.0, peaks, morphs, faint, None, 1.0).tolist() == [0, COMPACT_HALF_SIZE]
        just_resolved = dataclasses.replace(config, slope_peak_resolved_snr=0.99 * height)
        assert slope_peak_caps(detect, 1.0, peaks, morphs, just_resolved, None, 1.0).tolist() == [0, expect]
        off = dataclasses.replace(config, slope_peak_resolved_snr=0.0)
        assert slope_peak_caps(detect, 1.0, peaks, morphs, off, None, 1.0).tolist() == [0, config.slope_peak_box]


def test_unresolved_slope_peak_is_limited_with_less_of_the_slope_under_it():
    """A slope peak the data cannot resolve (below deblend.slope_peak_resolved_snr) gets the model PSF's box once
    SLOPE_PEAK_UNRESOLVED_RATIO of its detection value is the brighter source's profile; a resolved one with the
    same share stays free (it needs deblend.slope_peak_ratio); below that share neither is limited; with the
    unresolved test off (slope_peak_resolved_snr 0) the unresolved one needs slope_peak_ratio too."""
    import dataclasses

    from hpcblend.deblend.initialization import SLOPE_PEAK_RESOLVED_RISE, SLOPE_PEAK_UNRESOLVED_RATIO, slope_peak_caps
    from hpcblend.kernels.initialization import COMPACT_HALF_SIZE

    config = DeblendConfig()
    assert SLOPE_PEAK_UNRESOLVED_RATIO < config.slope_peak_ratio
    off = dataclasses.replace(config, slope_peak_resolved_snr=0.0)
    # (host amplitude, bump amplitude) in σ_det = 1: unresolved with 20-40 %, resolved with 20-40 %, unresolved < 20 %
    for host_amp, bump, resolved, in_band, expect in ((10.0, 16.5, False, True, COMPACT_HALF_SIZE),
                                                      (30.0, 60.0, True, True, 0), (4.0, 20.0, False, False, 0)):
        detect, peaks, morphs, height, share = _host_with_bump(host_amp, bump)
        assert share < config.slope_peak_ratio
        assert (share >= SLOPE_PEAK_UNRESOLVED_RATIO) == in_band
        assert (height >= config.slope_peak_resolved_snr
                and height * (1 - share) >= SLOPE_PEAK_RESOLVED_RISE) == resolved
        assert slope_peak_caps(detect, 1.0, peaks, morphs, config, None, 1.0).tolist() == [0, expect]
        assert slope_peak_caps(detect, 1.0, peaks, morphs, off, None, 1.0).tolist() == [0, 0]


def test_faint_peak_on_a_bar_keeps_to_its_box_and_takes_less_of_the_bar():
    """The faint galaxy's morphology stays within deblend.slope_peak_box of its peak and its model flux is
    lower than without the limit (it took the bar's light: 1.4-1.9x its flux), at no cost in chi2."""
    import dataclasses

    config = DeblendConfig()
    off = dataclasses.replace(config, slope_peak_ratio=0.0)
    cap = config.slope_peak_box
    for seed in (1, 2, 3):
        blend, truth = _ridge_blend(seed)
        on, free = deblend_blend(blend, config), deblend_blend(blend, off)
        faint_on, faint_free = on.children["flux_model"][1, 2], free.children["flux_model"][1, 2]
        assert faint_free > 1.3 * truth[1, 2]  # the failure: the faint galaxy takes part of the bar
        assert faint_on < faint_free
        k = int(np.flatnonzero(on.owner == 1)[0])
        ys, xs = np.nonzero(on.morphs[k])
        py, px = blend.peaks[1]
        assert np.all(np.abs(ys - py) <= cap) and np.all(np.abs(xs - px) <= cap)
        assert on.chi2_per_pixel < 1.02 * free.chi2_per_pixel


@pytest.mark.parametrize("seed", range(4))
def test_extended_galaxy_keeps_more_of_its_faint_wings_at_the_half_sigma_threshold(seed):
    """An isolated exponential galaxy (half-light size 6 px, 3000 counts per band): at scarlet's 1σ fit
    threshold its model loses 4–20 % of its flux in the wings below 1σ per pixel; the default 0.5σ keeps
    2–6 % more of it in every band (the simulated parametric large set: model flux bias −7.2 → −5.7 %)."""
    blend, truth = make_synthetic_blend(seed, n_sources=1, shape=(81, 81), profile="exponential", sizes=(6, 6),
                                        flux_range=(3e3, 3e3))
    assert DeblendConfig().bg_thresh == 0.5
    err = {}
    for bg_thresh in (1.0, 0.5):
        r = deblend_blend(blend, replace(DeblendConfig(), bg_thresh=bg_thresh))
        assert r.fitted and r.converged
        err[bg_thresh] = r.children["flux_model"][0] / truth["flux"][0] - 1.0
    assert np.all(err[0.5] > err[1.0] + 0.015), (err[1.0], err[0.5])
    assert np.median(np.abs(err[0.5])) < np.median(np.abs(err[1.0]))


def test_initial_morphologies_follow_init_bg_thresh_not_the_fit_threshold():
    blend, _ = make_synthetic_blend(3, n_sources=3, shape=(51, 51), profile="exponential")
    config = DeblendConfig()
    obs = build_observation(blend, config)
    peaks = np.ascontiguousarray(blend.peaks, dtype=np.int64)
    _, morphs, boxes, _ = initialize_sources(obs, peaks, config)
    _, morphs_fit, boxes_fit, _ = initialize_sources(obs, peaks, replace(config, bg_thresh=0.1))
    assert np.array_equal(morphs, morphs_fit) and np.array_equal(boxes, boxes_fit)
    _, morphs_low, _, _ = initialize_sources(obs, peaks, replace(config, init_bg_thresh=0.5))
    assert (morphs_low > 0).sum() > (morphs > 0).sum()
