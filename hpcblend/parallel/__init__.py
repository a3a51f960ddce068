"""MPI and nothing else: the driver that runs a job's work units on all ranks.

:mod:`~hpcblend.parallel.driver` (``run_job``: an executor over a :class:`hpcblend.units.source.WorkSource`,
the work loop and the write rounds), :mod:`~hpcblend.parallel.schedule` (the hand-out order, the shared
RMA counters on rank 0, the write-round trigger), :mod:`~hpcblend.parallel.signals` (stop signals, MPI
progress while a rank works), :mod:`~hpcblend.parallel.markers` (what a run leaves in
``<output>.log/``: in-flight markers, error tracebacks, the writer lock) and
:mod:`~hpcblend.parallel.allocator` (a rank keeps its freed memory for the next unit). No numerics,
and no branch on the kind of input: that is the work source's business.
"""

__all__: list = []
