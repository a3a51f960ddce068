"""What a run leaves beside its catalog for post-mortems and for other runs: ``<output>.log/``.

Per rank an in-flight marker (``rank_<r>.inflight``: the unit it works on, removed when the run
ends cleanly; after a hard kill it says which unit was lost, :func:`inflight_units`), the traceback
of a fatal error (``rank_<r>.error``, :func:`report_fatal`), and the writer lock held by rank 0
(``writer.lock``, :class:`WriterLock`: one writer per catalog). Imports neither mpi4py nor Numba.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
import traceback

from hpcblend.errors import CatalogError

__all__ = ["node_name", "log_dir", "inflight_units", "InflightMarker", "WriterLock", "report_fatal"]

log = logging.getLogger("hpcblend")


def node_name() -> str:
    """This process's node: Slurm's node name (``SLURMD_NODENAME``) inside a Slurm job, else the host name.

    They differ where a cluster's node names are not its host names, and where
    several slurmd share one host (``slurm/local_slurm.sh start --nodes 2``).
    """
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def log_dir(out: str) -> str:
    """The run's side directory ``<output>.log`` (absolute): in-flight markers, error tracebacks, the writer lock."""
    return os.path.abspath(out) + ".log"


def inflight_units(out: str) -> dict:
    """Units a previous run of ``out`` was working on when it ended abnormally.

    Returns
    -------
    dict of int -> dict
        Rank → ``{"unit": key, "since": iso time, "host": name, "node": Slurm node name or host, "pid": int}``.
    """
    d = log_dir(out)
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


class InflightMarker:
    """``<output>.log/rank_<r>.inflight``: the unit this rank works on (for post-mortems).

    Rewritten in place (no rename, no fsync: a few microseconds per unit);
    a reader that catches it half-written skips it.
    """

    def __init__(self, out: str, rank: int):
        self.path = os.path.join(log_dir(out), f"rank_{rank}.inflight")
        self.host = socket.gethostname()
        self.node = node_name()
        self._fh = open(self.path, "w")

    def set(self, unit) -> None:
        """Name ``unit`` (a :class:`hpcblend.units.source.WorkUnit`), or None between units."""
        rec = {"unit": unit.key if unit else None, "index": unit.index if unit else None, "host": self.host,
               "path": unit.where if unit else None,
               "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "node": self.node}
        self._fh.seek(0)
        self._fh.write(json.dumps(rec))
        self._fh.truncate()
        self._fh.flush()

    def clear(self) -> None:
        """Remove the marker (the run ended cleanly)."""
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
        self.path = os.path.join(log_dir(out), "writer.lock")
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


def report_fatal(out: str, rank: int, exc: BaseException) -> None:
    """Log a rank's fatal error with its traceback and keep the traceback in ``<output>.log/rank_<r>.error``."""
    if isinstance(exc, KeyboardInterrupt):
        return
    where = getattr(exc, "hpcblend_unit", None)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log.critical("rank %d: fatal %s: %s (%s) — the job stops; traceback in %s", rank, type(exc).__name__, exc,
                 f"while processing unit {where}" if where else "outside any unit",
                 os.path.join(log_dir(out), f"rank_{rank}.error"))
    try:
        with open(os.path.join(log_dir(out), f"rank_{rank}.error"), "w") as fh:
            fh.write(text)
    except OSError:
        log.critical("%s", text)
