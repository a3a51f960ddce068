"""Child measurements from a fitted blend model (no file access).

Given the data and each child's model convolved to every band, compute
model fluxes, flux-conserving ("re-distributed") fluxes with errors,
centroids and blendedness, as the LSST pipeline's deblender outputs.
"""

from __future__ import annotations

import numpy as np

from hpcblend.kernels.measurement import measure_children_kernel

__all__ = ["ChildMeasurements", "measure_children", "measure_children_reference", "chi2_per_pixel"]


class ChildMeasurements(dict):
    """Mapping of measurement name → array over children (K,) or (K, B)."""


def measure_children(images: np.ndarray, variance: np.ndarray, weights: np.ndarray,
                     footprint: np.ndarray, sed: np.ndarray, morphs: np.ndarray,
                     conv_morphs, boxes: np.ndarray, owner=None, n_children=None):
    """Measure every child of a fitted blend, and the blend's χ² per pixel (compiled, per-child boxes).

    Same quantities as :func:`measure_children_reference`, computed by
    :func:`hpcblend.kernels.measurement.measure_children_kernel` over each
    component's box grown by the difference-kernel radius instead of full frames.

    Parameters
    ----------
    images, variance, weights, footprint, sed, morphs
        As :func:`measure_children_reference`.
    conv_morphs : hpcblend.deblend.component_models.ComponentModels
        ``D_b * S_k`` over each component's grown box
        (:func:`hpcblend.deblend.observation.convolve_sources`).
    boxes : ndarray, shape (K, 4), int64
        Morphology boxes (y0, y1, x0, x1), half-open.
    owner : ndarray, shape (K,), int, optional
        Child of each component (default: one component per child).
    n_children : int, optional

    Returns
    -------
    children : ChildMeasurements
    chi2_per_pixel : float
        ``Σ W (D*M − Y)² / N`` over the N weighted (band, pixel); NaN if N = 0.
    """
    k = sed.shape[0]
    owner = np.arange(k, dtype=np.int64) if owner is None else np.ascontiguousarray(owner, dtype=np.int64)
    n_children = int(owner.max() + 1 if k else 0) if n_children is None else int(n_children)
    fm, fl, fe, cy, cx, bl, chi2, n = measure_children_kernel(
        images, variance, weights, footprint, np.ascontiguousarray(sed, dtype=np.float64), morphs, conv_morphs.flat,
        conv_morphs.offsets, conv_morphs.grown, np.ascontiguousarray(boxes, dtype=np.int64), owner, n_children)
    children = ChildMeasurements(flux_model=fm, flux=fl, flux_err=fe, x=cx, y=cy, blendedness=bl)
    return children, (chi2 / n if n > 0 else float("nan"))


def measure_children_reference(images: np.ndarray, variance: np.ndarray, weights: np.ndarray,
                               footprint: np.ndarray, sed: np.ndarray, morphs: np.ndarray,
                               conv_morphs: np.ndarray) -> ChildMeasurements:
    """Measure every child of a fitted blend (plain NumPy on full frames; the reference).

    Parameters
    ----------
    images, variance : ndarray, shape (B, H, W)
        Data (counts) and variance (counts²).
    weights : ndarray, shape (B, H, W)
        Inverse variance, zero at masked pixels and outside the footprint.
    footprint : ndarray, shape (H, W), bool
        True inside the parent footprint.
    sed : ndarray, shape (K, B)
        Fitted SEDs (model-frame peak counts).
    morphs : ndarray, shape (K, H, W)
        Fitted morphologies (peak 1, model frame).
    conv_morphs : ndarray, shape (K, B, H, W)
        Morphologies convolved to each band's PSF (``D_b * S_k``).

    Returns
    -------
    ChildMeasurements
        ``flux_model`` (K, B): ``a_kb Σ_px (D_b * S_k)``, the model's flux in
        band b inside the frame (counts); the difference kernels conserve
        flux, so this is ``a_kb Σ S_k`` except for a source within the kernel
        radius of the frame's edge, whose model light beyond the edge no data
        constrains. ``flux`` (K, B): flux-conserving flux
        ``Σ_px Y_b · m_kb / M_b`` over footprint pixels, with
        ``m_kb = a_kb (D_b * S_k)`` and ``M_b = Σ_k m_kb``; at masked
        footprint pixels the model stands in for the data (Melchior et al.
        2018, Sect. 4.2, "flux re-distribution"). ``flux_err`` (K, B):
        ``sqrt(Σ_px var_b (m_kb / M_b)²)`` over unmasked footprint pixels.
        ``x``, ``y`` (K,): first moments of each child's morphology
        (pixels, blend frame). ``blendedness`` (K,): ``1 − Σ m_k² / Σ m_k M``
        on band-summed images (Bosch et al. 2018, PASJ 70, S5, Eq. 21).
    """
    nk, nb = sed.shape
    m = conv_morphs * sed[:, :, None, None]  # (K, B, H, W)
    total = m.sum(axis=0)  # (B, H, W)
    inside = footprint[None, :, :] & (total > 0)
    good = weights > 0
    data = np.where(good, images, total)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(inside[None], m / np.where(total > 0, total, 1.0)[None], 0.0)
    flux = (ratio * data[None]).sum(axis=(2, 3))
    var_ok = np.where(good & inside, variance, 0.0)
    flux_err = np.sqrt((ratio ** 2 * var_ok[None]).sum(axis=(2, 3)))
    flux_model = m.sum(axis=(2, 3), dtype=np.float64)
    h, w = morphs.shape[1:]
    yy = np.arange(h, dtype=np.float64)
    xx = np.arange(w, dtype=np.float64)
    mass = morphs.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = (morphs.sum(axis=2, dtype=np.float64) @ yy) / mass
        cx = (morphs.sum(axis=1, dtype=np.float64) @ xx) / mass
    child = m.sum(axis=1, dtype=np.float64)  # (K, H, W)
    parent = child.sum(axis=0)
    num = (child ** 2).sum(axis=(1, 2))
    den = (child * parent[None]).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        blendedness = np.where(den > 0, 1.0 - num / den, np.nan)
    return ChildMeasurements(flux_model=flux_model, flux=flux, flux_err=flux_err, x=cx, y=cy,
                             blendedness=blendedness)


def chi2_per_pixel(images: np.ndarray, weights: np.ndarray, model_observed: np.ndarray) -> float:
    """χ² per weighted pixel: ``Σ W (D*M − Y)² / N`` with N the number of (band, pixel) with W > 0.

    Parameters
    ----------
    images, weights, model_observed : ndarray, shape (B, H, W)

    Returns
    -------
    float
        NaN when no pixel has weight.
    """
    good = weights > 0
    n = int(good.sum())
    if n == 0:
        return float("nan")
    r = (model_observed.astype(np.float64) - images) ** 2 * weights
    return float(r[good].sum() / n)
