"""Readers of hpcblend's inputs: collections of pre-cut blends (npz).

The data type :class:`BlendData` is the contract between the readers and the
deblender; the readers below turn files into it and validate them, so that
everything downstream may assume a well-formed blend.

Supported npz layouts (all read with ``np.load(..., allow_pickle=False)``;
nothing is ever unpickled):

``hsc_blends`` (``data/hsc_blends/set*/<id>.npz``, also ``testdata_3_0.npz``,
and what :func:`write_blend` writes)
    ``images``, ``variance``, ``mask`` (B, H, W); ``footprint`` (H, W) bool,
    **True OUTSIDE** the parent footprint (it is inverted on reading:
    ``BlendData.footprint`` is True inside); ``psfs`` (B, Ph, Pw);
    ``centers`` (K, 2) integer peaks in (y, x) order. Optional: ``filters``
    (band names), ``origin`` (2,) (y0, x0). Other keys (``matched``) are
    ignored.
``scarlet catalog`` (``hsc_cosmos_35.npz``)
    ``images``, ``variance``, ``mask``, ``psfs``, ``filters``, and a
    structured ``catalog`` with float fields ``x`` and ``y``; peaks are the
    positions rounded half-up to the nearest pixel, in (y, x) order. There is
    no footprint, so every pixel of the box is taken as inside the footprint.

Only ``images``, ``variance``, ``psfs`` and one of ``centers`` / ``catalog``
are required; a missing ``mask`` reads as all zeros. A file without
``variance`` (``hsc_cosmos.npz``) is rejected: no variance is invented.

Pixel clean-up done by :func:`read_blend` (recorded in ``BlendData.meta``):

* pixels with variance <= 0 get the ``NO_DATA`` mask bit (a band whose every
  footprint pixel has variance <= 0 becomes a band without data: the
  deblender fits the other bands); their variance is left as it is, so the
  deblender must give them zero weight (see :meth:`BlendData.weights`);
* NaN/inf image or variance pixels *outside* the footprint are set to 0 and get
  the ``NO_DATA`` bit (NaN/inf inside the footprint is an error).

Bad peaks are flagged, not errors: ``BlendData.peak_flags`` (see
:func:`classify_peaks`) marks peaks outside the image or the footprint, on a
pixel bad in every band (:data:`DEFAULT_BAD_MASK_PLANES`, variance <= 0), and
the second and later peaks on one pixel; the deblender does not fit them.
"""

from __future__ import annotations

import glob
import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from hpcblend.errors import BlendDataError, InputError, PsfError

__all__ = [
    "BlendData",
    "MASK_PLANES",
    "DEFAULT_BAD_MASK_PLANES",
    "DEFAULT_BANDS",
    "PSF_SUM_TOLERANCE",
    "PEAK_DUPLICATE",
    "PEAK_MASKED",
    "PEAK_OUTSIDE_FOOTPRINT",
    "PEAK_OUTSIDE_IMAGE",
    "PEAK_MERGED",
    "PEAK_DROPPED",
    "classify_peaks",
    "mask_bits",
    "expand_inputs",
    "peek_blend",
    "read_blend",
    "write_blend",
]

#: LSST/HSC afw default mask planes: name -> bit number (value ``1 << bit``).
MASK_PLANES: dict = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}

#: Planes whose pixels the LSST deblender gives zero weight.
DEFAULT_BAD_MASK_PLANES: tuple = ("BAD", "SAT", "EDGE", "SUSPECT", "NO_DATA")

#: Band names assumed for a 5-plane file without ``filters`` and without a ``bands`` argument.
DEFAULT_BANDS: tuple = ("g", "r", "i", "z", "y")

#: A PSF image must sum to 1 within this; it is then renormalised to exactly 1.
PSF_SUM_TOLERANCE: float = 1e-2

_INT64_MAX = np.iinfo(np.int64).max

# Per-peak status bits (``BlendData.peak_flags``). A peak with any bit of
# PEAK_DROPPED set is not fitted; its child row stays, with NaN measurements.
#: Same pixel as an earlier kept peak of the blend (the first peak of a pixel is kept).
PEAK_DUPLICATE: int = 1 << 0
#: The peak pixel is bad in every band (a bad mask plane, or variance not finite or <= 0).
PEAK_MASKED: int = 1 << 1
#: The peak pixel is outside the parent footprint (also set for peaks outside the image).
PEAK_OUTSIDE_FOOTPRINT: int = 1 << 2
#: The peak lies outside the image array (its position is kept as given, not clipped).
PEAK_OUTSIDE_IMAGE: int = 1 << 3
#: Information only, not a reason to drop: a kept peak whose duplicates were dropped.
PEAK_MERGED: int = 1 << 4
#: Bits that mean "dropped from the fit".
PEAK_DROPPED: int = PEAK_DUPLICATE | PEAK_MASKED | PEAK_OUTSIDE_FOOTPRINT | PEAK_OUTSIDE_IMAGE


def mask_bits(names: Union[str, Iterable[str]]) -> int:
    """Bit mask (OR of ``1 << bit``) of the named mask planes.

    Parameters
    ----------
    names : str or iterable of str
        Plane names from :data:`MASK_PLANES` (case-insensitive); a single name
        may be given as a string.

    Returns
    -------
    int
        E.g. ``mask_bits(["BAD", "SAT"]) == 3``.

    Raises
    ------
    KeyError
        If a name is not a known plane.
    """
    if isinstance(names, str):
        names = [names]
    value = 0
    for name in names:
        key = str(name).upper()
        if key not in MASK_PLANES:
            raise KeyError(f"unknown mask plane {name!r}; known planes: {', '.join(MASK_PLANES)}")
        value |= 1 << MASK_PLANES[key]
    return value


@dataclass
class BlendData:
    """One blend's pixels, as the deblender consumes them.

    Attributes
    ----------
    id : int
        Unique 64-bit parent id.
    source : str
        Path of the file the blend came from (for error messages and the catalog).
    bands : tuple of str
        Band names, one per image plane, e.g. ``("g", "r", "i", "z", "y")``.
    images : ndarray, shape (B, H, W), float32
        Background-subtracted coadd pixels in counts (instFlux units).
    variance : ndarray, shape (B, H, W), float32
        Per-pixel variance in counts².
    mask : ndarray, shape (B, H, W), int32, or None
        Mask-plane bits (LSST/HSC afw planes: BAD=1<<0, SAT=1<<1, INTRP=1<<2,
        CR=1<<3, EDGE=1<<4, DETECTED=1<<5, DETECTED_NEGATIVE=1<<6,
        SUSPECT=1<<7, NO_DATA=1<<8).
    footprint : ndarray, shape (H, W), bool
        True INSIDE the parent footprint (pixels that belong to the blend).
    psfs : ndarray, shape (B, Ph, Pw), float64
        Per-band PSF images, odd-sized, centred, each summing to 1.
    peaks : ndarray, shape (K, 2), int64
        Peak positions in (y, x) pixel order, in this blend's own frame.
    origin : tuple of int
        (y0, x0) of pixel [0, 0] in the parent (patch or tract) frame.
    meta : dict
        Reader-specific facts (layout, counts of cleaned pixels, ...).
    peak_flags : ndarray, shape (K,), int32
        Status of each peak: 0 = kept, else OR of :data:`PEAK_DUPLICATE`,
        :data:`PEAK_MASKED`, :data:`PEAK_OUTSIDE_FOOTPRINT`,
        :data:`PEAK_OUTSIDE_IMAGE` (dropped: not fitted) and
        :data:`PEAK_MERGED` (kept; its duplicates were dropped). Default (None)
        becomes all zeros; :func:`read_blend` fills it with
        :func:`classify_peaks`. All K peaks stay in :attr:`peaks`, so child
        ids and row counts do not depend on which are dropped.
    """

    id: int
    source: str
    bands: tuple
    images: np.ndarray
    variance: np.ndarray
    mask: Optional[np.ndarray]
    footprint: np.ndarray
    psfs: np.ndarray
    peaks: np.ndarray
    origin: tuple = (0, 0)
    meta: dict = field(default_factory=dict)
    peak_flags: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        n = int(np.shape(self.peaks)[0]) if np.ndim(self.peaks) else 0
        if self.peak_flags is None:
            self.peak_flags = np.zeros(n, dtype=np.int32)
        else:
            self.peak_flags = np.asarray(self.peak_flags, dtype=np.int32).reshape(-1)
            if self.peak_flags.shape[0] != n:
                raise ValueError(f"{self.source}: peak_flags has {self.peak_flags.shape[0]} entries "
                                 f"for {n} peaks")

    @property
    def n_bands(self) -> int:
        """Number of bands B."""
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple:
        """(H, W) of the blend's box in pixels."""
        return tuple(int(n) for n in self.images.shape[1:])

    @property
    def n_peaks(self) -> int:
        """Number of peaks K."""
        return int(self.peaks.shape[0])

    @property
    def kept_peaks(self) -> np.ndarray:
        """Peaks the deblender fits, shape (K,), bool: no :data:`PEAK_DROPPED` bit in :attr:`peak_flags`."""
        return (self.peak_flags & PEAK_DROPPED) == 0

    @property
    def footprint_area(self) -> int:
        """Number of pixels inside the parent footprint."""
        return int(np.count_nonzero(self.footprint))

    # -- helpers (additions; the fields above are the contract) ---------------

    def bad_pixels(self, bad_planes: Iterable[str] = DEFAULT_BAD_MASK_PLANES) -> np.ndarray:
        """Pixels that must get zero weight, shape (B, H, W), bool.

        True where any of ``bad_planes`` is set in :attr:`mask`, or the
        variance is not finite or <= 0.
        """
        bad = ~np.isfinite(self.variance) | ~(self.variance > 0)
        if self.mask is not None:
            bits = mask_bits(bad_planes)
            if bits:
                bad |= (self.mask & bits) != 0
        return bad

    def weights(self, bad_planes: Iterable[str] = DEFAULT_BAD_MASK_PLANES,
                use_footprint: bool = True) -> np.ndarray:
        """Inverse-variance weights, shape (B, H, W), float32 (1/counts²).

        ``1 / variance``, and 0 at :meth:`bad_pixels` and, if
        ``use_footprint``, outside :attr:`footprint` (as the hsc_blends
        source code weights by ``1/variance * ~footprint_file``).
        """
        bad = self.bad_pixels(bad_planes)
        if use_footprint:
            bad |= ~self.footprint[None, :, :]
        w = np.zeros(self.variance.shape, dtype=np.float32)
        good = ~bad
        w[good] = 1.0 / self.variance[good].astype(np.float64)
        return w


def classify_peaks(peaks: np.ndarray, footprint: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Status bits of each peak: outside the image or footprint, masked, duplicate.

    Parameters
    ----------
    peaks : ndarray, shape (K, 2), int
        Peaks (y, x), pixels of the blend's frame; any values (outside the
        image is allowed).
    footprint : ndarray, shape (H, W), bool
        True inside the parent footprint.
    bad : ndarray, shape (B, H, W), bool
        Pixels with zero weight (:meth:`BlendData.bad_pixels`).

    Returns
    -------
    ndarray, shape (K,), int32
        OR of :data:`PEAK_OUTSIDE_IMAGE` (+ :data:`PEAK_OUTSIDE_FOOTPRINT`),
        :data:`PEAK_OUTSIDE_FOOTPRINT`, :data:`PEAK_MASKED` (bad in every
        band), and, among the peaks not dropped for those reasons,
        :data:`PEAK_DUPLICATE` on every peak after the first of a pixel and
        :data:`PEAK_MERGED` on that first one.
    """
    peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 2)
    h, w = footprint.shape
    flags = np.zeros(len(peaks), dtype=np.int32)
    y, x = peaks[:, 0], peaks[:, 1]
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    flags[~inside] |= PEAK_OUTSIDE_IMAGE | PEAK_OUTSIDE_FOOTPRINT
    yi, xi = y[inside], x[inside]
    flags[np.flatnonzero(inside)[~footprint[yi, xi]]] |= PEAK_OUTSIDE_FOOTPRINT
    flags[np.flatnonzero(inside)[bad[:, yi, xi].all(axis=0)]] |= PEAK_MASKED
    first: dict = {}
    for k in np.flatnonzero(flags == 0):
        key = (int(y[k]), int(x[k]))
        if key in first:
            flags[k] |= PEAK_DUPLICATE
            flags[first[key]] |= PEAK_MERGED
        else:
            first[key] = k
    return flags


# --------------------------------------------------------------------------
# expand_inputs
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# low-level npz access
# --------------------------------------------------------------------------

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
                RuntimeError, NotImplementedError)


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first local header, or an empty zip


def _open_npz(path: str):
    # Look at the magic first: np.load would take any non-zip, non-.npy content for a pickle
    # and complain about allow_pickle, which misleads for a text file named *.npz.
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
    except _READ_ERRORS as exc:
        raise InputError(f"{path}: cannot read as npz ({type(exc).__name__}: {exc}); "
                         f"truncated or not an npz file") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not an npz archive (a single .npy array?)")
    return data


def _get(data, path: str, key: str) -> np.ndarray:
    try:
        value = data[key]
    except KeyError:
        raise InputError(f"{path}: missing key {key!r}") from None
    except _READ_ERRORS as exc:
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


def _member_header(zf: zipfile.ZipFile, key: str):
    """(shape, dtype) of ``key`` in an npz archive from its .npy header only."""
    with zf.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(int(n) for n in shape), dtype


def _id_from_stem(path: str) -> Optional[int]:
    stem = Path(path).stem
    if re.fullmatch(r"[0-9]+", stem):
        value = int(stem)
        if value <= _INT64_MAX:
            return value
    return None


# --------------------------------------------------------------------------
# peek_blend
# --------------------------------------------------------------------------

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
    info = {"path": path, "id": _id_from_stem(path), "n_peaks": 0, "shape": (0, 0),
            "footprint_area": 0, "n_bands": 0}
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            if "images" not in names:
                raise InputError(f"{path}: missing key 'images'")
            shape, _ = _member_header(zf, "images")
            if len(shape) != 3:
                raise InputError(f"{path}: key 'images': expected 3-D (B, H, W), got shape {shape}")
            info["n_bands"] = shape[0]
            info["shape"] = (shape[1], shape[2])
            info["footprint_area"] = shape[1] * shape[2]
            for key in ("variance", "psfs"):
                if key not in names:
                    raise InputError(f"{path}: missing key {key!r}")
            if "centers" in names:
                pshape, _ = _member_header(zf, "centers")
                n_peaks = pshape[0] if pshape else 0
            elif "catalog" in names:
                pshape, _ = _member_header(zf, "catalog")
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


# --------------------------------------------------------------------------
# read_blend
# --------------------------------------------------------------------------

def _decode_bands(arr: np.ndarray) -> tuple:
    out = []
    for v in np.asarray(arr).ravel():
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode("ascii", "replace")
        out.append(str(v).strip())
    return tuple(out)


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def read_blend(path: Union[str, os.PathLike], bands: Optional[Sequence[str]] = None,
               blend_id: Optional[int] = None) -> BlendData:
    """Read and validate one blend from an npz file.

    Parameters
    ----------
    path : str or path
        The npz file (a layout described in this module's docstring).
    bands : sequence of str, optional
        Band names the caller expects. If given, the file must have the same
        number of image planes (and, if it names its ``filters``, the same
        names in the same order).
    blend_id : int, optional
        Parent id to use when the file stem is not an integer (the driver
        passes a running number). An integer stem that fits int64 wins.

    Returns
    -------
    BlendData
        ``images``/``variance`` float32 (B, H, W); ``mask`` int32 (B, H, W)
        (never None); ``footprint`` bool (H, W) True inside; ``psfs`` float64
        (B, Ph, Pw) each summing to exactly 1; ``peaks`` int64 (K, 2) (y, x).
        ``meta`` holds ``layout``, ``footprint_in_file``,
        ``n_no_data_pixels`` (pixels newly flagged NO_DATA),
        ``psf_centroid_offset`` (B, 2) (y, x) of each PSF's flux centroid
        relative to its central pixel, ``peak_key`` (``"centers"`` or
        ``"catalog"``). ``peak_flags`` (K,) from :func:`classify_peaks` with
        :data:`DEFAULT_BAD_MASK_PLANES`: peaks outside the image or the
        footprint, masked in every band, or duplicated are kept in ``peaks``
        (as given, not clipped) but flagged, not raised.

    Raises
    ------
    InputError
        Unreadable/truncated file, not a zip archive, a member holding Python
        objects (pickled), missing key, malformed arrays (shape mismatch),
        no usable id.
    PsfError
        PSFs not 3-D, wrong band count, not finite, even-sized, or not
        summing to 1 within :data:`PSF_SUM_TOLERANCE`.
    BlendDataError
        Band-count mismatch against ``bands``; NaN/inf inside the footprint;
        no peaks in the file. (A band with variance <= 0 at every footprint
        pixel is not an error here: its pixels get ``NO_DATA``.)
    """
    path = os.fspath(path)
    with _open_npz(path) as data:
        keys = set(data.files)
        for key in ("images", "variance", "psfs"):
            if key not in keys:
                raise InputError(f"{path}: missing key {key!r}")
        if "centers" not in keys and "catalog" not in keys:
            raise InputError(f"{path}: missing key 'centers' (or 'catalog') holding the peaks")
        images = _get(data, path, "images")
        variance = _get(data, path, "variance")
        psfs = _get(data, path, "psfs")
        mask = _get(data, path, "mask") if "mask" in keys else None
        fp_file = _get(data, path, "footprint") if "footprint" in keys else None
        filters = _get(data, path, "filters") if "filters" in keys else None
        origin_arr = _get(data, path, "origin") if "origin" in keys else None
        if "centers" in keys:
            layout = "hsc_blends"
            centers = _get(data, path, "centers")
            catalog = None
        else:
            layout = "scarlet_catalog"
            centers = None
            catalog = _get(data, path, "catalog")

    # -- id -------------------------------------------------------------------
    pid = _id_from_stem(path)
    if pid is None:
        if blend_id is None:
            raise InputError(f"{path}: file name stem {Path(path).stem!r} is not an integer id "
                             f"and no blend_id was given")
        try:
            pid = int(blend_id)
        except (TypeError, ValueError):
            raise InputError(f"{path}: blend_id {blend_id!r} is not an integer") from None
        if not 0 <= pid <= _INT64_MAX:
            raise InputError(f"{path}: blend_id {pid} does not fit a non-negative int64")

    # -- images / variance / mask / footprint shapes --------------------------
    for key, arr in (("images", images), ("variance", variance)):
        if arr.ndim != 3:
            raise InputError(f"{path}: key {key!r}: expected 3-D (B, H, W), got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{path}: key {key!r}: expected a numeric array, got dtype {arr.dtype}")
    n_bands, height, width = (int(n) for n in images.shape)
    if n_bands == 0 or height == 0 or width == 0:
        raise InputError(f"{path}: key 'images': empty shape {images.shape}")
    if variance.shape != images.shape:
        raise InputError(f"{path}: key 'variance': shape {variance.shape} differs from images {images.shape}")
    if mask is None:
        mask = np.zeros(images.shape, dtype=np.int32)
    else:
        if mask.shape != images.shape:
            raise InputError(f"{path}: key 'mask': shape {mask.shape} differs from images {images.shape}")
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
            raise InputError(f"{path}: key 'mask': expected integer bits, got dtype {mask.dtype}")
        mask = mask.astype(np.int32, copy=True)
    if fp_file is not None:
        if fp_file.shape != (height, width):
            raise InputError(f"{path}: key 'footprint': shape {fp_file.shape} differs from the "
                             f"image plane {(height, width)}")
        # hsc_blends convention: True OUTSIDE the parent footprint.
        footprint = ~fp_file.astype(bool)
    else:
        footprint = np.ones((height, width), dtype=bool)
    if origin_arr is not None:
        o = np.asarray(origin_arr).ravel()
        if o.size != 2 or not np.issubdtype(o.dtype, np.integer):
            raise InputError(f"{path}: key 'origin': expected 2 integers (y0, x0), got {origin_arr!r}")
        origin = (int(o[0]), int(o[1]))
    else:
        origin = (0, 0)

    # -- bands ------------------------------------------------------------------
    if filters is not None:
        file_bands = _decode_bands(filters)
        if len(file_bands) != n_bands:
            raise BlendDataError(f"{path}: key 'filters': {len(file_bands)} band names "
                                 f"{file_bands} for {n_bands} image planes")
    else:
        file_bands = None
    if bands is not None:
        bands = tuple(str(b) for b in bands)
        if len(bands) != n_bands:
            raise BlendDataError(f"{path}: key 'images': file has {n_bands} bands, "
                                 f"expected {len(bands)} {bands}")
        if file_bands is not None and file_bands != bands:
            raise BlendDataError(f"{path}: key 'filters': file bands {file_bands} differ from "
                                 f"expected {bands}")
    if file_bands is not None:
        band_names = file_bands
    elif bands is not None:
        band_names = bands
    elif n_bands == len(DEFAULT_BANDS):
        band_names = DEFAULT_BANDS
    else:
        band_names = tuple(f"b{i}" for i in range(n_bands))
    if len(set(band_names)) != len(band_names):
        raise BlendDataError(f"{path}: key 'filters': duplicate band names {band_names}")

    # -- peaks ------------------------------------------------------------------
    if centers is not None:
        c = np.asarray(centers)
        if c.size == 0:
            raise BlendDataError(f"{path}: key 'centers': no peaks")
        if c.ndim != 2 or c.shape[1] != 2:
            raise InputError(f"{path}: key 'centers': expected shape (K, 2) in (y, x), got {c.shape}")
        if not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
            raise InputError(f"{path}: key 'centers': expected numbers, got dtype {c.dtype}")
        if not np.all(np.isfinite(c)):
            raise InputError(f"{path}: key 'centers': not finite")
        peaks = c.astype(np.int64) if np.issubdtype(c.dtype, np.integer) else _round_half_up(c)
        peak_key = "centers"
    else:
        cat = np.asarray(catalog)
        names = cat.dtype.names or ()
        if "x" not in names or "y" not in names:
            raise InputError(f"{path}: key 'catalog': needs fields 'x' and 'y', has {names}")
        if cat.size == 0:
            raise BlendDataError(f"{path}: key 'catalog': no peaks")
        xy = np.stack([cat["y"].ravel(), cat["x"].ravel()], axis=1).astype(np.float64)
        if not np.all(np.isfinite(xy)):
            raise InputError(f"{path}: key 'catalog': x/y not finite")
        peaks = _round_half_up(xy)
        peak_key = "catalog"
    peaks = np.ascontiguousarray(peaks.reshape(-1, 2), dtype=np.int64)
    # peaks outside the image or footprint, on masked pixels, or duplicated are flagged (not an error)
    # once the pixels are cleaned up below: see classify_peaks

    # -- PSFs -------------------------------------------------------------------
    if psfs.ndim != 3:
        raise PsfError(f"{path}: key 'psfs': expected 3-D (B, Ph, Pw), got shape {psfs.shape}")
    if psfs.shape[0] != n_bands:
        raise PsfError(f"{path}: key 'psfs': {psfs.shape[0]} PSFs for {n_bands} image bands")
    if psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"{path}: key 'psfs': PSF images are {psfs.shape[1]}x{psfs.shape[2]}; "
                       f"both sides must be odd")
    if not np.issubdtype(psfs.dtype, np.floating) and not np.issubdtype(psfs.dtype, np.integer):
        raise PsfError(f"{path}: key 'psfs': expected floats, got dtype {psfs.dtype}")
    psfs = psfs.astype(np.float64, copy=True)
    for b in range(n_bands):
        if not np.all(np.isfinite(psfs[b])):
            raise PsfError(f"{path}: key 'psfs': band {band_names[b]!r} PSF has NaN/inf pixels")
        total = float(psfs[b].sum())
        if not abs(total - 1.0) <= PSF_SUM_TOLERANCE:
            raise PsfError(f"{path}: key 'psfs': band {band_names[b]!r} PSF sums to {total:.6g}, "
                           f"not within {PSF_SUM_TOLERANCE:g} of 1")
        psfs[b] /= total
    cy, cx = (psfs.shape[1] - 1) / 2.0, (psfs.shape[2] - 1) / 2.0
    yy = np.arange(psfs.shape[1], dtype=np.float64) - cy
    xx = np.arange(psfs.shape[2], dtype=np.float64) - cx
    psf_centroid = np.stack([psfs.sum(axis=2) @ yy, psfs.sum(axis=1) @ xx], axis=1)

    # -- pixel values -------------------------------------------------------------
    images = images.astype(np.float32, copy=True)
    variance = variance.astype(np.float32, copy=True)
    no_data = np.int32(1 << MASK_PLANES["NO_DATA"])
    had_no_data = (mask & no_data) != 0
    for key, arr in (("images", images), ("variance", variance)):
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            inside = nonfinite & footprint[None, :, :]
            if inside.any():
                b, y, x = (int(v) for v in np.argwhere(inside)[0])
                raise BlendDataError(f"{path}: key {key!r}: {int(inside.sum())} NaN/inf pixel(s) inside "
                                     f"the footprint, first band {band_names[b]!r} (y, x)=({y}, {x})")
            arr[nonfinite] = 0.0
            mask[nonfinite] |= no_data
    nonpos = ~(variance > 0)
    if nonpos.any():
        # a band with variance <= 0 at every footprint pixel is all NO_DATA: the deblender fits the
        # other bands and flags the blend flag_incomplete_data
        mask[nonpos] |= no_data
    n_new_no_data = int(np.count_nonzero(((mask & no_data) != 0) & ~had_no_data))

    meta = {
        "layout": layout,
        "footprint_in_file": fp_file is not None,
        "n_no_data_pixels": n_new_no_data,
        "psf_centroid_offset": psf_centroid,
        "peak_key": peak_key,
    }
    blend = BlendData(id=int(pid), source=path, bands=tuple(band_names), images=images,
                      variance=variance, mask=mask, footprint=footprint, psfs=psfs, peaks=peaks,
                      origin=origin, meta=meta)
    blend.peak_flags = classify_peaks(peaks, footprint, blend.bad_pixels())
    return blend


# --------------------------------------------------------------------------
# write_blend
# --------------------------------------------------------------------------

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def _npz_bytes(arrays: dict, compress: bool = False) -> bytes:
    """An npz archive of ``arrays`` as bytes, deterministic (fixed timestamps, key order)."""
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


def _blend_arrays(blend: BlendData) -> dict:
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
    }


def write_blend(path: Union[str, os.PathLike], blend: BlendData, compress: bool = False) -> str:
    """Write a blend in the hsc_blends npz layout.

    Keys: ``images``, ``variance``, ``mask`` (zeros if ``blend.mask`` is
    None), ``footprint`` stored **True OUTSIDE** the parent (the layout's
    convention; :func:`read_blend` inverts it back), ``psfs``, ``centers``
    (the peaks, (y, x)), ``filters`` (band names) and ``origin``. Arrays are
    written as they are, without validation or dtype changes, so tests can
    produce malformed files with it. The bytes are deterministic (fixed zip
    timestamps) and the file is replaced atomically.

    Returns
    -------
    str
        ``path`` (no ``.npz`` is appended).
    """
    path = os.fspath(path)
    payload = _npz_bytes(_blend_arrays(blend), compress=compress)
    _atomic_write(path, payload)
    return path


def _atomic_write(path: str, payload: bytes) -> None:
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
