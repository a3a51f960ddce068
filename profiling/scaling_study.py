#!/usr/bin/env python
"""Measured vs modelled scaling of hpcblend (issue 6, "Scale out", items 3 and 4).

Runs the real job at 1, 2 and (oversubscribed) 4 ranks and sets the replay
model's predictions (:mod:`hpcblend.analysis.scaling`) next to the measurements:

* **strong scaling**, same input at every N: the 164 HSC blends
  (``jobs/hsc_blends.yaml``) and the simulated demo tract (built-in job,
  2000² px) cut into ``--patch-size`` patches (default 500 px: 16 patches);
* **weak scaling**, units ∝ ranks: N copies of the 164 HSC blends on N ranks
  (copied to ``OUT/weak_hsc/copy<i>`` with non-numeric names, so the ids stay
  unique), and simulated tracts of 1000 × (1000·N) px cut into 500 px patches
  (4·N patches; simulated once into ``OUT/tracts`` before timing);
* **policies**: the driver's ``run.schedule: cost`` vs ``file`` measured at 2
  ranks; static round-robin, file order, cost order (predicted), the driver's
  n_peaks×area key and the oracle modelled;
* the scheduler's RMA latency, measured with ``hpcblend.analysis.scaling rma-bench``
  under ``mpirun -n 2``, is what the model uses for these runs.

Wall times: ``loop`` = the longest rank's ``/profile`` elapsed time (work
loop, write rounds, final sort: what the replay models); ``run`` = provenance
start to the catalog's ``finished`` stamp; ``process`` = the command's wall
clock (Python start-up, MPI start-up, Numba warm-up included). Efficiency is
``T(1) / (N · T(N))`` on the loop wall. More ranks than cores share the cores,
so measured efficiency at N > cores is at most cores/N; the model knows the
core count (``cores``) for these comparisons.

Two model predictions per run:

* *predicted*: from the 1-rank run's unit costs (what a user would do: measure
  once, predict N);
* *self-replay*: from the N-rank run's own unit costs (isolates the protocol
  model — scheduling, rounds, polling — from changes of per-unit cost with N,
  e.g. two ranks sharing memory bandwidth or a core with other processes).

Then the model's projection to 1 … 4096 ranks per policy (unit lists
replicated to ≥ ``--min-units-per-rank`` units per rank; cluster defaults for
the RMA latency), with the measured run's write-round setting (the driver's
default: every max(64, 8 N) units) and with rounds scaled to 8 units per rank.

Output: a table on stdout, ``OUT/scaling_study.json``, and PNGs (measured vs
modelled efficiency; modelled efficiency and max/mean busy vs N per policy).

    .venv/bin/python profiling/scaling_study.py --out output/scaling_study [--quick] [--reuse]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import hpcblend.analysis.scaling as sc  # noqa: E402
from hpcblend.analysis.costfit import fit_cost_model  # noqa: E402
from hpcblend.config import default_job  # noqa: E402
from hpcblend.simulate.sources import SimulatedTractSource  # noqa: E402

PY = os.path.join(REPO, ".venv", "bin", "python")
HPCBLEND = os.path.join(REPO, ".venv", "bin", "hpcblend")
MPIRUN = os.path.join(REPO, "bin", "hpcblend-mpirun")
HSC_JOB = os.path.join(REPO, "jobs", "hsc_blends.yaml")


def _env() -> dict:
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- runs


def rma_bench(out_dir: str, reuse: bool) -> dict:
    path = os.path.join(out_dir, "rma.json")
    if not (reuse and os.path.exists(path)):
        cmd = ["mpirun", "--oversubscribe", "-n", "2", PY, "-m", "hpcblend.analysis.scaling", "rma-bench", "--json", path]
        subprocess.run(cmd, check=True, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL)
    with open(path) as fh:
        return json.load(fh)


def run_series(configs: list, out_dir: str, reuse: bool = False, repeat: int = 1) -> dict:
    """Run each configuration ``repeat`` times, *interleaved* (1, 2, 4, 1, 2, 4, ...) so that every rank
    count sees the same spells of other users' load; keep per configuration the run with the shortest
    loop wall (others' load only ever makes a run slower).

    ``configs``: list of ``(key, name, n, job, sets, inputs)``. Returns ``{key: measure(best)}`` with
    ``all_loop_wall_s`` / ``all_process_wall_s`` of every repetition.
    """
    recs: dict = {}
    i = 0
    while True:
        todo = []
        for key, name, n, job, sets, inputs in configs:
            nm = name if i == 0 else f"{name}_r{i}"
            done = reuse and os.path.exists(os.path.join(out_dir, nm + ".h5.json"))
            if i < max(repeat, 1) or done:  # with --reuse, earlier extra repetitions count too
                todo.append((key, nm, n, job, sets, inputs))
        if not todo:
            break
        for key, nm, n, job, sets, inputs in todo:
            recs.setdefault(key, []).append(measure(run_job(nm, out_dir, n, job, sets, inputs, reuse)))
        i += 1
    out = {}
    for key, rs in recs.items():
        best = dict(min(rs, key=lambda r: r["loop_wall_s"]))
        best["all_loop_wall_s"] = [r["loop_wall_s"] for r in rs]
        best["all_process_wall_s"] = [r["process_wall_s"] for r in rs]
        out[key] = best
    return out


def run_job(name: str, out_dir: str, n: int, job: str | None, sets=(), inputs: str | None = None,
            reuse: bool = False) -> dict:
    """Run one job; return its record (catalog path, process wall, load average before) — or reuse one."""
    cat = os.path.join(out_dir, f"{name}.h5")
    side = cat + ".json"
    if reuse and os.path.exists(cat) and os.path.exists(side):
        with open(side) as fh:
            return json.load(fh)
    args = ["run"] + ([job] if job else []) + ["--output", cat, "--set", "run.progress=false"]
    for s in sets:
        args += ["--set", s]
    if inputs:
        args += ["--input", inputs]
    cmd = ([HPCBLEND] if n == 1 else [MPIRUN, "-n", str(n)]) + args
    load = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    rec = {"name": name, "catalog": cat, "n_ranks": n, "process_wall_s": wall, "cmd": cmd, "loadavg_before": load,
           # CPU seconds of the whole process tree; / (min(N, cores) x wall) < 1 means the job did not get its cores
           "cpu_s": cpu, "cpu_share": cpu / (min(n, os.cpu_count() or 1) * wall)}
    with open(side, "w") as fh:
        json.dump(rec, fh, indent=1)
    log(f"  ran {name}: {n} rank(s), {wall:.1f} s, CPU share {rec['cpu_share']:.2f} (1-min load average "
        f"before: {load:.2f})")
    return rec


def measure(rec: dict) -> dict:
    """The record plus what its catalog says (loop/run wall, busy, unit costs)."""
    wl = sc.load_workload(rec["catalog"])
    m = wl.measured
    out = dict(rec)
    out.update(schedule=m.get("schedule"), n_units=wl.n_units, sum_cost_s=float(wl.cost.sum()),
               loop_wall_s=m.get("loop_wall_s"), run_wall_s=m.get("run_wall_s"),
               busy_fraction=m.get("busy_fraction"), idle_fraction=1.0 - m["busy_fraction"],
               max_mean_busy=m.get("max_mean_busy"), round_cost_s=m.get("round_cost_s"),
               unit_overhead_s=wl.unit_overhead_s, rounds=m.get("rounds"))
    out["_wl"] = wl
    return out


def _copy_hsc(out_dir: str, n_copies: int) -> str:
    """``OUT/weak_hsc/copy<i>/c<i>_<stem>.npz`` for i < n_copies; returns a glob of the first n_copies."""
    src = sorted(glob.glob(os.path.join(os.path.dirname(REPO), "shared", "data", "hsc_blends", "set*", "*.npz")))
    if not src:
        raise RuntimeError("no HSC blends under ../shared/data/hsc_blends")
    base = os.path.join(out_dir, "weak_hsc")
    for i in range(n_copies):
        d = os.path.join(base, f"copy{i}")
        if len(glob.glob(os.path.join(d, "*.npz"))) == len(src):
            continue
        os.makedirs(d, exist_ok=True)
        for s in src:
            shutil.copyfile(s, os.path.join(d, f"c{i}_{os.path.basename(s)}"))
    return base


def _ensure_tract(path: str, shape) -> None:
    """Simulate the built-in job's tract at ``shape`` into ``path`` unless it is there (what a run's planning does)."""
    if glob.glob(os.path.join(path, "coadd_*.fits")):
        return
    t = time.perf_counter()
    job = default_job((f"input.tract_dir={path}", f"input.simulate.shape=[{shape[0]},{shape[1]}]"))
    SimulatedTractSource(job).prepare()
    log(f"  simulated tract {path} {shape[0]}x{shape[1]} in {time.perf_counter() - t:.1f} s")


# ---------------------------------------------------------------------------------------------- model


def _policy_of(schedule: str | None) -> str:
    return "dynamic_file" if schedule == "file" else "dynamic_npa"


def _local_params(wl, rma: dict, cores: int, **kw) -> sc.ReplayParams:
    return sc.params_for(wl, sched_latency_s=rma["remote_us"] * 1e-6, cores=cores, **kw)


def strong_table(runs: dict, rma: dict, cores: int, model=None) -> dict:
    """Measured vs modelled for one dataset: runs = {(N, schedule): measured record}."""
    base = runs[(1, "cost")]
    wl1 = base["_wl"]
    P1 = _local_params(wl1, rma, cores)
    t1_model = sc.simulate(wl1, 1, "dynamic_npa", P1).makespan_s
    rows = []
    for (n, sched), r in sorted(runs.items(), key=lambda kv: (kv[0][1] != "cost", kv[0][0])):
        pol = _policy_of(sched)
        pred = sc.simulate(wl1, n, pol, P1, model=model)
        wln = r["_wl"]
        # the N-rank run's unit costs already include any sharing of cores: no slowdown on top
        selfr = sc.simulate(wln, n, pol, _local_params(wln, rma, None), model=model)
        meas_eff = base["loop_wall_s"] / (n * r["loop_wall_s"])
        rows.append({
            "n_ranks": n, "schedule": sched, "units": r["n_units"],
            "measured_loop_s": r["loop_wall_s"], "measured_run_s": r["run_wall_s"],
            "measured_process_s": r["process_wall_s"], "measured_efficiency": meas_eff,
            "measured_efficiency_process": base["process_wall_s"] / (n * r["process_wall_s"]),
            "measured_idle_fraction": r["idle_fraction"], "measured_max_mean_busy": r["max_mean_busy"],
            "unit_cost_factor": r["sum_cost_s"] / base["sum_cost_s"], "loadavg_before": r.get("loadavg_before"),
            "cpu_share": r.get("cpu_share"), "all_loop_wall_s": r.get("all_loop_wall_s"),
            "predicted_s": pred.makespan_s, "predicted_error": pred.makespan_s / r["loop_wall_s"] - 1.0,
            "predicted_efficiency": t1_model / (n * pred.makespan_s),
            "predicted_idle_fraction": pred.idle_fraction, "predicted_max_mean_busy": pred.max_mean_busy,
            "self_replay_s": selfr.makespan_s, "self_replay_error": selfr.makespan_s / r["loop_wall_s"] - 1.0,
            "self_replay_idle_fraction": selfr.idle_fraction,
        })
    return {"base_params": asdict(P1), "rows": rows}


def weak_table(runs: dict, rma: dict, cores: int) -> dict:
    """Weak scaling: runs = {N: record} with N× the work of the 1-rank run; model = 1-rank units replicated N×."""
    base = runs[1]
    wl1 = base["_wl"]
    P1 = _local_params(wl1, rma, cores)
    rows = []
    for n, r in sorted(runs.items()):
        pol = _policy_of(r.get("schedule"))
        pred = sc.simulate(sc.replicate(wl1, n), n, pol, P1)
        selfr = sc.simulate(r["_wl"], n, pol, _local_params(r["_wl"], rma, None))
        rows.append({"n_ranks": n, "units": r["n_units"], "measured_loop_s": r["loop_wall_s"],
                     "measured_process_s": r["process_wall_s"],
                     "measured_weak_efficiency": base["loop_wall_s"] / r["loop_wall_s"],
                     "unit_cost_factor": r["sum_cost_s"] / (n * base["sum_cost_s"]),
                     "predicted_s": pred.makespan_s, "predicted_error": pred.makespan_s / r["loop_wall_s"] - 1.0,
                     "predicted_weak_efficiency": base["loop_wall_s"] / pred.makespan_s
                     if n > 1 else 1.0,
                     "self_replay_s": selfr.makespan_s, "self_replay_error": selfr.makespan_s / r["loop_wall_s"] - 1.0})
    return {"rows": rows}


def policy_table(wl, rma: dict, cores: int, n: int = 2, model=None) -> list:
    P = _local_params(wl, rma, cores)
    out = []
    for pol in sc.POLICIES:
        r = sc.simulate(wl, n, pol, P, model=model)
        out.append({"policy": pol, "n_ranks": n, "makespan_s": r.makespan_s, "idle_fraction": r.idle_fraction,
                    "efficiency": r.efficiency, "max_mean_busy": r.max_mean_busy})
    return out


def projection(wl, ranks, min_upr: float, model=None, per_rank_w=None) -> list:
    P = sc.params_for(wl)  # cluster defaults: DEFAULT_SCHED_LATENCY_S, measured round cost, one core per rank
    res = sc.replay(wl, ranks, sc.POLICIES, P, model=model, min_units_per_rank=min_upr,
                    write_every_units_per_rank=per_rank_w)
    return [r.to_dict() for r in res]


# ---------------------------------------------------------------------------------------------- output


def fmt_strong(title: str, t: dict) -> str:
    h = (f"{'N':>3} {'sched':>5} {'units':>6} {'loop[s]':>8} {'proc[s]':>8} {'E_meas':>7} {'idle':>6} "
         f"{'mx/mn':>6} {'cost×':>6} {'cpu':>5} | {'pred[s]':>8} {'err':>7} {'E_pred':>7} {'idle':>6} | {'self[s]':>8} {'err':>7}")
    lines = [title, "  (E = T1/(N·TN) on the loop wall; cost× = Σ unit cost / Σ at 1 rank; cpu = CPU s of the job / "
                    "(min(N, cores) × wall); pred = model from the 1-rank run's unit costs; self = model from this "
                    "run's unit costs)", h, "-" * len(h)]
    for r in t["rows"]:
        lines.append(
            f"{r['n_ranks']:>3} {r['schedule']:>5} {r['units']:>6} {r['measured_loop_s']:>8.3f} "
            f"{r['measured_process_s']:>8.2f} {r['measured_efficiency']:>7.3f} {r['measured_idle_fraction']:>6.3f} "
            f"{r['measured_max_mean_busy']:>6.3f} {r['unit_cost_factor']:>6.2f} {r['cpu_share'] or 0:>5.2f} | "
            f"{r['predicted_s']:>8.3f} "
            f"{100 * r['predicted_error']:>6.1f}% {r['predicted_efficiency']:>7.3f} {r['predicted_idle_fraction']:>6.3f} | "
            f"{r['self_replay_s']:>8.3f} {100 * r['self_replay_error']:>6.1f}%")
    return "\n".join(lines)


def fmt_weak(title: str, t: dict) -> str:
    h = (f"{'N':>3} {'units':>6} {'loop[s]':>8} {'proc[s]':>8} {'E_weak':>7} {'cost×':>6} | {'pred[s]':>8} {'err':>7} "
         f"{'E_pred':>7} | {'self[s]':>8} {'err':>7}")
    lines = [title, h, "-" * len(h)]
    for r in t["rows"]:
        lines.append(f"{r['n_ranks']:>3} {r['units']:>6} {r['measured_loop_s']:>8.3f} {r['measured_process_s']:>8.2f} "
                     f"{r['measured_weak_efficiency']:>7.3f} {r['unit_cost_factor']:>6.2f} | {r['predicted_s']:>8.3f} "
                     f"{100 * r['predicted_error']:>6.1f}% {r['predicted_weak_efficiency']:>7.3f} | "
                     f"{r['self_replay_s']:>8.3f} {100 * r['self_replay_error']:>6.1f}%")
    return "\n".join(lines)


def fmt_policies(title: str, measured: list, modelled: list) -> str:
    lines = [title, f"{'':<16}{'makespan[s]':>12}{'idle':>8}{'max/mean':>10}"]
    for m in measured:
        lines.append(f"{'meas ' + m['schedule']:<16}{m['loop_wall_s']:>12.3f}{m['idle_fraction']:>8.3f}"
                     f"{m['max_mean_busy']:>10.3f}")
    for m in modelled:
        lines.append(f"{'model ' + m['policy'].replace('dynamic_', 'dyn_'):<16}{m['makespan_s']:>12.3f}"
                     f"{m['idle_fraction']:>8.3f}{m['max_mean_busy']:>10.3f}")
    return "\n".join(lines)


def fmt_projection(title: str, proj: list, n: int) -> str:
    lines = [title, f"{'policy':<16}{'units':>8}{'k':>5}{'makespan[s]':>12}{'eff':>7}{'start':>7}{'idle':>7}"
                    f"{'sched':>7}{'sync':>7}{'io':>7}{'tail':>7}{'max/mean':>9}{'rounds':>7}"]
    for r in proj:
        if r["n_ranks"] != n:
            continue
        lines.append(f"{r['policy']:<16}{r['n_units']:>8}{r['replication']:>5}{r['makespan_s']:>12.3f}"
                     f"{r['efficiency']:>7.3f}{r['startup_fraction']:>7.3f}{r['idle_fraction']:>7.3f}"
                     f"{r['sched_fraction']:>7.3f}"
                     f"{r['sync_fraction']:>7.3f}{r['io_fraction']:>7.3f}{r['tail_fraction']:>7.3f}"
                     f"{r['max_mean_busy']:>9.3f}{r['n_rounds']:>7d}")
    return "\n".join(lines)


def sensitivity(wl, n: int, min_upr: float, model=None) -> list:
    """Cost-ordered dynamic pull at ``n`` ranks, rounds every 8 units per rank, varying one assumption at a time."""
    k = sc.replication_factor(wl.n_units, n, min_upr)
    w = sc.replicate(wl, k)
    base = sc.params_for(wl, write_every_units=max(sc.params_for(wl).write_every_units, 8 * n))
    cases = [("defaults (5 us RMA, 1 us service, 1 GB/s)", {}),
             ("I/O 10 GB/s", {"io_bandwidth_Bps": 1e10}),
             ("I/O free (no bytes, no round latency)", {"io_bandwidth_Bps": float("inf"), "round_latency_s": 0.0,
                                                        "round_log_latency_s": 0.0}),
             ("RMA 20 us, service 5 us", {"sched_latency_s": 20e-6, "sched_service_s": 5e-6}),
             ("no scheduling cost", {"sched_latency_s": 0.0, "sched_service_s": 0.0}),
             ("no cold start per rank", {"rank_startup_s": 0.0}),
             ("rounds every 64 units (fixed)", {"write_every_units": 64})]
    out = []
    for name, kw in cases:
        r = sc.simulate(w, n, "dynamic_cost", replace(base, **kw), model=model)
        out.append({"case": name, "efficiency": r.efficiency, "makespan_s": r.makespan_s,
                    "sched_fraction": r.sched_fraction, "sync_fraction": r.sync_fraction,
                    "io_fraction": r.io_fraction, "max_mean_busy": r.max_mean_busy})
    return out


def fmt_sensitivity(title: str, rows: list) -> str:
    lines = [title, f"{'case':<44}{'eff':>7}{'sched':>7}{'sync':>7}{'io':>7}{'max/mean':>9}"]
    for r in rows:
        lines.append(f"{r['case']:<44}{r['efficiency']:>7.3f}{r['sched_fraction']:>7.3f}{r['sync_fraction']:>7.3f}"
                     f"{r['io_fraction']:>7.3f}{r['max_mean_busy']:>9.3f}")
    return "\n".join(lines)


def plots(out_dir: str, results: dict) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ds = [k for k in ("hsc", "tract") if k in results.get("strong", {})]
    if ds:
        fig, axes = plt.subplots(1, len(ds), figsize=(4.8 * len(ds), 3.8), squeeze=False)
        for ax, k in zip(axes[0], ds):
            rows = [r for r in results["strong"][k]["rows"] if r["schedule"] == "cost"]
            ns = [r["n_ranks"] for r in rows]
            ax.plot(ns, [r["measured_efficiency"] for r in rows], "ko-", label="measured (loop wall)")
            ax.plot(ns, [r["predicted_efficiency"] for r in rows], "s--", label="model from 1-rank costs")
            wk = results.get("weak", {}).get(k)
            if wk:
                ax.plot([r["n_ranks"] for r in wk["rows"]], [r["measured_weak_efficiency"] for r in wk["rows"]],
                        "k^:", label="measured weak")
                ax.plot([r["n_ranks"] for r in wk["rows"]], [r["predicted_weak_efficiency"] for r in wk["rows"]],
                        "v:", label="model weak")
            ax.axvline(results["cores"], color="0.7", lw=0.8)
            ax.set_xticks(ns)
            top = max([1.0] + [r["measured_efficiency"] for r in rows]
                      + ([r["measured_weak_efficiency"] for r in wk["rows"]] if wk else []))
            ax.set_ylim(0, top + 0.1)
            ax.set_xlabel("ranks (vertical line: cores)")
            ax.set_ylabel("parallel efficiency")
            ax.set_title(k, fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, "efficiency_measured_vs_model.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    for k, proj in results.get("projection", {}).items():
        for variant, rs in proj.items():
            res = [sc.ReplayResult(**{f: r[f] for f in r if f in sc.ReplayResult.__dataclass_fields__}) for r in rs]
            p = os.path.join(out_dir, f"projection_{k}_{variant}.png")
            sc._plot_replay(res, p, title=f"{k}: modelled, write rounds {variant}")
            paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hpcblend scaling study" if __name__ != "__main__" else None,
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "output", "scaling_study"))
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--patch-size", type=int, default=500, help="tract strong scaling: patch inner size (px)")
    ap.add_argument("--quick", action="store_true", help="skip weak scaling and the file-order runs")
    ap.add_argument("--skip-hsc", action="store_true")
    ap.add_argument("--skip-tract", action="store_true")
    ap.add_argument("--skip-weak", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse catalogs already in --out")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per configuration; the shortest loop wall is kept (noise on a shared machine)")
    ap.add_argument("--model-ranks", type=int, nargs="+", default=list(sc.DEFAULT_RANKS))
    ap.add_argument("--min-units-per-rank", type=float, default=25.0)
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    cores = os.cpu_count() or 1
    if 1 not in a.ranks:
        a.ranks = [1] + list(a.ranks)
    results: dict = {"cores": cores, "ranks": a.ranks, "strong": {}, "weak": {}, "policies": {}, "projection": {}}

    log(f"scaling study -> {out} ({cores} cores)")
    rma = rma_bench(out, a.reuse)
    results["rma"] = rma
    log(f"RMA fetch-and-op (mpirun -n 2): {rma['remote_us']:.2f} µs median ({rma['remote_us_p90']:.2f} µs p90), "
        f"local {rma['local_us']:.2f} µs")

    datasets = []
    if not a.skip_hsc:
        datasets.append(("hsc", HSC_JOB, ()))
    if not a.skip_tract:
        datasets.append(("tract", None, (f"input.patch_inner_size={a.patch_size}",)))
    texts = []
    for key, job, sets in datasets:
        texts += _strong_study(key, job, sets, a, out, rma, cores, results)
    if not (a.quick or a.skip_weak):
        texts += _weak_study(a, out, rma, cores, results)

    print("\n".join(texts))
    if not a.no_plots:
        try:
            for p in plots(out, results):
                log(f"plot: {p}")
        except ImportError as exc:
            log(f"no plots ({exc})")
    path = os.path.join(out, "scaling_study.json")
    with open(path, "w") as fh:
        json.dump(results, fh, indent=1, default=float)
    log(f"written: {path}")
    return 0



def _strong_study(key: str, job, sets: tuple, a, out: str, rma: dict, cores: int, results: dict) -> list:
    """Strong scaling of one data set, the policies at 2 ranks, the projection and its sensitivity; the text blocks."""
    texts = []
    log(f"[{key}] strong scaling")
    configs = [((n, "cost"), f"{key}_n{n}_cost", n, job, sets + ("run.schedule=cost",), None) for n in a.ranks]
    if not a.quick and 2 in a.ranks:
        configs.append(((2, "file"), f"{key}_n2_file", 2, job, sets + ("run.schedule=file",), None))
    runs = run_series(configs, out, a.reuse, a.repeat)
    # cost model for dynamic_cost: fitted on another run of the same input (the 2-rank run), not in-sample
    other = runs.get((2, "cost")) or runs[(1, "cost")]
    model = fit_cost_model(other["catalog"])
    results.setdefault("cost_models", {})[key] = model.to_dict()
    t = strong_table(runs, rma, cores, model=model)
    results["strong"][key] = t
    texts.append(fmt_strong(f"\n[{key}] strong scaling, measured vs modelled (loop wall; model knows "
                            f"{cores} cores)", t))
    wl1 = runs[(1, "cost")]["_wl"]
    meas_pol = [dict(schedule=s, **{k: runs[(2, s)][k] for k in ("loop_wall_s", "idle_fraction", "max_mean_busy")})
                for s in ("cost", "file") if (2, s) in runs]
    mod_pol = policy_table(wl1, rma, cores, 2, model=model)
    results["policies"][key] = {"measured_2": meas_pol, "modelled_2": mod_pol}
    texts.append(fmt_policies(f"\n[{key}] policies at 2 ranks (model from 1-rank costs)", meas_pol, mod_pol))
    proj = {"Wrun": projection(wl1, a.model_ranks, a.min_units_per_rank, model=model),
            "W8N": projection(wl1, a.model_ranks, a.min_units_per_rank, model=model, per_rank_w=8)}
    results["projection"][key] = proj
    nmax = max(a.model_ranks)
    texts.append(fmt_projection(f"\n[{key}] modelled at {nmax} ranks, the run's write-round setting "
                                f"(default max(64, 8N) units)", proj["Wrun"], nmax))
    texts.append(fmt_projection(f"\n[{key}] modelled at {nmax} ranks, rounds every 8 units per rank",
                                proj["W8N"], nmax))
    sens = sensitivity(wl1, nmax, a.min_units_per_rank, model=model)
    results.setdefault("sensitivity", {})[key] = sens
    texts.append(fmt_sensitivity(f"\n[{key}] dynamic_cost at {nmax} ranks (rounds every 8 units per rank): "
                                 f"one assumption at a time", sens))
    log(f"[{key}] done")
    return texts


def _weak_study(a, out: str, rma: dict, cores: int, results: dict) -> list:
    """Weak scaling: N copies of the HSC blends, tracts of 1000 × 1000·N px, on N ranks; the text blocks."""
    texts = []
    if not a.skip_hsc:
        log("[hsc] weak scaling (N copies of the 164 blends on N ranks)")
        base = _copy_hsc(out, max(a.ranks))
        configs = [(n, f"hsc_weak_n{n}", n, HSC_JOB, ("run.schedule=cost",),
                    os.path.join(base, f"copy[0-{n - 1}]", "*.npz")) for n in a.ranks]
        runs = run_series(configs, out, a.reuse, a.repeat)
        t = weak_table(runs, rma, cores)
        results["weak"]["hsc"] = t
        texts.append(fmt_weak("\n[hsc] weak scaling: N×164 blends on N ranks (model: 1-rank units replicated N×)", t))
    if not a.skip_tract:
        log("[tract] weak scaling (1000 x 1000·N px tract, 500 px patches, on N ranks)")
        configs = []
        for n in a.ranks:
            d = os.path.join(out, "tracts", f"w{n}")
            _ensure_tract(d, (1000, 1000 * n))
            configs.append((n, f"tract_weak_n{n}", n, None, (
                f"input.tract_dir={d}", f"input.simulate.shape=[1000,{1000 * n}]", "input.patch_inner_size=500",
                "run.schedule=cost"), None))
        runs = run_series(configs, out, a.reuse, a.repeat)
        t = weak_table(runs, rma, cores)
        results["weak"]["tract"] = t
        texts.append(fmt_weak("\n[tract] weak scaling: 4·N patches on N ranks (model: 1-rank units replicated N×)",
                              t))
    return texts


if __name__ == "__main__":
    sys.exit(main())
