"""MPI driver: cost-ordered dynamic scheduling of work units across ranks, periodic collective writes, restart.

How a run goes
--------------
1. Rank 0 lists the work units (one blend file each, or one patch of a tract)
   and their expected cost; everyone receives the list. Units are handed out
   largest expected cost first (``run.schedule: cost``) or in input order.
2. Ranks pull the next unit from a shared counter held by rank 0 (MPI
   one-sided ``Fetch_and_op`` on an RMA window), so no rank is a dedicated
   scheduler and an idle rank never waits for a busy one.
3. Rows are buffered per rank and written in collective *write rounds*
   (``run.write_every_units`` finished units in all, or
   ``run.write_every_seconds`` after the last round, and at the end). A rank
   that notices a round is due raises a round counter in the window; every
   rank sees it before pulling its next unit (ranks without work poll for
   it) and joins. Each round ends with the catalog's ledger of finished
   units, so a killed run loses at most the units in flight.
4. ``resume=True`` reopens an incomplete catalog, trusts only what its
   ledger records and runs the remaining units. When all units are done the
   catalog is finalised (rows sorted by id): the file is the same for any
   number of ranks and any number of interruptions.

Signals
-------
``SIGTERM`` or ``SIGUSR1`` (Slurm's warning before the time limit, forwarded
by ``mpirun``/``srun``) make the rank ask everyone to stop: the current units
finish, one last round is written, and :class:`RunInterrupted` is raised (the
CLI exits with code 3: "checkpointed, resume with --resume").

Rank failure
------------
A blend or patch that raises becomes a flagged row (see
:mod:`hpcblend.pipeline`). An error outside that isolation on one rank is
logged with the rank and the unit, and ``MPI.Abort`` ends the whole job with a
non-zero exit instead of leaving the others waiting. Every rank keeps
``<output>.log/rank_<r>.inflight`` naming the unit it is working on, removed
when the run ends cleanly; after a hard kill (``kill -9``) the file says which
unit was lost, and ``--resume`` reports it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .catalog import CatalogWriter
from .config import JobConfig, job_to_dict, write_round_units
from .errors import CatalogError, HpcblendError, InputError
from .inputs import expand_inputs, peek_blend
from .provenance import collect_provenance
from .schema import blend_spec, source_spec

__all__ = ["run_job", "plan_units", "WorkUnit", "RunInterrupted", "StopOnSignal", "inflight_units", "list_units"]

log = logging.getLogger("hpcblend")

# RMA window slots (int64 on rank 0)
_NEXT_UNIT, _ROUND, _DONE_RANKS, _STOP = range(4)
_POLL_SECONDS = 0.01


class RunInterrupted(HpcblendError):
    """The run stopped on request (signal) after writing a consistent checkpoint; resume it."""


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable piece of work.

    Attributes
    ----------
    index : int
        Position in the run's sorted unit list; ids of rows derive from it, so
        they do not depend on which rank ran the unit.
    key : str
        Ledger key (path relative to the job's base directory).
    path : str
        File the unit reads.
    cost : float
        Expected cost (arbitrary units; n_peaks × footprint area in pixels for
        blend files), used only for ordering.
    kind : str
        ``"blend"`` (an npz blend file) or ``"patch"`` (a patch of a tract;
        ``info["patch"]`` is its :class:`hpcblend.skymap.PatchInfo`).
    info : dict
        What the cheap look at the unit found (n_peaks, footprint_area, ...).
    """

    index: int
    key: str
    path: str
    cost: float
    kind: str = "blend"
    info: dict = field(default_factory=dict, compare=False)


def list_units(job: JobConfig) -> list:
    """Sorted input files of a blend-collection job (``kind: demo`` writes its synthetic blends first)."""
    if job.input.kind == "demo":
        from .synthetic import write_demo_blends

        cache = job.input.cache_dir
        if not os.path.isabs(cache):
            cache = os.path.join(job.base_dir, cache)
        return sorted(write_demo_blends(cache, n_blends=job.input.n_demo_blends))
    return expand_inputs(list(job.input.paths), base_dir=job.base_dir)


def _unit_key(path: str, base_dir: str) -> str:
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir))
    except ValueError:  # different drive (Windows) – keep the absolute path
        return os.path.abspath(path)


def tract_dir(job: JobConfig) -> str:
    """The job's tract directory, absolute."""
    d = job.input.tract_dir
    return d if os.path.isabs(d) else os.path.normpath(os.path.join(job.base_dir, d))


def _ensure_tract(job: JobConfig) -> str:
    """Rank 0: simulate the tract when ``input.simulate.enabled`` and the directory has no coadds."""
    import glob

    d = tract_dir(job)
    sim = job.input.simulate
    if sim.enabled and not glob.glob(os.path.join(d, "coadd_*.fits")):
        from .simulate import simulate_tract

        cosmos = sim.cosmos_dir
        if cosmos and not os.path.isabs(cosmos):
            cosmos = os.path.normpath(os.path.join(job.base_dir, cosmos))
        log.info("simulating tract %s (%dx%d px, bands %s, seed %d) ...", d, sim.shape[0], sim.shape[1],
                 "".join(sim.bands), sim.seed)
        t = time.time()
        simulate_tract(d, shape=tuple(sim.shape), bands=tuple(sim.bands), density=sim.density,
                       star_density=sim.star_density, psf=sim.psf, seed=sim.seed, cosmos_dir=cosmos or None,
                       tract=job.input.tract, galaxy_mag_range=tuple(sim.galaxy_mag_range))
        log.info("simulated tract in %.1f s", time.time() - t)
    return d


def plan_units(job: JobConfig) -> list:
    """All work units of a job, in index order (rank 0 calls this).

    Blend collections: one unit per npz file, expected cost n_peaks × footprint
    area. Tracts: one unit per patch, expected cost the outer box's area.

    Raises
    ------
    InputError
        No inputs match, or an input cannot be looked at.
    """
    if job.input.kind == "tract":
        from .coadd import check_tract
        from .skymap import make_patches

        d = _ensure_tract(job)
        shape = check_tract(d, job.input.bands)  # every band's headers, WCS and PSF, before any patch
        patches = make_patches(shape, job.input.patch_inner_size, job.input.patch_overlap, tract=job.input.tract)
        model = _cost_model(job)
        units = []
        for p in patches:
            cost = float(p.outer.area)
            if model is not None and model.kind == "patch":
                cost = float(model.predict(n_peaks=None, area=p.outer.area))
            units.append(WorkUnit(index=p.flat, key=f"tract {p.tract} patch {p.name}", path=d, cost=cost,
                                  kind="patch", info={"patch": p}))
        return units
    model = _cost_model(job)
    units = []
    for i, p in enumerate(list_units(job)):
        info = peek_blend(p)
        n, area = max(info.get("n_peaks") or 0, 1), max(info.get("footprint_area") or 0, 1)
        cost = float(model.predict(n_peaks=n, area=area)) if model is not None and model.kind == "blend" \
            else float(n * area)
        units.append(WorkUnit(index=i, key=_unit_key(p, job.base_dir), path=p, cost=cost, info=info))
    return units


def _cost_model(job: JobConfig):
    """The runtime model used to order units (``run.cost_model`` or the default)."""
    from .costmodel import load_cost_model

    path = job.run.cost_model
    if path and not os.path.isabs(path):
        path = os.path.join(job.base_dir, path)
    try:
        return load_cost_model(path or None)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: key 'run.cost_model': cannot read the cost model: {exc}") from None


def _comm():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


def _tables(job: JobConfig, bands) -> list:
    """Catalog tables of a job kind."""
    if job.input.kind == "tract":
        from .patches import patch_tables

        return patch_tables(bands, job.measure.aperture_radii)
    return [blend_spec(), source_spec(bands)]


def _input_files(job: JobConfig, units) -> list:
    """Files whose checksums go into the provenance."""
    if job.input.kind == "tract":
        from .coadd import tract_paths

        return list(tract_paths(tract_dir(job), job.input.bands).files()) if units else []
    return [u.path for u in units]


def _bands_of(job: JobConfig, units):
    if job.input.kind == "tract":
        from .coadd import tract_paths

        return tuple(tract_paths(tract_dir(job)).bands)
    return _bands_from_first(units)


def _bands_from_first(units):
    from .inputs import read_blend

    for u in units:
        try:
            return tuple(read_blend(u.path, blend_id=u.index + 1).bands)
        except Exception:  # noqa: BLE001 - a bad first file must not decide the run
            continue
    return ("g", "r", "i", "z", "y")


def _log_dir(out: str) -> str:
    return os.path.abspath(out) + ".log"


def inflight_units(out: str) -> dict:
    """Units a previous run of ``out`` was working on when it ended abnormally.

    Returns
    -------
    dict of int -> dict
        Rank → ``{"unit": key, "since": iso time, "host": name}``.
    """
    d = _log_dir(out)
    found = {}
    if not os.path.isdir(d):
        return found
    for name in sorted(os.listdir(d)):
        if name.startswith("rank_") and name.endswith(".inflight"):
            try:
                with open(os.path.join(d, name)) as fh:
                    rec = json.load(fh)
                found[int(name[5:-9])] = rec
            except (OSError, ValueError):
                continue
    return found


class _Inflight:
    """``<output>.log/rank_<r>.inflight``: the unit this rank works on (for post-mortems).

    Rewritten in place (no rename, no fsync: a few microseconds per unit);
    a reader that catches it half-written skips it.
    """

    def __init__(self, out: str, rank: int):
        self.path = os.path.join(_log_dir(out), f"rank_{rank}.inflight")
        self.host = socket.gethostname()
        self._fh = open(self.path, "w")

    def set(self, unit: WorkUnit | None) -> None:
        rec = {"unit": unit.key if unit else None, "index": unit.index if unit else None, "host": self.host,
               "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}
        self._fh.seek(0)
        self._fh.write(json.dumps(rec))
        self._fh.truncate()
        self._fh.flush()

    def clear(self) -> None:
        self._fh.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _prepare_output(job: JobConfig, out: str, resume: bool) -> list:
    """Rank 0: check the output may be written (or resumed), plan the units, reset the log directory.

    The cheap checks on the output come before planning, which may simulate a tract.

    Raises
    ------
    CatalogError
        The output exists and may not be replaced, or there is nothing to resume.
    InputError
        The inputs cannot be planned (:func:`plan_units`).
    """
    exists = os.path.exists(out)
    if exists and not resume and not job.output.overwrite:
        raise CatalogError(f"{out}: exists and output.overwrite is false (use --resume to continue it)")
    if resume and not exists:
        raise CatalogError(f"{out}: cannot resume, no such catalog")
    units = plan_units(job)
    if resume:
        for r, rec in sorted(inflight_units(out).items()):
            if rec.get("unit"):
                log.warning("previous run: rank %d (host %s) was working on %s since %s and did not finish it",
                            r, rec.get("host"), rec.get("unit"), rec.get("since"))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if exists and not resume:
        os.remove(out)
    os.makedirs(_log_dir(out), exist_ok=True)
    state = os.environ.get("HPCBLEND_RUN_STATE")
    if state:  # tells bin/hpcblend-mpirun where to look after a crash
        with open(state, "w") as fh:
            fh.write(out + "\n")
    for name in os.listdir(_log_dir(out)):
        if name.endswith(".inflight"):
            os.remove(os.path.join(_log_dir(out), name))
    return units


def _is_complete(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except OSError:
        return False


class StopOnSignal:
    """SIGTERM/SIGUSR1 handlers (main thread only) that set a flag; the previous handlers come back on exit.

    Re-entrant: entering an instance that is already installed does nothing,
    and only the outermost exit restores the previous handlers.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.requested = False
        self._old = {}
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._old.items():
                signal.signal(s, h)
            self._old = {}
        return False


class _Schedule:
    """The shared RMA counters on rank 0: next unit, round number, finished ranks, stop flag."""

    def __init__(self, MPI, comm):
        self.MPI, self.comm = MPI, comm
        item = MPI.INT64_T.Get_size()
        self.win = MPI.Win.Allocate(4 * item if comm.rank == 0 else 0, item, comm=comm)
        if comm.rank == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:4] = 0
        comm.Barrier()
        self._one = np.ones(1, dtype=np.int64)
        self._zero = np.zeros(1, dtype=np.int64)
        self._res = np.zeros(1, dtype=np.int64)

    def _op(self, slot: int, value: np.ndarray, op) -> int:
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Fetch_and_op(value, self._res, 0, slot, op)
        self.win.Unlock(0)
        return int(self._res[0])

    def read(self, slot: int) -> int:
        return self._op(slot, self._zero, self.MPI.NO_OP)

    def add(self, slot: int, n: int = 1) -> int:
        """Atomically add ``n``; return the value before."""
        return self._op(slot, np.array([n], dtype=np.int64), self.MPI.SUM)

    def raise_to(self, slot: int, value: int) -> None:
        self._op(slot, np.array([value], dtype=np.int64), self.MPI.MAX)

    def free(self) -> None:
        self.comm.Barrier()
        self.win.Free()


def run_job(job: JobConfig, output: str | None = None, progress: bool | None = None, comm=None,
            resume: bool = False, stop_signal=None) -> str:
    """Run a job on all ranks of ``comm`` (default ``MPI.COMM_WORLD``; one rank without mpirun).

    Parameters
    ----------
    job : JobConfig
    output : str, optional
        Catalog path (default ``job.output.path``).
    progress : bool, optional
        Progress bar on rank 0 (default ``job.run.progress``).
    comm : mpi4py.MPI.Comm, optional
    resume : bool
        Continue an interrupted run of the same catalog: units in its ledger
        are skipped; a catalog already complete is left as it is (returns at
        once, so a requeued job may resume any number of times). Without it
        an existing catalog is replaced when ``output.overwrite`` is true,
        else it is an error.
    stop_signal : StopOnSignal, optional
        Signal handlers installed by the caller as early as possible (the
        CLI does so before imports and planning, so a Slurm warning signal
        during start-up or finalisation is remembered, not fatal); default:
        installed here around the work loop.

    Returns
    -------
    str
        Path of the finished catalog.

    Raises
    ------
    InputError
        The inputs cannot be listed.
    CatalogError
        The output exists and may not be replaced, or cannot be resumed.
    RunInterrupted
        A stop signal arrived; the catalog holds a consistent checkpoint.
    """
    MPI, world = _comm()
    comm = comm or world
    rank, size = comm.rank, comm.size
    out = os.path.abspath(output or job.output.path)

    err, units, done_already = None, None, False
    if rank == 0:
        done_already = resume and os.path.exists(out) and _is_complete(out)
        if not done_already:
            try:
                units = _prepare_output(job, out, resume)
            except HpcblendError as exc:
                err = (type(exc), str(exc))
    if comm.bcast(done_already, root=0):
        if rank == 0:
            log.info("%s is already complete: nothing to resume", out)
        return out
    err = comm.bcast(err, root=0)
    if err:
        raise err[0](err[1])
    units = comm.bcast(units, root=0)
    bands = job.input.bands
    if bands is None:
        bands = _bands_of(job, units) if rank == 0 else None
        bands = comm.bcast(bands, root=0)
    bands = tuple(bands)

    t_warm = 0.0
    if job.run.warmup:
        from .deblend import warm_up

        t_warm = warm_up()
        if job.input.kind == "tract":
            from .patches import warm_up_tract

            t_warm += warm_up_tract(bands, units[0].path if units else None)
        log.info("rank %d: kernels ready in %.2f s (cold start)", rank, t_warm)
    prov = collect_provenance(comm, comm.bcast(_input_files(job, units) if rank == 0 else None, root=0))
    prov["warmup_seconds_rank0"] = t_warm
    specs = _tables(job, bands)
    writer = CatalogWriter(out, comm, specs, writer=job.output.writer, resume=resume,
                           json_groups={"config": job_to_dict(job), "provenance": prov},
                           attrs={"bands": ",".join(bands)})
    finished = writer.finished_units()
    cost = np.array([u.cost for u in units])
    order = np.argsort(-cost, kind="stable") if job.run.schedule == "cost" else np.arange(len(units))
    todo = [int(i) for i in order if units[int(i)].key not in finished]
    if resume and rank == 0:
        log.info("resume: %d of %d units already in the catalog, %d to go", len(units) - len(todo), len(units),
                 len(todo))
    from .profiling import StackSampler

    from .report.gallery import GalleryCollector

    sampler = (StackSampler(job.profile.sample_hz, lines=job.profile.lines) if job.profile.sample_hz > 0
               else StackSampler(0.0))
    gallery = GalleryCollector(max_failed=job.profile.gallery_flagged, max_flagged=job.profile.gallery_flagged,
                               n_slowest=job.profile.gallery_slowest)
    try:
        stopped = _work_loop(MPI, comm, job, writer, units, todo, bands, specs, out, progress, sampler, gallery,
                             stop_signal)
    except BaseException as exc:  # noqa: BLE001 - one rank's unexpected error must end the job, not hang it
        if size > 1 and not isinstance(exc, KeyboardInterrupt):
            where = getattr(exc, "hpcblend_unit", None)
            log.critical("rank %d: fatal %s: %s (%s) — aborting all ranks", rank, type(exc).__name__, exc,
                         f"while processing unit {where}" if where else "outside any unit")
            comm.Abort(1)
        raise
    if stopped and len(writer.finished_units()) < len(units):
        sampler.stop()
        writer.close()
        raise RunInterrupted(f"{out}: stopped by signal after a checkpoint; {len(writer.finished_units())} of "
                             f"{len(units)} units written; run again with --resume to finish")
    with sampler.stage("write"):
        writer.finalize()
    sampler.stop()
    _store_profiles(comm, job, out, sampler)
    _store_gallery(comm, out, gallery)
    return out


def _store_gallery(comm, out: str, gallery) -> None:
    """Gather the ranks' failure-gallery records to rank 0 and append them to the catalog (``/gallery``)."""
    from .report.gallery import write_gallery

    gathered = comm.gather(gallery.records(), root=0)
    if comm.rank == 0:
        records = [r for part in gathered for r in part]
        if records:
            write_gallery(out, records)
        log.info("gallery: %d blend images stored (failed, flagged, slowest)", len(records))
    comm.Barrier()


def _store_profiles(comm, job: JobConfig, out: str, sampler) -> None:
    """Gather every rank's stage times and stacks to rank 0 and append them to the catalog (``/profile``)."""
    from .profiling import write_collapsed, write_profiles

    res = sampler.results(rank=comm.rank)
    if job.profile.write_collapsed and job.profile.sample_hz > 0:
        write_collapsed(os.path.join(_log_dir(out), f"rank_{comm.rank}.collapsed"), res["stacks"])
    gathered = comm.gather(res, root=0)
    if comm.rank == 0:
        write_profiles(out, gathered)
        from .flamegraph import busy_seconds

        busy = {p["rank"]: busy_seconds(p) for p in gathered}  # the report's definition: all but wait/mpi
        wall = max(p["elapsed_s"] for p in gathered)
        log.info("profile: %s", ", ".join(f"rank {r} busy {b:.1f} s of {wall:.1f} s" for r, b in sorted(busy.items())))
    comm.Barrier()


def _work_loop(MPI, comm, job, writer, units, todo, bands, specs, out, progress, sampler, gallery,
               stop_signal=None) -> bool:
    """Pull units, process them, write rounds. Returns True when stopped by a signal."""
    from .pipeline import process_unit

    rank, size = comm.rank, comm.size
    sched = _Schedule(MPI, comm)
    inflight = _Inflight(out, rank)
    bar = None
    if rank == 0 and (job.run.progress if progress is None else progress) and todo:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="unit", desc=f"{len(todo)} units on {size} rank(s)", smoothing=0.05)
        except ImportError:
            bar = None
    buffered = {s.name: [] for s in specs}
    pending_units: list = []
    local_round = 0
    t_round = time.monotonic()
    claimed_at_round = 0
    n_done_local, t_busy, t_start = 0, 0.0, time.monotonic()
    every_units = write_round_units(job.run.write_every_units, size)
    every_seconds = float(job.run.write_every_seconds)
    exhausted = stopping = False

    def do_round():
        nonlocal local_round, t_round, claimed_at_round, buffered, pending_units
        rows = {name: (np.concatenate(parts) if parts else spec.empty())
                for (name, parts), spec in zip(buffered.items(), specs)}
        with sampler.stage("write"):
            writer.write_round(rows, [u.key for u in pending_units])
        local_round += 1
        t_round = time.monotonic()
        claimed_at_round = sched.read(_NEXT_UNIT)
        buffered = {s.name: [] for s in specs}
        if rank == 0 and bar is None:
            log.info("round %d written: %d units in the catalog", local_round, len(writer.finished_units()))
        pending_units = []

    sampler.start()
    sampler.set_stage("wait")
    with (stop_signal if stop_signal is not None else StopOnSignal()) as sig:
        while True:
            if sig.requested and not stopping and not exhausted:
                # an exhausted rank ignores the signal: the run is ending anyway, and raising a round
                # after the others left the loop would leave them waiting
                log.warning("rank %d: stop signal received; writing a checkpoint round", rank)
                stopping = True
                sched.raise_to(_STOP, 1)
                sched.raise_to(_ROUND, local_round + 1)
            if sched.read(_ROUND) > local_round:
                stopping = stopping or sched.read(_STOP) > 0
                do_round()
                continue
            if stopping and not exhausted:  # (a stop request always comes with a round: seen above)
                exhausted = True
                sched.add(_DONE_RANKS)
            if not exhausted:
                i = sched.add(_NEXT_UNIT)
                if i >= len(todo):
                    exhausted = True
                    sched.add(_DONE_RANKS)
                    continue
                unit = units[todo[i]]
                inflight.set(unit)
                t0 = time.monotonic()
                try:
                    with sampler.stage("load", unit.index + 1):
                        tables = process_unit(unit, job, bands, rank, sampler=sampler, gallery=gallery)
                except BaseException as exc:
                    exc.hpcblend_unit = unit.key  # for the fatal-error message in run_job
                    raise
                t_busy += time.monotonic() - t0
                for name, rows in tables.items():
                    buffered[name].append(rows)
                pending_units.append(unit)
                n_done_local += 1
                inflight.set(None)
                claimed = i + 1  # units handed out so far, as of this rank's claim (no extra RMA read)
                if bar is not None:
                    bar.n = min(claimed, len(todo))
                    bar.refresh()
                due = (claimed - claimed_at_round >= every_units) or (time.monotonic() - t_round >= every_seconds)
                if due and claimed < len(todo):
                    sched.raise_to(_ROUND, local_round + 1)
                continue
            # no more work here: wait for rounds others ask for, or for everyone to finish
            if sched.read(_DONE_RANKS) >= size and sched.read(_ROUND) <= local_round:
                break
            time.sleep(_POLL_SECONDS)
        do_round()  # the final round (collective: every rank arrives here once all are done)
    if bar is not None:
        bar.n = len(todo)
        bar.close()
    wall = time.monotonic() - t_start
    log.info("rank %d: %d units in %.1f s (busy %.1f s, %.0f%%)", rank, n_done_local, wall, t_busy,
             100.0 * t_busy / max(wall, 1e-9))
    sched.free()
    inflight.clear()
    return stopping
