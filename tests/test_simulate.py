"""Tests of hpcblend.simulate.tract: determinism, truth positions and fluxes, WCS, PSFs, COSMOS mode."""

import os

import galsim
import numpy as np
import pytest
from astropy.io import fits

from hpcblend.io.coadd import read_tract
from hpcblend.errors import ConfigError, InputError
from hpcblend.simulate.tract import (HSC_DEPTH, SimulatedTract, draw_psf_image, make_tract_wcs, read_truth,
                               simulate_tract)

BANDS = ("g", "r", "i")
SMALL = dict(shape=(160, 200), bands=BANDS, density=40.0, star_density=10.0)


def test_determinism(tmp_path):
    a = simulate_tract(tmp_path / "a", seed=11, **SMALL)
    b = simulate_tract(tmp_path / "b", seed=11, **SMALL)
    c = simulate_tract(tmp_path / "c", seed=12, **SMALL)
    assert isinstance(a, SimulatedTract)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted([f"coadd_{x}.fits" for x in BANDS] + [f"psf_{x}.fits" for x in BANDS] + ["truth.fits"])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    da, dc = read_tract(a.paths), read_tract(c.paths)
    assert not np.array_equal(da.images, dc.images)
    assert len(a.truth) > 0


@pytest.fixture(scope="module")
def bright_field(tmp_path_factory):
    """A small tract with many bright, compact sources kept away from the edge."""
    out = tmp_path_factory.mktemp("bright")
    sim = simulate_tract(out, shape=(800, 800), bands=BANDS, density=4.0, star_density=8.0,
                         galaxy_mag_range=(19.0, 22.0), star_mag_range=(18.0, 22.0), margin=40.0, seed=5)
    return sim, read_tract(sim.paths)


def _isolated(truth, radius):
    """Sources with no neighbour's light (centre + 6 half-light radii + 10 px) within ``radius`` px (array)."""
    xy = np.stack([truth["x"], truth["y"]], axis=1)
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    reach = 6.0 * np.asarray(truth["hlr"]) / 0.168 + 10.0  # pixels
    return (d - reach[None, :] > np.asarray(radius)[:, None]).all(axis=1)


def _window(truth):
    """Centroid window half-size per source: 12 px, or 5 half-light radii + 8 px for big galaxies."""
    return np.maximum(12, np.ceil(5.0 * np.asarray(truth["hlr"]) / 0.168 + 8)).astype(int)


def _centroid(image, x, y, r):
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    cut = image[iy - r:iy + r + 1, ix - r:ix + r + 1].astype(np.float64)
    yy, xx = np.mgrid[iy - r:iy + r + 1, ix - r:ix + r + 1]
    total = cut.sum()
    return (cut * xx).sum() / total, (cut * yy).sum() / total


def test_truth_positions_match_centroids(bright_field, tmp_path):
    sim, data = bright_field
    t = sim.truth
    i = BANDS.index("i")
    win = _window(t)
    sel = _isolated(t, win) & (t["flux_i"] > 300.0)
    assert sel.sum() >= 5 and (t["type"][sel] == "galaxy").sum() >= 2, "too few isolated bright sources"
    # noiseless: the same catalog (the noise has its own random stream)
    clean = simulate_tract(tmp_path, shape=(800, 800), bands=("i",), density=4.0, star_density=8.0,
                           galaxy_mag_range=(19.0, 22.0), star_mag_range=(18.0, 22.0), margin=40.0, seed=5,
                           noise=False)
    np.testing.assert_array_equal(clean.truth["x"], t["x"])
    clean_image = read_tract(clean.paths).images[0]
    n_noisy = 0
    for row, r in zip(t[sel], win[sel]):
        cx, cy = _centroid(clean_image, row["x"], row["y"], r)
        assert abs(cx - row["x"]) < 0.05 and abs(cy - row["y"]) < 0.05, (row["type"], cx - row["x"], cy - row["y"])
        # with noise, where the centroid's noise (sigma sqrt(sum dx^2) / flux) is below 0.02 px
        noise_err = sim.sky_sigma["i"] * np.sqrt((2 * r + 1) * np.sum(np.arange(-r, r + 1) ** 2.0)) / row["flux_i"]
        if noise_err < 0.02:
            n_noisy += 1
            cx, cy = _centroid(data.images[i], row["x"], row["y"], r)
            assert abs(cx - row["x"]) < 0.1 and abs(cy - row["y"]) < 0.1, (row["type"], cx - row["x"],
                                                                             cy - row["y"])
    assert n_noisy >= 3


def test_flux_sum_matches_truth(bright_field):
    sim, data = bright_field
    npix = data.images.shape[1] * data.images.shape[2]
    for k, band in enumerate(BANDS):
        total_truth = float(np.sum(sim.truth[f"flux_{band}"]))
        total_image = float(data.images[k].sum(dtype=np.float64))
        noise = 5.0 * sim.sky_sigma[band] * np.sqrt(npix)
        # stamps hold all but ~1e-5 of a Moffat-convolved source's flux
        assert abs(total_image - total_truth) < noise + 1e-3 * total_truth, (band, total_image, total_truth)
        np.testing.assert_allclose(data.variance[k], sim.sky_sigma[band] ** 2, rtol=1e-6)
    assert not data.mask.any()
    # magnitudes and fluxes agree with the zero point
    t = sim.truth
    np.testing.assert_allclose(t["mag_i"], 27.0 - 2.5 * np.log10(t["flux_i"]))


def test_wcs_round_trip(bright_field):
    sim, data = bright_field
    t = sim.truth
    coords = data.wcs.pixel_to_world(t["x"], t["y"])
    dra = (coords.ra.deg - t["ra"]) * np.cos(np.radians(t["dec"])) * 3600.0
    ddec = (coords.dec.deg - t["dec"]) * 3600.0
    assert np.max(np.hypot(dra, ddec)) < 1e-4
    x, y = data.wcs.world_to_pixel_values(t["ra"], t["dec"])
    assert np.max(np.abs(x - t["x"])) < 1e-6 and np.max(np.abs(y - t["y"])) < 1e-6
    # GalSim's WCS (1-based image positions) agrees with astropy's: the header used for drawing
    # and the header written to the coadd file
    with fits.open(sim.paths.coadds["i"]) as hdul:
        file_header = hdul["IMAGE"].header
    _, draw_header = make_tract_wcs(sim.shape, 150.0, 2.0, 0.168)
    for header in (draw_header, file_header):
        gs = galsim.GSFitsWCS(header=header)
        for row in t[:20]:
            c = gs.toWorld(galsim.PositionD(row["x"] + 1.0, row["y"] + 1.0))
            sep = np.hypot((c.ra.deg - row["ra"]) * np.cos(np.radians(row["dec"])), c.dec.deg - row["dec"]) * 3600
            assert sep < 1e-4
    # centre of the tract is (ra, dec) = (150, 2)
    ra0, dec0 = data.wcs.pixel_to_world_values((sim.shape[1] - 1) / 2, (sim.shape[0] - 1) / 2)
    assert abs(ra0 - 150.0) < 1e-10 and abs(dec0 - 2.0) < 1e-10


def test_truth_file_and_columns(bright_field):
    sim, _ = bright_field
    t = read_truth(sim.directory)
    for col in ["id", "x", "y", "ra", "dec", "type", "hlr", "bulge_fraction", "cosmos_index"] + \
               [f"flux_{b}" for b in BANDS] + [f"mag_{b}" for b in BANDS]:
        assert col in t.colnames, col
    assert str(t["x"].unit) == "pix" and str(t["ra"].unit) == "deg" and t["flux_g"].unit == "count"
    assert set(t["type"]) == {"galaxy", "star"}
    np.testing.assert_array_equal(t["id"], np.arange(1, len(t) + 1))
    np.testing.assert_allclose(t["x"], sim.truth["x"])
    assert (t["hlr"][t["type"] == "star"] == 0).all() and (t["hlr"][t["type"] == "galaxy"] > 0).all()
    assert t.meta["SEED"] == 5 and t.meta["NX"] == 800
    # margin respected
    assert (t["x"] >= 39.5).all() and (t["x"] <= 800 - 40.5).all()


@pytest.mark.parametrize("kind", ["moffat", "kolmogorov"])
def test_psf_and_noise_level(tmp_path, kind):
    fwhm = {"g": 0.8, "r": 0.7, "i": 0.6}
    sim = simulate_tract(tmp_path, shape=(128, 128), bands=BANDS, density=0.0, star_density=0.0, psf=kind,
                         psf_fwhm=fwhm, seed=1)
    data = read_tract(sim.paths)
    assert len(sim.truth) == 0
    assert data.psfs.shape == (3, 41, 41)
    for k, b in enumerate(BANDS):
        p = data.psfs[k]
        assert abs(p.sum() - 1) < 1e-12
        assert np.unravel_index(np.argmax(p), p.shape) == (20, 20)
        # half-maximum area ~ pi (FWHM/2)^2, FWHM in pixels incl. the pixel response
        fwhm_px = 2 * np.sqrt(np.count_nonzero(p >= p.max() / 2) / np.pi)
        assert abs(fwhm_px - fwhm[b] / 0.168) < 0.15 * fwhm[b] / 0.168 + 0.5
        # pure noise: std matches the variance plane; the level follows the 5-sigma depth
        assert abs(data.images[k].std() / sim.sky_sigma[b] - 1) < 0.03
        n_eff = 1 / np.sum(p ** 2)
        f5 = 10 ** (-0.4 * (HSC_DEPTH[b] - 27))
        assert abs(5 * sim.sky_sigma[b] * np.sqrt(n_eff) / f5 - 1) < 1e-6


def test_sky_sigma_and_noiseless(tmp_path):
    sim = simulate_tract(tmp_path, shape=(64, 64), bands=("r",), density=0.0, star_density=0.0,
                         sky_sigma=0.25, seed=2)
    assert sim.sky_sigma == {"r": 0.25}
    sim = simulate_tract(tmp_path, shape=(64, 64), bands=("r",), density=0.0, star_density=0.0,
                         noise=False, seed=2)
    data = read_tract(sim.paths)
    assert not data.images.any() and (data.variance > 0).all()


@pytest.mark.parametrize("kwargs,error", [
    (dict(psf="gauss"), ConfigError), (dict(psf_size=40), ConfigError), (dict(bands=("g", "q")), ConfigError),
    (dict(shape=(0, 10)), ConfigError), (dict(density=-1.0), ConfigError),
    (dict(psf_fwhm=[0.7, 0.7, 0.7]), ConfigError), (dict(psf_fwhm=-0.5), ConfigError), (dict(depth={"g": 25.0}), ConfigError),
    (dict(galaxy_mag_range=(24.0, 20.0)), ConfigError), (dict(margin=40.0), ConfigError),
    (dict(cosmos_dir="/nonexistent/cosmos"), InputError)])
def test_bad_arguments(tmp_path, kwargs, error):
    args = dict(shape=(64, 64), bands=("g", "r"), density=1.0)
    args.update(kwargs)
    with pytest.raises(error):
        simulate_tract(tmp_path, **args)


def test_draw_psf_image_odd_normalised():
    p = draw_psf_image(galsim.Moffat(beta=3.5, fwhm=0.7), 21, galsim.PixelScale(0.168))
    assert p.shape == (21, 21) and abs(p.sum() - 1) < 1e-12
    np.testing.assert_allclose(p, p[::-1, ::-1], atol=1e-12)


def test_cosmos_mode(tmp_path, shared_data):
    cosmos_dir = shared_data / "cosmos"
    if not (cosmos_dir / "real_galaxy_catalog_26_extension_example.fits").is_file():
        msg = f"COSMOS sample not found in {cosmos_dir}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    sim = simulate_tract(tmp_path, shape=(200, 200), bands=("g", "r", "i", "z", "y"), density=50.0,
                         star_density=0.0, cosmos_dir=cosmos_dir, margin=50.0, noise=False, seed=4)
    t = sim.truth
    assert len(t) > 0 and set(t["type"]) == {"cosmos"}
    assert ((t["cosmos_index"] >= 0) & (t["cosmos_index"] < 100)).all()
    with fits.open(cosmos_dir / "real_galaxy_catalog_26_extension_example_fits.fits") as hdul:
        mags = hdul[1].data
        idents = np.asarray(mags["IDENT"])
    with fits.open(cosmos_dir / "real_galaxy_catalog_26_extension_example.fits") as hdul:
        cat_ident = np.asarray(hdul[1].data["IDENT"])
    for row in t[:5]:
        j = int(np.flatnonzero(idents == cat_ident[row["cosmos_index"]])[0])
        assert abs(row["mag_i"] - mags["HSC_i"][j]) < 1e-6
    data = read_tract(sim.paths)
    for k, band in enumerate(data.bands):
        total = float(data.images[k].sum(dtype=np.float64))
        truth = float(np.sum(t[f"flux_{band}"]))
        assert abs(total / truth - 1) < 0.03, (band, total, truth)
