"""What a run records about itself while it runs: stage timers, the stack sampler, gallery records, provenance.

The stages a rank's time is split into (:mod:`~hpcblend.diagnostics.stages`), the per-rank call-stack
sampler and its storage (:mod:`~hpcblend.diagnostics.sampler`), failure-gallery records from what the
deblender computed (:mod:`~hpcblend.diagnostics.gallery`) and the run's provenance: versions, MPI layout,
hosts, input hashes (:mod:`~hpcblend.diagnostics.provenance`). Part of the run path: never imported by
the kernels, and never imports ``report``, ``analysis`` or ``simulate`` (the report reads what it wrote
from the catalog).
"""

__all__: list = []
