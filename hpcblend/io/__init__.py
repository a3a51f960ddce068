"""Every file format hpcblend reads or writes, with its version.

Inputs: npz blend collections (:mod:`~hpcblend.io.blends`), coadd tracts in FITS
(:mod:`~hpcblend.io.coadd`), YAML job files and ``--set`` values (:mod:`~hpcblend.io.yaml_files`). The
run's HDF5 catalog: :mod:`~hpcblend.io.catalog` (the names callers import), its writer
(:mod:`~hpcblend.io.catalog_writer`, write rounds through :mod:`~hpcblend.io.collective`) and readers
(:mod:`~hpcblend.io.catalog_read`), table declarations and columns (:mod:`~hpcblend.io.tables`,
:mod:`~hpcblend.io.schema`), the restart ledger (:mod:`~hpcblend.io.ledger`), deblended models
(:mod:`~hpcblend.io.models`) and gallery groups (:mod:`~hpcblend.io.gallery`).
:mod:`~hpcblend.io.versions` is the one registry of format versions; readers check a file's version and
say what is wrong. ``io`` stands low in the house: it may use :mod:`hpcblend.errors`,
:mod:`hpcblend.geometry` and :mod:`hpcblend.skymap`, never the stages above it (config, units, detect,
deblend, measure), and never ``report``, ``analysis`` or ``simulate``.
"""

__all__: list = []
