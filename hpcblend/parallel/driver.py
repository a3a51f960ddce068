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
:mod:`hpcblend.units.blends`). An error outside that isolation on one rank is
logged with the rank and the unit, and ``MPI.Abort`` ends the whole job with a
non-zero exit instead of leaving the others waiting. Every rank keeps
``<output>.log/rank_<r>.inflight`` naming the unit it is working on, removed
when the run ends cleanly; after a hard kill (``kill -9``) the file says which
unit was lost, and ``--resume`` reports it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from hpcblend.io.catalog import CatalogWriter
from hpcblend.config import JobConfig, job_to_dict, write_round_units
from hpcblend.errors import CatalogError, HpcblendError, InputError, is_programming_error
from hpcblend.io.blends import expand_inputs, peek_blend
from hpcblend.diagnostics.provenance import collect_provenance
from hpcblend.io.schema import blend_spec, source_spec

__all__ = ["run_job", "plan_units", "WorkUnit", "RunInterrupted", "StopOnSignal", "inflight_units", "list_units",
           "node_name"]

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
        from hpcblend.simulate.synthetic import write_demo_blends

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
        from hpcblend.simulate.tract import simulate_tract

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
        from hpcblend.io.coadd import check_tract
        from hpcblend.skymap import make_patches

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
    from hpcblend.units.blends import blend_file_ids

    model = _cost_model(job)
    paths = list_units(job)
    keys = [_unit_key(p, job.base_dir) for p in paths]
    units = []
    for i, (p, key, blend_id) in enumerate(zip(paths, keys, blend_file_ids(paths, keys))):
        info = peek_blend(p)
        info["blend_id"] = blend_id
        n, area = max(info.get("n_peaks") or 0, 1), max(info.get("footprint_area") or 0, 1)
        cost = float(model.predict(n_peaks=n, area=area)) if model is not None and model.kind == "blend" \
            else float(n * area)
        units.append(WorkUnit(index=i, key=key, path=p, cost=cost, info=info))
    return units


def _cost_model(job: JobConfig):
    """The runtime model used to order units (``run.cost_model`` or the default)."""
    from hpcblend.units.costmodel import load_cost_model

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
        from hpcblend.units.tract import patch_tables

        return patch_tables(bands, job.measure.aperture_radii)
    return [blend_spec(), source_spec(bands)]


def _input_files(job: JobConfig, units) -> list:
    """Files whose checksums go into the provenance."""
    if job.input.kind == "tract":
        from hpcblend.io.coadd import tract_paths

        return list(tract_paths(tract_dir(job), job.input.bands).files()) if units else []
    return [u.path for u in units]


def _bands_of(job: JobConfig, units):
    if job.input.kind == "tract":
        from hpcblend.io.coadd import tract_paths

        return tuple(tract_paths(tract_dir(job)).bands)
    return _bands_from_first(units)


def _bands_from_first(units):
    from hpcblend.io.blends import read_blend

    for u in units:
        try:
            return tuple(read_blend(u.path, blend_id=u.info.get("blend_id", u.index + 1)).bands)
        except Exception as exc:  # noqa: BLE001 - a bad first file must not decide the run
            if is_programming_error(exc):
                raise
            continue
    return ("g", "r", "i", "z", "y")


def node_name() -> str:
    """This process's node: Slurm's node name (``SLURMD_NODENAME``) inside a Slurm job, else the host name.

    They differ where a cluster's node names are not its host names, and where
    several slurmd share one host (``slurm/local_slurm.sh start --nodes 2``).
    """
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _log_dir(out: str) -> str:
    return os.path.abspath(out) + ".log"


def inflight_units(out: str) -> dict:
    """Units a previous run of ``out`` was working on when it ended abnormally.

    Returns
    -------
    dict of int -> dict
        Rank → ``{"unit": key, "since": iso time, "host": name, "node": Slurm node name or host, "pid": int}``.
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
        self.node = node_name()
        self._fh = open(self.path, "w")

    def set(self, unit: WorkUnit | None) -> None:
        rec = {"unit": unit.key if unit else None, "index": unit.index if unit else None, "host": self.host,
               "path": (os.path.abspath(unit.path) if unit.kind == "blend" else unit.key) if unit else None,
               "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "node": self.node}
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


class WriterLock:
    """One writer per catalog: an exclusive POSIX lock on ``<output>.log/writer.lock``, held by rank 0.

    A second run on the same output (another job, or the same command
    started twice) fails to take the lock and is refused on every rank with
    one line naming the run that holds it. The kernel releases the lock when
    the holding process ends, however it ends, so a ``kill -9`` never leaves a
    stale lock behind and ``--resume`` can always take over. ``lockf`` (POSIX
    ``fcntl`` locks) works on local filesystems, NFS v4 and Lustre mounted
    with ``flock``; on a filesystem without locks the run goes on unlocked,
    with a warning.

    Parameters
    ----------
    out : str
        Catalog path (absolute).

    Raises
    ------
    CatalogError
        Another process holds the lock, or the lock file cannot be created.
    """

    def __init__(self, out: str):
        self.path = os.path.join(_log_dir(out), "writer.lock")
        try:
            self._fh = open(self.path, "a+")
        except OSError as exc:
            raise CatalogError(f"{out}: output unusable: cannot create {self.path}: {exc.strerror}") from None
        try:
            fcntl.lockf(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise CatalogError(f"{out}: another run is writing this catalog ({holder}); "
                                   f"wait for it to end, or choose another output") from None
            log.warning("%s: cannot lock (%s); the run goes on without a writer lock", self.path, exc.strerror)
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                       f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        self._fh.flush()

    def release(self) -> None:
        """Give the lock up (the file stays; it holds no state)."""
        if not self._fh.closed:
            self._fh.close()


def _prepare_output(job: JobConfig, out: str, resume: bool) -> tuple:
    """Rank 0: check the output may be written (or resumed), lock it, plan the units, reset the log directory.

    The cheap checks on the output and the writer lock come before planning,
    which may simulate a tract.

    Returns
    -------
    units : list of WorkUnit
    lock : WriterLock
        Held until the run ends (:meth:`WriterLock.release`).

    Raises
    ------
    CatalogError
        The output exists and may not be replaced, there is nothing to resume,
        the output's directory cannot be created or written, or another run
        holds the catalog's writer lock.
    InputError
        The inputs cannot be planned (:func:`plan_units`).
    """
    if os.path.isdir(out):
        raise CatalogError(f"{out}: output unusable: it is a directory")
    exists = os.path.exists(out)
    if exists and not resume and not job.output.overwrite:
        raise CatalogError(f"{out}: exists and output.overwrite is false (use --resume to continue it)")
    if resume and not exists:
        raise CatalogError(f"{out}: cannot resume, no such catalog")
    for d in (os.path.dirname(out) or ".", _log_dir(out)):
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"{out}: output unusable: cannot create directory {d}: {exc.strerror}") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise CatalogError(f"{out}: output unusable: directory {d} is not writable")
    lock = WriterLock(out)
    try:
        units = plan_units(job)
        if resume:
            for r, rec in sorted(inflight_units(out).items()):
                if rec.get("unit"):
                    log.warning("previous run: rank %d (node %s, host %s) was working on %s since %s and did not "
                                "finish it", r, rec.get("node", rec.get("host")), rec.get("host"),
                                rec.get("path") or rec.get("unit"), rec.get("since"))
        try:
            if exists and not resume:
                os.remove(out)
            state = os.environ.get("HPCBLEND_RUN_STATE")
            if state:  # tells bin/hpcblend-mpirun where to look after a crash
                with open(state, "w") as fh:
                    fh.write(out + "\n")
            for name in os.listdir(_log_dir(out)):
                if name.endswith(".inflight"):
                    os.remove(os.path.join(_log_dir(out), name))
        except OSError as exc:
            raise CatalogError(f"{out}: output unusable: {exc.strerror}: {exc.filename}") from None
    except BaseException:
        lock.release()
        raise
    return units, lock


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


class _ProgressWhileBusy:
    """Rank 0 of a job on several nodes, while it works on a unit: a thread drives MPI progress, so
    that other ranks' one-sided calls on the schedule's window (held by rank 0) complete without
    waiting for the unit to end.

    An RDMA network completes them in hardware; over plain TCP (OpenMPI 4.1's osc/pt2pt, the only
    one-sided component that spans nodes there) they complete only when rank 0 enters MPI, so a
    rank on another node waited for rank 0's whole unit before each pull — on two nodes rank 0
    ran 26 to 32 of 32 units. The thread calls ``MPI.COMM_SELF.Iprobe`` (which runs the progress
    engine) every ``period`` s and is joined before the main thread calls MPI again: the two never
    call MPI at once, so ``MPI_THREAD_SERIALIZED`` suffices; below that level, and when all ranks
    share one node's memory (the window is shared memory), it does nothing. COLLECTIVE to create.
    """

    def __init__(self, MPI, comm, period: float = 0.005):
        self.MPI, self.period = MPI, period
        shared = comm.Split_type(MPI.COMM_TYPE_SHARED)
        spans_nodes = shared.size < comm.size
        shared.Free()
        self.enabled = comm.rank == 0 and spans_nodes and MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.enabled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hpcblend-mpi-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.MPI.COMM_SELF.Iprobe(self.MPI.ANY_SOURCE, self.MPI.ANY_TAG)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
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
            resume: bool = False, stop_signal=None, retry_failed: bool = True) -> str:
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
    retry_failed : bool
        With ``resume``: run again the units whose last attempt failed (a
        patch with ``status = failed``, a blend file that could not be read
        or deblended); their earlier rows are replaced. False keeps them.

    Returns
    -------
    str
        Path of the finished catalog.

    Raises
    ------
    InputError
        The inputs cannot be listed.
    CatalogError
        The output exists and may not be replaced, cannot be resumed, is
        unusable (a directory, an unwritable or full filesystem), another run
        holds its writer lock, or two rows share an id — on every rank.
    RunInterrupted
        A stop signal arrived; the catalog holds a consistent checkpoint.
    """
    MPI, world = _comm()
    comm = comm or world
    rank, size = comm.rank, comm.size
    out = os.path.abspath(output or job.output.path)

    err, units, done_already, lock, fatal = None, None, False, None, None
    if rank == 0:
        try:
            done_already = resume and os.path.exists(out) and _is_complete(out)
            if not done_already:
                units, lock = _prepare_output(job, out, resume)
        except HpcblendError as exc:
            err = (type(exc), str(exc))
        except OSError as exc:  # an environment error not foreseen above: still one line on every rank
            err = (CatalogError, f"{out}: output unusable: {exc}")
        except BaseException as exc:  # noqa: BLE001 - a bug: the other ranks must not wait for it
            fatal = exc
            err = (HpcblendError, f"rank 0 failed while planning the run: {type(exc).__name__}: {exc} "
                                  f"(traceback in rank 0's log)")
    if comm.bcast(done_already, root=0):
        if rank == 0:
            log.info("%s is already complete: nothing to resume", out)
        return out
    err = comm.bcast(err, root=0)
    if fatal is not None:
        raise fatal
    if err:
        raise err[0](err[1])
    try:
        return _run_planned(MPI, comm, job, out, comm.bcast(units, root=0), resume, progress, stop_signal,
                            retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _run_planned(MPI, comm, job: JobConfig, out: str, units: list, resume: bool, progress, stop_signal,
                 retry_failed: bool = True) -> str:
    """Every rank, after rank 0 planned and locked the output: write the catalog (see :func:`run_job`)."""
    rank, size = comm.rank, comm.size
    bands = job.input.bands
    if bands is None:
        bands = _bands_of(job, units) if rank == 0 else None
        bands = comm.bcast(bands, root=0)
    bands = tuple(bands)

    t_warm = 0.0
    if job.run.warmup:
        from hpcblend.deblend.deblender import warm_up

        t_warm = warm_up()
        if job.input.kind == "tract":
            from hpcblend.units.tract import warm_up_tract

            t_warm += warm_up_tract(bands, units[0].path if units else None)
        log.info("rank %d: kernels ready in %.2f s (cold start)", rank, t_warm)
    prov = collect_provenance(comm, comm.bcast(_input_files(job, units) if rank == 0 else None, root=0))
    prov["warmup_seconds_rank0"] = t_warm
    prov["rank_nodes"] = comm.allgather(node_name())  # rank -> node ("hosts" cannot tell 2 slurmd on 1 host apart)
    specs = _tables(job, bands)
    writer = CatalogWriter(out, comm, specs, writer=job.output.writer, resume=resume,
                           json_groups={"config": job_to_dict(job), "provenance": prov},
                           attrs={"bands": ",".join(bands)})
    finished = writer.finished_units()
    if retry_failed:
        finished -= writer.failed_units()
    cost = np.array([u.cost for u in units])
    order = np.argsort(-cost, kind="stable") if job.run.schedule == "cost" else np.arange(len(units))
    todo = [int(i) for i in order if units[int(i)].key not in finished]
    if resume and rank == 0:
        n_retry = len(writer.failed_units() & {units[i].key for i in todo})
        log.info("resume: %d of %d units already in the catalog, %d to go (%d failed before, retried)",
                 len(units) - len(todo), len(units), len(todo), n_retry)
    from hpcblend.diagnostics.sampler import StackSampler

    from hpcblend.diagnostics.gallery import GalleryCollector

    sampler = (StackSampler(job.profile.sample_hz, lines=job.profile.lines) if job.profile.sample_hz > 0
               else StackSampler(0.0))
    gallery = GalleryCollector(max_failed=job.profile.gallery_flagged, max_flagged=job.profile.gallery_flagged,
                               n_slowest=job.profile.gallery_slowest)
    try:
        stopped, all_done = _work_loop(MPI, comm, job, writer, units, todo, bands, specs, out, progress, sampler,
                                       gallery, stop_signal)
    except CatalogError:
        sampler.stop()
        writer.abandon()
        raise  # agreed by the writer: every rank raises it, one line each
    except BaseException as exc:  # noqa: BLE001 - one rank's unexpected error must end the job, not hang it
        sampler.stop()
        _report_fatal(out, rank, exc)
        if size > 1 and not isinstance(exc, KeyboardInterrupt):
            comm.Abort(1)
        writer.abandon()
        raise
    if stopped and not all_done:
        sampler.stop()
        writer.close()
        raise RunInterrupted(f"{out}: stopped by signal after a checkpoint; {len(writer.finished_units())} of "
                             f"{len(units)} units written; run again with --resume to finish")
    with sampler.stage("write"):
        writer.finalize(unique=[s.name for s in specs if s.name in _UNIQUE_ID_TABLES])
    sampler.stop()
    _store_profiles(comm, job, out, sampler)
    _store_gallery(comm, out, gallery)
    return out


#: Tables whose ``id`` must be unique in a finished catalog (checked by :meth:`CatalogWriter.finalize`).
_UNIQUE_ID_TABLES = ("patches", "blends", "sources")


def _on_rank0(comm, step) -> None:
    """Run ``step()`` on rank 0 only; its CatalogError or OSError is raised on every rank (none left waiting)."""
    error = None
    if comm.rank == 0:
        try:
            step()
        except (CatalogError, OSError) as exc:
            error = str(exc)
    error = comm.bcast(error, root=0)
    if error:
        raise CatalogError(error)


def _report_fatal(out: str, rank: int, exc: BaseException) -> None:
    """Log a rank's fatal error with its traceback and keep the traceback in ``<output>.log/rank_<r>.error``."""
    if isinstance(exc, KeyboardInterrupt):
        return
    where = getattr(exc, "hpcblend_unit", None)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log.critical("rank %d: fatal %s: %s (%s) — the job stops; traceback in %s", rank, type(exc).__name__, exc,
                 f"while processing unit {where}" if where else "outside any unit",
                 os.path.join(_log_dir(out), f"rank_{rank}.error"))
    try:
        with open(os.path.join(_log_dir(out), f"rank_{rank}.error"), "w") as fh:
            fh.write(text)
    except OSError:
        log.critical("%s", text)


def _store_gallery(comm, out: str, gallery) -> None:
    """Gather the ranks' failure-gallery records to rank 0 and append them to the catalog (``/gallery``)."""
    from hpcblend.io.gallery import write_gallery

    gathered = comm.gather(gallery.records(), root=0)

    def store():
        records = [r for part in gathered for r in part]
        if records:
            write_gallery(out, records)
        log.info("gallery: %d blend images stored (failed, flagged, slowest)", len(records))

    _on_rank0(comm, store)


def _store_profiles(comm, job: JobConfig, out: str, sampler) -> None:
    """Gather every rank's stage times and stacks to rank 0 and append them to the catalog (``/profile``)."""
    from hpcblend.diagnostics.sampler import write_collapsed, write_profiles

    res = sampler.results(rank=comm.rank)
    if job.profile.write_collapsed and job.profile.sample_hz > 0:
        try:
            write_collapsed(os.path.join(_log_dir(out), f"rank_{comm.rank}.collapsed"), res["stacks"])
        except OSError as exc:  # the stacks also go into the catalog; a lost side file is not worth a failed run
            log.warning("rank %d: cannot write the collapsed stacks: %s", comm.rank, exc)
    gathered = comm.gather(res, root=0)
    _on_rank0(comm, lambda: write_profiles(out, gathered))
    if comm.rank == 0:
        from hpcblend.diagnostics.stages import busy_seconds

        busy = {p["rank"]: busy_seconds(p) for p in gathered}  # the report's definition: all but wait/mpi
        wall = max(p["elapsed_s"] for p in gathered)
        log.info("profile: %s", ", ".join(f"rank {r} busy {b:.1f} s of {wall:.1f} s" for r, b in sorted(busy.items())))
    comm.Barrier()


def _work_loop(MPI, comm, job, writer, units, todo, bands, specs, out, progress, sampler, gallery,
               stop_signal=None) -> tuple:
    """Pull units, process them, write rounds.

    Returns
    -------
    stopped : bool
        A stop signal ended the loop.
    all_done : bool
        Every unit of ``todo`` was processed and committed.
    """
    from hpcblend.units.blends import process_unit, unit_failed

    rank, size = comm.rank, comm.size
    sched = _Schedule(MPI, comm)
    mpi_progress = _ProgressWhileBusy(MPI, comm)
    inflight = _Inflight(out, rank)
    bar = None
    # The bar only where it cannot garble a log: one rank, or a terminal. Under MPI with stderr in a file
    # (a batch job) the other ranks' log lines would land in the middle of the bar's line; there rank 0's
    # "round k written: n units in the catalog" lines report the progress instead.
    if (rank == 0 and (job.run.progress if progress is None else progress) and todo
            and (size == 1 or sys.stderr.isatty())):
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
            writer.write_round(rows, [u.key for u, _, _ in pending_units],
                               failed_units=[u.key for u, failed, _ in pending_units if failed],
                               unit_rows=[n for _, _, n in pending_units])
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
                if bar is not None:  # end the progress line, so the messages that follow start on their own
                    bar.close()
                    bar = None
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
                    with mpi_progress, sampler.stage("load", unit.index + 1):
                        tables = process_unit(unit, job, bands, rank, sampler=sampler, gallery=gallery)
                except BaseException as exc:
                    exc.hpcblend_unit = unit.key  # for the fatal-error message in run_job
                    raise
                t_busy += time.monotonic() - t0
                for name, rows in tables.items():
                    buffered[name].append(rows)
                pending_units.append((unit, unit_failed(tables), {name: len(r) for name, r in tables.items()}))
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
    all_done = sched.read(_NEXT_UNIT) >= len(todo)
    sched.free()
    inflight.clear()
    return stopping, all_done
