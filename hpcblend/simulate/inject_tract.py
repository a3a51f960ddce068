"""Source injection into a coadd tract, with a truth table and the perfect-deblender yardstick (issue 16).

``hpcblend inject tract SRC_TRACT_DIR OUT_TRACT_DIR [--n N | --density D] [--mag-range 20 25] [--seed S]
[--cosmos DIR | --sersic] [--separation MIN MAX]`` (parsed in :mod:`hpcblend.analysis.injection`) reads a
tract (:mod:`hpcblend.io.coadd` layout: ``coadd_<b>.fits`` + ``psf_<b>.fits``), adds fake galaxies and
writes a **new** tract directory; ``SRC_TRACT_DIR`` is only read. In ``OUT_TRACT_DIR``:

``coadd_<b>.fits``
    The source's files, every header and the MASK plane unchanged, with the sources added to IMAGE
    (stamp + noise) and their noise variance added to VARIANCE (float32).
``psf_<b>.fits``
    Copied byte for byte.
``truth.fits``
    :func:`hpcblend.io.truth.write_truth` layout, so ``hpcblend validate`` reads it: one row per source.
    If the source tract has a ``truth.fits`` (a simulated tract, :mod:`hpcblend.simulate.tract`), its rows
    come first, unchanged, then the injected ones; the column ``injected`` tells them apart. The primary
    header is the source truth's (or, for a real tract, ``NX``, ``NY``, ``PIXSCALE``, ``MAGZERO``,
    ``SKYSIG_<B>`` = median √variance and ``FWHM_<B>`` from the PSF's half-maximum area) plus
    ``INJECTED``, ``INJSEED``, ``INJN``, ``INJMORPH``, ``INJNOISE``.
``injection_stamps.npz`` (:data:`STAMPS_FILE`)
    ``stamps``: float32 1-D, source i's noiseless (B, stamp_h, stamp_w) stamp is
    ``stamps[stamp_offset : stamp_offset + B*h*w]``, placed at tract pixel (stamp_y0, stamp_x0) (clipped
    to the tract); ``bands``; ``meta``: JSON of every argument and constant.

Columns of the injected rows (original rows: NaN, -1 or the obvious value): ``id`` (after the source
truth's largest), ``x``, ``y`` (the profile's nominal centre, tract px: the true position, for matching,
separations, centroid errors and the yardstick), ``x_centroid``, ``y_centroid`` (first moment of the
noiseless reference-band stamp, for information: for a few COSMOS galaxies it lies 2-4 px from the centre,
pulled by other light in the HST postage stamp, where the detected peak is not; = ``x``, ``y`` for
original rows), ``ra``, ``dec``, ``type`` (``cosmos`` or ``galaxy``),
``flux_<b>`` (total flux of the profile, counts, as the simulated truth defines it), ``mag_<b>``, ``hlr``,
``bulge_fraction``, ``cosmos_index``, ``injected``; ``stamp_flux_<b>`` (the noiseless counts added to the
image: the truth of the flux errors), ``snr_<b>`` and ``snr`` (matched-filter S/N of the noiseless stamp
on the source tract's variance, :func:`hpcblend.simulate.inject.matched_filter_snr`, and their quadrature
sum), ``blendedness_true`` (:func:`~hpcblend.simulate.inject.truth_blendedness` of the band-summed stamp
in the noiseless scene: every other source's true model; for a real tract the original image stands in
for its sources' models, noise included), ``separation`` (arcsec to the nearest other source: truth or
detected real sources and the other injections), ``host_id`` and ``host_separation`` (the real source a
``--separation`` position was drawn from, else -1 / NaN), the stamp box ``stamp_offset``, ``stamp_y0``,
``stamp_x0``, ``stamp_h``, ``stamp_w``, and the **yardstick**.

Choices (documented once)
-------------------------
* Morphology, colours and magnitudes as :mod:`hpcblend.simulate.inject` (COSMOS ``RealGalaxy`` with its
  HSC colours, or a Sérsic bulge + disk); the i-band magnitude is uniform in ``mag_range``; fluxes use the
  tract's ``MAGZERO`` (27 if absent). Each band is convolved with the tract's PSF image of that band (a
  :class:`galsim.InterpolatedImage`, pixel included, drawn ``method="no_pixel"``) into a stamp of
  ``max(GalSim's good size, 2 (5 hlr + PSF half-size) + 1)`` px (at most 321), clipped at the tract edge.
* Positions: uniform in the tract at least ``margin`` px from its edge, on a pixel good in every band, at
  least ``min_separation`` ″ from every earlier injection; with ``separation=(MIN, MAX)``: a random real
  source (the source truth's, else the peaks the pipeline's detection finds on the whole tract) and a
  separation uniform in [MIN, MAX] ″ at a random angle, also at least MIN from every real source.
  Positions, galaxies and noise use three independent streams spawned from ``seed``, so the same
  arguments give the same bytes, and a different morphology keeps the positions.
* Noise: the injected source gets Gaussian noise of variance ``stamp / gain`` (Poisson-like; ``gain`` per
  band, default :data:`hpcblend.simulate.inject.DEFAULT_GAIN`, the HSC coadds' effective gain), added to
  VARIANCE too.
* Yardstick ("perfect deblender"): each injected source is measured at its true position on
  ``its noiseless stamp + the image's noise`` — the injected image with every other source's true model
  subtracted. The noise is the tract's actual sky noise where it is known: for a tract simulated by
  :func:`hpcblend.simulate.tract.simulate_tract` it is regenerated from the truth's ``SEED`` and
  ``SKYSIG_<B>`` with the simulation's own generator, and checked (the image minus it must leave less
  than 0.3 σ median residual, else the next option is used); otherwise (a real tract, or a tract that
  was injected into before) a Gaussian realisation of the VARIANCE plane, seeded (``INJNOISE`` records
  which: ``simulation`` or ``resampled``). Plus every injection's own noise. Measured with the catalog's
  own forced photometry (:func:`hpcblend.measure.forced.forced_photometry`, weights 1/variance): the PSF
  flux ``yard_psf_flux_<b>`` and its error, and the aperture fluxes at the radii
  :data:`hpcblend.io.schema.DEFAULT_APERTURE_RADII` (px) ``yard_ap_flux_<r>_<b>``; the amplitude of the
  true profile (weighted least squares with the noiseless stamp as template: unbiased, the noise floor)
  ``yard_true_flux_<b>`` and its error; the flux-weighted centroid (band sum) within
  :data:`~hpcblend.simulate.inject.APERTURE_RADIUS_ARCSEC` ``yard_x``, ``yard_y``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Optional

import galsim
import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

from hpcblend.detect import detect_footprints, detection_image
from hpcblend.errors import InputError
from hpcblend.geometry import Box
from hpcblend.io.fits_hdus import atomic_writeto
from hpcblend.io.npz import atomic_write, npz_bytes
from hpcblend.io.schema import DEFAULT_APERTURE_RADII
from hpcblend.io.truth import TRUTH_FILE, write_truth
from hpcblend.simulate.inject import (APERTURE_RADIUS_ARCSEC, DEFAULT_GAIN, draw_galaxy, draw_stamp,
                                      load_cosmos_galaxies, mag_to_flux, ref_band)
from hpcblend.simulate.inject_truth import (TractScene, injected_columns, measure_injections, read_scene, truth_header,
                                            truth_table)

__all__ = ["STAMPS_FILE", "DEFAULT_MARGIN_PX", "DEFAULT_MIN_SEPARATION", "InjectedTract", "inject_tract",
           "read_stamps", "stamp_of"]

#: Side file of the noiseless stamps, in the new tract directory.
STAMPS_FILE: str = "injection_stamps.npz"
#: Default distance of injected positions from the tract edge, px.
DEFAULT_MARGIN_PX: int = 30
#: Default smallest distance between two injected sources, arcsec.
DEFAULT_MIN_SEPARATION: float = 1.0

_MAX_STAMP_HALF = 160
_MAX_TRIES = 1000


@dataclass
class InjectedTract:
    """What :func:`inject_tract` wrote.

    Attributes
    ----------
    directory : str
        The new tract directory.
    truth_path, stamps_path : str
        ``truth.fits`` and :data:`STAMPS_FILE` in it.
    n_injected, n_requested : int
        Sources injected and asked for (fewer when no valid position was found in 1000 tries).
    yard_noise : str
        ``"simulation"`` or ``"resampled"`` (see the module docstring).
    """

    directory: str
    truth_path: str
    stamps_path: str
    n_injected: int
    n_requested: int
    yard_noise: str


# -----------------------------------------------------------------------------
# reading, positions
# -----------------------------------------------------------------------------


def _real_sources(scene: TractScene) -> np.ndarray:
    """(N, 2) (y, x) of the tract's real sources: the truth's, else the peaks of one detection on the tract."""
    if scene.truth is not None:
        return np.stack([np.asarray(scene.truth["y"], float), np.asarray(scene.truth["x"], float)], axis=1)
    d = scene.data
    det, sigma = detection_image(d.images, d.variance, d.mask)
    fps = detect_footprints(det, sigma)
    peaks = [fp.peaks for fp in fps]
    return np.concatenate(peaks).astype(np.float64) if peaks else np.zeros((0, 2))


def _place(rng, n: int, scene: TractScene, real: np.ndarray, sep_range, min_sep: float, margin: float) -> list:
    """``[(y, x, host index or -1, host separation arcsec or NaN)]``, at most ``n`` accepted positions."""
    h, w = scene.shape
    bad = scene.data.bad_pixels().any(axis=0)
    real_tree = cKDTree(real[:, ::-1]) if len(real) else None
    if sep_range is not None and real_tree is None:
        raise InputError(f"{scene.src_dir}: --separation needs real sources, and none was found")
    out = []
    taken = np.zeros((0, 2))
    for _ in range(int(n)):
        for _try in range(_MAX_TRIES):
            host, dist = -1, float("nan")
            if sep_range is not None:
                host = int(rng.integers(len(real)))
                dist = float(rng.uniform(*sep_range))
                th = rng.uniform(0.0, 2.0 * np.pi)
                y = real[host, 0] + dist / scene.scale * np.sin(th)
                x = real[host, 1] + dist / scene.scale * np.cos(th)
            else:
                y, x = rng.uniform(margin, h - 1 - margin), rng.uniform(margin, w - 1 - margin)
            if not (margin <= y <= h - 1 - margin and margin <= x <= w - 1 - margin):
                continue
            if bad[int(math.floor(y + 0.5)), int(math.floor(x + 0.5))]:
                continue
            if len(taken) and np.min(np.hypot(taken[:, 0] - y, taken[:, 1] - x)) < min_sep / scene.scale:
                continue
            if sep_range is not None and real_tree.query([x, y])[0] < sep_range[0] / scene.scale - 1e-9:
                continue
            out.append((float(y), float(x), host, dist))
            taken = np.vstack([taken, [y, x]])
            break
        else:
            break
    return out


# -----------------------------------------------------------------------------
# drawing
# -----------------------------------------------------------------------------


def _stamp_half(profile, hlr: float, scene: TractScene) -> int:
    """Half-size (px) of a source's stamp: GalSim's good size, or 5 hlr + the PSF's half-size; at most 160."""
    psf_half = scene.data.psfs.shape[1] // 2
    good = max(galsim.Convolve(profile, p).getGoodImageSize(scene.scale) for p in scene.psfs)
    return int(min(_MAX_STAMP_HALF, max(good // 2, math.ceil(5.0 * hlr / scene.scale) + psf_half)))


def _draw_source(galaxy, mags: np.ndarray, scene: TractScene, y: float, x: float) -> tuple:
    """``(stamp (B, h, w) float64, box)``: the galaxy with magnitudes ``mags`` (B,) at (y, x), clipped to the tract."""
    half = _stamp_half(galaxy.profile, galaxy.hlr, scene)
    iy, ix = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
    box = Box((iy - half, ix - half), (2 * half + 1, 2 * half + 1)) & Box((0, 0), scene.shape)
    flux = mag_to_flux(mags, scene.zero_point)
    stamp = np.stack([draw_stamp(galaxy.profile.withFlux(float(flux[b])), scene.psfs[b], box, y, x, scene.scale)
                      for b in range(len(scene.bands))])
    return stamp, box


def _light_centroid(stamp: np.ndarray, box: Box) -> tuple:
    """(y, x) first moment (tract px) of a noiseless (h, w) stamp at ``box``."""
    yy, xx = np.mgrid[box.y0:box.stop[0], box.x0:box.stop[1]]
    tot = stamp.sum()
    return float((stamp * yy).sum() / tot), float((stamp * xx).sum() / tot)


def _draw_all(scene: TractScene, places: list, rng_gal, rng_noise, *, mag_range, morphology, cosmos, gain,
              add_noise) -> tuple:
    """Draw every source; return ``(rows, added, noise, var_added)`` (the last three (B, H, W) tract planes).

    ``added`` (float64) is the sum of the noiseless stamps, ``noise`` (float32) the injections' own noise,
    ``var_added`` (float32) its variance; each row holds the source's numbers and its stamp.
    """
    bands, ref = scene.bands, ref_band(scene.bands)
    nb = len(bands)
    added = np.zeros((nb,) + scene.shape)
    noise = np.zeros((nb,) + scene.shape, dtype=np.float32)
    var_added = np.zeros((nb,) + scene.shape, dtype=np.float32)
    g = np.array([float(gain.get(b, DEFAULT_GAIN["i"])) for b in bands])[:, None, None]
    rows = []
    for y, x, host, host_sep in places:
        galaxy = draw_galaxy(rng_gal, morphology, cosmos, bands)
        mags = rng_gal.uniform(*mag_range) + galaxy.colour - galaxy.colour[ref]
        stamp, box = _draw_source(galaxy, mags, scene, y, x)
        sl = (slice(None),) + box.slices
        added[sl] += stamp
        if add_noise:
            v = np.clip(stamp, 0.0, None) / g
            noise[sl] += (rng_noise.standard_normal(stamp.shape) * np.sqrt(v)).astype(np.float32)
            var_added[sl] += v.astype(np.float32)
        cy, cx = _light_centroid(stamp[ref], box)
        rows.append({"y": y, "x": x, "y_centroid": cy, "x_centroid": cx, "host": host, "host_separation": host_sep,
                     "mag": mags, "flux": mag_to_flux(mags, scene.zero_point), "galaxy": galaxy,
                     "stamp": stamp, "box": box})
    return rows, added, noise, var_added


# -----------------------------------------------------------------------------
# the noise under the sources, and the yardstick
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# writing
# -----------------------------------------------------------------------------


def _write_coadds(scene: TractScene, out_dir: str, d_image: np.ndarray, d_var: np.ndarray) -> None:
    """Copy every band's coadd with ``d_image`` added to IMAGE and ``d_var`` to VARIANCE; copy the PSF files."""
    for i, b in enumerate(scene.bands):
        src = scene.paths.coadds[b]
        with fits.open(src, memmap=False) as hdul:
            for name, delta in (("IMAGE", d_image[i]), ("VARIANCE", d_var[i])):
                hdu = hdul[name]
                hdu.data = (hdu.data.astype(np.float64) + delta).astype(np.float32)
            atomic_writeto(hdul, os.path.join(out_dir, os.path.basename(src)), overwrite=True)
        psf = scene.paths.psfs[b]
        shutil.copyfile(psf, os.path.join(out_dir, os.path.basename(psf)))


def _check_dirs(src_dir: str, out_dir: str) -> tuple:
    """Absolute (src, out); InputError when the output would overwrite the source."""
    src_dir, out_dir = os.path.abspath(os.fspath(src_dir)), os.path.abspath(os.fspath(out_dir))
    if not os.path.isdir(src_dir):
        raise InputError(f"{src_dir}: tract directory not found")
    if src_dir == out_dir or (os.path.isdir(out_dir) and os.path.samefile(src_dir, out_dir)):
        raise InputError(f"inject tract: the output directory {out_dir} is the source tract; refusing to "
                         f"overwrite it (give a new directory)")
    return src_dir, out_dir


def read_stamps(path: str) -> tuple:
    """Read :data:`STAMPS_FILE` (or the tract directory holding it).

    Returns
    -------
    (ndarray, tuple, dict)
        ``stamps`` (float32 1-D), ``bands``, ``meta`` (the injection's arguments and constants).
    """
    if os.path.isdir(path):
        path = os.path.join(path, STAMPS_FILE)
    with np.load(path, allow_pickle=False) as z:
        return z["stamps"], tuple(str(b) for b in z["bands"]), json.loads(str(z["meta"]))


def stamp_of(row, stamps: np.ndarray, n_bands: int) -> tuple:
    """``(stamp (B, h, w) float32, Box)`` of one injected truth row (tract pixels)."""
    h, w, off = int(row["stamp_h"]), int(row["stamp_w"]), int(row["stamp_offset"])
    stamp = stamps[off:off + n_bands * h * w].reshape(n_bands, h, w)
    return stamp, Box((int(row["stamp_y0"]), int(row["stamp_x0"])), (h, w))


def inject_tract(src_dir: str, out_dir: str, *, n: Optional[int] = None, density: Optional[float] = None,
                 mag_range=(20.0, 25.0), seed: int = 0, morphology: str = "cosmos", cosmos_dir: Optional[str] = None,
                 separation=None, min_separation: float = DEFAULT_MIN_SEPARATION,
                 margin: float = DEFAULT_MARGIN_PX, gain: Optional[dict] = None,
                 add_noise: bool = True) -> InjectedTract:
    """Inject fake galaxies into a tract's coadds and write a new tract with its truth (module docstring).

    Parameters
    ----------
    src_dir : str
        The tract (``coadd_<b>.fits``, ``psf_<b>.fits``, optionally ``truth.fits``); only read.
    out_dir : str
        The new tract directory (created; must not be ``src_dir``).
    n : int, optional
        Sources to inject; or
    density : float, optional
        sources per arcmin² (``round(density × area)``); default ``n = 100``.
    mag_range : (float, float)
        Uniform range of the i-band AB magnitude.
    seed : int
        Seed of every random choice.
    morphology : {"cosmos", "sersic"}
    cosmos_dir : str, optional
        The GalSim COSMOS sample (required for ``"cosmos"``).
    separation : (float, float), optional
        Arcsec from a real source (see the module docstring); None: uniform positions.
    min_separation : float
        Smallest distance between two injected sources, arcsec.
    margin : float
        Smallest distance of an injected centre from the tract edge, px.
    gain : dict, optional
        Effective gain per band (counts), default :data:`hpcblend.simulate.inject.DEFAULT_GAIN`.
    add_noise : bool
        Add the sources' own noise (and its variance).

    Returns
    -------
    InjectedTract

    Raises
    ------
    InputError
        Bad arguments, an unreadable tract, an output directory that is the source, no COSMOS sample.
    """
    src_dir, out_dir = _check_dirs(src_dir, out_dir)
    if morphology not in ("cosmos", "sersic"):
        raise InputError(f"inject tract: morphology must be cosmos or sersic, got {morphology!r}")
    if morphology == "cosmos" and not cosmos_dir:
        raise InputError("inject tract: COSMOS morphologies need --cosmos DIR (or use --sersic)")
    if n is not None and density is not None:
        raise InputError("inject tract: give --n or --density, not both")
    if not (len(mag_range) == 2 and mag_range[0] < mag_range[1]):
        raise InputError(f"inject tract: --mag-range expects BRIGHT FAINT with BRIGHT < FAINT, got {mag_range}")
    if separation is not None and not (len(separation) == 2 and 0 <= separation[0] <= separation[1]):
        raise InputError(f"inject tract: --separation expects MIN MAX arcsec with 0 <= MIN <= MAX, got {separation}")
    cosmos = load_cosmos_galaxies(cosmos_dir) if morphology == "cosmos" else None
    scene = read_scene(src_dir)
    if density is not None:
        n = int(round(float(density) * scene.shape[0] * scene.shape[1] * scene.scale ** 2 / 3600.0))
    n = 100 if n is None else int(n)
    pos_seq, gal_seq, noise_seq, yard_seq = np.random.SeedSequence(int(seed)).spawn(4)
    real = _real_sources(scene)
    places = _place(np.random.default_rng(pos_seq), n, scene, real, separation, min_separation, margin)
    rows, added, inj_noise, var_added = _draw_all(
        scene, places, np.random.default_rng(gal_seq), np.random.default_rng(noise_seq), mag_range=mag_range,
        morphology=morphology, cosmos=cosmos, gain=DEFAULT_GAIN if gain is None else gain, add_noise=add_noise)
    radii = tuple(float(r) for r in DEFAULT_APERTURE_RADII)
    kind = measure_injections(scene, rows, added, inj_noise, var_added, real, np.random.default_rng(yard_seq), radii)
    truth_ids = np.asarray(scene.truth["id"], dtype=np.int64) if scene.truth is not None else np.zeros(0, np.int64)
    for r in rows:
        r["host_id"] = int(truth_ids[r["host"]]) if (r["host"] >= 0 and len(truth_ids)) else -1
    offsets = np.cumsum([0] + [r["stamp"].size for r in rows])[:-1]
    table = truth_table(scene, injected_columns(scene, rows, int(truth_ids.max(initial=0)) + 1, radii, offsets))

    os.makedirs(out_dir, exist_ok=True)
    _write_coadds(scene, out_dir, added + inj_noise, var_added)
    truth_path = write_truth(os.path.join(out_dir, TRUTH_FILE), table,
                             truth_header(scene, seed=seed, n=len(rows), morphology=morphology, kind=kind))
    meta = {"source_dir": src_dir, "seed": int(seed), "n_requested": n, "n_injected": len(rows),
            "mag_range": [float(v) for v in mag_range], "morphology": morphology,
            "cosmos_dir": os.path.abspath(cosmos_dir) if cosmos_dir else None,
            "separation_arcsec": [float(v) for v in separation] if separation is not None else None,
            "min_separation_arcsec": float(min_separation), "margin_px": float(margin),
            "gain": dict(DEFAULT_GAIN if gain is None else gain), "add_noise": bool(add_noise), "yard_noise": kind,
            "aperture_radii_px": list(radii), "centroid_aperture_arcsec": APERTURE_RADIUS_ARCSEC,
            "pixel_scale": scene.scale, "zero_point": scene.zero_point, "bands": list(scene.bands),
            "source_truth": scene.truth is not None}
    stamps = [r["stamp"].astype(np.float32).ravel() for r in rows]
    stamps_path = os.path.join(out_dir, STAMPS_FILE)
    atomic_write(stamps_path, npz_bytes({"stamps": np.concatenate(stamps) if stamps else np.zeros(0, np.float32),
                                         "bands": np.asarray(scene.bands, dtype=np.str_),
                                         "meta": np.asarray(json.dumps(meta, sort_keys=True))}))
    return InjectedTract(directory=out_dir, truth_path=truth_path, stamps_path=stamps_path, n_injected=len(rows),
                         n_requested=n, yard_noise=kind)
