"""Matching a tract catalog to the simulation truth, duplicates, and why each lost truth source was lost.

Used by :mod:`hpcblend.analysis.validate` (definitions in its module
docstring, "Matching", "Completeness and duplicates"):
:func:`match_positions` is the one-to-one match, :func:`match_truth` applies
it to a catalog and a truth table (positions, sample, edge distances),
:func:`find_duplicates` the duplicate checks, and :func:`explain_losses`
gives every lost source the first applicable reason of :data:`LOSS_REASONS`,
re-running the run's detection on the covering patches when the coadds are
there (:class:`PatchDetection`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree

from hpcblend.analysis.validate_snr import detection_significance
from hpcblend.detect import detection_image, estimate_background, significance_image
from hpcblend.detect.footprints import segment_pixels  # the detection's own segmentation
from hpcblend.io.coadd import read_patch, read_tract_shape
from hpcblend.skymap import make_patches, owner_index

__all__ = ["LOSS_REASONS", "LossCriteria", "TruthMatch", "PatchDetection", "match_positions", "match_truth",
           "find_duplicates", "explain_losses", "json_float"]

#: Loss reasons, in the order they are tried (the first that applies is reported; "patch_border" falls back to a
#: geometric test, tried after "blended_unresolved", when the detection is not re-run).
LOSS_REASONS = {
    "failed_patch": "in the inner box of a patch whose status is not ok",
    "tract_edge": "centre closer than edge_margin px to the tract edge (footprint cut, peak off the data)",
    "parent_failed": "a catalog child within 3 x radius has a failed or skipped parent",
    "below_threshold": "re-running the run's detection on the patches that cover it: no detected (above "
                       "threshold, min_area) pixel within 2 px in any of them (noise, or a profile fainter than "
                       "its S/N says)",
    "patch_border": "detected by a patch whose outer box covers it, but its peak lies in the inner box of another "
                    "patch that did not detect it (per-patch background); without the re-run detection: within "
                    "border_margin px of an inner patch border",
    "offset": "an unmatched catalog source lies within 3 x radius: detected, but its position is off by more than "
              "radius (a deblended child pulled by its neighbour, or two sources merged into one peak)",
    "blended_unresolved": "a brighter truth source lies within blend_radius px, or the brighter neighbours' "
                          "expected light in the detection image at its centre is >= pedestal_ratio x its own "
                          "expected peak significance (no separate, prominent peak)",
    "peak_culled": "inside the footprint box of a catalog parent without a child near it: its peak was culled "
                   "(min_prominence / min_peak_separation) or merged into a neighbour's footprint",
    "near_threshold": "expected detection significance below threshold + near_threshold_sigma",
    "unexplained": "none of the above",
}


def json_float(v):
    """A float for JSON (None for NaN or infinity)."""
    v = float(v)
    return None if not math.isfinite(v) else v


def match_positions(truth_xy: np.ndarray, cat_xy: np.ndarray, radius: float, order: np.ndarray):
    """One-to-one nearest-neighbour match, truth sources in ``order`` (brightest first) picking first.

    Parameters
    ----------
    truth_xy : ndarray, shape (N, 2)
    cat_xy : ndarray, shape (M, 2)
        Positions (x, y), pixels; non-finite catalog positions never match.
    radius : float
        Largest match distance, pixels.
    order : ndarray of int, shape (N,)
        Truth indices in the order they choose (e.g. descending flux).

    Returns
    -------
    t2c : ndarray of int, shape (N,)
        Catalog index matched to each truth source, -1 if none.
    c2t : ndarray of int, shape (M,)
        Truth index matched to each catalog source, -1 if none.
    dist : ndarray, shape (N,)
        Match distance (NaN if unmatched).
    """
    n, m = len(truth_xy), len(cat_xy)
    t2c = np.full(n, -1, dtype=np.int64)
    c2t = np.full(m, -1, dtype=np.int64)
    dist = np.full(n, np.nan)
    good = np.all(np.isfinite(cat_xy), axis=1)
    if m == 0 or not good.any():
        return t2c, c2t, dist
    idx_good = np.nonzero(good)[0]
    tree = cKDTree(cat_xy[good])
    near = tree.query_ball_point(truth_xy, r=radius)
    for t in order:
        cand = [idx_good[j] for j in near[t] if c2t[idx_good[j]] < 0]
        if not cand:
            continue
        cand = np.asarray(cand)
        d = np.hypot(cat_xy[cand, 0] - truth_xy[t, 0], cat_xy[cand, 1] - truth_xy[t, 1])
        k = int(np.argmin(d))
        t2c[t] = cand[k]
        c2t[cand[k]] = t
        dist[t] = float(d[k])
    return t2c, c2t, dist


@dataclass
class TruthMatch:
    """A catalog matched to the truth (arrays over N truth and M catalog sources; positions in tract pixels).

    Attributes
    ----------
    truth : astropy.table.Table
    src : ndarray
        The catalog's ``/sources`` rows.
    bands : list of str
    sn : dict
        :func:`hpcblend.analysis.validate_snr.truth_snr`.
    snr : ndarray, shape (N,)
        The S/N that selects the sample (multi-band, or one band's).
    tx, ty : ndarray, shape (N,)
        Truth positions.
    truth_xy, cat_xy : ndarray, shapes (N, 2), (M, 2)
        (x, y) of truth and catalog (centroid, else the peak).
    t2c, c2t, dist
        :func:`match_positions`.
    edge_dist : ndarray, shape (N,)
        Distance of each truth centre from the tract edge (inf when the size is unknown).
    near_edge, sample, detected : ndarray of bool, shape (N,)
        Closer than ``edge_margin`` to the edge; ``snr > snr_min``; in the sample and matched.
    ids : ndarray, shape (M,)
        Catalog ``id``.
    gidx : ndarray of int
        Catalog rows with finite positions (the rows of ``ctree``).
    ctree : scipy.spatial.cKDTree or None
        Tree of those positions (None when there are none).
    """

    truth: object
    src: np.ndarray
    bands: list
    sn: dict
    snr: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    truth_xy: np.ndarray
    cat_xy: np.ndarray
    t2c: np.ndarray
    c2t: np.ndarray
    dist: np.ndarray
    edge_dist: np.ndarray
    near_edge: np.ndarray
    sample: np.ndarray
    detected: np.ndarray
    ids: np.ndarray
    gidx: np.ndarray
    ctree: Optional[cKDTree]


def match_truth(truth, src: np.ndarray, bands: list, sn: dict, snr: np.ndarray, *, radius: float, snr_min: float,
                edge_margin: float, nx: int, ny: int) -> TruthMatch:
    """Match catalog children to truth sources (brightest truth first, then by id) and mark the sample.

    Parameters
    ----------
    truth : astropy.table.Table
    src : ndarray
        ``/sources`` rows (``x``, ``y``, falling back to ``peak_x``, ``peak_y``; ``id``).
    bands : list of str
    sn : dict
        :func:`hpcblend.analysis.validate_snr.truth_snr`.
    snr : ndarray, shape (N,)
        Sample S/N (also the matching order).
    radius : float
        Match radius (pixels).
    snr_min : float
        Sample threshold.
    edge_margin : float
        Pixels from the tract edge within which a source is "near the edge".
    nx, ny : int
        Tract size (0: unknown, no source is near the edge).

    Returns
    -------
    TruthMatch
    """
    tx = np.asarray(truth["x"], dtype=np.float64)
    ty = np.asarray(truth["y"], dtype=np.float64)
    truth_xy = np.stack([tx, ty], 1)
    cx = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]).astype(np.float64)
    cy = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]).astype(np.float64)
    cat_xy = np.stack([cx, cy], 1)
    order = np.lexsort((np.arange(len(truth)), -snr))  # brightest (highest S/N) first, then by id
    t2c, c2t, dist = match_positions(truth_xy, cat_xy, radius, order)
    if nx and ny:
        edge_dist = np.minimum.reduce([tx + 0.5, ty + 0.5, nx - 0.5 - tx, ny - 0.5 - ty])
    else:
        edge_dist = np.full(len(truth), np.inf)
    near_edge = edge_dist < edge_margin
    sample = snr > snr_min
    good = np.all(np.isfinite(cat_xy), 1)
    gidx = np.nonzero(good)[0]
    return TruthMatch(truth=truth, src=src, bands=bands, sn=sn, snr=snr, tx=tx, ty=ty, truth_xy=truth_xy,
                      cat_xy=cat_xy, t2c=t2c, c2t=c2t, dist=dist, edge_dist=edge_dist, near_edge=near_edge,
                      sample=sample, detected=sample & (t2c >= 0), ids=np.asarray(src["id"]), gidx=gidx,
                      ctree=cKDTree(cat_xy[good]) if good.any() else None)


def find_duplicates(m: TruthMatch, radius: float, dup_radius: float) -> dict:
    """Duplicate checks of a matched catalog.

    Returns
    -------
    dict
        ``dup_truth`` (truth ids of sample sources with two or more catalog
        sources within ``radius``, one of them unmatched), ``repeated_ids``
        (catalog ids that occur twice), ``cross_pairs`` ((id, id, distance)
        of catalog sources of different patches closer than ``dup_radius``)
        and ``cross_pairs_radius`` (how many such pairs within ``radius``).
    """
    src, ctree, gidx = m.src, m.ctree, m.gidx
    dup_truth = []
    if ctree is not None:
        for t in np.nonzero(m.sample)[0]:
            near = gidx[ctree.query_ball_point(m.truth_xy[t], r=radius)]
            if len(near) >= 2 and np.any(m.c2t[near] < 0):
                dup_truth.append(int(m.truth["id"][t]))
    uniq, counts = np.unique(m.ids, return_counts=True)
    repeated_ids = [int(v) for v in uniq[counts > 1]]
    cross_pairs = []
    if ctree is not None:
        for i, j in sorted(ctree.query_pairs(r=dup_radius)):
            a, b = gidx[i], gidx[j]
            if src["patch"][a] != src["patch"][b]:
                cross_pairs.append((int(m.ids[a]), int(m.ids[b]), json_float(np.hypot(*(m.cat_xy[a] - m.cat_xy[b])))))
    cross_pairs_radius = 0
    if ctree is not None:
        for i, j in ctree.query_pairs(r=radius):
            if src["patch"][gidx[i]] != src["patch"][gidx[j]]:
                cross_pairs_radius += 1
    return {"dup_truth": dup_truth, "repeated_ids": repeated_ids, "cross_pairs": cross_pairs,
            "cross_pairs_radius": cross_pairs_radius}


class PatchDetection:
    """Re-run the pipeline's detection (background, detection image, significance, segmentation) per patch.

    Exactly the steps of :func:`hpcblend.units.tract.process_patch` before the
    footprints, with the run's ``detect`` settings, on each patch's outer box;
    used to tell why a truth source was lost (below threshold in the data, or
    seen only by a patch that does not own it). Maps are cached (at most
    ``cache`` patches).

    Parameters
    ----------
    tract_dir : str
        The coadds.
    cfg : dict
        The run's ``/config`` (``input`` patch geometry, ``detect`` settings).
    bands : sequence of str
    cache : int
        Patches whose maps are kept.
    """

    def __init__(self, tract_dir: str, cfg: dict, bands, cache: int = 4):
        inp = cfg.get("input") or {}
        self.det = cfg.get("detect") or {}
        self.tract_dir, self.bands = tract_dir, tuple(bands)
        shape = read_tract_shape(tract_dir, self.bands)
        self.patches = make_patches(shape, int(inp.get("patch_inner_size", 4000)), int(inp.get("patch_overlap", 100)),
                                    tract=int(inp.get("tract", 0)))
        self.threshold = float(self.det.get("threshold", 5.0))
        self._cache: dict = {}
        self._size = max(int(cache), 1)

    def covering(self, y: float, x: float) -> list:
        """Flat indices of the patches whose outer box holds the position."""
        return [p.flat for p in self.patches if p.outer.contains(y, x)]

    def _maps(self, flat: int):
        if flat not in self._cache:
            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            p = self.patches[flat]
            data = read_patch(self.tract_dir, p, bands=self.bands)
            images = data.images
            if self.det.get("subtract_background", True):
                images = estimate_background(images, data.mask, box_size=int(self.det.get("background_box", 128)),
                                             variance=data.variance).images
            det, sigma = detection_image(images, data.variance, data.mask,
                                         method=str(self.det.get("method", "weighted")))
            signif = significance_image(det, sigma)
            detected = segment_pixels(signif, self.threshold, int(self.det.get("min_area", 5)))
            self._cache[flat] = (p, signif, detected)
        return self._cache[flat]

    def at(self, flat: int, y: float, x: float, r: float = 2.0) -> tuple:
        """In one patch: (largest significance within ``r`` px, whether a detected pixel lies within ``r`` px,
        the flat index of the patch owning the pixel of that largest significance)."""
        p, signif, detected = self._maps(flat)
        ly, lx = y - p.outer.y0, x - p.outer.x0
        y0, y1 = max(int(math.floor(ly - r)), 0), min(int(math.ceil(ly + r)) + 1, signif.shape[0])
        x0, x1 = max(int(math.floor(lx - r)), 0), min(int(math.ceil(lx + r)) + 1, signif.shape[1])
        if y1 <= y0 or x1 <= x0:
            return float("nan"), False, -1
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = np.hypot(yy - ly, xx - lx) <= r
        vals = np.where(near, signif[y0:y1, x0:x1], -np.inf)
        k = np.unravel_index(int(np.argmax(vals)), vals.shape)
        py, px = int(yy[k]) + p.outer.y0, int(xx[k]) + p.outer.x0
        owner = next((q.flat for q in self.patches if q.inner.contains(py, px)), -1)
        return float(vals[k]), bool(np.any(detected[y0:y1, x0:x1][near])), owner


# -----------------------------------------------------------------------------
# losses
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LossCriteria:
    """The settings of :func:`explain_losses` (see :func:`hpcblend.analysis.validate.validate_tract`)."""

    radius: float
    blend_radius: float
    pedestal_ratio: float
    border_margin: float
    near_threshold_sigma: float
    detect_threshold: float
    detect_pad: int


def _patch_geometry(patches, nx: int, ny: int) -> tuple:
    """Inner boxes (y0, x0, h, w) of failed patches, and the inner borders' y and x coordinates inside the tract."""
    failed_inner = []
    borders_y, borders_x = set(), set()
    if patches is not None and len(patches):
        for p in patches:
            y0, x0, h, w = (int(v) for v in p["inner_bbox"])
            if p["status"] != b"ok":
                failed_inner.append((y0, x0, h, w))
            for v in (y0, y0 + h):
                if 0 < v < ny:
                    borders_y.add(v)
            for v in (x0, x0 + w):
                if 0 < v < nx:
                    borders_x.add(v)
    return failed_inner, borders_y, borders_x


def _seen_reason(seen: dict, sdet_t: float, detect_threshold: float) -> Optional[tuple]:
    """The re-run detection's verdict (below_threshold or patch_border), or None when it explains nothing."""
    if seen and not any(v[1] for v in seen.values()):
        smax = max(v[0] for v in seen.values())
        return "below_threshold", (f"largest significance within 2 px {smax:.1f} (threshold "
                                   f"{detect_threshold:g}, min_area) in patch(es) "
                                   f"{sorted(seen)}; expected {sdet_t:.1f}")
    if seen and any(v[1] and v[2] in seen and not seen[v[2]][1] for v in seen.values()):
        return "patch_border", ("detected in patch(es) " + str(sorted(f for f, v in seen.items() if v[1]))
                                + " with its peak in the inner box of patch(es) "
                                + str(sorted({v[2] for v in seen.values() if v[1]}))
                                + ", which did not detect it (significance "
                                + ", ".join(f"{v[0]:.2f}" for v in seen.values()) + ")")
    return None


def _loss_reason(m: TruthMatch, t: int, c: LossCriteria, ctx: dict) -> tuple:
    """(reason, detail) of lost truth source ``t``: the first of :data:`LOSS_REASONS` that applies."""
    tx, ty, sn, truth = m.tx, m.ty, m.sn, m.truth
    sdet = sn["snr_det"]
    ix, iy = math.floor(tx[t] + 0.5), math.floor(ty[t] + 0.5)
    neigh = np.array([j for j in ctx["ttree"].query_ball_point(m.truth_xy[t], r=sn["model"].half)
                      if j != t and sdet[j] >= sdet[t]], dtype=np.int64)
    dn = np.hypot(tx[neigh] - tx[t], ty[neigh] - ty[t])
    pedestal = float(detection_significance(sn["model"], truth, m.bands, sn["weights"], sn["gal_sigma"], neigh,
                                            dn).sum()) if len(neigh) else 0.0
    near_c = m.gidx[m.ctree.query_ball_point(m.truth_xy[t], r=3 * c.radius)] if m.ctree is not None \
        else np.array([], int)
    boxes, pad = ctx["parent_boxes"], c.detect_pad
    in_box = np.nonzero((boxes[:, 0] + pad <= iy) & (iy < boxes[:, 0] + boxes[:, 2] - pad)
                        & (boxes[:, 1] + pad <= ix) & (ix < boxes[:, 1] + boxes[:, 3] - pad))[0]
    border = [abs(ty[t] + 0.5 - v) for v in ctx["borders_y"]] + [abs(tx[t] + 0.5 - v) for v in ctx["borders_x"]]
    border = [v for v in border if v <= c.border_margin]
    pdet = ctx["pdet"]
    seen = {}
    if pdet is not None and not m.near_edge[t]:
        seen = {f: pdet.at(f, ty[t], tx[t]) for f in pdet.covering(ty[t], tx[t])}
    if any(y0 <= iy < y0 + h and x0 <= ix < x0 + w for (y0, x0, h, w) in ctx["failed_inner"]):
        return "failed_patch", ""
    if m.near_edge[t]:
        return "tract_edge", f"{m.edge_dist[t]:.1f} px from the edge"
    if len(near_c) and ctx["bad_parent"][near_c].any():
        return "parent_failed", ""
    by_detection = _seen_reason(seen, sdet[t], c.detect_threshold)
    if by_detection is not None:
        return by_detection
    if len(near_c) and np.any(m.c2t[near_c] < 0):
        k = near_c[m.c2t[near_c] < 0]
        d = np.hypot(m.cat_xy[k, 0] - tx[t], m.cat_xy[k, 1] - ty[t])
        kc = k[np.argmin(d)]
        others = [int(truth["id"][j]) for j in ctx["ttree"].query_ball_point(m.cat_xy[kc], r=3 * c.radius) if j != t]
        return "offset", (f"unmatched catalog source {int(m.ids[kc])} at {d.min():.1f} px"
                          + (f", between it and truth {others} (a merged pair)" if others else ""))
    if len(neigh) and (dn.min() < c.blend_radius or pedestal >= c.pedestal_ratio * sdet[t]):
        j = neigh[np.argmin(dn)]
        return "blended_unresolved", (f"nearest brighter truth {int(truth['id'][j])} (S/N {m.snr[j]:.0f}) at "
                                      f"{dn.min():.1f} px; neighbours' light {pedestal / max(sdet[t], 1e-9):.2f} x "
                                      "its peak significance")
    if border and not seen:
        return "patch_border", f"{min(border):.1f} px from an inner patch border; expected significance {sdet[t]:.1f}"
    if len(in_box):
        blends = ctx["blends"]
        pid = int(blends["id"][in_box[0]])
        return "peak_culled", (f"inside the footprint box of parent {pid} "
                               f"({int(blends['n_peaks'][in_box[0]])} peaks); expected "
                               f"significance {sdet[t]:.1f}, neighbours' light "
                               f"{pedestal / max(sdet[t], 1e-9):.2f} x")
    if sdet[t] < c.detect_threshold + c.near_threshold_sigma:
        return "near_threshold", f"expected detection significance {sdet[t]:.1f}"
    return "unexplained", f"expected detection significance {sdet[t]:.1f}"


def explain_losses(m: TruthMatch, criteria: LossCriteria, patches, blends, bad_parent: np.ndarray,
                   pdet: Optional[PatchDetection], nx: int, ny: int) -> tuple:
    """A reason for every lost sample source (in the sample, not matched).

    Parameters
    ----------
    m : TruthMatch
    criteria : LossCriteria
    patches : ndarray or None
        The catalog's ``/patches`` rows (``inner_bbox``, ``status``).
    blends : ndarray or None
        The catalog's ``/blends`` rows (``bbox``, ``id``, ``n_peaks``).
    bad_parent : ndarray of bool, shape (M,)
        Catalog children whose parent failed or was skipped.
    pdet : PatchDetection or None
        Re-runs the detection (None: expected significance and geometry only).
    nx, ny : int
        Tract size (0: unknown).

    Returns
    -------
    losses : list of dict
        Per lost source, by truth id: ``truth_id``, ``x``, ``y``, ``snr``,
        ``snr_det``, ``type``, ``mag_i`` (the reference band's magnitude),
        ``reason``, ``detail``.
    reasons : dict of str to int
        Count per reason.
    """
    truth, bands = m.truth, m.bands
    failed_inner, borders_y, borders_x = _patch_geometry(patches, nx, ny)
    parent_boxes = np.zeros((0, 4), dtype=np.int64)
    if blends is not None and len(blends):
        parent_boxes = np.asarray(blends["bbox"], dtype=np.int64).reshape(-1, 4)
    ctx = {"failed_inner": failed_inner, "borders_y": borders_y, "borders_x": borders_x,
           "parent_boxes": parent_boxes, "blends": blends, "ttree": cKDTree(m.truth_xy), "bad_parent": bad_parent,
           "pdet": pdet}
    ref_band = "i" if "i" in bands else bands[len(bands) // 2]
    sdet = m.sn["snr_det"]
    lost = np.nonzero(m.sample & (m.t2c < 0))[0]
    if pdet is not None:  # patch by patch, so that each patch's detection is re-run once
        lost = lost[np.argsort(owner_index((ny, nx), pdet.patches[0].inner.shape, m.ty[lost], m.tx[lost]),
                               kind="stable")] if nx and ny else lost
    losses = []
    for t in lost:
        reason, detail = _loss_reason(m, t, criteria, ctx)
        losses.append({"truth_id": int(truth["id"][t]), "x": json_float(m.tx[t]), "y": json_float(m.ty[t]),
                       "snr": json_float(m.snr[t]), "snr_det": json_float(sdet[t]), "type": str(truth["type"][t]),
                       "mag_i": json_float(truth[f"mag_{ref_band}"][t]) if f"mag_{ref_band}" in truth.colnames
                       else None,
                       "reason": reason, "detail": detail})
    losses.sort(key=lambda rec: rec["truth_id"])
    reasons = {}
    for loss in losses:
        reasons[loss["reason"]] = reasons.get(loss["reason"], 0) + 1
    return losses, reasons
