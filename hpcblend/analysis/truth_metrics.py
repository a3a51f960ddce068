"""Flux accuracy of a run on the simulated blend sets against the truth inside their files (``hpcblend truth``).

The sets of :mod:`hpcblend.simulate.blend_sets` carry their truth as ``truth_*`` members of every npz
file. :func:`flux_accuracy` matches a run catalog's children to it — ``/blends.source_file`` names the
file, ``/sources`` (``parent_id``, ``peak_index``) the peak in the file's peak order — and reports the
relative flux error Δf/f = (f - f_true) / f_true of the model flux ``flux_model_<b>`` and of the
flux-conserving ``flux_<b>``, per band and pooled over bands: the bias (median Δf/f), the median and 90th
percentile of |Δf/f|, and the noise floor (median 1/S/N) of the sources whose S/N *in that band* exceeds
``snr_min``, plus the list of bright (S/N_i > 50), isolated (no other peak within 1") sources that are off by
more than 10 % in a band where they have S/N > 50. Beside them it scores, on the same sources, the files'
known-shape floor ``truth_flux_known_shape`` (truth version 2; :mod:`hpcblend.simulate.known_shapes`): the
error left when every source's true shape is known, from the noise alone. "noise" (1/S/N of each source
alone) is that floor only for isolated sources; the known-shape floor also counts the overlap.
:func:`format_accuracy` prints it; :func:`main` is the command line.

A peak is scored only when its row exists, its parent was deblended (not failed or skipped), it was
fitted (no ``flag_peak_*`` but ``flag_peak_merged``), its own light does not saturate
(``truth_saturated``) and at most :data:`MAX_MASKED_FRACTION` of its i-band light falls on masked pixels;
the others are counted by reason. ``f_true`` is ``truth_flux_image`` (what the blend's box holds; the
deblender cannot see light beyond it) or, with ``truth="total"``, ``truth_flux``. S/N is the optimal S/N
of the source alone (``truth_snr``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence, Union

import numpy as np

from hpcblend.errors import HpcblendError, InputError
from hpcblend.io.blends import expand_inputs
from hpcblend.io.catalog import read_table
from hpcblend.io.json_values import json_default
from hpcblend.io.blend_truth import read_blend_truth

__all__ = ["ESTIMATORS", "KNOWN_SHAPE", "ISOLATION_ARCSEC", "MAX_MASKED_FRACTION", "OUTLIER_SNR", "OUTLIER_TOLERANCE",
           "SNR_MIN", "STATUSES", "flux_accuracy", "format_accuracy", "main"]

#: Flux estimators scored: (name, catalog column pattern).
ESTIMATORS = (("model", "flux_model_{b}"), ("conserving", "flux_{b}"))
#: The floor scored beside them: the file's ``truth_flux_known_shape`` (:mod:`hpcblend.simulate.known_shapes`).
KNOWN_SHAPE = "known_shape"
#: What :func:`flux_accuracy` scores: the run's estimators, then the known-shape floor.
_SCORED = tuple(est for est, _ in ESTIMATORS) + (KNOWN_SHAPE,)
#: A peak with more of its i-band light than this on masked (e.g. saturated) pixels is not scored.
MAX_MASKED_FRACTION: float = 0.05
#: Default criteria: a source is scored in a band where its S/N exceeds ``SNR_MIN``; an outlier has S/N_i above
#: ``OUTLIER_SNR``, no other peak within ``ISOLATION_ARCSEC`` (arcsec) and |Δf/f| above ``OUTLIER_TOLERANCE``.
SNR_MIN: float = 10.0
OUTLIER_SNR: float = 50.0
ISOLATION_ARCSEC: float = 1.0
OUTLIER_TOLERANCE: float = 0.1
#: Status of a truth peak, in order of precedence; only "ok" peaks are scored.
STATUSES = ("ok", "missing", "parent_failed", "not_fitted", "saturated", "masked")


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _files_of_blends(blends: np.ndarray, paths: list) -> dict:
    """{truth file: /blends row index}: by absolute path, else by file name when that is unique among ``paths``."""
    by_path = {os.path.abspath(p): p for p in paths}
    names = {}
    for p in paths:
        names.setdefault(os.path.basename(p), []).append(p)
    out = {}
    for i, sf in enumerate(blends["source_file"]):
        sf = _text(sf)
        p = by_path.get(os.path.abspath(sf))
        if p is None and len(names.get(os.path.basename(sf), ())) == 1:
            p = names[os.path.basename(sf)][0]
        if p is not None:
            out[p] = i
    return out


def _truth_status(t: dict) -> np.ndarray:
    """Per truth peak of one file (:func:`read_blend_truth`'s dict), shape (N,) str: "saturated", "masked"
    (more than ``MAX_MASKED_FRACTION`` of its i-band light on masked pixels) or "ok" (scorable)."""
    masked = np.asarray(t["masked_fraction"], dtype=np.float64) > MAX_MASKED_FRACTION
    return np.where(np.asarray(t["saturated"], dtype=bool), "saturated", np.where(masked, "masked", "ok"))


def _known_shape_estimate(t: dict, truth_key: str) -> np.ndarray:
    """The known-shape floor's flux (K, B) on the scale of ``t[truth_key]``; NaN for files before truth version 2."""
    if "flux_known_shape" not in t:
        return np.full(np.shape(t[truth_key]), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):  # a fitted profile's share of f_true: flux_image / flux
        return t["flux_known_shape"] * (t[truth_key] / t["flux"])


def _peak_rows(paths: list, blends: np.ndarray, src: np.ndarray, truth_key: str) -> dict:
    """Every truth peak of ``paths`` with its status and measured fluxes: arrays over the N peaks."""
    row_of_file = _files_of_blends(blends, paths)
    key = {(int(p), int(k)): i for i, (p, k) in enumerate(zip(src["parent_id"], src["peak_index"]))}
    drop = [c for c in src.dtype.names if c.startswith("flag_peak_") and c != "flag_peak_merged"]
    cols = {name: [] for name in ("file", "parent_id", "peak_index", "kind", "status", "f_true", "snr", "snr_i",
                                  "nn_arcsec", "model", "conserving", KNOWN_SHAPE)}
    bands = None
    for path in paths:
        t = read_blend_truth(path)
        bands = bands or t["bands"]
        if t["bands"] != bands:
            raise InputError(f"{path}: bands {t['bands']} differ from {bands} of the other files")
        bi = row_of_file.get(path)
        if bi is not None and int(blends["n_peaks"][bi]) != t["n_peaks"]:
            raise InputError(f"{path}: {t['n_peaks']} truth peaks but the catalog's blend {int(blends['id'][bi])} "
                             f"has {int(blends['n_peaks'][bi])}: not the file that was run")
        failed = bi is not None and bool(blends["flag_failed"][bi] or blends["flag_skipped_too_many_peaks"][bi]
                                         or blends["flag_skipped_too_large"][bi])
        pid = int(blends["id"][bi]) if bi is not None else -1
        truth_status = _truth_status(t)
        known = _known_shape_estimate(t, truth_key)
        for k in range(t["n_peaks"]):
            i = key.get((pid, k)) if bi is not None else None
            status = ("missing" if i is None else "parent_failed" if failed
                      else "not_fitted" if any(bool(src[c][i]) for c in drop) else str(truth_status[k]))
            for est, pattern in ESTIMATORS:
                cols[est].append([float(src[pattern.format(b=b)][i]) if i is not None else np.nan for b in bands])
            cols["file"].append(path)
            cols["parent_id"].append(pid)
            cols["peak_index"].append(k)
            cols["kind"].append(str(t["kind"][k]))
            cols["status"].append(status)
            cols["f_true"].append(t[truth_key][k])
            cols[KNOWN_SHAPE].append(known[k])
            cols["snr"].append(t["snr"][k])
            cols["snr_i"].append(float(t["snr_i"][k]))
            cols["nn_arcsec"].append(float(t["nn_arcsec"][k]))
    nb = len(bands or ())
    out = {n: np.asarray(v) for n, v in cols.items()}
    for n in ("f_true", "snr", "model", "conserving", KNOWN_SHAPE):
        out[n] = np.asarray(cols[n], dtype=np.float64).reshape(-1, nb)
    out["bands"] = tuple(bands or ())
    return out


def _stats(dff: np.ndarray, snr: np.ndarray) -> dict:
    """n, bias (median Δf/f), median and p90 of |Δf/f|, noise (median 1/S/N) of the finite values; NaN if none."""
    ok = np.isfinite(dff)
    d, s = dff[ok], snr[ok]
    if d.size == 0:
        return {"n": 0, "bias": np.nan, "median_abs": np.nan, "p90_abs": np.nan, "noise": np.nan}
    return {"n": int(d.size), "bias": float(np.median(d)), "median_abs": float(np.median(np.abs(d))),
            "p90_abs": float(np.percentile(np.abs(d), 90)), "noise": float(np.median(1.0 / s))}


def _outliers(rows: dict, dff: dict, snr_min: float, isolation_arcsec: float, tolerance: float) -> list:
    """Scored peaks with S/N_i > ``snr_min``, no other peak within ``isolation_arcsec``, off by > ``tolerance``."""
    bright = rows["snr"] > snr_min
    off_by = {est: np.any(bright & (np.abs(np.nan_to_num(dff[est], nan=np.inf)) > tolerance), axis=1)
              for est, _ in ESTIMATORS}
    off = np.logical_or.reduce(list(off_by.values()))
    sel = (rows["status"] == "ok") & (rows["snr_i"] > snr_min) & (rows["nn_arcsec"] >= isolation_arcsec) & off
    worst = np.nanmax(np.abs(dff["model"]), axis=1, initial=0.0)
    out = []
    for i in sorted(np.flatnonzero(sel), key=lambda j: -worst[j]):
        out.append({"file": os.path.basename(str(rows["file"][i])), "parent_id": int(rows["parent_id"][i]),
                    "peak_index": int(rows["peak_index"][i]), "kind": str(rows["kind"][i]),
                    "snr_i": float(rows["snr_i"][i]), "nn_arcsec": float(rows["nn_arcsec"][i]),
                    "off_by": [est for est, _ in ESTIMATORS if off_by[est][i]],
                    **{f"dff_{est}": dict(zip(rows["bands"], dff[est][i].tolist())) for est, _ in ESTIMATORS}})
    return out


def flux_accuracy(catalog_path: Union[str, os.PathLike], blend_paths_or_glob, *, snr_min: float = SNR_MIN,
                  outlier_snr: float = OUTLIER_SNR, isolation_arcsec: float = ISOLATION_ARCSEC,
                  outlier_tolerance: float = OUTLIER_TOLERANCE,
                  truth: str = "image") -> dict:
    """Relative flux errors of a run's children against the truth in the blend files.

    Parameters
    ----------
    catalog_path : str or path
        HDF5 catalog of a run over (some of) the files (``/blends``, ``/sources``).
    blend_paths_or_glob : str, path or list of those
        The truth files: files, directories or glob patterns (:func:`hpcblend.io.blends.expand_inputs`).
    snr_min : float
        Score a source in band b when its S/N in b (``truth_snr``) exceeds this.
    outlier_snr, isolation_arcsec, outlier_tolerance : float
        Outliers: S/N_i > ``outlier_snr``, nearest other peak >= ``isolation_arcsec`` (arcsec), |Δf/f| >
        ``outlier_tolerance`` in a band with S/N > ``outlier_snr``, for either estimator.
    truth : {"image", "total"}
        ``f_true``: ``truth_flux_image`` (the flux inside the blend's box) or ``truth_flux`` (the profile's).

    Returns
    -------
    dict
        ``catalog``, ``n_files``, ``n_peaks``, ``bands``, ``truth``, ``snr_min``, ``status`` ({status: count},
        :data:`STATUSES`), ``per_band`` ({band: {estimator: stats}}), ``pooled`` ({estimator: stats}), the
        estimators ``model``, ``conserving`` and :data:`KNOWN_SHAPE` (``n`` 0 for files before truth version 2), each
        stats ``{"n", "bias", "median_abs", "p90_abs", "noise"}`` (Δf/f, dimensionless), ``outliers`` (list of
        dicts: file, parent_id, peak_index, kind, snr_i, nn_arcsec, ``off_by`` (the estimators off: "model",
        "conserving" or both), ``dff_model`` and ``dff_conserving`` {band: Δf/f}), and the outlier criteria.

    Raises
    ------
    InputError
        No file matches, a file has no truth, bands differ between files, or a blend's peak count differs from
        the catalog's. :class:`~hpcblend.errors.CatalogError`: the catalog cannot be read.
    """
    if truth not in ("image", "total"):
        raise InputError(f"truth: expected 'image' or 'total', got {truth!r}")
    paths = expand_inputs(blend_paths_or_glob)
    blends, src = read_table(catalog_path, "blends"), read_table(catalog_path, "sources")
    rows = _peak_rows(paths, blends, src, "flux_image" if truth == "image" else "flux")
    bands = rows["bands"]
    for est, pattern in ESTIMATORS:
        missing = [pattern.format(b=b) for b in bands if pattern.format(b=b) not in src.dtype.names]
        if missing:
            raise InputError(f"{catalog_path}: /sources lacks {missing}")
    with np.errstate(divide="ignore", invalid="ignore"):
        dff = {est: (rows[est] - rows["f_true"]) / rows["f_true"] for est in _SCORED}
    scored = (rows["status"] == "ok")[:, None] & (rows["snr"] > snr_min)
    per_band = {b: {est: _stats(dff[est][scored[:, j], j], rows["snr"][scored[:, j], j]) for est in dff}
                for j, b in enumerate(bands)}
    pooled = {est: _stats(dff[est][scored], rows["snr"][scored]) for est in dff}
    return {"catalog": os.fspath(catalog_path), "n_files": len(paths), "n_peaks": int(len(rows["status"])),
            "bands": list(bands), "truth": truth, "snr_min": float(snr_min),
            "status": {s: int(np.sum(rows["status"] == s)) for s in STATUSES},
            "per_band": per_band, "pooled": pooled,
            "outlier_criteria": {"snr_i": float(outlier_snr), "isolation_arcsec": float(isolation_arcsec),
                                 "tolerance": float(outlier_tolerance)},
            "outliers": _outliers(rows, dff, outlier_snr, isolation_arcsec, outlier_tolerance)}


def _cells(s: dict) -> str:
    return f"{s['bias']:+8.4f} {s['median_abs']:8.4f} {s['p90_abs']:8.4f}"


def format_accuracy(m: dict, top: int = 20) -> str:
    """Text table of :func:`flux_accuracy`'s result: counts by status, stats per band and pooled, outliers."""
    lines = [f"truth flux accuracy: {m['catalog']} vs {m['n_files']} blend files, {m['n_peaks']} truth peaks",
             "peaks: " + ", ".join(f"{s.replace('_', ' ')} {n}" for s, n in m["status"].items()),
             f"Δf/f = (f - f_true) / f_true, f_true = truth_flux_{'image' if m['truth'] == 'image' else 'total'}; "
             f"scored: status ok and S/N in the band > {m['snr_min']:g}",
             f"{'band':<7}{'n':>6} {'noise':>7}  | {'model: bias':>12} {'med|.|':>8} {'p90|.|':>8}  "
             f"| {'conserving: bias':>17} {'med|.|':>8} {'p90|.|':>8}"]
    known = m["pooled"].get(KNOWN_SHAPE, {}).get("n", 0) > 0
    if known:
        lines[-1] += f"  | {'known shapes: bias':>19} {'med|.|':>8} {'p90|.|':>8}"
    rows = list(m["per_band"].items()) + [("pooled", m["pooled"])]
    for name, per in rows:
        s = per["model"]
        lines.append(f"{name:<7}{s['n']:>6} {s['noise']:7.4f}  | {_cells(s):>30}  | {_cells(per['conserving']):>35}"
                     + (f"  | {_cells(per[KNOWN_SHAPE]):>37}" if known else ""))
    c = m["outlier_criteria"]
    out = m["outliers"]
    by_model = sum("model" in o["off_by"] for o in out)
    lines.append(f"outliers: S/N_i > {c['snr_i']:g}, no other peak within {c['isolation_arcsec']:g}\", |Δf/f| > "
                 f"{c['tolerance']:.0%} in a band with S/N > {c['snr_i']:g}: {len(out)} (model flux {by_model}, "
                 f"conserving flux only {len(out) - by_model})"
                 + (f"; the {top} worst by model flux" if len(out) > top else ""))
    bands = m["bands"]
    if out:
        nn = 'nn"'
        lines.append(f"  {'file':<22}{'peak':>5} {'kind':<7}{'S/N_i':>7}{nn:>6}  Δf/f model ({''.join(bands)})"
                     f"  |  conserving")
    for o in out[:top]:
        dm = " ".join(f"{o['dff_model'][b]:+.3f}" for b in bands)
        dc = " ".join(f"{o['dff_conserving'][b]:+.3f}" for b in bands)
        lines.append(f"  {o['file']:<22}{o['peak_index']:>5} {o['kind']:<7}{o['snr_i']:>7.0f}"
                     f"{min(o['nn_arcsec'], 99.0):>6.2f}  {dm}  |  {dc}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcblend truth",
                                description="flux accuracy of a run on simulated blend sets vs the truth in the files")
    p.add_argument("catalog")
    p.add_argument("blends", nargs="+", help="the blend files: files, directories or glob patterns (quote them)")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--snr-min", type=float, default=SNR_MIN, help="score sources with S/N in the band above this")
    p.add_argument("--truth", choices=("image", "total"), default="image",
                   help="f_true: the flux inside the blend's box (default) or the whole profile's")
    p.add_argument("--top", type=int, default=20, metavar="N", help="list at most N outliers")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend truth CATALOG BLENDS... [--json OUT] [--snr-min S] [--truth image|total] [--top N]``.

    Returns
    -------
    int
        0, or 2 on an input error (one line on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        m = flux_accuracy(args.catalog, args.blends, snr_min=args.snr_min, truth=args.truth)
        print(format_accuracy(m, top=args.top))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(m, fh, indent=1, default=json_default)
        return 0
    except (HpcblendError, OSError) as exc:
        print(f"hpcblend: error: {exc}", file=sys.stderr)
        return 2
