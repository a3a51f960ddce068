"""Signals and MPI progress while a rank works: :class:`StopOnSignal` and :class:`ProgressWhileBusy`.

``SIGTERM`` or ``SIGUSR1`` (Slurm's warning before the time limit, forwarded by ``mpirun``/``srun``)
set a flag that the driver's work loop reads between units: the current units finish, one last
write round is written and the run stops with a checkpoint. ``SIGINT`` (Ctrl-C) is noted too, and then
raises :class:`KeyboardInterrupt` as Python's own handler does; the work loop raises it again between
units if it was lost (a KeyboardInterrupt raised while compiled Numba code calls back into Python is
swallowed there). This module imports neither mpi4py nor Numba, so the CLI installs the handlers before
anything slow is imported.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopOnSignal", "ProgressWhileBusy"]


class StopOnSignal:
    """SIGTERM/SIGUSR1 handlers (main thread only) that set a flag; the previous handlers come back on exit.

    Re-entrant: entering an instance that is already installed does nothing,
    and only the outermost exit restores the previous handlers.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.requested = False
        self.interrupted = False
        self._old = {}
        self._depth = 0

    def __enter__(self):
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when Ctrl-C is ignored
                self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _handler(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def _interrupt(self, signum, frame):
        self.interrupted = True
        signal.default_int_handler(signum, frame)

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, h in self._old.items():
                signal.signal(s, h)
            self._old = {}
        return False


class ProgressWhileBusy:
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
