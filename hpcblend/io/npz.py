"""npz archives, safely: open without ever unpickling, read one member with a clear error, write deterministically.

:func:`open_npz` looks at a file's first bytes before numpy does (numpy would take any non-zip content for
a pickle and complain about ``allow_pickle``, which misleads for a text file named ``*.npz``);
:func:`npz_array` reads one member and turns every failure into an :class:`~hpcblend.errors.InputError`
naming the file and key; :func:`member_header` reads a member's shape and dtype without its data.
:func:`npz_bytes` builds an archive with fixed timestamps and key order (the same arrays give the same
bytes) and :func:`atomic_write` replaces a file so that a reader never sees half of it.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import numpy as np

from hpcblend.errors import InputError

__all__ = ["READ_ERRORS", "open_npz", "npz_array", "member_header", "npz_bytes", "atomic_write"]

#: Exceptions numpy and zipfile raise on a damaged or truncated archive.
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, RuntimeError,
               NotImplementedError)

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def open_npz(path: str) -> np.lib.npyio.NpzFile:
    """Open an npz archive for reading (``allow_pickle=False``), after checking it is a zip archive.

    Returns
    -------
    numpy.lib.npyio.NpzFile
        Close it (or use it as a context manager).

    Raises
    ------
    InputError
        File not found or unreadable, empty, not a zip archive (a single ``.npy`` array, text), or
        truncated.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({type(exc).__name__}: {exc})") from exc
    if not head.startswith(_ZIP_MAGICS):
        if head.startswith(b"\x93NUMPY"):
            raise InputError(f"{path}: not an npz archive (a single .npy array?)")
        what = "an empty file" if not head else f"content starts with {head[:8]!r}"
        raise InputError(f"{path}: not an npz (zip) archive ({what})")
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read as npz ({type(exc).__name__}: {exc}); "
                         f"truncated or not an npz file") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not an npz archive (a single .npy array?)")
    return data


def npz_array(data: np.lib.npyio.NpzFile, path: str, key: str) -> np.ndarray:
    """Member ``key`` of an open archive as an array.

    Raises
    ------
    InputError
        Missing key, a member holding Python objects (pickled: refused), a member that is not a
        ``.npy`` array, or a damaged member.
    """
    try:
        value = data[key]
    except KeyError:
        raise InputError(f"{path}: missing key {key!r}") from None
    except READ_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        # numpy's refusal of an object-dtype member ("Object arrays cannot be loaded when
        # allow_pickle=False"): the member really is a pickle
        if "allow_pickle" in msg or "object arrays" in msg.lower():
            raise InputError(f"{path}: key {key!r}: holds Python objects (pickled); refusing to unpickle") from exc
        raise InputError(f"{path}: key {key!r}: cannot read ({type(exc).__name__}: {msg}); "
                         f"truncated or corrupt file") from exc
    if not isinstance(value, np.ndarray):  # NpzFile returns a member without the .npy magic as raw bytes
        raise InputError(f"{path}: key {key!r}: not a .npy array member (raw {type(value).__name__})")
    return value


def member_header(zf: zipfile.ZipFile, key: str) -> tuple:
    """(shape, dtype) of ``key`` in an npz archive from its .npy header only."""
    with zf.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(n) for n in shape), dtype


def npz_bytes(arrays: dict, compress: bool = False) -> bytes:
    """An npz archive of ``arrays`` as bytes, deterministic (fixed timestamps, the dict's key order).

    Parameters
    ----------
    arrays : dict of str -> array_like
        Members; written with ``allow_pickle=False``.
    compress : bool
        Deflate the members (default: stored).
    """
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, mode="w", compression=method, allowZip64=True) as zf:
        for key, val in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(val), allow_pickle=False)
    return buf.getvalue()


def atomic_write(path: str, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same directory (created if missing), then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
