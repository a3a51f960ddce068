"""Overhead of the call-stack sampler on the real deblender (``profiling/bench_sampler_overhead.py``).

Deblends blends in one process, one blend after the other, in passes:

* ``off``      no sampler (a :class:`~hpcblend.diagnostics.sampler.NullSampler`, the same ``with stage`` calls),
* ``stages``   :class:`~hpcblend.diagnostics.sampler.StackSampler` with ``rate_hz=0`` (stage timers only),
* ``<R>hz``    :class:`~hpcblend.diagnostics.sampler.StackSampler` sampling at R Hz,

interleaved (the order of the modes is shuffled in every repeat) so that a
drift of the machine's speed hits every mode alike. Each pass wraps every
blend in ``sampler.stage("fit", blend_id)`` (``"load"`` as well with
``with_io``, where every pass reads the files again). The kernels are
compiled and one untimed pass is run first. :func:`run_sampler_overhead`
returns per mode the pass times (wall and process CPU), the overhead
against ``off`` and the sampler's own figures; :func:`format_sampler_overhead`
prints them as a table.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from typing import Callable, Sequence

from hpcblend.config import DeblendConfig
from hpcblend.deblend import deblend_blend, warm_up
from hpcblend.diagnostics.sampler import NullSampler, StackSampler
from hpcblend.io.blends import read_blend

__all__ = ["run_sampler_overhead", "format_sampler_overhead"]

_SAMPLER_KEYS = ("n_samples", "n_missed", "achieved_rate_hz", "overhead_cpu_s", "overhead_fraction", "elapsed_s")


def _one_pass(items, cfg, sampler, with_io):
    """Deblend every blend once under ``sampler``; returns (wall seconds, process CPU seconds)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i, (path, blend) in enumerate(items):
        if with_io:
            with sampler.stage("load", blend_id=i + 1):
                blend = read_blend(path, blend_id=i + 1)
        with sampler.stage("fit", blend_id=i + 1):
            deblend_blend(blend, cfg)
    return time.perf_counter() - t0, time.process_time() - c0


def _mode_summary(times: list, cpus: list, base: list, cbase: list, extra: list) -> dict:
    """One mode's figures: pass times and overheads against ``off`` (paired per repeat and of the minima)."""
    ratios = [t / b for t, b in zip(times, base)]
    cratios = [t / b for t, b in zip(cpus, cbase)]
    return {"times_s": times, "cpu_s": cpus, "median_s": statistics.median(times), "min_s": min(times),
            "overhead_median_paired": statistics.median(ratios) - 1.0, "overhead_min": min(times) / min(base) - 1.0,
            "overhead_cpu_median_paired": statistics.median(cratios) - 1.0, "sampler": extra}


def run_sampler_overhead(files: Sequence[str], repeats: int = 5, rates: Sequence[float] = (100.0,),
                         with_io: bool = False, seed: int = 0, note: Callable[[str], None] = print) -> dict:
    """Time deblending passes without the sampler, with stage timers only, and sampling at each rate.

    Parameters
    ----------
    files : sequence of str
        npz blend files.
    repeats : int
        Timed passes per mode.
    rates : sequence of float
        Sampling rates (Hz) to test.
    with_io : bool
        Read the files inside every pass (timed as stage ``load``).
    seed : int
        Seed of the mode order shuffle.
    note : callable
        Receives a progress line per repeat.

    Returns
    -------
    dict
        ``n_blends``, ``repeats``, ``with_io``, ``cold_start_s`` (kernel compile or cache load),
        ``load_average`` and ``modes``: mode -> ``times_s``, ``cpu_s`` (per pass), ``median_s``, ``min_s``,
        ``overhead_median_paired``, ``overhead_min``, ``overhead_cpu_median_paired`` (fractions) and
        ``sampler`` (per pass: the sampler's own figures, {} for ``off``).
    """
    cold = warm_up()
    items = [(f, read_blend(f, blend_id=i + 1)) for i, f in enumerate(files)]
    cfg = DeblendConfig()
    _one_pass(items, cfg, NullSampler(), with_io)  # untimed: caches, allocator, branch predictors
    modes = ["off", "stages"] + [f"{r:g}hz" for r in rates]
    rate_of = {"off": None, "stages": 0.0, **{f"{r:g}hz": float(r) for r in rates}}
    times = {m: [] for m in modes}
    cpus = {m: [] for m in modes}
    extra = {m: [] for m in modes}
    rng = random.Random(seed)
    note(f"{len(files)} blends, kernels ready in {cold:.2f} s; {repeats} repeats of modes {modes}, "
         f"interleaved{' (with I/O)' if with_io else ''}")
    for rep in range(repeats):
        order = modes[:]
        rng.shuffle(order)
        for m in order:
            rate = rate_of[m]
            if rate is None:
                dt, dc = _one_pass(items, cfg, NullSampler(), with_io)
                extra[m].append({})
            else:
                sampler = StackSampler(rate_hz=rate).start()
                dt, dc = _one_pass(items, cfg, sampler, with_io)
                sampler.stop()
                r = sampler.results(top_blends=0)
                extra[m].append({k: r[k] for k in _SAMPLER_KEYS})
            times[m].append(dt)
            cpus[m].append(dc)
        note(f"  repeat {rep + 1}: " + "  ".join(f"{m} {times[m][-1]:.3f}s (cpu {cpus[m][-1]:.3f}s)"
                                                for m in modes))
    return {"n_blends": len(files), "repeats": repeats, "with_io": with_io, "cold_start_s": cold,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "modes": {m: _mode_summary(times[m], cpus[m], times["off"], cpus["off"], extra[m]) for m in modes}}


def format_sampler_overhead(results: dict) -> list:
    """The table of :func:`run_sampler_overhead`'s results, one line per mode, and a legend (list of str)."""
    lines = [f"\n{'mode':>8} {'wall med':>9} {'wall min':>9} {'wall ovh':>9} {'min/min':>8} {'cpu med':>8} "
             f"{'cpu ovh':>8} {'samples':>8} {'rate Hz':>8} {'sampler CPU':>12}"]
    for m, r in results["modes"].items():
        ex = r["sampler"]
        samples = statistics.median([e["n_samples"] for e in ex]) if ex and ex[0] else None
        rate = statistics.median([e["achieved_rate_hz"] for e in ex]) if ex and ex[0] else None
        cpu = statistics.median([e["overhead_fraction"] for e in ex]) if ex and ex[0] else None
        lines.append(f"{m:>8} {r['median_s']:9.3f} {r['min_s']:9.3f} {100 * r['overhead_median_paired']:8.2f}% "
                     f"{100 * r['overhead_min']:7.2f}% {statistics.median(r['cpu_s']):8.3f} "
                     f"{100 * r['overhead_cpu_median_paired']:7.2f}% "
                     f"{'' if samples is None else f'{samples:8.0f}'}"
                     f"{'' if rate is None else f' {rate:8.1f}'}{'' if cpu is None else f' {100 * cpu:11.2f}%'}")
    lines.append("wall ovh: median over repeats of (mode / off) − 1, paired within a repeat; min/min: fastest pass "
                 "vs fastest pass; cpu ovh: the same on process CPU time (all threads, sampler included; robust to "
                 "other load); sampler CPU: the sampler thread's own CPU time / elapsed")
    return lines
