"""The catalog's restart ledger: finished units, attempts, CRC-32 checksums, and what a resumed run trusts.

Layout (inside the catalog, see :mod:`hpcblend.io.catalog`)::

    /ledger                group, attrs: rounds, n_units, rows_<table> (committed rows), n_attempts,
                           n_checksums, crc32_units, crc32_attempts
    /ledger/units          S256 finished unit keys (done or failed); the first n_units are committed
    /ledger/attempts       one row per committed attempt at a unit (:func:`attempt_dtype`)
    /ledger/checksums      table, round, start, count, crc32 (:data:`CHECKSUM_DTYPE`)

A round writes the table rows first, then the ledger, so a reader or a resumed writer trusts only the
first ``rows_<table>`` rows of each table and the first ``n_units`` unit keys. This module holds the
ledger's dtypes and checks; :mod:`hpcblend.io.catalog_writer` writes it and :mod:`hpcblend.io.catalog_read`
reads it.
"""

from __future__ import annotations

import json
import zlib
from typing import Mapping, Optional, Sequence

import h5py
import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.tables import LEDGER_GROUP, TableSpec, attr_value, same_fields

__all__ = [
    "LEDGER_GROUP",
    "LEDGER_UNITS",
    "LEDGER_ATTEMPTS",
    "LEDGER_CHECKSUMS",
    "UNIT_KEY_BYTES",
    "CHECKSUM_DTYPE",
    "attempt_dtype",
    "create_ledger",
    "reset_ledger",
    "crc32",
    "update_failed",
    "checked_unit_keys",
    "local_attempts",
    "round_records",
    "superseded_rows",
    "verify_ledger_units",
    "verify_checksums",
    "read_resume_state",
]

LEDGER_UNITS: str = "units"
LEDGER_ATTEMPTS: str = "attempts"
LEDGER_CHECKSUMS: str = "checksums"
#: Maximum length in bytes (UTF-8) of a finished-unit key in the ledger.
UNIT_KEY_BYTES: int = 256
#: Row of ``/ledger/checksums``: the CRC-32 of rows ``start .. start+count-1`` of a table, written in
#: ``round`` (-1: at finalize, one entry per whole sorted table).
CHECKSUM_DTYPE = np.dtype([("table", "S64"), ("round", "<i8"), ("start", "<i8"), ("count", "<i8"),
                           ("crc32", "<u4")])
_ADVICE = "; re-run without --resume"


def create_ledger(f: h5py.File, tables: Sequence[str]) -> None:
    """Create ``/ledger`` of a new catalog: the unit keys dataset, no round, no committed row of ``tables``."""
    led = f.create_group(LEDGER_GROUP)
    led.create_dataset(LEDGER_UNITS, shape=(0,), maxshape=(None,), dtype=f"S{UNIT_KEY_BYTES}", chunks=(1024,))
    led.attrs["rounds"] = np.int64(0)
    led.attrs["n_units"] = np.int64(0)
    for name in tables:
        led.attrs[f"rows_{name}"] = np.int64(0)


def reset_ledger(f: h5py.File, n_tables: int, n_units: int, n_attempts: int, n_checksums: int) -> None:
    """Cut the ledger's datasets to their committed entries, creating the version-2 ones where missing.

    Entries past the committed counts belong to a round that did not finish. Attributes that rounds
    overwrite in place (``crc32_units``, ``crc32_attempts``) are created here once.
    """
    led = f[LEDGER_GROUP]
    led[LEDGER_UNITS].resize((n_units,))
    if LEDGER_ATTEMPTS not in led:
        led.create_dataset(LEDGER_ATTEMPTS, shape=(0,), maxshape=(None,), dtype=attempt_dtype(n_tables),
                           chunks=(256,))
        led.attrs["n_attempts"] = np.int64(0)
    if LEDGER_CHECKSUMS not in led:
        led.create_dataset(LEDGER_CHECKSUMS, shape=(0,), maxshape=(None,), dtype=CHECKSUM_DTYPE, chunks=(1024,))
        led.attrs["n_checksums"] = np.int64(0)
    for name in ("crc32_units", "crc32_attempts"):  # created once: rounds only overwrite them in place
        if name not in led.attrs:
            led.attrs[name] = np.uint32(0)
    led[LEDGER_ATTEMPTS].resize((n_attempts,))
    led[LEDGER_CHECKSUMS].resize((n_checksums,))


def attempt_dtype(n_tables: int) -> np.dtype:
    """Row of ``/ledger/attempts`` for a catalog of ``n_tables`` tables.

    Fields: ``key`` (the unit), ``failed``, ``round``, and per table (in the
    catalog's ``tables`` order) ``start`` and ``count`` of the rows it wrote
    (-1 when unknown).
    """
    return np.dtype([("key", f"S{UNIT_KEY_BYTES}"), ("failed", "?"), ("round", "<i8"),
                     ("start", "<i8", (n_tables,)), ("count", "<i8", (n_tables,))])


def crc32(rows: np.ndarray, start: int = 0) -> int:
    """CRC-32 of the raw bytes of a row array (continuing from ``start``), as an unsigned int."""
    return zlib.crc32(np.ascontiguousarray(rows).tobytes(), start) & 0xFFFFFFFF


def checked_unit_keys(path: str, finished_units: Sequence[str], failed_units: Sequence[str]) -> list:
    """The finished unit keys of a write round as a list, after checking them and the failed ones.

    Raises
    ------
    CatalogError
        A key that is not a str or longer than :data:`UNIT_KEY_BYTES` in UTF-8, or a failed unit
        that is not among the finished ones.
    """
    units = []
    for key in finished_units:
        if not isinstance(key, str):
            raise CatalogError(f"{path}: finished unit key must be str, got {key!r}")
        if len(key.encode("utf-8")) > UNIT_KEY_BYTES:
            raise CatalogError(f"{path}: finished unit key {key[:40]!r}... is longer than {UNIT_KEY_BYTES} bytes")
        units.append(key)
    unknown = sorted(set(failed_units) - set(units))
    if unknown:
        raise CatalogError(f"{path}: failed unit(s) {unknown[:3]} are not among the finished units")
    return units


def local_attempts(path: str, tables: Sequence[str], prepared: Mapping[str, np.ndarray], units: Sequence[str],
                   failed: set, unit_rows: Optional[Sequence[Mapping[str, int]]]) -> list:
    """This rank's attempts of a write round, rows counted from the start of its own rows.

    Parameters
    ----------
    path : str
        The catalog, for messages.
    tables : sequence of str
        Table names in the catalog's order.
    prepared : dict of str -> ndarray
        This rank's rows of the round per table.
    units : sequence of str
        Keys of the units this rank finished in the round.
    failed : set of str
        The keys of ``units`` that failed.
    unit_rows : sequence of dict of str -> int, or None
        Rows each unit contributed per table, in the order of the rows; None: not attributed.

    Returns
    -------
    list of (key, failed, starts, counts)
        ``starts`` and ``counts`` per table (-1 each when not attributed).

    Raises
    ------
    CatalogError
        ``unit_rows`` has another length than ``units``, or does not add up to the round's rows.
    """
    n_tables = len(tables)
    if unit_rows is None or len(unit_rows) != len(units):
        if unit_rows is not None:
            raise CatalogError(f"{path}: unit_rows has {len(unit_rows)} entries for {len(units)} units")
        return [(k, k in failed, [-1] * n_tables, [-1] * n_tables) for k in units]
    out = []
    offset = {name: 0 for name in tables}
    for key, counts in zip(units, unit_rows):
        starts, ns = [], []
        for name in tables:
            n = int(counts.get(name, 0))
            starts.append(offset[name])
            ns.append(n)
            offset[name] += n
        out.append((key, key in failed, starts, ns))
    for name in tables:
        if offset[name] != len(prepared[name]):
            raise CatalogError(f"{path}: unit_rows account for {offset[name]} rows of {name!r}, "
                               f"the round has {len(prepared[name])}")
    return out


def round_records(tables: Sequence[str], committed: Mapping[str, int], round_index: int, gathered: list,
                  all_counts: np.ndarray) -> tuple:
    """The ``/ledger/attempts`` and ``/ledger/checksums`` entries of a write round (same on every rank).

    Parameters
    ----------
    tables : sequence of str
        Table names in the catalog's order.
    committed : dict of str -> int
        Rows per table committed before the round.
    round_index : int
        The round's number (0-based over the file's life).
    gathered : list
        Per rank ``(counts, units, local_attempts, crcs)`` as gathered in the round.
    all_counts : ndarray, shape (n_ranks, n_tables), int64
        Rows per rank and table.

    Returns
    -------
    attempts : ndarray, dtype :func:`attempt_dtype`
    checksums : ndarray, dtype :data:`CHECKSUM_DTYPE`
    """
    names = list(tables)
    attempts, checksums = [], []
    for r, (counts, _, rank_attempts, crcs) in enumerate(gathered):
        base = [committed[n] + int(all_counts[:r, i].sum()) for i, n in enumerate(names)]
        for key, failed, starts, ns in rank_attempts:
            abs_starts = [base[i] + s if s >= 0 else -1 for i, s in enumerate(starts)]
            attempts.append((key.encode("utf-8"), failed, round_index, abs_starts, ns))
        for i, n in enumerate(names):
            if counts[i]:
                checksums.append((n.encode(), round_index, base[i], counts[i], crcs[i]))
    return (np.array(attempts, dtype=attempt_dtype(len(names))), np.array(checksums, dtype=CHECKSUM_DTYPE))


def update_failed(failed: set, attempts: np.ndarray) -> set:
    """Update (and return) the set of unit keys whose last attempt failed, with later ``/ledger/attempts`` rows."""
    for a in attempts:
        key = bytes(a["key"]).decode("utf-8", "replace")
        (failed.add if bool(a["failed"]) else failed.discard)(key)
    return failed


def superseded_rows(attempts: np.ndarray, table_index: int, n_rows: int) -> np.ndarray:
    """Rows of one table written by an attempt that a later attempt at the same unit replaced.

    Returns
    -------
    ndarray of bool, shape (n_rows,)
        True for a row to drop.
    """
    drop = np.zeros(n_rows, dtype=bool)
    last = {}
    for i, a in enumerate(attempts):
        last[bytes(a["key"])] = i
    for i, a in enumerate(attempts):
        if last[bytes(a["key"])] != i:
            start, count = int(a["start"][table_index]), int(a["count"][table_index])
            if start >= 0 and count > 0:
                drop[start:start + count] = True
    return drop


def verify_ledger_units(f: h5py.File, advice: str = "") -> int:
    """Check the committed unit keys of ``/ledger/units`` against their CRC-32; return the CRC-32.

    Raises
    ------
    CatalogError
        The keys do not match the checksum the writer recorded (a damaged file).
    """
    led = f[LEDGER_GROUP]
    crc = crc32(led[LEDGER_UNITS][: int(led.attrs.get("n_units", 0))])
    if "crc32_units" in led.attrs and crc != int(led.attrs["crc32_units"]):
        raise CatalogError(f"{f.filename}: catalog damaged: /{LEDGER_GROUP}/{LEDGER_UNITS} does not match its "
                           f"checksum{advice}")
    return crc


def verify_checksums(f: h5py.File, name: str, data: np.ndarray, offset: int = 0) -> None:
    """Check ``data`` (rows ``offset ..`` of table ``name``) against the ledger's checksums.

    A catalog written before checksums were recorded (``schema_version`` 1)
    has nothing to verify.

    Raises
    ------
    CatalogError
        A committed range of rows does not match the CRC-32 recorded when it was written.
    """
    if LEDGER_GROUP not in f or LEDGER_CHECKSUMS not in f[LEDGER_GROUP]:
        return
    led = f[LEDGER_GROUP]
    n_sums = int(led.attrs.get("n_checksums", 0))
    if not n_sums:
        return
    sums = led[LEDGER_CHECKSUMS][:n_sums]
    stop = offset + len(data)
    for entry in sums[sums["table"] == name.encode()]:
        a, b = int(entry["start"]), int(entry["start"]) + int(entry["count"])
        if a < offset or b > stop:
            continue
        if crc32(data[a - offset:b - offset]) != int(entry["crc32"]):
            when = "finalize" if int(entry["round"]) < 0 else f"write round {int(entry['round']) + 1}"
            raise CatalogError(f"{f.filename}: catalog damaged: table {name!r} rows {a}..{b - 1} do not match "
                               f"the checksum recorded at {when}{_ADVICE}")


def _check_tables_match(f: h5py.File, path: str, tables: Mapping[str, TableSpec]) -> None:
    """Resume: the file holds exactly the declared tables, with the declared dtypes and units."""
    present = sorted(k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.dtype.names is not None)
    missing = sorted(set(tables) - set(present))
    extra = sorted(set(present) - set(tables))
    if missing or extra:
        raise CatalogError(f"{path}: cannot resume: tables differ (missing in file: {missing}, "
                           f"in file but not declared: {extra})")
    for name, spec in tables.items():
        dset = f[name]
        if not same_fields(dset.dtype, spec.dtype):
            raise CatalogError(f"{path}: cannot resume: table {name!r} has dtype {dset.dtype} in the file, "
                               f"but {spec.dtype} is declared")
        try:
            file_units = json.loads(attr_value(dset.attrs["units"]))
        except (KeyError, ValueError):
            file_units = None
        if file_units != spec.units:
            raise CatalogError(f"{path}: cannot resume: table {name!r} has units {file_units} in the file, "
                               f"but {spec.units} are declared")


def _committed_counts(f: h5py.File, path: str, tables: Mapping[str, TableSpec]) -> dict:
    """Resume: committed rows per table from the ledger, checked against the datasets' lengths."""
    led = f[LEDGER_GROUP]
    counts = {}
    for name in tables:
        key = f"rows_{name}"
        if key not in led.attrs:
            raise CatalogError(f"{path}: cannot resume: ledger has no attribute {key!r}")
        counts[name] = int(led.attrs[key])
        if counts[name] > f[name].shape[0]:
            raise CatalogError(f"{path}: ledger says {counts[name]} rows of {name!r} are committed "
                               f"but the dataset holds only {f[name].shape[0]}")
    return counts


def _committed_attempts(f: h5py.File, path: str, n_tables: int) -> np.ndarray:
    """Resume: the committed ``/ledger/attempts`` rows, checked against their CRC-32 and dtype."""
    led = f[LEDGER_GROUP]
    dtype = attempt_dtype(n_tables)
    if LEDGER_ATTEMPTS not in led:
        return np.zeros(0, dtype=dtype)
    attempts = led[LEDGER_ATTEMPTS][: int(led.attrs.get("n_attempts", 0))]
    crc = led.attrs.get("crc32_attempts")
    if crc is not None and crc32(attempts) != int(crc):
        raise CatalogError(f"{path}: catalog damaged: /{LEDGER_GROUP}/{LEDGER_ATTEMPTS} does not "
                           f"match its checksum{_ADVICE}")
    if attempts.dtype != dtype:
        raise CatalogError(f"{path}: cannot resume: /{LEDGER_GROUP}/{LEDGER_ATTEMPTS} has dtype "
                           f"{attempts.dtype}, expected {dtype}")
    return attempts


def read_resume_state(f: h5py.File, path: str, tables: Mapping[str, TableSpec]) -> dict:
    """What a resumed writer continues from, after checking that the file may be resumed with ``tables``.

    Parameters
    ----------
    f : h5py.File
        The catalog, open read-only, of the current ``schema_version``, not complete.
    path : str
        Its path, for messages.
    tables : dict of str -> TableSpec
        The tables the resuming run declares, in order.

    Returns
    -------
    dict
        ``counts`` (committed rows per table), ``units`` (finished unit keys, list of str),
        ``rounds``, ``n_resumes`` (this resume included), ``attempts`` (committed
        ``/ledger/attempts`` rows), ``n_checksums``, ``crc32_units``.

    Raises
    ------
    CatalogError
        No ledger, tables that differ from ``tables``, committed counts beyond the data, or any
        ledger entry or committed row that does not match its checksum (a damaged file).
    """
    if LEDGER_GROUP not in f:
        raise CatalogError(f"{path}: cannot resume: no /{LEDGER_GROUP} group")
    _check_tables_match(f, path, tables)
    led = f[LEDGER_GROUP]
    counts = _committed_counts(f, path, tables)
    n_units = int(led.attrs.get("n_units", 0))
    try:
        units = [u.decode("utf-8") for u in led[LEDGER_UNITS][:n_units]]
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: catalog damaged: a unit key in /{LEDGER_GROUP}/{LEDGER_UNITS} is not "
                           f"UTF-8 ({exc}){_ADVICE}") from None
    crc_units = verify_ledger_units(f, " (re-run without --resume)")
    attempts = _committed_attempts(f, path, len(tables))
    for name in tables:  # every committed row against the checksums of its round
        verify_checksums(f, name, f[name][: counts[name]])
    return {
        "counts": counts,
        "units": units,
        "rounds": int(led.attrs.get("rounds", 0)),
        "n_resumes": int(f.attrs.get("n_resumes", 0)) + 1,
        "attempts": attempts,
        "n_checksums": int(led.attrs.get("n_checksums", 0)) if LEDGER_CHECKSUMS in led else 0,
        "crc32_units": crc_units,
    }
