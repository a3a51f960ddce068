"""Killing an MPI rank inside a unit, for the lost-rank tests (``test_restart``, ``test_slurm_two_node``).

A rank rewrites its in-flight marker (``<output>.log/rank_<r>.inflight``) between units, and a unit of
the real HSC blends takes a few milliseconds: a test that reads "inside a unit" and then kills the rank
can land between two units on a busy machine. :func:`kill_rank_in_a_unit` stops the rank first, reads
the marker again, and kills it only if it is still inside the unit the marker names.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hpcblend.parallel.markers import inflight_units


def proc_state(pid: int) -> str:
    """The one-letter state of process ``pid`` in ``/proc`` (``T`` stopped), or ``gone``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def kill_rank_in_a_unit(out, rank: int, check=None) -> dict | None:
    """If ``rank`` of the run writing ``out`` is inside a unit: SIGKILL it there and return its marker's record.

    The rank is stopped (SIGSTOP) before its marker is read again, so the unit the record names is
    the one it dies in; one not inside a unit after all is let go on (SIGCONT) and None is returned.
    Markers are read with :func:`hpcblend.parallel.markers.inflight_units` (a missing or half-written
    one counts as none).

    Parameters
    ----------
    out : str or Path
        The run's catalog (its markers are in ``<out>.log``).
    rank : int
    check : callable, optional
        Called with the stopped process's pid before the kill (an assertion on where it runs).
    """
    rec = inflight_units(str(out)).get(rank)
    if not rec or not rec.get("unit"):
        return None
    pid = int(rec["pid"])
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    while proc_state(pid) not in ("T", "t", "gone") and time.monotonic() - t0 < 2:
        time.sleep(0.001)
    rec = inflight_units(str(out)).get(rank)
    if rec and rec.get("unit") and int(rec["pid"]) == pid:
        if check is not None:
            check(pid)
        os.kill(pid, signal.SIGKILL)
        return rec
    os.kill(pid, signal.SIGCONT)
    return None
