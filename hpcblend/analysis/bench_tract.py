"""``hpcblend bench tract [JOB]``: a tract job on one core, stage by stage.

Runs a tract job (default: the built-in job) in one process after the kernels are compiled or loaded
(the cold start is timed and reported apart), then reads the run's own profile (``/profile``: wall
seconds per stage, measured by the stage timers of the stack sampler) and catalog and prints seconds
and share of busy time per stage (load, detect, init, fit, measure, write), per-patch and per-blend
figures, and throughput in Mpx·bands per core-second and blends per core-second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from hpcblend.config import default_job, load_job
from hpcblend.deblend import warm_up
from hpcblend.diagnostics.stages import IDLE_STAGES
from hpcblend.diagnostics.stages import STAGES as ALL_STAGES
from hpcblend.errors import ConfigError
from hpcblend.io.catalog import read_bands, read_table
from hpcblend.io.json_values import json_default
from hpcblend.io.profiles import read_profiles
from hpcblend.parallel.driver import run_job
from hpcblend.units.tract import warm_up_tract

__all__ = ["STAGES", "run_bench_tract", "format_tract_report", "write_tract_json"]

#: The working stages of a tract run, in data-flow order (:data:`hpcblend.diagnostics.stages.STAGES` without the
#: idle ``wait`` and ``mpi``; ``other`` is not counted either): their sum is the benchmark's busy time.
STAGES = tuple(s for s in ALL_STAGES if s not in IDLE_STAGES)


def run_bench_tract(job_path: Optional[str] = None, overrides: Sequence[str] = (),
                    output: Optional[str] = None) -> dict:
    """Run a tract job on one core and measure it.

    Parameters
    ----------
    job_path : str, optional
        A tract job file; default the built-in job (``jobs/demo.yaml``).
    overrides : sequence of str
        ``section.key=value`` overrides, as ``hpcblend run --set``.
    output : str, optional
        Catalog path; default a temporary file, removed afterwards.

    Returns
    -------
    dict
        ``cold_start_s`` (first kernel compile or cache load in this process), ``wall_s`` (the run),
        ``busy_s`` (the profile's stage seconds without ``wait``), ``stages`` (stage -> seconds),
        ``share`` (stage -> fraction of busy), ``n_patches``, ``n_blends`` (``/blends`` rows),
        ``n_parents`` (primary rows: physical blends), ``n_isolated``, ``n_sources``, ``pixels``
        (the tract's pixels: the patches' inner boxes), ``n_bands``, ``mpx_bands_per_core_s``,
        ``blends_per_core_s`` (primary parents per busy second), ``per_patch_s`` (median, max of
        ``/patches.t_total``), ``per_blend_s`` (median, p90, max of ``/blends.t_total``), ``blended``
        (the parents with more than one peak: ``n``, seconds of ``init``, ``fit``, ``measure`` summed from
        their ``/blends`` rows, and ``fit_share``, the fit's part of those three).

    Raises
    ------
    hpcblend.errors.ConfigError
        The job is not a tract job, or is invalid.
    """
    from mpi4py import MPI  # here, not at the top: importing mpi4py initialises MPI, which a plain import must not

    overrides = tuple(overrides) + ("run.progress=false",)
    job = load_job(job_path, overrides) if job_path else default_job(overrides)
    if job.input.kind != "tract":
        raise ConfigError(f"{job_path or 'built-in job'}: key 'input.kind': bench tract needs a tract job, "
                          f"got {job.input.kind!r}")
    t0 = time.perf_counter()
    warm_up()
    warm_up_tract()
    cold = time.perf_counter() - t0
    tmp = None
    if output is None:
        tmp = tempfile.mkdtemp(prefix="hpcblend-bench-tract-")
        output = os.path.join(tmp, "bench.h5")
    t0 = time.perf_counter()
    out = run_job(job, output=output, progress=False, comm=MPI.COMM_SELF)
    wall = time.perf_counter() - t0
    try:
        profile = read_profiles(out)[0]
        patches, blends = read_table(out, "patches"), read_table(out, "blends")
        n_sources = len(read_table(out, "sources"))
        with_bands = len(read_bands(out))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    stages = {s: float(profile["stage_seconds"].get(s, 0.0)) for s in STAGES}
    busy = sum(stages.values())
    pixels = int(np.sum(patches["inner_bbox"][:, 2] * patches["inner_bbox"][:, 3]))
    primary = blends["primary"].astype(bool)
    multi = ~blends["isolated"].astype(bool)
    blended = {"n": int(multi.sum()), "init": float(blends["t_init"][multi].sum()),
               "fit": float(blends["t_fit"][multi].sum()), "measure": float(blends["t_measure"][multi].sum())}
    spent = blended["init"] + blended["fit"] + blended["measure"]
    blended["fit_share"] = blended["fit"] / spent if spent else float("nan")
    return {
        "job": job_path or "built-in job", "cold_start_s": cold, "wall_s": wall, "busy_s": busy,
        "stages": stages, "share": {s: (v / busy if busy else 0.0) for s, v in stages.items()},
        "n_patches": len(patches), "n_blends": len(blends), "n_parents": int(primary.sum()),
        "n_isolated": int(np.count_nonzero(blends["isolated"] & primary)), "n_sources": n_sources,
        "pixels": pixels, "n_bands": with_bands,
        "mpx_bands_per_core_s": pixels * with_bands / 1e6 / busy if busy else float("nan"),
        "blends_per_core_s": int(primary.sum()) / busy if busy else float("nan"),
        "per_patch_s": {"median": float(np.median(patches["t_total"])), "max": float(np.max(patches["t_total"]))},
        "per_blend_s": {"median": float(np.median(blends["t_total"])),
                        "p90": float(np.percentile(blends["t_total"], 90)), "max": float(np.max(blends["t_total"]))},
        "blended": blended,
    }


def format_tract_report(r: dict) -> str:
    """The report of :func:`run_bench_tract` as text: one table of stages, then the throughput."""
    lines = [f"bench tract: {r['job']} on one core; cold start (kernels compiled or loaded) {r['cold_start_s']:.2f} s",
             f"{r['n_patches']} patches, {r['pixels'] / 1e6:.2f} Mpx x {r['n_bands']} bands, {r['n_parents']} parents "
             f"({r['n_isolated']} with one peak), {r['n_sources']} children",
             f"{'stage':10s} {'seconds':>9s} {'share':>7s}"]
    for s in STAGES:
        lines.append(f"{s:10s} {r['stages'][s]:9.3f} {100 * r['share'][s]:6.1f}%")
    lines.append(f"{'busy':10s} {r['busy_s']:9.3f} {100.0:6.1f}%   (run wall {r['wall_s']:.3f} s)")
    lines.append(f"per patch [s]: median {r['per_patch_s']['median']:.3f}  max {r['per_patch_s']['max']:.3f}")
    lines.append(f"per blend [s]: median {r['per_blend_s']['median']:.4f}  p90 {r['per_blend_s']['p90']:.4f}  "
                 f"max {r['per_blend_s']['max']:.4f}")
    b = r["blended"]
    lines.append(f"blended parents ({b['n']} rows with > 1 peak): init {b['init']:.3f} s, fit {b['fit']:.3f} s, "
                 f"measure {b['measure']:.3f} s; fit {100 * b['fit_share']:.1f}% of their time")
    lines.append(f"throughput: {r['mpx_bands_per_core_s']:.3f} Mpx*bands per core-second, "
                 f"{r['blends_per_core_s']:.1f} blends per core-second")
    return "\n".join(lines)


def write_tract_json(report: dict, path: str) -> None:
    """Write :func:`run_bench_tract`'s report as JSON."""
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, default=json_default)
