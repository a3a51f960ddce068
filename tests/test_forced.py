"""Forced photometry with neighbours' models subtracted (hpcblend.measure.forced)."""

import math

import numpy as np
import pytest
import sep
from scipy.special import erf

import hpcblend.measure.forced as forced
from hpcblend.kernels import photometry as kp
from hpcblend.errors import BlendDataError, PsfError

BANDS = ("g", "r")
PSF_SIGMAS = (1.6, 2.0)  # core sigma per band (px); 10 % wing at 2.5x


def _pix_gauss_1d(n, c, sigma):
    """Gaussian of unit integral, integrated over unit pixels 0..n-1, centred at c."""
    edges = np.arange(n + 1, dtype=np.float64) - 0.5 - c
    return np.diff(0.5 * (1 + erf(edges / (math.sqrt(2) * sigma))))


def _psf_image(shape, cy, cx, sigma, wing=0.1, scale=2.5):
    """Pixel-integrated double Gaussian (unit flux in the infinite plane) centred at (cy, cx)."""
    out = np.zeros(shape)
    for frac, s in ((1 - wing, sigma), (wing, sigma * scale)):
        out += frac * np.outer(_pix_gauss_1d(shape[0], cy, s), _pix_gauss_1d(shape[1], cx, s))
    return out


def _psfs(size=41):
    return np.stack([_psf_image((size, size), size // 2, size // 2, s) for s in PSF_SIGMAS])


def _stars(shape, stars):
    """Models (K, B, H, W) of point sources [(y, x, (flux per band)), ...]."""
    return np.stack([np.stack([f * _psf_image(shape, y, x, s) for f, s in zip(fluxes, PSF_SIGMAS)])
                     for y, x, fluxes in stars])


def _noisy(models, noise, seed):
    rng = np.random.default_rng(seed)
    truth = models.sum(axis=0)
    images = truth + rng.normal(size=truth.shape) * noise
    return images, np.full(truth.shape, noise ** 2)


def test_isolated_star_psf_and_large_aperture_flux_within_1_percent():
    shape = (64, 60)
    y, x, fluxes = 30.3, 27.6, (1.0e4, 2.5e4)
    models = _stars(shape, [(y, x, fluxes)])
    images, variance = _noisy(models, 1.0, seed=0)
    cat = forced.forced_photometry(images, variance, [(y, x)], _psfs(), BANDS, models)
    assert cat.shape == (1,)
    assert [n for n, _, _ in forced.forced_columns(BANDS)] == list(cat.dtype.names)
    for b, f in zip(BANDS, fluxes):
        assert cat[f"psf_flux_{b}"][0] == pytest.approx(f, rel=1e-2)
        assert cat[f"ap_flux_12_{b}"][0] == pytest.approx(f, rel=1e-2)
        assert cat[f"ap_flux_3_{b}"][0] < cat[f"ap_flux_6_{b}"][0] < cat[f"ap_flux_12_{b}"][0]
        # error of the PSF fit with w = 1/V: (sum P^2 / V)^-1/2
        p = _psf_image(shape, y, x, PSF_SIGMAS[BANDS.index(b)])
        assert cat[f"psf_flux_err_{b}"][0] == pytest.approx(1 / math.sqrt((p ** 2).sum()), rel=1e-2)
        assert cat[f"ap_flux_err_12_{b}"][0] == pytest.approx(math.sqrt(math.pi * 144), rel=1e-3)
        assert cat[f"psf_flux_flag_{b}"][0] == 0 and cat[f"ap_flux_flag_12_{b}"][0] == 0
    assert cat["flags"][0] == 0
    assert (cat["y"][0], cat["x"][0]) == (y, x)


def test_psf_flux_error_matches_scatter():
    shape = (40, 40)
    models = _stars(shape, [(19.6, 20.2, (500.0, 800.0))])
    fluxes = []
    for seed in range(60):
        images, variance = _noisy(models, 2.0, seed)
        cat = forced.forced_photometry(images, variance, [(19.6, 20.2)], _psfs(25), BANDS, models, radii=(4,))
        fluxes.append(cat["psf_flux_g"][0])
    err = cat["psf_flux_err_g"][0]
    assert np.std(fluxes) == pytest.approx(err, rel=0.3)
    assert abs(np.mean(fluxes) - 500.0) < 4 * err / math.sqrt(60)


def test_blended_stars_each_recover_their_own_flux():
    shape = (60, 64)
    stars = [(30.2, 28.4, (1.0e4, 6.0e3)), (31.1, 33.0, (3.0e3, 9.0e3))]  # 4.7 px apart
    models = _stars(shape, stars)
    images, variance = _noisy(models, 1.0, seed=1)
    positions = [(s[0], s[1]) for s in stars]
    cat = forced.forced_photometry(images, variance, positions, _psfs(), BANDS, models)
    naive = forced.forced_photometry(images, variance, positions, _psfs(), BANDS, np.zeros_like(models))
    for k, (y, x, fluxes) in enumerate(stars):
        for b, f in zip(BANDS, fluxes):
            assert cat[f"psf_flux_{b}"][k] == pytest.approx(f, rel=1e-2)
            assert cat[f"ap_flux_12_{b}"][k] == pytest.approx(f, rel=1e-2)
            # small aperture: what the star alone puts in it
            alone = np.ascontiguousarray(models[k, BANDS.index(b)])
            expect, _, _ = sep.sum_circle(alone, [x], [y], 3.0, subpix=0)
            err = cat[f"ap_flux_err_3_{b}"][k]
            assert abs(cat[f"ap_flux_3_{b}"][k] - expect[0]) < 4 * err
            # without the neighbour subtracted the fluxes are badly off
            assert abs(naive[f"psf_flux_{b}"][k] - f) > 0.03 * f
            assert abs(naive[f"ap_flux_12_{b}"][k] - f) > 0.25 * f
    # callable models give the same numbers
    again = forced.forced_photometry(images, variance, positions, _psfs(), BANDS, lambda k: models[k])
    for name in cat.dtype.names:
        np.testing.assert_array_equal(cat[name], again[name])


def test_shape_of_gaussian_galaxy_and_psf():
    shape = (64, 64)
    yy, xx = np.indices(shape, dtype=np.float64)
    psf_var = 1.8 ** 2
    gal = np.array([[7.0, 2.0], [2.0, 4.0]])  # intrinsic covariance (xx, xy; xy, yy), px^2
    cov = gal + np.eye(2) * psf_var
    d = np.stack([xx - 31.4, yy - 32.2], axis=-1)
    rho2 = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
    img = np.exp(-0.5 * rho2) / (2 * math.pi * math.sqrt(np.linalg.det(cov)))
    u = np.arange(41) - 20.0
    g = np.exp(-0.5 * u ** 2 / psf_var)
    psf = np.outer(g, g)
    fluxes = np.array([2000.0, 5000.0])
    models = (fluxes[:, None, None] * img)[None]  # (1, 2, H, W)
    images, variance = _noisy(models, 0.01, seed=2)
    for band in (None, "r", 0):
        cat = forced.forced_photometry(images, variance, [(32.0, 31.0)], np.stack([psf, psf]), BANDS, models,
                                       shape_band=band)
        assert cat["shape_flag"][0] == 0 and cat["flags"][0] == 0
        assert cat["shape_xx"][0] == pytest.approx(cov[0, 0], rel=1e-2)
        assert cat["shape_yy"][0] == pytest.approx(cov[1, 1], rel=1e-2)
        assert cat["shape_xy"][0] == pytest.approx(cov[0, 1], rel=2e-2)
        assert (cat["shape_y"][0], cat["shape_x"][0]) == (pytest.approx(32.2, abs=1e-2), pytest.approx(31.4, abs=1e-2))
        assert cat["psf_shape_xx"][0] == pytest.approx(psf_var, rel=1e-2)
        assert cat["psf_shape_xy"][0] == pytest.approx(0.0, abs=1e-3)
        expect_flux = fluxes.sum() if band is None else fluxes[BANDS.index(band) if isinstance(band, str) else band]
        assert cat["shape_flux"][0] == pytest.approx(expect_flux, rel=1e-2)


def test_masked_edge_and_off_image_flags():
    shape = (50, 50)
    stars = [(25.0, 25.0, (5e3, 5e3)), (3.2, 46.7, (4e3, 4e3))]
    models = _stars(shape, stars)
    images, variance = _noisy(models, 1.0, seed=3)
    weights = 1.0 / variance
    weights[:, 25, 26] = 0.0  # a masked pixel next to the first star's centre
    images[:, 25, 26] = np.nan  # whatever is there must not matter
    positions = [(25.0, 25.0), (3.2, 46.7), (80.0, 10.0)]
    models3 = np.concatenate([models, np.zeros((1,) + models.shape[1:])])
    cat = forced.forced_photometry(images, variance, positions, _psfs(), BANDS, models3, weights=weights)
    f = cat["flags"]
    assert f[0] & forced.FORCED_PSF_MASKED and f[0] & forced.FORCED_AP_MASKED
    assert not f[0] & (forced.FORCED_PSF_EDGE | forced.FORCED_AP_TRUNCATED)
    assert cat["psf_flux_g"][0] == pytest.approx(5e3, rel=1e-2)  # fit ignores the pixel
    assert cat["ap_flux_12_g"][0] == pytest.approx(5e3, rel=1e-2)  # model fills it
    assert cat["ap_flux_flag_3_g"][0] == forced.FORCED_AP_MASKED
    assert f[1] & forced.FORCED_PSF_EDGE and f[1] & forced.FORCED_AP_TRUNCATED
    assert cat["psf_flux_r"][1] == pytest.approx(4e3, rel=2e-2)  # the part inside still constrains it
    assert f[2] == forced.FORCED_OFF_IMAGE and np.isnan(cat["psf_flux_g"][2]) and np.isnan(cat["shape_xx"][2])
    assert np.all(np.isfinite([cat[f"ap_flux_{r}_g"][0] for r in (3, 6, 12)]))


def test_helpers_and_bad_inputs():
    assert forced.radius_label(3.0) == "3" and forced.radius_label(4.5) == "4p5"
    psf = _psf_image((21, 21), 10, 10, 1.7)
    shifted = kp.shift_image(psf, 0.3, -0.4, pad=2)
    expect = np.pad(_psf_image((21, 21), 10.3, 9.6, 1.7), 2)
    assert np.abs(shifted - expect).max() < 1e-3 * psf.max()
    assert shifted.sum() == pytest.approx(psf.sum())
    images = np.zeros((2, 20, 20))
    variance = np.ones((2, 20, 20))
    models = np.zeros((1, 2, 20, 20))
    psfs = _psfs(11)
    with pytest.raises(BlendDataError, match="variance"):
        forced.forced_photometry(images, variance[:1], [(5, 5)], psfs, BANDS, models)
    with pytest.raises(BlendDataError, match="models"):
        forced.forced_photometry(images, variance, [(5, 5), (6, 6)], psfs, BANDS, models)
    with pytest.raises(BlendDataError, match="band names"):
        forced.forced_photometry(images, variance, [(5, 5)], psfs, ("g",), models)
    with pytest.raises(PsfError, match="odd"):
        forced.forced_photometry(images, variance, [(5, 5)], psfs[:, :10], BANDS, models)
    with pytest.raises(ValueError, match="radii"):
        forced.forced_photometry(images, variance, [(5, 5)], psfs, BANDS, models, radii=(0,))
    with pytest.raises(ValueError, match="shape_band"):
        forced.forced_photometry(images, variance, [(5, 5)], psfs, BANDS, models, shape_band="i")
