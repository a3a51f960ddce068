"""Read a coadded tract, any box of it, or one patch's outer box, in all bands, validated (:func:`read_tract`, ...).

Headers, shapes, WCS, mask planes and PSFs are checked on every read; pixels of the box read are checked
and repaired (bad pixels masked ``NO_DATA``) where ``validate``. What is checked, and the file layout, are
described in :mod:`hpcblend.io.coadd`; the FITS helpers are in :mod:`hpcblend.io.fits_hdus`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from astropy.io import fits

from hpcblend.errors import InputError
from hpcblend.geometry import Box
from hpcblend.io.fits_hdus import (apply_remap, check_format_version, get_hdu, hdu_shape, header_mask_planes,
                                   open_fits, pad_psfs, read_psf_file, read_section, read_wcs, remap_table,
                                   wcs_cards, wcs_difference)
from hpcblend.io.masks import MASK_PLANES, NO_DATA_BIT, bad_pixel_mask
from hpcblend.io.psf import COADD_PSF_SUM_TOLERANCE
from hpcblend.io.tract_data import TractData
from hpcblend.io.tract_files import DEFAULT_PATTERN, DEFAULT_PSF_PATTERN, PathLike, TractPaths, as_tract_paths
from hpcblend.skymap import PatchInfo

__all__ = ["read_tract", "read_box", "read_patch", "read_tract_shape", "check_tract"]

_HDUS = ("IMAGE", "VARIANCE", "MASK")


@dataclass
class _Reading:
    """One read in progress: what the bands read so far agree on, and the arrays being filled."""

    paths: TractPaths
    box: Optional[Box]
    merged_planes: dict = field(default_factory=lambda: dict(MASK_PLANES))
    tract: Optional[int] = None
    zero_point: float = float("nan")
    ref_path: Optional[str] = None
    ref_shape: Optional[Tuple[int, int]] = None
    ref_wcs: object = None
    ref_cards: Optional[tuple] = None
    read_box: Optional[Box] = None
    images: Optional[np.ndarray] = None
    variance: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    n_bad: Optional[np.ndarray] = None


def _check_primary(hdul: fits.HDUList, path: str, band: str, r: _Reading, first: bool) -> None:
    """The primary header: format version, ``BAND``, ``TRACT`` (the same in every band), ``MAGZERO`` (first band)."""
    try:
        primary = hdul[0].header
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: HDU 'PRIMARY': cannot read: {exc}") from None
    check_format_version(primary, path)
    file_band = primary.get("BAND")
    if file_band is not None and str(file_band).strip() != band:
        raise InputError(f"{path}: HDU 'PRIMARY': BAND = {file_band!r}, but the file was given "
                         f"for band {band!r}")
    try:
        file_tract = int(primary.get("TRACT", 0))
    except (TypeError, ValueError):
        raise InputError(f"{path}: HDU 'PRIMARY': TRACT = {primary.get('TRACT')!r} is not an "
                         f"integer") from None
    if r.tract is None:
        r.tract = file_tract
    elif file_tract != r.tract:
        raise InputError(f"{path}: HDU 'PRIMARY': TRACT = {file_tract}, but {r.ref_path} has "
                         f"TRACT = {r.tract}")
    if first and "MAGZERO" in primary:
        r.zero_point = float(primary["MAGZERO"])


def _check_geometry(hdus: dict, path: str, r: _Reading) -> None:
    """Shapes of the three HDUs and the WCS, against the first band's; the first band allocates the arrays."""
    shape = hdu_shape(hdus["IMAGE"], path, "IMAGE")
    for name in ("VARIANCE", "MASK"):
        other = hdu_shape(hdus[name], path, name)
        if other != shape:
            raise InputError(f"{path}: HDU {name!r}: shape {other} differs from IMAGE {shape}")
    cards = wcs_cards(hdus["IMAGE"].header)
    # bands after the first: parse the WCS only if its cards differ from the first band's
    wcs = r.ref_wcs if (r.ref_shape is not None and cards == r.ref_cards) else read_wcs(hdus["IMAGE"], path)
    if r.ref_shape is None:
        r.ref_cards = cards
        r.ref_shape, r.ref_wcs, r.ref_path = shape, wcs, path
        r.read_box = Box((0, 0), shape) if r.box is None else r.box
        if not Box((0, 0), shape).contains_box(r.read_box) or r.read_box.is_empty:
            raise InputError(f"{path}: HDU 'IMAGE': requested box {r.read_box} is not inside the "
                             f"tract of shape {shape}")
        n_bands = len(r.paths.bands)
        r.n_bad = np.zeros(n_bands, dtype=np.int64)
        r.images = np.empty((n_bands,) + r.read_box.shape, dtype=np.float32)
        r.variance = np.empty((n_bands,) + r.read_box.shape, dtype=np.float32)
        r.mask = np.empty((n_bands,) + r.read_box.shape, dtype=np.int32)
    else:
        if shape != r.ref_shape:
            raise InputError(f"{path}: HDU 'IMAGE': shape {shape} differs from {r.ref_path} {r.ref_shape}")
        why = wcs_difference(r.ref_wcs, wcs)
        if why is not None:
            raise InputError(f"{path}: HDU 'IMAGE': WCS differs from {r.ref_path}: {why}")


def _read_pixels(hdus: dict, path: str, i: int, r: _Reading) -> None:
    """Band ``i``'s pixels of the box into the arrays, mask bits remapped to hpcblend's planes."""
    img = read_section(hdus["IMAGE"], path, "IMAGE", r.read_box)
    var = read_section(hdus["VARIANCE"], path, "VARIANCE", r.read_box)
    msk = read_section(hdus["MASK"], path, "MASK", r.read_box)
    for name, arr in (("IMAGE", img), ("VARIANCE", var)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise InputError(f"{path}: HDU {name!r}: expected numbers, got dtype {arr.dtype}")
    if not np.issubdtype(msk.dtype, np.integer):
        raise InputError(f"{path}: HDU 'MASK': expected integer bits, got dtype {msk.dtype}")
    pairs = remap_table(header_mask_planes(hdus["MASK"].header, path), r.merged_planes)
    msk = apply_remap(msk.astype(np.int64), pairs).astype(np.int32)
    r.images[i] = img
    r.variance[i] = var
    r.mask[i] = msk


def _mask_bad_pixels(img: np.ndarray, var: np.ndarray, msk: np.ndarray, path: str, band: str, box: Box,
                     patch: Optional[PatchInfo]) -> int:
    """Mask one band's bad pixels in place (image 0, variance inf, ``NO_DATA``); returns how many.

    Bad: ``NO_DATA`` clear and the image not finite or the variance not finite or <= 0
    (:func:`hpcblend.io.masks.bad_pixel_mask` without the mask). Raises :class:`InputError` when the band
    has no usable pixel left in the box (and the file, not ``NO_DATA``, says so for at least one pixel):
    nothing of the band could be measured there.
    """
    usable = (msk & NO_DATA_BIT) == 0
    bad = bad_pixel_mask(var, images=img) & usable
    n = int(np.count_nonzero(bad))
    if n == 0:
        return 0
    if not (usable & ~bad).any():
        bad_image = ~np.isfinite(img) & usable
        bad_var = ~((var > 0) & (var < np.inf)) & usable  # NaN compares False: not finite or <= 0
        rows_cols = f"[{box.y0}:{box.y0 + box.height}, {box.x0}:{box.x0 + box.width}]"
        where = f"patch {patch.name} (outer box {rows_cols})" if patch is not None else f"box {rows_cols}"
        raise InputError(f"{path}: band {band!r}: no usable pixel in {where}: "
                         f"{int(np.count_nonzero(bad_image))} non-finite in HDU 'IMAGE', "
                         f"{int(np.count_nonzero(bad_var))} variance <= 0 or non-finite in HDU 'VARIANCE' "
                         f"(NO_DATA not set), the rest NO_DATA")
    img[bad] = 0.0
    var[bad] = np.inf
    msk[bad] |= NO_DATA_BIT
    return n


def _read(source, bands, box: Optional[Box], pattern: str, psf_pattern: str, psf_tolerance: float,
          validate: bool, patch: Optional[PatchInfo] = None) -> TractData:
    """Read ``box`` (None: the whole tract) of every band, then the PSFs (the readers below)."""
    paths = as_tract_paths(source, bands, pattern, psf_pattern)
    r = _Reading(paths=paths, box=box)
    for i, band in enumerate(paths.bands):
        path = paths.coadds[band]
        with open_fits(path, "coadd") as hdul:
            _check_primary(hdul, path, band, r, first=i == 0)
            hdus = {name: get_hdu(hdul, path, name) for name in _HDUS}
            _check_geometry(hdus, path, r)
            _read_pixels(hdus, path, i, r)
            if validate:
                r.n_bad[i] = _mask_bad_pixels(r.images[i], r.variance[i], r.mask[i], path, band, r.read_box, patch)
    psfs = pad_psfs([read_psf_file(paths.psfs[b], b, psf_tolerance) for b in paths.bands])
    return TractData(bands=paths.bands, images=r.images, variance=r.variance, mask=r.mask, wcs=r.ref_wcs,
                     psfs=psfs, tract=int(r.tract), paths=paths, mask_planes=r.merged_planes, box=r.read_box,
                     tract_shape=r.ref_shape, zero_point=r.zero_point, patch=patch, n_bad_pixels=r.n_bad)


# -----------------------------------------------------------------------------
# public readers
# -----------------------------------------------------------------------------


def read_tract(source: Union[PathLike, TractPaths, Mapping], bands: Optional[Sequence[str]] = None, *,
               pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
               psf_tolerance: float = COADD_PSF_SUM_TOLERANCE, validate: bool = True) -> TractData:
    """Read a whole tract, all bands, and validate it.

    Parameters
    ----------
    source : str, path, TractPaths or mapping
        A tract directory (files found by ``pattern`` / ``psf_pattern``), a
        :class:`TractPaths`, or a mapping band -> coadd path (the PSF is then
        ``psf_pattern`` next to it) or band -> ``(coadd_path, psf_path)``.
    bands : sequence of str, optional
        Bands to read, in this order; default: all bands of ``source``
        (discovered in a directory, in u g r i z y order).
    pattern, psf_pattern : str
        File name patterns with a ``{band}`` field (directory sources only,
        and ``psf_pattern`` for a mapping of coadd paths).
    psf_tolerance : float, default :data:`hpcblend.io.psf.COADD_PSF_SUM_TOLERANCE` (1e-3)
        Allowed ``|sum(psf) - 1|``.
    validate : bool, default True
        Check and repair pixels: where ``NO_DATA`` is clear, a non-finite
        image or a variance that is not finite or <= 0 makes the pixel
        masked (image 0, variance ``inf``, ``NO_DATA`` set; counted in
        ``n_bad_pixels``); a band with no usable pixel raises. False returns
        the pixels as stored. Headers, shapes, WCS and PSFs are always
        checked.

    Returns
    -------
    TractData
        ``images``/``variance`` float32 (B, H, W), ``mask`` int32 (B, H, W),
        ``psfs`` float64 (B, Ph, Pw), ``box == Box((0, 0), (H, W))``,
        ``n_bad_pixels`` (B,) the pixels masked on reading.

    Raises
    ------
    InputError
        A file or HDU missing or unreadable, shapes or WCS differing between
        bands, a band with no usable pixel in the box read (see the module
        docstring); the message names the file and HDU (or band). With no
        ``bands`` and a directory ``source``, a band's coadd file missing
        while the tract's other files name it (:func:`tract_paths`).
    PsfError
        PSF file missing, not 2-D, even-sized, not finite or not normalised.
    """
    return _read(source, bands, None, pattern, psf_pattern, psf_tolerance, validate)


def read_box(source: Union[PathLike, TractPaths, Mapping], box: Box, bands: Optional[Sequence[str]] = None, *,
             pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
             psf_tolerance: float = COADD_PSF_SUM_TOLERANCE, validate: bool = True) -> TractData:
    """Read any box of a tract, all bands, validated as in :func:`read_tract`.

    Parameters
    ----------
    source, bands, pattern, psf_pattern, psf_tolerance, validate
        As :func:`read_tract`.
    box : Box
        Pixels (y, x) of the tract to read; must lie inside it.

    Returns
    -------
    TractData
        Arrays of shape (B, box.h, box.w); ``patch`` is None; bad pixels
        masked and counted as in :func:`read_tract`.

    Raises
    ------
    InputError, PsfError
        As :func:`read_tract` (a band with no usable pixel in ``box``), and
        if the box is empty or not inside the tract.
    """
    return _read(source, bands, box, pattern, psf_pattern, psf_tolerance, validate)


def read_patch(source: Union[PathLike, TractPaths, Mapping], patch: PatchInfo,
               bands: Optional[Sequence[str]] = None, *, pattern: str = DEFAULT_PATTERN,
               psf_pattern: str = DEFAULT_PSF_PATTERN, psf_tolerance: float = COADD_PSF_SUM_TOLERANCE,
               validate: bool = True) -> TractData:
    """Read the outer box of one patch, all bands, without loading the whole tract.

    Only the rows of ``patch.outer`` are read (one contiguous read per HDU,
    then its columns; ``ImageHDU.section`` for scaled or compressed HDUs), so a rank holds
    ``B x outer area`` pixels, not the tract. Headers, WCS and PSFs are
    validated as in :func:`read_tract`; pixel checks cover the outer box only:
    bad pixels there are masked and counted (``n_bad_pixels``), and only a
    band with no usable pixel in the outer box fails the patch.

    Parameters
    ----------
    source : str, path, TractPaths or mapping
        As for :func:`read_tract`.
    patch : PatchInfo
        From :func:`hpcblend.skymap.make_patches` for this tract's shape.
    bands, pattern, psf_pattern, psf_tolerance, validate
        As for :func:`read_tract`.

    Returns
    -------
    TractData
        Arrays of shape (B, outer.h, outer.w); ``box == patch.outer``,
        ``patch`` set; ``wcs`` is still the tract's (use
        :meth:`TractData.local_wcs` or :meth:`TractData.pixel_to_sky` for
        array positions).

    Raises
    ------
    InputError
        As :func:`read_tract` (a band with no usable pixel in the outer box:
        the message names the file, band and patch), and if the outer box is
        not inside the tract (a patch made for another tract shape), or
        ``patch.tract`` differs from the files' ``TRACT``.
    PsfError
        As :func:`read_tract`.
    """
    if not isinstance(patch, PatchInfo):
        raise InputError(f"read_patch: expected a PatchInfo, got {patch!r}")
    data = _read(source, bands, patch.outer, pattern, psf_pattern, psf_tolerance, validate, patch=patch)
    if data.tract != patch.tract:
        raise InputError(f"{data.paths.coadds[data.bands[0]]}: HDU 'PRIMARY': TRACT = {data.tract}, "
                         f"but the patch belongs to tract {patch.tract}")
    return data


def read_tract_shape(source: Union[PathLike, TractPaths, Mapping],
                     bands: Optional[Sequence[str]] = None, *,
                     pattern: str = DEFAULT_PATTERN) -> Tuple[int, int]:
    """(H, W) of a tract from the first band's ``IMAGE`` header, reading no pixels.

    For making the patch grid (:func:`hpcblend.skymap.make_patches`) before
    any rank reads pixels.

    Raises
    ------
    InputError
        File or ``IMAGE`` HDU missing or not 2-D.
    """
    paths = as_tract_paths(source, bands, pattern, DEFAULT_PSF_PATTERN)
    path = paths.coadds[paths.bands[0]]
    with open_fits(path, "coadd") as hdul:
        return hdu_shape(get_hdu(hdul, path, "IMAGE"), path, "IMAGE")


def check_tract(source: Union[PathLike, TractPaths, Mapping], bands: Optional[Sequence[str]] = None, *,
                pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
                psf_tolerance: float = COADD_PSF_SUM_TOLERANCE) -> Tuple[int, int]:
    """Check every band of a tract before any work is planned: headers, shapes, WCS and PSFs.

    Reads one pixel per band (all header, WCS, mask-plane and PSF checks of
    :func:`read_tract` run; pixel checks run per patch later, so one bad
    pixel at the corner read here is not an error), so a band with another
    shape or WCS, a missing or bad PSF file, or — when ``bands`` is None and
    ``source`` is a directory — a missing coadd file of a band that the
    tract's PSF files, ``BANDS`` cards or ``truth.fits`` name
    (:func:`tract_paths`), fails the run at once with a message naming the
    file and HDU, instead of failing every patch or running without the band.

    Parameters
    ----------
    source, bands, pattern, psf_pattern, psf_tolerance
        As :func:`read_tract`. With ``bands`` given, only their files are
        required.

    Returns
    -------
    (H, W) : tuple of int
        The tract's shape.

    Raises
    ------
    InputError, PsfError
        As :func:`read_tract` and :func:`tract_paths` (missing band files).
    """
    data = _read(source, bands, Box((0, 0), (1, 1)), pattern, psf_pattern, psf_tolerance, validate=False)
    return tuple(int(n) for n in data.tract_shape)
