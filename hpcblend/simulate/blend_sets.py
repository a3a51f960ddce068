"""Seeded sets of HSC-like npz blends with their truth inside each file: large crowded blends, bright galaxies.

They stand in for data we do not have (issue 14): :func:`make_large_blends` draws crowded 200-340 px
blends (30-100 galaxies, a few saturated stars; held-out real HSC blends reach 88 peaks on 286 x 340 px),
:func:`make_bright_galaxy_blends` one bright extended galaxy (i-band S/N 100-500) with 1-3 faint
neighbours 0.8-2" away. Files are in the ``hsc_blends`` layout of :func:`hpcblend.io.blends.write_blend`
(``footprint`` stored True OUTSIDE the parent, as hpcblend's writer and the real files do) plus ``truth_*``
members, which :func:`~hpcblend.io.blends.read_blend` never loads; :func:`hpcblend.io.blend_truth.read_blend_truth`
reads them, :mod:`hpcblend.analysis.truth_metrics` scores a run against them.

Model (HSC coadds: 0.168"/px, ``counts = 10**(-0.4 (mag - 27))``, bands grizy):

* PSF per blend and band: :class:`galsim.Moffat`, FWHM :data:`~hpcblend.simulate.tract.HSC_PSF_FWHM`
  ± 0.06" (clipped to 0.58-0.85") times ``psf_scale`` (1: HSC seeing), one beta in [2.8, 4]; drawn
  pixel-convolved on 41 x 41 px: the PSF images given (a source's wings run on beyond them).
* Noise: Gaussian sky, constant per band, from the 5-sigma point-source depth :data:`HSC_DEEP_DEPTH`
  (i = 26.0) as :mod:`hpcblend.simulate.tract` does (``sigma = F5 / (5 sqrt(n_eff))``, ``n_eff = 1/sum(psf²)``);
  the variance plane is that sky variance (no source photon noise).
* Large set: the catalog of :func:`~hpcblend.simulate.tract_catalog.draw_catalog` on the box (mean galaxy
  count uniform in ``n_sources_range``; with ``cosmos_dir`` rotated COSMOS RealGalaxies at the catalog's HSC
  magnitudes — a sample limited at F814W 25.2, so following the real counts — else parametric bulge + disk
  with ``dN/dm ∝ 10**(0.33 m)`` on i = 19-26.5), Poisson(2) faint stars and ``n_saturated_range`` stars of
  i = 15-17.5.
* COSMOS galaxies whose unit-flux image at HSC resolution encloses more than 1 + :data:`COSMOS_MAX_EXCESS` of
  it within some radius (a negative pedestal or noise in the HST stamp; 5 of the 100) are replaced by the
  usable one closest in i magnitude. The bright galaxy has catalog i <= 23, neighbours i <= 25.5, so the HST
  noise scaled up with them stays below the HSC noise.
* Bright set: a galaxy near the centre, i-band S/N log-uniform in [100, 500], half-light radius uniform in
  [0.5, 1.5]" (a COSMOS galaxy dilated to it, at most 3x, or a parametric bulge + disk); 1-3 neighbours
  (80 % galaxies of 0.15-0.5" or COSMOS at catalog size, 20 % stars) with S/N log-uniform in [10, 40] at
  0.8-2" from it and 0.6" from each other.
* Saturation: a pixel whose noisy value reaches the band's level (the peak pixel of a centred point source of
  i = :data:`SATURATION_MAG`, every band alike) is set to that level and gets ``SAT``: exactly the pixels at
  the level. ``SAT`` is a default bad plane, so the deblender gives them zero weight. No bleed trails.
* Peaks: at the rounded true centre of every source whose *detection S/N* — its noiseless i image filtered
  with the i PSF at that pixel, over the filtered noise — exceeds :data:`DETECTION_SNR`; of two on one
  pixel the higher stays. Ordered by detection S/N.
* Footprint, one parent: the PSF-filtered noisy i image above :data:`FOOTPRINT_SNR` sigma; every connected
  component holding a peak (all together, noise islands dropped) plus the peak pixels, grown by
  :data:`FOOTPRINT_GROW` px; those pixels get ``DETECTED``.

Truth members, K peaks in peak order, B bands, M undetected sources; (y, x) 0-based pixels of the blend:
``truth_flux`` (K, B) total flux of the profile (counts), ``truth_flux_image`` (K, B) the part inside the box
(the sum of the noiseless stamp clipped to it), ``truth_flux_known_shape`` (K, B) the flux fitted with every
source's true shape known (weighted least squares over the footprint's unmasked pixels,
:mod:`hpcblend.simulate.known_shapes`: the noise's floor; version 2 on), ``truth_yx`` (K, 2) true centre,
``truth_snr`` (K, B) and
``truth_snr_i`` (K,) optimal S/N of the source alone (``sqrt(sum(stamp²)) / sigma``), ``truth_det_snr`` (K,),
``truth_nn_arcsec`` / ``truth_nn_all_arcsec`` (K,) to the nearest other peak / any other source (inf: none),
``truth_is_star``, ``truth_saturated`` (K,) bool (its own noiseless peak saturates in some band),
``truth_masked_fraction`` (K,) share of its i flux on bad-plane pixels, ``truth_kind`` (``galaxy``,
``cosmos``, ``star``), ``truth_hlr`` (arcsec, unconvolved; 0 for stars), ``truth_cosmos_index`` (-1: none);
``truth_undetected_yx`` (M, 2), ``truth_undetected_flux`` (M, B), ``truth_undetected_snr_i`` (M,); the
conditions ``truth_sky_sigma``, ``truth_saturation`` (counts), ``truth_psf_fwhm`` (arcsec) (B,),
``truth_moffat_beta``, ``truth_pixel_scale``, ``truth_zero_point``; ``truth_set``, ``truth_version``.

File names are integer parent ids ``<prefix><seed:09d><index:06d>.npz`` (prefix 1: large, 2: bright). Blend
``i`` is drawn from child ``i`` of ``SeedSequence(seed)``, so a longer set starts with the same files; a seed
gives the same bytes on a given platform and library versions.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import galsim
import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.special import gammainc

from hpcblend.errors import ConfigError
from hpcblend.io.blend_data import BlendData
from hpcblend.io.blend_files import blend_arrays
from hpcblend.io.blend_read import DEFAULT_BANDS
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, mask_bits
from hpcblend.io.npz import atomic_write, npz_bytes
from hpcblend.simulate.cosmos import COSMOS_PIXEL_SCALE, load_cosmos_catalog
from hpcblend.simulate.inject import PIXEL_SCALE, ZERO_POINT, load_cosmos_sample
from hpcblend.simulate.known_shapes import known_shape_fluxes
from hpcblend.simulate.tract import HSC_PSF_FWHM, draw_psf_image
from hpcblend.simulate.tract_catalog import BULGE_COLORS, DISK_COLORS, counts_of_mag, draw_catalog

__all__ = ["HSC_DEEP_DEPTH", "SATURATION_MAG", "DETECTION_SNR", "COSMOS_MAX_EXCESS", "FOOTPRINT_SNR", "FOOTPRINT_GROW",
           "TRUTH_VERSION", "make_large_blends", "make_bright_galaxy_blends"]

#: 5-sigma point-source depths (AB mag) of the sets: HSC-deep-like, i = 26.0.
HSC_DEEP_DEPTH: dict = {"g": 26.5, "r": 26.3, "i": 26.0, "z": 25.4, "y": 24.6}
#: i magnitude of a centred point source whose peak pixel reaches saturation (every band alike).
SATURATION_MAG: float = 18.0
#: A source gets a peak when its detection S/N (PSF-filtered, i band) exceeds this.
DETECTION_SNR: float = 5.0
#: Footprint threshold, in sigma of the PSF-filtered noisy i image.
FOOTPRINT_SNR: float = 2.0
#: Pixels the footprint is grown by.
FOOTPRINT_GROW: int = 2
#: A COSMOS galaxy is not used when its unit-flux image at HSC resolution encloses more than 1 + this.
COSMOS_MAX_EXCESS: float = 0.02
#: Version of the ``truth_*`` members (2: ``truth_flux_known_shape`` added).
TRUTH_VERSION: int = 2

_BANDS = DEFAULT_BANDS
_I = _BANDS.index("i")
_PSF_SIZE = 41
_MAX_STAMP_RADIUS = 160
_SET_PREFIX = {"large": 1, "bright": 2}
_SAT_BIT, _DETECTED_BIT, _BAD_BITS = mask_bits("SAT"), mask_bits("DETECTED"), mask_bits(DEFAULT_BAD_MASK_PLANES)


#: One blend's conditions: (H, W), per band PSF FWHM (arcsec), Moffat beta, PSF profiles and images (B, P, P),
#: sky sigma and saturation level (counts).
_Field = namedtuple("_Field", "shape fwhm beta psf_profiles psf_images sigma saturation")
#: The COSMOS sample: RealGalaxyCatalog, fit table, colours {band: band - i}, hlr (arcsec), i mag, usable rows.
_Cosmos = namedtuple("_Cosmos", "rgc fit colours hlr mag_i good")


@dataclass
class _Source:
    """One source: ``profile(b)`` the unconvolved unit-flux GalSim profile of band b (None: a star)."""

    kind: str
    y: float
    x: float
    flux: np.ndarray
    hlr: float
    extent: float
    profile: Optional[Callable[[int], galsim.GSObject]]
    cosmos_index: int = -1


def _load_cosmos(cosmos_dir) -> Optional[_Cosmos]:
    """The sample of ``cosmos_dir`` (None: None), each galaxy screened at HSC resolution (module docstring)."""
    if cosmos_dir is None:
        return None
    rgc, colours = load_cosmos_sample(os.fspath(cosmos_dir))
    fit = load_cosmos_catalog(os.fspath(cosmos_dir))[1]
    psf = galsim.Moffat(beta=3.5, fwhm=HSC_PSF_FWHM["i"])
    order = np.argsort(np.hypot(*np.mgrid[-80:81, -80:81]).ravel(), kind="stable")
    good = np.zeros(rgc.nobjects, dtype=bool)
    for k in range(rgc.nobjects):
        img = galsim.Convolve(galsim.RealGalaxy(rgc, index=k, flux=1.0), psf).drawImage(
            nx=161, ny=161, scale=PIXEL_SCALE).array.ravel()
        good[k] = np.cumsum(img[order]).max() <= 1.0 + COSMOS_MAX_EXCESS
    return _Cosmos(rgc, fit, colours, np.asarray(fit["flux_radius"], dtype=np.float64) * COSMOS_PIXEL_SCALE,
                   np.asarray(fit["HSC_i"], dtype=np.float64), good)


def _field(rng: np.random.Generator, shape, psf_scale: float) -> _Field:
    """PSFs (Moffat, per-band FWHM jittered, times ``psf_scale``), sky sigma from :data:`HSC_DEEP_DEPTH`, saturation."""
    fwhm = np.clip(np.array([HSC_PSF_FWHM[b] for b in _BANDS]) + rng.uniform(-0.06, 0.06, len(_BANDS)), 0.58, 0.85)
    fwhm = fwhm * float(psf_scale)
    beta = float(rng.uniform(2.8, 4.0))
    profiles = [galsim.Moffat(beta=beta, fwhm=float(f)) for f in fwhm]
    wcs = galsim.PixelScale(PIXEL_SCALE)
    images = np.stack([draw_psf_image(p, _PSF_SIZE, wcs) for p in profiles])
    n_eff = 1.0 / np.sum(images ** 2, axis=(1, 2))
    sigma = np.array([counts_of_mag(HSC_DEEP_DEPTH[b], ZERO_POINT) for b in _BANDS]) / (5.0 * np.sqrt(n_eff))
    saturation = counts_of_mag(SATURATION_MAG, ZERO_POINT) * images.max(axis=(1, 2))
    return _Field(tuple(shape), fwhm, beta, profiles, images, sigma, saturation)


def _bulge_disk(hb: float, hd: float, g: float, beta: float, bulge_flux, disk_flux) -> Callable:
    """``profile(b)``: unit-flux sheared de Vaucouleurs bulge + exponential disk (the tract model's galaxy)."""
    shear_d = galsim.Shear(g=float(g), beta=float(beta) * galsim.radians)
    shear_b = galsim.Shear(g=float(g) / 2, beta=float(beta) * galsim.radians)
    bulge = galsim.Sersic(4, half_light_radius=float(hb), trunc=10.0 * float(hb), flux_untruncated=False).shear(shear_b)
    disk = galsim.Exponential(half_light_radius=float(hd)).shear(shear_d)
    bf, df = np.asarray(bulge_flux, dtype=np.float64), np.asarray(disk_flux, dtype=np.float64)
    return lambda b: galsim.Add([bulge.withFlux(float(bf[b])), disk.withFlux(float(df[b]))]).withFlux(1.0)


def _cosmos_profile(rgc, index: int, rotation: float, dilation: float = 1.0) -> Callable:
    """``profile(b)``: the unit-flux COSMOS RealGalaxy (HST PSF deconvolved), dilated and rotated (same in every band)."""
    real = galsim.RealGalaxy(rgc, index=int(index), flux=1.0).dilate(float(dilation)).rotate(
        float(rotation) * galsim.degrees)
    return lambda b: real


def _unit_stamps(src: _Source, field: _Field) -> tuple:
    """(y0, x0, stamps (B, h, w) float64): each band's unit-flux image of ``src``, clipped to the blend's box."""
    h, w = field.shape
    psf_r = math.ceil(4.0 * float(field.fwhm.max()) / PIXEL_SCALE)
    if src.profile is None:
        bright = max(0.0, math.log10(max(float(src.flux.max()), 1.0) / (50.0 * float(field.sigma.min()))))
        r = int(min(_MAX_STAMP_RADIUS, math.ceil(psf_r * (1.5 + bright))))
    else:
        r = int(min(_MAX_STAMP_RADIUS, math.ceil(src.extent) + psf_r))
    iy, ix = int(math.floor(src.y + 0.5)), int(math.floor(src.x + 0.5))
    y0, x0 = max(iy - r, 0), max(ix - r, 0)
    y1, x1 = min(iy + r + 1, h), min(ix + r + 1, w)
    out = np.zeros((len(_BANDS), max(y1 - y0, 0), max(x1 - x0, 0)))
    if y1 <= y0 or x1 <= x0:
        return y0, x0, out
    centre = galsim.PositionD(src.x + 1.0, src.y + 1.0)
    for b in range(len(_BANDS)):
        stamp = galsim.ImageD(galsim.BoundsI(ix - r + 1, ix + r + 1, iy - r + 1, iy + r + 1), scale=PIXEL_SCALE)
        obj = field.psf_profiles[b] if src.profile is None else galsim.Convolve(src.profile(b), field.psf_profiles[b])
        obj.withFlux(1.0).drawImage(image=stamp, center=centre)
        out[b] = stamp.array[y0 - (iy - r):y1 - (iy - r), x0 - (ix - r):x1 - (ix - r)]
    return y0, x0, out


def _snr(unit: np.ndarray, flux: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Optimal S/N per band of a source of ``flux`` whose unit stamps are ``unit`` (B, h, w)."""
    return flux * np.sqrt(np.sum(unit ** 2, axis=(1, 2))) / sigma


def _detection_snr(stamp: tuple, flux_i: float, peak: tuple, field: _Field) -> float:
    """The i-band noiseless image filtered with the i PSF at ``peak`` (y, x), over the filtered noise sigma."""
    (y0, x0, unit), psf = stamp, field.psf_images[_I]
    c, img, py, px = psf.shape[0] // 2, unit[_I], peak[0] - y0, peak[1] - x0
    ys, ye = max(py - c, 0), min(py + c + 1, img.shape[0])
    xs, xe = max(px - c, 0), min(px + c + 1, img.shape[1])
    if ye <= ys or xe <= xs:
        return 0.0
    part = img[ys:ye, xs:xe] * psf[ys - py + c:ye - py + c, xs - px + c:xe - px + c]
    return float(flux_i * part.sum() / (field.sigma[_I] * math.sqrt(float(np.sum(psf ** 2)))))


def _select_peaks(sources: list, stamps: list, field: _Field) -> tuple:
    """(indices of the detected sources in peak order, detection S/N per source)."""
    det = np.zeros(len(sources))
    pix = np.zeros((len(sources), 2), dtype=np.int64)
    for k, (s, st) in enumerate(zip(sources, stamps)):
        pix[k] = (int(math.floor(s.y + 0.5)), int(math.floor(s.x + 0.5)))
        det[k] = _detection_snr(st, float(s.flux[_I]), tuple(pix[k]), field)
    taken, keep = set(), []
    for k in np.argsort(-det, kind="stable"):
        key = tuple(int(v) for v in pix[k])
        if det[k] > DETECTION_SNR and key not in taken:
            taken.add(key)
            keep.append(int(k))
    return np.asarray(keep, dtype=np.int64), det


def _footprint(image_i: np.ndarray, field: _Field, peaks: np.ndarray) -> np.ndarray:
    """The parent footprint (H, W) bool, True inside: see the module docstring."""
    psf = field.psf_images[_I]
    signif = fftconvolve(image_i.astype(np.float64), psf[::-1, ::-1], mode="same")
    signif /= field.sigma[_I] * math.sqrt(float(np.sum(psf ** 2)))
    labels, _ = ndimage.label(signif > FOOTPRINT_SNR)
    keep = np.unique(labels[peaks[:, 0], peaks[:, 1]]) if len(peaks) else np.zeros(0, dtype=int)
    fp = np.isin(labels, keep[keep > 0])
    fp[peaks[:, 0], peaks[:, 1]] = True
    disk = np.hypot(*np.mgrid[-FOOTPRINT_GROW:FOOTPRINT_GROW + 1, -FOOTPRINT_GROW:FOOTPRINT_GROW + 1]) <= FOOTPRINT_GROW
    return ndimage.binary_dilation(fp, structure=disk)


def _nearest(yx: np.ndarray, others: np.ndarray, self_in_others: bool) -> np.ndarray:
    """Distance (arcsec) from each row of ``yx`` to the nearest row of ``others`` (itself excluded); inf if none."""
    if len(yx) == 0 or len(others) == 0:
        return np.full(len(yx), np.inf)
    d = np.hypot(yx[:, None, 0] - others[None, :, 0], yx[:, None, 1] - others[None, :, 1])
    if self_in_others:
        d[d == 0] = np.inf  # itself (two sources never share an exact float centre)
    return d.min(axis=1) * PIXEL_SCALE


def _truth(sources, stamps, field, peaks, det, noisy_mask, known) -> dict:
    """The ``truth_*`` members (see the module docstring)."""
    yx = np.array([[s.y, s.x] for s in sources]).reshape(-1, 2)
    flux = np.array([s.flux for s in sources]).reshape(-1, len(_BANDS))
    flux_image = np.array([st[2].sum(axis=(1, 2)) for st in stamps]).reshape(-1, len(_BANDS)) * flux
    snr = np.array([_snr(st[2], s.flux, field.sigma) for s, st in zip(sources, stamps)]).reshape(-1, len(_BANDS))
    sat, masked = np.zeros(len(sources), dtype=bool), np.zeros(len(sources))
    bad_i = (noisy_mask[_I] & _BAD_BITS) != 0
    for k, (s, (y0, x0, unit)) in enumerate(zip(sources, stamps)):
        if unit.size:
            sat[k] = bool(np.any(unit.max(axis=(1, 2)) * s.flux >= field.saturation))
            img, tot = unit[_I], unit[_I].sum()
            masked[k] = float((img * bad_i[y0:y0 + img.shape[0], x0:x0 + img.shape[1]]).sum() / tot) if tot > 0 else 0.0
    undet = np.setdiff1d(np.arange(len(sources)), peaks)
    return {
        "truth_flux": flux[peaks], "truth_flux_image": flux_image[peaks], "truth_flux_known_shape": known[peaks],
        "truth_yx": yx[peaks],
        "truth_snr": snr[peaks], "truth_snr_i": snr[peaks, _I], "truth_det_snr": det[peaks],
        "truth_nn_arcsec": _nearest(yx[peaks], yx[peaks], True),
        "truth_nn_all_arcsec": _nearest(yx[peaks], yx, True),
        "truth_is_star": np.array([sources[k].kind == "star" for k in peaks], dtype=bool),
        "truth_saturated": sat[peaks], "truth_masked_fraction": masked[peaks],
        "truth_kind": np.array([sources[k].kind for k in peaks], dtype="U6"),
        "truth_hlr": np.array([sources[k].hlr for k in peaks], dtype=np.float64),
        "truth_cosmos_index": np.array([sources[k].cosmos_index for k in peaks], dtype=np.int64),
        "truth_undetected_yx": yx[undet], "truth_undetected_flux": flux[undet],
        "truth_undetected_snr_i": snr[undet, _I],
        "truth_sky_sigma": field.sigma.astype(np.float64), "truth_saturation": field.saturation.astype(np.float64),
        "truth_psf_fwhm": field.fwhm.astype(np.float64), "truth_moffat_beta": np.float64(field.beta),
        "truth_pixel_scale": np.float64(PIXEL_SCALE), "truth_zero_point": np.float64(ZERO_POINT),
        "truth_version": np.int64(TRUTH_VERSION),
    }


def _write_blend(path: str, blend_id: int, set_name: str, sources: list, stamps: list, field: _Field,
                 noise_rng: np.random.Generator, noise: bool) -> str:
    """Sum the stamps, add noise, saturate, place peaks and the footprint, write the npz with its truth."""
    nb, (h, w) = len(_BANDS), field.shape
    noiseless = np.zeros((nb, h, w))
    for s, (y0, x0, unit) in zip(sources, stamps):
        noiseless[:, y0:y0 + unit.shape[1], x0:x0 + unit.shape[2]] += unit * s.flux[:, None, None]
    images = noiseless.astype(np.float32)
    if noise:
        images += noise_rng.standard_normal((nb, h, w), dtype=np.float32) * field.sigma[:, None, None].astype(np.float32)
    sat_level = field.saturation[:, None, None].astype(np.float32)
    over = images >= sat_level
    images = np.where(over, sat_level, images)
    mask = np.where(over, np.int32(_SAT_BIT), np.int32(0)).astype(np.int32)
    variance = np.broadcast_to((field.sigma ** 2)[:, None, None], images.shape).astype(np.float32)
    order, det = _select_peaks(sources, stamps, field)
    peaks = np.array([[math.floor(sources[k].y + 0.5), math.floor(sources[k].x + 0.5)] for k in order],
                     dtype=np.int64).reshape(-1, 2)
    footprint = _footprint(images[_I], field, peaks)
    mask[:, footprint] |= np.int32(_DETECTED_BIT)
    known = known_shape_fluxes(images, variance, footprint[None] & ((mask & _BAD_BITS) == 0), stamps)
    blend = BlendData(id=int(blend_id), source=path, bands=_BANDS, images=images, variance=variance, mask=mask,
                      footprint=footprint, psfs=field.psf_images, peaks=peaks)
    arrays = blend_arrays(blend)
    arrays.update(_truth(sources, stamps, field, order, det, mask, known))
    arrays["truth_set"] = np.array(set_name)
    atomic_write(path, npz_bytes(arrays))
    return path


def _check(n_blends: int, seed: int, ranges: dict, psf_scale: float) -> None:
    if not (isinstance(psf_scale, (int, float, np.floating)) and 0.5 <= psf_scale <= 3.0):
        raise ConfigError(f"psf_scale: expected a number in [0.5, 3], got {psf_scale!r}")
    if not (isinstance(n_blends, (int, np.integer)) and 0 <= n_blends < 10 ** 6):
        raise ConfigError(f"n_blends: expected an integer in [0, 1e6), got {n_blends!r}")
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 10 ** 9):
        raise ConfigError(f"seed: expected an integer in [0, 1e9), got {seed!r}")
    for name, (lo, hi) in ranges.items():
        if not 0 <= lo <= hi:
            raise ConfigError(f"{name}: expected (low, high) with 0 <= low <= high, got {(lo, hi)!r}")


def _write_set(out_dir, set_name: str, n_blends: int, seed: int, shape_range, draw: Callable, noise: bool,
               psf_scale: float) -> list:
    """Blend ``i``: child ``i`` of ``SeedSequence(seed)`` -> shape, conditions, ``draw(rng, shape, field)`` ->
    (sources, unit stamps), written as ``<prefix><seed:09d><i:06d>.npz``; the paths in order."""
    paths = []
    for i, seq in enumerate(np.random.SeedSequence(int(seed)).spawn(int(n_blends))):
        cat_seq, noise_seq = seq.spawn(2)
        rng = np.random.default_rng(cat_seq)
        shape = tuple(int(v) for v in rng.integers(shape_range[0], shape_range[1] + 1, 2))
        field = _field(rng, shape, psf_scale)
        sources, stamps = draw(rng, shape, field)
        blend_id = _SET_PREFIX[set_name] * 10 ** 15 + int(seed) * 10 ** 6 + i
        path = os.path.join(os.fspath(out_dir), f"{blend_id}.npz")
        paths.append(_write_blend(path, blend_id, set_name, sources, stamps, field,
                                  np.random.default_rng(noise_seq), noise))
    return paths


def _catalog_sources(cat, rgc) -> list:
    """:class:`_Source` rows of a :class:`~hpcblend.simulate.tract_catalog.TractCatalog` (its model, its numbers)."""
    out = []
    for k in range(cat.n):
        flux = np.array([cat.flux[b][k] for b in _BANDS], dtype=np.float64)
        flux = np.where(np.isfinite(flux), flux, 0.0)
        kind, y, x, hlr = str(cat.kinds[k]), float(cat.ys[k]), float(cat.xs[k]), float(cat.hlr[k])
        if kind == "galaxy":
            g, hb, hd = float(cat.shear_g[k]), float(cat.bulge_hlr[k]), float(cat.disk_hlr[k])
            stretch = math.sqrt((1 + g) / (1 - g))
            prof = _bulge_disk(hb, hd, g, float(cat.shear_beta[k]), [cat.bulge_flux[b][k] for b in _BANDS],
                               [cat.disk_flux[b][k] for b in _BANDS])
            out.append(_Source(kind, y, x, flux, hlr, max(10 * hb, 5 * hd) * stretch / PIXEL_SCALE, prof))
        elif kind == "cosmos":
            prof = _cosmos_profile(rgc, int(cat.cosmos_index[k]), float(cat.cosmos_rotation[k - cat.n_param]))
            out.append(_Source(kind, y, x, flux, hlr, 6.0 * max(hlr, 0.1) / PIXEL_SCALE, prof,
                               int(cat.cosmos_index[k])))
        else:
            out.append(_Source("star", y, x, flux, 0.0, 0.0, None))
    return out


def _stars(rng, shape, n: int, mag_range, margin: float) -> list:
    """``n`` stars (the first of a dense draw of :func:`draw_catalog`: iid positions, i magnitudes, stellar-locus colours)."""
    if n <= 0:
        return []
    area = shape[0] * shape[1] * (PIXEL_SCALE / 60.0) ** 2
    cat = draw_catalog(rng, shape, _BANDS, pixel_scale=PIXEL_SCALE, density=0.0,
                       star_density=(10.0 * n + 10.0) / area, cosmos=None, cosmos_fraction=0.0, margin=margin,
                       zero_point=ZERO_POINT, galaxy_mag_range=(19.0, 26.5), galaxy_mag_slope=0.33,
                       star_mag_range=mag_range, star_mag_slope=0.1)
    return _catalog_sources(cat, None)[:n]


def _large_sources(rng, shape, cosmos, n_sources_range, n_saturated_range) -> list:
    """Galaxies and faint stars of one large blend (:func:`draw_catalog`), then its saturated stars."""
    area = shape[0] * shape[1] * (PIXEL_SCALE / 60.0) ** 2
    n_target = float(rng.uniform(*n_sources_range))
    n_sat = int(rng.integers(n_saturated_range[0], n_saturated_range[1] + 1))
    cat = draw_catalog(rng, shape, _BANDS, pixel_scale=PIXEL_SCALE, density=n_target / area,
                       star_density=2.0 / area, cosmos=None if cosmos is None else (cosmos.rgc, cosmos.fit),
                       cosmos_fraction=1.0, margin=0.0, zero_point=ZERO_POINT, galaxy_mag_range=(19.0, 26.5),
                       galaxy_mag_slope=0.33, star_mag_range=(19.0, 25.0), star_mag_slope=0.1)
    for k in np.flatnonzero(cat.cosmos_index >= 0):  # an unusable galaxy -> the usable one closest in i mag
        j = int(cat.cosmos_index[k])
        if not cosmos.good[j]:
            j = int(np.flatnonzero(cosmos.good)[np.argmin(np.abs(cosmos.mag_i[cosmos.good] - cosmos.mag_i[j]))])
            cat.cosmos_index[k], cat.hlr[k] = j, cosmos.hlr[j]
            for b in _BANDS:
                cat.flux[b][k] = counts_of_mag(float(cosmos.fit[f"HSC_{b}"][j]), ZERO_POINT)
    sources = _catalog_sources(cat, cosmos.rgc if cosmos is not None else None)
    return sources + _stars(rng, shape, n_sat, (15.0, 17.5), 8.0)


def make_large_blends(out_dir: Union[str, os.PathLike], n_blends: int, seed: int,
                      cosmos_dir: Optional[Union[str, os.PathLike]] = None, *,
                      shape_range: Tuple[int, int] = (200, 340), n_sources_range: Tuple[float, float] = (30, 100),
                      n_saturated_range: Tuple[int, int] = (1, 3), noise: bool = True, psf_scale: float = 1.0) -> list:
    """Write ``n_blends`` crowded HSC-like blends with saturated stars and their truth (module docstring).

    Parameters
    ----------
    out_dir : str or path
        Directory (created); files ``1<seed:09d><i:06d>.npz``.
    n_blends, seed : int
        How many; the seed, in [0, 1e9) (the same seed writes the same bytes).
    cosmos_dir : str or path, optional
        GalSim COSMOS sample (``../shared/data/cosmos``): galaxies are real COSMOS morphologies;
        without it, parametric bulge + disk galaxies.
    shape_range : (int, int)
        Height and width, each uniform in this range (pixels).
    n_sources_range : (float, float)
        Mean number of galaxies per blend, uniform in this range (the count is Poisson around it).
    n_saturated_range : (int, int)
        Saturated stars per blend, uniform integers in this range (inclusive).
    noise : bool
        Add sky noise (False: noiseless images, for checks; saturation still applies).
    psf_scale : float
        Every PSF FWHM times this, in [0.5, 3] (other seeing; 1.6: 0.93-1.36").

    Returns
    -------
    list of str
        The files written, in order.

    Raises
    ------
    ConfigError
        A bad count, seed or range; :class:`InputError` when ``cosmos_dir`` lacks the sample.
    """
    _check(n_blends, seed, {"shape_range": shape_range, "n_sources_range": n_sources_range,
                            "n_saturated_range": n_saturated_range}, psf_scale)
    cosmos = _load_cosmos(cosmos_dir)

    def draw(rng, shape, field):
        sources = _large_sources(rng, shape, cosmos, n_sources_range, n_saturated_range)
        return sources, [_unit_stamps(s, field) for s in sources]

    return _write_set(out_dir, "large", n_blends, seed, shape_range, draw, noise, psf_scale)


def _bulge_disk_hlr(hb: float, bt: float) -> float:
    """Half-light radius of a circular bulge (GalSim's truncated de Vaucouleurs of half-light radius ``hb``,
    truncated at 10 ``hb``) + exponential disk of half-light radius 1, bulge fraction ``bt`` (bisection)."""
    r0 = galsim.Sersic(4, half_light_radius=hb, trunc=10.0 * hb, flux_untruncated=False).scale_radius
    rd = 1.0 / 1.678346990016661

    def enclosed(r):
        bulge = gammainc(8.0, (min(r, 10.0 * hb) / r0) ** 0.25) / gammainc(8.0, (10.0 * hb / r0) ** 0.25)
        return bt * bulge + (1.0 - bt) * (1.0 - (1.0 + r / rd) * math.exp(-r / rd))

    lo, hi = 0.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if enclosed(mid) < 0.5 else (lo, mid)
    return 0.5 * (lo + hi)


def _parametric_galaxy(rng, hlr: float, y: float, x: float) -> _Source:
    """A bulge + disk galaxy of half-light radius ``hlr`` (arcsec, circular i band); ``flux`` is its SED (i = 1)."""
    bt = float(rng.beta(1.0, 2.5))
    hb_over_hd = float(rng.uniform(0.3, 0.6))
    g, beta = float(np.clip(rng.rayleigh(0.25), 0.0, 0.7)), float(rng.uniform(0.0, np.pi))
    nb = len(_BANDS)
    bf = bt * 10.0 ** (-0.4 * (np.array([BULGE_COLORS[b] for b in _BANDS]) + rng.normal(0, 0.05, nb)))
    df = (1 - bt) * 10.0 ** (-0.4 * (np.array([DISK_COLORS[b] for b in _BANDS]) + rng.normal(0, 0.05, nb)))
    hd = hlr / _bulge_disk_hlr(hb_over_hd, float(bf[_I] / (bf[_I] + df[_I])))
    prof = _bulge_disk(hb_over_hd * hd, hd, g, beta, bf, df)
    stretch = math.sqrt((1 + g) / (1 - g))
    sed = (bf + df) / (bf[_I] + df[_I])
    return _Source("galaxy", y, x, sed, hlr, max(10 * hb_over_hd * hd, 5 * hd) * stretch / PIXEL_SCALE, prof)


def _galaxy(rng, cosmos: Optional[_Cosmos], hlr: Optional[float], y: float, x: float) -> _Source:
    """A galaxy at (y, x) whose ``flux`` is its SED (i = 1): COSMOS when ``cosmos`` is given (bright one, ``hlr``
    given: catalog i <= 23, dilated to ``hlr`` by at most 3x if possible; neighbour: catalog i <= 25.5 at its own
    size), else parametric (``hlr`` None: 0.15-0.5")."""
    if cosmos is None:
        return _parametric_galaxy(rng, float(rng.uniform(0.15, 0.5)) if hlr is None else hlr, y, x)
    pool = cosmos.good & (cosmos.mag_i <= (25.5 if hlr is None else 23.0))
    if hlr is not None:
        ok = pool & (hlr / cosmos.hlr >= 0.7) & (hlr / cosmos.hlr <= 3.0)
        pool = ok if ok.any() else pool & (cosmos.hlr == cosmos.hlr[pool].max())
    k = int(rng.choice(np.flatnonzero(pool)))
    dilation = 1.0 if hlr is None else hlr / float(cosmos.hlr[k])
    size = float(cosmos.hlr[k]) * dilation
    prof = _cosmos_profile(cosmos.rgc, k, float(rng.uniform(0.0, 360.0)), dilation)
    sed = 10.0 ** (-0.4 * np.array([cosmos.colours[b][k] for b in _BANDS]))
    return _Source("cosmos", y, x, sed, size, 6.0 * max(size, 0.1) / PIXEL_SCALE, prof, k)


def _scaled(src: _Source, field: _Field, snr_i: float) -> tuple:
    """(src with ``flux`` = SED x the i flux giving optimal S/N ``snr_i``, its unit stamps)."""
    stamps = _unit_stamps(src, field)
    per_unit = float(_snr(stamps[2], np.ones(len(_BANDS)), field.sigma)[_I])
    src.flux = src.flux / src.flux[_I] * (snr_i / per_unit)
    return src, stamps


def _bright_sources(rng, shape, field, cosmos, n_neighbours_range) -> tuple:
    """(sources, unit stamps) of one bright-galaxy blend: the galaxy first, then its neighbours."""
    h, w = shape
    cy, cx = (h - 1) / 2.0 + rng.uniform(-3, 3), (w - 1) / 2.0 + rng.uniform(-3, 3)
    main = _galaxy(rng, cosmos, float(rng.uniform(0.5, 1.5)), cy, cx)
    out = [_scaled(main, field, float(np.exp(rng.uniform(np.log(100.0), np.log(500.0)))))]
    n_nb = int(rng.integers(n_neighbours_range[0], n_neighbours_range[1] + 1))
    placed = [(cy, cx)]
    for _ in range(n_nb):
        for _try in range(50):
            sep, theta = rng.uniform(0.8, 2.0) / PIXEL_SCALE, rng.uniform(0.0, 2 * np.pi)
            y, x = cy + sep * math.sin(theta), cx + sep * math.cos(theta)
            if all(math.hypot(y - py, x - px) >= 0.6 / PIXEL_SCALE for py, px in placed[1:]):
                break
        else:
            continue
        placed.append((y, x))
        if rng.uniform() < 0.2:
            nb = _stars(rng, shape, 1, (20.0, 21.0), 0.0)[0]
            nb.y, nb.x = y, x
        else:
            nb = _galaxy(rng, cosmos, None, y, x)
        out.append(_scaled(nb, field, float(np.exp(rng.uniform(np.log(10.0), np.log(40.0))))))
    return [s for s, _ in out], [st for _, st in out]


def make_bright_galaxy_blends(out_dir: Union[str, os.PathLike], n_blends: int, seed: int,
                              cosmos_dir: Optional[Union[str, os.PathLike]] = None, *,
                              shape_range: Tuple[int, int] = (64, 100),
                              n_neighbours_range: Tuple[int, int] = (1, 3), noise: bool = True,
                              psf_scale: float = 1.0) -> list:
    """Write ``n_blends`` blends of one bright extended galaxy with faint close neighbours, and their truth.

    Parameters
    ----------
    out_dir : str or path
        Directory (created); files ``2<seed:09d><i:06d>.npz``.
    n_blends, seed : int
        How many; the seed, in [0, 1e9) (the same seed writes the same bytes).
    cosmos_dir : str or path, optional
        GalSim COSMOS sample: the galaxies are COSMOS morphologies (the bright one dilated to its
        half-light radius); without it, parametric bulge + disk.
    shape_range : (int, int)
        Height and width, each uniform in this range (pixels).
    n_neighbours_range : (int, int)
        Neighbours per blend, uniform integers in this range (inclusive; (0, 0): the galaxy alone).
    noise : bool
        Add sky noise (False: noiseless images, for checks).
    psf_scale : float
        Every PSF FWHM times this, in [0.5, 3].

    Returns
    -------
    list of str
        The files written, in order.

    Raises
    ------
    ConfigError
        A bad count, seed or range; :class:`InputError` when ``cosmos_dir`` lacks the sample.
    """
    _check(n_blends, seed, {"shape_range": shape_range, "n_neighbours_range": n_neighbours_range}, psf_scale)
    if min(shape_range) < 48:
        raise ConfigError(f"shape_range: at least 48 px for a bright galaxy and its neighbours, got {shape_range!r}")
    cosmos = _load_cosmos(cosmos_dir)
    return _write_set(out_dir, "bright", n_blends, seed, shape_range,
                      lambda rng, shape, field: _bright_sources(rng, shape, field, cosmos, n_neighbours_range), noise,
                      psf_scale)
