"""Collective HDF5 writes that every rank agrees on: a failure on one rank is raised on all, never a hang.

:class:`CollectiveFile` is the base of :class:`hpcblend.io.catalog_writer.CatalogWriter`: it holds the
communicator, the writer kind (``"mpio"``: every rank writes its slice with parallel HDF5; ``"serial"``:
rank 0 alone holds the file) and the open file, and runs each I/O step so that its outcome is agreed on
every rank (:meth:`CollectiveFile._io_step`, :meth:`CollectiveFile._agreed`). A rank that waits for the
others longer than :data:`IO_AGREE_TIMEOUT` seconds (a rank stuck inside a collective call after another
rank's write failed) aborts the job instead of hanging it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import sys
import time
import traceback
from typing import Any, Optional

import h5py
import numpy as np
from h5py import h5fd, h5p, h5s, h5t

from hpcblend.errors import CatalogError

__all__ = ["IO_AGREE_TIMEOUT", "CollectiveFile", "agree", "collective_write", "space_error", "quiet_hdf5_handles", "hdf5_reason"]

#: Seconds a rank waits for the others to report the outcome of a collective write before it aborts the
#: job (a rank stuck inside a collective call after another rank's write failed); healthy rounds agree
#: in milliseconds.
IO_AGREE_TIMEOUT: float = float(os.environ.get("HPCBLEND_IO_AGREE_TIMEOUT", "120"))

_IO_ERRORS = (OSError, RuntimeError, ValueError, KeyError)


def collective_write(dset: h5py.Dataset, start: int, data: np.ndarray) -> None:
    """Collectively write ``data`` (possibly empty) at rows ``[start, start+len(data))``.

    Every rank of the file's communicator must call this together. h5py's
    ``dset[...] = x`` returns early on an empty selection, which would leave the
    other ranks waiting inside the collective call, so the low-level API is used
    with an explicit empty selection instead.
    """
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


@contextlib.contextmanager
def quiet_hdf5_handles():
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


def hdf5_reason(exc: BaseException) -> str:
    """One line for an HDF5/OS error: the errno text where HDF5 gives one ('No space left on device')."""
    text = str(exc)
    m = re.search(r"error message = '([^']+)'", text)
    if m:
        return f"{m.group(1)} ({type(exc).__name__})"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def agree(comm: Any, error: Optional[str]) -> None:
    """Collectively raise CatalogError on every rank if any rank reports an error.

    Raises
    ------
    CatalogError
        The error of the failing rank(s), naming them when the job has more than one rank.
    """
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


def space_error(path: str, need: int) -> Optional[str]:
    """An error when the output's filesystem has clearly too little room for ``need`` bytes, else None.

    Checked by rank 0 before a round's collective writes, so a full disk stops
    every rank with one line, where a write failing on one rank inside a
    collective call could not be agreed on. HDF5's metadata and chunk
    rounding are covered by a margin (twice the data plus 1 MiB).
    """
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except (OSError, AttributeError):  # no statvfs: the writes themselves report a full disk
        return None
    free = st.f_bavail * st.f_frsize
    if free < 2 * need + (1 << 20):
        return (f"{path}: no space left on device: a write round needs about {need // 1024 + 1} KiB, "
                f"{free // 1024} KiB are free")
    return None


class CollectiveFile:
    """An HDF5 file written by all ranks of a communicator, each step's outcome agreed on every rank.

    Subclasses set :attr:`comm`, :attr:`rank`, :attr:`size`, :attr:`path`,
    :attr:`writer_kind` and open :attr:`_file` (mpio: on every rank; serial:
    on rank 0). Every method here is collective unless it says otherwise.
    """

    comm: Any
    rank: int
    size: int
    path: str
    writer_kind: str
    _file: Optional[h5py.File]
    _handles: dict

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
                with quiet_hdf5_handles():
                    traceback.clear_frames(exc.__traceback__)
            except _IO_ERRORS as exc:
                error = f"{self.path}: {what}: {hdf5_reason(exc)}"
                with quiet_hdf5_handles():
                    traceback.clear_frames(exc.__traceback__)  # no HDF5 handle outlives the failed step
        if self.writer_kind == "serial":
            error = self.comm.bcast(error, root=0)
        elif not agreed:  # a step failed on this rank outside _agreed, or succeeded here: make sure of the others
            self._agree_status(error, what)
        if error is not None:
            raise CatalogError(error)

    def _resize(self, dset: h5py.Dataset, n: int) -> None:
        """Resize a table (collective under mpio, where it may allocate space), agreed on every rank."""
        if self.writer_kind == "mpio":
            self._agreed(lambda: dset.resize((n,)), f"cannot extend /{dset.name.lstrip('/')}")
        else:
            dset.resize((n,))

    def _write_rows(self, dset: h5py.Dataset, start: int, data: np.ndarray) -> None:
        """Collective row write (mpio), agreed on every rank before the next collective call."""
        self._agreed(lambda: collective_write(dset, start, data), f"cannot write /{dset.name.lstrip('/')}")

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
        except _IO_ERRORS as exc:
            error = f"{self.path}: {what}: {hdf5_reason(exc)}"
            traceback.clear_frames(exc.__traceback__)
        self._agree_status(error, what)

    def _agree_status(self, error: Optional[str], what: str) -> None:
        """Agree on every rank whether a step failed anywhere (mpio), aborting rather than hanging; see :meth:`_agreed`."""
        if self.writer_kind != "mpio" or self.size == 1:
            if error:
                raise CatalogError(error)
            return
        from mpi4py import MPI  # here, not at the top: importing mpi4py initialises MPI (start-up order)

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
            agree(self.comm, error)

    def _handle(self, name: str) -> Any:
        """The open dataset or group ``name``, kept open until the file closes.

        One handle per object for the writer's life: no reopening each round,
        and no handle released by the garbage collector at an arbitrary
        moment — the writer's ``close`` and ``abandon`` release them all at once
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
