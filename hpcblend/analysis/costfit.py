"""Fitting a per-unit runtime model from earlier run catalogs (``hpcblend costmodel fit``): offline work.

A run only loads and evaluates a model (:mod:`hpcblend.units.costmodel`); this module fits one by
least squares in log space::

    log t = log c + a log n_peaks + b log area (+ d log peak_flux)

on the ``/blends`` rows of blend-file runs (fitted blends only) or the ``/patches`` rows of tract
runs, and reports R² of the log fit next to the rank correlation (Spearman ρ) of predicted and
actual times, which is what ordering cares about.

Usage
-----
>>> model = fit_cost_model(["run1.h5", "run2.h5"])         # doctest: +SKIP
>>> model.save("model.json")                               # doctest: +SKIP

Command line (``hpcblend costmodel fit RUN.h5 [RUN2.h5 ...] --out model.json``) prints the
coefficients, R², and the predicted-vs-actual scatter; ``hpcblend costmodel show [model.json]``
prints a model (the default model without a file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

from hpcblend.errors import HpcblendError
from hpcblend.io.catalog import open_catalog, read_table
from hpcblend.units.costmodel import CostModel, load_cost_model, unit_features

__all__ = ["fit_cost_model", "fit_arrays", "spearman", "scatter_table", "costmodel_main"]


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    xs = x[order]
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        if j > i:
            ranks[order[i:j + 1]] = 0.5 * (i + j)
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D arrays (nan for fewer than 2 rows)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    ra, rb = _rankdata(a), _rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_arrays(t, features: Mapping[str, Sequence[float]], kind: str = "blend", sources=()) -> CostModel:
    """Least-squares fit of ``log t = log c + Σ e_i log x_i`` from arrays.

    Rows with a non-positive or non-finite ``t`` or feature are dropped. A
    feature that is constant over the rows is left out (its exponent cannot
    be identified; its effect goes into ``c``).

    Parameters
    ----------
    t : array_like
        Runtimes (seconds).
    features : mapping name -> array_like
        Feature columns (same length as ``t``).
    kind : str
        Stored in the model (``blend`` or ``patch``).

    Returns
    -------
    CostModel

    Raises
    ------
    ValueError
        Fewer usable rows than coefficients + 1.
    """
    t = np.asarray(t, dtype=float)
    names = list(features)
    X = np.column_stack([np.asarray(features[n], dtype=float) for n in names]) if names else np.zeros((len(t), 0))
    ok = np.isfinite(t) & (t > 0) & np.all(np.isfinite(X) & (X > 0), axis=1)
    t, X = t[ok], X[ok]
    L = np.log(X)
    keep = [i for i in range(L.shape[1]) if len(L) > 1 and np.ptp(L[:, i]) > 1e-12]
    names = [names[i] for i in keep]
    L = L[:, keep]
    if len(t) < len(names) + 2:
        raise ValueError(f"cost model: {len(t)} usable rows, need at least {len(names) + 2} to fit {names}")
    A = np.column_stack([np.ones(len(t)), L])
    y = np.log(t)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ coef
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    rms_dex = float(np.sqrt(ss_res / len(y)) / np.log(10.0))
    return CostModel(kind=kind, features=names, log_c=float(coef[0]), exponents=[float(c) for c in coef[1:]],
                     r2=float(r2), n=int(len(t)), rms_dex=rms_dex, spearman=spearman(np.exp(pred), t),
                     feature_log_mean=[float(m) for m in L.mean(axis=0)], sources=[str(s) for s in sources])


def _training_rows(path: str, kind: str):
    """(t, features) of one catalog: ``/blends`` rows that were fitted, or ``/patches`` rows that are ok."""
    with open_catalog(path) as f:
        has_patches = "patches" in f
    if kind == "auto":
        kind = "patch" if has_patches else "blend"
    if kind == "patch":
        rows = read_table(path, "patches")
        ok = rows["status"] == b"ok" if "status" in rows.dtype.names else np.ones(len(rows), bool)
        rows = rows[ok]
        return kind, np.asarray(rows["t_total"], float), unit_features(rows, "patch")
    rows = read_table(path, "blends")
    bad = np.zeros(len(rows), bool)
    for c in ("flag_failed", "flag_skipped_too_many_peaks", "flag_skipped_too_large"):
        if c in rows.dtype.names:
            bad |= rows[c].astype(bool)
    if "isolated" in rows.dtype.names:  # isolated sources of tract runs are measured, not fitted
        bad |= rows["isolated"].astype(bool)
    rows = rows[~bad]
    return kind, np.asarray(rows["t_total"], float), unit_features(rows, "blend")


def fit_cost_model(paths: Sequence[str | os.PathLike] | str, kind: str = "auto") -> CostModel:
    """Fit a :class:`CostModel` from one or more earlier run catalogs.

    Parameters
    ----------
    paths : path or sequence of paths
        hpcblend run catalogs.
    kind : str
        ``"blend"``: per-blend ``t_total`` of ``/blends`` (failed, skipped and
        isolated rows left out) against ``n_peaks``, ``footprint_area``
        (+ ``peak_flux`` if every catalog has it). ``"patch"``: per-patch
        ``t_total`` of ``/patches`` against ``n_sources`` and the outer-box
        area. ``"auto"`` (default): ``patch`` when the first catalog has
        ``/patches``, else ``blend``.

    Raises
    ------
    hpcblend.errors.CatalogError
        A catalog cannot be read.
    ValueError
        Too few usable rows.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("fit_cost_model: no catalogs given")
    ts, feats, kinds = [], [], []
    for p in paths:
        k, t, f = _training_rows(p, kind if kind != "auto" or not kinds else kinds[0])
        kinds.append(k)
        ts.append(t)
        feats.append(f)
    common = [n for n in feats[0] if all(n in f for f in feats)]
    features = {n: np.concatenate([f[n] for f in feats]) for n in common}
    return fit_arrays(np.concatenate(ts), features, kind=kinds[0], sources=paths)


def scatter_table(model: CostModel, t, features: Mapping[str, np.ndarray], n_bins: int = 5) -> str:
    """Predicted-vs-actual scatter as text: per bin of predicted time, the actual/predicted ratio."""
    t = np.asarray(t, float)
    pred = np.asarray(model.predict(**{k: v for k, v in features.items()}), float)
    ok = np.isfinite(t) & (t > 0) & np.isfinite(pred) & (pred > 0)
    t, pred = t[ok], pred[ok]
    if len(t) == 0:
        return "(no rows)"
    ratio = t / pred
    edges = np.quantile(pred, np.linspace(0, 1, n_bins + 1))
    lines = [f"{'predicted [s]':>24} {'n':>5} {'actual/pred: p10':>17} {'median':>7} {'p90':>7}"]
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        sel = (pred >= lo) & ((pred < hi) if i < n_bins - 1 else (pred <= hi))
        if not sel.any():
            continue
        q = np.quantile(ratio[sel], [0.1, 0.5, 0.9])
        lines.append(f"{lo:11.4f} – {hi:10.4f} {int(sel.sum()):5d} {q[0]:17.2f} {q[1]:7.2f} {q[2]:7.2f}")
    q = np.quantile(ratio, [0.1, 0.5, 0.9])
    lines.append(f"{'all':>24} {len(t):5d} {q[0]:17.2f} {q[1]:7.2f} {q[2]:7.2f}")
    lines.append(f"sum actual {t.sum():.3f} s, sum predicted {pred.sum():.3f} s, Spearman {spearman(pred, t):.3f}")
    return "\n".join(lines)


def _plot(model: CostModel, t, features, path: str) -> None:
    import matplotlib  # optional dependency, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = model.predict(**features)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.loglog(pred, t, ".", ms=4, alpha=0.7)
    lo, hi = min(np.min(pred), np.min(t)), max(np.max(pred), np.max(t))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("predicted t [s]")
    ax.set_ylabel("actual t [s]")
    ax.set_title(f"cost model ({model.kind}), R² {model.r2:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def costmodel_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend costmodel fit RUN.h5 [RUN2.h5 ...] [--out model.json] [--kind blend|patch] [--plot P.png]``
    and ``hpcblend costmodel show [model.json]`` (the default model without a file).

    Returns the exit code (0 ok, 2 error).
    """
    ap = argparse.ArgumentParser(prog="hpcblend costmodel", description="Fit or show a per-unit runtime model.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fp = sub.add_parser("fit", help="fit log t = log c + a log n_peaks + b log area from run catalogs")
    fp.add_argument("catalogs", nargs="+")
    fp.add_argument("--out", help="write the model as JSON here")
    fp.add_argument("--kind", choices=("auto", "blend", "patch"), default="auto")
    fp.add_argument("--plot", help="write a predicted-vs-actual PNG here")
    sp = sub.add_parser("show", help="print a model file (or the default model)")
    sp.add_argument("model", nargs="?")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "show":
            m = load_cost_model(args.model)
            print(m.describe())
            print(json.dumps(m.to_dict(), indent=2))
            return 0
        m = fit_cost_model(args.catalogs, kind=args.kind)
        print(m.describe())
        print(f"log c = {m.log_c:.4f}; " + ", ".join(f"exponent[{f}] = {e:.4f}" for f, e in zip(m.features, m.exponents)))
        ts, fs = [], []
        for p in args.catalogs:
            _, t, f = _training_rows(p, m.kind)
            ts.append(t)
            fs.append(f)
        t = np.concatenate(ts)
        feats = {n: np.concatenate([f[n] for f in fs]) for n in m.features}
        print("predicted vs actual:")
        print(scatter_table(m, t, feats))
        if args.out:
            print(f"model written: {m.save(args.out)}")
        if args.plot:
            _plot(m, t, feats, args.plot)
            print(f"plot written: {args.plot}")
    except (HpcblendError, ValueError) as exc:
        print(f"hpcblend costmodel: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(costmodel_main())
