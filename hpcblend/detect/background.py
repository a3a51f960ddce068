"""Background of a patch: a smooth sky level per band, estimated and subtracted (SExtractor's estimator via sep).

Step 1 of detection (:mod:`hpcblend.detect`): SExtractor's mesh-and-filter estimator through
``sep`` (Bertin & Arnouts 1996, A&AS 117, 393; Barbary 2016, JOSS 1, 58). Images in counts,
band-first ``(B, H, W)``; bad pixels (:func:`hpcblend.io.masks.bad_pixel_mask`) are ignored.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import sep

from hpcblend.detect.checks import check_cube, check_same_shape
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, bad_pixel_mask

__all__ = ["BackgroundResult", "estimate_background"]


class BackgroundResult(NamedTuple):
    """What :func:`estimate_background` returns (a tuple; unpack or use the names).

    Attributes
    ----------
    images : ndarray, shape (B, H, W), float32
        Background-subtracted images (counts); bad pixels keep their value
        minus the background (NaN stays NaN).
    background : ndarray, shape (B, H, W), float32
        The background subtracted (counts).
    rms : ndarray, shape (B, H, W), float32
        Background noise rms (counts); NaN in a band with no good pixel.
    global_rms : ndarray, shape (B,), float64
        sep's global rms per band (counts); NaN for a band with no good pixel.
    """

    images: np.ndarray
    background: np.ndarray
    rms: np.ndarray
    global_rms: np.ndarray


def estimate_background(images, mask=None, box_size: int = 128, filter_size: int = 3,
                        bad_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES,
                        variance=None) -> BackgroundResult:
    """Estimate and subtract a smooth background in every band.

    SExtractor's estimator (Bertin & Arnouts 1996, Sect. 3.1) through
    ``sep.Background``: the image is cut into ``box_size`` × ``box_size``
    meshes; in each, the pixel histogram is iteratively 3σ-clipped and the
    mode estimated (``2.5 median − 1.5 mean``, or the clipped mean where the
    field is not crowded); the mesh values are median-filtered over
    ``filter_size`` × ``filter_size`` meshes and interpolated with a bicubic
    spline. Sources bias the estimate upwards somewhat where they fill a large
    fraction of a mesh; choose ``box_size`` several times the largest galaxy.

    Parameters
    ----------
    images : array_like, shape (B, H, W)
        Pixels in counts (any float dtype or byte order; copied to
        C-contiguous native float32 for ``sep``).
    mask : array_like, shape (B, H, W), int, optional
        Mask bits (:data:`~hpcblend.io.masks.MASK_PLANES`); pixels with a bit of
        ``bad_planes`` set are ignored. Non-finite pixels are always ignored.
    box_size : int
        Mesh size in pixels (HSC's coadd background uses 128-px bins at
        0.168″/px; Bosch et al. 2018, Sect. 3.2).
    filter_size : int
        Median-filter size in meshes (odd, >= 1; 1 = no filtering).
    bad_planes : sequence of str
        Mask planes to ignore.
    variance : array_like, shape (B, H, W), optional
        If given, pixels with variance not finite or <= 0 are ignored too.

    Returns
    -------
    BackgroundResult
        ``(images, background, rms, global_rms)``; see :class:`BackgroundResult`.

    Raises
    ------
    BlendDataError
        If the arrays are not 3-D or their shapes differ.
    ValueError
        If ``box_size`` < 1 or ``filter_size`` < 1.
    """
    images = check_cube("images", images)
    mask = None if mask is None else np.asarray(mask)
    variance = None if variance is None else np.asarray(variance)
    check_same_shape("images", images, "mask", mask)
    check_same_shape("images", images, "variance", variance)
    box_size = int(box_size)
    filter_size = int(filter_size)
    if box_size < 1:
        raise ValueError(f"estimate_background: box_size must be >= 1 px, got {box_size}")
    if filter_size < 1:
        raise ValueError(f"estimate_background: filter_size must be >= 1 mesh, got {filter_size}")
    bad = bad_pixel_mask(variance, mask, bad_planes, images=images)
    nb = images.shape[0]
    sub = np.empty(images.shape, dtype=np.float32)
    back = np.empty(images.shape, dtype=np.float32)
    rms = np.empty(images.shape, dtype=np.float32)
    grms = np.empty(nb, dtype=np.float64)
    for b in range(nb):
        data = np.ascontiguousarray(images[b], dtype=np.float32)  # native byte order, C order
        bad_b = np.ascontiguousarray(bad[b])
        if bad_b.all():
            back[b] = 0.0
            rms[b] = np.nan
            grms[b] = np.nan
            sub[b] = data
            continue
        clean = np.where(bad_b, np.float32(0.0), data)  # sep must not see NaN
        bkg = sep.Background(clean, mask=bad_b, bw=box_size, bh=box_size, fw=filter_size,
                             fh=filter_size)
        back[b] = bkg.back(dtype=np.float32)
        rms[b] = bkg.rms(dtype=np.float32)
        grms[b] = float(bkg.globalrms)
        sub[b] = data - back[b]
    return BackgroundResult(images=sub, background=back, rms=rms, global_rms=grms)

