"""The writer of a run's catalog: :class:`CatalogWriter`, collective over MPI, in write rounds with a restart ledger.

Rows arrive in *write rounds* (:meth:`CatalogWriter.write_round`), which every
rank enters together; each round writes and flushes the table rows, then the
ledger (:mod:`hpcblend.io.ledger`), so an interrupted run can be resumed from
the last completed round (``resume=True``). :meth:`CatalogWriter.finalize`
drops rows of superseded attempts and sorts every table, so that the bytes of
the table data depend only on the set of rows written, never on the number of
ranks, on which rank wrote which rows, or on the writer kind. Every I/O step's
outcome is agreed on all ranks (:class:`hpcblend.io.collective.CollectiveFile`).
The file layout is described in :mod:`hpcblend.io.catalog`.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence

import h5py
import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.catalog_read import open_catalog
from hpcblend.io.collective import CollectiveFile, agree, quiet_hdf5_handles, space_error
from hpcblend.io.ledger import (CHECKSUM_DTYPE, LEDGER_ATTEMPTS, LEDGER_CHECKSUMS, LEDGER_GROUP, LEDGER_UNITS,
                                UNIT_KEY_BYTES, attempt_dtype, checked_unit_keys, crc32, create_ledger, local_attempts,
                                read_resume_state, reset_ledger, round_records, superseded_rows, update_failed)
from hpcblend.io.tables import (TABLE_VERSION_ATTR, TableSpec, astropy_header, attr_value, check_name, check_unique,
                                json_group_texts)
from hpcblend.io.versions import SCHEMA_VERSION, check_resumable

__all__ = ["CatalogWriter"]

_ASTROPY_META = "__table_column_meta__"
_RESERVED_ROOT_ATTRS = frozenset(
    {"schema_version", "created", "complete", "finished", "writer", "tables", "n_resumes", "resumed"}
)
_CHUNK_BYTES = 256 * 1024
_LIBVER = ("v108", "v110")  # 1.8+ format: attributes larger than 64 KiB are allowed


def _utc_now() -> str:
    """Current UTC time as an ISO-8601 string with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CatalogWriter(CollectiveFile):
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
        (resume) the file's ``schema_version`` is not
        :data:`hpcblend.io.versions.SCHEMA_VERSION`.

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
            from mpi4py import MPI  # here, not at the top: importing mpi4py initialises MPI (start-up order)

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
            specs = self._checked_args(tables, attrs, json_groups, writer)
        except CatalogError as exc:
            error = str(exc)
        agree(comm, error)
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

        plan = self._agreed_plan(attrs or {}, json_groups or {}, resume)
        self._counts: dict[str, int] = dict(plan["counts"])
        self._finished: set[str] = set(plan["units"])
        self._n_units: int = len(plan["units"])
        self._rounds: int = int(plan["rounds"])
        # the ledger's attempts, one array per round (concatenated only when needed: rounds stay O(round))
        self._attempt_parts: list[np.ndarray] = [plan["attempts"]]
        self._n_attempts: int = len(plan["attempts"])
        self._failed: set[str] = update_failed(set(), plan["attempts"])
        self._n_checksums: int = int(plan["n_checksums"])
        self._crc_units: int = int(plan.get("crc32_units", 0))
        self._crc_attempts: int = crc32(plan["attempts"])

        # --- open / create
        self._io_step(lambda: self._open_and_setup(plan, resume), "cannot create" if not resume else "cannot resume")

    # ------------------------------------------------------------------ setup

    def _checked_args(self, tables: Sequence[TableSpec], attrs: Optional[Mapping[str, Any]],
                      json_groups: Optional[Mapping[str, Any]], writer: str) -> dict:
        """The tables by name, after checking this rank's arguments (local; raises CatalogError)."""
        if writer not in ("auto", "mpio", "serial"):
            raise CatalogError(f"{self.path}: writer must be 'auto', 'mpio' or 'serial', got {writer!r}")
        if writer == "mpio" and not h5py.get_config().mpi:
            raise CatalogError(
                f"{self.path}: writer='mpio' requested but h5py {h5py.__version__} was built without MPI"
            )
        specs: dict[str, TableSpec] = {}
        for spec in tables:
            if not isinstance(spec, TableSpec):
                raise CatalogError(f"{self.path}: tables must be TableSpec objects, got {spec!r}")
            if spec.name in specs:
                raise CatalogError(f"{self.path}: table {spec.name!r} declared twice")
            specs[spec.name] = spec
        if not specs:
            raise CatalogError(f"{self.path}: at least one table is required")
        for name in json_groups or {}:
            check_name("json group", name)
            if name in specs:
                raise CatalogError(f"{self.path}: json group {name!r} has the name of a table")
        bad_attrs = sorted(set(attrs or {}) & _RESERVED_ROOT_ATTRS)
        if bad_attrs:
            raise CatalogError(f"{self.path}: root attribute name(s) {bad_attrs} are reserved")
        return specs

    def _agreed_plan(self, attrs: Mapping[str, Any], json_groups: Mapping[str, Mapping[str, Any]],
                     resume: bool) -> dict:
        """The plan made on rank 0, broadcast (identical values on every rank, as mpio requires). COLLECTIVE."""
        plan: dict[str, Any] | None = None
        error = None
        error_cls: type[CatalogError] = CatalogError
        if self.rank == 0:
            try:
                plan = self._make_plan(attrs, json_groups, resume)
            except CatalogError as exc:
                error, error_cls = str(exc), type(exc)
            except Exception as exc:  # noqa: BLE001 - report any failure collectively
                error = f"{self.path}: cannot prepare catalog: {type(exc).__name__}: {exc}"
        plan, error, error_cls = self.comm.bcast((plan, error, error_cls), root=0)
        if error is not None:
            raise error_cls(error)
        assert plan is not None
        return plan

    def _make_plan(self, attrs: Mapping[str, Any], json_groups: Mapping[str, Mapping[str, Any]], resume: bool) -> dict:
        """Rank 0: everything needed to create or reopen the file, as plain data."""
        plan: dict[str, Any] = {"time": _utc_now()}
        plan["attrs"] = dict(attrs)
        plan["json_groups"] = json_group_texts(self.path, json_groups)
        plan["astropy"] = {name: astropy_header(spec) for name, spec in self.tables.items()}
        if resume:
            plan.update(self._inspect_existing())
        else:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise CatalogError(f"{self.path}: directory {parent} does not exist")
            plan.update(counts={n: 0 for n in self.tables}, units=[], rounds=0, n_resumes=0, crc32_units=0,
                        attempts=np.zeros(0, dtype=attempt_dtype(len(self.tables))), n_checksums=0)
        return plan

    def _inspect_existing(self) -> dict:
        """Rank 0, resume: check the existing file may be resumed and read its ledger (:func:`read_resume_state`)."""
        with open_catalog(self.path) as f:
            check_resumable(int(f.attrs["schema_version"]), self.path)
            if bool(f.attrs.get("complete", False)):
                raise CatalogError(
                    f"{self.path}: cannot resume: the catalog is complete (finalized at "
                    f"{attr_value(f.attrs.get('finished', '?'))}); write to a new file"
                )
            return read_resume_state(f, self.path, self.tables)

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
            create_ledger(f, list(self.tables))
        else:
            f.attrs["resumed"] = plan["time"]
            for name in self.tables:
                f[name].resize((plan["counts"][name],))
        reset_ledger(f, len(self.tables), len(plan["units"]), len(plan["attempts"]), int(plan["n_checksums"]))
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
    def _write_table_attrs(dset: h5py.Dataset, spec: TableSpec, header: list[bytes] | None) -> None:
        """A table's attributes: units (JSON and per column), sort key, format version, astropy's header."""
        dset.attrs["units"] = json.dumps(spec.units)
        for col, unit in spec.units.items():
            dset.attrs[f"unit_{col}"] = unit
        dset.attrs["sort_key"] = spec.sort_key
        if spec.version is not None:
            dset.attrs[TABLE_VERSION_ATTR] = np.int64(spec.version)
        if header is not None:
            dset.attrs[_ASTROPY_META] = np.array(header)

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
        mine: list[tuple] = []
        try:
            if self._closed:
                raise CatalogError(f"{self.path}: write_round on a closed CatalogWriter")
            unknown = sorted(set(rows) - set(self.tables))
            if unknown:
                raise CatalogError(f"{self.path}: write_round got rows for undeclared table(s) {unknown}")
            prepared = {name: spec.conform(rows.get(name), self.path) for name, spec in self.tables.items()}
            units = checked_unit_keys(self.path, finished_units, failed_units)
            mine = local_attempts(self.path, list(self.tables), prepared, units, set(failed_units), unit_rows)
        except CatalogError as exc:
            error = str(exc)
        agree(self.comm, error)

        local_counts = [len(prepared[name]) for name in self.tables]
        crcs = [crc32(prepared[name]) for name in self.tables]
        gathered = self.comm.allgather((local_counts, units, mine, crcs))
        all_counts = np.array([g[0] for g in gathered], dtype=np.int64).reshape(self.size, len(self.tables))
        new_units = sorted({u for g in gathered for u in g[1]} - self._finished)
        new_counts = {
            name: self._counts[name] + int(all_counts[:, i].sum()) for i, name in enumerate(self.tables)
        }
        attempts, checksums = round_records(list(self.tables), self._counts, self._rounds, gathered, all_counts)
        need = sum(int(all_counts[:, i].sum()) * spec.dtype.itemsize for i, spec in enumerate(self.tables.values()))
        need += len(new_units) * UNIT_KEY_BYTES + attempts.nbytes + checksums.nbytes
        agree(self.comm, space_error(self.path, need) if self.rank == 0 else None)

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
        update_failed(self._failed, attempts)  # the last attempt at a unit decides whether it counts as failed
        self._n_checksums += len(checksums)

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

    def _commit_ledger(self, new_counts: dict[str, int], new_units: list[str], attempts: np.ndarray,
                       checksums: np.ndarray) -> None:
        led = self._handle(LEDGER_GROUP)
        n_units = self._n_units + len(new_units)
        if new_units:
            data = np.array([u.encode("utf-8") for u in new_units], dtype=f"S{UNIT_KEY_BYTES}")
            self._append(self._handle(f"{LEDGER_GROUP}/{LEDGER_UNITS}"), self._n_units, data)
            self._crc_units = crc32(data, self._crc_units)
        n_att = self._n_attempts
        if len(attempts):
            self._append(self._handle(f"{LEDGER_GROUP}/{LEDGER_ATTEMPTS}"), n_att, attempts)
        if len(checksums):
            self._append(self._handle(f"{LEDGER_GROUP}/{LEDGER_CHECKSUMS}"), self._n_checksums, checksums)
        self._crc_attempts = crc32(attempts, self._crc_attempts)
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
        agree(self.comm, error)
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
                data = data[~superseded_rows(all_attempts, ti, n)]
            data = spec.sort_rows(data)
            if name in unique:
                check_unique(self.path, name, data, spec.sort_key)
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
            sums.append((name.encode(), -1, 0, len(data), crc32(data)))
        led = self._handle(LEDGER_GROUP)
        # the whole-table checksums replace the rounds' ones at the start of the dataset; entries past
        # n_checksums are ignored by readers (no shrinking of datasets: parallel HDF5 does not like it)
        ck = self._handle(f"{LEDGER_GROUP}/{LEDGER_CHECKSUMS}")
        sums = np.array(sums, dtype=CHECKSUM_DTYPE)
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
        with quiet_hdf5_handles():  # HDF5 errors of handles closed on a full disk: already reported
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


