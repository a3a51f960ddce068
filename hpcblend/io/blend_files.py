"""Collections of npz blend files: find them (:func:`expand_inputs`), peek at their size, write one.

:func:`expand_inputs` turns a job's input specification (files, directories, glob patterns) into a
sorted list of npz files; :func:`peek_blend` reads only array headers and the small peak and footprint
arrays, for scheduling; :func:`write_blend` writes a :class:`~hpcblend.io.blend_data.BlendData` in the
``hsc_blends`` layout (see :mod:`hpcblend.io.blends`), stamped with the npz blend format version
(:data:`hpcblend.io.versions.NPZ_BLEND_VERSION`, member ``format_version``).
"""

from __future__ import annotations

import glob
import os
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from hpcblend.errors import InputError
from hpcblend.io.blend_data import BlendData
from hpcblend.io.npz import atomic_write, member_header, npz_bytes
from hpcblend.io.versions import NPZ_BLEND_VERSION

__all__ = ["INT64_MAX", "VERSION_MEMBER", "expand_inputs", "id_from_stem", "peek_blend", "blend_arrays",
           "write_blend"]

#: Largest parent id (ids are non-negative int64).
INT64_MAX: int = int(np.iinfo(np.int64).max)
#: npz member holding the layout's format version (files without it are version 1).
VERSION_MEMBER: str = "format_version"

_GLOB_CHARS = re.compile(r"[*?\[]")


def _npz_in_dir(directory: str) -> list:
    return [p for p in glob.glob(os.path.join(glob.escape(directory), "*.npz")) if os.path.isfile(p)]


def expand_inputs(spec: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
                  base_dir: Optional[Union[str, os.PathLike]] = None) -> list:
    """Expand an input specification into a sorted list of npz files.

    Parameters
    ----------
    spec : str, path, or list of those
        Each entry is a file, a directory (all ``*.npz`` directly inside it,
        not recursive) or a glob pattern (``*``, ``?``, ``[...]``; ``**``
        recurses), e.g. ``"../shared/data/hsc_blends/set*/*.npz"``. ``~`` is
        expanded.
    base_dir : str or path, optional
        Directory that relative entries are resolved against (the job file's
        directory); the current working directory if None.

    Returns
    -------
    list of str
        Absolute paths, sorted, de-duplicated by real path (the first spelling
        met is kept).

    Raises
    ------
    InputError
        If an entry matches nothing (naming the entry and the resolved
        pattern), or ``spec`` is empty.
    """
    if isinstance(spec, (str, os.PathLike)):
        entries = [spec]
    else:
        entries = list(spec)
    if not entries:
        raise InputError("inputs: empty input specification (no file, directory or pattern given)")
    base = os.path.abspath(os.fspath(base_dir)) if base_dir is not None else os.getcwd()

    found: dict = {}
    for entry in entries:
        raw = os.path.expanduser(os.fspath(entry))
        pattern = raw if os.path.isabs(raw) else os.path.join(base, raw)
        pattern = os.path.normpath(pattern)
        matches: list = []
        if os.path.isdir(pattern):
            matches = _npz_in_dir(pattern)
            if not matches:
                raise InputError(f"inputs: directory {raw!r} ({pattern}) contains no *.npz files")
        elif os.path.isfile(pattern):
            matches = [pattern]
        elif _GLOB_CHARS.search(raw):
            for hit in glob.glob(pattern, recursive=True):
                if os.path.isdir(hit):
                    matches.extend(_npz_in_dir(hit))
                elif os.path.isfile(hit):
                    matches.append(hit)
        if not matches:
            raise InputError(f"inputs: no input file matches {raw!r} (looked for {pattern})")
        for m in matches:
            m = os.path.abspath(m)
            found.setdefault(os.path.realpath(m), m)
    return sorted(found.values())


def id_from_stem(path: str) -> Optional[int]:
    """The parent id a file's name gives: its stem when that is a non-negative integer fitting int64, else None."""
    stem = Path(path).stem
    if re.fullmatch(r"[0-9]+", stem):
        value = int(stem)
        if value <= INT64_MAX:
            return value
    return None



def peek_blend(path: Union[str, os.PathLike]) -> dict:
    """Cheap header read of one blend file, for scheduling.

    Reads only array headers plus the small ``footprint`` and peak arrays.
    Never raises for a bad file: on failure it returns what it could learn,
    with ``n_peaks=0`` and an ``"error"`` key (one-line message).

    Returns
    -------
    dict
        ``{"path": str, "id": int or None, "n_peaks": int, "shape": (H, W),
        "footprint_area": int, "n_bands": int}`` (+ ``"error": str``).
        ``footprint_area`` is H*W when the file has no footprint; ``shape``
        is (0, 0) if unknown.
    """
    path = os.fspath(path)
    info = {"path": path, "id": id_from_stem(path), "n_peaks": 0, "shape": (0, 0),
            "footprint_area": 0, "n_bands": 0}
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            if "images" not in names:
                raise InputError(f"{path}: missing key 'images'")
            shape, _ = member_header(zf, "images")
            if len(shape) != 3:
                raise InputError(f"{path}: key 'images': expected 3-D (B, H, W), got shape {shape}")
            info["n_bands"] = shape[0]
            info["shape"] = (shape[1], shape[2])
            info["footprint_area"] = shape[1] * shape[2]
            for key in ("variance", "psfs"):
                if key not in names:
                    raise InputError(f"{path}: missing key {key!r}")
            if "centers" in names:
                pshape, _ = member_header(zf, "centers")
                n_peaks = pshape[0] if pshape else 0
            elif "catalog" in names:
                pshape, _ = member_header(zf, "catalog")
                n_peaks = pshape[0] if pshape else 0
            else:
                raise InputError(f"{path}: missing key 'centers' (or 'catalog') holding the peaks")
        if "footprint" in names:
            with np.load(path, allow_pickle=False) as data:
                fp = np.asarray(data["footprint"])
            if fp.shape == info["shape"]:
                info["footprint_area"] = int(np.count_nonzero(~fp.astype(bool)))
        info["n_peaks"] = int(n_peaks)
    except Exception as exc:  # noqa: BLE001 - peek must never raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, InputError):
            msg = f"{path}: cannot read ({type(exc).__name__}: {msg})"
        info["n_peaks"] = 0
        info["error"] = msg
    return info


def blend_arrays(blend: BlendData) -> dict:
    """The npz members of ``blend`` in the hsc_blends layout (footprint stored True OUTSIDE), with the format version."""
    images = np.asarray(blend.images)
    footprint = np.asarray(blend.footprint)
    mask = blend.mask if blend.mask is not None else np.zeros(images.shape, dtype=np.int32)
    return {
        "images": images,
        "variance": np.asarray(blend.variance),
        "mask": np.asarray(mask),
        "footprint": ~footprint.astype(bool),
        "psfs": np.asarray(blend.psfs),
        "centers": np.asarray(blend.peaks),
        "filters": np.asarray([str(b) for b in blend.bands], dtype=np.str_),
        "origin": np.asarray(blend.origin, dtype=np.int64),
        VERSION_MEMBER: np.int64(NPZ_BLEND_VERSION),
    }


def write_blend(path: Union[str, os.PathLike], blend: BlendData, compress: bool = False) -> str:
    """Write a blend in the hsc_blends npz layout.

    Keys: ``images``, ``variance``, ``mask`` (zeros if ``blend.mask`` is
    None), ``footprint`` stored **True OUTSIDE** the parent (the layout's
    convention; :func:`hpcblend.io.blends.read_blend` inverts it back), ``psfs``,
    ``centers`` (the peaks, (y, x)), ``filters`` (band names), ``origin`` and
    ``format_version``. Arrays are written as they are, without validation or
    dtype changes, so tests can produce malformed files with it. The bytes are
    deterministic (fixed zip timestamps) and the file is replaced atomically.

    Returns
    -------
    str
        ``path`` (no ``.npz`` is appended).
    """
    path = os.fspath(path)
    atomic_write(path, npz_bytes(blend_arrays(blend), compress=compress))
    return path
