"""The fit call: the kernels' settings from a :class:`~hpcblend.config.DeblendConfig`, and one compiled fit.

The whole fit loop of a blend runs in one Numba call
(:func:`hpcblend.kernels.fit.fit_blend`), which takes plain arrays and one
:class:`hpcblend.kernels.fit.FitSettings`. :func:`fit_settings` builds that
named tuple from the job's configuration (the one place that maps config
fields to the kernel's settings); :func:`fit_sources` runs the fit on an
:class:`~hpcblend.deblend.observation.Observation` and turns a non-finite
loss or model into a :class:`~hpcblend.errors.NumericalFailure`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend.observation import Observation
from hpcblend.errors import NumericalFailure
from hpcblend.kernels import fit

__all__ = ["fit_settings", "fit_sources"]


def fit_settings(config: DeblendConfig) -> fit.FitSettings:
    """The fit kernel's settings from a deblender configuration.

    Fields are converted to Python ``int``/``float``/``bool`` so that every
    configuration uses the same compiled (and cached) :func:`~hpcblend.kernels.fit.fit_blend`.

    Parameters
    ----------
    config : DeblendConfig
        ``optimizer`` ("adaprox" or "fista"), ``max_iter``, ``min_iter``, ``e_rel``,
        ``bg_thresh``, ``monotonic``, ``symmetric``, ``sed_step_factor``,
        ``morph_step``, ``box_margin``, ``step_scale`` and ``morph_row_gamma``.

    Returns
    -------
    hpcblend.kernels.fit.FitSettings
    """
    return fit.FitSettings(
        optimizer=fit.OPT_ADAPROX if config.optimizer == "adaprox" else fit.OPT_FISTA,
        max_iter=int(config.max_iter), min_iter=int(config.min_iter), e_rel=float(config.e_rel),
        bg_thresh=float(config.bg_thresh), monotonic=bool(config.monotonic), symmetric=bool(config.symmetric),
        sed_step_factor=float(config.sed_step_factor), morph_step=float(config.morph_step),
        margin=int(config.box_margin), step_scale=float(config.step_scale),
        row_gamma=float(config.morph_row_gamma))


def fit_sources(obs: Observation, peaks: np.ndarray, sed: np.ndarray, morphs: np.ndarray, boxes: np.ndarray,
                settings: fit.FitSettings, source: str, box_cap: Optional[np.ndarray] = None
                ) -> Tuple[int, bool, np.ndarray, np.ndarray]:
    """Fit the SEDs and morphologies of all components of a blend, in place.

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (C, 2), int64
        Peak pixel (y, x) of each component.
    sed : ndarray, shape (C, B), float64
        Initial SEDs; updated in place.
    morphs : ndarray, shape (C, H, W), float32
        Initial morphologies; updated in place.
    boxes : ndarray, shape (C, 4), int64
        The kernels' per-component boxes (y0, y1, x0, x1), half-open; updated in place.
    settings : hpcblend.kernels.fit.FitSettings
        From :func:`fit_settings`.
    source : str
        Where the blend came from (for messages).
    box_cap : ndarray, shape (C,), int, optional
        Largest distance (pixels, per axis) of each component's box from its peak, 0 for none
        (:func:`hpcblend.deblend.initialization.slope_peak_caps`); default none.

    Returns
    -------
    n_iter : int
        Iterations run.
    converged : bool
    alive : ndarray, shape (C,), bool
        False for components whose morphology collapsed to zero.
    loss_history : ndarray, shape (n_iter,), float64
        The loss at each iteration (:func:`hpcblend.kernels.fit.fit_blend`).

    Raises
    ------
    NumericalFailure
        The loss, or a fitted SED or morphology, became NaN or inf.
    """
    loss = np.zeros(settings.max_iter)
    hp, wp = obs.fft_shape
    cap = np.zeros(len(peaks), dtype=np.int64) if box_cap is None else np.ascontiguousarray(box_cap, dtype=np.int64)
    n_iter, converged, status, alive = fit.fit_blend(
        obs.images, obs.weights, obs.curvature, obs.transfer, hp, wp, peaks, cap, sed, morphs, boxes, obs.noise_rms,
        obs.kernel_radius, settings, loss)
    if status == fit.STATUS_NONFINITE:
        raise NumericalFailure(f"{source}: loss became non-finite at iteration {n_iter}")
    if not (np.all(np.isfinite(sed)) and np.all(np.isfinite(morphs))):
        raise NumericalFailure(f"{source}: model parameters became non-finite")
    return int(n_iter), bool(converged), np.asarray(alive, dtype=bool), loss[:n_iter].copy()
