"""One blend's pixels as the deblender consumes them (:class:`BlendData`), and the status bits of its peaks.

:class:`BlendData` is the contract between the readers (:func:`hpcblend.io.blends.read_blend`,
:func:`hpcblend.detect.footprint_to_blend`) and the deblender: band-first arrays ``(B, H, W)``, the parent
footprint, the PSFs and the peaks ``(y, x)``. :func:`classify_peaks` marks the peaks the deblender does
not fit (outside the image or footprint, on a pixel bad in every band, the second and later peaks on one
pixel) with the ``PEAK_*`` bits; they keep their place, so child ids and row counts do not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, bad_pixel_mask

__all__ = [
    "BlendData",
    "PEAK_DUPLICATE",
    "PEAK_MASKED",
    "PEAK_OUTSIDE_FOOTPRINT",
    "PEAK_OUTSIDE_IMAGE",
    "PEAK_MERGED",
    "PEAK_DROPPED",
    "classify_peaks",
]

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
        variance is not finite or <= 0 (:func:`hpcblend.io.masks.bad_pixel_mask`).
        """
        return bad_pixel_mask(self.variance, self.mask, bad_planes)

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


def classify_peaks(peaks: np.ndarray, footprint: np.ndarray, bad: np.ndarray,
                   saturated: Optional[np.ndarray] = None) -> np.ndarray:
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
    saturated : ndarray, shape (B, H, W), bool, optional
        Pixels of the ``SAT`` mask plane. A peak on a pixel bad in every band is
        kept when that pixel is saturated in some band: it is the core of a
        saturated star, the brightest source of its blend, whose unmasked wings
        must be modelled (dropping it leaves its light to the neighbours).

    Returns
    -------
    ndarray, shape (K,), int32
        OR of :data:`PEAK_OUTSIDE_IMAGE` (+ :data:`PEAK_OUTSIDE_FOOTPRINT`),
        :data:`PEAK_OUTSIDE_FOOTPRINT`, :data:`PEAK_MASKED` (bad in every
        band and saturated in none), and, among the peaks not dropped for those reasons,
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
    masked = bad[:, yi, xi].all(axis=0)
    if saturated is not None:
        masked &= ~saturated[:, yi, xi].any(axis=0)
    flags[np.flatnonzero(inside)[masked]] |= PEAK_MASKED
    first: dict = {}
    for k in np.flatnonzero(flags == 0):
        key = (int(y[k]), int(x[k]))
        if key in first:
            flags[k] |= PEAK_DUPLICATE
            flags[first[key]] |= PEAK_MERGED
        else:
            first[key] = k
    return flags
