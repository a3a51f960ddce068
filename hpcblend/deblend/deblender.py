"""Deblend one blend: observation, source initialisation, the fit, flags.

Orchestrates the kernels of :mod:`hpcblend.kernels` for a single
:class:`~hpcblend.io.blends.BlendData` following scarlet (Melchior et al. 2018,
Astronomy & Computing 24, 129) and scarlet_lite's split of concerns:
:class:`Observation` (data, weights, PSF-difference kernels),
initialisation (:func:`initialize_sources`), the compiled fit loop
(:func:`hpcblend.kernels.fit.fit_blend`, one call per blend), and the child
measurements (:mod:`hpcblend.measure.children`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.fft

from hpcblend.config import DeblendConfig
from hpcblend.errors import BlendDataError, NumericalFailure, PsfError
from hpcblend.io.blends import PEAK_DROPPED, PEAK_DUPLICATE, PEAK_MASKED, PEAK_OUTSIDE_FOOTPRINT, PEAK_OUTSIDE_IMAGE, BlendData
from hpcblend.kernels import convolution, fit, initialization, psf
from hpcblend.measure.children import measure_children

__all__ = ["Observation", "DeblendResult", "build_observation", "initialize_sources", "deblend_blend",
           "warm_up"]

PSF_SUM_TOLERANCE = 1e-2

@dataclass
class Observation:
    """A blend's data prepared for the fit.

    Attributes
    ----------
    images : ndarray, shape (B, H, W), float32
        Data in counts.
    weights : ndarray, shape (B, H, W), float32
        Inverse variance; zero at bad mask planes, non-positive variance and
        outside the footprint.
    noise_rms : ndarray, shape (B,), float64
        Background σ per band: sqrt of the median variance over weighted
        footprint pixels (counts).
    diff_kernels : ndarray, shape (B, 2r+1, 2r+1), float64
        PSF-difference kernels ``D_b`` (``P_b ≈ D_b * P_model``), cropped at
        ``kernel_tolerance``.
    model_psf : ndarray, shape (Ph, Pw), float64
        The Gaussian model PSF.
    transfer : ndarray, shape (B, Hp, Wp//2+1), complex64
        FFT of ``diff_kernels`` on the padded grid.
    fft_shape : tuple (Hp, Wp)
    curvature : ndarray, shape (B, H, W), float32
        Per-pixel curvature bound ``||D_b||₁ (|D_b|ᵀ * W_b)`` for FISTA's steps
        (:func:`hpcblend.kernels.fit.curvature_bound`).
    box_transfer : dict
        Transfer functions of ``diff_kernels`` on small square grids, keyed
        by side (filled by :func:`convolve_sources`).
    """

    images: np.ndarray
    weights: np.ndarray
    noise_rms: np.ndarray
    diff_kernels: np.ndarray
    model_psf: np.ndarray
    transfer: np.ndarray
    fft_shape: tuple
    curvature: np.ndarray
    box_transfer: dict = field(default_factory=dict, repr=False)

    @property
    def kernel_radius(self) -> int:
        """Half-size of the difference kernels, pixels."""
        return int(self.diff_kernels.shape[-1] // 2)


@dataclass
class DeblendResult:
    """Everything the deblender says about one blend.

    Attributes
    ----------
    n_peaks, footprint_area : int
    iterations : int
        Iterations of the fit loop (0 when not fitted).
    converged : bool
    loss_history : ndarray, shape (iterations,)
        Loss of the state evaluated at each iteration (with any the fit's divergence guard
        went back from). The fitted state is the last one, or the lowest when the last is
        more than ``e_rel`` above it or ``max_iter`` ended the fit
        (:func:`hpcblend.kernels.fit.fit_blend`).
    chi2_per_pixel : float
        See :func:`hpcblend.measure.children.chi2_per_pixel`; NaN when not fitted.
    t_init, t_fit, t_measure : float
        Wall times in seconds.
    flags : dict of str → bool (and one int)
        Parent flags (``flag_skipped_too_many_peaks``, ``flag_skipped_too_large``,
        ``flag_not_converged``, ``flag_failed``, ``flag_incomplete_data``,
        ``flag_bad_fit``), plus ``n_peaks_dropped`` (int, peaks not fitted);
        :func:`hpcblend.units.blends.fill_parent_row` copies every entry into
        the ``/blends`` column of the same name.
    error_type, error_message : str
        Exception class and message of a numerical failure, else "".
    sed : ndarray, shape (C, B) or None
        Per *component* (C ≥ K: bright sources have a halo and a core).
    morphs : ndarray, shape (C, H, W) or None
    boxes : ndarray, shape (C, 4) or None
        (y0, y1, x0, x1) of each component's morphology, blend frame.
    conv : ndarray, shape (C, B, H, W), float32, or None
        Morphologies convolved to each band's PSF, ``D_b * S_c``; a
        component's observed-frame model is ``sed[c, b] * conv[c, b]``.
    owner : ndarray, shape (C,), int64, or None
        The child (peak index) of each component; components ``0..K-1`` are
        the children's main components, in peak order.
    children : dict
        Child measurements per peak, (K,) or (K, B) (see
        :func:`hpcblend.measure.children.measure_children`) plus ``alive`` (K,) bool;
        empty when not fitted. Dropped peaks (see ``peak_flags``) have NaN
        fluxes, centroids and blendedness and ``alive`` False; a band
        without data (see ``bands_fitted``) has NaN ``flux_model``,
        ``flux`` and ``flux_err``.
    peak_flags : ndarray, shape (K,), int32
        Status of each peak (:attr:`hpcblend.io.blends.BlendData.peak_flags`,
        plus :data:`hpcblend.io.blends.PEAK_OUTSIDE_IMAGE` for any peak outside
        the image); peaks with a :data:`hpcblend.io.blends.PEAK_DROPPED` bit are
        not fitted: their main component (index = peak index) is a
        placeholder with zero SED and morphology and an empty box at the
        peak (clipped to the image).
    bands_fitted : ndarray, shape (B,), bool, or None
        Bands with at least one weighted pixel. A band without any gets no
        weight: the fit uses the others, its ``sed`` and ``conv`` are 0 and
        its child fluxes NaN, and ``flag_incomplete_data`` is set.
    """

    n_peaks: int
    footprint_area: int
    iterations: int = 0
    converged: bool = False
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chi2_per_pixel: float = float("nan")
    t_init: float = 0.0
    t_fit: float = 0.0
    t_measure: float = 0.0
    flags: dict = field(default_factory=dict)
    error_type: str = ""
    error_message: str = ""
    sed: Optional[np.ndarray] = None
    morphs: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    conv: Optional[np.ndarray] = None
    owner: Optional[np.ndarray] = None
    children: dict = field(default_factory=dict)
    peak_flags: Optional[np.ndarray] = None
    bands_fitted: Optional[np.ndarray] = None

    def child_models(self) -> np.ndarray:
        """Observed-frame model of each child (the sum of its components), shape (K, B, H, W), float32."""
        comp = self.conv * self.sed[:, :, None, None].astype(np.float32)
        out = np.zeros((self.n_peaks,) + comp.shape[1:], dtype=np.float32)
        np.add.at(out, self.owner, comp)
        return out

    @property
    def fitted(self) -> bool:
        """True when the fit ran to the end (converged or not) without failing."""
        return self.sed is not None and not self.flags.get("flag_failed", False)


PARENT_FLAGS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large", "flag_not_converged",
                "flag_failed", "flag_incomplete_data", "flag_bad_fit")


def _check_psfs(blend: BlendData) -> np.ndarray:
    psfs = np.asarray(blend.psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != blend.n_bands:
        raise PsfError(f"{blend.source}: key 'psfs': expected shape (B={blend.n_bands}, Ph, Pw), got {psfs.shape}")
    if psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"{blend.source}: key 'psfs': sides must be odd, got {psfs.shape[1:]}")
    for b in range(psfs.shape[0]):
        if not np.all(np.isfinite(psfs[b])):
            raise PsfError(f"{blend.source}: key 'psfs': band {blend.bands[b]} PSF has non-finite pixels")
        s = psfs[b].sum()
        if abs(s - 1.0) > PSF_SUM_TOLERANCE:
            raise PsfError(f"{blend.source}: key 'psfs': band {blend.bands[b]} PSF sums to {s:.4g}, not ~1")
    return psfs / psfs.sum(axis=(1, 2), keepdims=True)


def build_observation(blend: BlendData, config: DeblendConfig, weights: Optional[np.ndarray] = None) -> Observation:
    """Prepare data, weights, noise levels and PSF-difference kernels of a blend.

    Parameters
    ----------
    blend : BlendData
    config : DeblendConfig
    weights : ndarray, shape (B, H, W), float32, optional
        ``blend.weights(config.bad_mask_planes)`` when the caller has it
        already (1/counts²).

    Raises
    ------
    BlendDataError
        NaN/inf in images or weights at weighted pixels; a blend with no
        weighted pixel; a band with no weighted pixel.
    PsfError
        A PSF that is not finite, not odd-sized, or does not sum to ~1.
    """
    images = np.asarray(blend.images, dtype=np.float32)
    if weights is None:
        weights = blend.weights(config.bad_mask_planes)
    weights = weights.astype(np.float32)
    if not np.all(np.isfinite(weights)):
        raise BlendDataError(f"{blend.source}: key 'variance': weights are not finite")
    good = weights > 0
    if not good.any():
        raise BlendDataError(f"{blend.source}: key 'variance': every pixel has zero weight "
                             "(all masked, outside the footprint, or variance <= 0)")
    for b in range(images.shape[0]):
        if not good[b].any():
            raise BlendDataError(f"{blend.source}: key 'variance': band {blend.bands[b]} has zero weight everywhere")
    if not np.all(np.isfinite(images[good])):
        raise BlendDataError(f"{blend.source}: key 'images': NaN or inf at weighted pixels")
    images = np.where(good, images, 0.0).astype(np.float32)
    var = np.asarray(blend.variance, dtype=np.float64)
    noise_rms = np.array([np.sqrt(np.median(var[b][good[b]])) for b in range(images.shape[0])])
    psfs = _check_psfs(blend)
    size = max(psfs.shape[1], psfs.shape[2])
    size += 1 - size % 2
    model_psf = psf.gaussian_psf(size, config.model_psf_sigma)
    kernels = psf.psf_difference_kernels(psfs, model_psf, config.psf_regularization)
    radius = psf.kernel_radius_for_tolerance(kernels, config.kernel_tolerance)
    kernels = psf.crop_kernel(kernels, radius, renormalize=True)
    fft_shape = psf.fft_shape_for(images.shape[1:], radius)
    transfer = psf.kernel_transfer_function(kernels, fft_shape)
    abs_transfer = psf.kernel_transfer_function(np.abs(kernels), fft_shape)
    curvature = fit.curvature_bound(weights, abs_transfer, np.abs(kernels).sum(axis=(1, 2)), *fft_shape)
    return Observation(images=images, weights=weights, noise_rms=noise_rms, diff_kernels=kernels,
                       model_psf=model_psf, transfer=transfer, fft_shape=fft_shape, curvature=curvature)


def convolve_sources(morphs: np.ndarray, obs: Observation, boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """Every morphology convolved to every band.

    Parameters
    ----------
    morphs : ndarray, shape (K, H, W), float32
    obs : Observation
    boxes : ndarray, shape (K, 4), int, optional
        Boxes (y0, y1, x0, x1) outside which each morphology is zero. With
        them, a source whose box grown by 2r fits an FFT grid of at most half
        the frame grid's pixels is convolved on that grid
        (:func:`hpcblend.kernels.convolution.convolve_box`; same values to
        float32 rounding, a cost set by the box); transfer functions of the
        small grids are cached on ``obs``.

    Returns
    -------
    conv : ndarray, shape (K, B, H, W), float32
        Zero beyond each box grown by the kernel radius when ``boxes`` is given.
    """
    hp, wp = obs.fft_shape
    nk = morphs.shape[0]
    if boxes is None:
        out = np.empty((nk, obs.images.shape[0]) + morphs.shape[1:], dtype=np.float32)
        for k in range(nk):
            out[k] = convolution.convolve_morphology(morphs[k], obs.transfer, hp, wp)
        return out
    out = np.zeros((nk, obs.images.shape[0]) + morphs.shape[1:], dtype=np.float32)
    r = obs.kernel_radius
    for k in range(nk):
        y0, y1, x0, x1 = (int(v) for v in boxes[k])
        # a coarse (2·3-smooth) ladder of sides, so one blend's boxes share few transfer functions
        n = psf.next_smooth_length(max(y1 - y0, x1 - x0) + 2 * r, (2, 3))
        if 2 * n * n >= hp * wp:  # a new transfer function costs about a convolution: pays below half the frame
            out[k] = convolution.convolve_morphology(morphs[k], obs.transfer, hp, wp)
            continue
        transfer = obs.box_transfer.get(n)
        if transfer is None:
            transfer = obs.box_transfer[n] = psf.kernel_transfer_function(obs.diff_kernels, (n, n))
        convolution.convolve_box(morphs[k], y0, y1, x0, x1, transfer, n, n, r, out[k])
    return out


def _dilate(boxes: np.ndarray, radius: int, shape: tuple) -> np.ndarray:
    out = boxes.copy()
    out[:, 0] = np.maximum(out[:, 0] - radius, 0)
    out[:, 1] = np.minimum(out[:, 1] + radius, shape[0])
    out[:, 2] = np.maximum(out[:, 2] - radius, 0)
    out[:, 3] = np.minimum(out[:, 3] + radius, shape[1])
    return out


def detection_snr(obs: Observation, peaks: np.ndarray) -> np.ndarray:
    """S/N of each peak in the detection image ``Σ_b Y_b/σ_b² / Σ_b 1/σ_b²`` (noise ``(Σ_b 1/σ_b²)^-½``).

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (K, 2), int (y, x)

    Returns
    -------
    snr : ndarray, shape (K,), float64
    """
    band_weight = 1.0 / obs.noise_rms ** 2
    values = obs.images[:, peaks[:, 0], peaks[:, 1]].T @ band_weight / band_weight.sum()
    return values * np.sqrt(band_weight.sum())


def initialize_sources(obs: Observation, peaks: np.ndarray, config: DeblendConfig, core=None):
    """Initial morphologies and SEDs of all sources (scarlet's initialisation).

    Morphologies come from the detection image ``Σ_b Y_b/σ_b² / Σ_b 1/σ_b²``
    via :func:`hpcblend.kernels.initialization.init_morphology` (threshold
    ``bg_thresh × σ_det``); SEDs from a joint non-negative least-squares fit
    per band (:func:`hpcblend.kernels.initialization.fit_seds`).

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (K, 2), int
        Peaks (y, x).
    config : DeblendConfig
    core : ndarray, shape (K,), bool, optional
        Components that are the compact core of a two-component source: their
        morphology starts as the source's, cut below ``config.core_fraction``
        of its peak; every SED is then fitted jointly.

    Returns
    -------
    sed : ndarray, shape (K, B), float64
    morphs : ndarray, shape (K, H, W), float32
    boxes : ndarray, shape (K, 4), int64
    """
    nb, h, w = obs.images.shape
    band_weight = 1.0 / obs.noise_rms ** 2
    detect = (np.tensordot(band_weight, obs.images, axes=1) / band_weight.sum()).astype(np.float32)
    sigma_det = 1.0 / np.sqrt(band_weight.sum())
    threshold = config.bg_thresh * sigma_det
    if config.init_deconvolve > 0:
        # Morphologies live in the model frame (model PSF), the detection image in the
        # observed frame: deconvolve it by the band-weighted difference kernel (Tikhonov)
        # for the *shapes*, keeping the support where the observed detection image is
        # above the threshold.
        hp, wp = obs.fft_shape
        t = np.tensordot((band_weight / band_weight.sum()).astype(np.float32), obs.transfer, axes=1)
        spec = scipy.fft.rfft2(detect, s=(hp, wp), workers=1)
        power = (t.real ** 2 + t.imag ** 2).astype(np.float32)
        spec *= np.conj(t) / (power + np.float32(config.init_deconvolve))
        sharp = scipy.fft.irfft2(spec, s=(hp, wp), workers=1)[:h, :w]
        sharp = np.where(detect > threshold, np.maximum(sharp, 0), 0)
        detect = sharp.astype(np.float32)
    k = peaks.shape[0]
    morphs = np.zeros((k, h, w), dtype=np.float32)
    boxes = np.zeros((k, 4), dtype=np.int64)
    for i in range(k):
        boxes[i] = initialization.init_morphology(detect, int(peaks[i, 0]), int(peaks[i, 1]), threshold,
                                                  config.init_symmetric, config.box_margin, morphs[i])
        if core is not None and core[i]:
            m = morphs[i]
            m[m < config.core_fraction] = 0.0
    conv = convolve_sources(morphs, obs, boxes)
    support = _dilate(boxes, obs.kernel_radius, (h, w))
    sed = initialization.fit_seds(obs.images, obs.weights, conv, support, config.sed_ridge)
    # a source with no flux in any band starts at the noise level so it can still be fitted
    dead = ~(sed > 0).any(axis=1)
    sed[dead] = obs.noise_rms[None, :] * 0.1
    return sed, morphs, boxes


def _skip_flags(blend: BlendData, config: DeblendConfig, n_kept: int) -> dict:
    area = blend.footprint_area
    flags = {name: False for name in PARENT_FLAGS}
    if n_kept > config.max_n_peaks:
        flags["flag_skipped_too_many_peaks"] = True
    if area > config.max_footprint_area or area * n_kept > config.max_area_times_peaks:
        flags["flag_skipped_too_large"] = True
    return flags


def _peak_status(blend: BlendData) -> np.ndarray:
    """``blend.peak_flags`` (K,) int32, plus PEAK_OUTSIDE_IMAGE | PEAK_OUTSIDE_FOOTPRINT for any peak off the image."""
    status = np.array(blend.peak_flags, dtype=np.int32).reshape(-1)
    peaks = np.asarray(blend.peaks, dtype=np.int64).reshape(-1, 2)
    if status.shape[0] != peaks.shape[0]:
        status = np.zeros(peaks.shape[0], dtype=np.int32)
    h, w = blend.shape
    off = (peaks[:, 0] < 0) | (peaks[:, 0] >= h) | (peaks[:, 1] < 0) | (peaks[:, 1] >= w)
    status[off] |= PEAK_OUTSIDE_IMAGE | PEAK_OUTSIDE_FOOTPRINT
    return status


def _no_peak_error(blend: BlendData, status: np.ndarray) -> BlendDataError:
    key = blend.meta.get("peak_key", "centers") if isinstance(blend.meta, dict) else "centers"
    counts = [(int(np.count_nonzero(status & bit)), what) for bit, what in (
        (PEAK_OUTSIDE_IMAGE, "outside the image"), (PEAK_OUTSIDE_FOOTPRINT, "outside the footprint"),
        (PEAK_MASKED, "on pixels masked in every band"), (PEAK_DUPLICATE, "duplicates"))]
    why = ", ".join(f"{n} {what}" for n, what in counts if n)
    return BlendDataError(f"{blend.source}: key {key!r}: none of the {len(status)} peaks can be fitted "
                          f"({why or 'all dropped'})")


def _expand_result(result: DeblendResult, peaks: np.ndarray, kept: np.ndarray, band_ok: np.ndarray) -> None:
    """Scatter a fit of the kept peaks and usable bands into arrays over all K peaks and B bands (in place).

    Components: the K main components in peak order (placeholders with zero SED and morphology and
    an empty box at the clipped peak for dropped peaks), then the kept peaks' cores in fit order.
    Children: NaN measurements and ``alive`` False for dropped peaks; NaN fluxes in bands without data.
    """
    k_all, n_kept, nb = result.n_peaks, len(kept), len(band_ok)
    ch = result.children
    for name, val in list(ch.items()):
        val = np.asarray(val)
        if val.ndim == 2 and not band_ok.all():
            full_b = np.full((val.shape[0], nb), np.nan, dtype=val.dtype)
            full_b[:, band_ok] = val
            val = full_b
        if n_kept != k_all:
            fill = False if val.dtype == np.bool_ else np.nan
            full = np.full((k_all,) + val.shape[1:], fill, dtype=val.dtype)
            full[kept] = val
            val = full
        ch[name] = val
    if not band_ok.all():
        sed = np.zeros((result.sed.shape[0], nb), dtype=result.sed.dtype)
        sed[:, band_ok] = result.sed
        conv = np.zeros((result.conv.shape[0], nb) + result.conv.shape[2:], dtype=result.conv.dtype)
        conv[:, band_ok] = result.conv
        result.sed, result.conv = sed, conv
    if n_kept != k_all:
        n_comp = result.sed.shape[0]
        # component i of the fit -> its index in the full layout
        dest = np.concatenate([kept, k_all + np.arange(n_comp - n_kept)]).astype(np.int64)
        total = k_all + n_comp - n_kept
        sed = np.zeros((total,) + result.sed.shape[1:], dtype=result.sed.dtype)
        morphs = np.zeros((total,) + result.morphs.shape[1:], dtype=result.morphs.dtype)
        conv = np.zeros((total,) + result.conv.shape[1:], dtype=result.conv.dtype)
        boxes = np.zeros((total, 4), dtype=result.boxes.dtype)
        h, w = result.morphs.shape[1:]
        # dropped peaks: an empty box (y0 == y1, x0 == x1) at the peak clipped to the image
        boxes[:k_all, 0] = boxes[:k_all, 1] = np.clip(peaks[:, 0], 0, h)
        boxes[:k_all, 2] = boxes[:k_all, 3] = np.clip(peaks[:, 1], 0, w)
        owner = np.arange(total, dtype=np.int64)
        owner[k_all:] = kept[result.owner[n_kept:]]
        sed[dest], morphs[dest], conv[dest], boxes[dest] = result.sed, result.morphs, result.conv, result.boxes
        result.sed, result.morphs, result.conv, result.boxes, result.owner = sed, morphs, conv, boxes, owner


def deblend_blend(blend: BlendData, config: DeblendConfig, sampler=None) -> DeblendResult:
    """Deblend one blend: build the observation, initialise, fit, measure.

    Parameters
    ----------
    blend : BlendData
    config : DeblendConfig
    sampler : hpcblend.diagnostics.sampler.StackSampler, optional
        Gets the stages ``init``, ``fit`` and ``measure`` (with the blend id)
        as they start; the caller's enclosing ``sampler.stage(...)`` restores
        its own stage afterwards.

    Returns
    -------
    DeblendResult
        Skipped blends (size guards, counting kept peaks only) come back
        unfitted with their skip flag; a numerical failure during the fit
        comes back with ``flag_failed``, ``error_type`` and ``error_message``
        set. Only the kept peaks (``blend.peak_flags`` without a
        :data:`~hpcblend.io.blends.PEAK_DROPPED` bit, and inside the image) are
        fitted, on the bands with at least one weighted pixel; the children,
        ``sed``, ``conv`` etc. still cover all K peaks and B bands (see
        :class:`DeblendResult`). ``flag_incomplete_data``: more than 10 % of
        the footprint has zero weight in some band (so always when a band
        has no data). ``flag_bad_fit``: the final χ²/pixel is not finite or
        above ``config.max_chi2_per_pixel``.

    Raises
    ------
    BlendDataError, PsfError
        Unusable input (see :func:`build_observation`): no weighted pixel in
        any band, NaN/inf at weighted pixels, a bad PSF; or no peak left to
        fit (the message names the file, the peak key and why each was
        dropped).
    """
    peak_flags = _peak_status(blend)
    kept = np.flatnonzero((peak_flags & PEAK_DROPPED) == 0)
    if len(kept) == 0:
        if not np.any(blend.weights(config.bad_mask_planes) > 0):  # the root cause, if it is one
            raise BlendDataError(f"{blend.source}: key 'variance': every pixel has zero weight "
                                 "(all masked, outside the footprint, or variance <= 0)")
        raise _no_peak_error(blend, peak_flags)
    result = DeblendResult(n_peaks=blend.n_peaks, footprint_area=blend.footprint_area, peak_flags=peak_flags)
    result.flags = _skip_flags(blend, config, len(kept))
    result.flags["n_peaks_dropped"] = int(blend.n_peaks - len(kept))
    if result.flags["flag_skipped_too_many_peaks"] or result.flags["flag_skipped_too_large"]:
        return result
    t0 = time.perf_counter()
    if sampler is not None:
        sampler.set_stage("init", blend.id)
    weights = blend.weights(config.bad_mask_planes).astype(np.float32)
    band_ok = (weights > 0).reshape(weights.shape[0], -1).any(axis=1)
    result.bands_fitted = band_ok
    fp = blend.footprint
    masked_fraction = float(((weights == 0) & fp[None]).sum(axis=(1, 2)).max() / max(fp.sum(), 1))
    result.flags["flag_incomplete_data"] = masked_fraction > 0.1
    if band_ok.all() or not band_ok.any():  # none usable: build_observation says so
        data = blend
    else:  # fit the bands with data; _expand_result puts the empty ones back
        data = dataclasses.replace(blend, bands=tuple(b for b, ok in zip(blend.bands, band_ok) if ok),
                                   images=blend.images[band_ok], variance=blend.variance[band_ok],
                                   mask=None if blend.mask is None else blend.mask[band_ok],
                                   psfs=blend.psfs[band_ok])
        weights = weights[band_ok]
    obs = build_observation(data, config, weights=weights)
    child_peaks = np.ascontiguousarray(blend.peaks[kept], dtype=np.int64)
    n_children = child_peaks.shape[0]
    owner = np.arange(n_children, dtype=np.int64)
    if config.max_components >= 2 and n_children:
        bright = np.nonzero(detection_snr(obs, child_peaks) >= config.multi_component_snr)[0]
        owner = np.concatenate([owner, bright]).astype(np.int64)
    peaks = np.ascontiguousarray(child_peaks[owner])
    core = np.arange(len(owner)) >= n_children
    sed, morphs, boxes = initialize_sources(obs, peaks, config, core=core)
    t1 = time.perf_counter()
    result.t_init = t1 - t0
    if sampler is not None:
        sampler.set_stage("fit", blend.id)
    loss = np.zeros(config.max_iter)
    hp, wp = obs.fft_shape
    optimizer = fit.OPT_ADAPROX if config.optimizer == "adaprox" else fit.OPT_FISTA
    try:
        n_iter, converged, status, alive = fit.fit_blend(
            obs.images, obs.weights, obs.curvature, obs.transfer, hp, wp, peaks, sed, morphs, boxes, obs.noise_rms,
            optimizer, config.max_iter, config.min_iter, config.e_rel, config.bg_thresh,
            config.monotonic, config.symmetric, config.sed_step_factor, config.morph_step,
            config.box_margin, obs.kernel_radius, config.step_scale, loss)
        if status == fit.STATUS_NONFINITE:
            raise NumericalFailure(f"{blend.source}: loss became non-finite at iteration {n_iter}")
        if not (np.all(np.isfinite(sed)) and np.all(np.isfinite(morphs))):
            raise NumericalFailure(f"{blend.source}: model parameters became non-finite")
    except NumericalFailure as exc:
        result.t_fit = time.perf_counter() - t1
        result.flags["flag_failed"] = True
        result.error_type = type(exc).__name__
        result.error_message = str(exc)
        return result
    t2 = time.perf_counter()
    result.t_fit = t2 - t1
    if sampler is not None:
        sampler.set_stage("measure", blend.id)
    result.iterations = int(n_iter)
    result.converged = bool(converged)
    result.flags["flag_not_converged"] = not converged
    result.loss_history = loss[:n_iter].copy()
    conv = convolve_sources(morphs, obs, boxes)
    children, result.chi2_per_pixel = measure_children(obs.images, np.asarray(data.variance, dtype=np.float32),
                                                       obs.weights, fp, sed, morphs, conv, boxes, obs.kernel_radius,
                                                       owner, n_children)
    alive = np.asarray(alive, dtype=bool)
    children["alive"] = np.array([alive[owner == k].any() for k in range(n_children)], dtype=bool)
    result.children = dict(children)
    result.sed = sed
    result.morphs = morphs
    result.boxes = boxes
    result.owner = owner
    result.conv = conv
    if len(kept) < blend.n_peaks or not band_ok.all():
        _expand_result(result, np.asarray(blend.peaks, dtype=np.int64), kept, band_ok)
    chi2 = result.chi2_per_pixel
    result.flags["flag_bad_fit"] = bool(not np.isfinite(chi2) or chi2 > config.max_chi2_per_pixel)
    result.t_measure = time.perf_counter() - t2
    return result


def warm_up() -> float:
    """Compile (or load from cache) every kernel on a tiny synthetic blend; returns seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    h = w = 15
    yy, xx = np.indices((h, w))
    img = np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 4.0)[None].repeat(2, 0).astype(np.float32) * 10
    img += rng.normal(0, 0.1, img.shape).astype(np.float32)
    p = psf.gaussian_psf(7, 1.2)
    blend = BlendData(id=0, source="<warm-up>", bands=("a", "b"), images=img,
                      variance=np.full(img.shape, 0.01, np.float32), mask=np.zeros(img.shape, np.int32),
                      footprint=np.ones((h, w), bool), psfs=np.array([p, p]), peaks=np.array([[7, 7]]))
    for opt in ("adaprox", "fista"):
        deblend_blend(blend, DeblendConfig(max_iter=6, optimizer=opt))
    # kernels the tiny blend does not reach: small-grid source convolutions, batched band convolutions
    obs = build_observation(blend, DeblendConfig())
    hp, wp = obs.fft_shape
    convolution.convolve_bands(obs.images, obs.transfer, hp, wp)
    convolution.correlate_bands(obs.images, obs.transfer, hp, wp)
    n = 2 * obs.kernel_radius + 3
    convolution.convolve_box(obs.images[0], 6, 9, 6, 9, psf.kernel_transfer_function(obs.diff_kernels, (n, n)), n, n,
                             obs.kernel_radius, np.zeros(obs.images.shape, np.float32))
    return time.perf_counter() - t0
