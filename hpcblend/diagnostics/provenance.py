"""Provenance of a run: software versions, file-format versions, MPI layout, hosts and input-file hashes.

The result of :func:`collect_provenance` is a JSON-serialisable dict, meant to
be stored in the catalog as ``json_groups={"provenance": ...}``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Sequence

from hpcblend.io.versions import format_versions
from hpcblend.version import __version__

#: The installed hpcblend package's directory (whose git commit the provenance records).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["collect_provenance", "sha256_file", "software_versions"]

_HASH_BLOCK = 8 * 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 8 MiB blocks.

    Parameters
    ----------
    path : str or os.PathLike
        File to hash.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_HASH_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _hash_entry(path: str) -> dict[str, Any]:
    """``{"path", "size_bytes", "sha256"}`` of one input; unreadable files do not raise."""
    entry: dict[str, Any] = {"path": path, "size_bytes": None}
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(f"is a directory: {path!r}")
        entry["size_bytes"] = os.path.getsize(path)
        entry["sha256"] = sha256_file(path)
    except Exception as exc:  # noqa: BLE001 - provenance must never abort a run
        entry["sha256"] = f"unreadable: {type(exc).__name__}: {exc}"
    return entry


def _dist_version(name: str) -> str:
    """Installed version of a distribution without importing it ("not installed" if absent)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _module_version(module: str, dist: str) -> str:
    mod = sys.modules.get(module)
    version = getattr(mod, "__version__", None) if mod is not None else None
    return str(version) if version else _dist_version(dist)


def _source_revision(directory: str) -> str:
    """``git`` commit of the checkout holding ``directory`` (``<sha>``; ``<sha>-dirty.<hash of the diff>``
    with uncommitted changes to tracked files), or ``"not a git checkout"``."""
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return "not a git checkout"
        diff = subprocess.run(["git", "-C", directory, "diff", "HEAD", "--", "."], capture_output=True, timeout=30)
        if diff.returncode != 0 or not diff.stdout:
            return sha.stdout.strip()
        # uncommitted changes: name them by a hash of the diff, so two different dirty trees differ
        return sha.stdout.strip() + "-dirty." + hashlib.sha256(diff.stdout).hexdigest()[:12]
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def software_versions() -> dict:
    """Versions of hpcblend (with its source commit), Python and the libraries that decide the rows.

    Returns
    -------
    dict of str -> str
        ``hpcblend``, ``hpcblend_source`` (git commit of the source tree, ``-dirty`` with uncommitted
        changes), ``python``, ``numpy``, ``numba``, ``scipy``, ``mpi4py``, ``h5py``, ``hdf5``,
        ``mpi_library``.
    """
    from mpi4py import MPI

    import h5py
    import numpy as np

    try:
        mpi_library = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0].strip()
    except Exception as exc:  # noqa: BLE001
        mpi_library = f"unknown ({type(exc).__name__})"
    return {
        "hpcblend": str(__version__),
        "hpcblend_source": _source_revision(_PACKAGE_DIR),
        "python": platform.python_version(),
        "numpy": str(np.__version__),
        "numba": _module_version("numba", "numba"),
        "scipy": _module_version("scipy", "scipy"),
        "mpi4py": _module_version("mpi4py", "mpi4py"),
        "h5py": str(h5py.__version__),
        "hdf5": str(h5py.version.hdf5_version),
        "mpi_library": mpi_library,
    }


def collect_provenance(comm: Any, input_files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Collect a run's provenance. COLLECTIVE over ``comm``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        Communicator of the run (``None``: ``MPI.COMM_SELF``).
    input_files : list of str or os.PathLike
        Input files to hash, same list on every rank. File ``i`` is hashed on
        rank ``i % size`` and the results are gathered, so large inputs are
        hashed in parallel.

    Returns
    -------
    dict
        JSON-serialisable, identical on every rank (rank 0's start time)::

            {"versions": {"hpcblend", "python", "numpy", "numba", "scipy",
                          "mpi4py", "h5py", "hdf5", "mpi_library"},
             "formats": {format key: version written, see
                         hpcblend.io.versions.format_versions},
             "h5py_mpi": bool, "mpi_standard": "4.0",
             "n_ranks": int, "hosts": [sorted unique host names],
             "ranks_per_host": {host: n_ranks},
             "start_time_utc": ISO-8601 str, "platform": str,
             "executable": str, "argv": [str],
             "input_files": [{"path", "size_bytes", "sha256"}, ...]}

        ``sha256`` is 64 hex digits, or ``"unreadable: <reason>"`` for a file
        that could not be read (this function never raises for inputs).
        Packages that are missing are reported as ``"not installed"``.
    """
    from mpi4py import MPI

    import h5py

    if comm is None:
        comm = MPI.COMM_SELF
    rank, size = comm.Get_rank(), comm.Get_size()
    start = datetime.now(timezone.utc).isoformat(timespec="milliseconds") if rank == 0 else None
    start = comm.bcast(start, root=0)

    paths = [os.fspath(p) for p in input_files]
    mine = {i: _hash_entry(paths[i]) for i in range(rank, len(paths), size)}
    hashed: dict[int, dict[str, Any]] = {}
    for part in comm.allgather(mine):
        hashed.update(part)
    files = [hashed[i] for i in range(len(paths))]

    hosts_all = comm.allgather(socket.gethostname())
    per_host = Counter(hosts_all)

    major, minor = MPI.Get_version()
    versions = comm.bcast(software_versions() if rank == 0 else None, root=0)
    return {
        "versions": versions,
        "formats": format_versions(),
        "h5py_mpi": bool(h5py.get_config().mpi),
        "mpi_standard": f"{major}.{minor}",
        "n_ranks": int(size),
        "hosts": sorted(per_host),
        "ranks_per_host": {h: int(per_host[h]) for h in sorted(per_host)},
        "start_time_utc": start,
        "platform": platform.platform(),
        "executable": sys.executable,
        "argv": list(comm.bcast(list(sys.argv) if rank == 0 else None, root=0)),
        "input_files": files,
    }
