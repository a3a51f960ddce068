"""MPI driver: cost-ordered dynamic scheduling of blend files across ranks, catalog writing.

Every rank knows the sorted unit list; the next unit is taken from a shared
counter on rank 0 (MPI one-sided ``Fetch_and_op``), so idle ranks pull work
without a dedicated scheduler rank. Units go out largest expected cost
(n_peaks × footprint area) first. Rows go to the catalog in one collective
write round at the end (periodic rounds: not yet), then sorted by id.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .catalog import CatalogWriter
from .config import JobConfig, job_to_dict
from .errors import InputError
from .inputs import expand_inputs, peek_blend
from .pipeline import process_blend_file
from .provenance import collect_provenance
from .schema import blend_spec, source_spec

__all__ = ["run_job", "list_units"]

log = logging.getLogger("hpcblend")


def list_units(job: JobConfig):
    """Sorted input files of a job (``kind: demo`` writes its synthetic blends first)."""
    if job.input.kind == "demo":
        from .synthetic import write_demo_blends

        cache = job.input.cache_dir
        if not os.path.isabs(cache):
            cache = os.path.join(job.base_dir, cache)
        return sorted(write_demo_blends(cache, n_blends=job.input.n_demo_blends))
    return expand_inputs(list(job.input.paths), base_dir=job.base_dir)


def _comm():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


def run_job(job: JobConfig, output: str | None = None, progress: bool | None = None, comm=None) -> str:
    """Run a job on all ranks of ``comm`` (default ``MPI.COMM_WORLD``; one rank without mpirun).

    Returns
    -------
    str
        Path of the finished catalog.
    """
    MPI, world = _comm()
    comm = comm or world
    rank, size = comm.rank, comm.size
    out = output or job.output.path
    err = None
    units = peeks = None
    if rank == 0:
        try:
            units = list_units(job)
            peeks = [peek_blend(p) for p in units]
        except InputError as exc:
            err = str(exc)
    err = comm.bcast(err, root=0)
    if err:
        raise InputError(err)
    units, peeks = comm.bcast((units, peeks), root=0)
    bands = job.input.bands
    if bands is None:
        bands = _bands_from_first(units) if rank == 0 else None
        bands = comm.bcast(bands, root=0)
    cost = np.array([max(p.get("n_peaks") or 0, 1) * max(p.get("footprint_area") or 0, 1) for p in peeks], float)
    order = np.argsort(-cost, kind="stable") if job.run.schedule == "cost" else np.arange(len(units))
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
        if os.path.exists(out):
            os.remove(out)
    comm.Barrier()
    t_warm = 0.0
    if job.run.warmup:
        from .deblend import warm_up

        t_warm = warm_up()
        log.info("rank %d: kernels ready in %.2f s (cold start)", rank, t_warm)
    prov = collect_provenance(comm, units)
    prov["warmup_seconds_rank0"] = t_warm
    writer = CatalogWriter(out, comm, [blend_spec(), source_spec(bands)], writer=job.output.writer,
                           json_groups={"config": job_to_dict(job), "provenance": prov},
                           attrs={"bands": ",".join(bands)})
    # shared counter for dynamic pulling
    itemsize = MPI.INT64_T.Get_size()
    win = MPI.Win.Allocate(itemsize if rank == 0 else 0, itemsize, comm=comm)
    if rank == 0:
        np.frombuffer(win.tomemory(), dtype=np.int64)[0] = 0
    comm.Barrier()
    one = np.ones(1, dtype=np.int64)
    got = np.zeros(1, dtype=np.int64)
    blend_rows, source_rows, done = [], [], []
    bar = None
    if rank == 0 and (job.run.progress if progress is None else progress):
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(units), unit="blend", desc="deblend (rank 0 share)")
        except ImportError:
            bar = None
    t0 = time.time()
    while True:
        win.Lock(0, MPI.LOCK_SHARED)
        win.Fetch_and_op(one, got, 0, 0, MPI.SUM)
        win.Unlock(0)
        i = int(got[0])
        if i >= len(units):
            break
        idx = int(order[i])
        row, src = process_blend_file(units[idx], idx, job, bands, rank)
        blend_rows.append(row)
        source_rows.append(src)
        done.append(os.path.basename(units[idx]))
        if row["flag_failed"][0]:
            log.warning("rank %d: %s failed: %s: %s", rank, units[idx], row["error_type"][0].decode(),
                        row["error_message"][0].decode())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log.info("rank %d: %d blends in %.1f s", rank, len(done), time.time() - t0)
    comm.Barrier()
    win.Free()
    bspec, sspec = blend_spec(), source_spec(bands)
    rows = {"blends": np.concatenate(blend_rows) if blend_rows else bspec.empty(),
            "sources": np.concatenate(source_rows) if source_rows else sspec.empty()}
    writer.write_round(rows, done)
    writer.finalize()
    return out


def _bands_from_first(units):
    from .inputs import read_blend

    for i, p in enumerate(units):
        try:
            return tuple(read_blend(p, blend_id=i + 1).bands)
        except Exception:
            continue
    return ("g", "r", "i", "z", "y")
