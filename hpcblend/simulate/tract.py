"""Synthetic HSC-like tracts with known truth, drawn with GalSim.

:func:`simulate_tract` draws a multi-band coadd tract — galaxies (bulge + disk,
or real COSMOS morphologies), stars, a per-band PSF and Gaussian sky noise — and
writes it in the layout of :mod:`hpcblend.io.coadd` plus a truth catalog:

``<out_dir>/coadd_<band>.fits``
    IMAGE (float32 counts, celestial TAN WCS), VARIANCE (float32, the constant
    sky variance), MASK (int32, all zero) — see :mod:`hpcblend.io.coadd`.
``<out_dir>/psf_<band>.fits``
    HDU ``PSF``: the PSF image (float64, ``psf_size`` x ``psf_size``, odd,
    pixel-convolved, centred on the central pixel, sum 1).
``<out_dir>/truth.fits``
    HDU ``TRUTH``, one row per source (columns below); the primary header
    records the simulation parameters (``SEED``, ``TRACT``, ``PIXSCALE``,
    ``FWHM_<B>``, ``SKYSIG_<B>``, ...).

Truth columns: ``id`` (int64, 1..N), ``x``, ``y`` (float64, pixel, 0-based,
tract frame, pixel centres at integers), ``ra``, ``dec`` (float64, deg, from
the astropy WCS), ``type`` (``"galaxy"`` parametric bulge+disk, ``"cosmos"``
real COSMOS morphology, ``"star"``), ``flux_<band>`` (float64, counts: the
total flux of the unconvolved model, including any part that falls outside
the tract), ``mag_<band>`` (AB, ``zero_point - 2.5 log10(flux)``), ``hlr``
(float64, arcsec: see :func:`simulate_tract`), ``bulge_fraction`` (float64,
i-band bulge-to-total flux ratio; NaN for stars and COSMOS galaxies),
``cosmos_index`` (int64, row of the COSMOS catalog; -1 otherwise).

Model (all fluxes in counts with ``counts = 10**(-0.4 * (mag - zero_point))``,
HSC coadds: ``zero_point = 27``):

* Galaxies: a de Vaucouleurs bulge (Sersic n = 4, truncated at 10 half-light
  radii) plus an exponential disk, each with its own SED (a red bulge, a
  bluer disk: fixed colours per component plus 0.05 mag Gaussian scatter per
  band); i-band magnitudes from a power-law number count
  ``dN/dm ∝ 10**(slope * m)`` on ``galaxy_mag_range``; disk half-light radius
  ``0.7" * 10**(-0.1 (m_i - 22))`` with 0.35 lognormal scatter (clipped to
  [0.1", 4"]), bulge radius 0.3-0.6 x disk; random orientation; reduced shear
  ``|g|`` ~ Rayleigh(0.25) clipped at 0.7 (the bulge has half the disk's ``|g|``).
* COSMOS (``cosmos_dir``): :class:`galsim.RealGalaxy` from the catalog
  ``real_galaxy_catalog_26_extension_example.fits`` (the HST PSF is
  deconvolved by GalSim), randomly rotated, with the catalog's ``HSC_<band>``
  magnitudes from ``real_galaxy_catalog_26_extension_example_fits.fits``.
* Stars: a power-law count on ``star_mag_range`` and colours along a simple
  stellar locus (``g - i`` uniform in [0.3, 2.8]).
* PSF: :class:`galsim.Moffat` (beta ``moffat_beta``) or
  :class:`galsim.Kolmogorov` with the band's FWHM.
* Noise: Gaussian, constant sky variance per band; either given
  (``sky_sigma``) or from the 5-sigma point-source depth:
  ``sigma = F5 / (5 sqrt(n_eff))`` with ``F5`` the flux of a ``depth`` mag
  source and ``n_eff = 1 / sum(psf**2)`` the PSF's effective area in pixels.

Every object is drawn into its own postage stamp (GalSim FFT of the convolved
profile, the tract's WCS evaluated locally at the object) and added into the
tract; no full-tract FFT is made. For a seed the output is deterministic (the
same bytes on a given platform and library versions). The source catalog's
numbers and the stamps are drawn by :mod:`hpcblend.simulate.tract_catalog`,
the COSMOS sample read by :mod:`hpcblend.simulate.cosmos`.

References
----------
Rowe, B. et al. 2015, "GalSim: The modular galaxy image simulation toolkit",
Astronomy and Computing 10, 121. Aihara, H. et al. 2018, PASJ 70, S8 (HSC-SSP
depths and seeing). Mandelbaum, R. et al. 2012, MNRAS 420, 1518 (COSMOS real
galaxy training sample).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple, Union

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from hpcblend.io.blends import DEFAULT_BANDS
from hpcblend.errors import ConfigError, InputError
from hpcblend.io.masks import MASK_PLANES
from hpcblend.io.coadd import TractPaths, write_tract
from hpcblend.io.truth import TRUTH_FILE, read_truth, write_truth
from hpcblend.simulate.cosmos import load_cosmos_catalog
from hpcblend.simulate.tract_catalog import BULGE_COLORS, TractCatalog, counts_of_mag, draw_catalog, draw_sources

__all__ = [
    "HSC_DEPTH",
    "HSC_PSF_FWHM",
    "TRUTH_FILE",
    "SimulatedTract",
    "make_tract_wcs",
    "draw_psf_image",
    "simulate_tract",
    "add_sky_noise",
    "read_truth",
]

#: HSC-SSP Wide 5-sigma point-source depths (AB mag), Aihara et al. 2018.
HSC_DEPTH: dict = {"g": 26.5, "r": 26.1, "i": 25.9, "z": 25.1, "y": 24.4}
#: Default PSF FWHM per band (arcsec), HSC-SSP Wide medians (Aihara et al. 2018).
HSC_PSF_FWHM: dict = {"g": 0.77, "r": 0.76, "i": 0.62, "z": 0.68, "y": 0.68}


@dataclass
class SimulatedTract:
    """What :func:`simulate_tract` wrote.

    Attributes
    ----------
    directory : str
        ``out_dir``.
    paths : TractPaths
        Coadd and PSF files (``coadd_<band>.fits``, ``psf_<band>.fits``);
        pass to :func:`hpcblend.io.coadd.read_tract`.
    truth_path : str
        ``<out_dir>/truth.fits``.
    truth : astropy.table.Table
        The truth catalog (columns in this module's docstring).
    wcs : astropy.wcs.WCS
        The tract WCS.
    sky_sigma : dict of str to float
        Per-band noise standard deviation (counts per pixel).
    psf_fwhm : dict of str to float
        Per-band PSF FWHM (arcsec).
    shape : tuple of int
        (H, W).
    elapsed : float
        Wall time of the simulation (s), writing included.
    """

    directory: str
    paths: TractPaths
    truth_path: str
    truth: Table
    wcs: WCS
    sky_sigma: dict
    psf_fwhm: dict
    shape: Tuple[int, int]
    elapsed: float


# -----------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------


def _per_band(value, bands: Tuple[str, ...], name: str, default: Optional[Mapping] = None) -> dict:
    """A band -> float dict from a scalar, a sequence (band order) or a mapping."""
    if value is None:
        if default is None:
            raise ConfigError(f"{name}: no value given")
        missing = [b for b in bands if b not in default]
        if missing:
            raise ConfigError(f"{name}: no default for band(s) {missing}; give {name} for every band")
        return {b: float(default[b]) for b in bands}
    if isinstance(value, Mapping):
        missing = [b for b in bands if b not in value]
        if missing:
            raise ConfigError(f"{name}: no value for band(s) {missing} (got {dict(value)})")
        out = {b: value[b] for b in bands}
    elif np.ndim(value) == 0:
        out = {b: value for b in bands}
    else:
        seq = list(value)
        if len(seq) != len(bands):
            raise ConfigError(f"{name}: {len(seq)} values for {len(bands)} bands {bands}")
        out = dict(zip(bands, seq))
    try:
        out = {b: float(v) for b, v in out.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected numbers, got {value!r}") from None
    if not all(np.isfinite(v) for v in out.values()):
        raise ConfigError(f"{name}: values must be finite, got {value!r}")
    return out



def make_tract_wcs(shape: Tuple[int, int], ra: float, dec: float, pixel_scale: float) -> Tuple[WCS, fits.Header]:
    """A TAN WCS centred on the tract, north up, east left.

    Parameters
    ----------
    shape : tuple of int
        (H, W) in pixels.
    ra, dec : float
        Sky position of the tract centre (pixel ``((H - 1) / 2, (W - 1) / 2)``), deg.
    pixel_scale : float
        Arcsec per pixel.

    Returns
    -------
    wcs : astropy.wcs.WCS
    header : astropy.io.fits.Header
        The same WCS as FITS cards in CD-matrix form (what GalSim's
        :class:`galsim.GSFitsWCS` reads; FITS pixels are 1-based, so GalSim
        image position ``(x + 1, y + 1)`` is astropy's 0-based ``(x, y)``).
    """
    h, w = shape
    scale = pixel_scale / 3600.0
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CUNIT1"], hdr["CUNIT2"] = "deg", "deg"
    hdr["CRVAL1"], hdr["CRVAL2"] = float(ra), float(dec)
    hdr["CRPIX1"], hdr["CRPIX2"] = (w + 1) / 2.0, (h + 1) / 2.0
    hdr["CD1_1"], hdr["CD1_2"] = -scale, 0.0
    hdr["CD2_1"], hdr["CD2_2"] = 0.0, scale
    hdr["RADESYS"] = "ICRS"
    hdr["EQUINOX"] = 2000.0
    return WCS(hdr), hdr



def _psf_profile(kind: str, fwhm: float, beta: float):
    if kind == "moffat":
        return galsim.Moffat(beta=beta, fwhm=fwhm)
    return galsim.Kolmogorov(fwhm=fwhm)


def draw_psf_image(psf, size: int, wcs) -> np.ndarray:
    """Draw a PSF (pixel-convolved) on an odd ``size`` x ``size`` grid, centred, summing to 1.

    Parameters
    ----------
    psf : galsim.GSObject
        The PSF profile (arcsec).
    size : int
        Odd side length in pixels.
    wcs : galsim.BaseWCS
        Local WCS (e.g. the tract WCS evaluated at the tract centre).

    Returns
    -------
    ndarray, shape (size, size), float64
    """
    img = psf.drawImage(nx=size, ny=size, wcs=wcs, dtype=np.float64)
    arr = np.array(img.array, dtype=np.float64)
    return arr / arr.sum()



# -----------------------------------------------------------------------------
# the steps of simulate_tract
# -----------------------------------------------------------------------------


def _check_arguments(shape, bands, psf, psf_size, pixel_scale, moffat_beta, density, star_density, margin,
                     cosmos_fraction, galaxy_mag_range, star_mag_range, dec) -> tuple:
    """``(h, w, bands, psf)`` checked and normalised; a :class:`ConfigError` naming the argument otherwise."""
    try:
        h, w = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"shape: expected (H, W), got {shape!r}") from None
    if h < 1 or w < 1 or tuple(shape) != (h, w):
        raise ConfigError(f"shape: expected two positive integers (H, W), got {shape!r}")
    bands = tuple(str(b) for b in bands)
    if not bands or len(set(bands)) != len(bands):
        raise ConfigError(f"bands: expected distinct band names, got {bands!r}")
    unknown = [b for b in bands if b not in BULGE_COLORS]
    if unknown:
        raise ConfigError(f"bands: no galaxy colours for {unknown}; known: {tuple(BULGE_COLORS)}")
    psf = str(psf).lower()
    if psf not in ("moffat", "kolmogorov"):
        raise ConfigError(f"psf: expected 'moffat' or 'kolmogorov', got {psf!r}")
    if not (isinstance(psf_size, (int, np.integer)) and psf_size >= 3 and psf_size % 2 == 1):
        raise ConfigError(f"psf_size: expected an odd integer >= 3, got {psf_size!r}")
    for name, value in (("pixel_scale", pixel_scale), ("moffat_beta", moffat_beta)):
        if not (np.isfinite(value) and value > 0):
            raise ConfigError(f"{name}: expected a positive number, got {value!r}")
    if psf == "moffat" and moffat_beta <= 1.1:
        raise ConfigError(f"moffat_beta: expected > 1.1, got {moffat_beta!r}")
    for name, value in (("density", density), ("star_density", star_density), ("margin", margin)):
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}: expected a non-negative number, got {value!r}")
    if not 0.0 <= cosmos_fraction <= 1.0:
        raise ConfigError(f"cosmos_fraction: expected a number in [0, 1], got {cosmos_fraction!r}")
    for name, rng_ in (("galaxy_mag_range", galaxy_mag_range), ("star_mag_range", star_mag_range)):
        if len(rng_) != 2 or not rng_[0] < rng_[1]:
            raise ConfigError(f"{name}: expected (bright, faint) with bright < faint, got {rng_!r}")
    if 2 * margin >= min(h, w):
        raise ConfigError(f"margin: {margin} leaves no room in a {h}x{w} tract")
    if not (-90.0 < dec < 90.0):
        raise ConfigError(f"dec: expected a declination in (-90, 90) deg, got {dec!r}")
    return h, w, bands, psf


def _band_settings(bands, psf_fwhm, sky_sigma, depth) -> tuple:
    """``(fwhm, sigma, depths)`` per band: sigma None when it comes from the depths (after the PSFs are drawn)."""
    fwhm = _per_band(psf_fwhm, bands, "psf_fwhm", HSC_PSF_FWHM)
    if min(fwhm.values()) <= 0:
        raise ConfigError(f"psf_fwhm: expected positive values, got {fwhm}")
    if sky_sigma is not None:
        sigma = _per_band(sky_sigma, bands, "sky_sigma")
        if min(sigma.values()) <= 0:
            raise ConfigError(f"sky_sigma: expected positive values, got {sigma}")
        return fwhm, sigma, None
    return fwhm, None, _per_band(depth, bands, "depth", HSC_DEPTH)


def _open_cosmos(cosmos_dir):
    """The COSMOS sample of ``cosmos_dir`` (:func:`load_cosmos_catalog`), or None without one."""
    if cosmos_dir is None:
        return None
    cosmos_dir = os.fspath(cosmos_dir)
    if not os.path.isdir(cosmos_dir):
        raise InputError(f"{cosmos_dir}: COSMOS directory not found")
    return load_cosmos_catalog(cosmos_dir)


def _tract_psfs(bands, psf: str, fwhm: dict, moffat_beta: float, psf_size: int, gs_wcs, shape) -> tuple:
    """Each band's PSF profile and its image (B, psf_size, psf_size) drawn with the WCS at the tract centre."""
    h, w = shape
    centre_wcs = gs_wcs.local(galsim.PositionD((w + 1) / 2.0, (h + 1) / 2.0))
    psf_profiles = {b: _psf_profile(psf, fwhm[b], moffat_beta) for b in bands}
    psf_images = np.stack([draw_psf_image(psf_profiles[b], psf_size, centre_wcs) for b in bands])
    return psf_profiles, psf_images


def _sigma_from_depth(depths: dict, psf_images: np.ndarray, bands, zero_point: float) -> dict:
    """Sky sigma per band from the 5-sigma point-source depth: ``F5 / (5 sqrt(n_eff))``, ``n_eff = 1/sum(P^2)``."""
    sigma = {}
    for k, b in enumerate(bands):
        n_eff = 1.0 / float(np.sum(psf_images[k] ** 2))
        sigma[b] = float(counts_of_mag(depths[b], zero_point) / (5.0 * math.sqrt(n_eff)))
    return sigma


def add_sky_noise(images: np.ndarray, bands, sigma: dict, noise_seq: np.random.SeedSequence, noise: bool) -> np.ndarray:
    """Add Gaussian sky noise to ``images`` (in place; one child seed per band) and return the variance planes."""
    h, w = images.shape[1:]
    variance = np.empty_like(images)
    for m, (b, seq) in enumerate(zip(bands, noise_seq.spawn(len(bands)))):
        if noise:
            images[m] += np.random.default_rng(seq).standard_normal((h, w), dtype=np.float32) * np.float32(sigma[b])
        variance[m] = np.float32(sigma[b] ** 2)
    return variance


def _truth_table(cat: TractCatalog, wcs: WCS, bands, zero_point: float) -> Table:
    """The truth catalog (columns in the module docstring, with units) of a drawn catalog."""
    ra_t, dec_t = wcs.pixel_to_world_values(cat.xs, cat.ys)
    truth = Table()
    truth["id"] = np.arange(1, cat.n + 1, dtype=np.int64)
    truth["x"] = cat.xs
    truth["y"] = cat.ys
    truth["ra"] = np.asarray(ra_t, dtype=np.float64)
    truth["dec"] = np.asarray(dec_t, dtype=np.float64)
    truth["type"] = cat.kinds
    for b in bands:
        truth[f"flux_{b}"] = cat.flux[b]
    for b in bands:
        with np.errstate(divide="ignore"):
            truth[f"mag_{b}"] = zero_point - 2.5 * np.log10(cat.flux[b])
    truth["hlr"] = cat.hlr
    truth["bulge_fraction"] = cat.bulge_fraction
    truth["cosmos_index"] = cat.cosmos_index
    units = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg", "hlr": "arcsec"}
    units.update({f"flux_{b}": "count" for b in bands})
    units.update({f"mag_{b}": "mag" for b in bands})
    for col, unit in units.items():
        truth[col].unit = unit
    return truth


# -----------------------------------------------------------------------------
# main entry point
# -----------------------------------------------------------------------------


def simulate_tract(out_dir: Union[str, os.PathLike], shape: Tuple[int, int] = (2000, 2000),
                   bands: Sequence[str] = DEFAULT_BANDS, *, pixel_scale: float = 0.168,
                   density: float = 10.0, star_density: float = 1.0,
                   depth=None, sky_sigma=None, psf: str = "moffat", psf_fwhm=None,
                   moffat_beta: float = 3.5, psf_size: int = 41, seed: int = 0,
                   cosmos_dir: Optional[Union[str, os.PathLike]] = None, cosmos_fraction: float = 1.0,
                   tract: int = 0, ra: float = 150.0, dec: float = 2.0, zero_point: float = 27.0,
                   galaxy_mag_range: Tuple[float, float] = (20.0, 26.0), galaxy_mag_slope: float = 0.33,
                   star_mag_range: Tuple[float, float] = (18.0, 25.0), star_mag_slope: float = 0.1,
                   margin: float = 0.0, noise: bool = True, overwrite: bool = True) -> SimulatedTract:
    """Simulate a multi-band coadd tract with GalSim and write it with its truth catalog.

    Parameters
    ----------
    out_dir : str or path
        Output directory (created). Files: ``coadd_<band>.fits``,
        ``psf_<band>.fits``, ``truth.fits`` (see the module docstring).
    shape : tuple of int, default (2000, 2000)
        (H, W) of the tract in pixels.
    bands : sequence of str, default ("g", "r", "i", "z", "y")
        Band names; colours exist for u, g, r, i, z, y.
    pixel_scale : float, default 0.168
        Arcsec per pixel (HSC coadds).
    density : float, default 10
        Galaxies per arcmin² (the count is Poisson with this mean).
    star_density : float, default 1
        Stars per arcmin².
    depth : float, sequence or mapping, optional
        5-sigma point-source depth per band (AB mag); default
        :data:`HSC_DEPTH`. Ignored where ``sky_sigma`` is given.
    sky_sigma : float, sequence or mapping, optional
        Sky noise standard deviation per band (counts per pixel); overrides
        ``depth``.
    psf : {"moffat", "kolmogorov"}, default "moffat"
        PSF profile.
    psf_fwhm : float, sequence or mapping, optional
        FWHM per band (arcsec); default :data:`HSC_PSF_FWHM`.
    moffat_beta : float, default 3.5
        Moffat index.
    psf_size : int, default 41
        Side of the PSF images written (odd).
    seed : int, default 0
        Seed of everything random; the same seed gives the same files.
    cosmos_dir : str or path, optional
        Directory of the GalSim COSMOS sample (``../shared/data/cosmos``);
        if given, a fraction ``cosmos_fraction`` of the galaxies use real
        COSMOS morphologies and HSC magnitudes (type ``"cosmos"``).
    cosmos_fraction : float, default 1
        Fraction of galaxies drawn from COSMOS when ``cosmos_dir`` is given.
    tract : int, default 0
        Tract number written to the files.
    ra, dec : float, default (150.0, 2.0)
        Tract centre (deg; the COSMOS field).
    zero_point : float, default 27.0
        ``counts = 10**(-0.4 (mag - zero_point))``.
    galaxy_mag_range, galaxy_mag_slope
        i-band magnitude range and count slope of parametric galaxies.
    star_mag_range, star_mag_slope
        i-band magnitude range and count slope of stars.
    margin : float, default 0
        Keep source centres at least this many pixels from the tract edge
        (0: uniform over the whole tract, sources may be cut by the edge).
    noise : bool, default True
        Add sky noise (the variance plane holds the sky variance either way).
    overwrite : bool, default True
        Replace existing files.

    Returns
    -------
    SimulatedTract
        Paths, truth table (``hlr``: arcsec half-light radius of the
        unconvolved profile — for bulge+disk galaxies the radius enclosing
        half the i-band light of the circular bulge+disk; GalSim shears
        preserve area, so this is sqrt(a b) of the half-light ellipse when
        the components share a shape; COSMOS: the catalog's ``flux_radius``
        x 0.03"; stars: 0), noise levels, WCS, wall time.

    Raises
    ------
    ConfigError
        Bad shape, band without a colour/default, unknown PSF kind, even
        ``psf_size``, negative density, bad magnitude range.
    InputError
        ``cosmos_dir`` lacks the COSMOS catalog files.
    """
    t_start = time.perf_counter()
    h, w, bands, psf = _check_arguments(shape, bands, psf, psf_size, pixel_scale, moffat_beta, density, star_density,
                                        margin, cosmos_fraction, galaxy_mag_range, star_mag_range, dec)
    fwhm, sigma, depths = _band_settings(bands, psf_fwhm, sky_sigma, depth)
    cosmos = _open_cosmos(cosmos_dir)

    wcs, wcs_header = make_tract_wcs((h, w), ra, dec, pixel_scale)
    gs_wcs = galsim.GSFitsWCS(header=wcs_header)
    psf_profiles, psf_images = _tract_psfs(bands, psf, fwhm, moffat_beta, psf_size, gs_wcs, (h, w))
    if sigma is None:
        sigma = _sigma_from_depth(depths, psf_images, bands, zero_point)

    cat_seq, noise_seq = np.random.SeedSequence(int(seed)).spawn(2)
    cat = draw_catalog(np.random.default_rng(cat_seq), (h, w), bands, pixel_scale=pixel_scale, density=density,
                       star_density=star_density, cosmos=cosmos, cosmos_fraction=cosmos_fraction, margin=margin,
                       zero_point=zero_point, galaxy_mag_range=galaxy_mag_range, galaxy_mag_slope=galaxy_mag_slope,
                       star_mag_range=star_mag_range, star_mag_slope=star_mag_slope)
    images = np.zeros((len(bands), h, w), dtype=np.float32)
    draw_sources(images, cat, bands, psf_profiles, gs_wcs, fwhm, sigma, pixel_scale, cosmos)
    variance = add_sky_noise(images, bands, sigma, noise_seq, noise)
    mask = np.zeros(images.shape, dtype=np.int32)

    out_dir = os.fspath(out_dir)
    params = {"SIMSEED": (int(seed), "simulation seed"), "PIXSCALE": (float(pixel_scale), "arcsec/pixel"),
              "PSFKIND": (psf, "PSF profile")}
    paths = write_tract(out_dir, bands, images, variance, mask, wcs, psf_images, tract=tract,
                        zero_point=zero_point, mask_planes=MASK_PLANES, header=params, overwrite=overwrite)
    truth = _truth_table(cat, wcs, bands, zero_point)
    truth_path = os.path.join(out_dir, TRUTH_FILE)
    write_truth(truth_path, truth, {
        "TRACT": int(tract), "SEED": int(seed), "NX": w, "NY": h, "PIXSCALE": float(pixel_scale),
        "RA0": float(ra), "DEC0": float(dec), "PSFKIND": psf, "MAGZERO": float(zero_point),
        "NGAL": cat.n_param, "NCOSMOS": cat.n_cosmos, "NSTAR": cat.n_star, "DENSITY": float(density),
        "STARDENS": float(star_density), "NOISE": bool(noise),
        **{f"FWHM_{b.upper()}": fwhm[b] for b in bands},
        **{f"SKYSIG_{b.upper()}": sigma[b] for b in bands},
        **({f"DEPTH_{b.upper()}": depths[b] for b in bands} if depths else {}),
    }, overwrite)
    return SimulatedTract(directory=out_dir, paths=paths, truth_path=truth_path, truth=truth, wcs=wcs,
                          sky_sigma=dict(sigma), psf_fwhm=dict(fwhm), shape=(h, w),
                          elapsed=time.perf_counter() - t_start)
