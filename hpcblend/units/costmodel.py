"""Runtime predictor per work unit from cheap features known before fitting: what a run needs to order its units.

The model is a power law in the unit's features::

    log t = log c + a log n_peaks + b log area (+ d log peak_flux)

Blend units (one parent blend: an npz blend file, or one footprint of a tract
run) use ``n_peaks`` and ``footprint_area`` (pixels) from ``/blends``, and the
brightest peak's flux when the catalog has a ``peak_flux`` column (it does not
today: the term is then left out). Patch units (tract runs) use the outer box's
area (pixels) and the number of sources (``n_sources`` of ``/patches``, known
from an earlier run of the same tract; when it is not known at prediction time
the training mean is used, so the prediction falls back to area alone).

The prediction is only used to *order* work (largest first, :func:`unit_cost`
gives the key); what matters is its rank correlation with the true cost. Fitting
a model from earlier catalogs (``hpcblend costmodel fit``) is offline work:
:mod:`hpcblend.analysis.costfit`.

Usage
-----
>>> model = CostModel.load("model.json")                    # doctest: +SKIP
>>> model.predict(n_peaks=[2, 8], area=[900, 5000])         # seconds, doctest: +SKIP
>>> default_cost_model().predict(4, 1500)                   # doctest: +SKIP
>>> unit_cost(load_cost_model(None), "blend", n_peaks=4, area=1500)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

import numpy as np

from hpcblend.errors import ConfigError

__all__ = ["CostModel", "default_cost_model", "load_cost_model", "unit_features", "unit_cost", "DEFAULT_BLEND_MODEL",
           "COST_MODEL_VERSION", "PEAK_FLUX_COLUMNS"]

#: Version of the JSON layout written by :meth:`CostModel.save`.
COST_MODEL_VERSION = 1

#: Columns of ``/blends`` read as the brightest-peak-flux feature when present (first found).
PEAK_FLUX_COLUMNS = ("peak_flux", "peak_flux_max", "max_peak_flux")

#: Default model for blend units: fitted (:func:`hpcblend.analysis.costfit.fit_cost_model`) on the 164
#: real HSC blends of ``../shared/data/hsc_blends`` (``jobs/hsc_blends.yaml``, FISTA, e_rel 1e-3, one rank, one Numba
#: thread) on the development machine (2-core VM, quiet: the job got 94 % of its core), 2026-11, with
#: the deblender of commit 0001743 (two-component bright sources). ``t`` is ``t_total`` per blend in
#: seconds: ``t = 4.06e-6 s · n_peaks^0.225 · footprint_area^1.070`` (R² 0.88, scatter 0.14 dex,
#: Spearman 0.962; the key without a model, n_peaks × area, has Spearman 0.959 on the same run, area
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


def unit_cost(model, kind: str, n_peaks=None, area=None):
    """Expected cost of work units: the key the driver orders them by, largest first.

    The driver (every work source's plan) and the scaling replay's
    ``dynamic_cost`` policy (:mod:`hpcblend.analysis.scaling`) both take it
    from here, so the replay orders units exactly as a run does.

    Parameters
    ----------
    model : CostModel or None
        ``run.cost_model`` (or the default model); None: no model.
    kind : str
        ``"blend"``: a blend file; ``"patch"``: a patch of a tract.
    n_peaks : array_like, optional
        Blend units: peaks of the blend (None counts as 0).
    area : array_like
        Blend units: footprint area; patch units: outer-box area (pixels).

    Returns
    -------
    float or ndarray
        Blend units: ``model.predict(n_peaks, area)`` (seconds) with both at
        least 1 when the model is a blend model, else ``n_peaks × area``.
        Patch units: the patch model's prediction from the area alone (the
        number of sources is not known before the run: its training mean
        stands in) when the model is a patch model, else the area.

    Raises
    ------
    ValueError
        Unknown ``kind``.
    """
    if kind == "blend":
        n = np.maximum(np.asarray(0 if n_peaks is None else n_peaks, dtype=float), 1.0)
        a = np.maximum(np.asarray(0 if area is None else area, dtype=float), 1.0)
        cost = model.predict(n_peaks=n, area=a) if model is not None and model.kind == "blend" else n * a
    elif kind == "patch":
        a = np.asarray(area, dtype=float)
        cost = model.predict(n_peaks=None, area=a) if model is not None and model.kind == "patch" else a
    else:
        raise ValueError(f"unknown unit kind {kind!r} (blend or patch)")
    cost = np.asarray(cost, dtype=float)
    return float(cost) if cost.ndim == 0 else cost
