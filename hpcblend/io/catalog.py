"""The run's HDF5 catalog: tables of rows, a restart ledger, JSON metadata groups (the names callers import).

The catalog is generic: it knows nothing about deblending. A *table* is declared
with a :class:`TableSpec` (name, numpy structured dtype, units per column, sort
key; :mod:`hpcblend.io.tables`) and written as one resizable, chunked,
uncompressed compound dataset ``/<name>``. Rows arrive in *write rounds*
(:meth:`CatalogWriter.write_round`, :mod:`hpcblend.io.catalog_writer`), which
every MPI rank enters together; at the end :meth:`CatalogWriter.finalize` sorts
every table so that the bytes of the table data depend only on the set of rows
written, never on the number of ranks, on which rank wrote which rows, or on
the writer kind. The ledger's records and checks are in :mod:`hpcblend.io.ledger`,
the readers in :mod:`hpcblend.io.catalog_read`, the agreement of collective
writes in :mod:`hpcblend.io.collective`, and the versions in
:mod:`hpcblend.io.versions`. This module re-exports what callers use.

File layout (``SCHEMA_VERSION`` 2; version 1 files, written before the
ledger's attempts and checksums existed, are still read — see
:data:`READABLE_SCHEMA_VERSIONS` and the registry's history — but not resumed)::

    /                      attrs: schema_version (int), created (UTC ISO),
                                  complete (bool), finished (UTC ISO, once
                                  complete), writer ("mpio"|"serial"),
                                  tables (JSON list of table names),
                                  n_resumes (int), resumed (UTC ISO, if any),
                                  + the user's ``attrs``
    /<table>               compound dataset, shape (n_rows,), maxshape (None,)
                           attrs: units (JSON {column: unit}), unit_<column>
                                  (str, '' = dimensionless), sort_key (str),
                                  __table_column_meta__ (astropy's YAML
                                  header, so Table.read gets the units),
                                  format_version (int, tables with their
                                  own version: /models, /model_pixels)
    /ledger                group, attrs: rounds (int), n_units (int),
                                         rows_<table> (int, committed rows)
    /ledger/units          S256 dataset of finished unit keys (done or failed);
                           only the first ``n_units`` entries are committed
    /ledger/attempts       one row per committed attempt at a unit: key, failed
                           (bool), round, and per table (in ``tables`` order)
                           the first row and the row count it wrote (-1 when
                           unknown); ``n_attempts`` are committed. A unit that
                           failed and was retried by a resumed run has two
                           attempts: :meth:`CatalogWriter.finalize` keeps only
                           the rows of each unit's last attempt
    /ledger/checksums      integrity record: table, round, start, count and
                           the CRC-32 of the rows' bytes, one entry per rank
                           and table of each round (``n_checksums`` committed);
                           after finalize one entry per whole sorted table.
                           :func:`read_table` and a resume verify them
    /<json group>          group, attrs: json (the JSON text), and one attribute
                           per scalar value (nested keys joined with '.')

Crash consistency: a round writes and flushes the table rows first, then the
ledger (unit keys, attempts, checksums, then counts) and flushes again. Readers and a resumed writer
trust only the first ``rows_<table>`` rows of each table and the first
``n_units`` unit keys.
"""

from __future__ import annotations

from hpcblend.io.catalog_read import (append_group, open_catalog, read_bands, read_json_group, read_ledger, read_table,
                                      verify_catalog)
from hpcblend.io.catalog_writer import CatalogWriter
from hpcblend.io.ledger import LEDGER_GROUP, UNIT_KEY_BYTES
from hpcblend.io.tables import TableSpec
from hpcblend.io.versions import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "READABLE_SCHEMA_VERSIONS",
    "UNIT_KEY_BYTES",
    "TableSpec",
    "CatalogWriter",
    "open_catalog",
    "append_group",
    "read_table",
    "read_ledger",
    "read_json_group",
    "verify_catalog",
    "read_bands",
]

_LEDGER = LEDGER_GROUP  # the ledger group's name under its old private spelling (tests read it)
