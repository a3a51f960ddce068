"""The workload a scaling replay plays: a run catalog's measured units, in the driver's unit order.

What is replayed
----------------
A run catalog holds the measured cost of every work unit: for blend units the
``t_total`` of the unit's ``/blends`` rows (one blend file each), for tract runs
the ``t_total`` of each ``/patches`` row. :func:`load_workload` reads them in
*file order* (the driver's unit index order: sorted input paths, or patch
number), together with what the catalog says about the run: ranks, schedule,
the per-unit work outside ``t_total`` (``/profile`` busy stages minus the
summed ``t_total``, per unit), the bytes each unit adds to the catalog, the
measured cost of one write round, and the wall times.

Workload scaling for large N
----------------------------
A catalog of U units cannot feed 4096 ranks. When ``N · min_units_per_rank >
U`` the unit list is *replicated* k = ceil(N · min_units_per_rank / U) times
(:func:`replicate`): file order is the list repeated k times (like k
statistically identical tracts, one after another), and cost ordering sorts the
whole replicated list. Below that N the workload is the catalog's own (strong
scaling); above it the units per rank stay ≈ ``min_units_per_rank`` (default
25: 4096 ranks × 25 ≈ 100k units) — weak scaling in units per rank. Each
result says its k.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Optional

import numpy as np

from hpcblend.io.catalog import open_catalog, read_json_group, read_table
from hpcblend.io.profiles import read_profiles
from hpcblend.units.costmodel import default_cost_model, unit_cost, unit_features

__all__ = ["Workload", "load_workload", "replicate", "replication_factor"]

#: ``/profile`` stages that are not work on units (waiting, writing, unattributed).
_BUSY_EXCLUDE = ("wait", "write", "other")


@dataclass
class Workload:
    """Measured units of a run, in file order.

    Attributes
    ----------
    kind : str
        ``"blend"`` or ``"patch"``.
    keys : list of str
        Unit names (source file, or ``patch <n>``).
    cost : ndarray, shape (U,)
        Measured seconds per unit (Σ ``t_total`` of its rows).
    features : dict of str -> ndarray, shape (U,)
        Cheap per-unit features: blend units ``n_peaks``, ``footprint_area``
        (of the unit's blend); patch units ``area`` (outer box),
        ``n_sources``.
    unit_overhead_s : float
        Work per unit outside ``t_total`` (s); 0 unless ``load_workload(overhead="unit")``.
    rank_startup_s : float
        Work outside ``t_total`` per rank (s): first-call costs on a rank's
        first unit (imports, kernels that the driver's warm-up does not compile).
    bytes_per_unit : float
        Catalog bytes written per unit (all tables).
    measured : dict
        What the catalog says about the run (see :func:`load_workload`).
    source : str
    """

    kind: str
    keys: list
    cost: np.ndarray
    features: dict
    unit_overhead_s: float = 0.0
    rank_startup_s: float = 0.0
    bytes_per_unit: float = 0.0
    measured: dict = field(default_factory=dict)
    source: str = ""

    @property
    def n_units(self) -> int:
        return len(self.cost)

    def predicted(self, model=None) -> np.ndarray:
        """Per-unit expected cost as the driver computes it (:func:`hpcblend.units.costmodel.unit_cost`).

        Parameters
        ----------
        model : hpcblend.units.costmodel.CostModel, optional
            The run's ``run.cost_model``; default: the default model (as a
            run without ``run.cost_model``). Patch units are ordered by a
            patch model's prediction from the area alone, else by area.
        """
        return self._unit_cost(model or default_cost_model())

    def driver_key(self) -> np.ndarray:
        """The expected cost without a cost model: n_peaks × footprint area (blend files), outer-box area (patches)."""
        return self._unit_cost(None)

    def _unit_cost(self, model) -> np.ndarray:
        f = self.features
        if self.kind == "blend":
            cost = unit_cost(model, "blend", n_peaks=f["n_peaks"], area=f["footprint_area"])
        else:
            cost = unit_cost(model, "patch", area=f["area"])
        return np.asarray(cost, float) * np.ones(self.n_units)


def _iso(s) -> Optional[float]:
    try:
        return datetime.fromisoformat(str(s)).timestamp()
    except (TypeError, ValueError):
        return None


def load_workload(path: str | os.PathLike, overhead: str = "rank") -> Workload:
    """Read a run catalog's units, in file order, with what it measured.

    The work outside the units' ``t_total`` (``/profile`` busy stages minus
    Σ ``t_total``) is attributed per rank (``overhead="rank"``, default:
    ``rank_startup_s`` = excess / ranks, paid on each rank's first unit) or per
    unit (``"unit"``). Per rank is what the runs here show: the excess per rank
    stays put when the units per rank change (HSC blends: 0.20, 0.21, 0.19 s per
    rank at 164 units/1 rank, 82/rank, 164/rank; simulated tract: 0.81 s at 16
    patches/1 rank, 0.89 s at 8/rank, 0.70 s at 4/rank), while the excess per
    unit changes 2-4×; a direct test found ~0.57 s outside ``t_total`` on a
    process's first patch and ~7 ms on later ones.

    ``measured`` holds: ``n_ranks``; ``schedule`` and ``write_every_units``/
    ``write_every_seconds`` (from ``/config``); ``writer``; ``rounds`` (ledger);
    ``loop_wall_s`` (the longest rank's ``/profile`` elapsed time: the work
    loop, its write rounds and the final sort); ``run_wall_s`` (provenance
    start to the catalog's ``finished`` stamp); ``busy_s`` per rank (``/profile``
    stages other than wait/write/other); ``unit_busy_s`` per rank (Σ measured
    unit cost by the rank that ran it); ``write_s`` and ``write_calls`` per rank;
    ``round_cost_s`` (write seconds per call on the rank that waited least);
    ``sum_cost_s``.

    Raises
    ------
    hpcblend.errors.CatalogError
        The catalog cannot be read.
    ValueError
        ``overhead`` is neither ``"rank"`` nor ``"unit"``.
    """
    path = os.fspath(path)
    with open_catalog(path) as f:
        tables = [k for k in f if hasattr(f[k], "dtype") and f[k].dtype.names is not None]
        attrs = dict(f.attrs)
        led = dict(f["ledger"].attrs) if "ledger" in f else {}
        itemsize = {k: f[k].dtype.itemsize for k in tables}
    measured = _run_facts(path, attrs, led)
    wl, unit_rank = _patch_workload(path) if "patches" in tables else _blend_workload(path)
    U = wl.n_units
    counts = {k[5:]: int(v) for k, v in led.items() if str(k).startswith("rows_")}
    wl.bytes_per_unit = sum(counts.get(t, 0) * itemsize[t] for t in tables) / max(U, 1)
    measured["sum_cost_s"] = float(wl.cost.sum())
    nr = int(unit_rank.max()) + 1 if U else 1
    measured["unit_busy_s"] = [float(x) for x in np.bincount(unit_rank, weights=wl.cost, minlength=nr)]
    profiles = read_profiles(path)
    if profiles:
        _profile_facts(wl, profiles, measured, overhead)
    if not measured.get("n_ranks"):
        measured["n_ranks"] = nr
    wl.measured = measured
    return wl


def _run_facts(path: str, attrs: dict, led: dict) -> dict:
    """What ``/config``, ``/provenance`` and the catalog's attributes say about the run (each optional)."""
    measured: dict = {"writer": str(attrs.get("writer", "")), "rounds": int(led.get("rounds", 0))}
    try:
        cfg = read_json_group(path, "config")
        run = cfg.get("run", {})
        measured.update(schedule=run.get("schedule"), write_every_units=run.get("write_every_units"),
                        write_every_seconds=run.get("write_every_seconds"))
    except Exception:  # noqa: BLE001 - config is informative only
        pass
    try:
        prov = read_json_group(path, "provenance")
        measured["n_ranks"] = int(prov.get("n_ranks") or 0) or None
        t0, t1 = _iso(prov.get("start_time_utc")), _iso(attrs.get("finished"))
        if t0 and t1:
            measured["run_wall_s"] = t1 - t0
    except Exception:  # noqa: BLE001
        pass
    return measured


def _patch_workload(path: str) -> tuple:
    """A tract run's patches (``/patches`` rows by patch number) and the rank that ran each."""
    rows = read_table(path, "patches")
    rows = rows[np.argsort(rows["patch"], kind="stable")]
    keys = [f"patch {int(p)}" for p in rows["patch"]]
    ob = np.asarray(rows["outer_bbox"])
    feats = {"area": ob[:, 2].astype(float) * ob[:, 3].astype(float),
             "n_sources": np.asarray(rows["n_sources"], float)}
    wl = Workload(kind="patch", keys=keys, cost=np.asarray(rows["t_total"], float), features=feats, source=path)
    return wl, np.asarray(rows["rank"], int)


def _blend_workload(path: str) -> tuple:
    """A blend-file run's units (``/blends`` rows summed per source file, sorted) and the rank that ran each."""
    rows = read_table(path, "blends")
    ukeys, inv = np.unique(rows["source_file"], return_inverse=True)  # sorted like the driver's unit list
    inv = inv.ravel()
    U = len(ukeys)
    cost = np.bincount(inv, weights=np.asarray(rows["t_total"], float), minlength=U)
    feats = {k: np.bincount(inv, weights=v, minlength=U) for k, v in unit_features(rows, "blend").items()}
    unit_rank = np.zeros(U, int)
    unit_rank[inv] = rows["rank"]
    keys = [k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in ukeys]
    return Workload(kind="blend", keys=keys, cost=cost, features=feats, source=path), unit_rank


def _profile_facts(wl: Workload, profiles: list, measured: dict, overhead: str) -> None:
    """Busy, write and wall times per rank from ``/profile``, and the work outside ``t_total`` (per rank or unit)."""
    busy = [sum(v for k, v in p["stage_seconds"].items() if k not in _BUSY_EXCLUDE) for p in profiles]
    write = [float(p["stage_seconds"].get("write", 0.0)) for p in profiles]
    calls = [int(p.get("stage_calls", {}).get("write", 0)) for p in profiles]
    measured.update(busy_s=busy, write_s=write, write_calls=calls,
                    wait_s=[float(p["stage_seconds"].get("wait", 0.0)) for p in profiles],
                    loop_wall_s=float(max(p["elapsed_s"] for p in profiles)),
                    elapsed_s=[float(p["elapsed_s"]) for p in profiles])
    measured.setdefault("n_ranks", len(profiles))
    if max(calls) > 0:
        measured["round_cost_s"] = float(min(w / max(c, 1) for w, c in zip(write, calls)))
    excess = max(0.0, sum(busy) - float(wl.cost.sum()))
    measured["excess_s"] = excess
    if overhead == "unit":
        wl.unit_overhead_s = excess / max(wl.n_units, 1)
    elif overhead == "rank":
        wl.rank_startup_s = excess / len(profiles)
    else:
        raise ValueError(f"overhead must be 'rank' or 'unit', got {overhead!r}")
    wall = measured["loop_wall_s"]
    n = len(profiles)
    measured["busy_fraction"] = float(sum(busy) / (n * wall)) if wall > 0 else float("nan")
    measured["max_mean_busy"] = float(max(busy) / (sum(busy) / n)) if sum(busy) > 0 else float("nan")


def replicate(wl: Workload, k: int) -> Workload:
    """The workload's unit list repeated ``k`` times (file order: copy after copy)."""
    k = int(k)
    if k <= 1:
        return wl
    return replace(wl, keys=[f"{key}#{i}" for i in range(k) for key in wl.keys], cost=np.tile(wl.cost, k),
                   features={n: np.tile(v, k) for n, v in wl.features.items()})


def replication_factor(n_units: int, n_ranks: int, min_units_per_rank: float) -> int:
    """k = ceil(N · min_units_per_rank / U) when that exceeds 1, else 1."""
    if n_units <= 0 or min_units_per_rank <= 0:
        return 1
    return max(1, int(math.ceil(n_ranks * min_units_per_rank / n_units)))
