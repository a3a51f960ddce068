"""Deblend one blend: which peaks to fit, the observation, initialisation, the fit, child measurements, flags.

Orchestrates the steps of :mod:`hpcblend.deblend` for a single
:class:`~hpcblend.io.blends.BlendData` following scarlet (Melchior et al. 2018,
Astronomy & Computing 24, 129) and scarlet_lite's split of concerns: the
observation (:mod:`hpcblend.deblend.observation`: data, weights,
PSF-difference kernels), initialisation
(:mod:`hpcblend.deblend.initialization`), the compiled fit loop
(:mod:`hpcblend.deblend.fitting`, one Numba call per blend), the child
measurements (:mod:`hpcblend.measure.children`) and the result with its flags
(:mod:`hpcblend.deblend.result`). :func:`warm_up` compiles (or loads) every
kernel before a run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Tuple

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend.fitting import fit_settings
from hpcblend.deblend.initialization import component_layout, initialize_sources
from hpcblend.deblend.observation import DifferenceKernels, Observation, build_observation, convolve_sources
from hpcblend.deblend.subblends import fit_sub_blends
from hpcblend.deblend.result import DeblendResult, exceeds_memory_guard, expand_result, skip_flags
from hpcblend.errors import BlendDataError, NumericalFailure
from hpcblend.io.blends import (PEAK_DROPPED, PEAK_DUPLICATE, PEAK_MASKED, PEAK_OUTSIDE_FOOTPRINT, PEAK_OUTSIDE_IMAGE,
                                BlendData)
from hpcblend.kernels import convolution, psf
from hpcblend.measure.children import measure_children

__all__ = ["INCOMPLETE_DATA_FRACTION", "deblend_blend", "warm_up"]

#: ``flag_incomplete_data``: more than this fraction of the footprint has zero weight in some band
#: (masked or no data); its children's fluxes there rest on the model rather than the data.
INCOMPLETE_DATA_FRACTION = 0.1


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
    """The error for a blend none of whose peaks can be fitted, saying why each was dropped."""
    key = blend.meta.get("peak_key", "centers") if isinstance(blend.meta, dict) else "centers"
    counts = [(int(np.count_nonzero(status & bit)), what) for bit, what in (
        (PEAK_OUTSIDE_IMAGE, "outside the image"), (PEAK_OUTSIDE_FOOTPRINT, "outside the footprint"),
        (PEAK_MASKED, "on pixels masked in every band"), (PEAK_DUPLICATE, "duplicates"))]
    why = ", ".join(f"{n} {what}" for n, what in counts if n)
    return BlendDataError(f"{blend.source}: key {key!r}: none of the {len(status)} peaks can be fitted "
                          f"({why or 'all dropped'})")


def _kept_peaks(blend: BlendData, config: DeblendConfig) -> Tuple[np.ndarray, np.ndarray]:
    """The status of every peak (K,) int32 and the indices of the peaks to fit; BlendDataError when none."""
    peak_flags = _peak_status(blend)
    kept = np.flatnonzero((peak_flags & PEAK_DROPPED) == 0)
    if len(kept) == 0:
        if not np.any(blend.weights(config.bad_mask_planes) > 0):  # the root cause, if it is one
            raise BlendDataError(f"{blend.source}: key 'variance': every pixel has zero weight "
                                 "(all masked, outside the footprint, or variance <= 0)")
        raise _no_peak_error(blend, peak_flags)
    return peak_flags, kept


def _observe(blend: BlendData, config: DeblendConfig, result: DeblendResult,
             kernels: Optional[DifferenceKernels] = None) -> Tuple[BlendData, Observation]:
    """The observation of the bands with data, and the blend restricted to them.

    Sets ``result.bands_fitted`` and ``flag_incomplete_data``. When every band
    (or none: :func:`build_observation` says so) has data, the blend itself.
    """
    weights = blend.weights(config.bad_mask_planes).astype(np.float32)
    band_ok = (weights > 0).reshape(weights.shape[0], -1).any(axis=1)
    result.bands_fitted = band_ok
    fp = blend.footprint
    masked_fraction = float(((weights == 0) & fp[None]).sum(axis=(1, 2)).max() / max(fp.sum(), 1))
    result.flags["flag_incomplete_data"] = masked_fraction > INCOMPLETE_DATA_FRACTION
    if band_ok.all() or not band_ok.any():
        data = blend
    else:  # fit the bands with data; expand_result puts the empty ones back
        data = dataclasses.replace(blend, bands=tuple(b for b, ok in zip(blend.bands, band_ok) if ok),
                                   images=blend.images[band_ok], variance=blend.variance[band_ok],
                                   mask=None if blend.mask is None else blend.mask[band_ok],
                                   psfs=blend.psfs[band_ok])
        weights = weights[band_ok]
    return data, build_observation(data, config, weights=weights, kernels=kernels)


def _measure(result: DeblendResult, blend: BlendData, data: BlendData, obs: Observation, sed: np.ndarray,
             morphs: np.ndarray, boxes: np.ndarray, owner: np.ndarray, alive: np.ndarray, n_children: int) -> None:
    """Convolve the fitted components, measure the ``n_children`` children and χ²/pixel; store the model in ``result``."""
    conv = convolve_sources(morphs, obs, boxes)
    children, result.chi2_per_pixel = measure_children(obs.images, np.asarray(data.variance, dtype=np.float32),
                                                       obs.weights, blend.footprint, sed, morphs, conv, boxes,
                                                       owner, n_children)
    children["alive"] = np.array([alive[owner == k].any() for k in range(n_children)], dtype=bool)
    result.children = dict(children)
    result.sed = sed
    result.morphs = morphs
    result.boxes = boxes
    result.owner = owner
    result.conv = conv
    result.noise_rms = obs.noise_rms


def _set_stage(sampler, stage: str, blend_id: int) -> None:
    if sampler is not None:
        sampler.set_stage(stage, blend_id)


def deblend_blend(blend: BlendData, config: DeblendConfig, sampler=None,
                  kernels: Optional[DifferenceKernels] = None) -> DeblendResult:
    """Deblend one blend: build the observation, initialise, fit, measure.

    Parameters
    ----------
    blend : BlendData
    config : DeblendConfig
    sampler : hpcblend.diagnostics.sampler.StackSampler, optional
        Gets the stages ``init``, ``fit`` and ``measure`` (with the blend id)
        as they start; the caller's enclosing ``sampler.stage(...)`` restores
        its own stage afterwards.
    kernels : hpcblend.deblend.observation.DifferenceKernels, optional
        A work unit's cache of PSF-difference kernels and transfer functions,
        shared by its blends (a patch: one PSF per band); the results are the
        same with or without it.

    Returns
    -------
    DeblendResult
        Skipped blends (size guards, counting kept peaks only; the memory
        guard again with the bright sources' cores once they are known)
        come back unfitted with their skip flag; a numerical failure during the fit
        comes back with ``flag_failed``, ``error_type`` and ``error_message``
        set. Only the kept peaks (``blend.peak_flags`` without a
        :data:`~hpcblend.io.blends.PEAK_DROPPED` bit, and inside the image) are
        fitted, on the bands with at least one weighted pixel; the children,
        ``sed``, ``conv`` etc. still cover all K peaks and B bands (see
        :class:`~hpcblend.deblend.result.DeblendResult`). ``flag_incomplete_data``:
        more than ``INCOMPLETE_DATA_FRACTION`` (10 %) of the footprint has zero
        weight in some band (so always when a band has no data).
        ``flag_bad_fit``: the final χ²/pixel is not finite or above
        ``config.max_chi2_per_pixel``.

    Raises
    ------
    BlendDataError, PsfError
        Unusable input (see :func:`~hpcblend.deblend.observation.build_observation`):
        no weighted pixel in any band, NaN/inf at weighted pixels, a bad PSF; or
        no peak left to fit (the message names the file, the peak key and why
        each was dropped).
    """
    peak_flags, kept = _kept_peaks(blend, config)
    result = DeblendResult(n_peaks=blend.n_peaks, footprint_area=blend.footprint_area, peak_flags=peak_flags)
    result.flags = skip_flags(blend, config, len(kept))
    result.flags["n_peaks_dropped"] = int(blend.n_peaks - len(kept))
    if result.flags["flag_skipped_too_many_peaks"] or result.flags["flag_skipped_too_large"]:
        return result
    t0 = time.perf_counter()
    _set_stage(sampler, "init", blend.id)
    data, obs = _observe(blend, config, result, kernels)
    child_peaks = np.ascontiguousarray(blend.peaks[kept], dtype=np.int64)
    owner, _ = component_layout(obs, child_peaks, config)
    if exceeds_memory_guard(len(owner), obs.images.shape[0], obs.images.shape[1:], config):
        result.flags["flag_skipped_too_large"] = True  # the bright sources' cores took it over the guard
        result.t_init = time.perf_counter() - t0
        return result
    peaks = np.ascontiguousarray(child_peaks[owner])
    sed, morphs, boxes, caps = initialize_sources(obs, peaks, config, owner=owner)
    t1 = time.perf_counter()
    result.t_init = t1 - t0
    _set_stage(sampler, "fit", blend.id)
    try:
        fitted = fit_sub_blends(obs, peaks, sed, morphs, boxes, owner, fit_settings(config), blend.source,
                                split=config.sub_blends, box_cap=caps)
        n_iter, converged, alive, loss_history = fitted.n_iter, fitted.converged, fitted.alive, fitted.loss_history
        result.n_sub_blends = fitted.n_sub_blends
    except NumericalFailure as exc:
        result.t_fit = time.perf_counter() - t1
        result.flags["flag_failed"] = True
        result.error_type = type(exc).__name__
        result.error_message = str(exc)
        return result
    t2 = time.perf_counter()
    result.t_fit = t2 - t1
    _set_stage(sampler, "measure", blend.id)
    result.iterations = n_iter
    result.converged = converged
    result.flags["flag_not_converged"] = not converged
    result.loss_history = loss_history
    _measure(result, blend, data, obs, sed, morphs, boxes, owner, alive, len(kept))
    band_ok = result.bands_fitted
    if len(kept) < blend.n_peaks or not band_ok.all():
        expand_result(result, np.asarray(blend.peaks, dtype=np.int64), kept, band_ok)
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
    # kernels the tiny blend does not reach: batched band convolutions (the source convolutions on small grids are
    # the same compiled convolve_components as on the frame's grid)
    obs = build_observation(blend, DeblendConfig())
    hp, wp = obs.fft_shape
    convolution.convolve_bands(obs.images, obs.transfer, hp, wp)
    convolution.correlate_bands(obs.images, obs.transfer, hp, wp)
    return time.perf_counter() - t0
