"""Source detection on a patch: background, multi-band detection image, footprints and peaks.

The per-patch pipeline calls, on the pixels of a patch's *outer* box (inner
box plus overlap), one band-first cube each of images (counts), variance
(counts²) and mask bits (:data:`hpcblend.io.blends.MASK_PLANES`):

1. :func:`estimate_background` — a smooth background per band
   (SExtractor's mesh-and-filter estimator through ``sep``; Bertin & Arnouts
   1996, A&AS 117, 393; Barbary 2016, JOSS 1, 58), subtracted;
2. :func:`detection_image` — one image from all bands (inverse-variance
   weighted mean, or a χ² image, Szalay, Connolly & Szokoly 1999, AJ 117, 68)
   with its per-pixel noise;
3. :func:`detect_footprints` — the detection image is correlated with a
   PSF-like kernel (the matched filter, giving a significance image in units of
   its own noise σ), thresholded and segmented (``sep.extract``), small regions
   dropped, regions grown (footprints that touch after growing become one),
   and peaks found in each footprint as prominent local maxima of the
   significance image;
4. :func:`footprint_to_blend` — one footprint cut out as the deblender's
   :class:`~hpcblend.io.blends.BlendData`.

Peaks are found once, on the multi-band detection image, so every band sees
the same sources at the same positions. The HSC pipeline detects in every band
separately and then merges footprints and peaks across bands
(``mergeCoaddDetections``; Bosch et al. 2018, PASJ 70, S5, Sect. 3.3 and 4.7);
with a single multi-band detection there is nothing to merge, so no per-band
peak merging is done here. A source detected in only one band still enters
the detection image (with that band's weight), and the χ² image detects
sources of any colour.

Conventions: arrays band-first ``(B, H, W)``; coordinates ``(y, x)`` in pixels
of the patch-outer frame (array indices of the input cube), pixel centres at
integer coordinates; images in counts, variance in counts², significance in
units of its noise σ (dimensionless).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import sep
from scipy import ndimage as ndi
from scipy import special
from scipy.signal import fftconvolve

from hpcblend.errors import BlendDataError, HpcblendError
from hpcblend.io.blends import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, BlendData, mask_bits
from hpcblend.geometry import Box

__all__ = [
    "Box",
    "Footprint",
    "BackgroundResult",
    "DetectionError",
    "DETECTION_METHODS",
    "estimate_background",
    "detection_image",
    "gaussian_kernel",
    "significance_image",
    "detect_footprints",
    "footprint_to_blend",
    "is_isolated",
]

#: Methods :func:`detection_image` knows.
DETECTION_METHODS: tuple = ("weighted", "chi2")

_NO_DATA = np.int32(1 << MASK_PLANES["NO_DATA"])
_DETECTED = np.int32(1 << MASK_PLANES["DETECTED"])


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


# --------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------

def _check_cube(name: str, arr, ndim: int = 3) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != ndim:
        expect = "(B, H, W)" if ndim == 3 else "(H, W)"
        raise BlendDataError(f"{name}: expected {ndim}-D {expect}, got shape {arr.shape}")
    if arr.size == 0:
        raise BlendDataError(f"{name}: empty array of shape {arr.shape}")
    return arr


def _check_same_shape(ref_name: str, ref: np.ndarray, name: str, arr: Optional[np.ndarray]) -> None:
    if arr is not None and arr.shape != ref.shape:
        raise BlendDataError(f"{name}: shape {arr.shape} differs from {ref_name} shape {ref.shape}")


def _bad_pixels(images: np.ndarray, variance: Optional[np.ndarray], mask: Optional[np.ndarray],
                bad_planes: Iterable[str]) -> np.ndarray:
    """(B, H, W) bool: masked in a bad plane, or image/variance not finite, or variance <= 0."""
    bad = ~np.isfinite(images)
    if variance is not None:
        bad |= ~np.isfinite(variance) | ~(variance > 0)
    if mask is not None:
        bits = mask_bits(tuple(bad_planes))
        if bits:
            bad |= (np.asarray(mask) & bits) != 0
    return bad


# --------------------------------------------------------------------------
# background
# --------------------------------------------------------------------------

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
        Mask bits (:data:`~hpcblend.io.blends.MASK_PLANES`); pixels with a bit of
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
    images = _check_cube("images", images)
    mask = None if mask is None else np.asarray(mask)
    variance = None if variance is None else np.asarray(variance)
    _check_same_shape("images", images, "mask", mask)
    _check_same_shape("images", images, "variance", variance)
    box_size = int(box_size)
    filter_size = int(filter_size)
    if box_size < 1:
        raise ValueError(f"estimate_background: box_size must be >= 1 px, got {box_size}")
    if filter_size < 1:
        raise ValueError(f"estimate_background: filter_size must be >= 1 mesh, got {filter_size}")
    bad = _bad_pixels(images, variance, mask, bad_planes)
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


# --------------------------------------------------------------------------
# detection image
# --------------------------------------------------------------------------

def _chi_to_gaussian(chi2: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """Normal deviate z with P(N(0,1) > z) = P(χ²_dof > chi2); 0 where dof == 0.

    Exact (``-ndtri(chdtrc)``) where the tail probability is representable,
    Wilson & Hilferty (1931) cube-root approximation for huge χ².
    """
    z = np.zeros(chi2.shape, dtype=np.float64)
    ok = dof > 0
    k = dof[ok].astype(np.float64)
    x = chi2[ok]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = special.chdtrc(k, x)
        exact = -special.ndtri(p)
        c = 2.0 / (9.0 * k)
        wh = (np.cbrt(x / k) - (1.0 - c)) / np.sqrt(c)
    use_wh = ~np.isfinite(exact) | (p < 1e-300)
    z[ok] = np.where(use_wh, wh, exact)
    return z


def detection_image(images, variance, mask=None, method: str = "weighted",
                    bad_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES) -> Tuple[np.ndarray, np.ndarray]:
    """Combine all bands into one detection image and its per-pixel noise σ.

    ``method="weighted"`` (default): the inverse-variance weighted mean

    .. math:: D = \\frac{\\sum_b w_b I_b}{\\sum_b w_b}, \\qquad
              \\sigma_D = \\Big(\\sum_b w_b\\Big)^{-1/2}, \\qquad w_b = 1/V_b,

    the minimum-variance estimate of a flat-spectrum (equal counts in every
    band) source; its S/N ``D / σ_D = Σ w_b I_b / sqrt(Σ w_b)``. Noise in
    ``D`` is Gaussian with σ_D, so thresholds in units of σ_D keep their
    meaning. A source bright in a single band is diluted by the other bands
    (by up to ``sqrt(B)`` in S/N).

    ``method="chi2"``: the χ² image ``χ² = Σ_b I_b² / V_b`` (Szalay, Connolly &
    Szokoly 1999), mapped to a Gaussian significance ``z`` with the same
    false-alarm probability for ``n_b`` (the number of good bands at the
    pixel) degrees of freedom, returned as ``D = z`` with ``σ_D = 1``. It
    detects sources of any colour (and negative fluctuations count as
    signal), but ``D`` is no longer linear in flux.

    Bad pixels (a ``bad_planes`` bit set, non-finite image or variance,
    variance <= 0) get zero weight in their band; a pixel bad in every band
    has ``D = 0`` and ``σ_D = inf``.

    Parameters
    ----------
    images : array_like, shape (B, H, W)
        Background-subtracted pixels (counts).
    variance : array_like, shape (B, H, W)
        Variance (counts²).
    mask : array_like, shape (B, H, W), int, optional
        Mask bits.
    method : {"weighted", "chi2"}
        See above.
    bad_planes : sequence of str
        Mask planes that make a pixel bad.

    Returns
    -------
    det_image : ndarray, shape (H, W), float32
        Counts (``weighted``) or significance (``chi2``).
    det_sigma : ndarray, shape (H, W), float32
        Per-pixel noise σ of ``det_image``, same units; ``inf`` where no band
        has data.

    Raises
    ------
    BlendDataError
        If the shapes are wrong or differ.
    ValueError
        If ``method`` is unknown.
    """
    if method not in DETECTION_METHODS:
        raise ValueError(f"detection_image: unknown method {method!r}; choose one of {DETECTION_METHODS}")
    images = _check_cube("images", images)
    variance = _check_cube("variance", variance)
    mask = None if mask is None else np.asarray(mask)
    _check_same_shape("images", images, "variance", variance)
    _check_same_shape("images", images, "mask", mask)
    bad = _bad_pixels(images, variance, mask, bad_planes)
    h, w = images.shape[1:]
    wsum = np.zeros((h, w), dtype=np.float64)
    acc = np.zeros((h, w), dtype=np.float64)
    ngood = np.zeros((h, w), dtype=np.int32)
    for b in range(images.shape[0]):
        good = ~bad[b]
        wb = np.zeros((h, w), dtype=np.float64)
        np.divide(1.0, variance[b], out=wb, where=good)
        ib = np.where(good, images[b], 0.0).astype(np.float64)
        if method == "weighted":
            acc += wb * ib
            wsum += wb
        else:
            acc += wb * ib * ib
            ngood += good
    if method == "weighted":
        has = wsum > 0
        det = np.zeros((h, w), dtype=np.float64)
        np.divide(acc, wsum, out=det, where=has)
        sigma = np.full((h, w), np.inf)
        np.divide(1.0, np.sqrt(wsum, where=has, out=np.zeros_like(wsum)), out=sigma, where=has)
    else:
        det = _chi_to_gaussian(acc, ngood)
        sigma = np.where(ngood > 0, 1.0, np.inf)
    return det.astype(np.float32), sigma.astype(np.float32)


# --------------------------------------------------------------------------
# matched filter
# --------------------------------------------------------------------------

def gaussian_kernel(sigma: float, radius: Optional[int] = None) -> np.ndarray:
    """Circular Gaussian filter kernel sampled at pixel centres, sum 1.

    Parameters
    ----------
    sigma : float
        Standard deviation (pixels).
    radius : int, optional
        Half-size; ``ceil(4 sigma)`` (at least 1) if None.

    Returns
    -------
    ndarray, shape (2 radius + 1, 2 radius + 1), float64
    """
    if not sigma > 0:
        raise ValueError(f"gaussian_kernel: sigma must be > 0 px, got {sigma}")
    r = int(radius) if radius is not None else max(1, int(math.ceil(4.0 * sigma)))
    u = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (u / sigma) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def _correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``out[p] = Σ_q kernel[q] image[p + q - c]`` with zeros outside (same shape as image)."""
    flipped = kernel[::-1, ::-1]
    if kernel.size <= 9:
        return ndi.correlate(image, kernel, mode="constant", cval=0.0)
    return fftconvolve(image, flipped, mode="same")


def _separable(kernel: np.ndarray):
    """``(a, b)`` with ``kernel == outer(a, b)`` (to 1e-10 relative), or None."""
    if min(kernel.shape) < 2:
        return None
    u, sv, vt = np.linalg.svd(kernel)
    if sv[0] <= 0 or sv[1] > 1e-10 * sv[0]:
        return None
    a = u[:, 0] * math.sqrt(sv[0])
    b = vt[0] * math.sqrt(sv[0])
    if a.sum() < 0:
        a, b = -a, -b
    return a, b


def _correlate_separable(image: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_correlate` with the kernel ``outer(a, b)``, as two 1-D passes."""
    tmp = ndi.correlate1d(image, a, axis=0, mode="constant", cval=0.0)
    return ndi.correlate1d(tmp, b, axis=1, mode="constant", cval=0.0)


def significance_image(det_image, det_sigma, kernel=None, filter_sigma: float = 1.5) -> np.ndarray:
    """Matched-filter significance of the detection image.

    .. math:: S(p) = \\frac{\\sum_q K_q D_{p+q} / \\sigma^2_{p+q}}
                           {\\sqrt{\\sum_q K_q^2 / \\sigma^2_{p+q}}}

    the maximum-likelihood amplitude of the template ``K`` centred at ``p``
    divided by its error: for Gaussian noise, ``S`` has unit variance at
    every pixel whatever ``K`` and the noise map, so a threshold on ``S`` is
    in units of σ (this is ``sep``'s ``filter_type="matched"``; Barbary 2016).
    Pixels with ``σ = inf`` drop out; near the image edge the sums run over
    the pixels that exist. The best kernel for point sources is the PSF.

    Parameters
    ----------
    det_image, det_sigma : array_like, shape (H, W)
        From :func:`detection_image`.
    kernel : array_like, shape (kh, kw), optional
        Filter template, odd-sized, centred (e.g. a band-averaged PSF image);
        its normalisation does not matter. A Gaussian of ``filter_sigma`` if None.
    filter_sigma : float
        σ (pixels) of the default Gaussian kernel; 1.5 px ≈ the HSC coadd PSF
        (FWHM ≈ 0.6″ at 0.168″/px).

    Returns
    -------
    ndarray, shape (H, W), float64
        Significance in units of σ; 0 where no pixel under the kernel has data.
    """
    det_image = _check_cube("det_image", det_image, ndim=2).astype(np.float64)
    det_sigma = _check_cube("det_sigma", det_sigma, ndim=2).astype(np.float64)
    _check_same_shape("det_image", det_image, "det_sigma", det_sigma)
    k = gaussian_kernel(filter_sigma) if kernel is None else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"significance_image: kernel must be 2-D and odd-sized, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or not k.sum() > 0:
        raise ValueError("significance_image: kernel must be finite with a positive sum")
    k = k / k.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(np.isfinite(det_sigma) & (det_sigma > 0), 1.0 / (det_sigma * det_sigma), 0.0)
    data = np.where(ivar > 0, det_image, 0.0)
    sep_k = _separable(k)
    if sep_k is not None:  # e.g. the default Gaussian: two 1-D passes, much cheaper than 2-D
        a, b = sep_k
        num = _correlate_separable(data * ivar, a, b)
        den = _correlate_separable(ivar, a * a, b * b)
    else:
        num = _correlate(data * ivar, k)
        den = _correlate(ivar, k * k)
    # FFT round-off: tiny negative/positive residue where ivar is 0 everywhere under the kernel
    tiny = 1e-12 * float(ivar.max()) * float((k * k).max()) if ivar.size else 0.0
    out = np.zeros(det_image.shape, dtype=np.float64)
    good = den > tiny
    np.divide(num, np.sqrt(den, where=good, out=np.ones_like(den)), out=out, where=good)
    return out


# --------------------------------------------------------------------------
# footprints and peaks
# --------------------------------------------------------------------------

def _disk(radius: int) -> np.ndarray:
    u = np.arange(-radius, radius + 1)
    return (u[:, None] ** 2 + u[None, :] ** 2) <= radius * radius


def _grow_mask(mask: np.ndarray, grow: int) -> np.ndarray:
    """Dilate by a disk of radius ``grow`` px (Euclidean), clipped at the image edges."""
    if grow <= 0:
        return mask.copy()
    if grow <= 4:
        return ndi.binary_dilation(mask, structure=_disk(grow))
    return ndi.distance_transform_edt(~mask) <= grow


def _segment(signif: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Regions of ``signif > threshold`` with >= min_area px (8-connected), via sep: (H, W) bool."""
    above = int(np.count_nonzero(signif > threshold))
    if above == 0:
        return np.zeros(signif.shape, dtype=bool)
    data = np.ascontiguousarray(signif, dtype=np.float32)
    if above + 1024 > sep.get_extract_pixstack():
        sep.set_extract_pixstack(int(above * 1.2) + 1024)
    try:
        _, seg = sep.extract(data, float(threshold), err=None, minarea=int(min_area),
                             filter_kernel=None, deblend_nthresh=1, deblend_cont=1.0,
                             clean=False, segmentation_map=True)
    except Exception as exc:  # sep raises plain Exception with its C error text
        raise DetectionError(f"detect_footprints: sep.extract failed on a {signif.shape[0]}x"
                             f"{signif.shape[1]} significance image at threshold {threshold:g} "
                             f"({above} pixels above): {exc}") from exc
    return seg > 0


_EIGHT = np.ones((3, 3), dtype=bool)


def _prominent(cand: np.ndarray, values: np.ndarray, sub_signif: np.ndarray, sub_mask: np.ndarray,
               min_prominence: float) -> np.ndarray:
    """(n,) bool: candidate ``i`` has topographic prominence >= ``min_prominence`` in the footprint.

    Prominence >= h  <=>  in the connected part of ``{S >= v_i - h} ∩ footprint``
    holding candidate ``i`` nothing is higher than ``v_i``. Testing each
    candidate at its own level costs one labelling per candidate (too slow
    for the thousands of noise maxima of a large footprint), so levels are
    snapped to a grid of step ``h/4``: at the grid level just above
    ``v_i - h`` a higher point in the component proves prominence < h (drop);
    at the grid level just below, no higher point proves prominence >= h
    (keep); the rare candidates in between are tested exactly. The result is
    exact; the cost is two labellings per grid level in use.
    """
    n = len(cand)
    if min_prominence <= 0 or n <= 1:
        return np.ones(n, dtype=bool)
    h = float(min_prominence)
    step = h / 4.0
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
    det_image = _check_cube("det_image", det_image, ndim=2)
    det_sigma = _check_cube("det_sigma", det_sigma, ndim=2)
    _check_same_shape("det_image", det_image, "det_sigma", det_sigma)
    if significance is None:
        signif = significance_image(det_image, det_sigma, kernel=kernel, filter_sigma=filter_sigma)
    else:
        signif = np.asarray(significance, dtype=np.float64)
        _check_same_shape("det_image", det_image, "significance", signif)

    detected = _segment(signif, threshold, int(min_area))
    if not detected.any():
        return []
    grown = _grow_mask(detected, int(grow))
    labels, n_fp = ndi.label(grown, structure=np.ones((3, 3), dtype=bool))
    slices = ndi.find_objects(labels)

    # candidate peaks: local maxima of S among the ungrown above-threshold pixels
    local_max = signif >= ndi.maximum_filter(signif, size=3, mode="constant", cval=-np.inf)
    cy, cx = np.nonzero(local_max & detected)
    cval = signif[cy, cx]
    clab = labels[cy, cx]
    order = np.lexsort((cx, cy, -cval, clab))  # by footprint, then brightest first (ties: raster)
    cy, cx, cval, clab = cy[order], cx[order], cval[order], clab[order]
    starts = np.searchsorted(clab, np.arange(1, n_fp + 2))

    footprints: List[Footprint] = []
    for i in range(n_fp):
        sl = slices[i]
        if sl is None:  # cannot happen for labels 1..n, kept for safety
            continue
        y0, x0 = sl[0].start, sl[1].start
        box = Box((int(y0), int(x0)), (int(sl[0].stop - y0), int(sl[1].stop - x0)))
        sub_mask = labels[sl] == (i + 1)
        a, b = starts[i], starts[i + 1]
        if b > a:
            cand = np.stack([cy[a:b] - y0, cx[a:b] - x0], axis=1).astype(np.int64)
            vals = cval[a:b]
        else:  # no local maximum (plateau artefacts): take the highest above-threshold pixel
            sub_s = np.where(sub_mask & detected[sl], signif[sl], -np.inf)
            py, px = np.unravel_index(int(np.argmax(sub_s)), sub_s.shape)
            cand = np.array([[py, px]], dtype=np.int64)
            vals = np.array([signif[y0 + py, x0 + px]])
        if len(cand) > 1:
            keep = _cull_peaks(cand, vals, signif[sl], sub_mask, float(min_peak_separation),
                               float(min_prominence))
        else:
            keep = np.array([0], dtype=np.int64)
        n_dropped = 0
        if max_peaks is not None and len(keep) > int(max_peaks):
            n_dropped = len(keep) - int(max_peaks)
            keep = keep[:int(max_peaks)]
        peaks = cand[keep] + np.array([y0, x0], dtype=np.int64)
        footprints.append(Footprint(
            label=i + 1, bbox=box, mask=sub_mask, peaks=np.ascontiguousarray(peaks, dtype=np.int64),
            peak_significance=np.asarray(vals[keep], dtype=np.float64),
            peak_values=np.asarray(det_image[peaks[:, 0], peaks[:, 1]], dtype=np.float64),
            meta={"n_candidates": int(len(cand)), "n_peaks_dropped": n_dropped}))
    return footprints


# --------------------------------------------------------------------------
# cut-out
# --------------------------------------------------------------------------

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
        From :func:`detect_footprints` on the same patch-outer pixels.
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
    images = _check_cube("images", images)
    variance = _check_cube("variance", variance)
    _check_same_shape("images", images, "variance", variance)
    if mask is not None:
        mask = np.asarray(mask)
        _check_same_shape("images", images, "mask", mask)
    nb, h, w = images.shape
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
    fb = footprint.bbox
    image_box = Box((0, 0), (h, w))
    if not image_box.contains_box(fb) or footprint.mask.shape != fb.shape:
        raise BlendDataError(f"footprint_to_blend: footprint {footprint.label} bbox {fb} "
                             f"(mask {footprint.mask.shape}) does not fit the {h}x{w} image")
    box = fb.grow(int(pad)) & image_box
    sl = (slice(None),) + box.slices
    img = np.array(images[sl], dtype=np.float32)
    var = np.array(variance[sl], dtype=np.float32)
    msk = (np.zeros(img.shape, dtype=np.int32) if mask is None
           else np.array(mask[sl], dtype=np.int32))
    bad = ~np.isfinite(img) | ~np.isfinite(var)
    n_bad = int(np.count_nonzero(bad & ((msk & _NO_DATA) == 0)))
    img[bad] = 0.0
    var[~np.isfinite(var)] = 0.0
    msk[bad] |= _NO_DATA
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
