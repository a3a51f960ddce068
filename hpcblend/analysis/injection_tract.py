"""A tract run over an injected tract, matched to the injection truth: the :class:`InjectionSample` of a tract.

The truth is the new tract's ``truth.fits`` (:func:`hpcblend.simulate.inject_tract.inject_tract`): every
source of a simulated tract plus the injected ones (column ``injected``), or the injected ones alone for a
real tract. Catalog children (``/sources``) are matched to it by position with validate's one-to-one match
(:func:`hpcblend.analysis.validate_match.match_positions`: within ``radius`` px, default 2, brightest truth
source first by its reference-band flux): the catalog's centroid ``x``, ``y`` (its peak where the centroid
is NaN) against the truth position ``x``, ``y`` (the profile's centre). Rows that cannot be a measured
source — a failed or skipped parent, a zero model, a peak flag other than ``flag_peak_merged`` — take no
part in the match, so an injected source is *found* when a measured child lies within ``radius`` of it and
no brighter truth source took that child. Matching every truth source, not the injected ones alone, keeps a
real neighbour's child from being counted as an injected source's.

Estimators: ``model`` (``flux_model_<b>``), ``conserving`` (``flux_<b>``), ``psf`` (``psf_flux_<b>``, the
catalog's forced PSF photometry on the image with the deblended neighbours subtracted); yardsticks
``yard_psf`` and ``yard_ap<r>`` (``yard_psf_flux_<b>``, ``yard_ap_flux_<r>_<b>`` of the truth); floor
``yard_true`` (the true profile's amplitude). ``f_true`` is ``stamp_flux_<b>``; S/N, separation and the
truth blendedness come from the truth table. Purity is reported where the truth lists every source.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hpcblend.analysis.injection_metrics import InjectionSample
from hpcblend.analysis.validate_match import match_positions
from hpcblend.errors import CatalogError, InputError
from hpcblend.io.catalog import read_table
from hpcblend.io.truth import read_truth
from hpcblend.simulate.inject import ref_band

__all__ = ["DEFAULT_RADIUS", "UNUSABLE_FLAGS", "tract_sample"]

#: Match radius, px (validate's default).
DEFAULT_RADIUS: float = 2.0
#: Child flags that make a row unusable as a measured source (with every ``flag_peak_*`` but ``merged``).
UNUSABLE_FLAGS = ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero")


def _unusable(src: np.ndarray) -> np.ndarray:
    cols = [c for c in src.dtype.names if c.startswith("flag_peak_") and c != "flag_peak_merged"]
    cols += [c for c in UNUSABLE_FLAGS if c in src.dtype.names]
    bad = np.zeros(len(src), dtype=bool)
    for c in cols:
        bad |= src[c].astype(bool)
    return bad


def _catalog_xy(src: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """(M, 2) (x, y) of the catalog's usable children (centroid, else peak); NaN for the others."""
    cx = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]).astype(np.float64)
    cy = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]).astype(np.float64)
    xy = np.stack([cx, cy], axis=1)
    xy[bad] = np.nan
    return xy


def _read(catalog: str, truth_path: str) -> tuple:
    """(truth table, /sources), checked: an injection truth and a tract run's catalog."""
    truth = read_truth(truth_path)
    if "injected" not in truth.colnames:
        raise InputError(f"{truth_path}: not an injection truth (no column 'injected'; made by "
                         f"'hpcblend inject tract')")
    src = read_table(catalog, "sources")
    missing = [c for c in ("x", "y", "peak_x", "peak_y") if c not in (src.dtype.names or ())]
    if missing:
        raise CatalogError(f"{catalog}: /sources lacks {missing}: not the catalog of a tract run")
    return truth, src


def tract_sample(catalog: str, truth_path: str, band: Optional[str] = None,
                 radius: float = DEFAULT_RADIUS) -> InjectionSample:
    """Match a tract run's catalog to an injection truth (module docstring).

    Parameters
    ----------
    catalog : str
        The run's HDF5 catalog (``/sources`` of a tract run).
    truth_path : str
        The injected tract's ``truth.fits`` (or its directory).
    band : str, optional
        Band of the tables (and the reference for magnitudes and the match order); default ``i``, else the
        middle band.
    radius : float
        Match radius, px.

    Returns
    -------
    InjectionSample

    Raises
    ------
    InputError
        The truth is unreadable or not an injection truth, or lacks ``band``.
    CatalogError
        The catalog is not a tract run's.
    """
    truth, src = _read(catalog, truth_path)
    bands = tuple(c[len("stamp_flux_"):] for c in truth.colnames if c.startswith("stamp_flux_"))
    band = band or (bands[ref_band(bands)] if bands else "i")
    if band not in bands:
        raise InputError(f"{truth_path}: no band {band!r} in the injection truth (bands {bands})")
    inj = np.asarray(truth["injected"], dtype=bool)
    bad = _unusable(src)
    cat_xy = _catalog_xy(src, bad)
    truth_xy = np.stack([np.asarray(truth["x"], np.float64), np.asarray(truth["y"], np.float64)], 1)
    flux_ref = np.nan_to_num(np.asarray(truth[f"flux_{band}"], np.float64), nan=0.0)
    order = np.lexsort((np.arange(len(truth)), -flux_ref))
    t2c, c2t, _ = match_positions(truth_xy, cat_xy, float(radius), order)
    k = t2c[inj]
    found = k >= 0
    kk = np.clip(k, 0, None)

    def cat(col: str) -> np.ndarray:
        return np.where(found, np.asarray(src[col], np.float64)[kk] if len(src) else np.nan, np.nan)

    def tru(col: str) -> np.ndarray:
        return np.asarray(truth[col], np.float64)[inj]

    labels = [c[len("yard_ap_flux_"):-len(band) - 1] for c in truth.colnames
              if c.startswith("yard_ap_flux_") and c.endswith(f"_{band}")]
    yardsticks = ("yard_psf",) + tuple(f"yard_ap{lab}" for lab in labels)
    flux = {"model": {}, "conserving": {}, "psf": {}, "yard_psf": {}, "yard_true": {}}
    for b in bands:
        flux["model"][b] = cat(f"flux_model_{b}") if f"flux_model_{b}" in src.dtype.names else tru(f"flux_{b}") * np.nan
        flux["conserving"][b] = cat(f"flux_{b}") if f"flux_{b}" in src.dtype.names else tru(f"flux_{b}") * np.nan
        flux["psf"][b] = cat(f"psf_flux_{b}") if f"psf_flux_{b}" in src.dtype.names else tru(f"flux_{b}") * np.nan
        flux["yard_psf"][b] = tru(f"yard_psf_flux_{b}")
        flux["yard_true"][b] = tru(f"yard_true_flux_{b}")
        for lab in labels:
            flux.setdefault(f"yard_ap{lab}", {})[b] = tru(f"yard_ap_flux_{lab}_{b}")
    tx, ty = tru("x"), tru("y")
    centroid = {"catalog": np.hypot(cat("x") - tx, cat("y") - ty),
                "yardstick": np.hypot(tru("yard_x") - tx, tru("yard_y") - ty)}
    purity = None
    if not inj.all():  # the truth lists the tract's own sources too
        usable = ~bad
        with np.errstate(invalid="ignore", divide="ignore"):
            zp = float(truth.meta.get("MAGZERO", 27.0))
            mag = zp - 2.5 * np.log10(np.asarray(src[f"flux_model_{band}"], np.float64)[usable])
        purity = (mag, (c2t >= 0)[usable])
    notes = [f"matched by position within {radius:g} px to all {len(truth)} truth sources "
             f"({int(inj.sum())} injected); truth: {truth_path}",
             f"yardstick noise: {truth.meta.get('INJNOISE', '?')} (simulation = the tract's own sky noise; "
             f"resampled = a realisation of its variance plane)"]
    return InjectionSample(kind="tract", bands=bands, band=band, f_true={b: tru(f"stamp_flux_{b}") for b in bands},
                           flux=flux, estimators=("model", "conserving", "psf"), yardsticks=yardsticks,
                           floors=("yard_true",), found=found, mag=tru(f"mag_{band}"), snr=tru("snr"),
                           separation=tru("separation"), blendedness=tru("blendedness_true"),
                           blendedness_from="truth", centroid=centroid, purity=purity, notes=notes)
