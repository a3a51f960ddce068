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
same bytes on a given platform and library versions).

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

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from hpcblend.io.coadd import TractPaths, write_tract
from hpcblend.errors import ConfigError, InputError
from hpcblend.io.blends import MASK_PLANES

__all__ = [
    "HSC_DEPTH",
    "HSC_PSF_FWHM",
    "BULGE_COLORS",
    "DISK_COLORS",
    "TRUTH_FILE",
    "COSMOS_CATALOG",
    "SimulatedTract",
    "make_tract_wcs",
    "draw_psf_image",
    "simulate_tract",
    "read_truth",
]

#: HSC-SSP Wide 5-sigma point-source depths (AB mag), Aihara et al. 2018.
HSC_DEPTH: dict = {"g": 26.5, "r": 26.1, "i": 25.9, "z": 25.1, "y": 24.4}
#: Default PSF FWHM per band (arcsec), HSC-SSP Wide medians (Aihara et al. 2018).
HSC_PSF_FWHM: dict = {"g": 0.77, "r": 0.76, "i": 0.62, "z": 0.68, "y": 0.68}
#: Bulge colours: magnitude offset of each band relative to i (red, early-type-like).
BULGE_COLORS: dict = {"u": 3.0, "g": 1.55, "r": 0.55, "i": 0.0, "z": -0.35, "y": -0.55}
#: Disk colours: magnitude offset of each band relative to i (blue, star-forming-like).
DISK_COLORS: dict = {"u": 1.2, "g": 0.6, "r": 0.25, "i": 0.0, "z": -0.1, "y": -0.15}
#: Name of the truth catalog written into ``out_dir``.
TRUTH_FILE: str = "truth.fits"
#: COSMOS catalog file names inside ``cosmos_dir``.
COSMOS_CATALOG: str = "real_galaxy_catalog_26_extension_example.fits"
COSMOS_FITS_CATALOG: str = "real_galaxy_catalog_26_extension_example_fits.fits"
#: COSMOS HST pixel scale (arcsec), for the catalog's ``flux_radius``.
COSMOS_PIXEL_SCALE: float = 0.03

#: Stars: (band - i) = slope x (g - i) (u: 1 + 2 (g - i)); a crude linear stellar locus.
_STAR_COLOR_SLOPES = {"g": 1.0, "r": 0.4, "i": 0.0, "z": -0.2, "y": -0.3}
_BULGE_TRUNC = 10.0  # bulge truncation radius in half-light radii
_MAX_STAMP_RADIUS = 160


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


def _counts(mag, zero_point: float):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - zero_point))


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """``n`` magnitudes on [lo, hi) with dN/dm ∝ 10**(slope m) (inverse-CDF sampling)."""
    u = rng.uniform(0.0, 1.0, n)
    if slope == 0:
        return lo + (hi - lo) * u
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


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
    import galsim

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


def _stamp_bounds(x: float, y: float, radius: int):
    """GalSim (1-based) bounds of a (2r+1)^2 stamp centred on the pixel holding 0-based (x, y)."""
    import galsim

    ix, iy = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
    return galsim.BoundsI(ix - radius + 1, ix + radius + 1, iy - radius + 1, iy + radius + 1)


def _add_stamp(image: np.ndarray, stamp) -> None:
    """Add a GalSim stamp (1-based bounds) into a 0-based (H, W) array, clipping at the edges."""
    b = stamp.bounds
    h, w = image.shape
    x0, x1 = max(b.xmin - 1, 0), min(b.xmax, w)  # 0-based, half-open
    y0, y1 = max(b.ymin - 1, 0), min(b.ymax, h)
    if x1 <= x0 or y1 <= y0:
        return
    sx0, sy0 = x0 - (b.xmin - 1), y0 - (b.ymin - 1)
    image[y0:y1, x0:x1] += stamp.array[sy0:sy0 + (y1 - y0), sx0:sx0 + (x1 - x0)]


def _composite_hlr(hb: np.ndarray, hd: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """Half-light radius of circular de Vaucouleurs (hlr hb) + exponential (hlr hd) with bulge fraction bt."""
    from scipy.special import gammainc

    def enclosed(r):
        xb = 7.669249 * np.power(np.maximum(r / hb, 0.0), 0.25)
        fb = np.where(r >= _BULGE_TRUNC * hb, 1.0, gammainc(8.0, xb) / gammainc(8.0, 7.669249 * _BULGE_TRUNC ** 0.25))
        xd = 1.678347 * r / hd
        fd = 1.0 - (1.0 + xd) * np.exp(-xd)
        return bt * fb + (1.0 - bt) * fd

    lo = np.zeros_like(hd)
    hi = np.maximum(hb * _BULGE_TRUNC, hd * 10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = enclosed(mid) < 0.5
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def _star_offsets(g_minus_i: np.ndarray, band: str) -> np.ndarray:
    """Magnitude offset (band - i) of stars along a crude linear stellar locus."""
    if band == "u":
        return 1.0 + 2.0 * g_minus_i
    return _STAR_COLOR_SLOPES[band] * g_minus_i


def _load_cosmos(cosmos_dir: str):
    import galsim

    cat_path = os.path.join(cosmos_dir, COSMOS_CATALOG)
    fit_path = os.path.join(cosmos_dir, COSMOS_FITS_CATALOG)
    for p in (cat_path, fit_path):
        if not os.path.isfile(p):
            raise InputError(f"{p}: COSMOS catalog file not found (cosmos_dir={cosmos_dir})")
    try:
        rgc = galsim.RealGalaxyCatalog(COSMOS_CATALOG, dir=cosmos_dir)
        with fits.open(cat_path) as hdul:
            idents = np.asarray(hdul[1].data["IDENT"])
        with fits.open(fit_path) as hdul:
            fit = Table(hdul[1].data)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{cat_path}: cannot read the COSMOS catalog: {exc}") from None
    row_of = {int(i): k for k, i in enumerate(np.asarray(fit["IDENT"]))}
    missing = [int(i) for i in idents if int(i) not in row_of]
    if missing:
        raise InputError(f"{fit_path}: IDENT {missing[:5]} of {cat_path} not found")
    fit = fit[[row_of[int(i)] for i in idents]]
    return rgc, fit


# -----------------------------------------------------------------------------
# main entry point
# -----------------------------------------------------------------------------


def simulate_tract(out_dir: Union[str, os.PathLike], shape: Tuple[int, int] = (2000, 2000),
                   bands: Sequence[str] = ("g", "r", "i", "z", "y"), *, pixel_scale: float = 0.168,
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
    import galsim

    t_start = time.perf_counter()
    # -- validate --------------------------------------------------------------------
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
    fwhm = _per_band(psf_fwhm, bands, "psf_fwhm", HSC_PSF_FWHM)
    if min(fwhm.values()) <= 0:
        raise ConfigError(f"psf_fwhm: expected positive values, got {fwhm}")
    if sky_sigma is not None:
        sigma = _per_band(sky_sigma, bands, "sky_sigma")
        if min(sigma.values()) <= 0:
            raise ConfigError(f"sky_sigma: expected positive values, got {sigma}")
        depths = None
    else:
        depths = _per_band(depth, bands, "depth", HSC_DEPTH)
        sigma = None
    cosmos = None
    if cosmos_dir is not None:
        cosmos_dir = os.fspath(cosmos_dir)
        if not os.path.isdir(cosmos_dir):
            raise InputError(f"{cosmos_dir}: COSMOS directory not found")
        cosmos = _load_cosmos(cosmos_dir)

    # -- WCS and PSFs ----------------------------------------------------------------------
    wcs, wcs_header = make_tract_wcs((h, w), ra, dec, pixel_scale)
    gs_wcs = galsim.GSFitsWCS(header=wcs_header)
    centre_wcs = gs_wcs.local(galsim.PositionD((w + 1) / 2.0, (h + 1) / 2.0))
    psf_profiles = {b: _psf_profile(psf, fwhm[b], moffat_beta) for b in bands}
    psf_images = np.stack([draw_psf_image(psf_profiles[b], psf_size, centre_wcs) for b in bands])
    if sigma is None:
        sigma = {}
        for k, b in enumerate(bands):
            n_eff = 1.0 / float(np.sum(psf_images[k] ** 2))
            sigma[b] = float(_counts(depths[b], zero_point) / (5.0 * math.sqrt(n_eff)))

    # -- catalog -------------------------------------------------------------------------------
    ss = np.random.SeedSequence(int(seed))
    cat_seq, noise_seq = ss.spawn(2)
    rng = np.random.default_rng(cat_seq)
    area_arcmin2 = h * w * (pixel_scale / 60.0) ** 2
    n_gal = int(rng.poisson(density * area_arcmin2))
    n_star = int(rng.poisson(star_density * area_arcmin2))
    n_cosmos = int(rng.binomial(n_gal, cosmos_fraction)) if cosmos is not None else 0
    n_param = n_gal - n_cosmos
    n = n_param + n_cosmos + n_star
    xs = rng.uniform(margin - 0.5, w - 0.5 - margin, n)
    ys = rng.uniform(margin - 0.5, h - 0.5 - margin, n)
    kinds = np.array(["galaxy"] * n_param + ["cosmos"] * n_cosmos + ["star"] * n_star, dtype="U6")
    flux = {b: np.zeros(n) for b in bands}
    hlr = np.zeros(n)
    bulge_fraction = np.full(n, np.nan)
    cosmos_index = np.full(n, -1, dtype=np.int64)

    # parametric galaxies
    sl = slice(0, n_param)
    mag_i = _power_law_mags(rng, n_param, galaxy_mag_range[0], galaxy_mag_range[1], galaxy_mag_slope)
    bt = rng.beta(1.0, 2.5, n_param)
    hd = np.clip(0.7 * 10.0 ** (-0.1 * (mag_i - 22.0)) * np.exp(rng.normal(0.0, 0.35, n_param)), 0.1, 4.0)
    hb = hd * rng.uniform(0.3, 0.6, n_param)
    g_abs = np.clip(rng.rayleigh(0.25, n_param), 0.0, 0.7)
    beta = rng.uniform(0.0, np.pi, n_param)
    f_i = _counts(mag_i, zero_point)
    fb = {b: bt * f_i * 10.0 ** (-0.4 * (BULGE_COLORS[b] + rng.normal(0, 0.05, n_param))) for b in bands}
    fd = {b: (1 - bt) * f_i * 10.0 ** (-0.4 * (DISK_COLORS[b] + rng.normal(0, 0.05, n_param))) for b in bands}
    for b in bands:
        flux[b][sl] = fb[b] + fd[b]
    hlr[sl] = _composite_hlr(hb, hd, bt)
    bulge_fraction[sl] = bt

    # COSMOS galaxies
    sl_c = slice(n_param, n_param + n_cosmos)
    if n_cosmos:
        rgc, fit = cosmos
        idx = rng.integers(0, rgc.nobjects, n_cosmos)
        rot = rng.uniform(0.0, 360.0, n_cosmos)
        cosmos_index[sl_c] = idx
        for b in bands:
            col = f"HSC_{b}"
            if col not in fit.colnames:
                raise ConfigError(f"bands: the COSMOS catalog has no {col} magnitudes")
            flux[b][sl_c] = _counts(np.asarray(fit[col], dtype=np.float64)[idx], zero_point)
        hlr[sl_c] = np.asarray(fit["flux_radius"], dtype=np.float64)[idx] * COSMOS_PIXEL_SCALE

    # stars
    sl_s = slice(n_param + n_cosmos, n)
    mag_s = _power_law_mags(rng, n_star, star_mag_range[0], star_mag_range[1], star_mag_slope)
    gmi = rng.uniform(0.3, 2.8, n_star)
    for b in bands:
        flux[b][sl_s] = _counts(mag_s + _star_offsets(gmi, b), zero_point)

    # -- draw ------------------------------------------------------------------------------------
    images = np.zeros((len(bands), h, w), dtype=np.float32)
    psf_radius = {b: int(math.ceil(4.0 * fwhm[b] / pixel_scale)) for b in bands}
    for k in range(n):
        x, y = float(xs[k]), float(ys[k])
        centre = galsim.PositionD(x + 1.0, y + 1.0)
        kind = kinds[k]
        if kind == "galaxy":
            j = k
            stretch = math.sqrt((1 + g_abs[j]) / (1 - g_abs[j]))
            shear_d = galsim.Shear(g=float(g_abs[j]), beta=float(beta[j]) * galsim.radians)
            shear_b = galsim.Shear(g=float(g_abs[j]) / 2, beta=float(beta[j]) * galsim.radians)
            bulge = galsim.Sersic(4, half_light_radius=float(hb[j]), trunc=_BULGE_TRUNC * float(hb[j]),
                                  flux_untruncated=False).shear(shear_b)
            disk = galsim.Exponential(half_light_radius=float(hd[j])).shear(shear_d)
            extent = max(_BULGE_TRUNC * hb[j], 5.0 * hd[j]) * stretch / pixel_scale
            for m, b in enumerate(bands):
                gal = galsim.Add([bulge.withFlux(float(fb[b][j])), disk.withFlux(float(fd[b][j]))])
                radius = int(min(_MAX_STAMP_RADIUS, math.ceil(extent) + psf_radius[b]))
                stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
                galsim.Convolve(gal, psf_profiles[b]).drawImage(image=stamp, center=centre)
                _add_stamp(images[m], stamp)
        elif kind == "cosmos":
            j = k - n_param
            i_cat = int(cosmos_index[k])
            real = galsim.RealGalaxy(rgc, index=i_cat, flux=1.0).rotate(float(rot[j]) * galsim.degrees)
            extent = 6.0 * max(hlr[k], 0.1) / pixel_scale
            for m, b in enumerate(bands):
                radius = int(min(_MAX_STAMP_RADIUS, math.ceil(extent) + psf_radius[b]))
                stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
                galsim.Convolve(real.withFlux(float(flux[b][k])), psf_profiles[b]).drawImage(
                    image=stamp, center=centre)
                _add_stamp(images[m], stamp)
        else:
            for m, b in enumerate(bands):
                # brighter stars get bigger stamps so their wings are not cut visibly
                bright = max(0.0, math.log10(max(flux[b][k], 1.0) / (50.0 * sigma[b])))
                radius = int(min(_MAX_STAMP_RADIUS, math.ceil(psf_radius[b] * (1.5 + bright))))
                stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
                psf_profiles[b].withFlux(float(flux[b][k])).drawImage(image=stamp, center=centre)
                _add_stamp(images[m], stamp)

    # -- noise, variance, mask ------------------------------------------------------------------------
    variance = np.empty_like(images)
    for m, (b, seq) in enumerate(zip(bands, noise_seq.spawn(len(bands)))):
        if noise:
            images[m] += np.random.default_rng(seq).standard_normal((h, w), dtype=np.float32) * np.float32(sigma[b])
        variance[m] = np.float32(sigma[b] ** 2)
    mask = np.zeros(images.shape, dtype=np.int32)

    # -- write ------------------------------------------------------------------------------------------
    out_dir = os.fspath(out_dir)
    params = {"SIMSEED": (int(seed), "simulation seed"), "PIXSCALE": (float(pixel_scale), "arcsec/pixel"),
              "PSFKIND": (psf, "PSF profile")}
    paths = write_tract(out_dir, bands, images, variance, mask, wcs, psf_images, tract=tract,
                        zero_point=zero_point, mask_planes=MASK_PLANES, header=params, overwrite=overwrite)

    ra_t, dec_t = wcs.pixel_to_world_values(xs, ys)
    truth = Table()
    truth["id"] = np.arange(1, n + 1, dtype=np.int64)
    truth["x"] = xs
    truth["y"] = ys
    truth["ra"] = np.asarray(ra_t, dtype=np.float64)
    truth["dec"] = np.asarray(dec_t, dtype=np.float64)
    truth["type"] = kinds
    for b in bands:
        truth[f"flux_{b}"] = flux[b]
    for b in bands:
        with np.errstate(divide="ignore"):
            truth[f"mag_{b}"] = zero_point - 2.5 * np.log10(flux[b])
    truth["hlr"] = hlr
    truth["bulge_fraction"] = bulge_fraction
    truth["cosmos_index"] = cosmos_index
    units = {"x": "pix", "y": "pix", "ra": "deg", "dec": "deg", "hlr": "arcsec"}
    units.update({f"flux_{b}": "count" for b in bands})
    units.update({f"mag_{b}": "mag" for b in bands})
    for col, unit in units.items():
        truth[col].unit = unit

    truth_path = os.path.join(out_dir, TRUTH_FILE)
    _write_truth(truth_path, truth, {
        "TRACT": int(tract), "SEED": int(seed), "NX": w, "NY": h, "PIXSCALE": float(pixel_scale),
        "RA0": float(ra), "DEC0": float(dec), "PSFKIND": psf, "MAGZERO": float(zero_point),
        "NGAL": n_param, "NCOSMOS": n_cosmos, "NSTAR": n_star, "DENSITY": float(density),
        "STARDENS": float(star_density), "NOISE": bool(noise),
        **{f"FWHM_{b.upper()}": fwhm[b] for b in bands},
        **{f"SKYSIG_{b.upper()}": sigma[b] for b in bands},
        **({f"DEPTH_{b.upper()}": depths[b] for b in bands} if depths else {}),
    }, overwrite)
    return SimulatedTract(directory=out_dir, paths=paths, truth_path=truth_path, truth=truth, wcs=wcs,
                          sky_sigma=dict(sigma), psf_fwhm=dict(fwhm), shape=(h, w),
                          elapsed=time.perf_counter() - t_start)


def _write_truth(path: str, truth: Table, header: Mapping, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: file exists (overwrite=False)")
    primary = fits.PrimaryHDU()
    for key, value in header.items():
        primary.header[key] = value
    table_hdu = fits.table_to_hdu(truth)
    table_hdu.name = "TRUTH"
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fits.HDUList([primary, table_hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_truth(path: Union[str, os.PathLike]) -> Table:
    """Read a truth catalog written by :func:`simulate_tract`.

    Parameters
    ----------
    path : str or path
        ``truth.fits``, or the simulation's directory.

    Returns
    -------
    astropy.table.Table
        Columns as in the module docstring, with units; ``meta`` holds the
        primary header's simulation parameters.

    Raises
    ------
    InputError
        File or ``TRUTH`` HDU missing or unreadable.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, TRUTH_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{path}: truth catalog not found")
    try:
        with fits.open(path) as hdul:
            table = Table.read(hdul["TRUTH"])
            meta = {k: v for k, v in hdul[0].header.items() if k not in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")}
    except KeyError:
        raise InputError(f"{path}: HDU 'TRUTH' missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read truth catalog: {exc}") from None
    table.meta.update(meta)
    return table
