"""What a work unit is and where units come from: the only code that knows "blend file" from "patch".

:mod:`~hpcblend.units.source` (``WorkUnit``, the ``WorkSource`` interface the driver knows, and the
registry that maps ``input.kind`` to a source), :mod:`~hpcblend.units.blends` (npz blend collections),
:mod:`~hpcblend.units.tract` (coadd tracts cut into patches), :mod:`~hpcblend.units.rows` (a result's
catalog rows, failure rows, ids) and :mod:`~hpcblend.units.costmodel` (the expected cost that orders units).
Sources whose inputs are simulated first live in :mod:`hpcblend.simulate.sources`, reached by dotted path.
"""

__all__: list = []
