"""Failure-gallery records made during a run from what the deblender computed.

The driver offers every finished blend to a :class:`GalleryCollector`; it
keeps records (:func:`gallery_record`, :func:`gallery_record_from_result`)
of the failed, flagged and slowest blends within a bounded memory, and rank 0
writes them into the finished catalog with
:func:`hpcblend.io.gallery.write_gallery` (layout there).
"""

from __future__ import annotations

import heapq
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from hpcblend.io.json_values import json_default

__all__ = ["gallery_record", "gallery_record_from_result", "GalleryCollector"]


def gallery_record(blend_id: int, images: np.ndarray, model: Optional[np.ndarray], child_boxes: np.ndarray,
                   child_bad: np.ndarray, bands: Sequence[str], reason: str, *,
                   noise_rms: Optional[np.ndarray] = None, footprint: Optional[np.ndarray] = None,
                   info: Optional[Mapping[str, Any]] = None) -> dict:
    """Validate and pack one blend's images for the gallery.

    Parameters
    ----------
    blend_id : int
        The blend's ``/blends`` id.
    images : ndarray, shape (B, H, W)
        Observed pixels (counts); stored as float32 or float16.
    model : ndarray, shape (B, H, W), or None
        Observed model (the model convolved with each band's PSF difference
        kernel), same units; None when there is no model (the blend failed
        before or during the fit).
    child_boxes : ndarray, shape (K, 4), int
        Each child's box ``(y0, x0, h, w)`` in the blend's pixel frame.
    child_bad : ndarray, shape (K,), bool
        True for a child to draw in red (failed, flagged, zero model).
    bands : sequence of str, length B
    reason : str
        Why the record was kept, e.g. ``"failed"``, ``"flagged"``,
        ``"slowest"`` (several: ``"flagged; slowest"``).
    noise_rms : ndarray, shape (B,), optional
        Per-band noise (counts) for display scaling; estimated from the
        image when absent.
    footprint : ndarray, shape (H, W), bool, optional
        True inside the parent footprint.
    info : dict, optional
        JSON-serialisable extras (e.g. ``{"t_total": ..., "error": ...}``).

    Returns
    -------
    dict
        Keys ``blend_id``, ``images`` (float32), ``model`` (float32 or None),
        ``child_boxes`` (int64 (K, 4)), ``child_bad`` (bool (K,)),
        ``bands`` (tuple), ``reason``, ``noise_rms``, ``footprint``,
        ``info``.

    Raises
    ------
    ValueError
        Inconsistent shapes, or a non-finite model.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"gallery_record {blend_id}: images must be (B, H, W), got shape {images.shape}")
    nb = images.shape[0]
    bands = tuple(str(b) for b in bands)
    if len(bands) != nb:
        raise ValueError(f"gallery_record {blend_id}: {len(bands)} band names for {nb} image planes")
    if model is not None:
        model = np.asarray(model, dtype=np.float32)
        if model.shape != images.shape:
            raise ValueError(f"gallery_record {blend_id}: model shape {model.shape} != images {images.shape}")
        if not np.all(np.isfinite(model)):
            raise ValueError(f"gallery_record {blend_id}: model has non-finite pixels")
    boxes = np.asarray(child_boxes, dtype=np.int64).reshape(-1, 4)
    bad = np.asarray(child_bad, dtype=bool).reshape(-1)
    if len(bad) != len(boxes):
        raise ValueError(f"gallery_record {blend_id}: {len(boxes)} child boxes but {len(bad)} child_bad values")
    if noise_rms is not None:
        noise_rms = np.asarray(noise_rms, dtype=np.float64).reshape(-1)
        if len(noise_rms) != nb:
            raise ValueError(f"gallery_record {blend_id}: noise_rms has {len(noise_rms)} values for {nb} bands")
    if footprint is not None:
        footprint = np.asarray(footprint, dtype=bool)
        if footprint.shape != images.shape[1:]:
            raise ValueError(f"gallery_record {blend_id}: footprint shape {footprint.shape} != {images.shape[1:]}")
    info = dict(info or {})
    json.dumps(info, default=json_default)  # fail early on unserialisable extras
    return {"blend_id": int(blend_id), "images": images, "model": model, "child_boxes": boxes, "child_bad": bad,
            "bands": bands, "reason": str(reason), "noise_rms": noise_rms, "footprint": footprint, "info": info}


def gallery_record_from_result(blend: Any, result: Any, reason: str,
                               child_bad: Optional[np.ndarray] = None, info: Optional[Mapping] = None,
                               peak_box: int = 7) -> dict:
    """A gallery record from a blend and its :class:`hpcblend.deblend.result.DeblendResult` (or None).

    The observed-frame model is the one the deblender computed
    (:attr:`DeblendResult.model_observed <hpcblend.deblend.result.DeblendResult.model_observed>`,
    a sum over components; nothing is convolved again), and the display noise
    its ``noise_rms``.

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
    result : hpcblend.deblend.result.DeblendResult or None
        None (or an unfitted result) when the deblender raised or skipped:
        the record then has no model and a ``peak_box``-sized box around each
        peak.
    reason : str
    child_bad : ndarray, shape (K,), bool, optional
        Default: every child when the blend failed or has no fit, else the
        children whose model is zero (``~result.children["alive"]``).
    info : dict, optional
        Extra JSON-serialisable values to keep.
    peak_box : int
        Side of the boxes drawn around peaks when there is no fit.

    Returns
    -------
    dict
        See :func:`gallery_record`.
    """
    k = blend.n_peaks
    model = None
    noise = None
    fitted = result is not None and getattr(result, "sed", None) is not None and result.morphs is not None
    if fitted:
        model = result.model_observed
        noise = result.noise_rms
        if model is not None and not np.all(np.isfinite(model)):
            model = None
    if fitted and result.boxes is not None:
        b = np.asarray(result.boxes, dtype=np.int64)  # (y0, y1, x0, x1), per component
        owner = getattr(result, "owner", None)
        if owner is not None and len(owner) == len(b):  # one box per child: the union of its components
            owner = np.asarray(owner)
            b = np.array([[b[owner == c, 0].min(), b[owner == c, 1].max(), b[owner == c, 2].min(),
                           b[owner == c, 3].max()] for c in range(k)], dtype=np.int64)
        boxes = np.stack([b[:, 0], b[:, 2], b[:, 1] - b[:, 0], b[:, 3] - b[:, 2]], axis=1)
    else:
        half = peak_box // 2
        p = np.asarray(blend.peaks, dtype=np.int64).reshape(-1, 2)
        boxes = np.stack([p[:, 0] - half, p[:, 1] - half, np.full(len(p), peak_box), np.full(len(p), peak_box)],
                         axis=1)
    if child_bad is None:
        failed = result is None or bool(result.flags.get("flag_failed")) or not fitted
        if failed:
            child_bad = np.ones(k, dtype=bool)
        else:
            alive = np.asarray(result.children.get("alive", np.ones(k, dtype=bool)), dtype=bool)
            child_bad = ~alive
    extra = dict(info or {})
    if result is not None:
        extra.setdefault("iterations", int(result.iterations))
        extra.setdefault("chi2_per_pixel", float(result.chi2_per_pixel))
        if result.error_type:
            extra.setdefault("error", f"{result.error_type}: {result.error_message}")
    return gallery_record(blend.id, blend.images, model, boxes, child_bad, blend.bands, reason,
                          noise_rms=noise, footprint=blend.footprint, info=extra)


def _row_reasons(row: Any) -> list:
    """``["failed"]``, ``["flagged"]`` or ``[]`` for one ``/blends`` row (numpy void or dict-like)."""
    names = row.dtype.names if hasattr(row, "dtype") else tuple(row)
    et = row["error_type"] if "error_type" in names else b""
    if (("flag_failed" in names and bool(row["flag_failed"])) or (et not in (b"", ""))):
        return ["failed"]
    if any(n.startswith("flag_") and bool(row[n]) for n in names):
        return ["flagged"]
    return []


class GalleryCollector:
    """Keeps, on one rank, the gallery records of failed, flagged and slowest blends (bounded memory).

    Offer every finished blend's ``/blends`` row with a callable that makes
    its record; the callable runs only for blends that are kept (a record
    copies the blend's images and model).

    Parameters
    ----------
    max_failed : int
        Failed blends kept (the first ones offered).
    max_flagged : int
        Flagged (not failed) blends kept (the first ones offered).
    n_slowest : int
        The slowest blends by ``t_total`` kept (a running top-N).

    Examples
    --------
    >>> gallery = GalleryCollector(max_failed=50, max_flagged=50, n_slowest=5)  # doctest: +SKIP
    >>> gallery.offer(row[0], lambda reason: gallery_record_from_result(blend, result, reason))  # doctest: +SKIP
    >>> records = comm.gather(gallery.records(), root=0)  # doctest: +SKIP
    """

    def __init__(self, max_failed: int = 50, max_flagged: int = 50, n_slowest: int = 5) -> None:
        self.max_failed = int(max_failed)
        self.max_flagged = int(max_flagged)
        self.n_slowest = int(n_slowest)
        self._kept: dict = {}  # blend id -> record (failed / flagged)
        self._n = {"failed": 0, "flagged": 0}
        self._slow: list = []  # min-heap of (t_total, blend id, record)
        self.n_errors = 0  # records whose making raised (left out)

    def _make(self, make_record: Callable[[str], Optional[dict]], reason: str) -> Optional[dict]:
        try:
            return make_record(reason)
        except Exception:  # noqa: BLE001 - a gallery record must never fail the run
            self.n_errors += 1
            return None

    def offer(self, row: Any, make_record: Callable[[str], Optional[dict]]) -> bool:
        """Consider one blend.

        Parameters
        ----------
        row : numpy.void
            The blend's ``/blends`` row (``id``, ``t_total``, ``flag_*``,
            ``error_type``).
        make_record : callable
            ``make_record(reason) -> dict or None`` (a :func:`gallery_record`;
            None when there are no pixels, e.g. an unreadable file).

        Returns
        -------
        bool
            True when a record was made and kept.
        """
        bid = int(row["id"])
        reasons = _row_reasons(row)
        t = float(row["t_total"])
        slow = self.n_slowest > 0 and (len(self._slow) < self.n_slowest or t > self._slow[0][0])
        keep_kind = None
        if reasons:
            kind = reasons[0]
            limit = self.max_failed if kind == "failed" else self.max_flagged
            if self._n[kind] < limit:
                keep_kind = kind
        if keep_kind is None and not slow:
            return False
        reason = "; ".join(([keep_kind] if keep_kind else []) + (["slowest"] if slow else []))
        rec = self._make(make_record, reason)
        if rec is None:
            return False
        if keep_kind:
            self._n[keep_kind] += 1
            self._kept[bid] = rec
        if slow:
            item = (t, bid, rec)
            if len(self._slow) < self.n_slowest:
                heapq.heappush(self._slow, item)
            else:
                heapq.heapreplace(self._slow, item)
        return True

    def records(self) -> list:
        """Kept records (one per blend; the reason says every group it belongs to)."""
        out = dict(self._kept)
        slow_ids = {bid for _, bid, _ in self._slow}
        for _, bid, rec in self._slow:
            if bid not in out:
                out[bid] = dict(rec, reason="slowest")
        for bid, rec in list(out.items()):
            parts = [p for p in rec.get("reason", "").split("; ") if p and p != "slowest"]
            if bid in slow_ids:
                parts.append("slowest")
            out[bid] = dict(rec, reason="; ".join(parts))
        return [out[k] for k in sorted(out)]
