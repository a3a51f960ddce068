"""A blend's data prepared for the fit: weights, noise, PSF-difference kernels and source convolutions.

scarlet's *observation* (Melchior et al. 2018, Sect. 2.2): the data ``Y_b`` with inverse-variance
weights ``W_b`` (zero at bad mask planes, non-positive variance and outside the footprint), the
background noise σ_b per band, and the difference kernels ``D_b`` that take the common Gaussian
model PSF to each band's PSF (``P_b ≈ D_b * P_model``), with their transfer functions on the padded
FFT grid and the per-pixel curvature bound FISTA's steps use. :func:`build_observation` checks the
inputs and builds it; :func:`convolve_sources` convolves morphologies to every band with it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from hpcblend.io.psf import PSF_SUM_TOLERANCE
from hpcblend.config import DeblendConfig
from hpcblend.deblend.component_models import ComponentModels, grown_boxes
from hpcblend.errors import BlendDataError, PsfError
from hpcblend.io.blends import BlendData
from hpcblend.kernels import convolution, fit_steps, psf

__all__ = ["Observation", "DifferenceKernels", "SMALL_GRID_PRIMES", "SMALL_GRID_AREA_DIVISOR", "build_observation",
           "convolve_sources"]

#: Sides of the small FFT grids of :func:`convolve_sources` are products of these primes: a coarse
#: ladder, so that one blend's boxes share few transfer functions.
SMALL_GRID_PRIMES = (2, 3)
#: A source is convolved on a small grid only when the grid has at most 1/this of the frame grid's
#: pixels: a new transfer function costs about one convolution, which pays below half the frame.
SMALL_GRID_AREA_DIVISOR = 2


class DifferenceKernels:
    """PSF-difference kernels and their transfer functions, computed once per PSF and reused.

    Every blend of a patch has the same PSFs (a coadd's PSF per band), so the kernels ``D_b``
    (a regularised deconvolution per band), their crop radius and their transfer functions on each
    FFT grid size are the same for all of them; a work unit keeps one of these and passes it to
    :func:`build_observation` (``kernels=``), which then computes each only once. Results are the
    same arrays a fresh computation gives (the same function of the same inputs).

    Keys are the PSF stack's bytes (BLAKE2b) and the three deblender settings the kernels depend on
    (``model_psf_sigma``, ``psf_regularization``, ``kernel_tolerance``); a cache holds every PSF it
    was given (a patch has one; a blend collection usually one per file). A cache made for one blend alone
    (``single=True``, what :func:`build_observation` makes when given none) is asked about one PSF stack and
    one configuration only, so it keys them by nothing and spends no time hashing.
    """

    def __init__(self, single: bool = False) -> None:
        self._kernels: Dict[tuple, Tuple[np.ndarray, np.ndarray, int]] = {}
        self._transfer: Dict[tuple, np.ndarray] = {}
        self._single = bool(single)

    def _key(self, psfs: np.ndarray, config: DeblendConfig) -> tuple:
        if self._single:
            return ()
        digest = hashlib.blake2b(np.ascontiguousarray(psfs).tobytes(), digest_size=16).digest()
        return (psfs.shape, digest, float(config.model_psf_sigma), float(config.psf_regularization),
                float(config.kernel_tolerance))

    def kernels(self, psfs: np.ndarray, config: DeblendConfig) -> Tuple[np.ndarray, np.ndarray, tuple]:
        """``(kernels (B, 2r+1, 2r+1) float64, model_psf (P, P) float64, key)`` for normalised ``psfs`` (B, Ph, Pw)."""
        key = self._key(psfs, config)
        hit = self._kernels.get(key)
        if hit is None:
            hit = self._kernels[key] = _difference_kernels(psfs, config)
        return hit[0], hit[1], key

    def transfer(self, key: tuple, fft_shape: tuple, absolute: bool = False) -> np.ndarray:
        """Transfer functions (B, Hp, Wp//2+1) complex64 of the kernels of ``key`` (from :meth:`kernels`), or of
        their absolute values, on ``fft_shape``."""
        tkey = (key, tuple(fft_shape), bool(absolute))
        hit = self._transfer.get(tkey)
        if hit is None:  # both at once, in one transform call: every fit needs both
            kernels = self._kernels[key][0]
            both = psf.kernel_transfer_function(np.concatenate([kernels, np.abs(kernels)]), tuple(fft_shape))
            self._transfer[tkey[:2] + (False,)], self._transfer[tkey[:2] + (True,)] = np.split(both, 2)
            hit = self._transfer[tkey]
        return hit


@functools.lru_cache(maxsize=8)
def _model_psf(size: int, sigma: float) -> np.ndarray:
    """The Gaussian model PSF (size, size) float64, read-only: every blend of a run has the same one."""
    model_psf = psf.gaussian_psf(size, sigma)
    model_psf.flags.writeable = False
    return model_psf


def _difference_kernels(psfs: np.ndarray, config: DeblendConfig) -> Tuple[np.ndarray, np.ndarray, int]:
    """The model PSF and the PSF-difference kernels cropped at ``config.kernel_tolerance``."""
    size = max(psfs.shape[1], psfs.shape[2])
    size += 1 - size % 2
    model_psf = _model_psf(size, float(config.model_psf_sigma))
    kernels = psf.psf_difference_kernels(psfs, model_psf, config.psf_regularization)
    radius = psf.kernel_radius_for_tolerance(kernels, config.kernel_tolerance)
    return psf.crop_kernel(kernels, radius, renormalize=True), model_psf, radius


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
        (:func:`hpcblend.kernels.fit_steps.curvature_bound`).
    box_transfer : dict
        Transfer functions of ``diff_kernels`` on small square grids, keyed
        by side (filled by :func:`convolve_sources`).
    kernel_cache : DifferenceKernels or None
        Where the kernels came from (shared by the blends of a work unit), with ``kernel_key``.
    no_data : ndarray, shape (H, W), bool, or None
        Pixels inside the parent footprint with zero weight in every band (a saturated star's masked
        core, a bleed trail): a peak there has no measured height and is never held by the slope-peak box
        limit (:func:`hpcblend.deblend.initialization.slope_peak_caps`); None: none known.
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
    kernel_cache: Optional[DifferenceKernels] = field(default=None, repr=False)
    kernel_key: Optional[tuple] = field(default=None, repr=False)
    no_data: Optional[np.ndarray] = field(default=None, repr=False)

    def transfer_on(self, fft_shape: tuple) -> np.ndarray:
        """Transfer functions of ``diff_kernels`` on another FFT grid (from the kernel cache when there is one)."""
        if self.kernel_cache is not None:
            return self.kernel_cache.transfer(self.kernel_key, fft_shape)
        return psf.kernel_transfer_function(self.diff_kernels, tuple(fft_shape))

    @property
    def kernel_radius(self) -> int:
        """Half-size of the difference kernels, pixels."""
        return int(self.diff_kernels.shape[-1] // 2)


def _check_psfs(blend: BlendData) -> np.ndarray:
    """The blend's PSFs (B, Ph, Pw) float64, renormalised to sum 1; PsfError when unusable."""
    psfs = np.asarray(blend.psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != blend.n_bands:
        raise PsfError(f"{blend.source}: key 'psfs': expected shape (B={blend.n_bands}, Ph, Pw), got {psfs.shape}")
    if psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"{blend.source}: key 'psfs': sides must be odd, got {psfs.shape[1:]}")
    finite = np.isfinite(psfs).all(axis=(1, 2))
    sums = psfs.sum(axis=(1, 2), keepdims=True)
    for b in range(psfs.shape[0]):  # the readers' check again: a BlendData may come from a caller, not a file
        if not finite[b]:
            raise PsfError(f"{blend.source}: key 'psfs': band {blend.bands[b]} PSF has non-finite pixels")
        if abs(sums[b, 0, 0] - 1.0) > PSF_SUM_TOLERANCE:
            raise PsfError(f"{blend.source}: key 'psfs': band {blend.bands[b]} PSF sums to {sums[b, 0, 0]:.4g}, not ~1")
    return psfs / sums


def _checked_data(blend: BlendData, weights: np.ndarray):
    """Images (zero at unweighted pixels) and the weighted-pixel mask, both (B, H, W); BlendDataError when unusable."""
    images = np.asarray(blend.images, dtype=np.float32)
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
    return np.where(good, images, 0.0).astype(np.float32), good


def _noise_rms(variance: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Background σ_b per band (B,) float64: the square root of the median ``variance`` (B, H, W) over the
    band's pixels where ``good`` (B, H, W) bool (each band has some).

    The median as ``np.median`` of float64 values gives it (the middle value, or the mean of the two middle
    values in float64), but found by partitioning the band's own values, without a float64 copy of the cube.
    """
    out = np.empty(variance.shape[0])
    for b in range(variance.shape[0]):
        values = variance[b][good[b]]
        half = values.size // 2
        if values.size % 2:
            median = float(np.partition(values, half)[half])
        else:
            middle = np.partition(values, (half - 1, half))
            median = (float(middle[half - 1]) + float(middle[half])) / 2.0
        out[b] = median
    return np.sqrt(out)


def build_observation(blend: BlendData, config: DeblendConfig, weights: Optional[np.ndarray] = None,
                      kernels: Optional[DifferenceKernels] = None) -> Observation:
    """Prepare data, weights, noise levels and PSF-difference kernels of a blend.

    Parameters
    ----------
    blend : BlendData
    config : DeblendConfig
    weights : ndarray, shape (B, H, W), float32, optional
        ``blend.weights(config.bad_mask_planes)`` when the caller has it
        already (1/counts²).
    kernels : DifferenceKernels, optional
        The work unit's cache of difference kernels and transfer functions
        (default: computed for this blend alone).

    Returns
    -------
    Observation

    Raises
    ------
    BlendDataError
        NaN/inf in images or weights at weighted pixels; a blend with no
        weighted pixel; a band with no weighted pixel.
    PsfError
        A PSF that is not finite, not odd-sized, or does not sum to ~1.
    """
    if weights is None:
        weights = blend.weights(config.bad_mask_planes)
    weights = weights.astype(np.float32)
    images, good = _checked_data(blend, weights)
    noise_rms = _noise_rms(np.asarray(blend.variance), good)
    psfs = _check_psfs(blend)
    cache = kernels if kernels is not None else DifferenceKernels(single=True)
    diff_kernels, model_psf, key = cache.kernels(psfs, config)
    radius = diff_kernels.shape[-1] // 2
    fft_shape = psf.fft_shape_for(images.shape[1:], radius)
    transfer = cache.transfer(key, fft_shape)
    abs_transfer = cache.transfer(key, fft_shape, absolute=True)
    curvature = fit_steps.curvature_bound(weights, abs_transfer, np.abs(diff_kernels).sum(axis=(1, 2)), *fft_shape)
    return Observation(images=images, weights=weights, noise_rms=noise_rms, diff_kernels=diff_kernels,
                       model_psf=model_psf, transfer=transfer, fft_shape=fft_shape, curvature=curvature,
                       kernel_cache=cache, kernel_key=key, no_data=np.asarray(blend.footprint) & ~good.any(axis=0))


def convolve_sources(morphs: np.ndarray, obs: Observation, boxes: np.ndarray) -> ComponentModels:
    """Every morphology convolved to every band, each over its box grown by the kernel radius.

    Parameters
    ----------
    morphs : ndarray, shape (K, H, W), float32
    obs : Observation
    boxes : ndarray, shape (K, 4), int
        The kernels' per-source boxes (y0, y1, x0, x1), half-open, outside
        which each morphology is zero. A source whose box grown by 2r fits an
        FFT grid of at most ``1/SMALL_GRID_AREA_DIVISOR`` of the frame grid's
        pixels is convolved on that grid
        (:func:`hpcblend.kernels.convolution.convolve_box`; same values to
        float32 rounding, a cost set by the box), the others on the frame's
        grid; transfer functions of the small grids are cached on ``obs``.

    Returns
    -------
    ComponentModels
        ``D_b * S_k`` over each box grown by the kernel radius (zero beyond it), stored per source
        (:mod:`hpcblend.deblend.component_models`).
    """
    hp, wp = obs.fft_shape
    r = obs.kernel_radius
    frame = morphs.shape[1:]
    boxes = np.ascontiguousarray(boxes, dtype=np.int64)
    out = ComponentModels.zeros(grown_boxes(boxes, r, frame), obs.images.shape[0], frame)
    by_side: Dict[int, list] = {}  # grid side → components (0: the frame's grid)
    for k, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        if y1 <= y0 or x1 <= x0:
            continue
        n = _small_grid_side(max(y1 - y0, x1 - x0) + 2 * r)
        by_side.setdefault(0 if SMALL_GRID_AREA_DIVISOR * n * n >= hp * wp else n, []).append(k)
    for n, components in by_side.items():
        if n == 0:
            transfer, n1, n2 = obs.transfer, hp, wp
        else:
            transfer = obs.box_transfer.get(n)
            if transfer is None:
                transfer = obs.box_transfer[n] = obs.transfer_on((n, n))
            n1 = n2 = n
        convolution.convolve_components(morphs, boxes, np.array(components, dtype=np.int64), transfer, n1, n2, r,
                                        out.offsets, out.grown, out.flat, n == 0)
    return out


@functools.lru_cache(maxsize=1024)
def _small_grid_side(n: int) -> int:
    """:func:`hpcblend.kernels.psf.next_smooth_length` on the :data:`SMALL_GRID_PRIMES` ladder (cached)."""
    return psf.next_smooth_length(n, SMALL_GRID_PRIMES)
