"""Who runs which unit when: the hand-out order, the shared RMA counters on rank 0 and the write-round trigger.

The driver (:mod:`hpcblend.parallel.driver`) and the scaling replay (:mod:`hpcblend.analysis.scaling`)
both order units with :func:`unit_order` and raise write rounds with :func:`round_due`, so the replay
models the protocol a run follows. :class:`Schedule` holds the counters every rank pulls from with
one-sided MPI operations (no rank is a dedicated scheduler); it takes the ``mpi4py.MPI`` module as an
argument, so importing this module does not start MPI.
"""

from __future__ import annotations

import numpy as np

__all__ = ["unit_order", "round_due", "Schedule", "NEXT_UNIT", "ROUND", "DONE_RANKS", "STOP", "SCHEDULES"]

#: ``run.schedule`` values: ``"cost"`` largest expected cost first, ``"file"`` input order.
SCHEDULES = ("cost", "file")

#: Slots of the shared window (int64 on rank 0): next unit to hand out, write-round number,
#: ranks out of work, stop requested.
NEXT_UNIT, ROUND, DONE_RANKS, STOP = range(4)


def unit_order(cost, schedule: str = "cost") -> np.ndarray:
    """The order in which units are handed out.

    Parameters
    ----------
    cost : array_like, shape (U,)
        Expected cost per unit, in unit (index) order.
    schedule : str
        ``"cost"``: largest expected cost first (LPT, longest processing
        time first; ties keep the input order); ``"file"``: input order.

    Returns
    -------
    ndarray of int, shape (U,)
        Unit indices in hand-out order.

    Raises
    ------
    ValueError
        Unknown ``schedule``.
    """
    cost = np.asarray(cost, dtype=float)
    if schedule == "cost":
        return np.argsort(-cost, kind="stable")
    if schedule == "file":
        return np.arange(len(cost))
    raise ValueError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def round_due(claimed: int, claimed_at_round: int, n_units: int, every_units: int, seconds_since_round: float,
              every_seconds: float) -> bool:
    """Whether a rank that just finished a unit raises a write round.

    A round is due when ``every_units`` units were claimed since the last
    round, or ``every_seconds`` passed since it (``<= 0``: no time trigger),
    and units are left to hand out (the last round comes when every rank is
    done, raised by nobody).

    Parameters
    ----------
    claimed : int
        Units handed out so far.
    claimed_at_round : int
        Units handed out when the last round ended.
    n_units : int
        Units of the run (to do).
    every_units : int
        :func:`hpcblend.config.write_round_units` of ``run.write_every_units``.
    seconds_since_round : float
    every_seconds : float
        ``run.write_every_seconds``.

    Returns
    -------
    bool
    """
    by_time = bool(every_seconds) and every_seconds > 0 and seconds_since_round >= every_seconds
    return claimed < n_units and (claimed - claimed_at_round >= every_units or by_time)


class Schedule:
    """The shared counters on rank 0 (slots :data:`NEXT_UNIT`, :data:`ROUND`, :data:`DONE_RANKS`, :data:`STOP`).

    Every operation is one passive-target ``Lock(SHARED)`` /
    ``Fetch_and_op`` / ``Unlock`` on rank 0's window, atomic per slot.
    COLLECTIVE to create and to :meth:`free`.

    Parameters
    ----------
    MPI : module
        ``mpi4py.MPI``.
    comm : mpi4py.MPI.Comm
    """

    def __init__(self, MPI, comm):
        self.MPI, self.comm = MPI, comm
        item = MPI.INT64_T.Get_size()
        self.win = MPI.Win.Allocate(4 * item if comm.rank == 0 else 0, item, comm=comm)
        if comm.rank == 0:
            np.frombuffer(self.win.tomemory(), dtype=np.int64)[:4] = 0
        comm.Barrier()
        self._zero = np.zeros(1, dtype=np.int64)
        self._res = np.zeros(1, dtype=np.int64)

    def _op(self, slot: int, value: np.ndarray, op) -> int:
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Fetch_and_op(value, self._res, 0, slot, op)
        self.win.Unlock(0)
        return int(self._res[0])

    def read(self, slot: int) -> int:
        """The slot's value."""
        return self._op(slot, self._zero, self.MPI.NO_OP)

    def add(self, slot: int, n: int = 1) -> int:
        """Atomically add ``n``; return the value before."""
        return self._op(slot, np.array([n], dtype=np.int64), self.MPI.SUM)

    def raise_to(self, slot: int, value: int) -> None:
        """Atomically set the slot to ``max(slot, value)``."""
        self._op(slot, np.array([value], dtype=np.int64), self.MPI.MAX)

    def free(self) -> None:
        """Release the window. COLLECTIVE."""
        self.comm.Barrier()
        self.win.Free()
