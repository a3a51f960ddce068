"""Every isolated (one-peak, unfitted) footprint of a patch measured in one compiled call.

An isolated footprint that is not fitted has one child: the footprint's data ("heavy footprint").
:func:`isolated_measurements` does for all of a patch's isolated footprints what the per-footprint
path does for one (cut-out, :func:`hpcblend.measure.patch.measure_isolated` and the forced photometry
of :func:`hpcblend.measure.patch.forced_on_patch`), with the same arithmetic in the same frames, so the
results are the same to the bit except the footprint fluxes, summed here in float64 instead of NumPy's
float32 pairwise sum (relative difference ~1e-7): per footprint, the blend box's data with non-finite
pixels zeroed, the flux and its error over the footprint's good pixels, the Gaussian-windowed centroid
(:func:`~.moments.windowed_centroid`) of the inverse-variance weighted band mean, and on the cut-out
grown for the apertures the PSF fluxes (:func:`~.photometry.psf_fluxes`) and adaptive moments
(:func:`~.photometry.heavy_moments`) at that centroid. Aperture fluxes are left to the caller
(``sep.sum_circle`` on :func:`aperture_planes`, with the footprint labels as its segmentation map), and
:func:`aperture_planes_reference` is that kernel's NumPy reference; the per-footprint path is the
reference of :func:`isolated_measurements` (tests/test_measure_isolated.py).

Boxes are ``(y0, y1, x0, x1)`` rows (half-open, patch frame). Imports nothing of hpcblend.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .moments import windowed_centroid
from .photometry import cutout_planes, heavy_moments, masked_near, psf_fluxes, weighted_planes

__all__ = ["isolated_measurements", "aperture_planes", "aperture_planes_reference"]


@njit(cache=True, nogil=True)
def _blend_planes(images, variance, mask, labels, label, fbox, bbox, no_data_bit, detected_bit):
    """One footprint's blend box as ``footprint_to_blend`` cuts it: float32 data and variance (non-finite
    pixels 0), mask bits (``NO_DATA`` where not finite, ``DETECTED`` inside), footprint (bool), and
    whether a footprint pixel has ``NO_DATA`` in some band."""
    nb = images.shape[0]
    y0, y1, x0, x1 = bbox[0], bbox[1], bbox[2], bbox[3]
    h, w = y1 - y0, x1 - x0
    img = np.empty((nb, h, w), dtype=np.float32)
    var = np.empty((nb, h, w), dtype=np.float32)
    msk = np.empty((nb, h, w), dtype=np.int32)
    fp = np.zeros((h, w), dtype=np.bool_)
    for i in range(fbox[0], fbox[1]):
        for j in range(fbox[2], fbox[3]):
            fp[i - y0, j - x0] = labels[i, j] == label
    incomplete = False
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                d = np.float32(images[b, y0 + i, x0 + j])
                v = np.float32(variance[b, y0 + i, x0 + j])
                m = np.int32(mask[b, y0 + i, x0 + j])
                if not (math.isfinite(d) and math.isfinite(v)):
                    d = np.float32(0.0)
                    m |= no_data_bit
                if not math.isfinite(v):
                    v = np.float32(0.0)
                if fp[i, j]:
                    m |= detected_bit
                    if (m & no_data_bit) != 0:
                        incomplete = True
                img[b, i, j] = d
                var[b, i, j] = v
                msk[b, i, j] = m
    return img, var, msk, fp, incomplete


@njit(cache=True, nogil=True)
def _heavy_footprint_centroid(img, var, msk, fp, bad_bits, peak_y, peak_x, sigma, max_iter, max_shift, flux, flux_err):
    """``measure_isolated`` on a blend box: fluxes (float64 sums; NaN in a band without a good footprint pixel) into
    ``flux``/``flux_err``, returns the centroid."""
    nb, h, w = img.shape
    num = np.zeros((h, w), dtype=np.float32)
    den = np.zeros((h, w), dtype=np.float32)
    for b in range(nb):
        s = 0.0
        sv = 0.0
        for i in range(h):
            for j in range(w):
                v = var[b, i, j]
                wt = np.float32(0.0)
                if fp[i, j] and (msk[b, i, j] & bad_bits) == 0 and v > 0:
                    wt = np.float32(1.0 / np.float64(v))
                d = img[b, i, j] if wt > 0 else np.float32(0.0)
                if wt > 0 and fp[i, j]:
                    s += np.float64(d)
                    sv += np.float64(v)
                # the band mean of data x weight, summed band after band in float32 as NumPy does
                num[i, j] = num[i, j] + d * wt
                den[i, j] = den[i, j] + wt
        if sv > 0:
            flux[b] = s
            flux_err[b] = math.sqrt(sv)
        else:  # no good pixel in this band: no measurement (NaN), not 0 ± 0
            flux[b] = np.nan
            flux_err[b] = np.nan
    det = np.zeros((h, w), dtype=np.float32)
    tiny = np.float32(1e-30)
    for i in range(h):
        for j in range(w):
            if fp[i, j]:
                det[i, j] = num[i, j] / max(den[i, j], tiny)
    return windowed_centroid(det, peak_y, peak_x, sigma, max_iter, max_shift)


@njit(cache=True, nogil=True)
def isolated_measurements(images, variance, mask, labels, fp_labels, fboxes, bboxes, cboxes, peaks, origins,
                          outer_origin, no_data_bit, detected_bit, centroid_bad_bits, forced_bad_bits,
                          centroid_sigma, centroid_max_iter, centroid_max_shift, padded, spectra, moments_sigma0,
                          reach):
    """Measure every isolated footprint of a patch (see the module docstring).

    Parameters
    ----------
    images, variance : ndarray, shape (B, H, W), float
        The patch-outer box's background-subtracted data (counts) and variance (counts²).
    mask : ndarray, shape (B, H, W), int
        Mask bits.
    labels : ndarray, shape (H, W), int
        Footprint label per pixel (0: none).
    fp_labels : ndarray, shape (N,), int64
        The isolated footprints' labels.
    fboxes, bboxes, cboxes : ndarray, shape (N, 4), int64
        Per footprint: its bounding box, its blend box (the bounding box grown by ``detect.pad`` and
        clipped) and the forced-photometry cut-out (the blend box grown by ``measure.forced_pad`` and
        clipped), ``(y0, y1, x0, x1)`` in the patch frame.
    peaks : ndarray, shape (N, 2), int64
        The peak ``(y, x)`` (patch frame).
    origins : ndarray, shape (N, 2), int64
        The blend box's origin in the tract frame.
    outer_origin : ndarray, shape (2,), int64
        The patch-outer box's origin in the tract frame.
    no_data_bit, detected_bit : int
        Mask bits of ``NO_DATA`` (set where data or variance is not finite) and ``DETECTED``.
    centroid_bad_bits, forced_bad_bits : int
        Bits that make a pixel bad for the fluxes and centroid, and for forced photometry.
    centroid_sigma : float
        Window σ (pixels) of the centroid; ``centroid_max_iter``, ``centroid_max_shift`` (pixels) its limits.
    padded, spectra : ndarray
        :func:`~.photometry.padded_psf_spectra` of the patch's normalised PSFs.
    moments_sigma0 : float
        The adaptive moments' starting σ (pixels).
    reach : float
        The largest aperture radius + 1 (pixels): ``near`` looks this far (box) for zero-weight pixels.

    Returns
    -------
    flux, flux_err : ndarray, shape (N, B), float64
        Sum of the data (counts) and the root of the summed variance over the footprint's good pixels; NaN
        in a band where the footprint has none.
    centroid : ndarray, shape (N, 2), float64
        Windowed centroid ``(y, x)`` in the tract frame.
    incomplete : ndarray, shape (N,), bool
        A footprint pixel has ``NO_DATA`` in some band.
    on_image : ndarray, shape (N,), bool
        The centroid lies on the cut-out (else the forced columns stay NaN).
    psf, psf_err : ndarray, shape (N, B), float64
        PSF flux and error (counts).
    psf_flag : ndarray, shape (N, B), int32
    shape : ndarray, shape (N, 8), float64
        :func:`~.moments.adaptive_moments`'s results (NaN, n_iter and flag 0 when not on the image).
    near : ndarray, shape (N, B), bool
        A zero-weight pixel of the cut-out (bad, or another footprint's) lies within ``reach`` of the
        centroid (:func:`~.photometry.masked_near`): only then can an aperture hold one.
    """
    n = fp_labels.shape[0]
    nb = images.shape[0]
    flux = np.full((n, nb), np.nan)
    flux_err = np.full((n, nb), np.nan)
    centroid = np.full((n, 2), np.nan)
    incomplete = np.zeros(n, dtype=np.bool_)
    on_image = np.zeros(n, dtype=np.bool_)
    psf = np.full((n, nb), np.nan)
    psf_err = np.full((n, nb), np.nan)
    psf_flag = np.zeros((n, nb), dtype=np.int32)
    shape = np.full((n, 8), np.nan)
    shape[:, 6:] = 0.0
    near = np.zeros((n, nb), dtype=np.bool_)
    ys = np.zeros(1)
    xs = np.zeros(1)
    for k in range(n):
        by0, bx0 = bboxes[k, 0], bboxes[k, 2]
        img, var, msk, fp, incomplete[k] = _blend_planes(images, variance, mask, labels, fp_labels[k], fboxes[k],
                                                         bboxes[k], no_data_bit, detected_bit)
        cy, cx = _heavy_footprint_centroid(img, var, msk, fp, centroid_bad_bits, float(peaks[k, 0] - by0),
                                           float(peaks[k, 1] - bx0), centroid_sigma, centroid_max_iter,
                                           centroid_max_shift, flux[k], flux_err[k])
        ty = cy + origins[k, 0]
        tx = cx + origins[k, 1]
        centroid[k, 0] = ty
        centroid[k, 1] = tx
        # forced photometry on the cut-out, the footprint's data as the child's model
        y0, y1, x0, x1 = cboxes[k, 0], cboxes[k, 1], cboxes[k, 2], cboxes[k, 3]
        y = ty - outer_origin[0] - y0
        x = tx - outer_origin[1] - x0
        ch, cw = y1 - y0, x1 - x0
        if not (-0.5 <= y < ch - 0.5 and -0.5 <= x < cw - 0.5):
            continue
        on_image[k] = True
        cimg, cvar, cwts = cutout_planes(images[:, y0:y1, x0:x1], variance[:, y0:y1, x0:x1], mask[:, y0:y1, x0:x1],
                                         forced_bad_bits, labels[y0:y1, x0:x1], fp_labels[k])
        model = np.zeros((nb, ch, cw))
        oy, ox = by0 - y0, bx0 - x0
        h, w = fp.shape
        for b in range(nb):
            for i in range(h):
                for j in range(w):
                    if fp[i, j]:
                        model[b, oy + i, ox + j] = np.float64(img[b, i, j])
        wts, good, fvar, base, data_or_model, sigma = weighted_planes(cimg, cvar, cwts, True, model)
        psf_fluxes(base, model, wts, fvar, padded, spectra, y, x, psf[k], psf_err[k], psf_flag[k])
        ys[0] = y
        xs[0] = x
        near[k] = masked_near(good, ys, xs, reach)
        xx, yy, xy, mx, my, mflux, n_iter, flag = heavy_moments(data_or_model, model, model, -1, y, x,
                                                                moments_sigma0)
        shape[k, 0] = xx
        shape[k, 1] = yy
        shape[k, 2] = xy
        shape[k, 3] = mx
        shape[k, 4] = my
        shape[k, 5] = mflux
        shape[k, 6] = n_iter
        shape[k, 7] = flag
    return flux, flux_err, centroid, incomplete, on_image, psf, psf_err, psf_flag, shape, near


@njit(cache=True, nogil=True)
def aperture_planes(images, variance, mask, labels, bad_bits):
    """The patch planes the isolated footprints' apertures are summed on (with ``sep.sum_circle``).

    For the child of isolated footprint ``L`` the per-footprint path sums the residual ``data − model
    + model`` of its cut-out: the data at good pixels, the footprint's data (its model) at its own bad
    pixels, 0 elsewhere, with every other footprint's pixels left out. These planes hold that for every
    footprint at once; leaving out other footprints' pixels is ``sep``'s segmentation map. They are
    float32: ``sep`` reads pixels as float32 whatever the array's type, so the sums are the same as on
    float64 planes.

    Parameters
    ----------
    images, variance : ndarray, shape (B, H, W), float
    mask : ndarray, shape (B, H, W), int
    labels : ndarray, shape (H, W), int
        Footprint labels (0: none).
    bad_bits : int
        Bits that make a pixel bad (forced photometry's).

    Returns
    -------
    data : ndarray, shape (B, H, W), float32
        The data where good; where bad, the data (0 if data or variance is not finite) inside a
        footprint and 0 outside.
    sigma : ndarray, shape (B, H, W), float32
        ``sqrt(variance)`` (computed in float64) where good, else 0.
    bad : ndarray, shape (B, H, W), float32
        1 at bad pixels: non-finite data or variance, variance <= 0 or a bad bit (a finite float32
        variance > 0 always has a float32 weight ``1/variance`` > 0).
    """
    nb, h, w = images.shape
    data = np.empty((nb, h, w), dtype=np.float32)
    sigma = np.empty((nb, h, w), dtype=np.float32)
    bad = np.empty((nb, h, w), dtype=np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for b in range(nb):
        for i in range(h):
            for j in range(w):
                d = np.float32(images[b, i, j])
                v = np.float32(variance[b, i, j])
                finite = math.isfinite(d) and math.isfinite(v)
                if finite and v > 0 and (mask[b, i, j] & bad_bits) == 0:
                    data[b, i, j] = d
                    sigma[b, i, j] = np.float32(math.sqrt(np.float64(v)))
                    bad[b, i, j] = zero
                else:
                    data[b, i, j] = d if finite and labels[i, j] != 0 else zero
                    sigma[b, i, j] = zero
                    bad[b, i, j] = one
    return data, sigma, bad


def aperture_planes_reference(images, variance, mask, labels, bad_bits: int):
    """:func:`aperture_planes` in NumPy (the reference; same parameters and returns)."""
    d = np.asarray(images).astype(np.float32)
    v = np.asarray(variance).astype(np.float32)
    finite = np.isfinite(d) & np.isfinite(v)
    with np.errstate(invalid="ignore"):
        good = finite & (v > 0) & ((np.asarray(mask) & bad_bits) == 0)
        sigma = np.sqrt(np.where(good, v, 0).astype(np.float64)).astype(np.float32)
    inside = np.asarray(labels)[None] != 0
    data = np.where(good | (finite & inside), d, 0).astype(np.float32)
    return data, sigma, (~good).astype(np.float32)
