"""Flux accuracy, astrometry, forced photometry and patch figures of a tract catalog matched to the truth.

Used by :mod:`hpcblend.analysis.validate` (definitions in its module
docstring, "Flux accuracy" and "Astrometry"): each function takes the
:class:`~hpcblend.analysis.validate_match.TruthMatch` and returns plain
Python (JSON-serialisable, None for NaN) in the layout of
:func:`~hpcblend.analysis.validate.validate_tract`'s result.
"""

from __future__ import annotations

import math

import numpy as np
import sep

from hpcblend.analysis.validate_match import TruthMatch, json_float
from hpcblend.analysis.validate_snr import truth_psf_images

__all__ = ["BLENDEDNESS_BINS", "relative_flux_stats", "flux_accuracy", "astrometry", "forced_summary",
           "patch_summary", "completeness_by_snr"]

#: Blendedness bin edges of the flux-accuracy table.
BLENDEDNESS_BINS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0001)
_MAD_GAUSS = 0.6744897501960817  # median |x| of a standard normal


def relative_flux_stats(measured, true, err) -> dict:
    """Statistics of ``Δf/f = (measured - true) / true``.

    Parameters
    ----------
    measured, true, err : array_like, shape (N,)
        Measured flux, true flux and the measurement's error (same units).

    Returns
    -------
    dict
        ``n`` (finite pairs with ``true > 0``), ``n_nonfinite``,
        ``median_abs``, ``median``, ``p90_abs`` of Δf/f and
        ``noise_median_abs`` = 0.674 × median(err / true) (None when empty).
    """
    measured = np.asarray(measured, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(measured) & np.isfinite(true) & (true > 0)
    rel = (measured[ok] - true[ok]) / true[ok]
    n_bad = int(np.count_nonzero(~ok))
    if rel.size == 0:
        return {"n": 0, "n_nonfinite": n_bad, "median_abs": None, "median": None, "p90_abs": None,
                "noise_median_abs": None}
    rel_err = err[ok] / true[ok]
    return {"n": int(rel.size), "n_nonfinite": n_bad, "median_abs": json_float(np.median(np.abs(rel))),
            "median": json_float(np.median(rel)), "p90_abs": json_float(np.percentile(np.abs(rel), 90)),
            "noise_median_abs": json_float(_MAD_GAUSS * np.nanmedian(rel_err)) if np.isfinite(rel_err).any()
            else None}


def _encircled_energy(psf: np.ndarray, radius: float) -> float:
    """Fraction of a (unit-sum) PSF image inside a circle of ``radius`` px about its centre (exact overlap, sep)."""
    img = np.ascontiguousarray(psf, dtype=np.float64)
    cy, cx = (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
    s, _, _ = sep.sum_circle(img, np.array([cx]), np.array([cy]), float(radius), subpix=0)
    return float(s[0]) / float(img.sum())


def _radius_labels(names, bands) -> list:
    """Aperture labels present in the catalog (``ap_flux_<lab>_<b>`` columns), sorted by radius."""
    b0 = bands[0]
    labs = [n[len("ap_flux_"):-len(b0) - 1] for n in names if n.startswith("ap_flux_") and n.endswith(f"_{b0}")
            and not n.startswith("ap_flux_err_") and not n.startswith("ap_flux_flag_")]

    def rad(lab):
        try:
            return float(lab.replace("p", "."))
        except ValueError:
            return math.inf

    return sorted(labs, key=rad)


def _star_flux(flux: dict, m: TruthMatch, mt, mc, star, isolated, flux_snr_min: float, psf_dir: str) -> None:
    """Stars' PSF and aperture fluxes (aperture / encircled energy), and galaxies' aperture-to-truth ratios."""
    src, truth, sn, bands = m.src, m.truth, m.sn, m.bands
    psfs = truth_psf_images(psf_dir, bands)
    labels = _radius_labels(src.dtype.names, bands)
    for b in bands:
        snr_b = sn[f"snr_{b}"][mt]
        sel = star & (snr_b > flux_snr_min)
        if f"psf_flux_{b}" in src.dtype.names:
            flux["psf_flux_stars"][b] = relative_flux_stats(src[f"psf_flux_{b}"][mc[sel]],
                                                            truth[f"flux_{b}"][mt[sel]],
                                                            src[f"psf_flux_err_{b}"][mc[sel]])
        for lab in labels:
            col = f"ap_flux_{lab}_{b}"
            r = float(lab.replace("p", "."))
            ee = _encircled_energy(psfs[b], r) if b in psfs else 1.0
            flux["ap_flux_stars"].setdefault(lab, {})[b] = dict(
                relative_flux_stats(src[col][mc[sel]] / ee, truth[f"flux_{b}"][mt[sel]],
                                    src[f"ap_flux_err_{lab}_{b}"][mc[sel]] / ee),
                encircled_energy=json_float(ee))
            gsel = ~star & isolated & (snr_b > flux_snr_min)
            ratio = np.asarray(src[col][mc[gsel]], dtype=np.float64) / np.asarray(truth[f"flux_{b}"][mt[gsel]])
            ratio = ratio[np.isfinite(ratio)]
            flux["ap_flux_galaxies"].setdefault(lab, {})[b] = {
                "n": int(ratio.size), "median_ratio": json_float(np.median(ratio)) if ratio.size else None}


def flux_accuracy(m: TruthMatch, *, flux_snr_min: float, isolated_blendedness: float, psf_dir: str) -> tuple:
    """Flux accuracy of matched sample sources away from the edge.

    Parameters
    ----------
    m : TruthMatch
    flux_snr_min : float
        Band S/N a source needs to enter that band's statistics.
    isolated_blendedness : float
        Children below this blendedness (or unfitted isolated ones) are isolated.
    psf_dir : str
        Directory of ``psf_<b>.fits`` (encircled energies).

    Returns
    -------
    flux : dict
        ``isolated``, ``bins`` (per :data:`BLENDEDNESS_BINS` bin), ``deblended``
        (:func:`relative_flux_stats` of ``flux_<b>`` per band),
        ``psf_flux_stars``, ``ap_flux_stars``, ``ap_flux_galaxies``.
    isolated : ndarray of bool
        Per matched source of ``mt``: isolated.
    mt, mc : ndarray of int
        Truth and catalog rows of the sources used.
    """
    src, truth, sn, bands = m.src, m.truth, m.sn, m.bands
    mt = np.nonzero(m.detected & ~m.near_edge)[0]
    mc = m.t2c[mt]
    blendedness = np.asarray(src["blendedness"], dtype=np.float64)[mc]
    iso_flag = np.asarray(src["flag_isolated_unfitted"], dtype=bool)[mc]
    isolated = iso_flag | (np.nan_to_num(blendedness, nan=np.inf) < isolated_blendedness)
    flux = {"isolated": {}, "bins": [], "deblended": {}, "psf_flux_stars": {}, "ap_flux_stars": {},
            "ap_flux_galaxies": {}}

    def stats(b, sel):
        return relative_flux_stats(src[f"flux_{b}"][mc[sel]], truth[f"flux_{b}"][mt[sel]],
                                   src[f"flux_err_{b}"][mc[sel]])

    for b in bands:
        flux["isolated"][b] = stats(b, isolated & (sn[f"snr_{b}"][mt] > flux_snr_min))
    bl = np.where(iso_flag, 0.0, blendedness)
    for lo, hi in zip(BLENDEDNESS_BINS[:-1], BLENDEDNESS_BINS[1:]):
        row = {"lo": lo, "hi": min(hi, 1.0), "bands": {}}
        inbin = (bl >= lo) & (bl < hi)
        for b in bands:
            row["bands"][b] = stats(b, inbin & (sn[f"snr_{b}"][mt] > flux_snr_min))
        row["n"] = int(np.count_nonzero(inbin))
        flux["bins"].append(row)
    for b in bands:  # children fitted by the deblender (any blendedness)
        flux["deblended"][b] = stats(b, ~iso_flag & (sn[f"snr_{b}"][mt] > flux_snr_min))
    star = np.asarray(truth["type"][mt]) == "star"
    _star_flux(flux, m, mt, mc, star, isolated, flux_snr_min, psf_dir)
    return flux, isolated, mt, mc


def astrometry(m: TruthMatch, mt: np.ndarray, mc: np.ndarray, isolated: np.ndarray, snr_min: float,
               scale: float) -> dict:
    """Offsets of catalog ``ra``, ``dec`` from the truth for isolated matched sources with ``snr > snr_min``.

    Returns
    -------
    dict
        ``n``, ``n_nonfinite``, ``median_arcsec``, ``p90_arcsec`` (total
        offset), ``median_dra_arcsec`` (Δα cos δ), ``median_ddec_arcsec``,
        ``median_pixels``.
    """
    src, truth = m.src, m.truth
    asel = isolated & (m.snr[mt] > snr_min)
    at, ac = mt[asel], mc[asel]
    dec_t = np.asarray(truth["dec"], dtype=np.float64)[at]
    dra = (((np.asarray(src["ra"])[ac] - np.asarray(truth["ra"])[at] + 180.0) % 360.0) - 180.0) \
        * np.cos(np.radians(dec_t)) * 3600.0
    ddec = (np.asarray(src["dec"])[ac] - dec_t) * 3600.0
    off = np.hypot(dra, ddec)
    okr = np.isfinite(off)
    return {"n": int(np.count_nonzero(okr)), "n_nonfinite": int(np.count_nonzero(~okr)),
            "median_arcsec": json_float(np.median(off[okr])) if okr.any() else None,
            "p90_arcsec": json_float(np.percentile(off[okr], 90)) if okr.any() else None,
            "median_dra_arcsec": json_float(np.median(dra[okr])) if okr.any() else None,
            "median_ddec_arcsec": json_float(np.median(ddec[okr])) if okr.any() else None,
            "median_pixels": json_float(np.median(off[okr]) / scale) if okr.any() else None}


def forced_summary(src: np.ndarray, bands, bad_parent: np.ndarray) -> dict:
    """Children with an unflagged parent, and per band how many of them lack ``psf_flux_<b>``."""
    ok_child = ~bad_parent
    forced = {"n_children": int(len(src)), "n_unflagged": int(np.count_nonzero(ok_child)), "missing_psf_flux": {}}
    for b in bands:
        col = f"psf_flux_{b}"
        if col in src.dtype.names:
            forced["missing_psf_flux"][b] = int(np.count_nonzero(ok_child & ~np.isfinite(src[col])))
    return forced


def patch_summary(patches) -> dict:
    """Patch count, failures and times (s) from the catalog's ``/patches`` ({} without it)."""
    if patches is None or not len(patches):
        return {}
    t = np.asarray(patches["t_total"], dtype=np.float64)
    return {"n": int(len(patches)), "n_failed": int(np.count_nonzero(patches["status"] != b"ok")),
            "t_total_median": json_float(np.median(t)), "t_total_max": json_float(t.max()),
            "t_total_sum": json_float(t.sum()),
            "per_patch": [{"patch": int(p["patch"]), "status": p["status"].decode(),
                           "n_sources": int(p["n_sources"]), "t_total": json_float(p["t_total"]),
                           "t_load": json_float(p["t_load"]), "t_detect": json_float(p["t_detect"]),
                           "t_deblend": json_float(p["t_deblend"]), "t_measure": json_float(p["t_measure"]),
                           "error": p["error_message"].decode("utf-8", "replace")} for p in patches]}


def completeness_by_snr(m: TruthMatch, snr_min: float) -> list:
    """Detected / total sample sources in the S/N bins (snr_min, 20], (20, 50], > 50."""
    bins = []
    for lo, hi in ((snr_min, 20.0), (20.0, 50.0), (50.0, math.inf)):
        inb = m.sample & (m.snr > lo) & (m.snr <= hi)
        bins.append({"lo": lo, "hi": None if math.isinf(hi) else hi, "n": int(np.count_nonzero(inb)),
                     "n_detected": int(np.count_nonzero(inb & m.detected))})
    return bins
