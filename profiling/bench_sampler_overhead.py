#!/usr/bin/env python
"""Overhead of the call-stack sampler on the real deblender.

Deblends the real HSC blends (``../shared/data/hsc_blends/set*/*.npz`` by
default) in one process, one blend after the other, in passes:

* ``off``      no sampler (a :class:`~hpcblend.diagnostics.sampler.NullSampler`, the same ``with stage`` calls),
* ``stages``   :class:`~hpcblend.diagnostics.sampler.StackSampler` with ``rate_hz=0`` (stage timers only),
* ``<R>hz``    :class:`~hpcblend.diagnostics.sampler.StackSampler` sampling at R Hz (default 100),

interleaved (the order of the modes is shuffled in every repeat) so that a
drift of the machine's speed hits every mode alike. Each pass wraps every
blend in ``sampler.stage("fit", blend_id)`` (``"load"`` as well with
``--with-io``, where every pass reads the files again). The kernels are
compiled and one untimed pass is run first.

Prints, per mode, the median and minimum pass time, the overhead against
``off`` (median of the per-repeat ratios, and ratio of the minima), the same
on process CPU time (all threads; far less sensitive to other load on a
shared machine than wall time), and for
sampling modes the samples taken, the achieved rate and the sampler thread's
own CPU time. ``--json F`` writes all of it.

Example::

    .venv/bin/python profiling/bench_sampler_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import statistics
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GLOB = os.path.join(_REPO, "..", "shared", "data", "hsc_blends", "set*", "*.npz")


def _one_pass(items, cfg, sampler, with_io):
    """Deblend every blend once under ``sampler``; returns (wall seconds, process CPU seconds)."""
    from hpcblend.deblend.deblender import deblend_blend
    from hpcblend.io.blends import read_blend

    c0 = time.process_time()
    t0 = time.perf_counter()
    for i, (path, blend) in enumerate(items):
        if with_io:
            with sampler.stage("load", blend_id=i + 1):
                blend = read_blend(path, blend_id=i + 1)
        with sampler.stage("fit", blend_id=i + 1):
            deblend_blend(blend, cfg)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help=f"npz blends (default {DEFAULT_GLOB})")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per mode (default 5)")
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0], help="sampling rates to test (default 100)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N blends (0: all)")
    ap.add_argument("--with-io", action="store_true", help="read the npz files inside every pass")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mode order shuffle")
    ap.add_argument("--json", metavar="F", help="write the results as JSON")
    args = ap.parse_args(argv)

    from hpcblend.config import DeblendConfig
    from hpcblend.deblend.deblender import warm_up
    from hpcblend.io.blends import read_blend
    from hpcblend.diagnostics.sampler import NullSampler, StackSampler

    files = []
    for p in args.paths or [DEFAULT_GLOB]:
        files += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no input blends (looked for {args.paths or DEFAULT_GLOB})", file=sys.stderr)
        return 2
    cold = warm_up()
    items = [(f, read_blend(f, blend_id=i + 1)) for i, f in enumerate(files)]
    cfg = DeblendConfig()
    _one_pass(items, cfg, NullSampler(), args.with_io)  # untimed: caches, allocator, branch predictors

    modes = ["off", "stages"] + [f"{r:g}hz" for r in args.rates]
    rate_of = {"off": None, "stages": 0.0, **{f"{r:g}hz": float(r) for r in args.rates}}
    times = {m: [] for m in modes}
    cpus = {m: [] for m in modes}
    extra = {m: [] for m in modes}
    rng = random.Random(args.seed)
    print(f"{len(files)} blends, kernels ready in {cold:.2f} s; {args.repeats} repeats of modes {modes}, "
          f"interleaved{' (with I/O)' if args.with_io else ''}")
    for rep in range(args.repeats):
        order = modes[:]
        rng.shuffle(order)
        for m in order:
            rate = rate_of[m]
            if rate is None:
                sampler = NullSampler()
                dt, dc = _one_pass(items, cfg, sampler, args.with_io)
                extra[m].append({})
            else:
                sampler = StackSampler(rate_hz=rate).start()
                dt, dc = _one_pass(items, cfg, sampler, args.with_io)
                sampler.stop()
                r = sampler.results(top_blends=0)
                extra[m].append({k: r[k] for k in ("n_samples", "n_missed", "achieved_rate_hz", "overhead_cpu_s",
                                                   "overhead_fraction", "elapsed_s")})
            times[m].append(dt)
            cpus[m].append(dc)
        print(f"  repeat {rep + 1}: " + "  ".join(f"{m} {times[m][-1]:.3f}s (cpu {cpus[m][-1]:.3f}s)"
                                                 for m in modes), flush=True)

    base, cbase = times["off"], cpus["off"]
    results = {"n_blends": len(files), "repeats": args.repeats, "with_io": args.with_io, "cold_start_s": cold,
               "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "modes": {}}
    print(f"\n{'mode':>8} {'wall med':>9} {'wall min':>9} {'wall ovh':>9} {'min/min':>8} {'cpu med':>8} "
          f"{'cpu ovh':>8} {'samples':>8} {'rate Hz':>8} {'sampler CPU':>12}")
    for m in modes:
        ratios = [t / b for t, b in zip(times[m], base)]
        cratios = [t / b for t, b in zip(cpus[m], cbase)]
        ov_med = statistics.median(ratios) - 1.0
        ov_min = min(times[m]) / min(base) - 1.0
        ov_cpu = statistics.median(cratios) - 1.0
        ex = extra[m]
        samples = statistics.median([e["n_samples"] for e in ex]) if ex and ex[0] else None
        rate = statistics.median([e["achieved_rate_hz"] for e in ex]) if ex and ex[0] else None
        cpu = statistics.median([e["overhead_fraction"] for e in ex]) if ex and ex[0] else None
        results["modes"][m] = {"times_s": times[m], "cpu_s": cpus[m], "median_s": statistics.median(times[m]),
                               "min_s": min(times[m]), "overhead_median_paired": ov_med, "overhead_min": ov_min,
                               "overhead_cpu_median_paired": ov_cpu, "sampler": ex}
        print(f"{m:>8} {statistics.median(times[m]):9.3f} {min(times[m]):9.3f} {100 * ov_med:8.2f}% "
              f"{100 * ov_min:7.2f}% {statistics.median(cpus[m]):8.3f} {100 * ov_cpu:7.2f}% "
              f"{'' if samples is None else f'{samples:8.0f}'}"
              f"{'' if rate is None else f' {rate:8.1f}'}{'' if cpu is None else f' {100 * cpu:11.2f}%'}")
    print("wall ovh: median over repeats of (mode / off) − 1, paired within a repeat; min/min: fastest pass "
          "vs fastest pass; cpu ovh: the same on process CPU time (all threads, sampler included; robust to "
          "other load); sampler CPU: the sampler thread's own CPU time / elapsed")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
