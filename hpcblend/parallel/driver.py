"""MPI driver: an executor over a work source — cost-ordered dynamic scheduling, periodic collective writes, restart.

The driver knows units only through a :class:`hpcblend.units.source.WorkSource` (the job's
``input.kind`` picks it from the registry of :mod:`hpcblend.units.source`): it never looks at what a
unit is.

How a run goes
--------------
1. Rank 0 prepares the inputs (a simulated source simulates them), plans the
   work units and their expected cost; everyone receives the list. Units are
   handed out largest expected cost first (``run.schedule: cost``) or in
   input order (:func:`hpcblend.parallel.schedule.unit_order`).
2. Ranks pull the next unit from a shared counter held by rank 0 (MPI
   one-sided ``Fetch_and_op`` on an RMA window,
   :class:`hpcblend.parallel.schedule.Schedule`), so no rank is a dedicated
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
``SIGTERM`` or ``SIGUSR1`` (:class:`hpcblend.parallel.signals.StopOnSignal`)
make the rank ask everyone to stop: the current units finish, one last round
is written, and :class:`RunInterrupted` is raised (the CLI exits with code 3:
"checkpointed, resume with --resume").

Rank failure
------------
A unit's data error becomes flagged rows (the source's business). An error
outside that isolation on one rank is logged with the rank and the unit, and
``MPI.Abort`` ends the whole job with a non-zero exit instead of leaving the
others waiting. Every rank keeps ``<output>.log/rank_<r>.inflight`` naming the
unit it is working on (:mod:`hpcblend.parallel.markers`), removed when the run
ends cleanly; after a hard kill (``kill -9``) the file says which unit was
lost, and ``--resume`` reports it.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import h5py

from hpcblend.config import JobConfig, job_to_dict, write_round_units
from hpcblend.diagnostics.gallery import GalleryCollector
from hpcblend.diagnostics.provenance import collect_provenance
from hpcblend.diagnostics.sampler import StackSampler
from hpcblend.diagnostics.stages import busy_seconds
from hpcblend.errors import CatalogError, HpcblendError
from hpcblend.io.catalog import CatalogWriter
from hpcblend.io.gallery import write_gallery
from hpcblend.io.profiles import write_collapsed, write_profiles
from hpcblend.parallel.allocator import keep_freed_memory
from hpcblend.parallel.markers import InflightMarker, WriterLock, inflight_units, log_dir, node_name, report_fatal
from hpcblend.parallel.schedule import DONE_RANKS, NEXT_UNIT, ROUND, STOP, Schedule, round_due, unit_order
from hpcblend.parallel.signals import ProgressWhileBusy, StopOnSignal
from hpcblend.units.source import WorkSource, make_source

__all__ = ["run_job", "RunInterrupted", "hand_out_order"]

log = logging.getLogger("hpcblend")

#: Seconds between polls of a rank without work (for a round, or for the end).
_POLL_SECONDS = 0.01


class RunInterrupted(HpcblendError):
    """The run stopped on request (signal) after writing a consistent checkpoint; resume it."""


def _comm():
    from mpi4py import MPI  # here, not at the top: importing mpi4py initialises MPI, which a plain import must not

    return MPI, MPI.COMM_WORLD


def run_job(job: JobConfig, output: str | None = None, progress: bool | None = None, comm=None,
            resume: bool = False, stop_signal=None, retry_failed: bool = True,
            source: WorkSource | None = None) -> str:
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
    source : WorkSource, optional
        Where the units come from; default: the source registered for
        ``input.kind`` (:func:`hpcblend.units.source.make_source`), made on
        every rank.

    Returns
    -------
    str
        Path of the finished catalog.

    Raises
    ------
    ConfigError
        No work source is registered for ``input.kind`` — on every rank.
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
    out = os.path.abspath(output or job.output.path)
    source = source if source is not None else make_source(job)
    if keep_freed_memory(job.run.keep_freed_memory):
        log.debug("rank %d: freed memory is kept for the next unit (glibc mallopt)", comm.rank)

    err, units, done_already, lock, fatal = None, None, False, None, None
    if comm.rank == 0:
        try:
            done_already = resume and os.path.exists(out) and _is_complete(out)
            if not done_already:
                units, lock = _prepare_output(job, source, out, resume)
        except HpcblendError as exc:
            err = (type(exc), str(exc))
        except OSError as exc:  # an environment error not foreseen above: still one line on every rank
            err = (CatalogError, f"{out}: output unusable: {exc}")
        except BaseException as exc:  # noqa: BLE001 - a bug: the other ranks must not wait for it
            fatal = exc
            err = (HpcblendError, f"rank 0 failed while planning the run: {type(exc).__name__}: {exc} "
                                  f"(traceback in rank 0's log)")
    if comm.bcast(done_already, root=0):
        if comm.rank == 0:
            log.info("%s is already complete: nothing to resume", out)
        return out
    err = comm.bcast(err, root=0)
    if fatal is not None:
        raise fatal
    if err:
        raise err[0](err[1])
    try:
        return _run_planned(MPI, comm, job, source, out, comm.bcast(units, root=0), resume, progress, stop_signal,
                            retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _prepare_output(job: JobConfig, source: WorkSource, out: str, resume: bool) -> tuple:
    """Rank 0: check the output may be written (or resumed), lock it, plan the units, reset the log directory.

    The cheap checks on the output and the writer lock come before
    preparing and planning, which may simulate the inputs.

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
        The inputs cannot be planned (:meth:`WorkSource.plan`).
    """
    if os.path.isdir(out):
        raise CatalogError(f"{out}: output unusable: it is a directory")
    exists = os.path.exists(out)
    if exists and not resume and not job.output.overwrite:
        raise CatalogError(f"{out}: exists and output.overwrite is false (use --resume to continue it)")
    if resume and not exists:
        raise CatalogError(f"{out}: cannot resume, no such catalog")
    for d in (os.path.dirname(out) or ".", log_dir(out)):
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"{out}: output unusable: cannot create directory {d}: {exc.strerror}") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise CatalogError(f"{out}: output unusable: directory {d} is not writable")
    lock = WriterLock(out)
    try:
        source.prepare()
        units = source.plan()
        if resume:
            _report_lost_units(out)
        _reset_log_dir(out, remove_catalog=exists and not resume)
    except BaseException:
        lock.release()
        raise
    return units, lock


def _report_lost_units(out: str) -> None:
    """Warn about the units a previous run of ``out`` was working on when it ended abnormally."""
    for r, rec in sorted(inflight_units(out).items()):
        if rec.get("unit"):
            log.warning("previous run: rank %d (node %s, host %s) was working on %s since %s and did not "
                        "finish it", r, rec.get("node", rec.get("host")), rec.get("host"),
                        rec.get("path") or rec.get("unit"), rec.get("since"))


def _reset_log_dir(out: str, remove_catalog: bool) -> None:
    """Rank 0 before a run: remove the catalog being replaced and old in-flight markers, note the run for the launcher.

    Raises
    ------
    CatalogError
        A file cannot be removed or written.
    """
    try:
        if remove_catalog:
            os.remove(out)
        state = os.environ.get("HPCBLEND_RUN_STATE")
        if state:  # tells bin/hpcblend-mpirun where to look after a crash
            with open(state, "w") as fh:
                fh.write(out + "\n")
        for name in os.listdir(log_dir(out)):
            if name.endswith(".inflight"):
                os.remove(os.path.join(log_dir(out), name))
    except OSError as exc:
        raise CatalogError(f"{out}: output unusable: {exc.strerror}: {exc.filename}") from None


def _is_complete(path: str) -> bool:
    """Whether ``path`` is a finalised catalog (``complete`` attribute)."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except OSError:
        return False


def hand_out_order(units: list, schedule: str, finished=frozenset()) -> list:
    """Indices of the units still to run, in the order the shared counter hands them out.

    Parameters
    ----------
    units : list of WorkUnit
        The planned units (their ``cost``).
    schedule : str
        ``run.schedule`` (:func:`hpcblend.parallel.schedule.unit_order`).
    finished : set of str
        Keys of units already in the catalog (resume).

    Returns
    -------
    list of int
    """
    order = unit_order([u.cost for u in units], schedule)
    return [int(i) for i in order if units[int(i)].key not in finished]


def _run_planned(MPI, comm, job: JobConfig, source: WorkSource, out: str, units: list, resume: bool, progress,
                 stop_signal, retry_failed: bool = True) -> str:
    """Every rank, after rank 0 planned and locked the output: write the catalog (see :func:`run_job`)."""
    bands = job.input.bands
    if bands is None:
        bands = comm.bcast(source.catalog_bands(units) if comm.rank == 0 else None, root=0)
    bands = tuple(bands)
    prov = _provenance(comm, job, source, units, bands)
    specs = source.tables(bands)
    writer = CatalogWriter(out, comm, specs, writer=job.output.writer, resume=resume,
                           json_groups={"config": job_to_dict(job), "provenance": prov},
                           attrs={"bands": ",".join(bands)})
    finished = writer.finished_units()
    if retry_failed:
        finished -= writer.failed_units()
    todo = hand_out_order(units, job.run.schedule, finished)
    if resume and comm.rank == 0:
        n_retry = len(writer.failed_units() & {units[i].key for i in todo})
        log.info("resume: %d of %d units already in the catalog, %d to go (%d failed before, retried)",
                 len(units) - len(todo), len(units), len(todo), n_retry)
    sampler = (StackSampler(job.profile.sample_hz, lines=job.profile.lines) if job.profile.sample_hz > 0
               else StackSampler(0.0))
    gallery = GalleryCollector(max_failed=job.profile.gallery_flagged, max_flagged=job.profile.gallery_flagged,
                               n_slowest=job.profile.gallery_slowest)
    try:
        loop = _WorkLoop(MPI, comm, job, source, writer, specs, units, todo, bands, out, sampler, gallery)
        stopped, all_done = loop.run(progress, stop_signal)
    except CatalogError:
        sampler.stop()
        writer.abandon()
        raise  # agreed by the writer: every rank raises it, one line each
    except BaseException as exc:  # noqa: BLE001 - one rank's unexpected error must end the job, not hang it
        sampler.stop()
        report_fatal(out, comm.rank, exc)
        if comm.size > 1 and not isinstance(exc, KeyboardInterrupt):
            comm.Abort(1)
        writer.abandon()
        raise
    if stopped and not all_done:
        sampler.stop()
        writer.close()
        raise RunInterrupted(f"{out}: stopped by signal after a checkpoint; {len(writer.finished_units())} of "
                             f"{len(units)} units written; run again with --resume to finish")
    with sampler.stage("write"):
        writer.finalize(unique=[s.name for s in specs if s.name in source.unique_id_tables])
    sampler.stop()
    _store_profiles(comm, job, out, sampler)
    _store_gallery(comm, out, gallery)
    return out


def _provenance(comm, job: JobConfig, source: WorkSource, units: list, bands: tuple) -> dict:
    """Every rank: warm the kernels up (``run.warmup``), then collect the provenance (input checksums on rank 0)."""
    t_warm = 0.0
    if job.run.warmup:
        t_warm = source.warm_up(bands, units)
        log.info("rank %d: kernels ready in %.2f s (cold start)", comm.rank, t_warm)
    prov = collect_provenance(comm, comm.bcast(source.input_files(units) if comm.rank == 0 else None, root=0))
    prov["warmup_seconds_rank0"] = t_warm
    prov["rank_nodes"] = comm.allgather(node_name())  # rank -> node ("hosts" cannot tell 2 slurmd on 1 host apart)
    return prov


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


def _store_gallery(comm, out: str, gallery) -> None:
    """Gather the ranks' failure-gallery records to rank 0 and append them to the catalog (``/gallery``)."""
    gathered = comm.gather(gallery.records(), root=0)

    def store():
        records = [r for part in gathered for r in part]
        if records:
            write_gallery(out, records)
        log.info("gallery: %d blend images stored (failed, flagged, slowest)", len(records))

    _on_rank0(comm, store)


def _store_profiles(comm, job: JobConfig, out: str, sampler) -> None:
    """Gather every rank's stage times and stacks to rank 0 and append them to the catalog (``/profile``)."""
    res = sampler.results(rank=comm.rank)
    if job.profile.write_collapsed and job.profile.sample_hz > 0:
        try:
            write_collapsed(os.path.join(log_dir(out), f"rank_{comm.rank}.collapsed"), res["stacks"])
        except OSError as exc:  # the stacks also go into the catalog; a lost side file is not worth a failed run
            log.warning("rank %d: cannot write the collapsed stacks: %s", comm.rank, exc)
    gathered = comm.gather(res, root=0)
    _on_rank0(comm, lambda: write_profiles(out, gathered))
    if comm.rank == 0:
        busy = {p["rank"]: busy_seconds(p) for p in gathered}  # the report's definition: all but wait/mpi
        wall = max(p["elapsed_s"] for p in gathered)
        log.info("profile: %s", ", ".join(f"rank {r} busy {b:.1f} s of {wall:.1f} s" for r, b in sorted(busy.items())))
    comm.Barrier()


def _progress_bar(rank: int, size: int, n_todo: int, enabled: bool):
    """A tqdm bar on rank 0, only where it cannot garble a log: one rank, or a terminal; else None.

    Under MPI with stderr in a file (a batch job) the other ranks' log lines
    would land in the middle of the bar's line; there rank 0's "round k
    written: n units in the catalog" lines report the progress instead.
    """
    if not (rank == 0 and enabled and n_todo and (size == 1 or sys.stderr.isatty())):
        return None
    try:
        from tqdm import tqdm  # optional dependency: no bar without it
    except ImportError:
        return None
    return tqdm(total=n_todo, unit="unit", desc=f"{n_todo} units on {size} rank(s)", smoothing=0.05)


class _WorkLoop:
    """One rank's work loop: pull units from the shared counter, process them, join the write rounds.

    COLLECTIVE to create (the counters' window and the progress thread's
    communicator split) and to :meth:`run`.
    """

    def __init__(self, MPI, comm, job: JobConfig, source: WorkSource, writer, specs, units, todo, bands, out: str,
                 sampler, gallery):
        self.comm, self.job, self.source, self.writer, self.specs = comm, job, source, writer, specs
        self.units, self.todo, self.bands = units, todo, bands
        self.sampler, self.gallery = sampler, gallery
        self.rank, self.size = comm.rank, comm.size
        self.sched = Schedule(MPI, comm)
        self.mpi_progress = ProgressWhileBusy(MPI, comm)
        self.inflight = InflightMarker(out, self.rank)
        self.bar = None
        self.buffered = {s.name: [] for s in self.specs}
        self.pending_units: list = []  # (unit, failed, rows per table) since the last round
        self.local_round = 0
        self.t_round = time.monotonic()
        self.claimed_at_round = 0
        self.n_done_local, self.t_busy = 0, 0.0
        self.every_units = write_round_units(job.run.write_every_units, self.size)
        self.every_seconds = float(job.run.write_every_seconds)
        self.exhausted = self.stopping = False

    def run(self, progress, stop_signal=None) -> tuple:
        """Work until every unit is done (or a stop signal), then write the final round.

        Returns
        -------
        stopped : bool
            A stop signal ended the loop.
        all_done : bool
            Every unit of ``todo`` was processed and committed.
        """
        self.bar = _progress_bar(self.rank, self.size, len(self.todo),
                                 self.job.run.progress if progress is None else progress)
        t_start = time.monotonic()
        self.sampler.start()
        self.sampler.set_stage("wait")
        with (stop_signal if stop_signal is not None else StopOnSignal()) as sig:
            while self._step(sig):
                pass
            self._write_round()  # the final round (collective: every rank arrives here once all are done)
        if self.bar is not None:
            self.bar.n = len(self.todo)
            self.bar.close()
        wall = time.monotonic() - t_start
        log.info("rank %d: %d units in %.1f s (busy %.1f s, %.0f%%)", self.rank, self.n_done_local, wall,
                 self.t_busy, 100.0 * self.t_busy / max(wall, 1e-9))
        all_done = self.sched.read(NEXT_UNIT) >= len(self.todo)
        self.sched.free()
        self.inflight.clear()
        return self.stopping, all_done

    def _step(self, sig) -> bool:
        """One turn of the loop: join a round, take and process a unit, or wait; False when the run is over."""
        sched = self.sched
        if sig.interrupted:  # a Ctrl-C whose KeyboardInterrupt compiled code swallowed
            raise KeyboardInterrupt
        if sig.requested and not self.stopping and not self.exhausted:
            # an exhausted rank ignores the signal: the run is ending anyway, and raising a round
            # after the others left the loop would leave them waiting
            self._request_stop()
        if sched.read(ROUND) > self.local_round:
            self.stopping = self.stopping or sched.read(STOP) > 0
            self._write_round()
            return True
        if self.stopping and not self.exhausted:  # (a stop request always comes with a round: seen above)
            self.exhausted = True
            sched.add(DONE_RANKS)
        if not self.exhausted:
            i = sched.add(NEXT_UNIT)
            if i >= len(self.todo):
                self.exhausted = True
                sched.add(DONE_RANKS)
            else:
                self._work_on(i)
            return True
        # no more work here: wait for rounds others ask for, or for everyone to finish
        if sched.read(DONE_RANKS) >= self.size and sched.read(ROUND) <= self.local_round:
            return False
        time.sleep(_POLL_SECONDS)
        return True

    def _request_stop(self) -> None:
        """A stop signal: ask every rank to stop after a checkpoint round."""
        if self.bar is not None:  # end the progress line, so the messages that follow start on their own
            self.bar.close()
            self.bar = None
        log.warning("rank %d: stop signal received; writing a checkpoint round", self.rank)
        self.stopping = True
        self.sched.raise_to(STOP, 1)
        self.sched.raise_to(ROUND, self.local_round + 1)

    def _work_on(self, i: int) -> None:
        """Process the ``i``-th unit handed out, buffer its rows, raise a write round when one is due."""
        unit = self.units[self.todo[i]]
        self.inflight.set(unit)
        t0 = time.monotonic()
        try:
            with self.mpi_progress, self.sampler.stage("load", unit.index + 1):
                tables = self.source.process(unit, self.bands, self.rank, sampler=self.sampler, gallery=self.gallery)
        except BaseException as exc:
            exc.hpcblend_unit = unit.key  # for the fatal-error message in run_job
            raise
        self.t_busy += time.monotonic() - t0
        for name, rows in tables.items():
            self.buffered[name].append(rows)
        self.pending_units.append((unit, self.source.unit_failed(tables),
                                   {name: len(r) for name, r in tables.items()}))
        self.n_done_local += 1
        self.inflight.set(None)
        claimed = i + 1  # units handed out so far, as of this rank's claim (no extra RMA read)
        if self.bar is not None:
            self.bar.n = min(claimed, len(self.todo))
            self.bar.refresh()
        if round_due(claimed, self.claimed_at_round, len(self.todo), self.every_units,
                     time.monotonic() - self.t_round, self.every_seconds):
            self.sched.raise_to(ROUND, self.local_round + 1)

    def _write_round(self) -> None:
        """Write the buffered rows and the ledger of the units finished since the last round. COLLECTIVE."""
        rows = {name: spec.concatenate(parts) for (name, parts), spec in zip(self.buffered.items(), self.specs)}
        pending = self.pending_units
        with self.sampler.stage("write"):
            self.writer.write_round(rows, [u.key for u, _, _ in pending],
                                    failed_units=[u.key for u, failed, _ in pending if failed],
                                    unit_rows=[n for _, _, n in pending])
        self.local_round += 1
        self.t_round = time.monotonic()
        self.claimed_at_round = self.sched.read(NEXT_UNIT)
        self.buffered = {s.name: [] for s in self.specs}
        if self.rank == 0 and self.bar is None:
            log.info("round %d written: %d units in the catalog", self.local_round, len(self.writer.finished_units()))
        self.pending_units = []
