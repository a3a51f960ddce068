"""Declarations of catalog tables (:class:`TableSpec`) and the small conversions between Python and HDF5 attributes.

A *table* of the run catalog is one resizable compound dataset ``/<name>``; its :class:`TableSpec` gives the
row dtype (packed, so the file's bytes are deterministic), the unit of every column, the sort key that
:meth:`hpcblend.io.catalog_writer.CatalogWriter.finalize` orders it by, and optionally the table's own
format version (stored as the dataset attribute ``format_version``; see :mod:`hpcblend.io.versions`). The
helpers here turn attribute values into Python values and JSON metadata into scalar attributes; they know
nothing about files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.json_values import json_default
from hpcblend.io.versions import SCHEMA_VERSION

__all__ = [
    "json_group_texts",
    "LEDGER_GROUP",
    "TABLE_VERSION_ATTR",
    "TableSpec",
    "check_name",
    "check_unique",
    "same_fields",
    "attr_value",
    "flatten_scalars",
    "astropy_header",
]

#: Name of the restart ledger's group (reserved: no table or JSON group may take it).
LEDGER_GROUP: str = "ledger"
#: Dataset attribute holding a table's own format version (tables declared with ``version``).
TABLE_VERSION_ATTR: str = "format_version"

_ALLOWED_KINDS = frozenset("biufcS")


def _packed(dtype: np.dtype) -> np.dtype:
    """The same fields as ``dtype`` without padding (offsets packed, no alignment)."""
    return np.dtype([(name, dtype.fields[name][0]) for name in dtype.names])


def same_fields(a: np.dtype, b: np.dtype) -> bool:
    """True when two structured dtypes have the same field names, order and field types."""
    if a.names is None or b.names is None or a.names != b.names:
        return False
    return all(a.fields[n][0] == b.fields[n][0] for n in a.names)


def check_name(kind: str, name: str) -> None:
    """Raise :class:`~hpcblend.errors.CatalogError` unless ``name`` may name a table or group of the catalog.

    Raises
    ------
    CatalogError
        Empty, holds ``/`` or ``.``, starts with ``__``, or is the ledger's name.
    """
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{kind} name must be a non-empty string, got {name!r}")
    if "/" in name or "." in name or name.startswith("__") or name == LEDGER_GROUP:
        raise CatalogError(
            f"{kind} name {name!r} is not allowed (no '/' or '.', no leading '__', not {LEDGER_GROUP!r})"
        )


def flatten_scalars(d: Mapping[str, Any], prefix: str = "") -> dict:
    """Scalar leaves of a JSON-like mapping, nested keys joined with '.' (values as HDF5 attributes take them)."""
    out: dict = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_scalars(value, name + "."))
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


def attr_value(value: Any) -> Any:
    """An HDF5 attribute value as a Python value: bytes decoded (UTF-8, errors replaced), NumPy scalars unwrapped."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


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
    version : int, optional
        The table's own format version (:mod:`hpcblend.io.versions`), written
        as the dataset attribute ``format_version``; None (default): the table
        is versioned by the catalog's ``schema_version`` alone.

    Raises
    ------
    CatalogError
        If the name, dtype, units or sort key are invalid.
    """

    name: str
    dtype: np.dtype
    units: dict = field(default_factory=dict, hash=False)
    sort_key: str = "id"
    version: Optional[int] = None

    def __post_init__(self) -> None:
        check_name("table", self.name)
        dt = self._checked_dtype()
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

    def _checked_dtype(self) -> np.dtype:
        """The packed row dtype, after checking every field's type."""
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
        return _packed(dt)

    def empty(self, n: int = 0) -> np.ndarray:
        """A zero-filled array of ``n`` rows of this table's dtype."""
        return np.zeros(n, dtype=self.dtype)

    def concatenate(self, parts) -> np.ndarray:
        """Rows of this table's dtype from many small arrays of it, in order (``np.concatenate``, fast).

        ``np.concatenate`` promotes structured dtypes field by field for every
        part (~0.2 ms each, the whole of a tract patch's row assembly); the
        parts are joined here as raw rows instead. A part of another dtype
        goes through :meth:`conform`-like casting by ``np.concatenate``.

        Parameters
        ----------
        parts : sequence of ndarray, shape (n_i,)

        Returns
        -------
        ndarray, shape (Σ n_i,), dtype :attr:`dtype`
        """
        parts = list(parts)
        if not parts:
            return self.empty(0)
        if all(isinstance(p, np.ndarray) and p.dtype == self.dtype and p.ndim == 1 for p in parts):
            raw = np.dtype((np.void, self.dtype.itemsize))
            return np.concatenate([np.ascontiguousarray(p).view(raw) for p in parts]).view(self.dtype)
        return np.concatenate(parts).astype(self.dtype, copy=False)

    def conform(self, rows: Any, path: str) -> np.ndarray:
        """Rows given for this table as a contiguous array of exactly :attr:`dtype`.

        Parameters
        ----------
        rows : ndarray, shape (n,), or None
            Structured rows with the table's columns (any order, any field
            types that cast safely); None or empty gives zero rows.
        path : str
            The catalog, for messages.

        Returns
        -------
        ndarray, shape (n,), dtype :attr:`dtype`

        Raises
        ------
        CatalogError
            Rows not 1-D, other columns, or a column that does not cast safely.
        """
        if rows is None:
            return self.empty(0)
        arr = np.asarray(rows)
        if arr.ndim != 1:
            raise CatalogError(f"{path}: table {self.name!r}: rows must be 1-D, got shape {arr.shape}")
        if len(arr) == 0:
            return self.empty(0)
        if arr.dtype == self.dtype:
            return np.ascontiguousarray(arr)
        if arr.dtype.names is None or set(arr.dtype.names) != set(self.dtype.names):
            raise CatalogError(f"{path}: table {self.name!r}: rows have columns {arr.dtype.names}, "
                               f"expected {self.dtype.names}")
        packed = self.empty(len(arr))
        for col in self.dtype.names:
            src, dst = arr.dtype.fields[col][0], self.dtype.fields[col][0]
            if src.shape != dst.shape or not np.can_cast(src.base, dst.base, "safe"):
                raise CatalogError(f"{path}: table {self.name!r}, column {col!r}: rows have dtype {src}, "
                                   f"declared {dst} (no safe cast)")
            packed[col] = arr[col]
        return packed

    def sort_rows(self, data: np.ndarray) -> np.ndarray:
        """``data`` sorted stably by :attr:`sort_key`, ties ordered by the rows' raw bytes.

        The result depends only on the multiset of rows, never on their order in ``data``.
        """
        # ties in the sort key: order by raw row bytes first, then stable sort by key
        order = np.argsort(np.ascontiguousarray(data).view(f"V{self.dtype.itemsize}"), kind="stable")
        order = order[np.argsort(data[self.sort_key][order], kind="stable")]
        return data[order]


def check_unique(path: str, name: str, data: np.ndarray, key: str) -> None:
    """Raise CatalogError naming both rows when sorted ``data`` holds a key twice.

    Raises
    ------
    CatalogError
        The key, the number of duplicates, and both rows' ``source_file`` (or row numbers).
    """
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


def astropy_header(spec: TableSpec) -> Optional[list]:
    """astropy's YAML table header (column units) for ``spec`` as a list of bytes lines, or None if astropy is absent."""
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


def json_group_texts(path: str, json_groups: Mapping[str, Mapping[str, Any]]) -> dict:
    """Each JSON group of a catalog as (JSON text, its scalar leaves as attributes).

    Raises
    ------
    CatalogError
        A group is not JSON-serialisable (the message names the file and the group).
    """
    groups = {}
    for name, content in json_groups.items():
        try:
            text = json.dumps(content, sort_keys=True, default=json_default)
        except (TypeError, ValueError) as exc:
            raise CatalogError(f"{path}: json group {name!r} is not JSON-serialisable: {exc}") from exc
        groups[name] = (text, flatten_scalars(json.loads(text)))
    return groups
