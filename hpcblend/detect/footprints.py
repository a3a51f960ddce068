"""Footprints and peaks on a patch's significance image (step 3 of detection).

:func:`detect_footprints` thresholds the matched-filter significance image
(:func:`hpcblend.detect.image.significance_image`) and segments it (``sep.extract``), drops small
regions, grows the regions (footprints that touch after growing become one), and finds peaks in
each footprint as prominent local maxima of the significance. A :class:`Footprint` is one parent:
its box (a :class:`hpcblend.geometry.Box`), its pixels and its peaks, in the patch-outer frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import sep
from scipy import ndimage as ndi

from hpcblend.detect.checks import check_cube, check_same_shape
from hpcblend.detect.image import significance_image
from hpcblend.errors import HpcblendError
from hpcblend.geometry import Box
from hpcblend.kernels.detection import dilate_disk

__all__ = ["DetectionError", "Footprint", "is_isolated", "detect_footprints", "grow_mask_reference",
           "segment_pixels"]

#: :func:`grow_mask_reference` dilates with a disk up to this radius (pixels), beyond it by a distance
#: transform (the same pixels, cheaper for large disks); a run grows footprints in compiled code.
DILATION_MAX_RADIUS = 4
#: ``sep``'s pixel stack is raised, when the pixels above threshold come within this many of it, to
#: ``PIXSTACK_GROWTH`` times their number plus this margin (so a dense field does not overflow it).
PIXSTACK_MARGIN = 1024
PIXSTACK_GROWTH = 1.2
#: The prominence test snaps levels to a grid of ``min_prominence / PROMINENCE_LEVEL_STEPS``: finer
#: grids decide more candidates without the exact test but label at more levels (see ``_prominent``).
PROMINENCE_LEVEL_STEPS = 4.0
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


class DetectionError(HpcblendError):
    """Detection failed on well-formed input (e.g. ``sep`` ran out of its pixel buffer).

    (Defined here until it moves to :mod:`hpcblend.errors`.)
    """


@dataclass(eq=False)
class Footprint:
    """One detected footprint (a parent) with its peaks.

    Attributes
    ----------
    label : int
        Label of the footprint in the (grown) segmentation, 1-based, in raster
        order of its first pixel.
    bbox : hpcblend.geometry.Box
        Bounding box in the patch-outer frame (pixels): ``origin`` (y0, x0),
        ``shape`` (h, w).
    mask : ndarray, shape bbox.shape (h, w), bool
        True at the footprint's pixels (its spans) inside ``bbox``.
    peaks : ndarray, shape (K, 2), int64
        Peak positions ``(y, x)`` in the patch-outer frame, brightest (highest
        significance) first. ``K >= 1``.
    peak_significance : ndarray, shape (K,), float64
        Matched-filter significance at each peak (units of its noise σ).
    peak_values : ndarray, shape (K,), float64
        Detection-image value at each peak pixel (counts, unsmoothed).
    """

    label: int
    bbox: Box
    mask: np.ndarray
    peaks: np.ndarray
    peak_significance: np.ndarray
    peak_values: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def area(self) -> int:
        """Number of pixels in the footprint."""
        return int(np.count_nonzero(self.mask))

    @property
    def n_peaks(self) -> int:
        """Number of peaks K."""
        return int(self.peaks.shape[0])

    def full_mask(self, shape: Tuple[int, int]) -> np.ndarray:
        """The footprint as an (H, W) bool image of the patch-outer frame of ``shape``."""
        out = np.zeros(tuple(int(n) for n in shape), dtype=bool)
        out[self.bbox.slices] = self.mask
        return out


def is_isolated(footprint: Footprint) -> bool:
    """True if the footprint holds a single peak (an isolated source, no deblending needed).

    Parameters
    ----------
    footprint : Footprint

    Returns
    -------
    bool
        ``footprint.n_peaks == 1``. The LSST pipeline still "deblends" such
        parents (one child equal to the parent); the caller may skip the fit.
    """
    return footprint.n_peaks == 1


def _disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool: pixels within ``radius`` of the centre (Euclidean)."""
    u = np.arange(-radius, radius + 1)
    return (u[:, None] ** 2 + u[None, :] ** 2) <= radius * radius


def _grow_mask(mask: np.ndarray, grow: int) -> np.ndarray:
    """Dilate by a disk of radius ``grow`` px (Euclidean), clipped at the image edges (compiled)."""
    return dilate_disk(np.ascontiguousarray(mask, dtype=bool), int(max(grow, 0)))


def grow_mask_reference(mask: np.ndarray, grow: int) -> np.ndarray:
    """:func:`_grow_mask` with SciPy (the reference of :func:`hpcblend.kernels.detection.dilate_disk`).

    Parameters
    ----------
    mask : ndarray, shape (H, W), bool
    grow : int
        Disk radius (pixels).

    Returns
    -------
    ndarray, shape (H, W), bool
    """
    if grow <= 0:
        return mask.copy()
    if grow <= DILATION_MAX_RADIUS:
        return ndi.binary_dilation(mask, structure=_disk(grow))
    return ndi.distance_transform_edt(~mask) <= grow


def segment_pixels(signif: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Regions of ``signif > threshold`` with >= min_area px (8-connected), via sep: (H, W) bool."""
    above = int(np.count_nonzero(signif > threshold))
    if above == 0:
        return np.zeros(signif.shape, dtype=bool)
    data = np.ascontiguousarray(signif, dtype=np.float32)
    if above + PIXSTACK_MARGIN > sep.get_extract_pixstack():
        sep.set_extract_pixstack(int(above * PIXSTACK_GROWTH) + PIXSTACK_MARGIN)
    try:
        _, seg = sep.extract(data, float(threshold), err=None, minarea=int(min_area),
                             filter_kernel=None, deblend_nthresh=1, deblend_cont=1.0,
                             clean=False, segmentation_map=True)
    except Exception as exc:  # sep raises plain Exception with its C error text
        raise DetectionError(f"detect_footprints: sep.extract failed on a {signif.shape[0]}x"
                             f"{signif.shape[1]} significance image at threshold {threshold:g} "
                             f"({above} pixels above): {exc}") from exc
    return seg > 0


def _prominent(cand: np.ndarray, values: np.ndarray, sub_signif: np.ndarray, sub_mask: np.ndarray,
               min_prominence: float) -> np.ndarray:
    """(n,) bool: candidate ``i`` has topographic prominence >= ``min_prominence`` in the footprint.

    Prominence >= h  <=>  in the connected part of ``{S >= v_i - h} ∩ footprint``
    holding candidate ``i`` nothing is higher than ``v_i``. Testing each
    candidate at its own level costs one labelling per candidate (too slow
    for the thousands of noise maxima of a large footprint), so levels are
    snapped to a grid of step ``h / PROMINENCE_LEVEL_STEPS``: at the grid level just above
    ``v_i - h`` a higher point in the component proves prominence < h (drop);
    at the grid level just below, no higher point proves prominence >= h
    (keep); the rare candidates in between are tested exactly. The result is
    exact; the cost is two labellings per grid level in use.
    """
    n = len(cand)
    if min_prominence <= 0 or n <= 1:
        return np.ones(n, dtype=bool)
    h = float(min_prominence)
    step = h / PROMINENCE_LEVEL_STEPS
    cache: dict = {}

    def comp_max(level: float, key):
        """Labels of {S >= level} ∩ footprint and the maximum of S per label (index 0: -inf)."""
        if key in cache:
            return cache[key]
        region = sub_mask & (sub_signif >= level)
        lab, nlab = ndi.label(region, structure=_EIGHT)
        mx = np.full(nlab + 1, -np.inf)
        if nlab:
            np.maximum.at(mx, lab[region], sub_signif[region])
        cache[key] = (lab, mx)
        return lab, mx

    ys, xs = cand[:, 0], cand[:, 1]
    lo = np.floor((values - h) / step).astype(np.int64)
    keep = np.zeros(n, dtype=bool)
    undecided = np.ones(n, dtype=bool)
    for j in np.unique(lo):
        sel = np.flatnonzero(lo == j)
        lab_hi, mx_hi = comp_max((j + 1) * step, ("g", int(j) + 1))
        higher = mx_hi[lab_hi[ys[sel], xs[sel]]] > values[sel]
        undecided[sel[higher]] = False  # a higher point above v - h: prominence < h
        rest = sel[~higher]
        if rest.size:
            lab_lo, mx_lo = comp_max(j * step, ("g", int(j)))
            sure = mx_lo[lab_lo[ys[rest], xs[rest]]] <= values[rest]
            keep[rest[sure]] = True
            undecided[rest[sure]] = False
    for i in np.flatnonzero(undecided):  # exact test at v_i - h
        lab, mx = comp_max(values[i] - h, ("x", int(i)))
        keep[i] = mx[lab[ys[i], xs[i]]] <= values[i]
    keep[0] = True
    return keep


def _cull_peaks(cand: np.ndarray, values: np.ndarray, sub_signif: np.ndarray, sub_mask: np.ndarray,
                min_separation: float, min_prominence: float) -> np.ndarray:
    """Indices (into ``cand``, brightest first) of the candidate peaks kept in one footprint.

    ``cand`` (n, 2) are candidate local maxima (bbox frame) sorted by
    decreasing ``values``. The brightest is always kept. Another is kept if its
    topographic prominence within the footprint is at least
    ``min_prominence`` (:func:`_prominent`) and it lies at least
    ``min_separation`` px from every brighter kept peak.
    """
    ok = np.flatnonzero(_prominent(cand, values, sub_signif, sub_mask, min_prominence))
    keep = [0]
    sep2 = min_separation * min_separation
    for i in ok:
        if i == 0:
            continue
        kept = cand[keep]
        d2 = (kept[:, 0] - cand[i, 0]) ** 2 + (kept[:, 1] - cand[i, 1]) ** 2
        if np.all(d2 >= sep2):
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)



def _check_detect_args(threshold, min_area, grow, min_peak_separation, min_prominence, max_peaks) -> None:
    """ValueError for a parameter of :func:`detect_footprints` out of its range."""
    if not threshold > 0:
        raise ValueError(f"detect_footprints: threshold must be > 0 sigma, got {threshold}")
    if int(min_area) < 1:
        raise ValueError(f"detect_footprints: min_area must be >= 1 px, got {min_area}")
    if int(grow) < 0:
        raise ValueError(f"detect_footprints: grow must be >= 0 px, got {grow}")
    if min_peak_separation < 0 or min_prominence < 0:
        raise ValueError("detect_footprints: min_peak_separation and min_prominence must be >= 0, "
                         f"got {min_peak_separation}, {min_prominence}")
    if max_peaks is not None and int(max_peaks) < 1:
        raise ValueError(f"detect_footprints: max_peaks must be >= 1 or None, got {max_peaks}")


def _significance(det_image, det_sigma, kernel, filter_sigma, significance) -> Tuple[np.ndarray, np.ndarray]:
    """The checked detection image (H, W) and its significance ``S`` (H, W) float64 (computed unless given)."""
    det_image = check_cube("det_image", det_image, ndim=2)
    det_sigma = check_cube("det_sigma", det_sigma, ndim=2)
    check_same_shape("det_image", det_image, "det_sigma", det_sigma)
    if significance is None:
        signif = significance_image(det_image, det_sigma, kernel=kernel, filter_sigma=filter_sigma)
    else:
        signif = np.asarray(significance, dtype=np.float64)
        check_same_shape("det_image", det_image, "significance", signif)
    return det_image, signif


def _candidates(signif: np.ndarray, detected: np.ndarray, labels: np.ndarray, n_fp: int):
    """Candidate peaks: local maxima of S among the ungrown above-threshold pixels.

    Returns their ``y``, ``x``, ``S`` (sorted by footprint label, then brightest first, ties in
    raster order) and ``starts`` (n_fp + 1,): footprint ``i``'s candidates are ``starts[i]:starts[i+1]``.
    """
    local_max = signif >= ndi.maximum_filter(signif, size=3, mode="constant", cval=-np.inf)
    cy, cx = np.nonzero(local_max & detected)
    cval = signif[cy, cx]
    clab = labels[cy, cx]
    order = np.lexsort((cx, cy, -cval, clab))
    cy, cx, cval, clab = cy[order], cx[order], cval[order], clab[order]
    return cy, cx, cval, np.searchsorted(clab, np.arange(1, n_fp + 2))


def _footprint(label: int, sl, labels, detected, signif, det_image, cand_y, cand_x, cand_val,
               min_peak_separation: float, min_prominence: float, max_peaks: Optional[int]) -> Footprint:
    """The :class:`Footprint` of ``label`` (bounding slices ``sl``) from its candidate peaks (patch frame)."""
    y0, x0 = sl[0].start, sl[1].start
    box = Box((int(y0), int(x0)), (int(sl[0].stop - y0), int(sl[1].stop - x0)))
    sub_mask = labels[sl] == label
    if len(cand_y):
        cand = np.stack([cand_y - y0, cand_x - x0], axis=1).astype(np.int64)
        vals = cand_val
    else:  # no local maximum (plateau artefacts): take the highest above-threshold pixel
        sub_s = np.where(sub_mask & detected[sl], signif[sl], -np.inf)
        py, px = np.unravel_index(int(np.argmax(sub_s)), sub_s.shape)
        cand = np.array([[py, px]], dtype=np.int64)
        vals = np.array([signif[y0 + py, x0 + px]])
    if len(cand) > 1:
        keep = _cull_peaks(cand, vals, signif[sl], sub_mask, float(min_peak_separation), float(min_prominence))
    else:
        keep = np.array([0], dtype=np.int64)
    n_dropped = 0
    if max_peaks is not None and len(keep) > int(max_peaks):
        n_dropped = len(keep) - int(max_peaks)
        keep = keep[:int(max_peaks)]
    peaks = cand[keep] + np.array([y0, x0], dtype=np.int64)
    return Footprint(
        label=label, bbox=box, mask=sub_mask, peaks=np.ascontiguousarray(peaks, dtype=np.int64),
        peak_significance=np.asarray(vals[keep], dtype=np.float64),
        peak_values=np.asarray(det_image[peaks[:, 0], peaks[:, 1]], dtype=np.float64),
        meta={"n_candidates": int(len(cand)), "n_peaks_dropped": n_dropped})


def detect_footprints(det_image, det_sigma, threshold: float = 5.0, min_area: int = 5, grow: int = 2,
                      kernel=None, filter_sigma: float = 1.5, min_peak_separation: float = 2.0,
                      min_prominence: float = 3.0, max_peaks: Optional[int] = None,
                      significance: Optional[np.ndarray] = None) -> List[Footprint]:
    """Find footprints (connected regions above threshold) and their peaks.

    1. The detection image is matched-filtered (:func:`significance_image`)
       into a significance image ``S`` (units of σ).
    2. Pixels with ``S > threshold`` are segmented into 8-connected regions by
       ``sep.extract`` (SExtractor's line-by-line segmentation, without its
       multi-threshold deblending or cleaning); regions with fewer than
       ``min_area`` pixels are dropped.
    3. The union of the regions is dilated by a disk of ``grow`` pixels
       (clipped at the image edges) and re-labelled (8-connected): regions
       closer than about ``2 grow`` pixels merge into one footprint, as the
       LSST pipeline grows footprints by a multiple of the PSF σ before
       deblending (Bosch et al. 2018, Sect. 4.7).
    4. Peaks: local maxima of ``S`` (>= their 8 neighbours) inside the
       ungrown above-threshold pixels, taken brightest first; a peak is kept
       if it lies at least ``min_peak_separation`` px from every brighter kept
       peak and, if ``min_prominence`` > 0, is separated from every higher
       point of the footprint by a dip of at least ``min_prominence`` σ
       (topographic prominence), so that noise bumps on a bright source do
       not become peaks. Every footprint has at least one peak.

    Parameters
    ----------
    det_image, det_sigma : array_like, shape (H, W)
        From :func:`detection_image` (counts, or significance for ``chi2``).
    threshold : float
        Detection threshold on ``S`` in units of σ (HSC: 5).
    min_area : int
        Minimum number of above-threshold pixels of a region (pixels).
    grow : int
        Footprint growth radius (pixels, >= 0).
    kernel : array_like, shape (kh, kw), optional
        Matched-filter template (e.g. the band-averaged PSF); Gaussian of
        ``filter_sigma`` px if None.
    filter_sigma : float
        σ (pixels) of the default Gaussian kernel.
    min_peak_separation : float
        Minimum distance (pixels) between peaks of one footprint.
    min_prominence : float
        Minimum prominence (σ of ``S``) of a secondary peak; 0 disables the test.
    max_peaks : int, optional
        Keep at most this many (brightest) peaks per footprint; the number of
        candidates dropped is in ``meta["n_peaks_dropped"]``.
    significance : ndarray, shape (H, W), optional
        A precomputed ``S`` (then ``kernel``/``filter_sigma`` are ignored).

    Returns
    -------
    list of Footprint
        In label order (raster order of each footprint's first pixel); peaks
        in the patch-outer frame, brightest first. ``meta`` holds
        ``n_candidates`` (local maxima before culling).

    Raises
    ------
    BlendDataError
        If the images are not 2-D or differ in shape.
    ValueError
        For a non-positive threshold, negative ``min_area``/``grow``, etc.
    DetectionError
        If ``sep`` fails.
    """
    _check_detect_args(threshold, min_area, grow, min_peak_separation, min_prominence, max_peaks)
    det_image, signif = _significance(det_image, det_sigma, kernel, filter_sigma, significance)
    detected = segment_pixels(signif, threshold, int(min_area))
    if not detected.any():
        return []
    grown = _grow_mask(detected, int(grow))
    labels, n_fp = ndi.label(grown, structure=_EIGHT)
    slices = ndi.find_objects(labels)
    cy, cx, cval, starts = _candidates(signif, detected, labels, n_fp)
    footprints: List[Footprint] = []
    for i in range(n_fp):
        if slices[i] is None:  # cannot happen for labels 1..n, kept for safety
            continue
        a, b = starts[i], starts[i + 1]
        footprints.append(_footprint(i + 1, slices[i], labels, detected, signif, det_image, cy[a:b], cx[a:b],
                                     cval[a:b], min_peak_separation, min_prominence, max_peaks))
    return footprints
