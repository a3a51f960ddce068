"""The sources of a simulated tract: the numbers drawn for them, and their GalSim stamps.

:func:`draw_catalog` draws every random number of a tract's source catalog
from one generator, in a fixed order (counts, positions, then parametric
galaxies, COSMOS galaxies and stars), so a seed gives the same catalog;
:func:`draw_sources` draws each source into its own postage stamp and adds
the stamps into the tract's images. The model (colours, sizes, shapes,
stellar locus) is described in :mod:`hpcblend.simulate.tract`, which calls
both. Fluxes are counts, ``counts = 10**(-0.4 (mag - zero_point))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import galsim
import numpy as np
from scipy.special import gammainc

from hpcblend.simulate.cosmos import COSMOS_PIXEL_SCALE
from hpcblend.errors import ConfigError

__all__ = ["BULGE_COLORS", "DISK_COLORS", "TractCatalog", "composite_hlr", "counts_of_mag", "draw_catalog", "draw_sources"]

#: Bulge colours: magnitude offset of each band relative to i (red, early-type-like).
BULGE_COLORS: dict = {"u": 3.0, "g": 1.55, "r": 0.55, "i": 0.0, "z": -0.35, "y": -0.55}
#: Disk colours: magnitude offset of each band relative to i (blue, star-forming-like).
DISK_COLORS: dict = {"u": 1.2, "g": 0.6, "r": 0.25, "i": 0.0, "z": -0.1, "y": -0.15}

#: Stars: (band - i) = slope x (g - i) (u: 1 + 2 (g - i)); a crude linear stellar locus.
_STAR_COLOR_SLOPES = {"g": 1.0, "r": 0.4, "i": 0.0, "z": -0.2, "y": -0.3}
_BULGE_TRUNC = 10.0  # bulge truncation radius in half-light radii
_MAX_STAMP_RADIUS = 160


@dataclass
class TractCatalog:
    """Every number drawn for a tract's sources (N of them: parametric galaxies, COSMOS galaxies, stars, in order).

    Attributes
    ----------
    xs, ys : ndarray, shape (N,)
        Centres (float64, pixels, 0-based tract frame).
    kinds : ndarray of str, shape (N,)
        ``"galaxy"``, ``"cosmos"`` or ``"star"``.
    flux : dict of str to ndarray (N,)
        Total flux per band (counts).
    hlr : ndarray, shape (N,)
        Half-light radius (arcsec; 0 for stars).
    bulge_fraction : ndarray, shape (N,)
        i-band bulge-to-total ratio (NaN except parametric galaxies).
    cosmos_index : ndarray of int64, shape (N,)
        Row of the COSMOS catalog (-1 except COSMOS galaxies).
    n_param, n_cosmos, n_star : int
        How many of each kind.
    bulge_hlr, disk_hlr, shear_g, shear_beta : ndarray, shape (n_param,)
        Parametric galaxies: bulge and disk half-light radii (arcsec), reduced
        shear ``|g|`` of the disk and its position angle (rad).
    bulge_flux, disk_flux : dict of str to ndarray (n_param,)
        Parametric galaxies: per-band component fluxes (counts).
    cosmos_rotation : ndarray, shape (n_cosmos,)
        COSMOS galaxies: rotation (deg).
    """

    xs: np.ndarray
    ys: np.ndarray
    kinds: np.ndarray
    flux: dict
    hlr: np.ndarray
    bulge_fraction: np.ndarray
    cosmos_index: np.ndarray
    n_param: int
    n_cosmos: int
    n_star: int
    bulge_hlr: np.ndarray
    disk_hlr: np.ndarray
    shear_g: np.ndarray
    shear_beta: np.ndarray
    bulge_flux: dict
    disk_flux: dict
    cosmos_rotation: Optional[np.ndarray]

    @property
    def n(self) -> int:
        """Number of sources."""
        return self.n_param + self.n_cosmos + self.n_star


def counts_of_mag(mag, zero_point: float):
    """Counts of AB magnitude(s): ``10**(-0.4 (mag - zero_point))`` (float64)."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - zero_point))


def _power_law_mags(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """``n`` magnitudes on [lo, hi) with dN/dm ∝ 10**(slope m) (inverse-CDF sampling)."""
    u = rng.uniform(0.0, 1.0, n)
    if slope == 0:
        return lo + (hi - lo) * u
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def composite_hlr(hb: np.ndarray, hd: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """Half-light radius of circular de Vaucouleurs (hlr hb) + exponential (hlr hd) with bulge fraction bt."""

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


# -----------------------------------------------------------------------------
# the numbers (one generator, fixed order)
# -----------------------------------------------------------------------------


def _draw_parametric(rng, cat: TractCatalog, bands, zero_point, mag_range, mag_slope) -> None:
    """Parametric bulge + disk galaxies (rows ``0 .. n_param``): magnitudes, sizes, shapes, SEDs."""
    n_param = cat.n_param
    sl = slice(0, n_param)
    mag_i = _power_law_mags(rng, n_param, mag_range[0], mag_range[1], mag_slope)
    bt = rng.beta(1.0, 2.5, n_param)
    hd = np.clip(0.7 * 10.0 ** (-0.1 * (mag_i - 22.0)) * np.exp(rng.normal(0.0, 0.35, n_param)), 0.1, 4.0)
    hb = hd * rng.uniform(0.3, 0.6, n_param)
    cat.shear_g = np.clip(rng.rayleigh(0.25, n_param), 0.0, 0.7)
    cat.shear_beta = rng.uniform(0.0, np.pi, n_param)
    f_i = counts_of_mag(mag_i, zero_point)
    cat.bulge_flux = {b: bt * f_i * 10.0 ** (-0.4 * (BULGE_COLORS[b] + rng.normal(0, 0.05, n_param)))
                      for b in bands}
    cat.disk_flux = {b: (1 - bt) * f_i * 10.0 ** (-0.4 * (DISK_COLORS[b] + rng.normal(0, 0.05, n_param)))
                     for b in bands}
    for b in bands:
        cat.flux[b][sl] = cat.bulge_flux[b] + cat.disk_flux[b]
    cat.hlr[sl] = composite_hlr(hb, hd, bt)
    cat.bulge_fraction[sl] = bt
    cat.bulge_hlr, cat.disk_hlr = hb, hd


def _draw_cosmos(rng, cat: TractCatalog, bands, zero_point, cosmos) -> None:
    """COSMOS galaxies (rows ``n_param .. n_param + n_cosmos``): catalog rows, rotations, HSC magnitudes."""
    sl_c = slice(cat.n_param, cat.n_param + cat.n_cosmos)
    rgc, fit = cosmos
    idx = rng.integers(0, rgc.nobjects, cat.n_cosmos)
    cat.cosmos_rotation = rng.uniform(0.0, 360.0, cat.n_cosmos)
    cat.cosmos_index[sl_c] = idx
    for b in bands:
        col = f"HSC_{b}"
        if col not in fit.colnames:
            raise ConfigError(f"bands: the COSMOS catalog has no {col} magnitudes")
        cat.flux[b][sl_c] = counts_of_mag(np.asarray(fit[col], dtype=np.float64)[idx], zero_point)
    cat.hlr[sl_c] = np.asarray(fit["flux_radius"], dtype=np.float64)[idx] * COSMOS_PIXEL_SCALE


def _draw_stars(rng, cat: TractCatalog, bands, zero_point, mag_range, mag_slope) -> None:
    """Stars (the last ``n_star`` rows): i magnitudes and colours along the stellar locus."""
    sl_s = slice(cat.n_param + cat.n_cosmos, cat.n)
    mag_s = _power_law_mags(rng, cat.n_star, mag_range[0], mag_range[1], mag_slope)
    gmi = rng.uniform(0.3, 2.8, cat.n_star)
    for b in bands:
        cat.flux[b][sl_s] = counts_of_mag(mag_s + _star_offsets(gmi, b), zero_point)


def draw_catalog(rng: np.random.Generator, shape: Tuple[int, int], bands: Sequence[str], *, pixel_scale: float,
                 density: float, star_density: float, cosmos, cosmos_fraction: float, margin: float,
                 zero_point: float, galaxy_mag_range, galaxy_mag_slope: float, star_mag_range,
                 star_mag_slope: float) -> TractCatalog:
    """Draw a tract's source catalog (every random number of it, in a fixed order).

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness (the same state gives the same catalog).
    shape : (H, W)
        Tract size in pixels.
    bands : sequence of str
    pixel_scale : float
        Arcsec per pixel.
    density, star_density : float
        Galaxies and stars per arcmin² (Poisson means).
    cosmos : (galsim.RealGalaxyCatalog, astropy.table.Table) or None
        :func:`hpcblend.simulate.cosmos.load_cosmos_catalog`; None: no COSMOS galaxies.
    cosmos_fraction : float
        Fraction of galaxies drawn from COSMOS (binomial).
    margin : float
        Centres are uniform on ``[margin - 0.5, size - 0.5 - margin)`` per axis.
    zero_point : float
    galaxy_mag_range, galaxy_mag_slope, star_mag_range, star_mag_slope
        i-band magnitude ranges and number-count slopes.

    Returns
    -------
    TractCatalog

    Raises
    ------
    ConfigError
        The COSMOS catalog lacks ``HSC_<band>`` magnitudes for a band.
    """
    h, w = shape
    area_arcmin2 = h * w * (pixel_scale / 60.0) ** 2
    n_gal = int(rng.poisson(density * area_arcmin2))
    n_star = int(rng.poisson(star_density * area_arcmin2))
    n_cosmos = int(rng.binomial(n_gal, cosmos_fraction)) if cosmos is not None else 0
    n_param = n_gal - n_cosmos
    n = n_param + n_cosmos + n_star
    xs = rng.uniform(margin - 0.5, w - 0.5 - margin, n)
    ys = rng.uniform(margin - 0.5, h - 0.5 - margin, n)
    kinds = np.array(["galaxy"] * n_param + ["cosmos"] * n_cosmos + ["star"] * n_star, dtype="U6")
    empty = np.zeros(0)
    cat = TractCatalog(xs=xs, ys=ys, kinds=kinds, flux={b: np.zeros(n) for b in bands}, hlr=np.zeros(n),
                       bulge_fraction=np.full(n, np.nan), cosmos_index=np.full(n, -1, dtype=np.int64),
                       n_param=n_param, n_cosmos=n_cosmos, n_star=n_star, bulge_hlr=empty, disk_hlr=empty,
                       shear_g=empty, shear_beta=empty, bulge_flux={}, disk_flux={}, cosmos_rotation=None)
    _draw_parametric(rng, cat, bands, zero_point, galaxy_mag_range, galaxy_mag_slope)
    if n_cosmos:
        _draw_cosmos(rng, cat, bands, zero_point, cosmos)
    _draw_stars(rng, cat, bands, zero_point, star_mag_range, star_mag_slope)
    return cat


# -----------------------------------------------------------------------------
# the stamps
# -----------------------------------------------------------------------------


def _stamp_bounds(x: float, y: float, radius: int):
    """GalSim (1-based) bounds of a (2r+1)^2 stamp centred on the pixel holding 0-based (x, y)."""
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


def _draw_galaxy(images, cat: TractCatalog, k: int, bands, psf_profiles, psf_radius, gs_wcs, pixel_scale) -> None:
    """Parametric galaxy ``k``: sheared bulge + disk, convolved with each band's PSF."""
    x, y = float(cat.xs[k]), float(cat.ys[k])
    centre = galsim.PositionD(x + 1.0, y + 1.0)
    g_abs, beta, hb, hd = cat.shear_g[k], cat.shear_beta[k], cat.bulge_hlr[k], cat.disk_hlr[k]
    stretch = math.sqrt((1 + g_abs) / (1 - g_abs))
    shear_d = galsim.Shear(g=float(g_abs), beta=float(beta) * galsim.radians)
    shear_b = galsim.Shear(g=float(g_abs) / 2, beta=float(beta) * galsim.radians)
    bulge = galsim.Sersic(4, half_light_radius=float(hb), trunc=_BULGE_TRUNC * float(hb),
                          flux_untruncated=False).shear(shear_b)
    disk = galsim.Exponential(half_light_radius=float(hd)).shear(shear_d)
    extent = max(_BULGE_TRUNC * hb, 5.0 * hd) * stretch / pixel_scale
    for m, b in enumerate(bands):
        gal = galsim.Add([bulge.withFlux(float(cat.bulge_flux[b][k])), disk.withFlux(float(cat.disk_flux[b][k]))])
        radius = int(min(_MAX_STAMP_RADIUS, math.ceil(extent) + psf_radius[b]))
        stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
        galsim.Convolve(gal, psf_profiles[b]).drawImage(image=stamp, center=centre)
        _add_stamp(images[m], stamp)


def _draw_cosmos_galaxy(images, cat: TractCatalog, k: int, bands, psf_profiles, psf_radius, gs_wcs, pixel_scale,
                        rgc) -> None:
    """COSMOS galaxy ``k``: the rotated RealGalaxy (HST PSF deconvolved), convolved with each band's PSF."""
    x, y = float(cat.xs[k]), float(cat.ys[k])
    centre = galsim.PositionD(x + 1.0, y + 1.0)
    j = k - cat.n_param
    real = galsim.RealGalaxy(rgc, index=int(cat.cosmos_index[k]), flux=1.0).rotate(
        float(cat.cosmos_rotation[j]) * galsim.degrees)
    extent = 6.0 * max(cat.hlr[k], 0.1) / pixel_scale
    for m, b in enumerate(bands):
        radius = int(min(_MAX_STAMP_RADIUS, math.ceil(extent) + psf_radius[b]))
        stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
        galsim.Convolve(real.withFlux(float(cat.flux[b][k])), psf_profiles[b]).drawImage(image=stamp, center=centre)
        _add_stamp(images[m], stamp)


def _draw_star(images, cat: TractCatalog, k: int, bands, psf_profiles, psf_radius, gs_wcs, sigma) -> None:
    """Star ``k``: the PSF of each band; brighter stars get bigger stamps so their wings are not cut visibly."""
    x, y = float(cat.xs[k]), float(cat.ys[k])
    centre = galsim.PositionD(x + 1.0, y + 1.0)
    for m, b in enumerate(bands):
        bright = max(0.0, math.log10(max(cat.flux[b][k], 1.0) / (50.0 * sigma[b])))
        radius = int(min(_MAX_STAMP_RADIUS, math.ceil(psf_radius[b] * (1.5 + bright))))
        stamp = galsim.ImageF(_stamp_bounds(x, y, radius), wcs=gs_wcs)
        psf_profiles[b].withFlux(float(cat.flux[b][k])).drawImage(image=stamp, center=centre)
        _add_stamp(images[m], stamp)


def draw_sources(images: np.ndarray, cat: TractCatalog, bands: Sequence[str], psf_profiles: dict, gs_wcs,
                 fwhm: dict, sigma: dict, pixel_scale: float, cosmos=None) -> None:
    """Add every source of ``cat``, convolved with its band's PSF, into ``images`` (in place).

    Each source is drawn into its own postage stamp (GalSim FFT of the
    convolved profile, the tract WCS evaluated locally at the source) of
    radius extent + 4 FWHM (at most 160 px), then added, clipped at the
    tract edges; no full-tract FFT is made.

    Parameters
    ----------
    images : ndarray, shape (B, H, W), float32
        The tract's images, added to.
    cat : TractCatalog
    bands : sequence of str, length B
    psf_profiles : dict of str to galsim.GSObject
        Each band's PSF (arcsec).
    gs_wcs : galsim.BaseWCS
        The tract WCS (GalSim 1-based pixels).
    fwhm : dict of str to float
        PSF FWHM per band (arcsec), for the stamp sizes.
    sigma : dict of str to float
        Sky noise per band (counts), for the stars' stamp sizes.
    pixel_scale : float
        Arcsec per pixel.
    cosmos : (galsim.RealGalaxyCatalog, Table), optional
        Needed when ``cat`` has COSMOS galaxies.
    """
    psf_radius = {b: int(math.ceil(4.0 * fwhm[b] / pixel_scale)) for b in bands}
    rgc = cosmos[0] if cosmos is not None else None
    for k in range(cat.n):
        kind = cat.kinds[k]
        if kind == "galaxy":
            _draw_galaxy(images, cat, k, bands, psf_profiles, psf_radius, gs_wcs, pixel_scale)
        elif kind == "cosmos":
            _draw_cosmos_galaxy(images, cat, k, bands, psf_profiles, psf_radius, gs_wcs, pixel_scale, rgc)
        else:
            _draw_star(images, cat, k, bands, psf_profiles, psf_radius, gs_wcs, sigma)
