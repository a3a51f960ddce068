"""Forced PSF photometry and heavy-footprint moments of one child (Numba), with their NumPy references.

The PSF flux of a child in one band is the weighted linear least-squares amplitude of the band's
PSF image (sum 1) centred at the child's sub-pixel position,
``f = Σ w R P / Σ w P²``, ``σ_f = sqrt(Σ w² V P²) / Σ w P²``, summed over the PSF stamp's pixels
that fall on the image and have ``w > 0``. The PSF is moved to the sub-pixel position by the
Fourier shift theorem applied to the (zero-padded) PSF stamp only: the stamp's spectrum is
computed once per PSF (:func:`padded_psf_spectra`), each child multiplies it by a separable phase
and transforms back (``numpy.fft`` inside Numba through rocket-fft) — the same operation as
:func:`shift_image`, the NumPy reference. :func:`psf_fluxes` does every band of one child in one
call, on ``R = base + model`` computed pixel by pixel (``base``: the data minus every child's
model at weighted pixels, ``model``: this child's), so no residual image is formed;
:func:`psf_flux_reference` is the plain NumPy reference of one band. :func:`heavy_moments` builds
the child's flux-conserving ("heavy footprint") image ``H = Y m / M`` and runs the adaptive
moments of :mod:`~hpcblend.kernels.moments` on it in the same compiled call. The pixel planes these
read come from one pass each: :func:`cutout_planes` (a patch cut-out's data, variance and weights;
NumPy reference :func:`cutout_planes_reference`) and :func:`weighted_planes` (weights, residual base,
data-or-model and σ); :func:`masked_near` tells which bands may have a masked pixel in an aperture.

Conventions: ``image[y, x]``, pixel centres at integer coordinates, positions ``(y, x)`` in
pixels of the image's frame, fluxes in the image's units. Imports nothing of hpcblend (relative
imports of kernels only).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import rocket_fft  # noqa: F401  (registers numpy.fft for numba)
from numba import njit

from .moments import adaptive_moments

__all__ = [
    "PSF_EDGE",
    "PSF_NO_DATA",
    "PSF_MASKED",
    "PSF_CORE_FRACTION",
    "PSF_SHIFT_PAD",
    "shift_image",
    "padded_psf_spectra",
    "shifted_psf",
    "psf_flux_reference",
    "psf_fluxes",
    "weighted_planes",
    "masked_near",
    "cutout_planes",
    "cutout_planes_reference",
    "heavy_footprint",
    "heavy_moments",
]

#: PSF pixels above :data:`PSF_CORE_FRACTION` of its peak fall outside the image (the fit uses the part inside).
PSF_EDGE = 1
#: No pixel with weight > 0 under the PSF: PSF flux is NaN.
PSF_NO_DATA = 2
#: Zero-weight pixels where the PSF is above :data:`PSF_CORE_FRACTION` of its peak.
PSF_MASKED = 4
#: PSF pixels above this fraction of its peak are its core: the ``PSF_EDGE`` and ``PSF_MASKED`` flags look
#: at them only (the wings carry little of the fit's weight).
PSF_CORE_FRACTION = 1e-2
#: Zero pixels around the PSF image before its Fourier sub-pixel shift (less wrap-around).
PSF_SHIFT_PAD = 2


def shift_image(image: np.ndarray, dy: float, dx: float, pad: int = PSF_SHIFT_PAD) -> np.ndarray:
    """Shift an odd-sized image by a sub-pixel offset with the Fourier shift theorem (NumPy).

    Parameters
    ----------
    image : ndarray, shape (h, w), h and w odd
        E.g. a PSF image centred on its central pixel.
    dy, dx : float
        Shift (pixels); the content moves to larger ``y``/``x`` for positive values.
    pad : int
        Zero padding on every side before the FFT (reduces wrap-around).

    Returns
    -------
    ndarray, shape (h + 2 pad, w + 2 pad), float64
        The shifted image (same sum), still centred on its central pixel
        apart from the shift.
    """
    p = np.pad(np.asarray(image, dtype=np.float64), int(pad))
    if dy == 0 and dx == 0:
        return p
    ky = np.fft.fftfreq(p.shape[0])[:, None]
    kx = np.fft.rfftfreq(p.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return np.fft.irfft2(np.fft.rfft2(p) * phase, s=p.shape)


def padded_psf_spectra(psfs: np.ndarray, pad: int = PSF_SHIFT_PAD) -> Tuple[np.ndarray, np.ndarray]:
    """The zero-padded PSF stamps and their spectra, the input of :func:`shifted_psf` and :func:`psf_fluxes`.

    Parameters
    ----------
    psfs : ndarray, shape (B, Ph, Pw), odd sides
        PSF images centred on their central pixel (normalised by the caller).
    pad : int
        Zero padding on every side (:data:`PSF_SHIFT_PAD` in :func:`shift_image`).

    Returns
    -------
    padded : ndarray, shape (B, Ph + 2 pad, Pw + 2 pad), float64
    spectra : ndarray, shape (B, Ph + 2 pad, (Pw + 2 pad) // 2 + 1), complex128
        ``rfft2`` of each padded stamp.
    """
    p = int(pad)
    padded = np.pad(np.asarray(psfs, dtype=np.float64), ((0, 0), (p, p), (p, p)))
    return padded, np.fft.rfft2(padded)


@njit(cache=True, nogil=True)
def shifted_psf(padded, spectrum, dy, dx):
    """One padded PSF stamp moved by ``(dy, dx)`` pixels: :func:`shift_image` in compiled code.

    Parameters
    ----------
    padded : ndarray, shape (n, m), float64, n and m odd
        The zero-padded stamp (returned as is for a zero shift).
    spectrum : ndarray, shape (n, m // 2 + 1), complex128
        Its ``rfft2``.
    dy, dx : float
        Shift (pixels).

    Returns
    -------
    ndarray, shape (n, m), float64
    """
    n, m = padded.shape
    if dy == 0.0 and dx == 0.0:
        return padded
    mh = m // 2 + 1
    ey = np.empty(n, dtype=np.complex128)
    for i in range(n):
        k = i if i <= (n - 1) // 2 else i - n  # numpy.fft.fftfreq(n) * n
        ey[i] = np.exp(-2j * np.pi * (k / n) * dy)
    ex = np.empty(mh, dtype=np.complex128)
    for j in range(mh):
        ex[j] = np.exp(-2j * np.pi * (j / m) * dx)
    spec = np.empty((n, mh), dtype=np.complex128)
    for i in range(n):
        for j in range(mh):
            spec[i, j] = spectrum[i, j] * (ey[i] * ex[j])
    return np.fft.irfft2(spec, s=(n, m))


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def psf_flux_reference(image: np.ndarray, weights: np.ndarray, variance: np.ndarray, psf: np.ndarray,
                       y: float, x: float) -> Tuple[float, float, int]:
    """Least-squares PSF amplitude at a fixed position in one band (plain NumPy; the reference).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Pixels (counts), e.g. the image with the neighbours' models subtracted.
    weights : ndarray, shape (H, W)
        Fit weights (1/counts², 0 = ignore the pixel).
    variance : ndarray, shape (H, W)
        Variance (counts²) for the error.
    psf : ndarray, shape (Ph, Pw), odd sides
        PSF image, centred on its central pixel, summing to 1.
    y, x : float
        Position (pixels, image frame).

    Returns
    -------
    flux, flux_err : float
        Counts; NaN when no weighted pixel lies under the PSF.
    flag : int
        ``PSF_EDGE | PSF_NO_DATA | PSF_MASKED`` bits.
    """
    h, w = image.shape
    iy, ix = _round_half_up(y), _round_half_up(x)
    p = shift_image(psf, y - iy, x - ix, pad=PSF_SHIFT_PAD)
    ry, rx = p.shape[0] // 2, p.shape[1] // 2
    y0, x0 = iy - ry, ix - rx
    ya, yb = max(y0, 0), min(y0 + p.shape[0], h)
    xa, xb = max(x0, 0), min(x0 + p.shape[1], w)
    flag = 0
    if ya >= yb or xa >= xb:
        return float("nan"), float("nan"), PSF_NO_DATA | PSF_EDGE
    core = np.abs(p) > PSF_CORE_FRACTION * np.abs(p).max()
    inside = np.zeros(p.shape, dtype=bool)
    inside[ya - y0:yb - y0, xa - x0:xb - x0] = True
    if (core & ~inside).any():
        flag |= PSF_EDGE
    ps = p[ya - y0:yb - y0, xa - x0:xb - x0]
    ws = np.asarray(weights[ya:yb, xa:xb], dtype=np.float64)
    good = ws > 0
    if (core[ya - y0:yb - y0, xa - x0:xb - x0] & ~good).any():
        flag |= PSF_MASKED
    wp = np.where(good, ws * ps, 0.0)
    den = float((wp * ps).sum())
    if not den > 0:
        return float("nan"), float("nan"), flag | PSF_NO_DATA
    data = np.where(good, image[ya:yb, xa:xb], 0.0)
    var = np.where(good, variance[ya:yb, xa:xb], 0.0)
    flux = float((wp * data).sum()) / den
    err = math.sqrt(float((wp * wp * var).sum())) / den
    return flux, err, flag


@njit(cache=True, nogil=True)
def _psf_flux_band(base, model, weights, variance, p, iy, ix):
    """``(flux, err, flag)`` of the stamp ``p`` (centred at pixel ``(iy, ix)``) on ``base + model`` in one band."""
    h, w = base.shape
    ph, pw = p.shape
    y0 = iy - ph // 2
    x0 = ix - pw // 2
    if max(y0, 0) >= min(y0 + ph, h) or max(x0, 0) >= min(x0 + pw, w):
        return np.nan, np.nan, PSF_NO_DATA | PSF_EDGE
    pmax = 0.0
    for i in range(ph):
        for j in range(pw):
            pmax = max(pmax, abs(p[i, j]))
    thresh = PSF_CORE_FRACTION * pmax
    flag = 0
    den = 0.0
    num = 0.0
    var = 0.0
    for i in range(ph):
        yi = y0 + i
        for j in range(pw):
            xj = x0 + j
            pij = p[i, j]
            core = abs(pij) > thresh
            if yi < 0 or yi >= h or xj < 0 or xj >= w:
                if core:
                    flag |= PSF_EDGE
                continue
            wt = weights[yi, xj]
            if not (wt > 0.0):
                if core:
                    flag |= PSF_MASKED
                continue
            wp = wt * pij
            den += wp * pij
            num += wp * (base[yi, xj] + model[yi, xj])
            var += wp * wp * variance[yi, xj]
    if not (den > 0.0):
        return np.nan, np.nan, flag | PSF_NO_DATA
    return num / den, math.sqrt(var) / den, flag


@njit(cache=True, nogil=True)
def psf_fluxes(base, model, weights, variance, padded, spectra, y, x, flux, err, flag):
    """PSF fluxes of one child in every band, on ``R = base + model`` (:func:`psf_flux_reference` per band).

    Parameters
    ----------
    base : ndarray, shape (B, H, W), float64
        The data minus every child's model at weighted pixels (anything at zero-weight pixels).
    model : ndarray, shape (B, H, W), float64
        This child's model (counts).
    weights : ndarray, shape (B, H, W), float64
        Fit weights (1/counts², 0 = ignore the pixel).
    variance : ndarray, shape (B, H, W), float64
        Variance (counts²) for the error.
    padded, spectra : ndarray
        :func:`padded_psf_spectra` of the bands' PSFs (each summing to 1).
    y, x : float
        Position (pixels, image frame).
    flux, err : ndarray, shape (B,), float64
        Out: PSF flux and its error (counts; NaN without weighted pixels under the PSF).
    flag : ndarray, shape (B,), int32
        Out: ``PSF_EDGE | PSF_NO_DATA | PSF_MASKED`` bits.
    """
    iy = int(math.floor(y + 0.5))
    ix = int(math.floor(x + 0.5))
    for b in range(base.shape[0]):
        p = shifted_psf(padded[b], spectra[b], y - iy, x - ix)
        f, e, fl = _psf_flux_band(base[b], model[b], weights[b], variance[b], p, iy, ix)
        flux[b] = f
        err[b] = e
        flag[b] = fl


@njit(cache=True, nogil=True)
def weighted_planes(images, variance, weights, use_weights, total):
    """The pixel planes forced photometry reads, in one pass.

    Parameters
    ----------
    images, variance : ndarray, shape (B, H, W), float
        Data ``Y`` and its variance (counts, counts²).
    weights : ndarray, shape (B, H, W), float
        Fit weights (1/counts²; non-finite counts as 0); read only if ``use_weights``.
    use_weights : bool
        False: the weight is ``1/variance`` where ``Y`` and the variance are finite and the
        variance > 0, else 0.
    total : ndarray, shape (B, H, W), float64
        ``M``: every child's model summed.

    Returns
    -------
    wts : ndarray, shape (B, H, W), float64
        The weights.
    good : ndarray, shape (B, H, W), bool
        ``wts > 0``.
    var : ndarray, shape (B, H, W), float64
        The variance, 0 where not good.
    base : ndarray, shape (B, H, W), float64
        ``Y − M`` where good, else 0: a child's residual is ``base + m_k``.
    data_or_model : ndarray, shape (B, H, W), float64
        ``Y`` where good, else ``M``.
    sigma : ndarray, shape (B, H, W), float64
        ``sqrt(var)``.
    """
    nb, h, w = images.shape
    wts = np.zeros((nb, h, w))
    good = np.zeros((nb, h, w), dtype=np.bool_)
    var = np.zeros((nb, h, w))
    base = np.zeros((nb, h, w))
    data_or_model = np.empty((nb, h, w))
    sigma = np.zeros((nb, h, w))
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                d = np.float64(images[b, i, j])  # (float() would keep float32)
                v = np.float64(variance[b, i, j])
                if use_weights:
                    wt = np.float64(weights[b, i, j])
                    if not math.isfinite(wt):
                        wt = 0.0
                    g = wt > 0.0
                else:
                    g = math.isfinite(d) and math.isfinite(v) and v > 0.0
                    wt = 1.0 / v if g else 0.0
                wts[b, i, j] = wt
                if g:
                    good[b, i, j] = True
                    var[b, i, j] = v
                    base[b, i, j] = d - total[b, i, j]
                    data_or_model[b, i, j] = d
                    sigma[b, i, j] = math.sqrt(v)
                else:
                    data_or_model[b, i, j] = total[b, i, j]
    return wts, good, var, base, data_or_model, sigma


@njit(cache=True, nogil=True)
def masked_near(good, ys, xs, reach):
    """Per band, whether a pixel that is not ``good`` lies within ``reach`` pixels (box) of a position.

    A pixel can overlap a circle of radius ``r`` about ``(y, x)`` only if it lies within
    ``r + 0.5`` of it along both axes, so ``reach = r + 1`` finds every band where an aperture
    might hold a masked pixel.

    Parameters
    ----------
    good : ndarray, shape (B, H, W), bool
    ys, xs : ndarray, shape (K,), float64
        Positions (pixels).
    reach : float
        Half-size of the box (pixels).

    Returns
    -------
    ndarray, shape (B,), bool
    """
    nb, h, w = good.shape
    out = np.zeros(nb, dtype=np.bool_)
    for b in range(nb):
        for k in range(ys.size):
            i0 = max(int(math.floor(ys[k] - reach)), 0)
            i1 = min(int(math.ceil(ys[k] + reach)), h - 1)
            j0 = max(int(math.floor(xs[k] - reach)), 0)
            j1 = min(int(math.ceil(xs[k] + reach)), w - 1)
            for i in range(i0, i1 + 1):
                for j in range(j0, j1 + 1):
                    if not good[b, i, j]:
                        out[b] = True
                        break
                if out[b]:
                    break
            if out[b]:
                break
    return out


@njit(cache=True, nogil=True)
def cutout_planes(images, variance, mask, bad_bits, labels, label):
    """Data, variance and weights (float32) of a cut-out of a patch for one footprint's forced photometry.

    A pixel gets weight 0 when its image or variance is not finite, its variance is not > 0, its
    mask has one of ``bad_bits``, or it belongs to another footprint (``labels`` not 0 and not
    ``label``); else ``1 / variance`` (float32). :func:`cutout_planes_reference` is the NumPy
    reference.

    Parameters
    ----------
    images, variance : ndarray, shape (B, h, w), float
        The cut-out (views of the patch's arrays will do).
    mask : ndarray, shape (B, h, w), int
        Mask bits.
    bad_bits : int
        Bits that make a pixel bad.
    labels : ndarray, shape (h, w), int
        Footprint label per pixel (0: none).
    label : int
        This footprint's label.

    Returns
    -------
    img : ndarray, shape (B, h, w), float32
        The image, 0 where not finite.
    var : ndarray, shape (B, h, w), float32
        The variance, ``inf`` where not > 0.
    weights : ndarray, shape (B, h, w), float32
    """
    nb, h, w = images.shape
    img = np.empty((nb, h, w), dtype=np.float32)
    var = np.empty((nb, h, w), dtype=np.float32)
    wts = np.empty((nb, h, w), dtype=np.float32)
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                d = images[b, i, j]
                v = variance[b, i, j]
                lab = labels[i, j]
                finite = math.isfinite(d)
                img[b, i, j] = d if finite else 0.0
                var[b, i, j] = v if v > 0 else np.inf
                bad = (not finite or not math.isfinite(v) or not (v > 0) or (mask[b, i, j] & bad_bits) != 0
                       or (lab != 0 and lab != label))
                # 1/v in float64 rounded to float32 is the correctly rounded float32 quotient (double
                # rounding is innocuous for division when 53 >= 2 * 24 + 2), as NumPy's float32 1/v
                wts[b, i, j] = 0.0 if bad else 1.0 / v
    return img, var, wts


def cutout_planes_reference(images, variance, mask, bad_bits: int, labels, label: int):
    """:func:`cutout_planes` in NumPy (the reference); same parameters and returns (but ``img`` keeps
    ``numpy.nan_to_num``'s values at non-finite pixels, which have weight 0)."""
    img = np.nan_to_num(images).astype(np.float32)
    bad = ~np.isfinite(variance) | ~(variance > 0) | ~np.isfinite(images)
    bad |= (mask & bad_bits) != 0
    other = (labels != 0) & (labels != label)
    weights = np.where(bad | other[None], 0.0, 1.0 / np.where(variance > 0, variance, 1.0)).astype(np.float32)
    return img, np.where(variance > 0, variance, np.inf).astype(np.float32), weights


@njit(cache=True, nogil=True)
def heavy_footprint(data_or_model, total, model, band):
    """The child's flux-conserving image ``Σ_b Y_b m_b / M_b`` (zero where ``M_b <= 0``), or one band's.

    Parameters
    ----------
    data_or_model : ndarray, shape (B, H, W), float64
        The data, the sum of the models standing in where there are none.
    total : ndarray, shape (B, H, W), float64
        ``M_b``: every child's model summed.
    model : ndarray, shape (B, H, W), float64
        ``m_b``: this child's model.
    band : int
        Band index, or -1 for the sum over bands.

    Returns
    -------
    ndarray, shape (H, W), float64
    """
    nb, h, w = model.shape
    out = np.zeros((h, w))
    for b in range(nb):
        if band >= 0 and b != band:
            continue
        for i in range(h):
            for j in range(w):
                t = total[b, i, j]
                if t > 0.0:
                    out[i, j] += data_or_model[b, i, j] * model[b, i, j] / t
    return out


@njit(cache=True, nogil=True)
def heavy_moments(data_or_model, total, model, band, y, x, sigma0):
    """Adaptive moments of the child's heavy footprint (:func:`heavy_footprint`) started at ``(y, x)``.

    Parameters as :func:`heavy_footprint`; ``y``, ``x`` the starting centroid (pixels), ``sigma0``
    the starting weight's σ (pixels).

    Returns
    -------
    tuple
        :func:`hpcblend.kernels.moments.adaptive_moments`'s ``(xx, yy, xy, x, y, flux, n_iter, flag)``.
    """
    heavy = heavy_footprint(data_or_model, total, model, band)
    return adaptive_moments(heavy, y, x, sigma0)
