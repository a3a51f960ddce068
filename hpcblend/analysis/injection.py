"""Metrics of injected sources against their truth, and the ``hpcblend inject`` command (issue 16).

The injection itself (new blend files with fake galaxies and the truth table) is
:mod:`hpcblend.simulate.inject`, which documents the conventions (pixel scale,
zero point, the truth columns and the *perfect-deblender yardstick*). Here:

``hpcblend inject metrics CATALOG TRUTH [--band i] [--json OUT]`` matches the
injections to the catalog's children by (parent, peak index) and prints
completeness, flux and centroid errors per magnitude, separation and
blendedness bin, beside the yardstick (:func:`injection_metrics`,
:func:`format_metrics`). ``hpcblend inject blends ...`` is parsed here too and
calls :func:`hpcblend.simulate.inject.inject_blends`.

An injection is *found* when its peak's child row exists, its parent was
deblended (not failed or skipped) and the peak was fitted (no ``flag_peak_*``
other than ``flag_peak_merged``, not ``flag_model_zero``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from hpcblend.errors import HpcblendError
from hpcblend.io.catalog import read_table
from hpcblend.io.json_values import json_default
from hpcblend.simulate.inject import TRUTH_FILE, inject_blends, read_truth

__all__ = ["ESTIMATORS", "match_injections", "injection_metrics", "format_metrics", "inject_main"]

#: Flux estimators compared, each with its catalog column (None: the truth table's yardstick columns).
ESTIMATORS = (("model", "flux_model_{b}"), ("conserving", "flux_{b}"), ("yard_ap", None), ("yard_psf", None),
              ("yard_sum", None))
#: Separation bin edges (arcsec) and blendedness bin edges of :func:`injection_metrics`.
_SEP_EDGES = (0.5, 1.0, 1.5, 2.0, np.inf)
_BLEND_EDGES = (0.0, 0.02, 0.1, 0.3, 1.0 + 1e-9)


# -----------------------------------------------------------------------------
# matching
# -----------------------------------------------------------------------------


def match_injections(catalog: str, table: np.ndarray) -> tuple:
    """The catalog's child row of each injection, by (parent, peak index).

    Parameters
    ----------
    catalog : str
        HDF5 catalog of a run over the injected files (``/blends``, ``/sources``).
    table : ndarray
        The truth table of :func:`hpcblend.simulate.inject.read_truth`.

    Returns
    -------
    sources : ndarray
        The catalog's ``/sources`` rows.
    index : ndarray of int64, shape (N,)
        Row of ``sources`` per injection, -1 when there is none.
    found : ndarray of bool, shape (N,)
        True when the row exists, its parent was deblended and its peak was fitted.
    """
    blends = read_table(catalog, "blends")
    src = read_table(catalog, "sources")
    bid = {os.path.basename(r["source_file"].decode() if isinstance(r["source_file"], bytes)
                            else str(r["source_file"])): int(r["id"]) for r in blends}
    bad_parent = {int(r["id"]) for r in blends
                  if r["flag_failed"] or r["flag_skipped_too_many_peaks"] or r["flag_skipped_too_large"]}
    key = {(int(p), int(k)): i for i, (p, k) in enumerate(zip(src["parent_id"], src["peak_index"]))}
    idx = np.full(len(table), -1, dtype=np.int64)
    ok = np.zeros(len(table), dtype=bool)
    drop = [c for c in src.dtype.names if c.startswith("flag_peak_") and c != "flag_peak_merged"]
    drop += [c for c in ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero") if c in src.dtype.names]
    for t, r in enumerate(table):
        pid = bid.get(str(r["blend_file"]))
        i = key.get((pid, int(r["peak_index"]))) if pid is not None else None
        if i is None:
            continue
        idx[t] = i
        ok[t] = pid not in bad_parent and not any(bool(src[c][i]) for c in drop)
    return src, idx, ok


# -----------------------------------------------------------------------------
# metrics
# -----------------------------------------------------------------------------


def _stats(rel: np.ndarray) -> tuple:
    """(median, median |.|, 90th percentile |.|) of the finite values; NaNs when there are none."""
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return (np.nan, np.nan, np.nan)
    a = np.abs(rel)
    return float(np.median(rel)), float(np.median(a)), float(np.percentile(a, 90))


def _rel_flux_errors(table, src, idx, ok, est: str, b: str, sel: np.ndarray) -> np.ndarray:
    """Δf/f of estimator ``est`` in band ``b`` for injections ``sel`` (NaN where the deblender did not find it)."""
    f_true = table[f"flux_{b}"][sel]
    if est in ("model", "conserving"):
        col = ("flux_model_{b}" if est == "model" else "flux_{b}").format(b=b)
        f = np.where(ok[sel], src[col][np.clip(idx[sel], 0, None)] if len(src) else np.nan, np.nan)
    else:
        f = table[f"yard_{est[5:]}_flux_{b}"][sel]
    return (f - f_true) / f_true


def _centroid_error(table, src, idx, ok, est: str, sel: np.ndarray, suffix: str = "_centroid") -> float:
    """Median distance (px) of estimator ``est``'s position from the truth (``suffix``: light centroid or "")."""
    ty, tx = table["y" + suffix][sel], table["x" + suffix][sel]
    if est in ("model", "conserving"):
        ii = np.clip(idx[sel], 0, None)
        dy = np.where(ok[sel], src["y"][ii] - ty, np.nan)
        dx = np.where(ok[sel], src["x"][ii] - tx, np.nan)
    else:
        dy, dx = table["yard_y"][sel] - ty, table["yard_x"][sel] - tx
    e = np.hypot(dy, dx)
    e = e[np.isfinite(e)]
    return float(np.median(e)) if e.size else np.nan


def _binned_rows(table, src, idx, ok, band: str, quantity: np.ndarray, edges: list, label: str) -> list:
    """One row of :func:`injection_metrics` per bin ``[lo, hi)`` of ``quantity``."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = np.flatnonzero((quantity >= lo) & (quantity < hi))
        r = {"bin": f"{label} {lo:g}-{hi:g}", "n": int(len(sel)), "found": int(ok[sel].sum()),
             "completeness": float(ok[sel].mean()) if len(sel) else np.nan}
        for est, _ in ESTIMATORS:
            r[est] = _stats(_rel_flux_errors(table, src, idx, ok, est, band, sel))
            r[f"centroid_{est}"] = _centroid_error(table, src, idx, ok, est, sel)
            r[f"centroid0_{est}"] = _centroid_error(table, src, idx, ok, est, sel, "")
        r["noise_floor"] = float(np.median(table[f"yard_ap_sigma_{band}"][sel] / table[f"flux_{band}"][sel])) \
            if len(sel) else np.nan
        out.append(r)
    return out


def injection_metrics(catalog: str, truth: str, band: str = "i", mag_edges=None, sep_edges=None,
                      blend_edges=None) -> dict:
    """Completeness, flux and centroid errors of the injected sources, with the yardstick.

    Parameters
    ----------
    catalog : str
        HDF5 catalog of a run over the injected files (``/blends``, ``/sources``).
    truth : str
        :data:`~hpcblend.simulate.inject.TRUTH_FILE` of :func:`~hpcblend.simulate.inject.inject_blends`.
    band : str
        Band of the flux tables.
    mag_edges, sep_edges, blend_edges : sequence of float, optional
        Bin edges in the reference-band magnitude, the separation (arcsec) and the catalog's
        ``blendedness`` (default 1-mag bins over the range, (0.5, 1, 1.5, 2, 3+) ″,
        (0, 0.02, 0.1, 0.3, 1)).

    Returns
    -------
    dict
        ``n``, ``n_found`` and ``completeness`` overall; ``by_mag``, ``by_sep``, ``by_blendedness``:
        lists of rows ``{"bin", "n", "found", "completeness", "<est>": (bias, med|Δf/f|, p90|Δf/f|),
        "centroid_<est>": median distance (px) to the true light centroid, "centroid0_<est>": the same to
        the profile's nominal centre}`` for est in model,
        conserving (the deblender's ``flux_model_<b>`` and ``flux_<b>``), yard_ap, yard_psf, yard_sum (the
        yardstick) with Δf/f = (f − f_true)/f_true and f_true the injected noiseless flux in the image;
        ``noise_floor`` the median aperture sky-noise σ/f_true; and ``per_band``: (bias, med, p90) per band
        and estimator. Completeness counts a source as found as :func:`match_injections` says.
    """
    table, _, bands, _ = read_truth(truth)
    src, idx, ok = match_injections(catalog, table)
    n = len(table)
    ctx = (table, src, idx, ok)
    mag = table["mag"]
    if mag_edges is None:
        mag_edges = np.arange(np.floor(mag.min()), np.ceil(mag.max()) + 1e-9, 1.0) if n else [0, 1]
    sep_edges = sep_edges or _SEP_EDGES
    blend_edges = blend_edges or _BLEND_EDGES
    blendedness = np.where(ok, src["blendedness"][np.clip(idx, 0, None)] if len(src) else np.nan, np.nan)
    allsel = np.arange(n)
    return {
        "band": band, "n": n, "n_found": int(ok.sum()), "completeness": float(ok.mean()) if n else np.nan,
        "by_mag": _binned_rows(*ctx, band, mag, list(mag_edges), "mag"),
        "by_sep": _binned_rows(*ctx, band, table["separation"], list(sep_edges), "sep\""),
        "by_blendedness": _binned_rows(*ctx, band, blendedness, list(blend_edges), "blnd"),
        "all": _binned_rows(*ctx, band, np.zeros(n), [0.0, 1.0], "all")[0],
        "per_band": {b: {est: _stats(_rel_flux_errors(*ctx, est, b, allsel)) for est, _ in ESTIMATORS}
                     for b in bands},
    }


# -----------------------------------------------------------------------------
# text
# -----------------------------------------------------------------------------


def _fmt(v, spec="+.3f"):
    return format(v, spec) if np.isfinite(v) else "nan"


def _bin_lines(r: dict) -> list:
    """The table lines of one bin: one per estimator, the bin's counts on the first."""
    lines = []
    for j, (est, _) in enumerate(ESTIMATORS):
        bias, med, p90 = r[est]
        first = j == 0
        lines.append(
            (f"{r['bin']:<18}{r['n']:>5}{r['found']:>6}"
             f"{(format(100 * r['completeness'], '.1f') + '%') if np.isfinite(r['completeness']) else 'nan':>7}"
             if first else " " * 36)
            + f"  {est:<11}{_fmt(bias):>8}{_fmt(med, '.3f'):>8}{_fmt(p90, '.3f'):>8}"
            f"{_fmt(med - r['yard_ap'][1]):>8}{_fmt(r['centroid_' + est], '.2f'):>6}"
            f"{_fmt(r['centroid0_' + est], '.2f'):>6}"
            + (f"{_fmt(r['noise_floor'], '.3f'):>7}" if first else ""))
    return lines


def format_metrics(m: dict) -> str:
    """Plain-text tables of :func:`injection_metrics` output (one block per binning)."""
    lines = [f"injected {m['n']}, found and deblended {m['n_found']} "
             f"(completeness {100 * m['completeness']:.1f} %); flux errors in band {m['band']}: "
             f"d = (f - f_true)/f_true; 'excess' = med|d| minus the yardstick's (aperture) med|d|",
             "estimators: model = flux_model, conserving = flux (deblender); yard_ap / yard_psf = perfect-deblender "
             "yardstick (aperture / PSF-weighted photometry of the injected source alone); yard_sum = that source's "
             "pixels summed over the image (its own noise only)"]
    head = (f"{'bin':<18}{'N':>5}{'found':>6}{'compl':>7}  {'estimator':<11}{'bias':>8}{'med|d|':>8}"
            f"{'p90|d|':>8}{'excess':>8}{'cen':>6}{'cen0':>6}{'noise':>7}")
    for key, title in (("by_mag", "by magnitude (i)"), ("by_sep", "by separation from the nearest real peak"),
                       ("by_blendedness", "by the catalog's blendedness"), ("all", "all")):
        rows = m[key] if isinstance(m[key], list) else [m[key]]
        lines += ["", title, head]
        for r in rows:
            lines += _bin_lines(r)
    lines += ["", "all sources, per band: bias / med|d| / p90|d|",
              f"{'band':<6}" + "".join(f"{est:>26}" for est, _ in ESTIMATORS)]
    for b, per in m["per_band"].items():
        cells = (" / ".join(_fmt(v, f) for v, f in zip(per[est], ("+.3f", ".3f", ".3f"))) for est, _ in ESTIMATORS)
        lines.append(f"{b:<6}" + "".join(f"{c:>26}" for c in cells))
    lines.append("noise = median aperture sky-noise sigma / f_true (the floor any measurement carries); "
                 "cen / cen0 = median centroid error (px) vs the true light centroid / vs the drawn profile's centre")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# CLI
# -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcblend inject", description="source injection into blend files")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("blends", help="inject fake galaxies into blend files; writes new files and a truth table")
    b.add_argument("inputs", help="blend files: a directory or glob pattern (quote it)")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--per-blend", type=int, default=2, metavar="N")
    b.add_argument("--mag-range", type=float, nargs=2, default=(21.0, 25.0), metavar=("BRIGHT", "FAINT"))
    b.add_argument("--separation-range", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                   help="arcsec from a real peak")
    b.add_argument("--morphology", choices=("cosmos", "sersic"), default="cosmos")
    b.add_argument("--cosmos", metavar="DIR", help="GalSim COSMOS sample directory (for --morphology cosmos)")
    b.add_argument("--no-noise", action="store_true", help="add the noiseless sources (for checks)")
    mt = sub.add_parser("metrics", help="completeness and flux errors of the injections in a run's catalog")
    mt.add_argument("catalog")
    mt.add_argument("truth", help=f"the {TRUTH_FILE} of the injection")
    mt.add_argument("--band", default="i")
    mt.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    return p


def inject_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend inject blends ...`` and ``hpcblend inject metrics ...`` (see the module docstring).

    Returns
    -------
    int
        0, or 2 on an input error (message on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "blends":
            truth = inject_blends(args.inputs, args.out_dir, seed=args.seed, per_blend=args.per_blend,
                                  mag_range=tuple(args.mag_range), sep_range=tuple(args.separation_range),
                                  morphology=args.morphology, cosmos_dir=args.cosmos, add_noise=not args.no_noise)
            table = read_truth(truth)[0]
            print(f"injected {len(table)} sources into {len(set(table['blend_file']))} blend files; truth: {truth}")
            return 0
        m = injection_metrics(args.catalog, args.truth, band=args.band)
        print(format_metrics(m))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(m, fh, indent=1, default=json_default)
        return 0
    except (HpcblendError, OSError, KeyError) as exc:
        print(f"hpcblend: error: {exc}", file=sys.stderr)
        return 2
