"""A footprint cut out of its patch as the deblender's input (step 4 of detection).

:func:`footprint_to_blend` turns one :class:`~hpcblend.detect.footprints.Footprint` and the
patch-outer pixels it was found on into a :class:`~hpcblend.io.blends.BlendData`: the footprint's
box padded and clipped to the patch, images, variance and mask bits cut to it, the footprint's
pixels, its peaks in the blend's own frame, and the box's origin in the tract frame.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from hpcblend.detect.checks import check_cube, check_same_shape
from hpcblend.detect.footprints import Footprint, is_isolated
from hpcblend.errors import BlendDataError
from hpcblend.geometry import Box
from hpcblend.io.blends import BlendData
from hpcblend.io.masks import MASK_PLANES, NO_DATA_BIT

__all__ = ["footprint_to_blend"]

_NO_DATA = np.int32(NO_DATA_BIT)
_DETECTED = np.int32(1 << MASK_PLANES["DETECTED"])


def _checked_inputs(images, variance, mask, psfs, bands: Sequence[str], pad: int):
    """The inputs of :func:`footprint_to_blend` as arrays, checked: images, variance, mask (or None),
    band names (tuple), PSFs (B, Ph, Pw) float64 and their sums (B,)."""
    images = check_cube("images", images)
    variance = check_cube("variance", variance)
    check_same_shape("images", images, "variance", variance)
    if mask is not None:
        mask = np.asarray(mask)
        check_same_shape("images", images, "mask", mask)
    nb = images.shape[0]
    bands = tuple(str(b) for b in bands)
    if len(bands) != nb:
        raise BlendDataError(f"footprint_to_blend: {len(bands)} band names {bands} for {nb} image planes")
    psfs = np.asarray(psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != nb or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise BlendDataError(f"footprint_to_blend: psfs must be (B={nb}, Ph, Pw) with odd sides, "
                             f"got shape {psfs.shape}")
    sums = psfs.sum(axis=(1, 2))
    if not np.all(np.isfinite(psfs)) or np.any(sums <= 0):
        raise BlendDataError(f"footprint_to_blend: psfs not finite or not positive (sums {sums.tolist()})")
    if int(pad) < 0:
        raise ValueError(f"footprint_to_blend: pad must be >= 0 px, got {pad}")
    return images, variance, mask, bands, psfs, sums


def _cutout_box(footprint: Footprint, shape: Tuple[int, int], pad: int) -> Box:
    """The footprint's bounding box grown by ``pad`` and clipped to the (h, w) image; BlendDataError if it does not fit."""
    h, w = shape
    fb = footprint.bbox
    image_box = Box((0, 0), (h, w))
    if not image_box.contains_box(fb) or footprint.mask.shape != fb.shape:
        raise BlendDataError(f"footprint_to_blend: footprint {footprint.label} bbox {fb} "
                             f"(mask {footprint.mask.shape}) does not fit the {h}x{w} image")
    return fb.grow(int(pad)) & image_box


def _cut_pixels(images: np.ndarray, variance: np.ndarray, mask, box: Box):
    """Images, variance (float32) and mask bits (int32) inside ``box``, (B, h, w) each.

    Non-finite image or variance pixels become 0 with the ``NO_DATA`` bit (so they get zero weight);
    also returns how many of them did not have that bit already.
    """
    sl = (slice(None),) + box.slices
    img = np.array(images[sl], dtype=np.float32)
    var = np.array(variance[sl], dtype=np.float32)
    msk = (np.zeros(img.shape, dtype=np.int32) if mask is None
           else np.array(mask[sl], dtype=np.int32))
    not_finite = ~np.isfinite(img) | ~np.isfinite(var)
    n_bad = int(np.count_nonzero(not_finite & ((msk & _NO_DATA) == 0)))
    img[not_finite] = 0.0
    var[~np.isfinite(var)] = 0.0
    msk[not_finite] |= _NO_DATA
    return img, var, msk, n_bad


def footprint_to_blend(footprint: Footprint, images, variance, mask, psfs, bands: Sequence[str],
                       blend_id: int, source: str, origin: Tuple[int, int] = (0, 0),
                       pad: int = 5) -> BlendData:
    """Cut one footprint out of the patch as the deblender's :class:`~hpcblend.io.blends.BlendData`.

    The box is the footprint's bounding box padded by ``pad`` pixels on each
    side and clipped to the patch-outer box. Pixels of the box outside the
    footprint (including pixels of other footprints) have
    ``footprint == False`` and so zero weight in the fit
    (:meth:`BlendData.weights`). Non-finite image or variance pixels are set to
    0 and get the ``NO_DATA`` mask bit (the deblender gives them zero weight);
    their count is ``meta["n_no_data_pixels"]``. Pixels inside the footprint
    get the ``DETECTED`` bit.

    Parameters
    ----------
    footprint : Footprint
        From :func:`~hpcblend.detect.footprints.detect_footprints` on the same patch-outer pixels.
    images, variance : array_like, shape (B, H, W)
        Background-subtracted patch-outer pixels (counts) and variance (counts²).
    mask : array_like, shape (B, H, W), int, or None
        Mask bits (zeros if None).
    psfs : array_like, shape (B, Ph, Pw)
        PSF images at (or near) the footprint, odd-sized, centred; each is
        renormalised to sum 1 (float64).
    bands : sequence of str
        Band names, one per plane.
    blend_id : int
        The parent id (64-bit; the caller encodes tract, patch and running number).
    source : str
        Where the pixels came from (for messages and the catalog).
    origin : (int, int)
        Absolute ``(y0, x0)`` of the patch-outer pixel [0, 0] in the tract frame.
    pad : int
        Padding around the footprint's bounding box (pixels, >= 0).

    Returns
    -------
    BlendData
        ``images``/``variance`` float32, ``mask`` int32, ``footprint`` (h, w)
        bool True inside, ``peaks`` (K, 2) int64 in the blend's own frame,
        ``origin`` the absolute (y0, x0) of the blend box in the tract frame
        (so tract position = ``peaks + origin``). ``meta``: ``bbox_patch``
        (y0, x0, h, w) in the patch-outer frame, ``footprint_label``,
        ``isolated``, ``peak_significance``, ``n_no_data_pixels``.

    Raises
    ------
    BlendDataError
        If shapes disagree, the band count of ``bands``/``psfs`` differs, or
        the footprint does not fit the image.
    """
    images, variance, mask, bands, psfs, sums = _checked_inputs(images, variance, mask, psfs, bands, pad)
    box = _cutout_box(footprint, images.shape[1:], pad)
    img, var, msk, n_bad = _cut_pixels(images, variance, mask, box)
    fb = footprint.bbox
    fp = np.zeros(box.shape, dtype=bool)
    oy, ox = fb.y0 - box.y0, fb.x0 - box.x0
    fp[oy:oy + fb.height, ox:ox + fb.width] = footprint.mask
    msk[:, fp] |= _DETECTED
    peaks = np.ascontiguousarray(footprint.peaks - np.array([box.y0, box.x0], dtype=np.int64),
                                 dtype=np.int64)
    meta = {
        "bbox_patch": (box.y0, box.x0, box.height, box.width),
        "footprint_label": int(footprint.label),
        "isolated": is_isolated(footprint),
        "peak_significance": np.asarray(footprint.peak_significance, dtype=np.float64).copy(),
        "n_no_data_pixels": n_bad,
    }
    return BlendData(id=int(blend_id), source=str(source), bands=bands, images=img, variance=var,
                     mask=msk, footprint=fp, psfs=psfs / sums[:, None, None], peaks=peaks,
                     origin=(int(origin[0]) + box.y0, int(origin[1]) + box.x0), meta=meta)
