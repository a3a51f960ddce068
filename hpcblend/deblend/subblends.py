"""Sub-blends: a large parent fitted as independent groups of sources that cannot see each other.

Why
---
The fit's cost per iteration is set by the blend's frame: every iteration
convolves the whole model to every band and back (FFT on the padded frame),
and the fit runs until its *slowest* source converges. A large parent (a
bright star's halo with galaxies scattered over 300 px, a chain of groups
joined by faint bridges) pays the whole frame for every source on every
iteration, although sources 100 px apart never share a pixel of model.

What
----
Source ``k``'s observed-frame model ``D_b * (a_k S_k)`` is zero beyond its
box grown by the PSF-difference kernel radius ``r``; two sources share a
term of the loss (and of each other's gradient) only if their grown boxes
overlap. :func:`sub_blend_labels` groups the components into the connected
components of that overlap graph, each box first grown by ``r`` plus a
*growth reserve* (boxes grow during the fit by up to ``box_margin`` pixels
per iteration where the support reaches their edge); the components of one
child (core and halo) always stay together. :func:`fit_sub_blends` fits each
group on its own crop of the observation (:func:`crop_observation`: the
union of its boxes grown by ``r`` and the reserve, with a new FFT grid), each
stopping at its own convergence, and writes the result back into the
blend's frame. The loss of the blend is the sum of the groups' losses plus a
constant (pixels no model reaches), so the groups' optima together are the
blend's optimum; only the stopping rule is per group.

Boxes can still outgrow their reserve. After the groups are fitted,
:func:`fit_sub_blends` checks the final boxes: if a box touches its crop's
edge inside the frame, or two groups' final boxes (grown by ``r``) now
overlap, the groups involved are merged and fitted again together from where
they stopped (at most :data:`MAX_REGROUP_PASSES` times; then everything is
fitted once more as one blend, warm-started). A blend whose components form
one group is fitted exactly as without sub-blends.

In practice, groups this far apart are rare inside one detection footprint:
none of the 164 HSC parents in ``../shared/data/hsc_blends``, none of 20
simulated 200–340 px parents with 30–94 peaks and none of ``jobs/tract_sim.yaml``'s
parents splits (the footprint's light joins its sources, and the reach is the
kernel radius plus :data:`GROWTH_RESERVE`, ~36 px per side). Most large
parents are therefore fitted in one piece; ``profiling/README.md`` measures
where their time goes and a late split that was tried.

References
----------
Melchior, P. et al. 2018, Astronomy & Computing 24, 129 (scarlet: the model
and its loss). The LSST pipeline deblends large parents in pieces for the
same reason (Bosch et al. 2018, PASJ 70, S5, section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from hpcblend.deblend.fitting import fit_sources
from hpcblend.deblend.observation import Observation
from hpcblend.geometry import Box
from hpcblend.kernels import fit, psf

__all__ = ["GROWTH_RESERVE", "MAX_REGROUP_PASSES", "SubBlendFit", "sub_blend_labels", "crop_observation",
           "fit_sub_blends"]

#: Pixels a box may grow beyond its initial extent before its group must be re-checked: the grouping
#: and every crop reserve this much on each side (8 iterations' worth of the default ``box_margin`` 2;
#: the HSC blends' boxes change by a median of under 1 px between initialisation and convergence).
GROWTH_RESERVE = 16
#: Re-groupings after a box outgrew its reserve, before the remaining groups are fitted as one blend.
MAX_REGROUP_PASSES = 2


@dataclass
class SubBlendFit:
    """What :func:`fit_sub_blends` did.

    Attributes
    ----------
    n_iter : int
        Iterations of the group that ran longest (a blend fitted in one piece: its iterations).
    converged : bool
        Every group converged.
    alive : ndarray, shape (C,), bool
        False for components whose morphology collapsed to zero.
    loss_history : ndarray, shape (n_iter,), float64
        Sum over groups of each group's loss per iteration (a group that stopped keeps its last
        value): the blend's loss up to a constant.
    n_sub_blends : int
        Groups fitted independently in the end (1: the blend was fitted in one piece).
    """

    n_iter: int
    converged: bool
    alive: np.ndarray
    loss_history: np.ndarray
    n_sub_blends: int


def _grown(boxes: np.ndarray, reach: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.int64).copy()
    b[:, 0] -= reach
    b[:, 2] -= reach
    b[:, 1] += reach
    b[:, 3] += reach
    return b


def _reaches_all(adjacency: np.ndarray) -> bool:
    """True when every node of the (C, C) symmetric bool ``adjacency`` is reachable from node 0 (one group)."""
    if len(adjacency) == 0:
        return False
    reached = adjacency[0].copy()
    reached[0] = True
    while True:
        grown = adjacency[reached].any(axis=0) | reached
        if grown.all() or (grown == reached).all():
            return bool(grown.all())
        reached = grown


def sub_blend_labels(boxes: np.ndarray, owner: np.ndarray, reach: int) -> Tuple[int, np.ndarray]:
    """Group components whose boxes, each grown by ``reach``, overlap (transitively).

    Parameters
    ----------
    boxes : ndarray, shape (C, 4), int
        The kernels' per-component boxes (y0, y1, x0, x1), half-open, pixels.
    owner : ndarray, shape (C,), int
        Child of each component; the components of one child are always in one group.
    reach : int
        Pixels each box is grown by on every side before testing overlap (the kernel radius plus the
        growth reserve: two grown boxes that do not overlap hold models that share no pixel).

    Returns
    -------
    n_groups : int
    labels : ndarray, shape (C,), int
        Group of each component, numbered in order of first appearance (deterministic).
    """
    b = _grown(boxes, reach)
    overlap = ((b[:, None, 0] < b[None, :, 1]) & (b[None, :, 0] < b[:, None, 1])
               & (b[:, None, 2] < b[None, :, 3]) & (b[None, :, 2] < b[:, None, 3]))
    overlap |= np.asarray(owner)[:, None] == np.asarray(owner)[None, :]
    if _reaches_all(overlap):  # the usual case inside one footprint; no sparse graph to build
        return 1, np.zeros(len(b), dtype=np.int64)
    n, labels = connected_components(csr_matrix(overlap), directed=False)
    _, first = np.unique(labels, return_index=True)
    renumber = np.empty(n, dtype=np.int64)
    renumber[np.argsort(np.argsort(first))] = np.arange(n)
    return int(n), renumber[labels]


def _crop_of(boxes: np.ndarray, reach: int, shape: Tuple[int, int]) -> Box:
    """The union of ``boxes`` grown by ``reach``, clipped to the frame ``shape``."""
    b = _grown(boxes, reach)
    y0, x0 = max(int(b[:, 0].min()), 0), max(int(b[:, 2].min()), 0)
    y1, x1 = min(int(b[:, 1].max()), shape[0]), min(int(b[:, 3].max()), shape[1])
    return Box((y0, x0), (y1 - y0, x1 - x0))


def _domain(boxes: np.ndarray, reach: int, crop: Box) -> np.ndarray:
    """(h, w) bool mask of ``crop``: the pixels within ``reach`` of one of ``boxes`` (a group's domain)."""
    mask = np.zeros(crop.shape, dtype=bool)
    y0, x0 = crop.origin
    for b in _grown(boxes, reach):
        mask[max(b[0] - y0, 0):max(b[1] - y0, 0), max(b[2] - x0, 0):max(b[3] - x0, 0)] = True
    return mask


def crop_observation(obs: Observation, crop: Box, domain: np.ndarray) -> Observation:
    """The observation restricted to ``crop``, weighted only on ``domain``, with an FFT grid of its own.

    Parameters
    ----------
    obs : Observation
        The blend's observation.
    crop : hpcblend.geometry.Box
        In the blend's frame (pixels).
    domain : ndarray, shape crop.shape, bool
        The pixels the group's models may reach; weights are zero elsewhere, so that light of other
        groups inside the crop's rectangle does not pull on this group's sources.

    Returns
    -------
    Observation
        Images, weights and the curvature bound are copies of the crop (the bound keeps its blend-frame
        values, so the steps are those of a fit of the whole blend); noise levels and difference kernels
        are shared; the transfer functions are made for the crop's FFT grid.
    """
    ys, xs = crop.slices
    fft_shape = psf.fft_shape_for(crop.shape, obs.kernel_radius)
    return replace(obs, images=np.ascontiguousarray(obs.images[:, ys, xs]),
                   weights=np.ascontiguousarray(obs.weights[:, ys, xs] * domain[None]),
                   curvature=np.ascontiguousarray(obs.curvature[:, ys, xs]),
                   transfer=obs.transfer_on(fft_shape), fft_shape=fft_shape,
                   box_transfer={}, no_data=None if obs.no_data is None else obs.no_data[ys, xs])


def _left_domain(boxes: np.ndarray, reach: int, crop: Box, domain: np.ndarray, shape: Tuple[int, int]) -> bool:
    """Whether a box grown by ``reach`` (where its model can land) leaves the group's ``domain``."""
    y0, x0 = crop.origin
    for b in _grown(boxes, reach):
        by0, by1 = max(int(b[0]), 0), min(int(b[1]), shape[0])
        bx0, bx1 = max(int(b[2]), 0), min(int(b[3]), shape[1])
        if by0 < y0 or bx0 < x0 or by1 > y0 + crop.shape[0] or bx1 > x0 + crop.shape[1]:
            return True
        if not domain[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0].all():
            return True
    return False


def _fit_group(obs: Observation, idx: np.ndarray, peaks: np.ndarray, sed: np.ndarray, morphs: np.ndarray,
               boxes: np.ndarray, settings: fit.FitSettings, source: str, whole_frame: bool, box_cap: np.ndarray):
    """Fit the components ``idx`` on their crop; write SEDs, morphologies and boxes back.

    Returns ``(n_iter, converged, alive, loss_history, left)``; ``left``: a model now reaches beyond
    the group's domain (its group must be re-checked).
    """
    shape = obs.images.shape[1:]
    r = obs.kernel_radius
    crop = Box((0, 0), shape) if whole_frame else _crop_of(boxes[idx], r + GROWTH_RESERVE, shape)
    domain = np.ones(shape, dtype=bool) if whole_frame else _domain(boxes[idx], r + GROWTH_RESERVE, crop)
    ys, xs = crop.slices
    y0, x0 = crop.origin
    sub_obs = crop_observation(obs, crop, domain)
    sub_sed = np.ascontiguousarray(sed[idx])
    sub_morphs = np.ascontiguousarray(morphs[idx][:, ys, xs])
    sub_boxes = np.ascontiguousarray(boxes[idx] - np.array([y0, y0, x0, x0], dtype=np.int64))
    sub_peaks = np.ascontiguousarray(peaks[idx] - np.array([y0, x0], dtype=np.int64))
    n_iter, converged, alive, loss = fit_sources(sub_obs, sub_peaks, sub_sed, sub_morphs, sub_boxes, settings,
                                                 source, box_cap=box_cap[idx])
    sed[idx] = sub_sed
    morphs[idx] = 0.0
    morphs[idx, ys, xs] = sub_morphs
    boxes[idx] = sub_boxes + np.array([y0, y0, x0, x0], dtype=np.int64)
    left = not whole_frame and _left_domain(boxes[idx], r, crop, domain, shape)
    return n_iter, converged, alive, loss, left


def _sum_losses(histories: List[np.ndarray]) -> np.ndarray:
    n = max(len(h) for h in histories)
    total = np.zeros(n)
    for h in histories:
        if len(h):
            total[:len(h)] += h
            total[len(h):] += h[-1]
    return total


def _merge_groups(groups: List[np.ndarray], boxes: np.ndarray, owner: np.ndarray,
                  reach: int) -> Tuple[List[np.ndarray], List[List[int]]]:
    """Merge the groups whose components' boxes, grown by ``reach``, now overlap.

    Returns the new groups (sorted by their first component) and, for each, the old groups it holds.
    """
    n_final, final = sub_blend_labels(boxes, owner, reach)
    old_of = np.empty(len(owner), dtype=np.int64)
    for g, idx in enumerate(groups):
        old_of[idx] = g
    # old groups joined when any of their components share a final label
    join = np.zeros((len(groups), len(groups)), dtype=bool)
    for lab in range(n_final):
        members = np.unique(old_of[final == lab])
        join[np.ix_(members, members)] = True
    n_new, new_of_old = connected_components(csr_matrix(join), directed=False)
    parts = [[g for g in range(len(groups)) if new_of_old[g] == j] for j in range(n_new)]
    parts.sort(key=lambda ps: min(int(groups[g].min()) for g in ps))
    return [np.sort(np.concatenate([groups[g] for g in ps])) for ps in parts], parts


def fit_sub_blends(obs: Observation, peaks: np.ndarray, sed: np.ndarray, morphs: np.ndarray, boxes: np.ndarray,
                   owner: np.ndarray, settings: fit.FitSettings, source: str, split: bool = True,
                   box_cap: Optional[np.ndarray] = None) -> SubBlendFit:
    """Fit a blend's components in independent sub-blends (see the module docstring); arrays updated in place.

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (C, 2), int64
        Peak pixel (y, x) of each component, blend frame.
    sed : ndarray, shape (C, B), float64
        Initial SEDs; updated in place.
    morphs : ndarray, shape (C, H, W), float32
        Initial morphologies; updated in place.
    boxes : ndarray, shape (C, 4), int64
        The kernels' per-component boxes (y0, y1, x0, x1); updated in place.
    owner : ndarray, shape (C,), int
        Child of each component.
    settings : hpcblend.kernels.fit.FitSettings
    source : str
        Where the blend came from (messages).
    split : bool
        False: fit the blend in one piece whatever its groups (``deblend.sub_blends: false``).
    box_cap : ndarray, shape (C,), int, optional
        Per-component box limit (pixels from the peak, 0: none; :func:`fit_sources`).

    Returns
    -------
    SubBlendFit

    Raises
    ------
    hpcblend.errors.NumericalFailure
        The loss or the parameters of a group became NaN or inf.
    """
    r = obs.kernel_radius
    box_cap = np.zeros(len(peaks), dtype=np.int64) if box_cap is None else np.asarray(box_cap, dtype=np.int64)
    n_groups, labels = sub_blend_labels(boxes, owner, r + GROWTH_RESERVE) if split else (1, None)
    if n_groups == 1:
        n_iter, converged, alive, loss = fit_sources(obs, peaks, sed, morphs, boxes, settings, source,
                                                     box_cap=box_cap)
        return SubBlendFit(n_iter, converged, alive, loss, 1)
    groups = [np.flatnonzero(labels == g) for g in range(n_groups)]
    todo = [True] * n_groups
    iters = [0] * n_groups
    converged = [True] * n_groups
    histories = [np.zeros(0)] * n_groups
    alive = np.ones(len(peaks), dtype=bool)
    for attempt in range(MAX_REGROUP_PASSES + 2):
        cut = [False] * len(groups)
        for g, idx in enumerate(groups):
            if not todo[g]:
                continue
            n_it, conv, alive[idx], loss, cut[g] = _fit_group(obs, idx, peaks, sed, morphs, boxes, settings, source,
                                                              attempt > MAX_REGROUP_PASSES, box_cap)
            iters[g] += n_it
            converged[g] = conv
            histories[g] = np.concatenate([histories[g], loss])
        new_groups, parts = _merge_groups(groups, boxes, owner, r)
        if len(new_groups) == len(groups) and not any(cut):
            break
        if attempt == MAX_REGROUP_PASSES:  # still moving: fit everything once more as one blend
            new_groups, parts = [np.arange(len(peaks))], [list(range(len(groups)))]
        todo = [len(ps) > 1 or cut[ps[0]] for ps in parts]
        iters = [max(iters[g] for g in ps) for ps in parts]
        converged = [all(converged[g] for g in ps) for ps in parts]
        histories = [_sum_losses([histories[g] for g in ps]) for ps in parts]
        groups = new_groups
    return SubBlendFit(int(max(iters)), bool(all(converged)), alive, _sum_losses(histories), len(groups))
