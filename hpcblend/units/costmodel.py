"""Runtime predictor per work unit from cheap features known before fitting.

The model is a power law in the unit's features, fitted by least squares in log
space::

    log t = log c + a log n_peaks + b log area (+ d log peak_flux)

Blend units (one parent blend: an npz blend file, or one footprint of a tract
run) use ``n_peaks`` and ``footprint_area`` (pixels) from ``/blends``, and the
brightest peak's flux when the catalog has a ``peak_flux`` column (it does not
today: the term is then left out). Patch units (tract runs) use the outer box's
area (pixels) and the number of sources (``n_sources`` of ``/patches``, known
from an earlier run of the same tract; when it is not known at prediction time
the training mean is used, so the prediction falls back to area alone).

The prediction is only used to *order* work (largest first); what matters is
its rank correlation with the true cost, which :func:`fit_cost_model` reports
(Spearman ρ) next to R² of the log fit.

Usage
-----
>>> model = fit_cost_model(["run1.h5", "run2.h5"])         # doctest: +SKIP
>>> model.save("model.json"); model = CostModel.load("model.json")  # doctest: +SKIP
>>> model.predict(n_peaks=[2, 8], area=[900, 5000])         # seconds, doctest: +SKIP
>>> default_cost_model().predict(4, 1500)                   # doctest: +SKIP

Command line (``hpcblend costmodel fit RUN.h5 [RUN2.h5 ...] --out model.json``)
prints the coefficients, R², and the predicted-vs-actual scatter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["CostModel", "fit_cost_model", "fit_arrays", "default_cost_model", "load_cost_model",
           "unit_features", "costmodel_main", "DEFAULT_BLEND_MODEL", "COST_MODEL_VERSION"]

#: Version of the JSON layout written by :meth:`CostModel.save`.
COST_MODEL_VERSION = 1

#: Columns of ``/blends`` read as the brightest-peak-flux feature when present (first found).
PEAK_FLUX_COLUMNS = ("peak_flux", "peak_flux_max", "max_peak_flux")

#: Default model for blend units: fitted (:func:`fit_cost_model`) on the 164 real HSC blends of
#: ``../shared/data/hsc_blends`` (``jobs/hsc_blends.yaml``, FISTA, e_rel 1e-3, one rank, one Numba
#: thread) on the development machine (2-core VM, quiet: the job got 94 % of its core), 2026-11, with
#: the deblender of commit 0001743 (two-component bright sources). ``t`` is ``t_total`` per blend in
#: seconds: ``t = 4.06e-6 s · n_peaks^0.225 · footprint_area^1.070`` (R² 0.88, scatter 0.14 dex,
#: Spearman 0.962; the driver's present key n_peaks × area has Spearman 0.959 on the same run, area
#: alone 0.956: the model adds calibrated seconds more than a better order).
#: Absolute seconds depend on the machine; the exponents (what ordering uses) carry over.
DEFAULT_BLEND_MODEL = {
    "kind": "blend",
    "features": ["n_peaks", "footprint_area"],
    "log_c": -12.4143,
    "exponents": [0.2254, 1.0697],
    "r2": 0.8842,
    "n": 164,
    "rms_dex": 0.1384,
    "spearman": 0.9622,
    "feature_log_mean": [1.4256, 7.2719],
    "sources": ["hsc_blends (164 blends), jobs/hsc_blends.yaml, 1 rank, development VM, 2026-11"],
}


@dataclass
class CostModel:
    """A fitted power-law runtime model ``t = c · Π feature_i ^ exponent_i`` (seconds).

    Attributes
    ----------
    kind : str
        ``"blend"`` (features ``n_peaks``, ``footprint_area`` [, ``peak_flux``])
        or ``"patch"`` (features ``n_sources``, ``area``).
    features : list of str
        Feature names, in the order of ``exponents``.
    log_c : float
        Natural log of the constant ``c`` (seconds).
    exponents : list of float
        One per feature.
    r2 : float
        Coefficient of determination of the fit of ``log t``.
    n : int
        Rows fitted.
    rms_dex : float
        RMS residual of ``log10 t`` (the scatter: 0.17 dex ≈ ×1.5).
    spearman : float
        Rank correlation of predicted and actual ``t`` on the fitted rows.
    feature_log_mean : list of float
        Mean ``log`` of each feature over the fitted rows: used in place of a
        feature that is unknown at prediction time.
    sources : list of str
        Where the rows came from (catalog paths).
    """

    kind: str
    features: list
    log_c: float
    exponents: list
    r2: float = float("nan")
    n: int = 0
    rms_dex: float = float("nan")
    spearman: float = float("nan")
    feature_log_mean: list = field(default_factory=list)
    sources: list = field(default_factory=list)

    # ------------------------------------------------------------------ prediction

    def predict(self, n_peaks=None, area=None, peak_flux=None, **features) -> np.ndarray:
        """Predicted runtime in seconds.

        Parameters
        ----------
        n_peaks : array_like, optional
            Blend units: peaks in the footprint. Patch units: number of
            sources in the patch (from an earlier run; ``n_sources``).
        area : array_like, optional
            Blend units: footprint area (pixels). Patch units: outer-box area (pixels).
        peak_flux : array_like, optional
            Brightest peak's flux (counts); only used if the model has that term.
        **features : array_like
            Any feature by its model name (``n_peaks``, ``footprint_area``,
            ``n_sources``, ``area``, ``peak_flux``); overrides the positional
            aliases.

        Returns
        -------
        ndarray (or float for scalar inputs)
            Seconds. A feature given as None (or a non-positive / non-finite
            value) is replaced by its training mean in log space.
        """
        alias = {"n_peaks": n_peaks, "n_sources": n_peaks, "footprint_area": area, "area": area,
                 "peak_flux": peak_flux}
        given = {k: v for k, v in alias.items() if v is not None}
        given.update({k: v for k, v in features.items() if v is not None})
        arrays = [np.asarray(v, dtype=float) for v in given.values()]
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
        logt = np.full(shape, float(self.log_c))
        for i, (name, e) in enumerate(zip(self.features, self.exponents)):
            mean = self.feature_log_mean[i] if i < len(self.feature_log_mean) else 0.0
            if name in given:
                x = np.broadcast_to(np.asarray(given[name], dtype=float), shape)
                with np.errstate(divide="ignore", invalid="ignore"):
                    lx = np.where(np.isfinite(x) & (x > 0), np.log(np.where(x > 0, x, 1.0)), mean)
            else:
                lx = mean
            logt = logt + e * lx
        out = np.exp(logt)
        return float(out) if out.ndim == 0 else out

    def predict_table(self, rows) -> np.ndarray:
        """Predict from a structured array / dict of columns (``/blends`` or ``/patches`` rows)."""
        feats = unit_features(rows, self.kind)
        return self.predict(**{k: v for k, v in feats.items() if k in self.features})

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cost_model_version"] = COST_MODEL_VERSION
        d["formula"] = "t[s] = exp(log_c) * prod(feature_i ** exponents_i)"
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "CostModel":
        from hpcblend.errors import ConfigError

        v = int(d.get("cost_model_version", COST_MODEL_VERSION))
        if v > COST_MODEL_VERSION:
            raise ConfigError(f"cost model version {v} is newer than this hpcblend reads ({COST_MODEL_VERSION})")
        try:
            feats = list(d["features"])
            exps = [float(x) for x in d["exponents"]]
            log_c = float(d["log_c"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"cost model: missing or bad key ({exc}); need features, exponents, log_c") from exc
        if len(feats) != len(exps):
            raise ConfigError(f"cost model: {len(feats)} features but {len(exps)} exponents")
        return cls(kind=str(d.get("kind", "blend")), features=feats, log_c=log_c, exponents=exps,
                   r2=float(d.get("r2", float("nan"))), n=int(d.get("n", 0)),
                   rms_dex=float(d.get("rms_dex", float("nan"))), spearman=float(d.get("spearman", float("nan"))),
                   feature_log_mean=[float(x) for x in d.get("feature_log_mean", [0.0] * len(feats))],
                   sources=list(d.get("sources", [])))

    def save(self, path: str | os.PathLike) -> str:
        """Write the model as JSON; returns the path."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CostModel":
        """Read a model written by :meth:`save`.

        Raises
        ------
        hpcblend.errors.ConfigError
            The file is missing, not JSON, or lacks the model's keys.
        """
        from hpcblend.errors import ConfigError

        path = os.fspath(path)
        try:
            with open(path) as fh:
                d = json.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read cost model: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"{path}: cost model is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def describe(self) -> str:
        """One line: ``t = c · n_peaks^a · footprint_area^b  (R² …, n …)``."""
        terms = " · ".join(f"{f}^{e:.3f}" for f, e in zip(self.features, self.exponents))
        return (f"t[s] = {np.exp(self.log_c):.3e} · {terms}   (R² {self.r2:.3f}, n {self.n}, "
                f"scatter {self.rms_dex:.3f} dex, Spearman {self.spearman:.3f}, kind {self.kind})")


def default_cost_model() -> CostModel:
    """The documented default blend model (:data:`DEFAULT_BLEND_MODEL`), used when no model file is given."""
    return CostModel.from_dict(DEFAULT_BLEND_MODEL)


def load_cost_model(path: Optional[str | os.PathLike] = None) -> CostModel:
    """``CostModel.load(path)``, or the default model when ``path`` is None or empty (for ``run.cost_model``)."""
    return CostModel.load(path) if path else default_cost_model()


# ---------------------------------------------------------------------- features and fitting


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


def unit_features(rows, kind: str) -> dict:
    """Cheap features of rows of ``/blends`` (kind ``"blend"``) or ``/patches`` (kind ``"patch"``).

    Returns
    -------
    dict of str -> ndarray
        ``blend``: ``n_peaks``, ``footprint_area`` (+ ``peak_flux`` when a column of
        :data:`PEAK_FLUX_COLUMNS` exists). ``patch``: ``n_sources`` (if present), ``area``
        (outer box height × width).
    """
    names = rows.dtype.names if hasattr(rows, "dtype") and rows.dtype.names else tuple(rows)
    if kind == "blend":
        out = {"n_peaks": np.asarray(rows["n_peaks"], float), "footprint_area": np.asarray(rows["footprint_area"], float)}
        for c in PEAK_FLUX_COLUMNS:
            if c in names:
                out["peak_flux"] = np.asarray(rows[c], float)
                break
        return out
    if kind == "patch":
        out = {}
        if "n_sources" in names:
            out["n_sources"] = np.asarray(rows["n_sources"], float)
        if "area" in names:
            out["area"] = np.asarray(rows["area"], float)
        else:
            ob = np.asarray(rows["outer_bbox"])
            out["area"] = ob[:, 2].astype(float) * ob[:, 3].astype(float)
        return out
    raise ValueError(f"unknown unit kind {kind!r} (blend or patch)")


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
    from hpcblend.io.catalog import open_catalog, read_table

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
    import matplotlib

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
    from hpcblend.errors import HpcblendError

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
