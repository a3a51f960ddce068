"""Replay simulator: predict how a measured run (:mod:`hpcblend.analysis.scaling_workload`) would scale to N ranks.

:func:`simulate` plays the driver's protocol (:mod:`hpcblend.parallel.driver`) on N simulated ranks
with an event queue (``heapq``; O(U log N) for U units, plus O(N) per write round). It orders the
units with the driver's own function (:func:`hpcblend.parallel.schedule.unit_order`) on the driver's
own expected cost (:func:`hpcblend.units.costmodel.unit_cost`), and raises write rounds with the
driver's trigger (:func:`hpcblend.parallel.schedule.round_due`):

* **scheduling**: a rank pulls its next unit from the shared counter on rank 0;
  each pull costs ``sched_ops_per_unit`` RMA operations of ``sched_latency_s``
  each (the driver does 2 per unit: read the round counter, fetch-and-add
  the unit counter), plus queueing at rank 0: the counter serves one
  operation per ``sched_service_s`` (a single FIFO server), which is what
  limits a central counter at thousands of ranks.
* **write rounds**: after a unit, if ``write_every_units`` units were claimed
  since the last round (0: the driver's default,
  :func:`hpcblend.config.write_round_units`: ``max(64, 8 N)``) or
  ``write_every_seconds`` passed, a round is raised; every working rank joins
  when its current unit ends, finished ranks join at their next poll (every
  ``poll_s``), and the round (collective: everyone waits for the last to
  arrive) then costs ``round_latency_s + round_log_latency_s · ceil(log2 N) +
  bytes/io_bandwidth_Bps``, bytes being what the units since the last round
  wrote. The run ends with a last round when every rank is done.
* **policies** (:data:`POLICIES`): ``static_rr`` (unit i on rank i mod N in
  file order; no scheduler traffic, same write rounds), ``dynamic_file``
  (pull in file order: ``run.schedule: file``), ``dynamic_cost`` (pull largest
  *predicted* first: ``run.schedule: cost``, the driver's order with the cost
  model given, default the default model), ``dynamic_npa`` (the expected cost
  without a cost model: n_peaks × footprint area / outer-box area),
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

Defaults (when the catalog or a measurement does not say)
----------------------------------------------------------
:data:`DEFAULT_SCHED_LATENCY_S` (5 µs) — one passive-target ``Lock/
Fetch_and_op/Unlock`` on rank 0's window across a cluster network (an
assumption; 2–20 µs in practice). On one node it is ~1 µs: measure it with
:func:`hpcblend.analysis.scaling.rma_latency_benchmark` (``mpirun -n 2 python -m
hpcblend.analysis.scaling rma-bench``; the development VM gave 0.99 µs median
with rank 0 computing, and 7 µs median / 38 µs p90 with 4 ranks on its 2 cores).
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

import heapq
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from hpcblend.analysis.scaling_workload import Workload, replicate, replication_factor
from hpcblend.config import RunConfig, write_round_units
from hpcblend.parallel.schedule import round_due, unit_order

__all__ = ["POLICIES", "DEFAULT_RANKS", "DEFAULT_SCHED_LATENCY_S", "DEFAULT_ROUND_LATENCY_S", "ReplayParams",
           "ReplayResult", "params_for", "hand_out_order", "simulate", "replay", "replay_table", "self_replay"]

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


@dataclass
class ReplayParams:
    """Costs of the driver's protocol (seconds, bytes). See the module docstring.

    ``write_every_units`` 0 is the driver's default, :func:`hpcblend.config.write_round_units`.
    """

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


class _ProtocolReplay:
    """Event simulation of the driver protocol on ``n`` ranks; ``seq`` = unit costs in hand-out order
    (dynamic) or file order (static round-robin: unit i on rank i mod n).

    Ranks that become free at the same instant (the start, the end of a round)
    reach the counter in a random order (seeded): with a fixed order rank 0
    would always take the first, largest unit of every batch.
    """

    def __init__(self, seq: np.ndarray, n: int, P: ReplayParams, static: bool, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.n, self.P, self.static = n, P, static
        seq = np.asarray(seq, dtype=float)
        self.U = len(seq)
        self.slow = max(1.0, n / P.cores) if P.cores else 1.0
        self.run_cost = (seq * self.slow + P.unit_overhead_s * self.slow).tolist()
        self.startup = P.rank_startup_s * self.slow
        self.started = [False] * n
        self.lat = 0.0 if static else P.sched_ops_per_unit * P.sched_latency_s
        self.svc = 0.0 if static else P.sched_ops_per_unit * P.sched_service_s
        self.W = write_round_units(P.write_every_units, n)
        self.poll = float(P.poll_s)
        self.busy = [0.0] * n
        self.sched = [0.0] * n
        self.sync, self.io, self.tail = np.zeros(n), np.zeros(n), np.zeros(n)
        self.finished = [False] * n
        self.exhausted = np.zeros(n, bool)
        self.idle_since = np.zeros(n)
        self.arrival = np.zeros(n)
        self.ptr = list(range(n))  # static: next file-order index per rank
        self.nxt = 0
        self.claimed = self.claimed_at_round = self.units_since_round = 0
        self.t_last_round = self.server_free = 0.0
        self.pending = False
        self.n_joined = self.n_rounds = self.n_started = 0
        self.heap = [(0.0, i, int(r)) for i, r in enumerate(self.rng.permutation(n))]
        self.tick = n

    def run(self) -> dict:
        """Play every event, then the final round; the totals per rank (see :func:`simulate`)."""
        pop = heapq.heappop
        while self.heap:
            t, _, r = pop(self.heap)
            if self.finished[r]:
                self._unit_done(r, t)
            if self.pending:
                self._join_round(r, t)
                continue
            self._pull(r, t)
        return self._final_round()

    def _unit_done(self, r: int, t: float) -> None:
        """Rank ``r`` finished a unit at ``t``: raise a round if one is due (the exhausted ranks join at their poll)."""
        self.finished[r] = False
        self.units_since_round += 1
        if not self.pending and round_due(self.claimed, self.claimed_at_round, self.U, self.W, t - self.t_last_round,
                                          self.P.write_every_seconds):
            self.pending = True
            ex = np.nonzero(self.exhausted)[0]
            self.n_joined = len(ex)
            if self.n_joined:
                self.arrival[ex] = _ticks(self.idle_since[ex], t, self.poll)

    def _join_round(self, r: int, t: float) -> None:
        """Rank ``r`` joins the pending round at ``t``; the last to join runs it and frees every working rank."""
        self.arrival[r] = t
        self.n_joined += 1
        if self.n_joined < self.n:
            return
        ex = self.exhausted  # every rank is in the round (the heap is empty now)
        start = float(self.arrival.max())
        cost = self.P.round_cost(self.n, self.units_since_round)
        end = start + cost
        self.tail[ex] += self.arrival[ex] - self.idle_since[ex]
        self.idle_since[ex] = end
        self.sync += start - self.arrival
        self.io += cost
        self.n_rounds += 1
        self.claimed_at_round = self.claimed
        self.t_last_round = end
        self.units_since_round = 0
        self.pending = False
        self.n_joined = 0
        self.heap = [(end, i, int(q)) for i, q in enumerate(self.rng.permutation(np.nonzero(~ex)[0]))]

    def _pull(self, r: int, t: float) -> None:
        """Rank ``r`` pulls its next unit at ``t`` (or finds none left and is exhausted)."""
        if self.static:
            p = self.ptr[r]
            self.ptr[r] += self.n
            d = 0.0
        else:
            p = self.nxt
            self.nxt += 1
            q = self.server_free - t
            if q > 0:
                self.server_free += self.svc
                d = self.lat + q
            else:
                self.server_free = t + self.svc
                d = self.lat
        self.sched[r] += d
        if p >= self.U:
            self.exhausted[r] = True
            self.idle_since[r] = t + d
            return
        self.claimed += 1
        c = self.run_cost[p]
        if not self.started[r]:
            self.started[r] = True
            c += self.startup
            self.n_started += 1
        self.busy[r] += c
        self.finished[r] = True
        self.tick += 1
        heapq.heappush(self.heap, (t + d + c, self.tick, r))

    def _final_round(self) -> dict:
        """Everyone is done: the last to finish sees it at once, the others at their next poll; then the final round."""
        n, idle_since = self.n, self.idle_since
        t_last = float(idle_since.max()) if n else 0.0
        arr = _ticks(idle_since, t_last, self.poll)
        arr[int(np.argmax(idle_since))] = t_last
        start = float(arr.max())
        cost = self.P.round_cost(n, self.units_since_round)
        self.tail += arr - idle_since
        self.sync += start - arr
        self.io += cost
        self.n_rounds += 1
        return {"makespan": start + cost, "busy": np.asarray(self.busy), "sched": np.asarray(self.sched),
                "sync": self.sync, "io": self.io, "tail": self.tail, "n_rounds": self.n_rounds, "slow": self.slow,
                "startup": self.n_started * self.startup}


def hand_out_order(wl: Workload, policy: str, model=None) -> np.ndarray:
    """The order in which a policy hands the units out: the driver's :func:`~hpcblend.parallel.schedule.unit_order`.

    Parameters
    ----------
    wl : Workload
    policy : str
        One of :data:`POLICIES`: ``static_rr`` and ``dynamic_file`` are the
        driver's ``file`` schedule; the others its ``cost`` schedule on
        ``dynamic_cost``: :meth:`Workload.predicted` (``model``, default the
        default model, as a run orders them); ``dynamic_npa``:
        :meth:`Workload.driver_key`; ``dynamic_oracle``: the measured cost.

    Returns
    -------
    ndarray of int, shape (U,)

    Raises
    ------
    ValueError
        Unknown policy.
    """
    if policy in ("static_rr", "dynamic_file"):
        return unit_order(wl.cost, "file")
    if policy == "dynamic_cost":
        key = wl.predicted(model)
    elif policy == "dynamic_npa":
        key = wl.driver_key()
    elif policy == "dynamic_oracle":
        key = wl.cost
    else:
        raise ValueError(f"unknown policy {policy!r}; one of {POLICIES}")
    return unit_order(key, "cost")


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
        order = hand_out_order(wl, policy, model)
    s = _ProtocolReplay(wl.cost[order], int(n_ranks), P, static).run()
    T, n = s["makespan"], int(n_ranks)
    work = float(wl.cost.sum() + P.unit_overhead_s * wl.n_units)  # useful work: not the ranks' cold starts
    tot = n * T if T > 0 else 1.0
    busy = s["busy"]
    mean_busy = busy.mean() if n else 0.0
    return ReplayResult(
        policy=policy, n_ranks=n, n_units=wl.n_units, replication=1, makespan_s=T, work_s=work,
        efficiency=min(work / tot, 1.0) if T > 0 else 1.0,
        idle_fraction=float((s["sync"].sum() + s["tail"].sum()) / tot),
        busy_fraction=float(busy.sum() / tot), startup_fraction=float(s["startup"] / tot),
        sched_fraction=float(s["sched"].sum() / tot),
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
        max(params.write_every_units, this × N)`` (the driver's default,
        ``write_every_units`` 0, is ``max(64, 8 N)``: :func:`hpcblend.config.write_round_units`).

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
    pol = "dynamic_file" if m.get("schedule") == "file" else "dynamic_cost"  # the run's own order
    r = simulate(wl, n, pol, params or params_for(wl), model=model)
    meas = m.get("loop_wall_s")
    return {"n_ranks": n, "policy": pol, "modelled_s": r.makespan_s, "measured_s": meas,
            "error": (r.makespan_s / meas - 1.0) if meas else None,
            "modelled_max_mean_busy": r.max_mean_busy, "measured_max_mean_busy": m.get("max_mean_busy"),
            "modelled_idle_fraction": r.idle_fraction,
            "measured_idle_fraction": (1.0 - m["busy_fraction"]) if m.get("busy_fraction") is not None else None}
