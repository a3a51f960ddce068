"""Write a coadded tract in hpcblend's layout: one coadd FITS file and one PSF FITS file per band (:func:`write_tract`).

The layout is described in :mod:`hpcblend.io.coadd`; every primary header carries the format version
(``HBCOADD``, :data:`hpcblend.io.versions.COADD_FORMAT_VERSION`). Each file is written to a temporary name
and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from hpcblend.errors import InputError, PsfError
from hpcblend.io.fits_hdus import VERSION_CARD, atomic_writeto
from hpcblend.io.masks import MASK_PLANES
from hpcblend.io.tract_files import DEFAULT_PATTERN, DEFAULT_PSF_PATTERN, PathLike, TractPaths, tract_paths
from hpcblend.io.versions import COADD_FORMAT_VERSION

__all__ = ["write_tract"]


def _checked_arrays(bands: tuple, images, variance, mask, psfs, wcs) -> tuple:
    """(images, variance, mask, psfs) as arrays, after checking their shapes and the WCS."""
    images = np.asarray(images)
    variance = np.asarray(variance)
    if images.ndim != 3 or images.shape[0] != len(bands):
        raise InputError(f"write_tract: images shape {images.shape} is not (B={len(bands)}, H, W)")
    if variance.shape != images.shape:
        raise InputError(f"write_tract: variance shape {variance.shape} differs from images {images.shape}")
    if mask is None:
        mask = np.zeros(images.shape, dtype=np.int32)
    mask = np.asarray(mask)
    if mask.shape != images.shape or not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"write_tract: mask must be integer (B, H, W) = {images.shape}, got "
                         f"{mask.dtype} {mask.shape}")
    psfs = np.asarray(psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != len(bands) or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"write_tract: psfs shape {psfs.shape} is not (B={len(bands)}, odd, odd)")
    if not isinstance(wcs, WCS) or wcs.naxis != 2 or not wcs.has_celestial:
        raise InputError("write_tract: wcs must be a 2-axis celestial astropy WCS")
    return images, variance, mask, psfs


def _wcs_header(wcs: WCS) -> fits.Header:
    """The WCS cards of every HDU, with the full PC matrix."""
    wcs_header = wcs.to_header()
    if any(key.startswith("PC") for key in wcs_header):
        # astropy omits zero PC terms; write the full matrix so that readers that need every
        # term (GalSim's GSFitsWCS) read the same WCS
        pc = {f"PC{i}_{j}": float(wcs_header.get(f"PC{i}_{j}", 0.0)) for i in (1, 2) for j in (1, 2)}
        for key in pc:
            wcs_header.remove(key, ignore_missing=True)
        after = "CRPIX2"
        for key, value in pc.items():
            wcs_header.set(key, value, "Coordinate transformation matrix element", after=after)
            after = key
    return wcs_header


def _primary(band: str, tract: int) -> fits.PrimaryHDU:
    """A primary HDU with the cards every file of the tract has: format version, tract, band."""
    primary = fits.PrimaryHDU()
    primary.header[VERSION_CARD] = (COADD_FORMAT_VERSION, "hpcblend coadd file layout version")
    primary.header["TRACT"] = (int(tract), "tract number")
    primary.header["BAND"] = (band, "band (filter) name")
    return primary


def _coadd_hdus(i: int, band: str, bands: tuple, arrays: tuple, wcs_header: fits.Header, planes: dict,
                tract: int, zero_point: float, header: Optional[Mapping]) -> fits.HDUList:
    """The coadd file of band ``i``: primary header, IMAGE, VARIANCE, MASK (with its ``MP_`` plane cards)."""
    images, variance, mask = arrays
    primary = _primary(band, tract)
    primary.header["MAGZERO"] = (float(zero_point), "mag = MAGZERO - 2.5 log10(counts)")
    primary.header["BANDS"] = (",".join(bands), "bands of the tract written together")
    for key, value in (header or {}).items():
        primary.header[key] = value
    hdus = [primary]
    for name, arr, dtype, unit in (("IMAGE", images[i], np.float32, "count"),
                                   ("VARIANCE", variance[i], np.float32, "count2"),
                                   ("MASK", mask[i], np.int32, None)):
        hdu = fits.ImageHDU(np.ascontiguousarray(arr, dtype=dtype), name=name)
        hdu.header.extend(wcs_header, update=True)
        if unit:
            hdu.header["BUNIT"] = unit
        if name == "MASK":
            for plane, bit in sorted(planes.items(), key=lambda kv: kv[1]):
                key = f"MP_{plane.upper()}"
                if len(key) > 8:  # LSST writes these as HIERARCH cards too
                    key = "HIERARCH " + key
                hdu.header[key] = (int(bit), f"mask plane {plane} = 1 << {int(bit)}")
        hdus.append(hdu)
    return fits.HDUList(hdus)


def write_tract(directory: PathLike, bands: Sequence[str], images: np.ndarray, variance: np.ndarray,
                mask: Optional[np.ndarray], wcs: WCS, psfs: np.ndarray, *, tract: int = 0,
                zero_point: float = 27.0, mask_planes: Optional[Mapping[str, int]] = None,
                pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
                header: Optional[Mapping] = None, overwrite: bool = True) -> TractPaths:
    """Write a tract in the layout of this module (one coadd and one PSF file per band).

    Every coadd's primary header lists ``bands`` in its ``BANDS`` card, so a
    reader discovering the bands (:func:`hpcblend.io.tract_files.tract_paths`)
    notices a coadd file that went missing, and ``HBCOADD``, the layout's
    format version (:data:`hpcblend.io.versions.COADD_FORMAT_VERSION`).

    Parameters
    ----------
    directory : str or path
        Output directory (created if missing).
    bands : sequence of str
        Band names, one per plane.
    images, variance : array_like, shape (B, H, W)
        Counts and counts²; written as float32.
    mask : array_like, shape (B, H, W), int, or None
        Mask bits (planes of ``mask_planes``); written as int32; None writes zeros.
    wcs : astropy.wcs.WCS
        2-axis celestial WCS of the tract pixel frame; written to every HDU header.
    psfs : array_like, shape (B, Ph, Pw)
        PSF images, odd-sized; written as float64 as given (not renormalised).
    tract : int, default 0
        ``TRACT`` card.
    zero_point : float, default 27.0
        ``MAGZERO`` card (HSC coadds: 27).
    mask_planes : mapping of str to int, optional
        Plane -> bit, written as ``MP_<NAME>`` cards; default
        :data:`hpcblend.io.masks.MASK_PLANES`.
    pattern, psf_pattern : str
        File names with a ``{band}`` field.
    header : mapping, optional
        Extra cards for every primary header (keys <= 8 characters, or
        ``HIERARCH``-style longer keys).
    overwrite : bool, default True
        Replace existing files (each file is written to a temporary name and
        renamed, so a reader never sees half a file).

    Returns
    -------
    TractPaths
        The files written.

    Raises
    ------
    InputError
        Shapes inconsistent, WCS not 2-axis celestial, a file exists and
        ``overwrite`` is False.
    PsfError
        PSFs not 3-D (B, Ph, Pw) with odd Ph, Pw.
    """
    bands = tuple(str(b) for b in bands)
    images, variance, mask, psfs = _checked_arrays(bands, images, variance, mask, psfs, wcs)
    planes = dict(MASK_PLANES if mask_planes is None else mask_planes)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    wcs_header = _wcs_header(wcs)
    paths = tract_paths(directory, bands, pattern, psf_pattern)
    for i, band in enumerate(bands):
        hdul = _coadd_hdus(i, band, bands, (images, variance, mask), wcs_header, planes, tract, zero_point, header)
        atomic_writeto(hdul, paths.coadds[band], overwrite)
        psf_hdu = fits.ImageHDU(np.ascontiguousarray(psfs[i]), name="PSF")
        atomic_writeto(fits.HDUList([_primary(band, tract), psf_hdu]), paths.psfs[band], overwrite)
    return paths
