"""Read one npz blend into a validated :class:`~hpcblend.io.blend_data.BlendData` (:func:`read_blend`), step by step.

The steps, each a function of its own: the file's members (and its format version), the parent id, the
pixel arrays' shapes, the band names, the peaks, the PSFs, and the clean-up of invalid pixels (they get
the ``NO_DATA`` mask bit). The layouts read are described in :mod:`hpcblend.io.blends`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from hpcblend.errors import BlendDataError, InputError, PsfError
from hpcblend.io.blend_data import BlendData, classify_peaks
from hpcblend.io.blend_files import INT64_MAX, VERSION_MEMBER, id_from_stem
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, NO_DATA_BIT, bad_pixel_mask, mask_bits
from hpcblend.io.npz import npz_array, open_npz
from hpcblend.io.psf import PSF_SUM_TOLERANCE, normalised_psf
from hpcblend.io.versions import check_version

__all__ = ["DEFAULT_BANDS", "read_blend"]

#: Band names assumed for a 5-plane file without ``filters`` and without a ``bands`` argument.
DEFAULT_BANDS: tuple = ("g", "r", "i", "z", "y")

_OPTIONAL = ("mask", "footprint", "filters", "origin", "centers")


def _load_members(path: str) -> dict:
    """The members read_blend uses (absent optional ones: None), after checking the required ones and the version."""
    with open_npz(path) as data:
        keys = set(data.files)
        for key in ("images", "variance", "psfs"):
            if key not in keys:
                raise InputError(f"{path}: missing key {key!r}")
        if "centers" not in keys and "catalog" not in keys:
            raise InputError(f"{path}: missing key 'centers' (or 'catalog') holding the peaks")
        if VERSION_MEMBER in keys:
            v = npz_array(data, path, VERSION_MEMBER)
            check_version("npz_blend", v[()] if v.size == 1 else v.tolist(), path)
        out = {key: npz_array(data, path, key) for key in ("images", "variance", "psfs")}
        for key in _OPTIONAL:
            out[key] = npz_array(data, path, key) if key in keys else None
        # 'centers' (the hsc_blends layout) wins; the scarlet layout's 'catalog' is read only without it
        out["catalog"] = npz_array(data, path, "catalog") if out["centers"] is None else None
    return out


def _parent_id(path: str, blend_id: Optional[int]) -> int:
    """The file stem when it is an integer id, else ``blend_id``."""
    pid = id_from_stem(path)
    if pid is not None:
        return pid
    if blend_id is None:
        raise InputError(f"{path}: file name stem {Path(path).stem!r} is not an integer id "
                         f"and no blend_id was given")
    try:
        pid = int(blend_id)
    except (TypeError, ValueError):
        raise InputError(f"{path}: blend_id {blend_id!r} is not an integer") from None
    if not 0 <= pid <= INT64_MAX:
        raise InputError(f"{path}: blend_id {pid} does not fit a non-negative int64")
    return pid


def _pixel_layout(path: str, m: dict) -> tuple:
    """(mask int32 (B, H, W), footprint bool (H, W) True inside, origin (y0, x0)) after the shape checks."""
    images, variance, mask = m["images"], m["variance"], m["mask"]
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
    fp_file = m["footprint"]
    if fp_file is not None:
        if fp_file.shape != (height, width):
            raise InputError(f"{path}: key 'footprint': shape {fp_file.shape} differs from the "
                             f"image plane {(height, width)}")
        footprint = ~fp_file.astype(bool)  # hsc_blends convention: True OUTSIDE the parent footprint
    else:
        footprint = np.ones((height, width), dtype=bool)
    origin = (0, 0)
    if m["origin"] is not None:
        o = np.asarray(m["origin"]).ravel()
        if o.size != 2 or not np.issubdtype(o.dtype, np.integer):
            raise InputError(f"{path}: key 'origin': expected 2 integers (y0, x0), got {m['origin']!r}")
        origin = (int(o[0]), int(o[1]))
    return mask, footprint, origin


def _decode_bands(arr: np.ndarray) -> tuple:
    out = []
    for v in np.asarray(arr).ravel():
        if isinstance(v, (bytes, np.bytes_)):
            v = v.decode("ascii", "replace")
        out.append(str(v).strip())
    return tuple(out)


def _band_names(path: str, filters: Optional[np.ndarray], bands: Optional[Sequence[str]], n_bands: int) -> tuple:
    """The band names: the file's ``filters``, else ``bands``, else :data:`DEFAULT_BANDS` for 5 planes, else b0, b1, ..."""
    file_bands = None
    if filters is not None:
        file_bands = _decode_bands(filters)
        if len(file_bands) != n_bands:
            raise BlendDataError(f"{path}: key 'filters': {len(file_bands)} band names "
                                 f"{file_bands} for {n_bands} image planes")
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
    return band_names


def _round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def _peaks(path: str, centers: Optional[np.ndarray], catalog: Optional[np.ndarray]) -> tuple:
    """(peaks int64 (K, 2) (y, x), the key they came from); positions rounded half up to pixels."""
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
        key = "centers"
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
        key = "catalog"
    return np.ascontiguousarray(peaks.reshape(-1, 2), dtype=np.int64), key


def _psfs(path: str, psfs: np.ndarray, band_names: tuple, tolerance: float) -> tuple:
    """(PSFs float64 (B, Ph, Pw) each summing to 1, flux centroid offsets (B, 2) (y, x) from the central pixel)."""
    n_bands = len(band_names)
    if psfs.ndim != 3:
        raise PsfError(f"{path}: key 'psfs': expected 3-D (B, Ph, Pw), got shape {psfs.shape}")
    if psfs.shape[0] != n_bands:
        raise PsfError(f"{path}: key 'psfs': {psfs.shape[0]} PSFs for {n_bands} image bands")
    if psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"{path}: key 'psfs': PSF images are {psfs.shape[1]}x{psfs.shape[2]}; "
                       f"both sides must be odd")
    if not np.issubdtype(psfs.dtype, np.floating) and not np.issubdtype(psfs.dtype, np.integer):
        raise PsfError(f"{path}: key 'psfs': expected floats, got dtype {psfs.dtype}")
    psfs = np.stack([normalised_psf(psfs[b], tolerance, f"{path}: key 'psfs': band {band_names[b]!r}")
                     for b in range(n_bands)])
    cy, cx = (psfs.shape[1] - 1) / 2.0, (psfs.shape[2] - 1) / 2.0
    yy = np.arange(psfs.shape[1], dtype=np.float64) - cy
    xx = np.arange(psfs.shape[2], dtype=np.float64) - cx
    return psfs, np.stack([(psfs.sum(axis=2) * yy).sum(axis=1), (psfs.sum(axis=1) * xx).sum(axis=1)], axis=1)


def _clean_pixels(path: str, m: dict, mask: np.ndarray, footprint: np.ndarray, band_names: tuple) -> tuple:
    """(images, variance float32 copies, number of pixels newly flagged NO_DATA); ``mask`` is updated in place.

    Invalid pixels (:func:`hpcblend.io.masks.bad_pixel_mask` without a mask: image or variance not
    finite, or variance <= 0) get ``NO_DATA``; non-finite values are set to 0. Inside the footprint a
    non-finite value is an error unless the mask already marks the pixel bad (a bad plane of
    :data:`~hpcblend.io.masks.DEFAULT_BAD_MASK_PLANES`: a coadd's ``NO_DATA`` pixels, a saturated core
    left empty) or the band has no finite pixel in the footprint at all (a band not observed there). A
    band whose every footprint pixel has variance <= 0 or is not finite becomes a band without data (the
    deblender fits the other bands and flags the blend ``flag_incomplete_data``).
    """
    images = m["images"].astype(np.float32, copy=True)
    variance = m["variance"].astype(np.float32, copy=True)
    no_data = np.int32(NO_DATA_BIT)
    had_no_data = (mask & no_data) != 0
    invalid = bad_pixel_mask(variance, images=images)
    known_bad = (mask & np.int32(mask_bits(DEFAULT_BAD_MASK_PLANES))) != 0
    missing_band = ~(np.isfinite(images) & np.isfinite(variance))[:, footprint].any(axis=1)
    for key, arr in (("images", images), ("variance", variance)):
        nonfinite = ~np.isfinite(arr)
        if nonfinite.any():
            inside = nonfinite & footprint[None, :, :] & ~known_bad & ~missing_band[:, None, None]
            if inside.any():
                b, y, x = (int(v) for v in np.argwhere(inside)[0])
                raise BlendDataError(f"{path}: key {key!r}: {int(inside.sum())} NaN/inf pixel(s) inside "
                                     f"the footprint not masked bad, first band {band_names[b]!r} (y, x)=({y}, {x})")
            arr[nonfinite] = 0.0
    mask[invalid] |= no_data
    return images, variance, int(np.count_nonzero(((mask & no_data) != 0) & ~had_no_data))


def read_blend(path: Union[str, os.PathLike], bands: Optional[Sequence[str]] = None,
               blend_id: Optional[int] = None, psf_tolerance: float = PSF_SUM_TOLERANCE) -> BlendData:
    """Read and validate one blend from an npz file.

    Parameters
    ----------
    path : str or path
        The npz file (a layout described in :mod:`hpcblend.io.blends`).
    bands : sequence of str, optional
        Band names the caller expects. If given, the file must have the same
        number of image planes (and, if it names its ``filters``, the same
        names in the same order).
    blend_id : int, optional
        Parent id to use when the file stem is not an integer (the driver
        passes a running number). An integer stem that fits int64 wins.
    psf_tolerance : float, optional
        Allowed ``|sum(psf) - 1|`` per band (default
        :data:`hpcblend.io.psf.PSF_SUM_TOLERANCE`, 1e-2).

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
        :data:`~hpcblend.io.masks.DEFAULT_BAD_MASK_PLANES`: peaks outside the
        image or the footprint, masked in every band, or duplicated are kept
        in ``peaks`` (as given, not clipped) but flagged, not raised.

    Raises
    ------
    InputError
        Unreadable/truncated file, not a zip archive, a member holding Python
        objects (pickled), missing key, malformed arrays (shape mismatch),
        no usable id; :class:`~hpcblend.io.versions.InputVersionError` for a
        ``format_version`` this hpcblend does not read.
    PsfError
        PSFs not 3-D, wrong band count, not finite, even-sized, or not
        summing to 1 within ``psf_tolerance``.
    BlendDataError
        Band-count mismatch against ``bands``; NaN/inf inside the footprint;
        no peaks in the file. (A band with variance <= 0 at every footprint
        pixel is not an error here: its pixels get ``NO_DATA``.)
    """
    path = os.fspath(path)
    m = _load_members(path)
    pid = _parent_id(path, blend_id)
    mask, footprint, origin = _pixel_layout(path, m)
    band_names = _band_names(path, m["filters"], bands, int(m["images"].shape[0]))
    # peaks outside the image or footprint, on masked pixels, or duplicated are flagged (not an error)
    # once the pixels are cleaned up below: see classify_peaks
    peaks, peak_key = _peaks(path, m["centers"], m["catalog"])
    psfs, psf_centroid = _psfs(path, m["psfs"], band_names, psf_tolerance)
    images, variance, n_new_no_data = _clean_pixels(path, m, mask, footprint, band_names)
    meta = {
        "layout": "hsc_blends" if m["centers"] is not None else "scarlet_catalog",
        "footprint_in_file": m["footprint"] is not None,
        "n_no_data_pixels": n_new_no_data,
        "psf_centroid_offset": psf_centroid,
        "peak_key": peak_key,
    }
    blend = BlendData(id=int(pid), source=path, bands=tuple(band_names), images=images,
                      variance=variance, mask=mask, footprint=footprint, psfs=psfs, peaks=peaks,
                      origin=origin, meta=meta)
    saturated = None if mask is None else (mask & mask_bits(["SAT"])) != 0
    blend.peak_flags = classify_peaks(peaks, footprint, blend.bad_pixels(), saturated)
    return blend
