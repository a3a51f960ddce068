"""FISTA's morphology preconditioner majorises the loss's Hessian (so a step of 1/row-sum descends).

The Hessian of ``½ Σ_b ||W_b^½ (Y_b − D_b * Σ_k a_kb S_k)||²`` in the morphologies, for fixed SEDs, has
blocks ``Σ_b a_kb a_lb C_bᵀ W_b C_b`` (``C_b``: convolution by ``D_b``). Both diagonals of the step,
``Σ_b a_kb A_kb c_b(p)`` with the Gershgorin row ``A_kb`` and with the weighted row ``A'_kb`` (Schur's test,
``deblend.morph_row_gamma``), both from :func:`~hpcblend.kernels.fit_steps.neighbour_sums`, and ``c_b`` from
:func:`~hpcblend.kernels.fit_steps.curvature_bound`, must be at least that Hessian in the PSD order, here
checked on explicit matrices of a small frame.
"""

import numpy as np
import pytest
from scipy.signal import convolve2d

from hpcblend.kernels import fit_steps, psf


def _convolution_matrix(kernel, h, w):
    """(h·w, h·w) matrix of the zero-padded 'same' convolution by an odd-sided ``kernel``: column q is the
    convolution of the unit impulse at pixel q."""
    impulses = np.eye(h * w).reshape(h * w, h, w)
    return np.stack([convolve2d(e, kernel, mode="same").ravel() for e in impulses], axis=1)


def _case(tight):
    """Kernels, weights, boxes and SEDs of a frame with a bright source, a faint one beside it and a faint red
    one; ``tight``: nearly-delta positive kernels, uniform weights and boxes that all cover the frame, where
    the bound is nearly the Hessian's largest eigenvalue (a diagonal 10 % too small fails), else a varied case
    (negative kernel lobe, a low-weight core, partly overlapping boxes)."""
    rng = np.random.default_rng(3)
    nb, h, w, r = 2, 14, 15, 2
    kernels = np.abs(rng.normal(0.0, 0.01, (nb, 2 * r + 1, 2 * r + 1)))  # nearly a delta: λ_max(CᵀC) ≈ c
    kernels[:, r, r] += 1.0
    weights = np.ones((nb, h, w), np.float32)
    boxes = np.array([[0, h, 0, w]] * 3, dtype=np.int64)
    if not tight:
        kernels = np.abs(rng.normal(0.0, 0.3, (nb, 2 * r + 1, 2 * r + 1)))
        kernels[:, r, r] += 1.0
        kernels[0, r, r + 1] = -0.05  # a negative lobe, as deconvolved kernels have
        weights = (0.5 + rng.random((nb, h, w))).astype(np.float32)
        weights[:, 6:8, 6:9] = 0.01  # a bright source's core: low inverse variance
        boxes = np.array([[2, 11, 2, 12], [5, 10, 9, 14], [0, 5, 0, 6]], dtype=np.int64)
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    sed = np.array([[3000.0, 5000.0], [2.0, 3.0], [0.5, 40.0]])
    return kernels, weights, boxes, sed


@pytest.mark.parametrize("gamma", [0.5, 1.0])
@pytest.mark.parametrize("tight", [True, False])
def test_morphology_preconditioners_majorise_the_hessian_with_a_source_a_thousand_times_brighter(tight, gamma):
    kernels, weights, boxes, sed = _case(tight)
    nb, h, w = weights.shape
    r = kernels.shape[1] // 2
    alive = np.ones(3, dtype=np.bool_)
    hp, wp = psf.fft_shape_for((h, w), r)
    abs_k = np.abs(kernels)
    curvature = fit_steps.curvature_bound(weights, psf.kernel_transfer_function(abs_k, (hp, wp)),
                                          abs_k.sum(axis=(1, 2)), hp, wp).astype(np.float64)
    neighbour_sed = np.zeros((sed.shape[0], 2 * nb))  # the Gershgorin row's sums, then the weighted row's
    fit_steps.neighbour_sums(sed, boxes, alive, r, neighbour_sed, gamma)
    # explicit Hessian over the pixels of the boxes, and both diagonals of the step
    index = [(k, y, x) for k, (y0, y1, x0, x1) in enumerate(boxes) for y in range(y0, y1) for x in range(x0, x1)]
    flat = np.array([y * w + x for _, y, x in index])
    owner = np.array([k for k, _, _ in index])
    hessian = np.zeros((len(index), len(index)))
    diagonals = np.zeros((2, len(index)))
    for b in range(nb):
        conv = _convolution_matrix(kernels[b], h, w)
        block = (conv.T * weights[b].ravel().astype(np.float64)) @ conv
        hessian += np.outer(sed[owner, b], sed[owner, b]) * block[np.ix_(flat, flat)]
        for row in range(2):
            diagonals[row] += sed[owner, b] * neighbour_sed[owner, row * nb + b] * curvature[b].ravel()[flat]
    for diagonal in diagonals:
        scale = np.sqrt(diagonal)
        normalised = hessian / np.outer(scale, scale)  # P^-½ H P^-½ ⪯ I  ⇔  P ⪰ H
        assert np.linalg.eigvalsh(normalised).max() <= 1.0 + 1e-9
    # the weighted row holds the faint source beside the bright one by far less than the bright one's SED
    assert np.all(neighbour_sed[1, nb:] < 0.1 * neighbour_sed[1, :nb]), neighbour_sed[1]


def test_without_gamma_the_weighted_row_is_not_computed():
    kernels, weights, boxes, sed = _case(False)
    neighbour_sed = np.full((sed.shape[0], 2 * sed.shape[1]), np.nan)
    fit_steps.neighbour_sums(sed, boxes, np.ones(3, dtype=np.bool_), kernels.shape[1] // 2, neighbour_sed)
    assert np.all(neighbour_sed[:, sed.shape[1]:] == 0.0) and np.all(neighbour_sed[:, :sed.shape[1]] > 0)
