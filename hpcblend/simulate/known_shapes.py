"""The flux floor of a simulated blend: every source's flux fitted with its true shape known.

A deblender must find both the shapes and the fluxes of the sources it separates. Given the true shapes
(each source's noiseless, PSF-convolved unit-flux image), the fluxes are a linear problem, and weighted least
squares is its best unbiased estimate (Gauss–Markov). Its error, from the noise alone, is the floor no
deblender can beat on the same pixels. :func:`known_shape_fluxes` computes it for the sets of
:mod:`hpcblend.simulate.blend_sets`, which store it as ``truth_flux_known_shape``; ``hpcblend truth``
scores it beside the run's estimators, so a set's errors read against what its noise allows.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["known_shape_fluxes"]


def known_shape_fluxes(images: np.ndarray, variance: np.ndarray, usable: np.ndarray,
                       stamps: Sequence[Tuple[int, int, np.ndarray]]) -> np.ndarray:
    """Weighted least-squares fluxes of every source, per band, with their true shapes known.

    In each band b, ``argmin_f Σ_p (Y_bp − Σ_k f_kb U_kbp)² / V_bp`` over the usable pixels p, where ``U_kb``
    is source k's unit-flux image. A source with no usable pixel in a band gets NaN there.

    Parameters
    ----------
    images, variance : ndarray, shape (B, H, W)
        The noisy image (counts) and its variance (counts²), band first.
    usable : ndarray, shape (B, H, W), bool
        The pixels a deblender is given: inside the parent footprint and on no bad mask plane.
    stamps : sequence of (y0, x0, ndarray of shape (B, h, w))
        Each source's unit-flux image per band (its total over an unclipped stamp is 1) placed with its corner
        at pixel (y0, x0) of the blend; the stamp lies inside the blend's box.

    Returns
    -------
    ndarray, shape (N, B), float64
        Flux (counts) of each of the N sources, as the scale of its unit-flux image: compare it with the
        source's true total flux.

    Raises
    ------
    numpy.linalg.LinAlgError
        Only if the least-squares SVD does not converge (non-finite pixels); degenerate shapes give the
        minimum-norm solution.
    """
    nb, h, w = images.shape
    out = np.full((len(stamps), nb), np.nan)
    for b in range(nb):
        good = usable[b]
        if not good.any() or not stamps:
            continue
        row = np.full((h, w), -1, dtype=np.int64)
        row[good] = np.arange(int(good.sum()))
        design = np.zeros((int(good.sum()), len(stamps)))
        for k, (y0, x0, unit) in enumerate(stamps):
            rows = row[y0:y0 + unit.shape[1], x0:x0 + unit.shape[2]]
            inside = rows >= 0
            design[rows[inside], k] = unit[b][inside]
        weight = 1.0 / np.sqrt(variance[b][good].astype(np.float64))
        seen = np.flatnonzero(np.any(design != 0.0, axis=0))
        if seen.size:
            solution = np.linalg.lstsq(design[:, seen] * weight[:, None], images[b][good] * weight, rcond=None)[0]
            out[seen, b] = solution
    return out
