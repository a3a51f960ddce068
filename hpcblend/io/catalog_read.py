"""Readers of the run catalog: open it (checking its version), read committed tables, the ledger, JSON groups.

Every reader opens the file with :func:`open_catalog`, which checks that it is an hpcblend catalog whose
``schema_version`` the registry (:mod:`hpcblend.io.versions`) reads, and trusts only what the ledger says
was committed (rows beyond ``rows_<table>`` belong to a round that did not finish). Rows are verified
against the CRC-32 checksums the writer recorded. :func:`append_group` opens a finished catalog to add the
groups written after the tables (``/profile``, ``/gallery``).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Union

import h5py
import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.ledger import LEDGER_GROUP, LEDGER_UNITS, verify_checksums, verify_ledger_units
from hpcblend.io.tables import attr_value
from hpcblend.io.versions import check_version

__all__ = [
    "open_catalog",
    "append_group",
    "read_table",
    "read_ledger",
    "read_json_group",
    "read_bands",
    "verify_catalog",
]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def append_group(path: PathLike, name: str, version_attr: str, version: int):
    """Open an existing catalog for appending and yield its group ``/name``.

    Used for the groups written after the tables (``/profile``,
    ``/gallery``): the file must exist and be an hpcblend catalog; the group
    is created if missing and stamped with ``version_attr = version``.

    Parameters
    ----------
    path : str or os.PathLike
        Catalog file.
    name : str
        Group under the root.
    version_attr : str
        Attribute of the group that records its layout version.
    version : int

    Yields
    ------
    h5py.Group
        Open for writing until the ``with`` block ends.

    Raises
    ------
    CatalogError
        The file does not exist, has no ``schema_version`` attribute (not an
        hpcblend catalog), or an I/O error occurs while the group is written.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CatalogError(f"{path}: cannot write /{name}, no such catalog")
    try:
        with h5py.File(path, "a") as f:
            if "schema_version" not in f.attrs:
                raise CatalogError(f"{path}: not an hpcblend catalog (no root attribute 'schema_version')")
            grp = f.require_group(name)
            grp.attrs[version_attr] = np.int64(version)
            yield grp
    except OSError as exc:
        raise CatalogError(f"{path}: cannot write /{name}: {exc}") from exc


def open_catalog(path: PathLike) -> h5py.File:
    """Open a catalog read-only after checking it is an HDF5 catalog of a readable schema.

    Parameters
    ----------
    path : str or os.PathLike
        Catalog file.

    Returns
    -------
    h5py.File
        Open read-only; close it (or use it as a context manager).

    Raises
    ------
    CatalogError
        If the file does not exist, is not HDF5, is truncated or unreadable,
        or has no ``schema_version`` attribute (not an hpcblend catalog).
    SchemaVersionError
        If ``schema_version`` is not an integer the registry reads
        (:data:`hpcblend.io.versions.READABLE_SCHEMA_VERSIONS`): the message
        says whether the file is older or newer and what to do.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CatalogError(f"{path}: catalog file does not exist")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog file: {exc}") from exc
    if not is_hdf5:
        raise CatalogError(f"{path}: not an HDF5 file (no HDF5 signature); is it a catalog?")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot open HDF5 catalog (truncated or corrupt?): {exc}") from exc
    try:
        if "schema_version" not in f.attrs:
            raise CatalogError(f"{path}: not an hpcblend catalog (no root attribute 'schema_version')")
        check_version("catalog", f.attrs["schema_version"], path)
    except (CatalogError, OSError) as exc:
        f.close()
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"{path}: cannot read catalog (truncated or corrupt?): {exc}") from exc
    return f


def _committed(f: h5py.File, name: str) -> int:
    """Committed row count of table ``name`` from the ledger."""
    if name not in f or not isinstance(f[name], h5py.Dataset) or f[name].dtype.names is None:
        tables = sorted(k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.dtype.names is not None)
        raise CatalogError(f"{f.filename}: no table {name!r} in the catalog (tables: {tables})")
    try:
        n = int(f[LEDGER_GROUP].attrs[f"rows_{name}"])
    except KeyError as exc:
        raise CatalogError(f"{f.filename}: ledger has no committed row count 'rows_{name}'") from exc
    return min(n, f[name].shape[0])


def read_table(path_or_file: Union[PathLike, h5py.File], name: str) -> np.ndarray:
    """Read the committed rows of one table.

    Parameters
    ----------
    path_or_file : str, os.PathLike or h5py.File
        Catalog path (opened with :func:`open_catalog`), or an open file.
    name : str
        Table name.

    Returns
    -------
    ndarray, shape (n_committed,)
        Structured array with the table's dtype as stored; rows beyond the
        ledger's ``rows_<name>`` (a half-written round) are left out. (Tables
        with their own format version are migrated by their own readers, e.g.
        :func:`hpcblend.io.models.read_model_rows`.)

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`; or if the table or its ledger count is
        missing, or the rows do not match the CRC-32 checksums the writer
        recorded (a damaged file).
    """
    if isinstance(path_or_file, (h5py.File, h5py.Group)):
        f = path_or_file.file
        try:
            n = _committed(f, name)
            data = f[name][:n]
            verify_checksums(f, name, data)
            return data
        except OSError as exc:
            raise CatalogError(f"{f.filename}: cannot read table {name!r}: {exc}") from exc
    with open_catalog(path_or_file) as f:
        return read_table(f, name)


def read_ledger(path: PathLike) -> tuple:
    """Read the restart ledger.

    Parameters
    ----------
    path : str or os.PathLike
        Catalog path.

    Returns
    -------
    units : set of str
        Committed finished-unit keys.
    counts : dict of str -> int
        Committed rows per table.

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`; or if ``/ledger`` is missing.
    """
    with open_catalog(path) as f:
        if LEDGER_GROUP not in f:
            raise CatalogError(f"{f.filename}: no /{LEDGER_GROUP} group")
        try:
            led = f[LEDGER_GROUP]
            n_units = int(led.attrs.get("n_units", 0))
            units = {u.decode("utf-8") for u in led[LEDGER_UNITS][:n_units]}
            counts = {k[len("rows_"):]: int(v) for k, v in led.attrs.items() if k.startswith("rows_")}
        except (OSError, KeyError) as exc:
            raise CatalogError(f"{f.filename}: cannot read /{LEDGER_GROUP}: {exc}") from exc
        return units, counts


def read_json_group(path: PathLike, name: str) -> dict:
    """Read a JSON metadata group (e.g. ``"config"``, ``"provenance"``).

    Parameters
    ----------
    path : str or os.PathLike
        Catalog path.
    name : str
        Group name.

    Returns
    -------
    dict
        The decoded JSON.

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`; or if the group or its ``json`` attribute is missing.
    """
    with open_catalog(path) as f:
        if name not in f or not isinstance(f[name], h5py.Group) or "json" not in f[name].attrs:
            raise CatalogError(f"{f.filename}: no JSON group {name!r} in the catalog")
        return json.loads(attr_value(f[name].attrs["json"]))


def read_bands(path: PathLike) -> tuple:
    """The run's band names (the catalog's root attribute ``bands``, comma-separated).

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`.
    """
    with open_catalog(path) as f:
        value = attr_value(f.attrs.get("bands", ""))
    return tuple(b for b in str(value).split(",") if b)


def verify_catalog(path: PathLike) -> dict:
    """Check every table of a catalog against the checksums its writer recorded.

    Parameters
    ----------
    path : str or os.PathLike
        Catalog file.

    Returns
    -------
    dict of str -> int
        Committed rows per table, all verified.

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`, or a table's rows or the ledger's unit keys
        do not match their checksums.
    """
    with open_catalog(path) as f:
        names = json.loads(attr_value(f.attrs.get("tables", "[]")))
        counts = {name: len(read_table(f, name)) for name in names}
        if LEDGER_GROUP in f:
            verify_ledger_units(f)
        return counts
