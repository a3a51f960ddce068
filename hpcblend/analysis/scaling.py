"""Replay simulator: predict how a measured run would scale to N ranks under other scheduling policies.

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

:func:`simulate` then plays the driver's protocol (:mod:`hpcblend.parallel.driver`) on
N simulated ranks with an event queue (``heapq``; O(U log N) for U units, plus
O(N) per write round):

* **scheduling**: a rank pulls its next unit from the shared counter on rank 0;
  each pull costs ``sched_ops_per_unit`` RMA operations of ``sched_latency_s``
  each (the driver does 2 per unit: read the round counter, fetch-and-add
  the unit counter), plus
  queueing at rank 0: the counter serves one operation per
  ``sched_service_s`` (a single FIFO server), which is what limits a central
  counter at thousands of ranks.
* **write rounds**: after a unit, if ``write_every_units`` units (0: the
  driver's default, ``max(64, 8 N)``) were claimed
  since the last round (or ``write_every_seconds`` passed), a round is raised;
  every working rank joins when its current unit ends, finished ranks join at
  their next poll (every ``poll_s``), and the round (collective: everyone waits
  for the last to arrive) then costs ``round_latency_s + round_log_latency_s ·
  ceil(log2 N) + bytes/io_bandwidth_Bps``, bytes being what the units since the
  last round wrote. The run ends with a last round when every rank is done.
* **policies** (:data:`POLICIES`): ``static_rr`` (unit i on rank i mod N in
  file order; no scheduler traffic, same write rounds), ``dynamic_file``
  (pull in file order), ``dynamic_cost`` (pull largest *predicted* first —
  the cost model's prediction, as the driver would order), ``dynamic_npa``
  (the driver's current key, n_peaks × footprint area / outer-box area),
  ``dynamic_oracle`` (largest *true* cost first: LPT with perfect knowledge).

Every rank's time splits into busy (units, and its cold start on the first
unit: ``rank_startup_s``), scheduling (pulls), round sync
(waiting in a round for the last rank), I/O (the round itself) and tail idle
(done, waiting for the end): the breakdown adds up to N × makespan.
Coordination = scheduling + round sync; I/O = round cost.

Definitions
-----------
* ``efficiency`` = Σ unit work (measured ``t_total`` + per-unit overhead) /
  (N × makespan) — the fraction of rank time doing units; ≤ 1 always (≤
  cores/N when ranks share cores). The ranks' cold starts
  (``rank_startup_s``, ``startup_fraction``) count as busy but not as useful.
* ``speedup_efficiency`` = makespan(1 rank) / (N × makespan(N)) on the same
  (possibly replicated) workload: the strong-scaling efficiency, what a
  measurement gives.
* ``idle_fraction`` = (round sync + tail idle) / (N × makespan).
* ``max_mean_busy`` = max over ranks / mean over ranks of busy time (≥ 1).

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

Defaults (when the catalog or a measurement does not say)
----------------------------------------------------------
:data:`DEFAULT_SCHED_LATENCY_S` (5 µs) — one passive-target ``Lock/
Fetch_and_op/Unlock`` on rank 0's window across a cluster network (an
assumption; 2–20 µs in practice). On one node it is ~1 µs: measure it with
:func:`rma_latency_benchmark` (``mpirun -n 2 python -m hpcblend.analysis.scaling
rma-bench``; the development VM gave 0.99 µs median with rank 0 computing,
and 7 µs median / 38 µs p90 with 4 ranks on its 2 cores).
:data:`DEFAULT_ROUND_LATENCY_S` (8 ms) — one write round with a few hundred
rows on local disk, from the ``write`` stage of ``/profile`` (the HSC run, one
rank); :func:`params_for` takes the round cost from the catalog being replayed
when it has ``/profile``. ``io_bandwidth_Bps`` 1 GB/s (one shared HDF5 file
written collectively, untuned), ``sched_service_s`` 1 µs (a network atomic on
one address serves ~1 M ops/s) and ``round_log_latency_s`` 20 µs per tree
level (the count allgather and collective resize of a round) are assumptions.

Not modelled: the RMA reads of ranks polling for a round after they ran out of
work (2 per ``poll_s``), overlap of I/O with computing (rounds block), a
rank's per-unit loop overhead growing when ranks outnumber cores (measured:
the ``wait`` stage grows from 0.4 ms to ~4 ms per unit at 4 ranks on 2 cores),
and per-unit cost changing with N (memory bandwidth, other users' load): a
replay from a 1-rank run assumes the unit costs stay as measured, or are
slowed by ``N / cores`` when ranks outnumber ``cores``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Optional, Sequence

import numpy as np

from hpcblend.config import RunConfig, write_round_units

__all__ = ["POLICIES", "Workload", "ReplayParams", "ReplayResult", "load_workload", "replicate", "simulate",
           "replay", "replay_table", "rma_latency_benchmark", "scaling_main", "DEFAULT_SCHED_LATENCY_S",
           "DEFAULT_ROUND_LATENCY_S", "DEFAULT_RANKS", "params_for"]

#: Scheduling policies simulated (see the module docstring).
POLICIES = ("static_rr", "dynamic_file", "dynamic_cost", "dynamic_npa", "dynamic_oracle")

#: Rank counts of a default replay: 1 … 4096, powers of two.
DEFAULT_RANKS = tuple(2 ** i for i in range(13))

#: One RMA op (Lock shared / Fetch_and_op / Unlock) on rank 0's window from another rank, seconds,
#: for projections to a cluster: an inter-node passive-target atomic on an InfiniBand-class network
#: (2-20 µs in practice; an assumption). On one node it is much less: rma_latency_benchmark under
#: `mpirun -n 2` on the development VM (OpenMPI 4.1.4, osc over shared memory) measured 0.99 µs
#: (median; 1.15 µs p90) with rank 0 computing, 0.93 µs with it idle (2026-11) — the study uses
#: that measurement for the runs it compares with.
DEFAULT_SCHED_LATENCY_S = 5.0e-6

#: One collective write round (a few hundred rows, local disk): the `write` stage per call on the
#: rank that waited least, from /profile of the HSC runs on the development VM, 2026-11.
DEFAULT_ROUND_LATENCY_S = 8.0e-3

_BUSY_EXCLUDE = ("wait", "write", "other")


# ====================================================================== workload


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
        (sums over the unit's blends); patch units ``area`` (outer box),
        ``n_sources``.
    row_unit, row_features : ndarray, dict
        Per-row unit index and features (blend units), so a cost model's
        prediction is summed per unit.
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
    row_unit: Optional[np.ndarray] = None
    row_features: Optional[dict] = None
    unit_overhead_s: float = 0.0
    rank_startup_s: float = 0.0
    bytes_per_unit: float = 0.0
    measured: dict = field(default_factory=dict)
    source: str = ""

    @property
    def n_units(self) -> int:
        return len(self.cost)

    def predicted(self, model=None) -> np.ndarray:
        """Per-unit predicted cost from a :class:`hpcblend.units.costmodel.CostModel` (default: the default model).

        For blend units the rows' predictions are summed per unit. A patch
        workload without a model gets one fitted on its own patches
        (in-sample) — pass a model fitted on an earlier run to avoid that.
        """
        from hpcblend.units.costmodel import default_cost_model, fit_arrays

        if self.kind == "blend":
            model = model or default_cost_model()
            if self.row_features is not None and self.row_unit is not None:
                p = np.asarray(model.predict(**{k: v for k, v in self.row_features.items()}), float)
                return np.bincount(self.row_unit, weights=p, minlength=self.n_units)
            return np.asarray(model.predict(**self.features), float)
        if model is None or model.kind != "patch":
            model = fit_arrays(self.cost, self.features, kind="patch")
        return np.asarray(model.predict(**{k: v for k, v in self.features.items()}), float) * np.ones(self.n_units)

    def driver_key(self) -> np.ndarray:
        """The driver's present ordering key: n_peaks × footprint area (blend files), outer-box area (patches)."""
        if self.kind == "blend":
            if self.row_features is not None:
                k = np.maximum(self.row_features["n_peaks"], 1) * np.maximum(self.row_features["footprint_area"], 1)
                return np.bincount(self.row_unit, weights=k, minlength=self.n_units)
            return np.maximum(self.features["n_peaks"], 1) * np.maximum(self.features["footprint_area"], 1)
        return np.asarray(self.features["area"], float)


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
    """
    from hpcblend.io.catalog import open_catalog, read_json_group, read_table
    from hpcblend.diagnostics.sampler import read_profiles

    path = os.fspath(path)
    with open_catalog(path) as f:
        tables = [k for k in f if hasattr(f[k], "dtype") and f[k].dtype.names is not None]
        attrs = dict(f.attrs)
        led = dict(f["ledger"].attrs) if "ledger" in f else {}
        itemsize = {k: f[k].dtype.itemsize for k in tables}
    has_patches = "patches" in tables
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

    if has_patches:
        rows = read_table(path, "patches")
        rows = rows[np.argsort(rows["patch"], kind="stable")]
        keys = [f"patch {int(p)}" for p in rows["patch"]]
        cost = np.asarray(rows["t_total"], float)
        ob = np.asarray(rows["outer_bbox"])
        feats = {"area": ob[:, 2].astype(float) * ob[:, 3].astype(float),
                 "n_sources": np.asarray(rows["n_sources"], float)}
        unit_rank = np.asarray(rows["rank"], int)
        wl = Workload(kind="patch", keys=keys, cost=cost, features=feats, source=path)
    else:
        rows = read_table(path, "blends")
        files = rows["source_file"]
        ukeys, inv = np.unique(files, return_inverse=True)  # sorted like the driver's unit list
        inv = inv.ravel()
        U = len(ukeys)
        cost = np.bincount(inv, weights=np.asarray(rows["t_total"], float), minlength=U)
        from hpcblend.units.costmodel import unit_features

        rf = unit_features(rows, "blend")
        feats = {k: np.bincount(inv, weights=v, minlength=U) for k, v in rf.items()}
        unit_rank = np.zeros(U, int)
        unit_rank[inv] = rows["rank"]
        keys = [k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k) for k in ukeys]
        wl = Workload(kind="blend", keys=keys, cost=cost, features=feats, row_unit=inv, row_features=rf, source=path)
    U = wl.n_units
    counts = {k[5:]: int(v) for k, v in led.items() if str(k).startswith("rows_")}
    total_bytes = sum(counts.get(t, 0) * itemsize[t] for t in tables)
    wl.bytes_per_unit = total_bytes / max(U, 1)
    measured["sum_cost_s"] = float(cost.sum())
    nr = int(unit_rank.max()) + 1 if U else 1
    measured["unit_busy_s"] = [float(x) for x in np.bincount(unit_rank, weights=cost, minlength=nr)]
    profiles = read_profiles(path)
    if profiles:
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
        excess = max(0.0, sum(busy) - float(cost.sum()))
        measured["excess_s"] = excess
        if overhead == "unit":
            wl.unit_overhead_s = excess / max(U, 1)
        elif overhead == "rank":
            wl.rank_startup_s = excess / len(profiles)
        else:
            raise ValueError(f"overhead must be 'rank' or 'unit', got {overhead!r}")
        wall = measured["loop_wall_s"]
        n = len(profiles)
        measured["busy_fraction"] = float(sum(busy) / (n * wall)) if wall > 0 else float("nan")
        measured["max_mean_busy"] = float(max(busy) / (sum(busy) / n)) if sum(busy) > 0 else float("nan")
    if not measured.get("n_ranks"):
        measured["n_ranks"] = nr
    wl.measured = measured
    return wl


def replicate(wl: Workload, k: int) -> Workload:
    """The workload's unit list repeated ``k`` times (file order: copy after copy)."""
    k = int(k)
    if k <= 1:
        return wl
    U = wl.n_units
    ru = rf = None
    if wl.row_unit is not None:
        ru = np.concatenate([wl.row_unit + i * U for i in range(k)])
        rf = {n: np.tile(v, k) for n, v in wl.row_features.items()}
    return replace(wl, keys=[f"{key}#{i}" for i in range(k) for key in wl.keys], cost=np.tile(wl.cost, k),
                   features={n: np.tile(v, k) for n, v in wl.features.items()}, row_unit=ru, row_features=rf)


def replication_factor(n_units: int, n_ranks: int, min_units_per_rank: float) -> int:
    """k = ceil(N · min_units_per_rank / U) when that exceeds 1, else 1."""
    if n_units <= 0 or min_units_per_rank <= 0:
        return 1
    return max(1, int(math.ceil(n_ranks * min_units_per_rank / n_units)))


# ====================================================================== simulation


@dataclass
class ReplayParams:
    """Costs of the driver's protocol (seconds, bytes). See the module docstring."""

    sched_latency_s: float = DEFAULT_SCHED_LATENCY_S
    sched_ops_per_unit: int = 2
    sched_service_s: float = 1.0e-6
    round_latency_s: float = DEFAULT_ROUND_LATENCY_S
    round_log_latency_s: float = 20.0e-6
    io_bandwidth_Bps: float = 1.0e9
    write_every_units: int = RunConfig.write_every_units
    write_every_seconds: float = RunConfig.write_every_seconds
    poll_s: float = 0.01
    unit_overhead_s: float = 0.0
    rank_startup_s: float = 0.0
    bytes_per_unit: float = 0.0
    cores: Optional[int] = None

    def round_cost(self, n_ranks: int, n_units: int) -> float:
        """Seconds of one write round over ``n_units`` finished units on ``n_ranks`` ranks."""
        levels = math.ceil(math.log2(n_ranks)) if n_ranks > 1 else 0
        return (self.round_latency_s + self.round_log_latency_s * levels
                + n_units * self.bytes_per_unit / self.io_bandwidth_Bps)


def params_for(wl: Optional[Workload] = None, **overrides) -> ReplayParams:
    """Parameters for replaying ``wl``: its measured per-unit overhead, bytes per unit, round cost
    (minus the bytes' share at ``io_bandwidth_Bps``) and write-round settings, then ``overrides``
    (keys of :class:`ReplayParams`; None values are ignored)."""
    kw: dict = {}
    if wl is not None:
        m = wl.measured
        kw["unit_overhead_s"] = wl.unit_overhead_s
        kw["rank_startup_s"] = wl.rank_startup_s
        kw["bytes_per_unit"] = wl.bytes_per_unit
        if m.get("write_every_units") is not None:
            kw["write_every_units"] = int(m["write_every_units"])
        if m.get("write_every_seconds"):
            kw["write_every_seconds"] = float(m["write_every_seconds"])
        if m.get("round_cost_s") is not None and m.get("write_calls"):
            bw = overrides.get("io_bandwidth_Bps") or ReplayParams.io_bandwidth_Bps
            per_round_units = wl.n_units / max(max(m["write_calls"]), 1)
            kw["round_latency_s"] = max(0.0, m["round_cost_s"] - per_round_units * wl.bytes_per_unit / bw)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ReplayParams(**kw)


@dataclass
class ReplayResult:
    """One simulated run. Times in seconds; fractions of N × makespan."""

    policy: str
    n_ranks: int
    n_units: int
    replication: int
    makespan_s: float
    work_s: float
    efficiency: float
    idle_fraction: float
    busy_fraction: float
    startup_fraction: float
    sched_fraction: float
    sync_fraction: float
    io_fraction: float
    tail_fraction: float
    coordination_fraction: float
    max_mean_busy: float
    n_rounds: int
    speedup_efficiency: float = float("nan")
    busy_per_rank: Optional[np.ndarray] = field(default=None, repr=False)

    def to_dict(self, per_rank: bool = False) -> dict:
        d = asdict(self)
        d.pop("busy_per_rank")
        if per_rank and self.busy_per_rank is not None:
            d["busy_per_rank"] = [float(x) for x in self.busy_per_rank]
        return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in d.items()}


def _ticks(since: np.ndarray, t: float, poll: float) -> np.ndarray:
    """First poll tick ``since + k·poll`` (k ≥ 0) at or after ``t``."""
    if poll <= 0:
        return np.maximum(since, t)
    k = np.ceil(np.maximum(t - since, 0.0) / poll - 1e-12)
    return since + k * poll


def _simulate(seq: np.ndarray, n: int, P: ReplayParams, static: bool, seed: int = 0) -> dict:
    """Event simulation of the driver protocol; ``seq`` = unit costs in hand-out order
    (dynamic) or file order (static round-robin: unit i on rank i mod n).

    Ranks that become free at the same instant (the start, the end of a round)
    reach the counter in a random order (seeded): with a fixed order rank 0
    would always take the first, largest unit of every batch.
    """
    rng = np.random.default_rng(seed)
    U = len(seq)
    seq = np.asarray(seq, dtype=float)
    slow = max(1.0, n / P.cores) if P.cores else 1.0
    run_cost = (seq * slow + P.unit_overhead_s * slow).tolist()
    startup = P.rank_startup_s * slow
    started = [False] * n
    lat = 0.0 if static else P.sched_ops_per_unit * P.sched_latency_s
    svc = 0.0 if static else P.sched_ops_per_unit * P.sched_service_s
    W = write_round_units(P.write_every_units, n)
    S = float(P.write_every_seconds) if P.write_every_seconds and P.write_every_seconds > 0 else math.inf
    poll = float(P.poll_s)

    busy = [0.0] * n
    sched = [0.0] * n
    sync = np.zeros(n)
    io = np.zeros(n)
    tail = np.zeros(n)
    finished = [False] * n
    exhausted = np.zeros(n, bool)
    idle_since = np.zeros(n)
    arrival = np.zeros(n)
    ptr = list(range(n))  # static: next file-order index per rank
    nxt = 0
    claimed = claimed_at_round = 0
    units_since_round = 0
    t_last_round = 0.0
    server_free = 0.0
    pending = False
    n_joined = 0
    n_rounds = 0
    n_started = 0
    heap = [(0.0, i, int(r)) for i, r in enumerate(rng.permutation(n))]
    tick = n
    pop, push = heapq.heappop, heapq.heappush

    while heap:
        t, _, r = pop(heap)
        if finished[r]:
            finished[r] = False
            units_since_round += 1
            if not pending and claimed < U and (claimed - claimed_at_round >= W or t - t_last_round >= S):
                pending = True
                ex = np.nonzero(exhausted)[0]
                n_joined = len(ex)
                if n_joined:
                    arrival[ex] = _ticks(idle_since[ex], t, poll)
        if pending:
            arrival[r] = t
            n_joined += 1
            if n_joined == n:  # every rank is in the round (the heap is empty now)
                start = float(arrival.max())
                cost = P.round_cost(n, units_since_round)
                end = start + cost
                tail[exhausted] += arrival[exhausted] - idle_since[exhausted]
                idle_since[exhausted] = end
                sync += start - arrival
                io += cost
                n_rounds += 1
                claimed_at_round = claimed
                t_last_round = end
                units_since_round = 0
                pending = False
                n_joined = 0
                heap = [(end, i, int(q)) for i, q in enumerate(rng.permutation(np.nonzero(~exhausted)[0]))]
            continue
        # pull the next unit
        if static:
            p = ptr[r]
            ptr[r] += n
            d = 0.0
        else:
            p = nxt
            nxt += 1
            q = server_free - t
            if q > 0:
                server_free += svc
                d = lat + q
            else:
                server_free = t + svc
                d = lat
        sched[r] += d
        if p >= U:
            exhausted[r] = True
            idle_since[r] = t + d
            continue
        claimed += 1
        c = run_cost[p]
        if not started[r]:
            started[r] = True
            c += startup
            n_started += 1
        busy[r] += c
        finished[r] = True
        tick += 1
        push(heap, (t + d + c, tick, r))

    # everyone is done: the last to finish sees it at once, the others at their next poll; then the final round
    t_last = float(idle_since.max()) if n else 0.0
    arr = _ticks(idle_since, t_last, poll)
    arr[int(np.argmax(idle_since))] = t_last
    start = float(arr.max())
    cost = P.round_cost(n, units_since_round)
    tail += arr - idle_since
    sync += start - arr
    io += cost
    n_rounds += 1
    makespan = start + cost
    return {"makespan": makespan, "busy": np.asarray(busy), "sched": np.asarray(sched), "sync": sync, "io": io,
            "tail": tail, "n_rounds": n_rounds, "slow": slow, "startup": n_started * startup}


def _order(wl: Workload, policy: str, model=None) -> np.ndarray:
    U = wl.n_units
    if policy in ("static_rr", "dynamic_file"):
        return np.arange(U)
    if policy == "dynamic_cost":
        key = wl.predicted(model)
    elif policy == "dynamic_npa":
        key = wl.driver_key()
    elif policy == "dynamic_oracle":
        key = wl.cost
    else:
        raise ValueError(f"unknown policy {policy!r}; one of {POLICIES}")
    return np.argsort(-np.asarray(key, float), kind="stable")


def simulate(wl: Workload, n_ranks: int, policy: str = "dynamic_cost", params: Optional[ReplayParams] = None,
             model=None, order: Optional[np.ndarray] = None) -> ReplayResult:
    """Simulate one run of ``wl`` (as given: no replication) on ``n_ranks`` ranks.

    Parameters
    ----------
    wl : Workload
    n_ranks : int
    policy : str
        One of :data:`POLICIES`.
    params : ReplayParams, optional
        Default: ``params_for(wl)``.
    model : hpcblend.units.costmodel.CostModel, optional
        Predictor for ``dynamic_cost`` (default model if None).
    order : ndarray, optional
        Explicit hand-out order (unit indices) instead of the policy's.

    Returns
    -------
    ReplayResult
        ``speedup_efficiency`` is left nan (see :func:`replay`).
    """
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    P = params or params_for(wl)
    static = policy == "static_rr"
    if order is None:
        order = _order(wl, policy, model)
    seq = wl.cost[order]
    s = _simulate(seq, int(n_ranks), P, static)
    T, n = s["makespan"], int(n_ranks)
    work = float(wl.cost.sum() + P.unit_overhead_s * wl.n_units)  # useful work: not the ranks' cold starts
    tot = n * T if T > 0 else 1.0
    busy = s["busy"]
    mean_busy = busy.mean() if n else 0.0
    return ReplayResult(
        policy=policy, n_ranks=n, n_units=wl.n_units, replication=1, makespan_s=T, work_s=work,
        efficiency=min(work / tot, 1.0) if T > 0 else 1.0,
        idle_fraction=float((s["sync"].sum() + s["tail"].sum()) / tot),
        busy_fraction=float(busy.sum() / tot), startup_fraction=float(s["startup"] / tot), sched_fraction=float(s["sched"].sum() / tot),
        sync_fraction=float(s["sync"].sum() / tot), io_fraction=float(s["io"].sum() / tot),
        tail_fraction=float(s["tail"].sum() / tot),
        coordination_fraction=float((s["sched"].sum() + s["sync"].sum()) / tot),
        max_mean_busy=float(busy.max() / mean_busy) if mean_busy > 0 else 1.0,
        n_rounds=int(s["n_rounds"]), busy_per_rank=busy)


def replay(wl: Workload, ranks: Sequence[int] = DEFAULT_RANKS, policies: Sequence[str] = POLICIES,
           params: Optional[ReplayParams] = None, model=None, min_units_per_rank: float = 25.0,
           write_every_units_per_rank: Optional[float] = None) -> list:
    """Simulate every (policy, N), replicating the workload where N needs it.

    Parameters
    ----------
    min_units_per_rank : float
        Replicate the unit list k = ceil(N · this / U) times when that is > 1
        (0: never replicate).
    write_every_units_per_rank : float, optional
        If given, the round trigger scales with N: ``write_every_units =
        max(params.write_every_units, this × N)`` (what a large run should
        set; the driver's default is a fixed 64).

    Returns
    -------
    list of ReplayResult
        In order policy-major; ``speedup_efficiency`` = makespan(1 rank, same
        replicated workload, same policy) / (N × makespan).
    """
    P0 = params or params_for(wl)
    out = []
    cache: dict = {}
    t1_cache: dict = {}
    for pol in policies:
        for n in ranks:
            k = replication_factor(wl.n_units, n, min_units_per_rank)
            w = cache.get(k)
            if w is None:
                w = cache[k] = replicate(wl, k)
            P = P0
            if write_every_units_per_rank:
                P = replace(P0, write_every_units=max(P0.write_every_units, int(write_every_units_per_rank * n)))
            r = simulate(w, n, pol, P, model=model)
            P1 = replace(P, write_every_units=P0.write_every_units if not write_every_units_per_rank else
                         max(P0.write_every_units, int(write_every_units_per_rank)))
            if n == 1:
                t1 = r.makespan_s
            else:
                t1 = t1_cache.get((pol, k))
                if t1 is None:
                    t1 = t1_cache[(pol, k)] = simulate(w, 1, pol, P1, model=model).makespan_s
            r.replication = k
            r.speedup_efficiency = t1 / (n * r.makespan_s) if r.makespan_s > 0 else float("nan")
            out.append(r)
    return out


def replay_table(results: Sequence[ReplayResult]) -> str:
    """Text table of :func:`replay` results."""
    head = (f"{'policy':<15}{'N':>6}{'units':>8}{'k':>5}{'makespan[s]':>13}{'eff':>7}{'speedup/N':>10}"
            f"{'idle':>7}{'coord':>7}{'io':>7}{'tail':>7}{'max/mean':>9}{'rounds':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.policy:<15}{r.n_ranks:>6}{r.n_units:>8}{r.replication:>5}{r.makespan_s:>13.4f}"
                     f"{r.efficiency:>7.3f}{r.speedup_efficiency:>10.3f}{r.idle_fraction:>7.3f}"
                     f"{r.coordination_fraction:>7.3f}{r.io_fraction:>7.3f}{r.tail_fraction:>7.3f}"
                     f"{r.max_mean_busy:>9.3f}{r.n_rounds:>7d}")
    return "\n".join(lines)


def self_replay(wl: Workload, params: Optional[ReplayParams] = None, model=None) -> dict:
    """Replay a run's own unit costs at its own rank count and schedule; compare with its measured loop wall.

    Returns
    -------
    dict
        ``n_ranks``, ``policy``, ``modelled_s``, ``measured_s`` (``loop_wall_s``), ``error`` (relative),
        ``measured_max_mean_busy``, ``modelled_max_mean_busy``.
    """
    m = wl.measured
    n = int(m.get("n_ranks") or 1)
    pol = "dynamic_file" if m.get("schedule") == "file" else "dynamic_npa"
    r = simulate(wl, n, pol, params or params_for(wl), model=model)
    meas = m.get("loop_wall_s")
    return {"n_ranks": n, "policy": pol, "modelled_s": r.makespan_s, "measured_s": meas,
            "error": (r.makespan_s / meas - 1.0) if meas else None,
            "modelled_max_mean_busy": r.max_mean_busy, "measured_max_mean_busy": m.get("max_mean_busy"),
            "modelled_idle_fraction": r.idle_fraction,
            "measured_idle_fraction": (1.0 - m["busy_fraction"]) if m.get("busy_fraction") is not None else None}


# ====================================================================== RMA latency micro-benchmark


def rma_latency_benchmark(comm=None, n_ops: int = 20000, busy_target: bool = True) -> dict:
    """Time the driver's scheduling operation (``Lock(SHARED)``, ``Fetch_and_op``, ``Unlock`` on an
    int64 window held by rank 0), COLLECTIVE.

    Every rank but 0 does ``n_ops`` fetch-and-adds on rank 0's counter (as the
    driver's pull does) while rank 0 either computes (``busy_target``: NumPy
    work between MPI-free stretches, as a deblending rank 0 does) or waits in
    a barrier. Rank 0 then times its own (local) operations.

    Returns
    -------
    dict (on every rank)
        ``remote_us`` (median per op over the origin ranks' batches),
        ``remote_us_p90``, ``local_us``, ``n_ranks``, ``ops_per_s`` (all origins together),
        ``osc`` (the MPI library's version string).
    """
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    item = MPI.INT64_T.Get_size()
    win = MPI.Win.Allocate(item if comm.rank == 0 else 0, item, comm=comm)
    if comm.rank == 0:
        np.frombuffer(win.tomemory(), dtype=np.int64)[:1] = 0
    one = np.ones(1, dtype=np.int64)
    res = np.zeros(1, dtype=np.int64)

    def op():
        win.Lock(0, MPI.LOCK_SHARED)
        win.Fetch_and_op(one, res, 0, 0, MPI.SUM)
        win.Unlock(0)

    comm.Barrier()
    batch = 200
    per_batch = []
    t_all = 0.0
    if comm.rank != 0:
        for _ in range(50):
            op()  # warm up
        t0 = time.perf_counter()
        for _ in range(max(n_ops // batch, 1)):
            tb = time.perf_counter()
            for _ in range(batch):
                op()
            per_batch.append((time.perf_counter() - tb) / batch)
        t_all = time.perf_counter() - t0
        comm.send(True, dest=0, tag=77)
    else:
        waiting = comm.size - 1
        a = np.random.default_rng(0).random((64, 64))
        reqs = [comm.irecv(source=r, tag=77) for r in range(1, comm.size)]
        if busy_target:
            while waiting:
                for _ in range(20):
                    a = np.tanh(a @ a.T * 1e-3)
                waiting = comm.size - 1 - sum(1 for q in reqs if q.Test())
            MPI.Request.Waitall(reqs)
        else:
            MPI.Request.Waitall(reqs)
    comm.Barrier()
    local = []
    if comm.rank == 0:
        for _ in range(50):
            op()
        for _ in range(max(n_ops // batch // 4, 1)):
            tb = time.perf_counter()
            for _ in range(batch):
                op()
            local.append((time.perf_counter() - tb) / batch)
    gathered = comm.gather((per_batch, t_all), root=0)
    out = None
    if comm.rank == 0:
        allb = [x for b, _ in gathered[1:] for x in b]
        n_total = sum(len(b) * batch for b, _ in gathered[1:])
        t_max = max((t for _, t in gathered[1:]), default=0.0)
        out = {"n_ranks": comm.size, "n_ops_per_origin": (n_ops // batch) * batch,
               "remote_us": float(np.median(allb) * 1e6) if allb else None,
               "remote_us_p90": float(np.quantile(allb, 0.9) * 1e6) if allb else None,
               "local_us": float(np.median(local) * 1e6) if local else None,
               "ops_per_s": float(n_total / t_max) if t_max > 0 else None,
               "busy_target": bool(busy_target), "mpi": MPI.Get_library_version().splitlines()[0].strip("\x00 ")}
    out = comm.bcast(out, root=0)
    win.Free()
    return out


# ====================================================================== CLI


def _plot_replay(results: Sequence[ReplayResult], path: str, title: str = "", measured: Optional[dict] = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    pols = list(dict.fromkeys(r.policy for r in results))
    for pol in pols:
        rs = [r for r in results if r.policy == pol]
        axes[0].semilogx([r.n_ranks for r in rs], [r.efficiency for r in rs], "o-", ms=3, label=pol, base=2)
        axes[1].semilogx([r.n_ranks for r in rs], [r.max_mean_busy for r in rs], "o-", ms=3, label=pol, base=2)
    if measured:
        ns = sorted(measured)
        axes[0].plot(ns, [measured[n] for n in ns], "k*", ms=10, label="measured")
    axes[0].set_xlabel("ranks")
    axes[0].set_ylabel("parallel efficiency")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_xlabel("ranks")
    axes[1].set_ylabel("max / mean busy")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _add_param_args(p) -> None:
    p.add_argument("--sched-latency-us", type=float, help=f"per RMA op (default {DEFAULT_SCHED_LATENCY_S * 1e6:g})")
    p.add_argument("--sched-service-us", type=float, help="rank-0 counter service time per op (default 1)")
    p.add_argument("--round-latency-ms", type=float, help="fixed cost per write round (default: measured)")
    p.add_argument("--io-bandwidth-MBps", type=float, help="aggregate write bandwidth (default 1000)")
    p.add_argument("--write-every-units", type=int, help="round trigger (default: the run's config)")
    p.add_argument("--write-every-units-per-rank", type=float,
                   help="scale the round trigger with N: max(write_every_units, this × N)")
    p.add_argument("--write-every-seconds", type=float)
    p.add_argument("--cores", type=int, help="cores available (ranks beyond share them); default: one per rank")


def _params_from_args(wl, a) -> ReplayParams:
    us = lambda v: None if v is None else v * 1e-6  # noqa: E731
    return params_for(wl, sched_latency_s=us(a.sched_latency_us), sched_service_s=us(a.sched_service_us),
                      round_latency_s=None if a.round_latency_ms is None else a.round_latency_ms * 1e-3,
                      io_bandwidth_Bps=None if a.io_bandwidth_MBps is None else a.io_bandwidth_MBps * 1e6,
                      write_every_units=a.write_every_units, write_every_seconds=a.write_every_seconds, cores=a.cores)


def scaling_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend scaling replay CATALOG [--ranks 1 2 ... 4096] [--policy ...] [--json OUT] [--plot PNG]``,
    ``hpcblend scaling rma-bench`` (run under ``mpirun -n 2``) and ``hpcblend scaling study ...``
    (``profiling/scaling_study.py``, from a source checkout). Returns the exit code."""
    from hpcblend.errors import HpcblendError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "study":  # everything after "study" belongs to profiling/scaling_study.py
        import runpy

        script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "profiling",
                              "scaling_study.py")
        if not os.path.exists(script):
            print(f"hpcblend scaling study: needs a source checkout ({script} not found)", file=sys.stderr)
            return 2
        mod = runpy.run_path(script, run_name="hpcblend_scaling_study")
        return int(mod["main"](argv[1:]) or 0)
    ap = argparse.ArgumentParser(prog="hpcblend scaling", description="Replay a run on N simulated ranks.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("replay", help="predict makespan/efficiency for N ranks from a run catalog")
    rp.add_argument("catalog")
    rp.add_argument("--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS))
    rp.add_argument("--policy", nargs="+", choices=POLICIES, default=list(POLICIES))
    rp.add_argument("--cost-model", help="CostModel JSON for dynamic_cost (default: the built-in model)")
    rp.add_argument("--min-units-per-rank", type=float, default=25.0,
                    help="replicate the unit list when N × this exceeds the units (0: never)")
    rp.add_argument("--json", help="write results as JSON")
    rp.add_argument("--plot", help="write an efficiency / max-mean PNG")
    _add_param_args(rp)
    bp = sub.add_parser("rma-bench", help="time the scheduler's RMA fetch-and-op (run under mpirun -n 2)")
    bp.add_argument("--n-ops", type=int, default=20000)
    bp.add_argument("--idle-target", action="store_true", help="rank 0 waits in MPI instead of computing")
    bp.add_argument("--json")
    sub.add_parser("study", help="measured vs modelled scaling (profiling/scaling_study.py; its options follow)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "rma-bench":
            r = rma_latency_benchmark(n_ops=args.n_ops, busy_target=not args.idle_target)
            from mpi4py import MPI

            if MPI.COMM_WORLD.rank == 0:
                print(json.dumps(r, indent=2))
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(r, fh, indent=2)
            return 0
        wl = load_workload(args.catalog)
        from hpcblend.units.costmodel import load_cost_model

        model = load_cost_model(args.cost_model) if args.cost_model else None
        P = _params_from_args(wl, args)
        m = wl.measured
        print(f"{args.catalog}: {wl.n_units} {wl.kind} units, Σ cost {wl.cost.sum():.3f} s, per-unit overhead "
              f"{wl.unit_overhead_s * 1e3:.2f} ms, per-rank startup {wl.rank_startup_s:.3f} s, "
              f"{wl.bytes_per_unit:.0f} B/unit; measured on {m.get('n_ranks')} "
              f"rank(s), schedule {m.get('schedule')}, loop wall {m.get('loop_wall_s', float('nan')):.3f} s")
        print(f"params: {json.dumps(asdict(P))}")
        if m.get("loop_wall_s"):
            s = self_replay(wl, P, model)
            print(f"self-replay at N={s['n_ranks']} ({s['policy']}): modelled {s['modelled_s']:.3f} s vs measured "
                  f"{s['measured_s']:.3f} s ({100 * s['error']:+.1f}%)")
        res = replay(wl, args.ranks, args.policy, P, model=model, min_units_per_rank=args.min_units_per_rank,
                     write_every_units_per_rank=args.write_every_units_per_rank)
        print(replay_table(res))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"catalog": args.catalog, "params": asdict(P), "measured": m,
                           "results": [r.to_dict() for r in res]}, fh, indent=2, default=float)
            print(f"written: {args.json}")
        if args.plot:
            print(f"written: {_plot_replay(res, args.plot, title=os.path.basename(args.catalog))}")
    except (HpcblendError, ValueError, OSError) as exc:
        print(f"hpcblend scaling: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(scaling_main())
