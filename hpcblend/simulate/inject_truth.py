"""The truth of an injected tract: what the injection measures of its own sources, and the truth table.

Used by :func:`hpcblend.simulate.inject_tract.inject_tract`, whose docstring defines every column and
choice: :func:`read_scene` reads the source tract (:class:`TractScene`); :func:`measure_injections` gives
every injected source its matched-filter S/N, truth blendedness, separation and the *perfect-deblender
yardstick* (forced PSF, aperture and true-profile photometry on its noiseless stamp plus the tract's noise,
:func:`sky_noise`); :func:`truth_table` and :func:`truth_header` build the ``truth.fits`` that lists the
source truth's rows and the injected ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales

from hpcblend.geometry import Box
from hpcblend.io.coadd import TractData, TractPaths, read_tract, tract_paths
from hpcblend.io.schema import radius_label
from hpcblend.io.truth import TRUTH_FILE, read_truth
from hpcblend.measure.forced import forced_photometry
from hpcblend.simulate.inject import APERTURE_RADIUS_ARCSEC, matched_filter_snr, psf_profiles, truth_blendedness
from hpcblend.simulate.tract import add_sky_noise  # the simulation's own sky-noise generator: see sky_noise

__all__ = ["TractScene", "read_scene", "sky_noise", "measure_injections", "truth_table", "truth_header"]

_NOT_COPIED = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "EXTNAME", "HBTRUTH", "COMMENT", "HISTORY", "")
_NOISE_CHECK = 0.3  # largest median |image - regenerated noise| / sigma accepted as "the simulation's noise"


@dataclass
class TractScene:
    """The tract sources are injected into.

    Attributes
    ----------
    src_dir : str
    paths : TractPaths
    data : TractData
        Every band, validated (:func:`hpcblend.io.coadd.read_tract`).
    scale : float
        Pixel scale, arcsec (from the WCS).
    zero_point : float
        ``MAGZERO`` (27 when absent).
    truth : astropy.table.Table or None
        The source tract's ``truth.fits``.
    psfs : list of galsim.InterpolatedImage
        One per band (:func:`hpcblend.simulate.inject.psf_profiles`).
    """

    src_dir: str
    paths: TractPaths
    data: TractData
    scale: float
    zero_point: float
    truth: Optional[Table]
    psfs: list

    @property
    def bands(self) -> tuple:
        """The bands, in array order."""
        return self.data.bands

    @property
    def shape(self) -> tuple:
        """(H, W) of the tract."""
        return self.data.shape


def read_scene(src_dir: str) -> TractScene:
    """The tract of ``src_dir`` (all bands, validated) and its ``truth.fits`` when there is one.

    Raises
    ------
    InputError, PsfError, InputVersionError
        From the coadd and truth readers, naming the file.
    """
    paths = tract_paths(src_dir)
    data = read_tract(paths)
    scale = float(np.mean(proj_plane_pixel_scales(data.wcs.celestial))) * 3600.0
    zp = float(data.zero_point) if np.isfinite(data.zero_point) else 27.0
    truth = read_truth(src_dir) if os.path.isfile(os.path.join(src_dir, TRUTH_FILE)) else None
    return TractScene(src_dir=src_dir, paths=paths, data=data, scale=scale, zero_point=zp, truth=truth,
                      psfs=psf_profiles(data.psfs, scale))


# -----------------------------------------------------------------------------
# the noise under the sources, and the yardstick
# -----------------------------------------------------------------------------


def _simulation_bands(scene: TractScene) -> tuple:
    """The bands in the order the simulation wrote them (the coadds' ``BANDS`` card), else the tract's order."""
    header = fits.getheader(scene.paths.coadds[scene.bands[0]], 0)
    card = str(header.get("BANDS", ""))
    return tuple(b for b in card.split(",") if b) or scene.bands


def sky_noise(scene: TractScene, rng) -> tuple:
    """The noise under the injected sources, for the yardstick.

    For a tract written by :func:`hpcblend.simulate.tract.simulate_tract` (its truth has ``SEED``,
    ``SKYSIG_<B>`` and no ``injected`` column) the simulation's own sky noise, regenerated from the seed
    with the simulation's generator and accepted only if the image minus it leaves a median residual
    below 0.3 σ in every band; otherwise a Gaussian realisation of the variance plane from ``rng``.

    Parameters
    ----------
    scene : TractScene
    rng : numpy.random.Generator
        For the realisation of the variance.

    Returns
    -------
    (ndarray (B, H, W) float32, str)
        The noise (counts) and its kind, ``"simulation"`` or ``"resampled"``.
    """
    d, truth = scene.data, scene.truth
    if truth is not None and "injected" not in truth.colnames and "SEED" in truth.meta:
        meta = truth.meta
        sim_bands = _simulation_bands(scene)
        try:
            sigma = {b: float(meta[f"SKYSIG_{b.upper()}"]) for b in sim_bands}
        except KeyError:
            sigma = None
        if sigma is not None and set(scene.bands) <= set(sim_bands):
            planes = np.zeros((len(sim_bands),) + scene.shape, dtype=np.float32)
            _, noise_seq = np.random.SeedSequence(int(meta["SEED"])).spawn(2)
            add_sky_noise(planes, sim_bands, sigma, noise_seq, bool(meta.get("NOISE", True)))
            noise = planes[[sim_bands.index(b) for b in scene.bands]]
            resid = [float(np.median(np.abs(d.images[i] - noise[i]))) / sigma[b] for i, b in enumerate(scene.bands)]
            if max(resid) < _NOISE_CHECK:
                return noise, "simulation"
    var = np.where(np.isfinite(d.variance) & (d.variance > 0), d.variance, 0.0)
    return (rng.standard_normal(var.shape, dtype=np.float32) * np.sqrt(var)).astype(np.float32), "resampled"


def _yardstick(stamp: np.ndarray, box: Box, noise: np.ndarray, variance: np.ndarray, scene: TractScene,
               yc: float, xc: float, radii) -> dict:
    """Forced PSF, aperture and true-profile photometry of ``stamp + noise`` at (yc, xc) (module docstring)."""
    psf_half = scene.data.psfs.shape[1] // 2
    half = max(psf_half + 3, int(math.ceil(max(max(radii), APERTURE_RADIUS_ARCSEC / scene.scale))) + 2)
    iy, ix = int(math.floor(yc + 0.5)), int(math.floor(xc + 0.5))
    around = Box((iy - half, ix - half), (2 * half + 1, 2 * half + 1))
    mbox = Box.from_bounds(min(around.y0, box.y0), max(around.stop[0], box.stop[0]),
                           min(around.x0, box.x0), max(around.stop[1], box.stop[1])) & Box((0, 0), scene.shape)
    sl = (slice(None),) + mbox.slices
    src = np.zeros((len(scene.bands),) + mbox.shape)
    src[(slice(None),) + box.slices_in(mbox)] = stamp
    img = src + noise[sl]
    var = variance[sl].astype(np.float64)
    good = np.isfinite(var) & (var > 0)
    var = np.where(good, var, 0.0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    img = np.where(good, img, 0.0)
    y, x = yc - mbox.y0, xc - mbox.x0
    forced = forced_photometry(img, var, np.array([[y, x]]), scene.data.psfs, scene.bands, src[None], weights=w,
                               radii=radii)[0]
    out = {"psf": [], "psf_err": [], "true": [], "true_err": [], "ap": []}
    for b, band in enumerate(scene.bands):
        out["psf"].append(float(forced[f"psf_flux_{band}"]))
        out["psf_err"].append(float(forced[f"psf_flux_err_{band}"]))
        out["ap"].append([float(forced[f"ap_flux_{radius_label(r)}_{band}"]) for r in radii])
        t = src[b] / src[b].sum() if src[b].sum() > 0 else src[b]
        den = float((w[b] * t * t).sum())
        out["true"].append(float((w[b] * t * img[b]).sum()) / den if den > 0 else float("nan"))
        out["true_err"].append(1.0 / math.sqrt(den) if den > 0 else float("nan"))
    yy, xx = np.mgrid[0:mbox.height, 0:mbox.width]
    inside = np.hypot(yy - y, xx - x) <= APERTURE_RADIUS_ARCSEC / scene.scale
    tot = img.sum(axis=0)[inside].sum()
    out["y"] = float((img.sum(axis=0)[inside] * yy[inside]).sum() / tot) + mbox.y0 if tot != 0 else float("nan")
    out["x"] = float((img.sum(axis=0)[inside] * xx[inside]).sum() / tot) + mbox.x0 if tot != 0 else float("nan")
    return out


def measure_injections(scene: TractScene, rows: list, added: np.ndarray, inj_noise: np.ndarray,
                       var_added: np.ndarray, real: np.ndarray, rng_yard, radii) -> str:
    """Give every injected source its S/N, truth blendedness, separation and yardstick (in place).

    Parameters
    ----------
    scene : TractScene
        The source tract.
    rows : list of dict
        One per injected source: ``y``, ``x`` (tract px), ``stamp`` (B, h, w) noiseless counts at ``box``
        (a :class:`~hpcblend.geometry.Box` inside the tract). Gets ``snr_bands`` (B,), ``blendedness_true``,
        ``separation`` (arcsec) and ``yard`` (``psf``, ``psf_err``, ``true``, ``true_err``: (B,) lists;
        ``ap``: (B, R); ``y``, ``x``: the yardstick's centroid, tract px).
    added : ndarray, shape (B, H, W)
        The sum of every injected noiseless stamp.
    inj_noise, var_added : ndarray, shape (B, H, W)
        The injections' own noise and its variance.
    real : ndarray, shape (N, 2)
        (y, x) of the tract's real sources (for separations).
    rng_yard : numpy.random.Generator
        For :func:`sky_noise`'s realisation of the variance, where needed.
    radii : sequence of float
        Aperture radii, px.

    Returns
    -------
    str
        The yardstick noise's kind (:func:`sky_noise`).
    """
    d = scene.data
    sky, kind = sky_noise(scene, rng_yard)
    noise = sky + inj_noise
    variance = d.variance + var_added
    scene_sum = (d.images - sky).sum(axis=0) if kind == "simulation" else d.images.sum(axis=0, dtype=np.float64)
    scene_sum = scene_sum + added.sum(axis=0)
    cen = np.array([(r["y"], r["x"]) for r in rows]).reshape(-1, 2)
    others = np.concatenate([real, cen])
    for j, r in enumerate(rows):
        box = r["box"]
        r["snr_bands"] = matched_filter_snr(r["stamp"], d.variance[(slice(None),) + box.slices])
        r["blendedness_true"] = truth_blendedness(r["stamp"].sum(axis=0), scene_sum[box.slices])
        dist = np.hypot(others[:, 0] - cen[j, 0], others[:, 1] - cen[j, 1])
        dist[len(real) + j] = np.inf
        r["separation"] = float(dist.min()) * scene.scale if len(dist) > 1 else float("nan")
        r["yard"] = _yardstick(r["stamp"], box, noise, variance, scene, r["y"], r["x"], radii)
    return kind


# -----------------------------------------------------------------------------
# the truth table
# -----------------------------------------------------------------------------


def _fill(dtype: np.dtype, n: int) -> np.ndarray:
    """``n`` values meaning "none" for a column of ``dtype``: NaN, -1, False or ""."""
    if dtype.kind == "f":
        return np.full(n, np.nan, dtype=dtype)
    if dtype.kind in "iu":
        return np.full(n, -1, dtype=dtype)
    if dtype.kind == "b":
        return np.zeros(n, dtype=bool)
    return np.full(n, "", dtype=dtype)


def injected_columns(scene: TractScene, rows: list, first_id: int, radii, offsets: list) -> dict:
    """The truth columns of the injected sources (names and meaning in :mod:`hpcblend.simulate.inject_tract`).

    Parameters
    ----------
    scene : TractScene
    rows : list of dict
        :func:`measure_injections`'s rows, with ``galaxy`` (:class:`hpcblend.simulate.inject.Galaxy`),
        ``mag``, ``flux`` (B,), ``host_id``, ``host_separation``, ``x_centroid``, ``y_centroid``.
    first_id : int
        ``id`` of the first injected source.
    radii : sequence of float
        The yardstick's aperture radii, px.
    offsets : sequence of int
        Each stamp's offset in the stamps file.

    Returns
    -------
    dict of str to ndarray (N_injected,)
    """
    bands, n = scene.bands, len(rows)
    col = {"id": np.arange(first_id, first_id + n, dtype=np.int64)}
    for key in ("x", "y", "x_centroid", "y_centroid", "host_separation", "separation", "blendedness_true"):
        col[key] = np.array([r[key] for r in rows], dtype=np.float64)
    ra, dec = scene.data.wcs.pixel_to_world_values(col["x"], col["y"])
    col["ra"], col["dec"] = np.asarray(ra, np.float64).reshape(n), np.asarray(dec, np.float64).reshape(n)
    col["type"] = np.array(["cosmos" if r["galaxy"].cosmos_index >= 0 else "galaxy" for r in rows], dtype="U6")
    for i, b in enumerate(bands):
        col[f"flux_{b}"] = np.array([r["flux"][i] for r in rows], dtype=np.float64)
        col[f"mag_{b}"] = np.array([r["mag"][i] for r in rows], dtype=np.float64)
    col["hlr"] = np.array([r["galaxy"].hlr for r in rows], dtype=np.float64)
    col["bulge_fraction"] = np.array([r["galaxy"].bulge_fraction for r in rows], dtype=np.float64)
    col["cosmos_index"] = np.array([r["galaxy"].cosmos_index for r in rows], dtype=np.int64)
    col["injected"] = np.ones(n, dtype=bool)
    col["host_id"] = np.array([r["host_id"] for r in rows], dtype=np.int64)
    col["snr"] = np.array([math.sqrt(float(np.sum(r["snr_bands"] ** 2))) for r in rows], dtype=np.float64)
    col["stamp_offset"] = np.asarray(offsets, dtype=np.int64).reshape(n)
    for key, k in (("stamp_y0", 0), ("stamp_x0", 1)):
        col[key] = np.array([r["box"].origin[k] for r in rows], dtype=np.int32)
    for key, k in (("stamp_h", 0), ("stamp_w", 1)):
        col[key] = np.array([r["box"].shape[k] for r in rows], dtype=np.int32)
    col["yard_x"] = np.array([r["yard"]["x"] for r in rows], dtype=np.float64)
    col["yard_y"] = np.array([r["yard"]["y"] for r in rows], dtype=np.float64)
    for i, b in enumerate(bands):
        col[f"stamp_flux_{b}"] = np.array([r["stamp"][i].sum() for r in rows], dtype=np.float64)
        col[f"snr_{b}"] = np.array([r["snr_bands"][i] for r in rows], dtype=np.float64)
        for key in ("psf", "true"):
            col[f"yard_{key}_flux_{b}"] = np.array([r["yard"][key][i] for r in rows], dtype=np.float64)
            col[f"yard_{key}_flux_err_{b}"] = np.array([r["yard"][key + "_err"][i] for r in rows], dtype=np.float64)
        for k, rad in enumerate(radii):
            col[f"yard_ap_flux_{radius_label(rad)}_{b}"] = np.array([r["yard"]["ap"][i][k] for r in rows],
                                                                    dtype=np.float64)
    return col


def _units(bands) -> dict:
    units = {"x": "pix", "y": "pix", "x_centroid": "pix", "y_centroid": "pix", "ra": "deg", "dec": "deg",
             "hlr": "arcsec", "separation": "arcsec", "host_separation": "arcsec", "yard_x": "pix", "yard_y": "pix"}
    for b in bands:
        units.update({f"flux_{b}": "count", f"mag_{b}": "mag", f"stamp_flux_{b}": "count"})
    return units


def truth_table(scene: TractScene, inj: dict) -> Table:
    """The new truth table: the source truth's rows (if any), unchanged, then the injected ones.

    Every column exists for both: the injected rows get "none" (:func:`_fill`) in columns only the source
    truth has, the original rows in the injection's columns (``injected`` False; ``x_centroid``,
    ``y_centroid`` their ``x``, ``y``). Units as the source truth's, and for the new columns.

    Parameters
    ----------
    scene : TractScene
    inj : dict
        :func:`injected_columns`.

    Returns
    -------
    astropy.table.Table
    """
    n_inj = len(inj["id"])
    orig = scene.truth
    names = list(orig.colnames) if orig is not None else []
    names += [c for c in inj if c not in names]
    table = Table()
    units = _units(scene.bands)
    for c in names:
        if orig is not None and c in orig.colnames:
            a = np.asarray(orig[c])
        elif orig is not None and c in ("x_centroid", "y_centroid"):
            a = np.asarray(orig[c[0]], dtype=np.float64)  # an original source's truth position is its centre
        else:
            a = _fill(inj[c].dtype, len(orig) if orig is not None else 0)
        b = inj[c] if c in inj else _fill(a.dtype, n_inj)
        table[c] = np.concatenate([a, b.astype(a.dtype) if a.dtype.kind != "U" else b])
        unit = orig[c].unit if orig is not None and c in orig.colnames else units.get(c)
        if unit is not None:
            table[c].unit = unit
    return table


def _psf_fwhm(psf: np.ndarray, scale: float) -> float:
    """FWHM (arcsec) of a PSF image from the area above half its maximum: ``2 sqrt(A / π)``."""
    return 2.0 * math.sqrt(float(np.count_nonzero(psf >= 0.5 * psf.max())) / math.pi) * scale


def truth_header(scene: TractScene, *, seed: int, n: int, morphology: str, kind: str) -> dict:
    """The new truth's primary-header cards.

    The source truth's primary header (structural cards and ``HBTRUTH`` left out), or for a tract without
    one ``TRACT``, ``NY``, ``NX``, ``PIXSCALE``, ``MAGZERO``, ``SKYSIG_<B>`` (median √variance) and
    ``FWHM_<B>`` (from the PSF's half-maximum area), so that ``hpcblend validate`` can read it; plus
    ``INJECTED``, ``INJSEED``, ``INJN``, ``INJMORPH`` and ``INJNOISE`` (the yardstick noise's kind).

    Returns
    -------
    dict
        Card name -> value or (value, comment).
    """
    d = scene.data
    if scene.truth is not None:  # the source truth's primary header (its table's meta also holds table cards)
        primary = fits.getheader(os.path.join(scene.src_dir, TRUTH_FILE), 0)
        header = {k: v for k, v in primary.items() if k not in _NOT_COPIED}
    else:
        header = {"TRACT": int(d.tract), "NY": int(d.shape[0]), "NX": int(d.shape[1]),
                  "PIXSCALE": float(scene.scale), "MAGZERO": float(scene.zero_point)}
        for i, b in enumerate(d.bands):
            v = d.variance[i][np.isfinite(d.variance[i]) & (d.variance[i] > 0)]
            header[f"SKYSIG_{b.upper()}"] = float(np.sqrt(np.median(v))) if v.size else float("nan")
            header[f"FWHM_{b.upper()}"] = _psf_fwhm(d.psfs[i], scene.scale)
    header.update({"INJECTED": (True, "sources were injected (column injected)"),
                   "INJSEED": (int(seed), "injection seed"), "INJN": (int(n), "sources injected"),
                   "INJMORPH": (morphology, "injected morphology"),
                   "INJNOISE": (kind, "yardstick noise: simulation or resampled")})
    return header
