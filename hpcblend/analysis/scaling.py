"""Scaling of hpcblend runs: ``hpcblend scaling replay | rma-bench | study`` and the scheduler's RMA micro-benchmark.

``hpcblend scaling replay CATALOG`` reads a run's measured units
(:func:`~hpcblend.analysis.scaling_workload.load_workload`) and replays them on N simulated ranks
under several scheduling policies (:func:`~hpcblend.analysis.scaling_replay.replay`); the model, its
parameters and what it leaves out are described in :mod:`hpcblend.analysis.scaling_replay`, the
workload and its replication for large N in :mod:`hpcblend.analysis.scaling_workload`. Both are
re-exported here (the names of :data:`__all__`), the usual import for scripts
(``profiling/scaling_study.py``). ``hpcblend scaling rma-bench`` (under ``mpirun -n 2``) times the
driver's scheduling operation (:func:`rma_latency_benchmark`): the latency the replay needs.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import time
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np

from hpcblend.analysis.scaling_replay import (DEFAULT_RANKS, DEFAULT_ROUND_LATENCY_S, DEFAULT_SCHED_LATENCY_S, POLICIES,
                                              ReplayParams, ReplayResult, hand_out_order, params_for, replay,
                                              replay_table, self_replay, simulate)
from hpcblend.analysis.scaling_workload import Workload, load_workload, replicate, replication_factor
from hpcblend.errors import HpcblendError
from hpcblend.units.costmodel import load_cost_model

__all__ = ["POLICIES", "Workload", "ReplayParams", "ReplayResult", "load_workload", "replicate", "replication_factor",
           "simulate", "hand_out_order", "replay", "replay_table", "self_replay", "rma_latency_benchmark",
           "scaling_main", "DEFAULT_SCHED_LATENCY_S", "DEFAULT_ROUND_LATENCY_S", "DEFAULT_RANKS", "params_for"]


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
    from mpi4py import MPI  # here, not at the top: importing mpi4py initialises MPI, which the replay does not need

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
    """Efficiency and max/mean busy against N per policy (PNG); ``measured``: N -> measured efficiency."""
    import matplotlib  # optional dependency, only for --plot

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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "study":  # everything after "study" belongs to profiling/scaling_study.py
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
            from mpi4py import MPI  # already initialised by the benchmark; a replay never imports it

            if MPI.COMM_WORLD.rank == 0:
                print(json.dumps(r, indent=2))
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(r, fh, indent=2)
            return 0
        wl = load_workload(args.catalog)
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
