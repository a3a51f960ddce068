"""Mask planes and the bad-pixel mask: which pixels every stage gives zero weight.

Mask bits follow the LSST/HSC ``afw`` planes (:data:`MASK_PLANES`, value of a plane ``1 << bit``).
A pixel is *bad* — zero weight in detection, deblending and forced photometry — where a plane of
``bad_planes`` (default :data:`DEFAULT_BAD_MASK_PLANES`, those the LSST deblender ignores) is set, or
its variance is not finite or <= 0, or (when the image is given) its image value is not finite.
:func:`bad_pixel_mask` is the one definition; readers, detection and the patch units call it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import numpy as np

__all__ = ["MASK_PLANES", "DEFAULT_BAD_MASK_PLANES", "NO_DATA_BIT", "mask_bits", "bad_pixel_mask"]

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

#: Value of the ``NO_DATA`` plane (pixels without usable data: the readers set it on invalid pixels).
NO_DATA_BIT: int = 1 << MASK_PLANES["NO_DATA"]


def mask_bits(names: Union[str, Iterable[str]], planes: Optional[Mapping[str, int]] = None) -> int:
    """Bit mask (OR of ``1 << bit``) of the named mask planes.

    Parameters
    ----------
    names : str or iterable of str
        Plane names (case-insensitive); a single name may be given as a string.
    planes : mapping of str -> int, optional
        A file's own plane -> bit dictionary (e.g. :attr:`hpcblend.io.coadd.TractData.mask_planes`);
        a name found there takes its bit, any other name its bit in :data:`MASK_PLANES`.

    Returns
    -------
    int
        E.g. ``mask_bits(["BAD", "SAT"]) == 3``.

    Raises
    ------
    KeyError
        If a name is not a known plane.
    """
    known = dict(MASK_PLANES) if planes is None else {**MASK_PLANES, **planes}
    if isinstance(names, str):
        names = [names]
    value = 0
    for name in names:
        key = str(name).upper()
        if key not in known:
            raise KeyError(f"unknown mask plane {name!r}; known planes: {', '.join(known)}")
        value |= 1 << known[key]
    return value


def bad_pixel_mask(variance: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
                   bad_planes: Union[str, Iterable[str]] = DEFAULT_BAD_MASK_PLANES, *,
                   images: Optional[np.ndarray] = None, mask_planes: Optional[Mapping[str, int]] = None
                   ) -> np.ndarray:
    """Pixels that must get zero weight.

    Parameters
    ----------
    variance : ndarray, shape (B, H, W) (or any shape shared by the arrays given), optional
        Variance in counts²; a pixel whose variance is not finite or <= 0 is bad.
    mask : ndarray of int, same shape, optional
        Mask bits; a pixel with a bit of ``bad_planes`` set is bad.
    bad_planes : str or iterable of str
        Plane names (default :data:`DEFAULT_BAD_MASK_PLANES`); empty: the mask marks nothing.
    images : ndarray, same shape, optional
        Pixel values; when given, a non-finite value is bad.
    mask_planes : mapping of str -> int, optional
        The mask's own plane -> bit dictionary (see :func:`mask_bits`).

    Returns
    -------
    ndarray of bool, same shape
        True at bad pixels.

    Raises
    ------
    KeyError
        A plane of ``bad_planes`` is unknown.
    ValueError
        None of ``variance``, ``images``, ``mask`` is given.
    """
    if variance is not None:
        bad = ~np.isfinite(variance) | ~(variance > 0)
        if images is not None:
            bad |= ~np.isfinite(images)
    elif images is not None:
        bad = ~np.isfinite(images)
    elif mask is not None:
        bad = np.zeros(np.shape(mask), dtype=bool)
    else:
        raise ValueError("bad_pixel_mask: give at least one of variance, images, mask")
    if mask is not None:
        bits = mask_bits(bad_planes, mask_planes)
        if bits:
            bad |= (np.asarray(mask) & bits) != 0
    return bad
