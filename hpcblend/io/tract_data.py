"""The pixels of a tract, or of one patch's outer box, in all bands: :class:`TractData` (what the coadd readers return)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
from astropy.wcs import WCS

from hpcblend.geometry import Box
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, bad_pixel_mask
from hpcblend.io.tract_files import TractPaths
from hpcblend.skymap import PatchInfo

__all__ = ["TractData"]


@dataclass
class TractData:
    """Pixels of a tract, or of one patch's outer box, in all bands.

    Attributes
    ----------
    bands : tuple of str
        Band names, one per plane.
    images : ndarray, shape (B, H, W), float32
        Background-subtracted counts.
    variance : ndarray, shape (B, H, W), float32
        Variance in counts².
    mask : ndarray, shape (B, H, W), int32
        Mask bits, planes as in :attr:`mask_planes`.
    wcs : astropy.wcs.WCS
        Celestial WCS of the **tract** pixel frame (0-based in astropy's
        ``pixel_to_world``); see :meth:`local_wcs` for the arrays' frame.
    psfs : ndarray, shape (B, Ph, Pw), float64
        PSF per band, odd-sized, centred, each summing to 1.
    tract : int
        Tract number (``TRACT`` card; 0 if absent).
    paths : TractPaths
        Files read.
    mask_planes : dict of str to int
        Plane name -> bit number; equals :data:`hpcblend.io.masks.MASK_PLANES`
        plus any extra planes found in the files.
    box : Box
        Where the arrays sit in the tract frame: ``Box((0, 0), tract_shape)``
        for :func:`read_tract`, the patch's outer box for :func:`read_patch`.
    tract_shape : tuple of int
        (H, W) of the whole tract.
    zero_point : float
        ``MAGZERO``: ``mag = zero_point - 2.5 log10(counts)``; NaN if absent.
    patch : PatchInfo or None
        The patch read by :func:`read_patch`.
    n_bad_pixels : ndarray, shape (B,), int64
        Per band, the pixels of the box that were masked on reading (image
        not finite, or variance not finite or <= 0, without ``NO_DATA``):
        image set to 0, variance to ``inf``, ``NO_DATA`` bit set. Zeros when
        read with ``validate=False``.
    """

    bands: tuple
    images: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: WCS
    psfs: np.ndarray
    tract: int = 0
    paths: Optional[TractPaths] = None
    mask_planes: dict = field(default_factory=lambda: dict(MASK_PLANES))
    box: Optional[Box] = None
    tract_shape: Optional[Tuple[int, int]] = None
    zero_point: float = float("nan")
    patch: Optional[PatchInfo] = None
    n_bad_pixels: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.n_bad_pixels is None:
            self.n_bad_pixels = np.zeros(len(self.bands), dtype=np.int64)
        if self.box is None:
            self.box = Box((0, 0), tuple(int(n) for n in self.images.shape[1:]))
        if self.tract_shape is None:
            self.tract_shape = self.box.stop

    @property
    def n_bands(self) -> int:
        """Number of bands B."""
        return len(self.bands)

    @property
    def shape(self) -> Tuple[int, int]:
        """(H, W) of the arrays."""
        return tuple(int(n) for n in self.images.shape[1:])

    def local_wcs(self) -> WCS:
        """The WCS of the arrays' own frame (pixel ``[0, 0]`` = tract pixel ``box.origin``)."""
        y0, x0 = self.box.origin
        if y0 == 0 and x0 == 0:
            return self.wcs.deepcopy()
        return self.wcs.slice((slice(y0, None), slice(x0, None)))

    def pixel_to_sky(self, y, x):
        """Sky position of array positions.

        Parameters
        ----------
        y, x : float or array_like
            Positions in the arrays' frame (pixels, 0-based).

        Returns
        -------
        ra, dec : ndarray
            Degrees.
        """
        ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, float) + self.box.x0,
                                                 np.asarray(y, float) + self.box.y0)
        return ra, dec

    def bad_pixels(self, bad_planes=DEFAULT_BAD_MASK_PLANES) -> np.ndarray:
        """Pixels that must get zero weight, shape (B, H, W), bool.

        True where a plane of ``bad_planes`` is set (bits of :attr:`mask_planes`,
        else of :data:`~hpcblend.io.masks.MASK_PLANES`), or the variance is not
        finite or <= 0 (:func:`hpcblend.io.masks.bad_pixel_mask`).

        Raises
        ------
        KeyError
            A plane of ``bad_planes`` is unknown.
        """
        return bad_pixel_mask(self.variance, self.mask, bad_planes, mask_planes=self.mask_planes)
