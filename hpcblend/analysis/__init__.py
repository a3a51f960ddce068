"""Offline analysis of finished runs: never imported by a run.

What is computed after (or instead of) a run from its catalog and inputs: fitting the per-unit cost
model (:mod:`~hpcblend.analysis.costfit`), replaying a run's timings at other rank counts and
scheduling policies (:mod:`~hpcblend.analysis.scaling`), validating a tract catalog against the
simulation truth (:mod:`~hpcblend.analysis.validate`), injection metrics with the perfect-deblender
yardstick (:mod:`~hpcblend.analysis.injection`), flux accuracy on simulated blend sets
(:mod:`~hpcblend.analysis.truth_metrics`), flame graphs from the sampled stacks
(:mod:`~hpcblend.analysis.flamegraph`), the weekly scorecard, benchmarks and the reproduction of one
unit's rows. It reads catalogs through :mod:`hpcblend.io` and may use anything of a run; no module of
the run path (``parallel``, ``units``, ``detect``, ``deblend``, ``measure``, ``diagnostics``, ``io``,
``config``) imports it, not even lazily (``tests/test_house.py``).
"""

__all__: list = []
