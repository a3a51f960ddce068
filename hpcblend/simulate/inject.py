"""Source injection into real blend files, with a truth table (issue 16).

``hpcblend inject blends IN_DIR_OR_GLOB OUT_DIR [--seed S] [--per-blend N] [--mag-range 21 25]
[--separation-range 0.5 3.0] [--morphology cosmos|sersic] [--cosmos DIR]`` adds N fake galaxies
to every input blend (the inputs are never modified) and writes, in ``OUT_DIR``, one new blend file
per input (same name, so the parent id is kept; the hsc_blends npz layout of
:func:`hpcblend.io.blends.write_blend`) and the truth table ``truth/injections.npz`` (in a sub-folder, so
``hpcblend run JOB --input OUT_DIR`` reads only the blend files).

``hpcblend inject metrics CATALOG [TRUTH]`` (:mod:`hpcblend.analysis.injection`, which parses every
``inject`` command) matches the injections to the catalog's children and prints completeness, flux
and centroid errors beside the *perfect-deblender yardstick* defined below. Injection into a tract's
coadds is :mod:`hpcblend.simulate.inject_tract`, which uses this module's galaxies, drawing, S/N and
blendedness helpers (:func:`draw_galaxy`, :func:`draw_stamp`, :func:`matched_filter_snr`,
:func:`truth_blendedness`).

Conventions and choices (documented here once)
----------------------------------------------
* Pixel scale :data:`PIXEL_SCALE` = 0.168″ (HSC). Separations are in arcsec.
* Fluxes in counts with the zero point :data:`ZERO_POINT` = 27 mag AB ↔ 1 count (HSC coadds are
  calibrated to it; checked on these files: footprint sums vs the CatSim cross-match in ``matched``
  give 27.3–27.5 per band, the excess being flux outside the footprints / unmatched sources).
* Magnitudes are drawn uniformly in ``mag_range`` in the reference band (``i``); the other bands
  get a colour: COSMOS morphology uses that galaxy's own HSC colours (``HSC_<b> - HSC_i`` of the
  COSMOS parametric-fit catalog); Sérsic uses ``t * (1.0, 0.45, 0, -0.2, -0.3)`` for grizy with
  ``t ~ U(0.2, 1.6)`` (blue to red; g−i from 0.2 to 1.6).
* Morphology: ``cosmos``: :class:`galsim.RealGalaxy` (HST F814W stamp, deconvolved by GalSim with its
  HST PSF), random rotation; ``sersic``: de Vaucouleurs bulge (hlr 0.1–0.5″) + exponential disk
  (hlr 0.25–1.0″), bulge fraction U(0, 0.6), axis ratio U(0.3, 1), random angle.
* Each band is convolved with the blend's own PSF image (``psfs``, a :class:`galsim.InterpolatedImage`
  at 0.168″; the HSC PSF already includes the pixel, so it is drawn with ``method="no_pixel"``) and
  drawn onto the blend's pixel grid at a sub-pixel position; the new peak is that position rounded.
* Noise: the variance planes of these coadds rise by only ~2.5e-6 count² per count of source
  (a fit of variance vs. image over all 164 blends, pixels > 20 σ), i.e. an effective gain
  :data:`DEFAULT_GAIN` of ~4e5 counts: the injected source gets Gaussian noise of variance
  ``stamp / gain`` (Poisson-like, consistent with the file's variance), which is added to the
  variance plane too. It is small next to the sky variance (which the injection does not change).
* Positions: a random real peak of the blend (not dropped), a separation U(sep_range) and a random
  angle; accepted if the new peak pixel is inside the image (1 px margin), bad in no band, and at
  least ``sep_range[0]`` from every real and earlier injected peak (100 tries, else fewer
  injections in that blend, recorded). The parent footprint is grown by the pixels where the band
  sum of the source exceeds 1 σ of the band-summed noise (and the peak pixel), as a detection
  footprint would merge it; otherwise a peak outside the footprint is dropped by the deblender.
* Truth flux ``flux_<b>`` is the noiseless stamp summed over the blend's image (what can be
  measured); ``flux_total_<b>`` the profile's total from the magnitude.
* Yardstick ("perfect deblender"): measured at the true position on the injected source with every
  other source's model removed. The real sources' models are unknown, so: the source's noiseless
  stamp + its own noise + a Gaussian realisation of the blend's variance plane standing in for the sky
  noise the real sources' removal would leave (drawn after the source's own noise, with ``add_noise``
  only): circular-aperture flux (radius :data:`APERTURE_RADIUS_ARCSEC`), PSF-weighted flux
  ``Σ P d / Σ P²`` (P the band's PSF at the true position), the flux-weighted centroid in the aperture,
  and the aperture's sky-noise σ from the variance plane (``yard_ap_sigma_<b>``); also
  ``yard_sum_flux_<b>``, the source alone (stamp + its own noise, no sky noise) summed over the blend (a
  floor: no aperture loss, the injected noise alone). Matched-filter S/N ``snr``, ``snr_<b>``
  (:func:`matched_filter_snr`) and ``blendedness_true`` (:func:`truth_blendedness`) complete the truth.
* Determinism: each file gets ``numpy.random.default_rng([seed, crc32(file name)])``; GalSim draws
  are noiseless; the npz bytes are deterministic (fixed zip timestamps), so the same arguments give
  byte-identical outputs.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import galsim
import numpy as np

from hpcblend.errors import InputError
from hpcblend.geometry import Box
from hpcblend.io.blends import PEAK_DROPPED, BlendData, expand_inputs, read_blend, write_blend
from hpcblend.io.npz import atomic_write, npz_bytes
from hpcblend.simulate.cosmos import COSMOS_PIXEL_SCALE, load_cosmos_catalog
from hpcblend.simulate.tract_catalog import composite_hlr  # the same bulge + disk model

__all__ = [
    "PIXEL_SCALE",
    "ZERO_POINT",
    "DEFAULT_GAIN",
    "APERTURE_RADIUS_ARCSEC",
    "TRUTH_FILE",
    "mag_to_flux",
    "CosmosSample",
    "Galaxy",
    "load_cosmos_galaxies",
    "load_cosmos_sample",
    "ref_band",
    "draw_galaxy",
    "psf_profiles",
    "draw_stamp",
    "matched_filter_snr",
    "truth_blendedness",
    "inject_blend",
    "inject_blends",
    "read_truth",
]

#: HSC pixel scale, arcsec per pixel.
PIXEL_SCALE: float = 0.168
#: AB magnitude of 1 count (HSC coadd calibration).
ZERO_POINT: float = 27.0
#: Effective gain per band (counts per "Poisson count"), from the variance-vs-image slope of the files.
DEFAULT_GAIN: dict = {"g": 2.3e6, "r": 3.9e5, "i": 4.3e5, "z": 3.2e5, "y": 4.2e5}
#: Radius of the yardstick's circular aperture, arcsec.
APERTURE_RADIUS_ARCSEC: float = 1.5
#: Path of the truth table inside OUT_DIR (a sub-folder, so ``--input OUT_DIR`` sees only the blend files).
TRUTH_FILE: str = os.path.join("truth", "injections.npz")

_SERSIC_COLOUR = {"g": 1.0, "r": 0.45, "i": 0.0, "z": -0.2, "y": -0.3}
_MAX_TRIES = 100


def mag_to_flux(mag, zero_point: float = ZERO_POINT):
    """Counts of an AB magnitude: ``10**(-0.4 (mag - zero_point))``.

    Parameters
    ----------
    mag : float or ndarray
        AB magnitude(s).
    zero_point : float
        Magnitude of 1 count (default :data:`ZERO_POINT`, HSC coadds).

    Returns
    -------
    float or ndarray
        Flux in counts (float64).
    """
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - float(zero_point)))


class CosmosSample(NamedTuple):
    """The COSMOS sample as injection uses it (:func:`load_cosmos_galaxies`).

    Attributes
    ----------
    rgc : galsim.RealGalaxyCatalog
    colours : dict of str to ndarray (N,)
        ``HSC_<b> - HSC_i`` (mag) per galaxy, 0 where a magnitude is missing.
    hlr : ndarray (N,)
        Half-light radius (arcsec): the fit catalog's ``flux_radius`` × 0.03″, as in the simulated tracts.
    """

    rgc: object
    colours: dict
    hlr: np.ndarray


@dataclass(frozen=True)
class Galaxy:
    """One fake galaxy drawn by :func:`draw_galaxy`.

    Attributes
    ----------
    profile : galsim.GSObject
        Unit total flux, unconvolved (arcsec units).
    colour : ndarray (B,)
        Magnitude offsets per band: band ``b`` gets ``m_ref + colour[b] - colour[ref]`` (mag).
    cosmos_index : int
        Row of the COSMOS sample, -1 for Sérsic.
    hlr : float
        Half-light radius of the unconvolved profile, arcsec (COSMOS: ``flux_radius``; Sérsic: the circular
        bulge + disk's, :func:`hpcblend.simulate.tract_catalog.composite_hlr`).
    bulge_fraction : float
        Bulge-to-total flux (NaN for COSMOS).
    """

    profile: object
    colour: np.ndarray
    cosmos_index: int
    hlr: float
    bulge_fraction: float


def load_cosmos_galaxies(cosmos_dir: str) -> CosmosSample:
    """The GalSim COSMOS sample: a RealGalaxyCatalog, HSC colours and sizes per galaxy.

    Parameters
    ----------
    cosmos_dir : str
        Directory with GalSim's ``real_galaxy_catalog_26_extension_example*.fits`` files
        (``../shared/data/cosmos``).

    Returns
    -------
    CosmosSample
        The catalog, ``{band: ndarray (N,)}`` of ``HSC_<b> - HSC_i`` (mag) and the half-light radii
        (arcsec), in the catalog's row order (matched by ``IDENT``).

    Raises
    ------
    InputError
        See :func:`hpcblend.simulate.cosmos.load_cosmos_catalog`.
    """
    rgc, fit = load_cosmos_catalog(cosmos_dir)
    mags = {b: np.asarray(fit[f"HSC_{b}"], dtype=np.float64) for b in "grizy"}
    colours = {b: mags[b] - mags["i"] for b in mags}
    for b in colours:  # a missing magnitude gives no colour
        colours[b] = np.where(np.isfinite(colours[b]) & (np.abs(colours[b]) < 5), colours[b], 0.0)
    hlr = np.asarray(fit["flux_radius"], dtype=np.float64) * COSMOS_PIXEL_SCALE
    return CosmosSample(rgc, colours, hlr)


def load_cosmos_sample(cosmos_dir: str) -> tuple:
    """``(rgc, colours)`` of :func:`load_cosmos_galaxies` (the pair its callers unpack).

    Raises
    ------
    InputError
        See :func:`hpcblend.simulate.cosmos.load_cosmos_catalog`.
    """
    sample = load_cosmos_galaxies(cosmos_dir)
    return sample.rgc, sample.colours


def ref_band(bands) -> int:
    """Index of the reference band (``i``; the middle band when there is no ``i``)."""
    return list(bands).index("i") if "i" in bands else len(bands) // 2


def draw_galaxy(rng, morphology: str, cosmos: Optional[CosmosSample], bands) -> Galaxy:
    """Draw one fake galaxy's morphology and colour (the conventions in the module docstring).

    Parameters
    ----------
    rng : numpy.random.Generator
    morphology : {"cosmos", "sersic"}
    cosmos : CosmosSample, optional
        Required for ``"cosmos"`` (a :func:`load_cosmos_sample` pair works too; ``hlr`` is then NaN).
    bands : sequence of str

    Returns
    -------
    Galaxy
    """
    if morphology == "cosmos":
        rgc, colours = cosmos[0], cosmos[1]
        k = int(rng.integers(rgc.nobjects))
        gal = galsim.RealGalaxy(rgc, index=k, flux=1.0).rotate(float(rng.uniform(0, 360)) * galsim.degrees)
        colour = np.array([colours[b][k] if b in colours else 0.0 for b in bands])
        hlr = float(cosmos.hlr[k]) if isinstance(cosmos, CosmosSample) else float("nan")
        return Galaxy(gal, colour, k, hlr, float("nan"))
    hb, hd = rng.uniform(0.1, 0.5), rng.uniform(0.25, 1.0)
    fb, q, beta = rng.uniform(0.0, 0.6), rng.uniform(0.3, 1.0), rng.uniform(0, 180)
    t = rng.uniform(0.2, 1.6)
    bulge = galsim.DeVaucouleurs(half_light_radius=hb, trunc=10 * hb, flux=fb)
    disk = galsim.Exponential(half_light_radius=hd, flux=1.0 - fb)
    gal = galsim.Add([bulge, disk]).shear(q=q, beta=beta * galsim.degrees)
    colour = np.array([t * _SERSIC_COLOUR.get(b, 0.0) for b in bands])
    hlr = float(composite_hlr(np.array([hb]), np.array([hd]), np.array([fb]))[0])
    return Galaxy(gal, colour, -1, hlr, float(fb))


def psf_profiles(psfs: np.ndarray, scale: float = PIXEL_SCALE) -> list:
    """One :class:`galsim.InterpolatedImage` (flux 1, ``scale`` ″/px) per band PSF image (B, Ph, Pw)."""
    return [galsim.InterpolatedImage(galsim.ImageD(np.ascontiguousarray(p, dtype=np.float64), scale=scale))
            for p in psfs]


def draw_stamp(profile, psf, box: Box, y: float, x: float, scale: float = PIXEL_SCALE) -> np.ndarray:
    """Draw ``profile`` (None: the PSF alone) convolved with ``psf`` at (y, x) on the pixels of ``box``.

    Parameters
    ----------
    profile : galsim.GSObject or None
        The source (its flux is the stamp's flux before truncation by the box).
    psf : galsim.GSObject
        The band's PSF, pixel included (drawn with ``method="no_pixel"``).
    box : Box
        The pixels drawn, in the frame of ``y``, ``x``.
    y, x : float
        Position of the profile's nominal centre (pixels, 0-based, pixel centres at integers).
    scale : float
        Pixel scale, arcsec.

    Returns
    -------
    ndarray, shape box.shape, float64
    """
    obj = psf if profile is None else galsim.Convolve(profile, psf)
    bounds = galsim.BoundsI(box.x0 + 1, box.x0 + box.width, box.y0 + 1, box.y0 + box.height)
    img = galsim.ImageD(bounds, scale=scale)
    obj.drawImage(image=img, method="no_pixel", center=galsim.PositionD(x + 1.0, y + 1.0))
    return img.array.copy()


def _draw(profile, psf, shape, y: float, x: float) -> np.ndarray:
    """Draw ``profile`` (None: the PSF alone) convolved with ``psf`` at (y, x) on an (H, W) grid, float64."""
    return draw_stamp(profile, psf, Box((0, 0), tuple(shape)), y, x)


def matched_filter_snr(stamp: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Matched-filter S/N of a noiseless source per band: ``sqrt(Σ s² / V)`` over pixels with a finite V > 0.

    Parameters
    ----------
    stamp : ndarray, shape (B, h, w)
        The noiseless source (counts).
    variance : ndarray, shape (B, h, w)
        The image's variance there (counts²).

    Returns
    -------
    ndarray, shape (B,)
        The S/N of the optimal (true-profile) linear flux estimate; ``sqrt(Σ_b S/N_b²)`` is the multi-band one.
    """
    var = np.asarray(variance, dtype=np.float64)
    good = np.isfinite(var) & (var > 0)
    s2 = np.where(good, np.asarray(stamp, dtype=np.float64) ** 2 / np.where(good, var, 1.0), 0.0)
    return np.sqrt(s2.sum(axis=(1, 2)))


def truth_blendedness(source: np.ndarray, scene: np.ndarray) -> float:
    """``1 − Σ s² / Σ s S`` of a source's band-summed image ``s`` in the scene ``S`` (both (h, w), same pixels).

    The catalog's blendedness (Bosch et al. 2018, Eq. 21) computed from the truth; NaN when ``Σ s S <= 0``.
    """
    s = np.asarray(source, dtype=np.float64)
    den = float((s * np.asarray(scene, dtype=np.float64)).sum())
    return 1.0 - float((s * s).sum()) / den if den > 0 else float("nan")


def _place(rng, blend: BlendData, taken: list, sep_range, bad_any: np.ndarray):
    """(y, x, host peak index, separation px) of one accepted position, or None."""
    h, w = blend.shape
    hosts = np.flatnonzero((blend.peak_flags & PEAK_DROPPED) == 0)
    if len(hosts) == 0:
        return None
    min_px = sep_range[0] / PIXEL_SCALE
    for _ in range(_MAX_TRIES):
        k = int(hosts[rng.integers(len(hosts))])
        d = rng.uniform(*sep_range) / PIXEL_SCALE
        th = rng.uniform(0, 2 * np.pi)
        y, x = blend.peaks[k, 0] + d * np.sin(th), blend.peaks[k, 1] + d * np.cos(th)
        py, px = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        if not (1 <= py < h - 1 and 1 <= px < w - 1) or bad_any[py, px]:
            continue
        t = np.asarray(taken, dtype=np.float64).reshape(-1, 2)
        if len(t) and np.min(np.hypot(t[:, 0] - y, t[:, 1] - x)) < min_px:
            continue
        return y, x, k
    return None


def _yardstick(source: np.ndarray, sky: np.ndarray, var: np.ndarray, psfs: list, y: float, x: float) -> dict:
    """Aperture / PSF-weighted photometry and centroid of ``source + sky`` (B, H, W); the sum of ``source``."""
    d = source + sky
    nb, h, w = d.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ap = np.hypot(yy - y, xx - x) <= APERTURE_RADIUS_ARCSEC / PIXEL_SCALE
    out = {"ap": d[:, ap].sum(axis=1), "ap_sigma": np.sqrt(var[:, ap].astype(np.float64).sum(axis=1)),
           "psf": np.empty(nb), "sum": source.sum(axis=(1, 2))}
    for b in range(nb):
        p = _draw(None, psfs[b], (h, w), y, x)
        out["psf"][b] = float((p * d[b]).sum() / (p * p).sum())
    tot = d[:, ap].sum()
    img = d.sum(axis=0)
    out["y"] = float((img[ap] * yy[ap]).sum() / tot) if tot != 0 else np.nan
    out["x"] = float((img[ap] * xx[ap]).sum() / tot) if tot != 0 else np.nan
    return out


def inject_blend(blend: BlendData, rng: np.random.Generator, n: int, *, mag_range=(21.0, 25.0),
                 sep_range=(0.5, 3.0), morphology: str = "cosmos", cosmos=None,
                 gain: Optional[dict] = None, add_noise: bool = True):
    """Add ``n`` fake galaxies to one blend; the input ``blend`` is not modified.

    Parameters
    ----------
    blend : BlendData
        A blend from :func:`hpcblend.io.blends.read_blend` (images, variance (B, H, W) in counts /
        counts², psfs (B, Ph, Pw) summing to 1, peaks (K, 2) (y, x)).
    rng : numpy.random.Generator
        Source of every random choice (position, magnitude, morphology, noise).
    n : int
        Number of injections wanted (fewer if no valid position is found in 100 tries).
    mag_range : (float, float)
        Uniform range of the reference-band (i) AB magnitude.
    sep_range : (float, float)
        Uniform range of the separation from a real peak, arcsec.
    morphology : {"cosmos", "sersic"}
    cosmos : CosmosSample, optional
        :func:`load_cosmos_galaxies` output (required for ``"cosmos"``).
    gain : dict, optional
        Effective gain per band (counts); default :data:`DEFAULT_GAIN`.
    add_noise : bool
        Add the source's Poisson-like noise (``stamp / gain`` variance) to image and variance.

    Returns
    -------
    (BlendData, list of dict)
        A copy with the sources added (``images``, ``variance`` float32; footprint grown; the new
        peaks appended after the K real ones, so injection j is peak ``K + j``), and one dict per
        injection: ``y``, ``x`` (position the profile's nominal centre was drawn at, px),
        ``y_centroid``, ``x_centroid`` (first moment of the noiseless reference-band stamp over the
        image, px: the truth for centroid errors, since a COSMOS galaxy's light centroid is not its
        stamp centre), ``peak_y``, ``peak_x``, ``peak_index``,
        ``host_peak``, ``separation`` (arcsec to the nearest real peak), ``mag`` (B,), ``flux``
        (B,) (noiseless stamp sum in the image, counts), ``flux_total`` (B,), ``morphology``,
        ``cosmos_index``, ``stamp`` (B, h, w) float32 noiseless, ``box`` (y0, x0, h, w),
        ``footprint_added`` (px), the yardstick ``yard`` (see :func:`_yardstick`), ``snr_bands`` (B,)
        (:func:`matched_filter_snr` on the blend's variance) and ``blendedness_true``
        (:func:`truth_blendedness` in the scene: the original image, its real sources with their noise,
        plus every injected stamp; band sums).
    """
    gain = DEFAULT_GAIN if gain is None else gain
    bands = blend.bands
    images = blend.images.astype(np.float64)
    variance = blend.variance.astype(np.float64)
    footprint = blend.footprint.copy()
    bad_any = blend.bad_pixels().any(axis=0)
    real = blend.peaks.astype(np.float64)
    taken = [tuple(p) for p in real]
    ref = ref_band(bands)
    psfs = psf_profiles(blend.psfs)
    new_peaks, rows, summed = [], [], []
    sky_var = np.where(np.isfinite(blend.variance) & (blend.variance > 0), blend.variance, 0.0).astype(np.float64)
    for _ in range(int(n)):
        pos = _place(rng, blend, taken, sep_range, bad_any)
        if pos is None:
            break
        y, x, host = pos
        galaxy = draw_galaxy(rng, morphology, cosmos, bands)
        gal, colour, k_cos = galaxy.profile, galaxy.colour, galaxy.cosmos_index
        m_ref = rng.uniform(*mag_range)
        mags = m_ref + colour - colour[ref]
        ftot = mag_to_flux(mags)
        stamp = np.stack([_draw(gal.withFlux(float(ftot[b])), psfs[b], blend.shape, y, x)
                          for b in range(len(bands))])
        g = np.array([float(gain.get(b, DEFAULT_GAIN["i"])) for b in bands])
        noise_var = np.clip(stamp, 0, None) / g[:, None, None]
        noise = rng.standard_normal(stamp.shape) * np.sqrt(noise_var) if add_noise else 0.0 * stamp
        sky = rng.standard_normal(stamp.shape) * np.sqrt(sky_var) if add_noise else 0.0 * stamp
        if add_noise:
            variance += noise_var
        images += stamp + noise
        det = stamp.sum(axis=0) > np.sqrt(variance.sum(axis=0))
        py, px = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
        det[py, px] = True
        added = int(np.count_nonzero(det & ~footprint))
        footprint |= det
        sref = stamp[ref]
        yy, xx = np.mgrid[0:sref.shape[0], 0:sref.shape[1]]
        cy, cx = float((sref * yy).sum() / sref.sum()), float((sref * xx).sum() / sref.sum())
        keep = stamp.sum(axis=0) > 1e-5 * stamp.sum(axis=0).max()
        ys, xs = np.nonzero(keep)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        rows.append({
            "y": y, "x": x, "y_centroid": cy, "x_centroid": cx, "peak_y": py, "peak_x": px,
            "peak_index": blend.n_peaks + len(new_peaks),
            "host_peak": host, "separation": float(np.min(np.hypot(real[:, 0] - y, real[:, 1] - x))) * PIXEL_SCALE,
            "mag": mags, "flux": stamp.sum(axis=(1, 2)), "flux_total": ftot, "morphology": morphology,
            "cosmos_index": k_cos, "stamp": stamp[:, y0:y1, x0:x1].astype(np.float32),
            "box": (int(y0), int(x0), int(y1 - y0), int(x1 - x0)), "footprint_added": added,
            "yard": _yardstick(stamp + noise, sky, blend.variance, psfs, y, x),
            "snr_bands": matched_filter_snr(stamp, blend.variance),
        })
        summed.append(stamp.sum(axis=0))
        new_peaks.append((py, px))
        taken.append((y, x))
    scene = blend.images.astype(np.float64).sum(axis=0) + sum(summed, np.zeros(blend.shape))
    for r, s_j in zip(rows, summed):
        r["blendedness_true"] = truth_blendedness(s_j, scene)
    peaks = np.concatenate([blend.peaks, np.asarray(new_peaks, dtype=np.int64).reshape(-1, 2)])
    out = replace(blend, images=images.astype(np.float32), variance=variance.astype(np.float32),
                  footprint=footprint, peaks=peaks, mask=blend.mask.copy(), psfs=blend.psfs.copy(),
                  meta=dict(blend.meta), peak_flags=None)
    return out, rows


def _truth_dtype(bands) -> np.dtype:
    cols = [("id", "i8"), ("blend_file", "U64"), ("source_file", "U256"), ("parent_id", "i8"),
            ("inj_index", "i4"), ("peak_index", "i4"), ("y", "f8"), ("x", "f8"), ("y_centroid", "f8"),
            ("x_centroid", "f8"), ("peak_y", "i8"),
            ("peak_x", "i8"), ("host_peak", "i4"), ("separation", "f8"), ("mag", "f8"),
            ("morphology", "U8"), ("cosmos_index", "i8"), ("footprint_added", "i8"),
            ("stamp_offset", "i8"), ("stamp_y0", "i4"), ("stamp_x0", "i4"), ("stamp_h", "i4"), ("stamp_w", "i4"),
            ("yard_y", "f8"), ("yard_x", "f8"), ("snr", "f8"), ("blendedness_true", "f8")]
    for b in bands:
        cols += [(f"mag_{b}", "f8"), (f"flux_{b}", "f8"), (f"flux_total_{b}", "f8"),
                 (f"yard_ap_flux_{b}", "f8"), (f"yard_psf_flux_{b}", "f8"), (f"yard_sum_flux_{b}", "f8"),
                 (f"yard_ap_sigma_{b}", "f8"), (f"snr_{b}", "f8")]
    return np.dtype(cols)


def inject_blends(inputs, out_dir: str, *, seed: int = 0, per_blend: int = 2, mag_range=(21.0, 25.0),
                  sep_range=(0.5, 3.0), morphology: str = "cosmos", cosmos_dir: Optional[str] = None,
                  add_noise: bool = True, progress: bool = False) -> str:
    """Inject sources into every blend file of ``inputs`` and write new files plus the truth table.

    Parameters
    ----------
    inputs : str or list of str
        Files, directories or glob patterns (:func:`hpcblend.io.blends.expand_inputs`).
    out_dir : str
        Output directory (created); gets ``<same name>.npz`` per input and :data:`TRUTH_FILE`.
        Input files are only read.
    seed, per_blend, mag_range, sep_range, morphology, add_noise
        See :func:`inject_blend`; file ``f`` uses ``default_rng([seed, crc32(basename(f))])``.
    cosmos_dir : str, optional
        COSMOS sample directory (required for ``morphology="cosmos"``).

    Returns
    -------
    str
        Path of the truth table: an npz with ``table`` (structured, one row per injection; columns
        of :func:`_truth_dtype`: fluxes in counts, positions in px of the blend, separation in
        arcsec), ``stamps`` (float32 1-D: source i's noiseless (B, stamp_h, stamp_w) stamp is
        ``stamps[stamp_offset : stamp_offset + B*h*w]``, at (stamp_y0, stamp_x0) of the blend),
        ``bands`` and ``meta`` (JSON of the arguments and constants).
    """
    if morphology not in ("cosmos", "sersic"):
        raise InputError(f"--morphology: expected cosmos or sersic, got {morphology!r}")
    if morphology == "cosmos" and not cosmos_dir:
        raise InputError("--morphology cosmos needs --cosmos DIR (the GalSim COSMOS sample)")
    cosmos = load_cosmos_galaxies(cosmos_dir) if morphology == "cosmos" else None
    paths = expand_inputs(inputs)
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
        raise InputError("inject: two input files share a file name; the outputs would collide")
    out_dir = os.path.abspath(out_dir)
    if any(os.path.dirname(p) == out_dir for p in paths):
        raise InputError(f"inject: output directory {out_dir} holds input files; refusing to overwrite inputs")
    os.makedirs(out_dir, exist_ok=True)
    rows, stamps, bands, offset = [], [], None, 0
    for i, path in enumerate(paths):
        blend = read_blend(path)
        bands = bands or blend.bands
        rng = np.random.default_rng([int(seed), zlib.crc32(os.path.basename(path).encode())])
        new, inj = inject_blend(blend, rng, per_blend, mag_range=mag_range, sep_range=sep_range,
                                morphology=morphology, cosmos=cosmos, add_noise=add_noise)
        write_blend(os.path.join(out_dir, os.path.basename(path)), new)
        for j, r in enumerate(inj):
            r.update(blend_file=os.path.basename(path), source_file=path, parent_id=blend.id, inj_index=j,
                     stamp_offset=offset)
            offset += r["stamp"].size
            stamps.append(r["stamp"].ravel())
            rows.append(r)
        if progress:
            print(f"inject: {i + 1}/{len(paths)} {os.path.basename(path)}: {len(inj)} source(s)", file=sys.stderr)
    table = np.zeros(len(rows), dtype=_truth_dtype(bands or ()))
    for k, r in enumerate(rows):
        t = table[k]
        for key in ("blend_file", "source_file", "parent_id", "inj_index", "peak_index", "y", "x", "y_centroid",
                    "x_centroid", "peak_y",
                    "peak_x", "host_peak", "separation", "morphology", "cosmos_index", "footprint_added",
                    "stamp_offset"):
            t[key] = r[key]
        t["id"] = k
        t["stamp_y0"], t["stamp_x0"], t["stamp_h"], t["stamp_w"] = r["box"]
        t["mag"] = r["mag"][ref_band(bands)]
        t["yard_y"], t["yard_x"] = r["yard"]["y"], r["yard"]["x"]
        t["snr"] = float(np.sqrt(np.sum(r["snr_bands"] ** 2)))
        t["blendedness_true"] = r["blendedness_true"]
        for ib, b in enumerate(bands):
            t[f"mag_{b}"], t[f"flux_{b}"], t[f"flux_total_{b}"] = r["mag"][ib], r["flux"][ib], r["flux_total"][ib]
            for key in ("ap", "psf", "sum"):
                t[f"yard_{key}_flux_{b}"] = r["yard"][key][ib]
            t[f"yard_ap_sigma_{b}"] = r["yard"]["ap_sigma"][ib]
            t[f"snr_{b}"] = r["snr_bands"][ib]
    meta = {"seed": int(seed), "per_blend": int(per_blend), "mag_range": list(map(float, mag_range)),
            "separation_range_arcsec": list(map(float, sep_range)), "morphology": morphology,
            "cosmos_dir": os.path.abspath(cosmos_dir) if cosmos_dir else None, "add_noise": bool(add_noise),
            "zero_point": ZERO_POINT, "pixel_scale": PIXEL_SCALE, "gain": DEFAULT_GAIN,
            "aperture_radius_arcsec": APERTURE_RADIUS_ARCSEC, "n_inputs": len(paths), "n_injected": len(rows)}
    truth = os.path.join(out_dir, TRUTH_FILE)
    payload = npz_bytes({"table": table,
                          "stamps": np.concatenate(stamps) if stamps else np.zeros(0, np.float32),
                          "bands": np.asarray(bands or (), dtype=np.str_),
                          "meta": np.asarray(json.dumps(meta, sort_keys=True))})
    atomic_write(truth, payload)
    return truth


def read_truth(path: str):
    """Read a truth table written by :func:`inject_blends`.

    Returns
    -------
    (ndarray, ndarray, tuple, dict)
        ``table`` (structured, one row per injection), ``stamps`` (float32 1-D), ``bands``, ``meta``.
    """
    with np.load(path, allow_pickle=False) as d:
        return d["table"], d["stamps"], tuple(str(b) for b in d["bands"]), json.loads(str(d["meta"]))
