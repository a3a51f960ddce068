"""The run's HDF5 catalog: tables of rows, a restart ledger, JSON metadata groups.

The module is generic: it knows nothing about deblending. A *table* is declared
with a :class:`TableSpec` (name, numpy structured dtype, units per column, sort
key) and written as one resizable, chunked, uncompressed compound dataset
``/<name>``. Rows arrive in *write rounds* (:meth:`CatalogWriter.write_round`),
which every MPI rank enters together; at the end :meth:`CatalogWriter.finalize`
sorts every table so that the bytes of the table data depend only on the set of
rows written, never on the number of ranks, on which rank wrote which rows, or
on the writer kind.

File layout (``SCHEMA_VERSION`` 2; version 1 files, written before the
ledger's attempts and checksums existed, are still read — see
:data:`READABLE_SCHEMA_VERSIONS` — but not resumed)::

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
                                  header, so Table.read gets the units)
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

import contextlib
import gc
import io
import json
import os
import re
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from hpcblend.io.json_values import json_default

from hpcblend.errors import CatalogError, SchemaVersionError

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

#: Version of the file layout written by this module.
#: 2: ``/ledger/attempts`` and ``/ledger/checksums`` (failed units, integrity); /blends ``n_peaks_dropped``,
#: ``flag_bad_fit``; /sources ``flag_peak_*``; /patches ``n_bad_pixels``.
SCHEMA_VERSION: int = 2

#: Versions :func:`open_catalog` and the readers accept. A version-1 file lacks the version-2 ledger
#: datasets (nothing to verify: read as it is) and the version-2 columns (absent from its tables);
#: only files of :data:`SCHEMA_VERSION` can be resumed.
READABLE_SCHEMA_VERSIONS: tuple = (1, 2)

#: Maximum length in bytes (UTF-8) of a finished-unit key in the ledger.
UNIT_KEY_BYTES: int = 256

_LEDGER = "ledger"
_LEDGER_UNITS = "units"
_LEDGER_ATTEMPTS = "attempts"
_LEDGER_CHECKSUMS = "checksums"
_CHECKSUM_DTYPE = np.dtype([("table", "S64"), ("round", "<i8"), ("start", "<i8"), ("count", "<i8"),
                            ("crc32", "<u4")])
_ASTROPY_META = "__table_column_meta__"
_RESERVED_ROOT_ATTRS = frozenset(
    {"schema_version", "created", "complete", "finished", "writer", "tables", "n_resumes", "resumed"}
)
_ALLOWED_KINDS = frozenset("biufcS")
_CHUNK_BYTES = 256 * 1024

#: Seconds a rank waits for the others to report the outcome of a collective write before it aborts the
#: job (a rank stuck inside a collective call after another rank's write failed); healthy rounds agree
#: in milliseconds.
IO_AGREE_TIMEOUT: float = float(os.environ.get("HPCBLEND_IO_AGREE_TIMEOUT", "120"))
_LIBVER = ("v108", "v110")  # 1.8+ format: attributes larger than 64 KiB are allowed


# --------------------------------------------------------------------------- helpers


def _utc_now() -> str:
    """Current UTC time as an ISO-8601 string with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _packed(dtype: np.dtype) -> np.dtype:
    """The same fields as ``dtype`` without padding (offsets packed, no alignment)."""
    return np.dtype([(name, dtype.fields[name][0]) for name in dtype.names])


def _same_fields(a: np.dtype, b: np.dtype) -> bool:
    """True when two structured dtypes have the same field names, order and field types."""
    if a.names is None or b.names is None or a.names != b.names:
        return False
    return all(a.fields[n][0] == b.fields[n][0] for n in a.names)


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{kind} name must be a non-empty string, got {name!r}")
    if "/" in name or "." in name or name.startswith("__") or name == _LEDGER:
        raise CatalogError(
            f"{kind} name {name!r} is not allowed (no '/' or '.', no leading '__', not {_LEDGER!r})"
        )




def _flatten_scalars(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of a JSON-like mapping, nested keys joined with '.'."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_scalars(value, name + "."))
        elif isinstance(value, bool):
            out[name] = np.bool_(value)
        elif isinstance(value, int):
            if -(2**63) <= value < 2**63:
                out[name] = np.int64(value)
        elif isinstance(value, float):
            out[name] = value
        elif isinstance(value, str):
            out[name] = value.replace("\x00", "")  # HDF5 strings cannot hold NUL
    return out


def _attr_to_py(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _astropy_header(spec: "TableSpec") -> list[bytes] | None:
    """astropy's YAML table header (column units) for ``spec``, or None if astropy is absent."""
    try:
        from astropy.table import Table, meta
    except Exception:  # pragma: no cover - astropy is a dependency, but stay usable without it
        return None
    table = Table(np.zeros(0, dtype=spec.dtype))
    for col, unit in spec.units.items():
        if unit:
            table[col].unit = unit
    table.meta = {"hpcblend_table": spec.name, "schema_version": SCHEMA_VERSION}
    return [line.encode("utf-8") for line in meta.get_yaml_from_table(table)]


def _collective_write(dset: h5py.Dataset, start: int, data: np.ndarray) -> None:
    """Collectively write ``data`` (possibly empty) at rows ``[start, start+len(data))``.

    Every rank of the file's communicator must call this together. h5py's
    ``dset[...] = x`` returns early on an empty selection, which would leave the
    other ranks waiting inside the collective call, so the low-level API is used
    with an explicit empty selection instead.
    """
    from h5py import h5fd, h5p, h5s, h5t

    n = len(data)
    fspace = dset.id.get_space()
    if n:
        buf = np.ascontiguousarray(data)
        fspace.select_hyperslab((start,), (n,))
        mspace = h5s.create_simple((n,))
    else:
        buf = np.zeros(1, dtype=dset.dtype)
        fspace.select_none()
        mspace = h5s.create_simple((1,))
        mspace.select_none()
    dxpl = h5p.create(h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5fd.MPIO_COLLECTIVE)
    dset.id.write(mspace, fspace, buf, h5t.py_create(buf.dtype), dxpl=dxpl)


def _attempt_dtype(n_tables: int) -> np.dtype:
    """Row of ``/ledger/attempts`` for a catalog of ``n_tables`` tables."""
    return np.dtype([("key", f"S{UNIT_KEY_BYTES}"), ("failed", "?"), ("round", "<i8"),
                     ("start", "<i8", (n_tables,)), ("count", "<i8", (n_tables,))])


def _update_failed(failed: set, attempts: np.ndarray) -> set:
    """Update (and return) the set of unit keys whose last attempt failed, with later ``/ledger/attempts`` rows."""
    for a in attempts:
        key = bytes(a["key"]).decode("utf-8", "replace")
        (failed.add if bool(a["failed"]) else failed.discard)(key)
    return failed


def _crc32(rows: np.ndarray) -> int:
    """CRC-32 of the raw bytes of a contiguous row array."""
    return zlib.crc32(np.ascontiguousarray(rows).tobytes()) & 0xFFFFFFFF


def _superseded_rows(attempts: np.ndarray, table_index: int, n_rows: int) -> np.ndarray:
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


def _verify_ledger_units(f: h5py.File, advice: str = "") -> int:
    """Check the committed unit keys of ``/ledger/units`` against their CRC-32; return the CRC-32.

    Raises
    ------
    CatalogError
        The keys do not match the checksum the writer recorded (a damaged file).
    """
    led = f[_LEDGER]
    crc = _crc32(led[_LEDGER_UNITS][: int(led.attrs.get("n_units", 0))])
    if "crc32_units" in led.attrs and crc != int(led.attrs["crc32_units"]):
        raise CatalogError(f"{f.filename}: catalog damaged: /{_LEDGER}/{_LEDGER_UNITS} does not match its "
                           f"checksum{advice}")
    return crc


def _verify_checksums(f: h5py.File, name: str, data: np.ndarray, offset: int = 0) -> None:
    """Check ``data`` (rows ``offset ..`` of table ``name``) against the ledger's checksums.

    Raises
    ------
    CatalogError
        A committed range of rows does not match the CRC-32 recorded when it was written.
    """
    if _LEDGER not in f or _LEDGER_CHECKSUMS not in f[_LEDGER]:
        return  # a catalog written before checksums were recorded
    led = f[_LEDGER]
    n_sums = int(led.attrs.get("n_checksums", 0))
    if not n_sums:
        return
    sums = led[_LEDGER_CHECKSUMS][:n_sums]
    stop = offset + len(data)
    for entry in sums[sums["table"] == name.encode()]:
        a, b = int(entry["start"]), int(entry["start"]) + int(entry["count"])
        if a < offset or b > stop:
            continue
        if _crc32(data[a - offset:b - offset]) != int(entry["crc32"]):
            when = "finalize" if int(entry["round"]) < 0 else f"write round {int(entry['round']) + 1}"
            raise CatalogError(f"{f.filename}: catalog damaged: table {name!r} rows {a}..{b - 1} do not match "
                               f"the checksum recorded at {when}; re-run without --resume")


@contextlib.contextmanager
def _quiet_hdf5_handles():
    """Silence HDF5 errors printed while handles of a failed file are released (the failure is reported once).

    Runs the garbage collector inside, so handles held by reference cycles are released here, quietly;
    it costs ~0.1 s, so only error paths use this.
    """
    hook, stderr = sys.unraisablehook, sys.stderr
    sys.unraisablehook = lambda *_: None
    sys.stderr = io.StringIO()  # h5py prints the errors of handles released in __dealloc__
    try:
        yield
        gc.collect()
    finally:
        sys.unraisablehook, sys.stderr = hook, stderr


def _hdf5_reason(exc: BaseException) -> str:
    """One line for an HDF5/OS error: the errno text where HDF5 gives one ('No space left on device')."""
    text = str(exc)
    m = re.search(r"error message = '([^']+)'", text)
    if m:
        return f"{m.group(1)} ({type(exc).__name__})"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _check_unique(path: str, name: str, data: np.ndarray, key: str) -> None:
    """Raise CatalogError naming both rows when sorted ``data`` holds a key twice."""
    keys = data[key]
    dup = np.flatnonzero(keys[1:] == keys[:-1])
    if not len(dup):
        return
    i = int(dup[0])
    where = []
    for j in (i, i + 1):
        if "source_file" in data.dtype.names:
            where.append(bytes(data["source_file"][j]).decode("utf-8", "replace") or f"row {j}")
        else:
            where.append(f"row {j}")
    raise CatalogError(f"{path}: table {name!r}: {key} {keys[i]} occurs more than once ({len(dup)} duplicate "
                       f"row(s)); first from {where[0]} and from {where[1]}")


def _agree(comm: Any, error: str | None) -> None:
    """Collectively raise CatalogError on every rank if any rank reports an error."""
    errors = comm.allgather(error)
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        if len(bad) == 1 or all(e == bad[0][1] for _, e in bad):
            msg = bad[0][1]
            if comm.Get_size() > 1:
                msg = f"{msg} (rank(s) {', '.join(str(r) for r, _ in bad)})"
        else:
            msg = "; ".join(f"rank {r}: {e}" for r, e in bad)
        raise CatalogError(msg)


# --------------------------------------------------------------------------- TableSpec


@dataclass(frozen=True)
class TableSpec:
    """Declaration of one catalog table.

    Parameters
    ----------
    name : str
        Dataset name in the file (``/<name>``); no ``/`` or ``.``, not ``ledger``.
    dtype : numpy.dtype or dtype-like
        Structured dtype of a row. Fields may be scalars of kind bool, int,
        uint, float, complex, fixed-size sub-arrays of those (e.g.
        ``('bbox', 'i8', (4,))``), or fixed-length byte strings (``'S64'``).
        No object, unicode, vlen or nested compound fields. The stored dtype is
        the *packed* version (no padding bytes), so the file's bytes are
        deterministic; rows given with an aligned dtype are repacked.
    units : dict of str -> str, optional
        Unit string per column (astropy syntax, e.g. ``'pix'``, ``'deg'``,
        ``'s'``, ``'nJy'``); ``''`` for dimensionless. Columns left out get
        ``''``; unknown columns raise.
    sort_key : str, optional
        Scalar column :meth:`CatalogWriter.finalize` sorts by (stable, ties
        broken by the row's bytes). Default ``'id'``.

    Raises
    ------
    CatalogError
        If the name, dtype, units or sort key are invalid.
    """

    name: str
    dtype: np.dtype
    units: dict = field(default_factory=dict, hash=False)
    sort_key: str = "id"

    def __post_init__(self) -> None:
        _check_name("table", self.name)
        try:
            dt = np.dtype(self.dtype)
        except TypeError as exc:
            raise CatalogError(f"table {self.name!r}: invalid dtype {self.dtype!r}: {exc}") from exc
        if dt.names is None or not dt.names:
            raise CatalogError(f"table {self.name!r}: dtype must be structured with ≥1 field, got {dt}")
        for col in dt.names:
            fdt = dt.fields[col][0]
            base = fdt.base
            if base.names is not None or base.kind not in _ALLOWED_KINDS or base.metadata:
                raise CatalogError(
                    f"table {self.name!r}, column {col!r}: dtype {fdt} not allowed "
                    "(use bool/int/uint/float/complex scalars or fixed sub-arrays, or 'S<n>' strings)"
                )
            if base.kind == "S" and base.itemsize == 0:
                raise CatalogError(f"table {self.name!r}, column {col!r}: zero-length string dtype")
        dt = _packed(dt)
        units = dict(self.units or {})
        unknown = sorted(set(units) - set(dt.names))
        if unknown:
            raise CatalogError(f"table {self.name!r}: units given for unknown column(s) {unknown}")
        for col, unit in units.items():
            if not isinstance(unit, str):
                raise CatalogError(f"table {self.name!r}, column {col!r}: unit must be str, got {unit!r}")
        units = {col: units.get(col, "") for col in dt.names}
        if self.sort_key not in dt.names:
            raise CatalogError(f"table {self.name!r}: sort_key {self.sort_key!r} is not a column")
        if dt.fields[self.sort_key][0].shape != ():
            raise CatalogError(f"table {self.name!r}: sort_key {self.sort_key!r} must be a scalar column")
        object.__setattr__(self, "dtype", dt)
        object.__setattr__(self, "units", units)

    def empty(self, n: int = 0) -> np.ndarray:
        """A zero-filled array of ``n`` rows of this table's dtype."""
        return np.zeros(n, dtype=self.dtype)


# --------------------------------------------------------------------------- writer


class CatalogWriter:
    """Writer of one run's catalog file, collective over an MPI communicator.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; must be the same on every rank.
    comm : mpi4py.MPI.Comm or None
        Communicator of all ranks taking part (``MPI.COMM_WORLD``, or
        ``MPI.COMM_SELF`` for a one-process run). ``None`` means ``COMM_SELF``.
    tables : list of TableSpec
        Tables of the catalog, same on every rank.
    attrs : dict, optional
        Extra root attributes (h5py-storable values; names in
        ``schema_version, created, complete, finished, writer, tables,
        n_resumes, resumed`` are reserved). Rank 0's values are used.
    json_groups : dict of str -> dict, optional
        Groups of JSON-serialisable metadata, e.g. ``{"config": ...,
        "provenance": ...}``. Each becomes group ``/<name>`` with attribute
        ``json`` (the JSON text) and one attribute per scalar leaf (nested keys
        joined by ``'.'``; a leaf named ``json`` is only in the text). Rank 0's
        values are used. On resume, groups of the same name are replaced.
    writer : {"auto", "mpio", "serial"}
        ``"auto"``: ``"mpio"`` when ``comm`` has more than one rank and h5py was
        built with MPI, else ``"serial"``. ``"mpio"``: collective parallel HDF5
        (h5py must have MPI). ``"serial"``: rows are gathered to rank 0, which
        alone opens the file.
    resume : bool
        Open an existing, incomplete file written with the same table specs,
        drop rows beyond the ledger's committed counts, and continue. The set
        of units finished before is :meth:`finished_units`.

    Attributes
    ----------
    path : str
    writer_kind : {"mpio", "serial"}
    tables : dict of str -> TableSpec

    Raises
    ------
    CatalogError
        Invalid arguments, arguments that differ between ranks, a file that
        cannot be created, or (resume) a missing / complete / incompatible file.
    SchemaVersionError
        (resume) the file's ``schema_version`` is not :data:`SCHEMA_VERSION`.

    Notes
    -----
    Every method except :meth:`finished_units` and :meth:`committed_rows` is
    *collective*: all ranks of ``comm`` must call it, in the same order. Errors
    detected on any rank before I/O (bad rows, bad unit keys) are agreed via
    ``allgather`` and raised on every rank, so ranks do not deadlock. An
    exception raised on one rank only *outside* these methods leaves the others
    waiting in the next collective call: abort with ``comm.Abort()``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        comm: Any,
        tables: Sequence[TableSpec],
        *,
        attrs: Mapping[str, Any] | None = None,
        json_groups: Mapping[str, Mapping[str, Any]] | None = None,
        writer: str = "auto",
        resume: bool = False,
    ) -> None:
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_SELF
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        self.path: str = os.fspath(path)
        self._file: h5py.File | None = None
        self._handles: dict[str, Any] = {}
        self._closed = False
        self._finalized = False

        # --- local argument checks, agreed across ranks
        error: str | None = None
        specs: dict[str, TableSpec] = {}
        try:
            if writer not in ("auto", "mpio", "serial"):
                raise CatalogError(f"{self.path}: writer must be 'auto', 'mpio' or 'serial', got {writer!r}")
            if writer == "mpio" and not h5py.get_config().mpi:
                raise CatalogError(
                    f"{self.path}: writer='mpio' requested but h5py {h5py.__version__} was built without MPI"
                )
            for spec in tables:
                if not isinstance(spec, TableSpec):
                    raise CatalogError(f"{self.path}: tables must be TableSpec objects, got {spec!r}")
                if spec.name in specs:
                    raise CatalogError(f"{self.path}: table {spec.name!r} declared twice")
                specs[spec.name] = spec
            if not specs:
                raise CatalogError(f"{self.path}: at least one table is required")
            for name in json_groups or {}:
                _check_name("json group", name)
                if name in specs:
                    raise CatalogError(f"{self.path}: json group {name!r} has the name of a table")
            bad_attrs = sorted(set(attrs or {}) & _RESERVED_ROOT_ATTRS)
            if bad_attrs:
                raise CatalogError(f"{self.path}: root attribute name(s) {bad_attrs} are reserved")
        except CatalogError as exc:
            error = str(exc)
        _agree(comm, error)
        signature = (self.path, writer, bool(resume), [(s.name, s.dtype.descr, s.units, s.sort_key) for s in specs.values()])
        sigs = comm.allgather(signature)
        if any(s != sigs[0] for s in sigs):
            raise CatalogError(
                f"{self.path}: CatalogWriter arguments (path, writer, resume, tables) differ between ranks"
            )
        self.tables: dict[str, TableSpec] = specs

        if writer == "auto":
            writer = "mpio" if (self.size > 1 and h5py.get_config().mpi) else "serial"
        self.writer_kind: str = writer

        # --- metadata prepared on rank 0 (identical values on every rank, as mpio requires)
        plan: dict[str, Any] | None = None
        error = None
        error_cls: type[CatalogError] = CatalogError
        if self.rank == 0:
            try:
                plan = self._make_plan(attrs or {}, json_groups or {}, resume)
            except CatalogError as exc:
                error, error_cls = str(exc), type(exc)
            except Exception as exc:  # noqa: BLE001 - report any failure collectively
                error = f"{self.path}: cannot prepare catalog: {type(exc).__name__}: {exc}"
        plan, error, error_cls = comm.bcast((plan, error, error_cls), root=0)
        if error is not None:
            raise error_cls(error)
        assert plan is not None

        self._counts: dict[str, int] = dict(plan["counts"])
        self._finished: set[str] = set(plan["units"])
        self._n_units: int = len(plan["units"])
        self._rounds: int = int(plan["rounds"])
        # the ledger's attempts, one array per round (concatenated only when needed: rounds stay O(round))
        self._attempt_parts: list[np.ndarray] = [plan["attempts"]]
        self._n_attempts: int = len(plan["attempts"])
        self._failed: set[str] = _update_failed(set(), plan["attempts"])
        self._n_checksums: int = int(plan["n_checksums"])
        self._crc_units: int = int(plan.get("crc32_units", 0))
        self._crc_attempts: int = _crc32(plan["attempts"])

        # --- open / create
        self._io_step(lambda: self._open_and_setup(plan, resume), "cannot create" if not resume else "cannot resume")

    # ------------------------------------------------------------------ setup

    def _make_plan(self, attrs: Mapping[str, Any], json_groups: Mapping[str, Mapping[str, Any]], resume: bool) -> dict:
        """Rank 0: everything needed to create or reopen the file, as plain data."""
        plan: dict[str, Any] = {"time": _utc_now()}
        plan["attrs"] = dict(attrs)
        groups = {}
        for name, content in json_groups.items():
            try:
                text = json.dumps(content, sort_keys=True, default=json_default)
            except (TypeError, ValueError) as exc:
                raise CatalogError(f"{self.path}: json group {name!r} is not JSON-serialisable: {exc}") from exc
            groups[name] = (text, _flatten_scalars(json.loads(text)))
        plan["json_groups"] = groups
        plan["astropy"] = {name: _astropy_header(spec) for name, spec in self.tables.items()}
        if resume:
            plan.update(self._inspect_existing())
        else:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise CatalogError(f"{self.path}: directory {parent} does not exist")
            plan.update(counts={n: 0 for n in self.tables}, units=[], rounds=0, n_resumes=0, crc32_units=0,
                        attempts=np.zeros(0, dtype=_attempt_dtype(len(self.tables))), n_checksums=0)
        return plan

    def _inspect_existing(self) -> dict:
        """Rank 0, resume: validate the existing file and read its ledger."""
        with open_catalog(self.path) as f:
            version = int(f.attrs["schema_version"])
            if version != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path}: cannot resume: the catalog has schema_version {version}, this hpcblend writes "
                    f"{SCHEMA_VERSION}; run again without --resume (the file stays readable)")
            if bool(f.attrs.get("complete", False)):
                raise CatalogError(
                    f"{self.path}: cannot resume: the catalog is complete (finalized at "
                    f"{_attr_to_py(f.attrs.get('finished', '?'))}); write to a new file"
                )
            if _LEDGER not in f:
                raise CatalogError(f"{self.path}: cannot resume: no /{_LEDGER} group")
            led = f[_LEDGER]
            present = sorted(
                k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.dtype.names is not None
            )
            missing = sorted(set(self.tables) - set(present))
            extra = sorted(set(present) - set(self.tables))
            if missing or extra:
                raise CatalogError(
                    f"{self.path}: cannot resume: tables differ (missing in file: {missing}, "
                    f"in file but not declared: {extra})"
                )
            counts = {}
            for name, spec in self.tables.items():
                dset = f[name]
                if not _same_fields(dset.dtype, spec.dtype):
                    raise CatalogError(
                        f"{self.path}: cannot resume: table {name!r} has dtype {dset.dtype} in the file, "
                        f"but {spec.dtype} is declared"
                    )
                try:
                    file_units = json.loads(_attr_to_py(dset.attrs["units"]))
                except (KeyError, ValueError):
                    file_units = None
                if file_units != spec.units:
                    raise CatalogError(
                        f"{self.path}: cannot resume: table {name!r} has units {file_units} in the file, "
                        f"but {spec.units} are declared"
                    )
                key = f"rows_{name}"
                if key not in led.attrs:
                    raise CatalogError(f"{self.path}: cannot resume: ledger has no attribute {key!r}")
                counts[name] = int(led.attrs[key])
                if counts[name] > dset.shape[0]:
                    raise CatalogError(
                        f"{self.path}: ledger says {counts[name]} rows of {name!r} are committed "
                        f"but the dataset holds only {dset.shape[0]}"
                    )
            n_units = int(led.attrs.get("n_units", 0))
            try:
                units = [u.decode("utf-8") for u in led[_LEDGER_UNITS][:n_units]]
            except UnicodeDecodeError as exc:
                raise CatalogError(f"{self.path}: catalog damaged: a unit key in /{_LEDGER}/{_LEDGER_UNITS} is not "
                                   f"UTF-8 ({exc}); re-run without --resume") from None
            crc_units = _verify_ledger_units(f, " (re-run without --resume)")
            attempt_dtype = _attempt_dtype(len(self.tables))
            attempts = np.zeros(0, dtype=attempt_dtype)
            if _LEDGER_ATTEMPTS in led:
                attempts = led[_LEDGER_ATTEMPTS][: int(led.attrs.get("n_attempts", 0))]
                crc = led.attrs.get("crc32_attempts")
                if crc is not None and _crc32(attempts) != int(crc):
                    raise CatalogError(f"{self.path}: catalog damaged: /{_LEDGER}/{_LEDGER_ATTEMPTS} does not "
                                       f"match its checksum; re-run without --resume")
                if attempts.dtype != attempt_dtype:
                    raise CatalogError(f"{self.path}: cannot resume: /{_LEDGER}/{_LEDGER_ATTEMPTS} has dtype "
                                       f"{attempts.dtype}, expected {attempt_dtype}")
            for name in self.tables:  # every committed row against the checksums of its round
                _verify_checksums(f, name, f[name][: counts[name]])
            return {
                "counts": counts,
                "units": units,
                "rounds": int(led.attrs.get("rounds", 0)),
                "n_resumes": int(f.attrs.get("n_resumes", 0)) + 1,
                "attempts": attempts,
                "n_checksums": int(led.attrs.get("n_checksums", 0)) if _LEDGER_CHECKSUMS in led else 0,
                "crc32_units": crc_units,
            }

    def _open(self, mode: str) -> h5py.File:
        # No raw-data chunk cache: every round writes whole slices at once, so the cache saves nothing,
        # and without it a write that fails (a full disk) fails in the write call, where it is reported —
        # not later when HDF5 evicts the chunk, where the error is only printed and the dirty chunk
        # crashes the library's shutdown at MPI_Finalize.
        if self.writer_kind == "mpio":
            return h5py.File(self.path, mode, driver="mpio", comm=self.comm, libver=_LIBVER, rdcc_nbytes=0)
        return h5py.File(self.path, mode, libver=_LIBVER, rdcc_nbytes=0)

    def _open_and_setup(self, plan: dict, resume: bool) -> None:
        """Open (collectively for mpio, rank 0 for serial) and write the layout."""
        f = self._file = self._open("r+" if resume else "w")
        if not resume:
            f.attrs["schema_version"] = np.int64(SCHEMA_VERSION)
            f.attrs["created"] = plan["time"]
            f.attrs["complete"] = np.bool_(False)
            for name, spec in self.tables.items():
                rows_per_chunk = max(1, min(65536, _CHUNK_BYTES // spec.dtype.itemsize))
                dset = f.create_dataset(
                    name, shape=(0,), maxshape=(None,), dtype=spec.dtype, chunks=(rows_per_chunk,)
                )
                self._write_table_attrs(dset, spec, plan["astropy"][name])
            led = f.create_group(_LEDGER)
            led.create_dataset(
                _LEDGER_UNITS, shape=(0,), maxshape=(None,), dtype=f"S{UNIT_KEY_BYTES}", chunks=(1024,)
            )
            led.attrs["rounds"] = np.int64(0)
            led.attrs["n_units"] = np.int64(0)
            for name in self.tables:
                led.attrs[f"rows_{name}"] = np.int64(0)
        else:
            f.attrs["resumed"] = plan["time"]
            for name in self.tables:
                f[name].resize((plan["counts"][name],))
            f[_LEDGER][_LEDGER_UNITS].resize((len(plan["units"]),))
        led = f[_LEDGER]
        if _LEDGER_ATTEMPTS not in led:
            led.create_dataset(_LEDGER_ATTEMPTS, shape=(0,), maxshape=(None,), dtype=_attempt_dtype(len(self.tables)),
                               chunks=(256,))
            led.attrs["n_attempts"] = np.int64(0)
        if _LEDGER_CHECKSUMS not in led:
            led.create_dataset(_LEDGER_CHECKSUMS, shape=(0,), maxshape=(None,), dtype=_CHECKSUM_DTYPE, chunks=(1024,))
            led.attrs["n_checksums"] = np.int64(0)
        for name in ("crc32_units", "crc32_attempts"):  # created once: rounds only overwrite them in place
            if name not in led.attrs:
                led.attrs[name] = np.uint32(0)
        led[_LEDGER_ATTEMPTS].resize((len(plan["attempts"]),))
        led[_LEDGER_CHECKSUMS].resize((int(plan["n_checksums"]),))
        f.attrs["writer"] = self.writer_kind
        f.attrs["tables"] = json.dumps(list(self.tables))
        f.attrs["n_resumes"] = np.int64(plan["n_resumes"])
        for key, value in plan["attrs"].items():
            f.attrs[key] = value
        for name, (text, scalars) in plan["json_groups"].items():
            if name in f:
                del f[name]
            grp = f.create_group(name)
            grp.attrs["json"] = text
            for key, value in scalars.items():
                if key != "json":
                    grp.attrs[key] = value
        f.flush()

    @staticmethod
    def _write_table_attrs(dset: h5py.Dataset, spec: TableSpec, astropy_header: list[bytes] | None) -> None:
        dset.attrs["units"] = json.dumps(spec.units)
        for col, unit in spec.units.items():
            dset.attrs[f"unit_{col}"] = unit
        dset.attrs["sort_key"] = spec.sort_key
        if astropy_header is not None:
            dset.attrs[_ASTROPY_META] = np.array(astropy_header)

    def _io_step(self, fn: Any, what: str) -> None:
        """Run an I/O step on the ranks that hold the file; raise collectively on failure.

        mpio: every rank runs ``fn`` (collective HDF5 calls inside). serial:
        rank 0 runs it and broadcasts success or the error.
        """
        error, agreed = None, False
        if self.writer_kind == "mpio" or self.rank == 0:
            try:
                fn()
            except CatalogError as exc:  # raised by _agreed on every rank alike (mpio)
                error, agreed = str(exc), True
                with _quiet_hdf5_handles():
                    traceback.clear_frames(exc.__traceback__)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                error = f"{self.path}: {what}: {_hdf5_reason(exc)}"
                with _quiet_hdf5_handles():
                    traceback.clear_frames(exc.__traceback__)  # no HDF5 handle outlives the failed step
        if self.writer_kind == "serial":
            error = self.comm.bcast(error, root=0)
        elif not agreed:  # a step failed on this rank outside _agreed, or succeeded here: make sure of the others
            self._agree_status(error, what)
        if error is not None:
            raise CatalogError(error)

    # ------------------------------------------------------------------ queries

    def finished_units(self) -> set[str]:
        """Keys of all units recorded as finished (done or failed) in the ledger (local; not collective).

        Returns
        -------
        set of str
            Same on every rank: keys committed by earlier runs (resume) and by
            completed :meth:`write_round` calls of this one.
        """
        return set(self._finished)

    def failed_units(self) -> set[str]:
        """Keys of the finished units whose last attempt failed (local; not collective).

        Returns
        -------
        set of str
            A subset of :meth:`finished_units`; a resumed run may retry them.
        """
        return set(self._failed)

    def committed_rows(self) -> dict[str, int]:
        """Committed row count per table (local; not collective)."""
        return dict(self._counts)

    @property
    def rounds(self) -> int:
        """Number of completed write rounds recorded in the file (all runs)."""
        return self._rounds

    # ------------------------------------------------------------------ rounds

    def _prepare_rows(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = sorted(set(rows) - set(self.tables))
        if unknown:
            raise CatalogError(f"{self.path}: write_round got rows for undeclared table(s) {unknown}")
        out: dict[str, np.ndarray] = {}
        for name, spec in self.tables.items():
            arr = rows.get(name)
            if arr is None:
                out[name] = spec.empty(0)
                continue
            arr = np.asarray(arr)
            if arr.ndim != 1:
                raise CatalogError(f"{self.path}: table {name!r}: rows must be 1-D, got shape {arr.shape}")
            if len(arr) == 0:
                out[name] = spec.empty(0)
                continue
            if arr.dtype == spec.dtype:
                out[name] = np.ascontiguousarray(arr)
                continue
            if arr.dtype.names is None or set(arr.dtype.names) != set(spec.dtype.names):
                raise CatalogError(
                    f"{self.path}: table {name!r}: rows have columns {arr.dtype.names}, "
                    f"expected {spec.dtype.names}"
                )
            packed = spec.empty(len(arr))
            for col in spec.dtype.names:
                src, dst = arr.dtype.fields[col][0], spec.dtype.fields[col][0]
                if src.shape != dst.shape or not np.can_cast(src.base, dst.base, "safe"):
                    raise CatalogError(
                        f"{self.path}: table {name!r}, column {col!r}: rows have dtype {src}, "
                        f"declared {dst} (no safe cast)"
                    )
                packed[col] = arr[col]
            out[name] = packed
        return out

    def write_round(self, rows: Mapping[str, np.ndarray], finished_units: Sequence[str],
                    failed_units: Sequence[str] = (), unit_rows: Sequence[Mapping[str, int]] | None = None) -> None:
        """Append each rank's rows to the tables and commit a ledger entry. COLLECTIVE.

        Parameters
        ----------
        rows : dict of str -> ndarray, shape (n_rows,)
            This rank's new rows per table, with the table's structured dtype
            (or one with the same columns that casts safely). Tables left out,
            or given empty arrays, get no rows from this rank.
        finished_units : list of str
            Keys (≤ :data:`UNIT_KEY_BYTES` bytes in UTF-8) of the units this
            rank completed since the last round — done or failed; their rows
            must be in ``rows`` of this round or earlier ones. May be empty.
        failed_units : list of str, optional
            The keys of ``finished_units`` whose unit failed as a whole (its
            rows say why); recorded apart, so a resumed run may retry them
            (:meth:`failed_units`).
        unit_rows : list of dict of str -> int, optional
            Rows each unit of ``finished_units`` contributed per table, in the
            order of the rows in ``rows``. Recorded in ``/ledger/attempts`` so
            that :meth:`finalize` can drop the rows of a failed attempt that a
            later run retried; without it the rows are not attributed.

        Raises
        ------
        CatalogError
            On every rank, if any rank passed invalid rows or keys (nothing is
            written then), or if the write failed, or the writer is closed.

        Notes
        -----
        Rows of rank ``r`` are placed after those of ranks ``< r`` in this
        round; the final order is fixed by :meth:`finalize`. Order of a round:
        (1) resize tables, write rows, flush; (2) append the new unit keys to
        ``/ledger/units``, the attempts and the rows' CRC-32 checksums; (3) set
        ``/ledger`` attributes ``rows_<table>``, ``n_units``, ``rounds``; flush.
        """
        error: str | None = None
        prepared: dict[str, np.ndarray] = {}
        units: list[str] = []
        local_attempts: list[tuple] = []
        try:
            if self._closed:
                raise CatalogError(f"{self.path}: write_round on a closed CatalogWriter")
            prepared = self._prepare_rows(rows)
            for key in finished_units:
                if not isinstance(key, str):
                    raise CatalogError(f"{self.path}: finished unit key must be str, got {key!r}")
                if len(key.encode("utf-8")) > UNIT_KEY_BYTES:
                    raise CatalogError(
                        f"{self.path}: finished unit key {key[:40]!r}... is longer than {UNIT_KEY_BYTES} bytes"
                    )
                units.append(key)
            unknown = sorted(set(failed_units) - set(units))
            if unknown:
                raise CatalogError(f"{self.path}: failed unit(s) {unknown[:3]} are not among the finished units")
            local_attempts = self._local_attempts(prepared, units, set(failed_units), unit_rows)
        except CatalogError as exc:
            error = str(exc)
        _agree(self.comm, error)

        local_counts = [len(prepared[name]) for name in self.tables]
        crcs = [_crc32(prepared[name]) for name in self.tables]
        gathered = self.comm.allgather((local_counts, units, local_attempts, crcs))
        all_counts = np.array([g[0] for g in gathered], dtype=np.int64).reshape(self.size, len(self.tables))
        new_units = sorted({u for g in gathered for u in g[1]} - self._finished)
        new_counts = {
            name: self._counts[name] + int(all_counts[:, i].sum()) for i, name in enumerate(self.tables)
        }
        attempts, checksums = self._round_records(gathered, all_counts)
        need = sum(int(all_counts[:, i].sum()) * spec.dtype.itemsize for i, spec in enumerate(self.tables.values()))
        need += len(new_units) * UNIT_KEY_BYTES + attempts.nbytes + checksums.nbytes
        _agree(self.comm, self._space_check(need) if self.rank == 0 else None)

        if self.writer_kind == "mpio":
            step = lambda: self._round_mpio(prepared, all_counts, new_counts, new_units, attempts, checksums)  # noqa: E731
        else:
            pieces = {name: self.comm.gather(prepared[name], root=0) for name in self.tables}
            step = lambda: self._round_serial(pieces, new_counts, new_units, attempts, checksums)  # noqa: E731
        self._io_step(step, "write_round failed")

        self._counts = new_counts
        self._finished.update(new_units)
        self._n_units += len(new_units)
        self._rounds += 1
        self._attempt_parts.append(attempts)
        self._n_attempts += len(attempts)
        _update_failed(self._failed, attempts)  # the last attempt at a unit decides whether it counts as failed
        self._n_checksums += len(checksums)

    def _space_check(self, need: int) -> str | None:
        """Rank 0: an error when the output's filesystem has clearly too little room for ``need`` bytes.

        Checked before a round's collective writes, so a full disk stops every
        rank with one line, where a write failing on one rank inside a
        collective call could not be agreed on. HDF5's metadata and chunk
        rounding are covered by a margin (twice the data plus 1 MiB).
        """
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except (OSError, AttributeError):  # no statvfs: the writes themselves report a full disk
            return None
        free = st.f_bavail * st.f_frsize
        if free < 2 * need + (1 << 20):
            return (f"{self.path}: no space left on device: a write round needs about {need // 1024 + 1} KiB, "
                    f"{free // 1024} KiB are free")
        return None

    def _local_attempts(self, prepared: dict[str, np.ndarray], units: list[str], failed: set[str],
                        unit_rows: Sequence[Mapping[str, int]] | None) -> list[tuple]:
        """(key, failed, local start per table, count per table) of this rank's units in this round."""
        n_tables = len(self.tables)
        if unit_rows is None or len(unit_rows) != len(units):
            if unit_rows is not None:
                raise CatalogError(f"{self.path}: unit_rows has {len(unit_rows)} entries for {len(units)} units")
            return [(k, k in failed, [-1] * n_tables, [-1] * n_tables) for k in units]
        out = []
        offset = {name: 0 for name in self.tables}
        for key, counts in zip(units, unit_rows):
            starts, ns = [], []
            for name in self.tables:
                n = int(counts.get(name, 0))
                starts.append(offset[name])
                ns.append(n)
                offset[name] += n
            out.append((key, key in failed, starts, ns))
        for name in self.tables:
            if offset[name] != len(prepared[name]):
                raise CatalogError(f"{self.path}: unit_rows account for {offset[name]} rows of {name!r}, "
                                   f"the round has {len(prepared[name])}")
        return out

    def _round_records(self, gathered: list, all_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The round's ``/ledger/attempts`` and ``/ledger/checksums`` entries (same on every rank)."""
        names = list(self.tables)
        attempts, checksums = [], []
        for r, (counts, _, local_attempts, crcs) in enumerate(gathered):
            base = [self._counts[n] + int(all_counts[:r, i].sum()) for i, n in enumerate(names)]
            for key, failed, starts, ns in local_attempts:
                abs_starts = [base[i] + s if s >= 0 else -1 for i, s in enumerate(starts)]
                attempts.append((key.encode("utf-8"), failed, self._rounds, abs_starts, ns))
            for i, n in enumerate(names):
                if counts[i]:
                    checksums.append((n.encode(), self._rounds, base[i], counts[i], crcs[i]))
        return (np.array(attempts, dtype=_attempt_dtype(len(names))),
                np.array(checksums, dtype=_CHECKSUM_DTYPE))

    def _round_mpio(
        self, prepared: dict[str, np.ndarray], all_counts: np.ndarray, new_counts: dict[str, int], new_units: list[str],
        attempts: np.ndarray, checksums: np.ndarray,
    ) -> None:
        for i, name in enumerate(self.tables):
            dset = self._handle(name)
            old = self._counts[name]
            if new_counts[name] != old:
                self._resize(dset, new_counts[name])
                offset = old + int(all_counts[: self.rank, i].sum())
                self._write_rows(dset, offset, prepared[name])
        self._flush()
        self._commit_ledger(new_counts, new_units, attempts, checksums)

    def _round_serial(
        self, pieces: dict[str, list[np.ndarray]], new_counts: dict[str, int], new_units: list[str],
        attempts: np.ndarray, checksums: np.ndarray,
    ) -> None:
        for name in self.tables:
            old = self._counts[name]
            if new_counts[name] != old:
                data = np.concatenate(pieces[name])
                dset = self._handle(name)
                dset.resize((new_counts[name],))
                dset[old : new_counts[name]] = data
        self._flush()
        self._commit_ledger(new_counts, new_units, attempts, checksums)

    def _resize(self, dset: h5py.Dataset, n: int) -> None:
        """Resize a table (collective under mpio, where it may allocate space), agreed on every rank."""
        if self.writer_kind == "mpio":
            self._agreed(lambda: dset.resize((n,)), f"cannot extend /{dset.name.lstrip('/')}")
        else:
            dset.resize((n,))

    def _write_rows(self, dset: h5py.Dataset, start: int, data: np.ndarray) -> None:
        """Collective row write (mpio), agreed on every rank before the next collective call."""
        self._agreed(lambda: _collective_write(dset, start, data), f"cannot write /{dset.name.lstrip('/')}")

    def _flush(self) -> None:
        """Flush the file; under mpio every rank learns whether any rank's flush failed."""
        if self.writer_kind == "mpio":
            self._agreed(self._file.flush, "cannot flush")
        else:
            self._file.flush()

    def _agreed(self, fn: Any, what: str) -> None:
        """Run one collective HDF5 call, then agree on its outcome on every rank (mpio).

        A rank whose part of a collective write fails (a full disk seen by
        the rank that aggregates the write) would otherwise leave the other
        ranks waiting inside the next collective call. After each call the
        ranks exchange a status with a non-blocking all-reduce; a rank that
        waits for it longer than :data:`IO_AGREE_TIMEOUT` seconds (a rank
        stuck inside the collective call itself) aborts the job instead of
        hanging it.

        Raises
        ------
        CatalogError
            On every rank when any rank's call failed: the message names the
            failing rank(s) and the reason.
        """
        error = None
        try:
            fn()
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            error = f"{self.path}: {what}: {_hdf5_reason(exc)}"
            traceback.clear_frames(exc.__traceback__)
        self._agree_status(error, what)

    def _agree_status(self, error: str | None, what: str) -> None:
        """Agree on every rank whether a step failed anywhere (mpio), aborting rather than hanging; see :meth:`_agreed`."""
        if self.writer_kind != "mpio" or self.size == 1:
            if error:
                raise CatalogError(error)
            return
        from mpi4py import MPI

        flag = np.array([1 if error else 0], dtype=np.int32)
        total = np.zeros(1, dtype=np.int32)
        req = self.comm.Iallreduce(flag, total, op=MPI.SUM)
        deadline = time.monotonic() + IO_AGREE_TIMEOUT
        spin_until = time.monotonic() + 0.05  # healthy ranks agree within microseconds: no sleep at first
        while not req.Test():
            now = time.monotonic()
            if now < spin_until:
                continue
            if now > deadline:
                line = (f"hpcblend: error: {error or self.path + ': ' + what}: rank {self.rank} waited "
                        f"{IO_AGREE_TIMEOUT:.0f} s for the other ranks after a failed collective write; "
                        f"aborting the job\n")
                os.write(2, line.encode("utf-8", "replace"))  # one write: lines of ranks never run together
                time.sleep(0.5)  # let the line reach mpirun before the abort tears the job down
                self.comm.Abort(2)
            time.sleep(0.001)
        if int(total[0]):
            _agree(self.comm, error)

    def _handle(self, name: str) -> Any:
        """The open dataset or group ``name``, kept open until the file closes.

        One handle per object for the writer's life: no reopening each round,
        and no handle released by the garbage collector at an arbitrary
        moment — :meth:`close` and :meth:`abandon` release them all at once
        (quietly, after a failure such as a full disk).
        """
        h = self._handles.get(name)
        if h is None:
            h = self._handles[name] = self._file[name]
        return h

    def _append(self, dset: h5py.Dataset, start: int, data: np.ndarray) -> None:
        """Append ``data`` (the same on every rank) at ``start`` of a ledger dataset; rank 0 writes it."""
        self._resize(dset, start + len(data))
        if self.writer_kind == "mpio":
            self._write_rows(dset, start, data if self.rank == 0 else data[:0])
        elif len(data):
            dset[start : start + len(data)] = data

    def _commit_ledger(self, new_counts: dict[str, int], new_units: list[str], attempts: np.ndarray,
                       checksums: np.ndarray) -> None:
        led = self._handle(_LEDGER)
        n_units = self._n_units + len(new_units)
        if new_units:
            data = np.array([u.encode("utf-8") for u in new_units], dtype=f"S{UNIT_KEY_BYTES}")
            self._append(self._handle(f"{_LEDGER}/{_LEDGER_UNITS}"), self._n_units, data)
            self._crc_units = zlib.crc32(data.tobytes(), self._crc_units) & 0xFFFFFFFF
        n_att = self._n_attempts
        if len(attempts):
            self._append(self._handle(f"{_LEDGER}/{_LEDGER_ATTEMPTS}"), n_att, attempts)
        if len(checksums):
            self._append(self._handle(f"{_LEDGER}/{_LEDGER_CHECKSUMS}"), self._n_checksums, checksums)
        self._crc_attempts = zlib.crc32(np.ascontiguousarray(attempts).tobytes(), self._crc_attempts) & 0xFFFFFFFF
        led.attrs.modify("crc32_units", np.uint32(self._crc_units))
        led.attrs.modify("crc32_attempts", np.uint32(self._crc_attempts))
        led.attrs.modify("n_attempts", np.int64(n_att + len(attempts)))
        led.attrs.modify("n_checksums", np.int64(self._n_checksums + len(checksums)))
        for name in self.tables:
            led.attrs.modify(f"rows_{name}", np.int64(new_counts[name]))
        led.attrs.modify("n_units", np.int64(n_units))
        led.attrs.modify("rounds", np.int64(self._rounds + 1))
        self._flush()

    # ------------------------------------------------------------------ finish

    def finalize(self, unique: Sequence[str] = ()) -> None:
        """Drop superseded attempts, sort every table, check ids, mark the file complete, close it. COLLECTIVE.

        Rows written by an attempt at a unit that a later attempt replaced
        (a failed unit retried by ``--resume``; see ``/ledger/attempts``) are
        dropped. Each table is sorted stably by ``sort_key``, ties broken by
        the rows' raw bytes, so the stored data depend only on the multiset
        of rows written. mpio: every rank reads the whole table (memory: one
        table per rank) and writes its contiguous slice of the sorted order
        collectively; serial: rank 0 does it. The ledger's checksums are
        replaced by one CRC-32 per sorted table. Then root attributes
        ``complete=True`` and ``finished`` (UTC ISO) are set and the file is
        closed.

        Parameters
        ----------
        unique : sequence of str, optional
            Tables whose sort key must be unique (ids). A duplicate leaves the
            file incomplete and raises.

        Raises
        ------
        CatalogError
            If the writer is already closed, on an I/O failure (every rank), or
            when a table of ``unique`` holds one key twice: the message names
            the key and both rows' ``source_file`` (or row numbers).
        """
        error = f"{self.path}: finalize on a closed CatalogWriter" if self._closed else None
        unknown = sorted(set(unique) - set(self.tables))
        if unknown and error is None:
            error = f"{self.path}: finalize: unique table(s) {unknown} are not declared"
        _agree(self.comm, error)
        stamp = self.comm.bcast(_utc_now() if self.rank == 0 else None, root=0)
        self._io_step(lambda: self._finalize_io(stamp, set(unique)), "finalize failed")
        self._finalized = True
        self.close()

    def _finalize_io(self, stamp: str, unique: set) -> None:
        f = self._file
        sums = []
        all_attempts = np.concatenate(self._attempt_parts)
        for ti, (name, spec) in enumerate(self.tables.items()):
            dset = self._handle(name)
            n = self._counts[name]
            data = dset[:n] if n else spec.empty(0)
            if n and self._n_attempts:
                data = data[~_superseded_rows(all_attempts, ti, n)]
            # ties in the sort key: order by raw row bytes first, then stable sort by key
            order = np.argsort(np.ascontiguousarray(data).view(f"V{spec.dtype.itemsize}"), kind="stable")
            order = order[np.argsort(data[spec.sort_key][order], kind="stable")]
            data = data[order]
            if name in unique:
                _check_unique(self.path, name, data, spec.sort_key)
            if self.writer_kind == "mpio" and n:
                # nobody may overwrite rows before every rank has read them
                self.comm.Barrier()
            if len(data) != n:
                self._resize(dset, len(data))
            if self.writer_kind == "mpio" and n:
                m = len(data)
                lo, hi = (self.rank * m) // self.size, ((self.rank + 1) * m) // self.size
                self._write_rows(dset, lo, data[lo:hi])
            elif n:
                dset[: len(data)] = data
            self._counts[name] = len(data)
            sums.append((name.encode(), -1, 0, len(data), _crc32(data)))
        led = self._handle(_LEDGER)
        # the whole-table checksums replace the rounds' ones at the start of the dataset; entries past
        # n_checksums are ignored by readers (no shrinking of datasets: parallel HDF5 does not like it)
        ck = self._handle(f"{_LEDGER}/{_LEDGER_CHECKSUMS}")
        sums = np.array(sums, dtype=_CHECKSUM_DTYPE)
        if ck.shape[0] < len(sums):
            self._resize(ck, len(sums))
        if self.writer_kind == "mpio":
            self._write_rows(ck, 0, sums if self.rank == 0 else sums[:0])
        else:
            ck[: len(sums)] = sums
        led.attrs.modify("n_checksums", np.int64(len(sums)))
        for name in self.tables:
            led.attrs.modify(f"rows_{name}", np.int64(self._counts[name]))
        self._flush()
        f.attrs.modify("complete", np.bool_(True))
        f.attrs.modify("finished", stamp)
        self._flush()

    def close(self) -> None:
        """Close the file without finalizing (a later run may resume). COLLECTIVE; idempotent."""
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._file is not None:
                f, self._file = self._file, None
                self._handles.clear()
                f.close()

        self._io_step(_close, "close failed")
        self.comm.Barrier()

    def abandon(self) -> None:
        """Close the file after a failure without flushing or agreeing (local; never raises).

        For error paths where the ranks already agree that the run is over
        (a collective :class:`CatalogError`) or where this is the only rank:
        whatever the last completed round committed stays valid for
        ``--resume``; HDF5 errors while closing (a full disk) are ignored.
        """
        self._closed = True
        f, self._file = self._file, None
        with _quiet_hdf5_handles():  # HDF5 errors of handles closed on a full disk: already reported
            try:
                self._handles.clear()
            except Exception:  # noqa: BLE001 - a handle's close failed: the file is being given up anyway
                pass
            if f is not None:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - the file is being given up; the ledger decides what counts
                    pass

    def __enter__(self) -> "CatalogWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "finalized" if self._finalized else ("closed" if self._closed else "open")
        return (
            f"CatalogWriter({self.path!r}, writer={self.writer_kind!r}, ranks={self.size}, "
            f"tables={list(self.tables)}, rounds={self._rounds}, {state})"
        )


# --------------------------------------------------------------------------- readers


@contextlib.contextmanager
def append_group(path: str | os.PathLike, name: str, version_attr: str, version: int):
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


def open_catalog(path: str | os.PathLike) -> h5py.File:
    """Open a catalog read-only after checking it is an HDF5 catalog of this schema.

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
        If ``schema_version`` is not one of :data:`READABLE_SCHEMA_VERSIONS`.
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
        try:
            version = int(f.attrs["schema_version"])
        except (TypeError, ValueError) as exc:
            raise CatalogError(
                f"{path}: root attribute schema_version={f.attrs['schema_version']!r} is not an integer"
            ) from exc
        if version not in READABLE_SCHEMA_VERSIONS:
            age = "newer" if version > SCHEMA_VERSION else "older"
            raise SchemaVersionError(
                f"{path}: catalog schema_version is {version}, this hpcblend reads schema_version "
                f"{', '.join(str(v) for v in READABLE_SCHEMA_VERSIONS)}: the file is {age} than this hpcblend "
                + ("(upgrade hpcblend)" if version > SCHEMA_VERSION else "(re-run or convert the file)")
            )
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
        n = int(f[_LEDGER].attrs[f"rows_{name}"])
    except KeyError as exc:
        raise CatalogError(f"{f.filename}: ledger has no committed row count 'rows_{name}'") from exc
    return min(n, f[name].shape[0])


def read_table(path_or_file: str | os.PathLike | h5py.File, name: str) -> np.ndarray:
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
        Structured array with the table's dtype; rows beyond the ledger's
        ``rows_<name>`` (a half-written round) are left out.

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
            _verify_checksums(f, name, data)
            return data
        except OSError as exc:
            raise CatalogError(f"{f.filename}: cannot read table {name!r}: {exc}") from exc
    with open_catalog(path_or_file) as f:
        return read_table(f, name)


def read_ledger(path: str | os.PathLike) -> tuple[set[str], dict[str, int]]:
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
        if _LEDGER not in f:
            raise CatalogError(f"{f.filename}: no /{_LEDGER} group")
        try:
            led = f[_LEDGER]
            n_units = int(led.attrs.get("n_units", 0))
            units = {u.decode("utf-8") for u in led[_LEDGER_UNITS][:n_units]}
            counts = {k[len("rows_"):]: int(v) for k, v in led.attrs.items() if k.startswith("rows_")}
        except (OSError, KeyError) as exc:
            raise CatalogError(f"{f.filename}: cannot read /{_LEDGER}: {exc}") from exc
        return units, counts


def read_json_group(path: str | os.PathLike, name: str) -> dict:
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
        return json.loads(_attr_to_py(f[name].attrs["json"]))


def read_bands(path: str | os.PathLike) -> tuple:
    """The run's band names (the catalog's root attribute ``bands``, comma-separated).

    Raises
    ------
    CatalogError, SchemaVersionError
        As :func:`open_catalog`.
    """
    with open_catalog(path) as f:
        value = _attr_to_py(f.attrs.get("bands", ""))
    return tuple(b for b in str(value).split(",") if b)


def verify_catalog(path: str | os.PathLike) -> dict:
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
        names = json.loads(_attr_to_py(f.attrs.get("tables", "[]")))
        counts = {name: len(read_table(f, name)) for name in names}
        if _LEDGER in f:
            _verify_ledger_units(f)
        return counts
