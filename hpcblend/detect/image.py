"""The detection image of a patch and its matched-filter significance (steps 2 and 3a of detection).

:func:`detection_image` combines all bands into one image with its per-pixel noise σ (the
inverse-variance weighted mean, or a χ² image, Szalay, Connolly & Szokoly 1999, AJ 117, 68);
:func:`significance_image` correlates it with a PSF-like template (the matched filter), giving a
significance in units of its own noise σ that :func:`hpcblend.detect.footprints.detect_footprints`
thresholds. Arrays band-first ``(B, H, W)``, images in counts, variance in counts².
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi
from scipy import special
from scipy.signal import fftconvolve

from hpcblend.detect.checks import check_cube, check_same_shape
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, bad_pixel_mask, mask_bits
from hpcblend.kernels.detection import (correlate_separable, matched_filter_inputs, matched_filter_ratio,
                                       weighted_detection_image)

__all__ = ["DETECTION_METHODS", "detection_image", "detection_image_reference", "gaussian_kernel",
           "significance_image", "significance_image_reference"]

#: Methods :func:`detection_image` knows.
DETECTION_METHODS: tuple = ("weighted", "chi2")
#: Below this χ² tail probability the exact normal deviate is not representable (``ndtri`` of a
#: subnormal): the Wilson & Hilferty (1931) cube-root approximation takes over.
CHI2_TAIL_P_MIN = 1e-300
#: Kernels of at most this many pixels (3×3) are correlated directly; larger ones by FFT, which is
#: faster from there on.
DIRECT_CORRELATE_MAX_SIZE = 9
#: A kernel whose second singular value is below this fraction of its first is separable (rank 1 to
#: double-precision rounding) and is applied as two 1-D passes.
SEPARABLE_RTOL = 1e-10
#: The matched filter's denominator below this fraction of its scale (``max ivar · max K²``) is FFT
#: round-off where no pixel under the kernel has data: the significance there is 0.
FFT_RESIDUE_RTOL = 1e-12


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
    use_wh = ~np.isfinite(exact) | (p < CHI2_TAIL_P_MIN)
    z[ok] = np.where(use_wh, wh, exact)
    return z


def _checked_inputs(images, variance, mask, method: str) -> tuple:
    """The arrays of :func:`detection_image` checked (its Raises): images, variance (B, H, W), mask or None."""
    if method not in DETECTION_METHODS:
        raise ValueError(f"detection_image: unknown method {method!r}; choose one of {DETECTION_METHODS}")
    images = check_cube("images", images)
    variance = check_cube("variance", variance)
    mask = None if mask is None else np.asarray(mask)
    check_same_shape("images", images, "variance", variance)
    check_same_shape("images", images, "mask", mask)
    return images, variance, mask


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
    images, variance, mask = _checked_inputs(images, variance, mask, method)
    if method == "weighted":  # one compiled pass (hpcblend.kernels.detection); the same values to the bit
        if mask is None or mask.dtype.kind not in "iu":
            mask = np.zeros(images.shape, dtype=np.uint8) if mask is None else mask.astype(np.int64)
        return weighted_detection_image(images, variance, mask, mask_bits(bad_planes))
    return detection_image_reference(images, variance, mask, method, bad_planes)


def detection_image_reference(images, variance, mask=None, method: str = "weighted",
                              bad_planes: Sequence[str] = DEFAULT_BAD_MASK_PLANES) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`detection_image` in plain NumPy (the reference of its compiled ``weighted`` path).

    Parameters, returns and errors as :func:`detection_image`.
    """
    images, variance, mask = _checked_inputs(images, variance, mask, method)
    bad = bad_pixel_mask(variance, mask, bad_planes, images=images)
    h, w = images.shape[1:]
    wsum = np.zeros((h, w), dtype=np.float64)
    acc = np.zeros((h, w), dtype=np.float64)
    ngood = np.zeros((h, w), dtype=np.int32)
    for b in range(images.shape[0]):
        good = ~bad[b]
        wb = np.zeros((h, w), dtype=np.float64)
        np.divide(1.0, variance[b].astype(np.float64), out=wb, where=good)  # 1/V in float64 (float32 input too)
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
    if kernel.size <= DIRECT_CORRELATE_MAX_SIZE:
        return ndi.correlate(image, kernel, mode="constant", cval=0.0)
    return fftconvolve(image, flipped, mode="same")


def _separable(kernel: np.ndarray):
    """``(a, b)`` with ``kernel == outer(a, b)`` (to ``SEPARABLE_RTOL`` relative), or None."""
    if min(kernel.shape) < 2:
        return None
    u, sv, vt = np.linalg.svd(kernel)
    if sv[0] <= 0 or sv[1] > SEPARABLE_RTOL * sv[0]:
        return None
    a = u[:, 0] * math.sqrt(sv[0])
    b = vt[0] * math.sqrt(sv[0])
    if a.sum() < 0:
        a, b = -a, -b
    return a, b


def _correlate_separable(image: np.ndarray, a: np.ndarray, b: np.ndarray, reference: bool = False) -> np.ndarray:
    """:func:`_correlate` with the kernel ``outer(a, b)``, as two 1-D passes: SciPy's ``correlate1d`` for
    the reference, else :func:`hpcblend.kernels.detection.correlate_separable` (the same values)."""
    if not reference and a.size % 2 == 1 and b.size % 2 == 1:
        return correlate_separable(np.ascontiguousarray(image, dtype=np.float64), np.ascontiguousarray(a),
                                   np.ascontiguousarray(b))
    tmp = ndi.correlate1d(image, a, axis=0, mode="constant", cval=0.0)
    return ndi.correlate1d(tmp, b, axis=1, mode="constant", cval=0.0)


def significance_image(det_image, det_sigma, kernel=None, filter_sigma: float = 1.5,
                       reference: bool = False) -> np.ndarray:
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
    reference : bool
        Do the elementwise steps in NumPy (:func:`significance_image_reference`) instead of compiled code.

    Returns
    -------
    ndarray, shape (H, W), float64
        Significance in units of σ; 0 where no pixel under the kernel has data.
    """
    det_image = check_cube("det_image", det_image, ndim=2)
    det_sigma = check_cube("det_sigma", det_sigma, ndim=2)
    check_same_shape("det_image", det_image, "det_sigma", det_sigma)
    k = gaussian_kernel(filter_sigma) if kernel is None else np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"significance_image: kernel must be 2-D and odd-sized, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or not k.sum() > 0:
        raise ValueError("significance_image: kernel must be finite with a positive sum")
    k = k / k.sum()
    if reference:
        det_image, det_sigma = det_image.astype(np.float64), det_sigma.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ivar = np.where(np.isfinite(det_sigma) & (det_sigma > 0), 1.0 / (det_sigma * det_sigma), 0.0)
        weighted = np.where(ivar > 0, det_image, 0.0) * ivar
    else:  # one compiled pass, the same values (hpcblend.kernels.detection)
        det_image, det_sigma = (a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)
                                for a in (det_image, det_sigma))
        weighted, ivar = matched_filter_inputs(det_image, det_sigma)
    sep_k = _separable(k)
    if sep_k is not None:  # e.g. the default Gaussian: two 1-D passes, much cheaper than 2-D
        a, b = sep_k
        num = _correlate_separable(weighted, a, b, reference)
        den = _correlate_separable(ivar, a * a, b * b, reference)
    else:
        num = _correlate(weighted, k)
        den = _correlate(ivar, k * k)
    # FFT round-off: tiny negative/positive residue where ivar is 0 everywhere under the kernel
    tiny = FFT_RESIDUE_RTOL * float(ivar.max()) * float((k * k).max()) if ivar.size else 0.0
    if not reference:
        return matched_filter_ratio(num, den, tiny)
    out = np.zeros(det_image.shape, dtype=np.float64)
    good = den > tiny
    np.divide(num, np.sqrt(den, where=good, out=np.ones_like(den)), out=out, where=good)
    return out


def significance_image_reference(det_image, det_sigma, kernel=None, filter_sigma: float = 1.5) -> np.ndarray:
    """:func:`significance_image` with its elementwise steps in NumPy (the reference of the compiled ones).

    Parameters, returns and errors as :func:`significance_image`.
    """
    return significance_image(det_image, det_sigma, kernel, filter_sigma, reference=True)

