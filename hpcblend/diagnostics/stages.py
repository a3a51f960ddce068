"""The stages a run's time is split into, and what counts as a rank's busy time.

Every blend's wall time and every call-stack sample of a rank is tagged with
one of :data:`STAGES` (load → detect → init → fit → measure → write, plus
``wait`` for a rank without work and ``mpi`` for collective calls), or
:data:`OTHER_STAGE` outside any. The driver's end-of-run log line, the
flame graphs and the report use the same definition of busy time
(:func:`busy_seconds`).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["STAGES", "OTHER_STAGE", "IDLE_STAGES", "busy_seconds"]

#: The standard stage names (any name without ``;``, spaces or newlines is accepted).
STAGES: tuple = ("load", "detect", "init", "fit", "measure", "write", "wait", "mpi")

#: Stage of time (and samples) outside any declared stage.
OTHER_STAGE: str = "other"

#: Stages in which a rank does no work of its own (waiting for a unit or a round, MPI collectives).
IDLE_STAGES: tuple = ("wait", "mpi")


def busy_seconds(profile: Mapping[str, Any]) -> float:
    """Seconds a rank spent in stages other than :data:`IDLE_STAGES` (from its stage timers).

    Parameters
    ----------
    profile : dict
        One rank's profile (``stage_seconds``: stage name -> seconds).

    Returns
    -------
    float
        Seconds.
    """
    return float(sum(v for k, v in (profile.get("stage_seconds") or {}).items() if k not in IDLE_STAGES))
