"""What the deblender says about one blend: :class:`DeblendResult`, its parent flags, the skip decision.

:func:`hpcblend.deblend.deblender.deblend_blend` fits the kept peaks on the bands with data;
:func:`expand_result` scatters that fit back over all K peaks and B bands, so that every array of
a :class:`DeblendResult` is indexed by the blend's own peaks and bands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend.component_models import ComponentModels
from hpcblend.io.blends import BlendData

__all__ = ["DeblendResult", "PARENT_FLAGS", "exceeds_memory_guard", "model_memory_bytes", "skip_flags",
           "expand_result"]

#: The parent flags every :attr:`DeblendResult.flags` holds (bool), besides ``n_peaks_dropped`` (int).
PARENT_FLAGS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large", "flag_not_converged",
                "flag_failed", "flag_incomplete_data", "flag_bad_fit")


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
    n_sub_blends : int
        Groups of sources fitted independently (:mod:`hpcblend.deblend.subblends`; 1: in one piece,
        0: not fitted).
    error_type, error_message : str
        Exception class and message of a numerical failure, else "".
    sed : ndarray, shape (C, B) or None
        Per *component* (C ≥ K: bright sources have a halo and a core).
    morphs : ndarray, shape (C, H, W) or None
    boxes : ndarray, shape (C, 4), int64, or None
        The kernels' per-component box array: (y0, y1, x0, x1), half-open, of
        each component's morphology in the blend frame (the morphology is zero
        outside it); row c as a :class:`hpcblend.geometry.Box` is
        ``Box((y0, x0), (y1 - y0, x1 - x0))``.
    conv : ComponentModels or None
        Morphologies convolved to each band's PSF, ``D_b * S_c``, each over
        its box grown by the kernel radius
        (:class:`~hpcblend.deblend.component_models.ComponentModels`; ``.dense()``
        is the (C, B, H, W) array); a component's observed-frame model is
        ``sed[c, b] * conv[c, b]``.
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
    noise_rms : ndarray, shape (B,), float64, or None
        Background σ per band (counts; :attr:`Observation.noise_rms
        <hpcblend.deblend.observation.Observation>`), NaN in a band not fitted;
        None when no observation was built (skipped blends).
    """

    n_peaks: int
    footprint_area: int
    iterations: int = 0
    converged: bool = False
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_sub_blends: int = 0
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
    conv: Optional[ComponentModels] = None
    owner: Optional[np.ndarray] = None
    children: dict = field(default_factory=dict)
    peak_flags: Optional[np.ndarray] = None
    bands_fitted: Optional[np.ndarray] = None
    noise_rms: Optional[np.ndarray] = None

    def child_models(self) -> np.ndarray:
        """Observed-frame model of each child (the sum of its components), shape (K, B, H, W), float32."""
        return self.conv.child_models(self.sed, self.owner, self.n_peaks)

    def child_model(self, k: int) -> np.ndarray:
        """Observed-frame model of child ``k`` (the sum of its components), shape (B, H, W), float32 (counts)."""
        return self.conv.render(self.sed, np.flatnonzero(self.owner == k))

    @property
    def model_observed(self) -> Optional[np.ndarray]:
        """The blend's observed-frame model ``Σ_c sed[c, b] · conv[c, b]``, shape (B, H, W), float32 (counts).

        Summed from ``conv`` (no convolution); None when there is no fit.
        """
        if self.conv is None or self.sed is None:
            return None
        return self.conv.render(self.sed)

    @property
    def fitted(self) -> bool:
        """True when the fit ran to the end (converged or not) without failing."""
        return self.sed is not None and not self.flags.get("flag_failed", False)


def model_memory_bytes(n_components: int, n_bands: int, frame_shape) -> int:
    """Upper bound of the deblender's model arrays for a blend (bytes), the ``max_model_memory_mb`` guard.

    Per component and frame pixel: the morphology and, in the fit, its best state and the optimiser's
    state (FISTA: the previous iterate, and the exact monotonicity projection's multipliers once a fit
    stalls; adaprox: three moment arrays), float32 each: 12 bytes with FISTA (16 once stalled), 20 with
    adaprox, counted as 24. The convolved components are stored over their own grown boxes
    (:class:`~hpcblend.deblend.component_models.ComponentModels`), not per frame pixel, and a large
    parent's children's models are rendered one at a time. Per band and frame pixel, the blend's own
    planes (data, weights, curvature, model, residual, gradient: ~32 bytes). Measured (peak RSS of the
    run) on simulated 189- and 202-peak parents on ~550 × 560 px frames with FISTA: 1.15 GB against a
    bound of 1.60 GB.

    Parameters
    ----------
    n_components : int
        Components to fit: one per kept peak, plus a core for each bright one
        (:func:`hpcblend.deblend.initialization.component_layout`); before the layout is known, the
        number of kept peaks is a lower bound.
    n_bands : int
        Bands fitted.
    frame_shape : (int, int)
        The blend's frame (H, W), pixels.

    Returns
    -------
    int
        Bytes.
    """
    h, w = (int(v) for v in frame_shape)
    return h * w * (24 * int(n_components) + 32 * int(n_bands))


def exceeds_memory_guard(n_components: int, n_bands: int, frame_shape, config: DeblendConfig) -> bool:
    """Whether :func:`model_memory_bytes` of ``n_components`` on the frame is above
    ``config.max_model_memory_mb`` (MB = 1e6 bytes)."""
    return model_memory_bytes(n_components, n_bands, frame_shape) > config.max_model_memory_mb * 1e6


def skip_flags(blend: BlendData, config: DeblendConfig, n_kept: int) -> dict:
    """Every parent flag False, except the size guards: ``flag_skipped_too_many_peaks`` (more than
    ``config.max_n_peaks`` kept peaks) and ``flag_skipped_too_large`` (footprint area above
    ``config.max_footprint_area``, area × kept peaks above ``config.max_area_times_peaks``, or model
    arrays above ``config.max_model_memory_mb`` already with one component per kept peak:
    :func:`model_memory_bytes`; :func:`~hpcblend.deblend.deblender.deblend_blend` checks again with the
    cores once it knows them)."""
    area = blend.footprint_area
    flags = {name: False for name in PARENT_FLAGS}
    if n_kept > config.max_n_peaks:
        flags["flag_skipped_too_many_peaks"] = True
    if (area > config.max_footprint_area or area * n_kept > config.max_area_times_peaks
            or exceeds_memory_guard(n_kept, len(blend.bands), blend.shape, config)):
        flags["flag_skipped_too_large"] = True
    return flags


def expand_result(result: DeblendResult, peaks: np.ndarray, kept: np.ndarray, band_ok: np.ndarray) -> None:
    """Scatter a fit of the kept peaks and usable bands into arrays over all K peaks and B bands (in place).

    Components: the K main components in peak order (placeholders with zero SED and morphology and
    an empty box at the clipped peak for dropped peaks), then the kept peaks' cores in fit order.
    Children: NaN measurements and ``alive`` False for dropped peaks; NaN fluxes in bands without data.
    Bands without data: zero ``sed`` and ``conv``, NaN ``noise_rms``.

    Parameters
    ----------
    result : DeblendResult
        The fit's result: components of the kept peaks (main components in
        kept order, then cores), arrays over the fitted bands only.
    peaks : ndarray, shape (K, 2), int64
        All peaks (y, x) of the blend.
    kept : ndarray, shape (n_kept,), int
        Indices of the fitted peaks.
    band_ok : ndarray, shape (B,), bool
        The fitted bands.
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
        result.sed, result.conv = sed, result.conv.with_bands(band_ok)
        if result.noise_rms is not None:
            noise = np.full(nb, np.nan)
            noise[band_ok] = result.noise_rms
            result.noise_rms = noise
    if n_kept != k_all:
        n_comp = result.sed.shape[0]
        # component i of the fit -> its index in the full layout
        dest = np.concatenate([kept, k_all + np.arange(n_comp - n_kept)]).astype(np.int64)
        total = k_all + n_comp - n_kept
        sed = np.zeros((total,) + result.sed.shape[1:], dtype=result.sed.dtype)
        morphs = np.zeros((total,) + result.morphs.shape[1:], dtype=result.morphs.dtype)
        boxes = np.zeros((total, 4), dtype=result.boxes.dtype)
        h, w = result.morphs.shape[1:]
        # dropped peaks: an empty box (y0 == y1, x0 == x1) at the peak clipped to the image
        boxes[:k_all, 0] = boxes[:k_all, 1] = np.clip(peaks[:, 0], 0, h)
        boxes[:k_all, 2] = boxes[:k_all, 3] = np.clip(peaks[:, 1], 0, w)
        owner = np.arange(total, dtype=np.int64)
        owner[k_all:] = kept[result.owner[n_kept:]]
        sed[dest], morphs[dest], boxes[dest] = result.sed, result.morphs, result.boxes
        conv = result.conv.scattered(dest, total)
        result.sed, result.morphs, result.conv, result.boxes, result.owner = sed, morphs, conv, boxes, owner
