"""Measurements of deblended children, confined to each child's box (Numba).

The plain NumPy reference of the same quantities, on full frames, is
:func:`hpcblend.measure.children.measure_children_reference`; the tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .convolution import block_row

__all__ = ["measure_children_kernel"]


@njit(nogil=True, cache=True)
def measure_children_kernel(images, variance, weights, footprint, sed, morphs, conv_flat, offsets, grown, boxes,
                            owner, n_children):
    """Fluxes, errors, centroids, blendedness of every child, and the blend's χ².

    A child is the sum of its components (one, or a core and a halo for
    bright sources: ``owner[c]`` is component c's child).

    Parameters
    ----------
    images : ndarray, shape (B, H, W), float32
        Data ``Y`` (counts), zero at masked pixels.
    variance : ndarray, shape (B, H, W), float32 or float64
        Per-pixel variance (counts²).
    weights : ndarray, shape (B, H, W), float32
        Inverse variance, zero at masked pixels and outside the footprint.
    footprint : ndarray, shape (H, W), bool
        True inside the parent footprint.
    sed : ndarray, shape (K, B), float64
        Fitted SEDs.
    morphs : ndarray, shape (K, H, W), float32
        Fitted morphologies (model frame), zero outside their boxes.
    conv_flat, offsets, grown
        ``D_b * S_k``, the morphologies convolved to each band's PSF, as
        :class:`hpcblend.deblend.component_models.ComponentModels` holds them:
        component k's ``(B, gh, gw)`` float32 block
        ``conv_flat[offsets[k]:offsets[k + 1]]`` over ``grown[k]`` (y0, y1, x0,
        x1), int64 (K, 4): its morphology box grown by the difference-kernel
        radius, beyond which ``D_b * S_k`` is zero.
    boxes : ndarray, shape (K, 4), int64
        Morphology boxes (y0, y1, x0, x1), half-open.
    owner : ndarray, shape (K,), int64
        Child of each component (K components here, N children below).
    n_children : int

    Returns
    -------
    flux_model : ndarray, shape (N, B), float64
        ``a_kb Σ_px (D_b * S_k)`` over the frame (counts): the model's flux in
        the observed band inside the blend's frame. Equal to ``a_kb Σ S_k``
        (the difference kernels conserve flux) except for a source within
        the kernel radius of the frame's edge, whose model light spread
        beyond the edge no pixel of the data constrains.
    flux : ndarray, shape (N, B), float64
        Flux-conserving flux ``Σ Y_b m_kb / M_b`` over footprint pixels
        where ``M_b > 0``; the model stands in for the data at masked pixels
        (Melchior et al. 2018, Sect. 4.2).
    flux_err : ndarray, shape (N, B), float64
        ``sqrt(Σ var_b (m_kb / M_b)²)`` over unmasked such pixels.
    cy, cx : ndarray, shape (N,), float64
        First moments of each child's model light at the model PSF (summed
        over bands and components; pixels, blend frame); NaN if empty.
    blendedness : ndarray, shape (N,), float64
        ``1 − Σ m_k² / Σ m_k M`` on band-summed models (Bosch et al. 2018,
        PASJ 70, S5, Eq. 21); NaN when the child has no model flux.
    chi2 : float
        ``Σ W (M_obs − Y)²`` over weighted pixels.
    n_weighted : int
        Number of (band, pixel) with ``W > 0``.
    """
    nk, nb = sed.shape
    h = images.shape[1]
    w = images.shape[2]
    total = _observed_model(sed, conv_flat, offsets, grown, h, w)
    chi2, n_weighted = _chi2(total, images, weights)
    cy, cx = _centroids(sed, morphs, boxes, owner, n_children)
    flux_model, flux, flux_err, blendedness = _redistribute(images, variance, weights, footprint, sed, conv_flat,
                                                            offsets, grown, owner, n_children, total)
    return flux_model, flux, flux_err, cy, cx, blendedness, chi2, n_weighted


@njit(nogil=True, cache=True)
def _observed_model(sed, conv_flat, offsets, grown, h, w):
    """The blend's observed-frame model ``M_b = Σ_k a_kb (D_b * S_k)``, (B, H, W) float64."""
    nk, nb = sed.shape
    total = np.zeros((nb, h, w))
    for k in range(nk):
        _add_component(total, sed, conv_flat, offsets, grown, k)
    return total


@njit(nogil=True, cache=True)
def _add_component(out, sed, conv_flat, offsets, grown, k):
    """Add component ``k``'s observed-frame model ``a_kb (D_b * S_k)`` to ``out`` (B, H, W) float64, over its grown box."""
    for b in range(sed.shape[1]):
        a = sed[k, b]
        if a == 0.0:
            continue
        for y in range(grown[k, 0], grown[k, 1]):
            row = block_row(offsets, grown, k, b, y)
            for x in range(grown[k, 2], grown[k, 3]):
                out[b, y, x] += a * conv_flat[row + x]


@njit(nogil=True, cache=True)
def _chi2(total, images, weights):
    """``Σ W (M − Y)²`` over the weighted (band, pixel), and their number."""
    nb, h, w = images.shape
    chi2 = 0.0
    n_weighted = 0
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                wt = weights[b, y, x]
                if wt > 0.0:
                    d = total[b, y, x] - images[b, y, x]
                    chi2 += wt * d * d
                    n_weighted += 1
    return chi2, n_weighted


@njit(nogil=True, cache=True)
def _centroids(sed, morphs, boxes, owner, nc):
    """Per child: the centroid (cy, cx) (N,) of its band-summed model light (model frame)."""
    nk, nb = sed.shape
    cy = np.full(nc, np.nan)
    cx = np.full(nc, np.nan)
    mass_w = np.zeros(nc)
    sy = np.zeros(nc)
    sx = np.zeros(nc)
    for k in range(nk):
        o = owner[k]
        s = 0.0  # the component's band-summed SED: its model light, summed over bands, is s * morph
        for b in range(nb):
            s += sed[k, b]
        for y in range(boxes[k, 0], boxes[k, 1]):
            for x in range(boxes[k, 2], boxes[k, 3]):
                v = float(morphs[k, y, x]) * s
                sy[o] += v * y
                sx[o] += v * x
                mass_w[o] += v
    for o in range(nc):
        if mass_w[o] > 0.0:
            cy[o] = sy[o] / mass_w[o]
            cx[o] = sx[o] / mass_w[o]
    return cy, cx


@njit(nogil=True, cache=True)
def _redistribute(images, variance, weights, footprint, sed, conv_flat, offsets, grown, owner, nc, total):
    """Per child: model flux in the frame, flux-conserving flux and its error (N, B), and blendedness (N,).

    See :func:`measure_children_kernel`.
    """
    nk, nb = sed.shape
    h, w = footprint.shape
    parent = np.zeros((h, w))
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                parent[y, x] += total[b, y, x]
    flux_model = np.zeros((nc, nb))
    flux = np.zeros((nc, nb))
    flux_err = np.zeros((nc, nb))
    blendedness = np.full(nc, np.nan)
    child_model = np.zeros((nb, h, w))
    for o in range(nc):
        # union of the grown boxes of this child's components
        uy0, uy1, ux0, ux1 = h, 0, w, 0
        for k in range(nk):
            if owner[k] == o and grown[k, 1] > grown[k, 0] and grown[k, 3] > grown[k, 2]:
                uy0 = min(uy0, grown[k, 0])
                uy1 = max(uy1, grown[k, 1])
                ux0 = min(ux0, grown[k, 2])
                ux1 = max(ux1, grown[k, 3])
        if uy1 <= uy0 or ux1 <= ux0:
            continue
        for b in range(nb):
            for y in range(uy0, uy1):
                for x in range(ux0, ux1):
                    child_model[b, y, x] = 0.0
        for k in range(nk):
            if owner[k] == o:
                _add_component(child_model, sed, conv_flat, offsets, grown, k)
        num = 0.0
        den = 0.0
        for y in range(uy0, uy1):
            for x in range(ux0, ux1):
                child = 0.0
                for b in range(nb):
                    m = child_model[b, y, x]
                    child += m
                    flux_model[o, b] += m
                    t = total[b, y, x]
                    if footprint[y, x] and t > 0.0:
                        ratio = m / t
                        if weights[b, y, x] > 0.0:
                            flux[o, b] += ratio * images[b, y, x]
                            flux_err[o, b] += ratio * ratio * variance[b, y, x]
                        else:
                            flux[o, b] += ratio * t
                num += child * child
                den += child * parent[y, x]
        if den > 0.0:
            blendedness[o] = 1.0 - num / den
        for b in range(nb):
            flux_err[o, b] = math.sqrt(flux_err[o, b])
    return flux_model, flux, flux_err, blendedness
