"""Failure gallery: small per-blend image records stored in the catalog under ``/gallery/<id>``.

A record holds what the report needs to draw a blend without its input file:
the observed images, the observed model (convolved with the PSF), each
child's box and whether the child is bad. The driver makes records for
failed, flagged and slow blends (:func:`gallery_record` or
:func:`gallery_record_from_result`) and rank 0 appends them to the finished
catalog with :func:`write_gallery`; the report reads them with
:func:`read_gallery`.

HDF5 layout (``GALLERY_VERSION`` 1)::

    /gallery                  group, attrs: gallery_version, n_records
    /gallery/<id>             group, attrs: blend_id (i8), bands (comma-
                              separated str), reason (str), info (JSON str),
                              noise_rms (B,) f8 (if known), storage
                              ("float16" or "float32")
    /gallery/<id>/images      (B, H, W) observed pixels, gzip; float16 holds
                              images / scale with attr scale (B,) f8
    /gallery/<id>/residual    (B, H, W) images − model, same encoding (only
                              when a model was given; float16 storage)
    /gallery/<id>/model       (B, H, W) model (float32 storage only)
    /gallery/<id>/child_boxes (K, 4) i4: y0, x0, h, w in the blend's frame
    /gallery/<id>/child_bad   (K,) bool
    /gallery/<id>/footprint   (H, W) u1 (if given)

float16 storage keeps the residual apart from the image so that the residual
keeps its own precision (a 10-bit mantissa relative to each array's own
values); the model is read back as ``images − residual``.
"""

from __future__ import annotations

import heapq
import json
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "GALLERY_VERSION",
    "gallery_record",
    "gallery_record_from_result",
    "write_gallery",
    "read_gallery",
    "gallery_ids",
    "GalleryCollector",
    "select_gallery_blends",
    "records_from_inputs",
]

#: Version of the ``/gallery`` layout.
GALLERY_VERSION: int = 1

_F16_RANGE = 1024.0  # float16 arrays are scaled so that max |x| = this


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
    json.dumps(info, default=_json_default)  # fail early on unserialisable extras
    return {"blend_id": int(blend_id), "images": images, "model": model, "child_boxes": boxes, "child_bad": bad,
            "bands": bands, "reason": str(reason), "noise_rms": noise_rms, "footprint": footprint, "info": info}


def gallery_record_from_result(blend: Any, result: Any, config: Any, reason: str,
                               child_bad: Optional[np.ndarray] = None, info: Optional[Mapping] = None,
                               peak_box: int = 7) -> dict:
    """A gallery record from a blend and its :class:`hpcblend.deblend.deblender.DeblendResult` (or None).

    The observed model is rebuilt from ``result.sed`` and ``result.morphs``
    (convolved with the blend's difference kernels), which costs about one
    iteration of the fit; call it only for the blends you keep.

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
    result : hpcblend.deblend.deblender.DeblendResult or None
        None (or an unfitted result) when the deblender raised or skipped:
        the record then has no model and a ``peak_box``-sized box around each
        peak.
    config : hpcblend.config.DeblendConfig
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
    from hpcblend.deblend.deblender import build_observation, convolve_sources

    k = blend.n_peaks
    model = None
    noise = None
    fitted = result is not None and getattr(result, "sed", None) is not None and result.morphs is not None
    if fitted:
        try:
            obs = build_observation(blend, config)
            conv = convolve_sources(result.morphs, obs)
            model = (conv * np.asarray(result.sed, dtype=np.float32)[:, :, None, None]).sum(axis=0)
            noise = obs.noise_rms
            if not np.all(np.isfinite(model)):
                model = None
        except Exception:  # noqa: BLE001 - a gallery record must never fail the run
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _encode_f16(arr: np.ndarray) -> tuple:
    a = np.asarray(arr, dtype=np.float32)
    peak = np.abs(a).reshape(a.shape[0], -1).max(axis=1).astype(np.float64)
    scale = np.where(peak > 0, peak / _F16_RANGE, 1.0)
    return (a / scale[:, None, None]).astype(np.float16), scale


def write_gallery(path: str | os.PathLike, records: Iterable[Mapping[str, Any]], storage: str = "float16") -> list:
    """Append gallery records to an existing, closed catalog (serial; call on one rank).

    Parameters
    ----------
    path : str or os.PathLike
        The catalog.
    records : iterable of dict
        From :func:`gallery_record`. A record whose blend already has one
        replaces it; the reasons of both are kept (``"a; b"``).
    storage : {"float16", "float32"}
        Pixel encoding (float16 with a per-band scale: ~4× smaller than
        float32 pairs, display quality).

    Returns
    -------
    list of str
        HDF5 paths of the groups written.

    Raises
    ------
    hpcblend.errors.CatalogError
        Missing file, not a catalog, or an I/O error.
    ValueError
        Unknown storage.
    """
    from hpcblend.io.catalog import append_group

    if storage not in ("float16", "float32"):
        raise ValueError(f"storage must be 'float16' or 'float32', got {storage!r}")
    written = []
    comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with append_group(path, "gallery", "gallery_version", GALLERY_VERSION) as grp:
        for rec in records:
            name = str(int(rec["blend_id"]))
            reason = str(rec.get("reason", ""))
            if name in grp:
                old = str(grp[name].attrs.get("reason", ""))
                parts = [r for r in (old.split("; ") + reason.split("; ")) if r]
                reason = "; ".join(dict.fromkeys(parts))
                del grp[name]
            g = grp.create_group(name)
            images = np.asarray(rec["images"], dtype=np.float32)
            model = rec.get("model")
            g.attrs["blend_id"] = np.int64(int(rec["blend_id"]))
            g.attrs["bands"] = ",".join(rec.get("bands") or ())
            g.attrs["reason"] = reason
            g.attrs["info"] = json.dumps(rec.get("info") or {}, default=_json_default)
            g.attrs["storage"] = storage
            if rec.get("noise_rms") is not None:
                g.attrs["noise_rms"] = np.asarray(rec["noise_rms"], dtype=np.float64)
            if storage == "float16":
                data, scale = _encode_f16(images)
                d = g.create_dataset("images", data=data, **comp)
                d.attrs["scale"] = scale
                if model is not None:
                    data, scale = _encode_f16(images - np.asarray(model, dtype=np.float32))
                    d = g.create_dataset("residual", data=data, **comp)
                    d.attrs["scale"] = scale
            else:
                g.create_dataset("images", data=images, **comp)
                if model is not None:
                    g.create_dataset("model", data=np.asarray(model, dtype=np.float32), **comp)
            g.create_dataset("child_boxes", data=np.asarray(rec["child_boxes"], dtype=np.int32).reshape(-1, 4))
            g.create_dataset("child_bad", data=np.asarray(rec["child_bad"], dtype=bool).reshape(-1))
            if rec.get("footprint") is not None:
                g.create_dataset("footprint", data=np.asarray(rec["footprint"], dtype=np.uint8), **comp)
            written.append(g.name)
        grp.attrs["n_records"] = np.int64(len(grp))
    return written


def gallery_ids(path_or_file: Any) -> list:
    """Blend ids that have a gallery record (``[]`` when there is no ``/gallery``)."""
    import h5py

    if isinstance(path_or_file, (h5py.File, h5py.Group)):
        f = path_or_file.file
        return sorted(int(k) for k in f["gallery"]) if "gallery" in f else []
    with h5py.File(os.fspath(path_or_file), "r") as f:
        return gallery_ids(f)


def _decode(d: Any) -> np.ndarray:
    a = d[()]
    if a.dtype == np.float16:
        return a.astype(np.float32) * d.attrs["scale"].astype(np.float32)[:, None, None]
    return a.astype(np.float32)


def read_gallery(path_or_file: Any, ids: Optional[Iterable[int]] = None) -> list:
    """Read gallery records (all, or those of ``ids``; unknown ids are left out).

    Parameters
    ----------
    path_or_file : str, os.PathLike or h5py.File
    ids : iterable of int, optional

    Returns
    -------
    list of dict
        Records as :func:`gallery_record` returns them, plus ``residual``
        (images − model, or None), in the order of ``ids`` (default: by id).
        ``[]`` when the catalog has no ``/gallery``.

    Raises
    ------
    hpcblend.errors.CatalogError
        If ``/gallery`` is of a newer version, or the file cannot be read.
    """
    import h5py

    from hpcblend.errors import CatalogError

    if not isinstance(path_or_file, (h5py.File, h5py.Group)):
        path = os.fspath(path_or_file)
        if not os.path.exists(path):
            raise CatalogError(f"{path}: no such catalog")
        try:
            with h5py.File(path, "r") as f:
                return read_gallery(f, ids)
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read /gallery: {exc}") from exc
    f = path_or_file.file
    if "gallery" not in f:
        return []
    grp = f["gallery"]
    version = int(grp.attrs.get("gallery_version", 0))
    if version > GALLERY_VERSION:
        raise CatalogError(f"{f.filename}: /gallery has gallery_version {version}; this hpcblend reads "
                           f"<= {GALLERY_VERSION} (upgrade hpcblend)")
    names = [str(int(i)) for i in ids] if ids is not None else sorted(grp, key=int)
    out = []
    for name in names:
        if name not in grp:
            continue
        g = grp[name]
        images = _decode(g["images"])
        if "model" in g:
            model = _decode(g["model"])
            residual = images - model
        elif "residual" in g:
            residual = _decode(g["residual"])
            model = images - residual
        else:
            model = residual = None
        bands = str(g.attrs.get("bands", ""))
        out.append({
            "blend_id": int(g.attrs.get("blend_id", int(name))),
            "images": images, "model": model, "residual": residual,
            "child_boxes": g["child_boxes"][()].astype(np.int64),
            "child_bad": g["child_bad"][()].astype(bool),
            "bands": tuple(bands.split(",")) if bands else (),
            "reason": str(g.attrs.get("reason", "")),
            "noise_rms": np.asarray(g.attrs["noise_rms"]) if "noise_rms" in g.attrs else None,
            "footprint": g["footprint"][()].astype(bool) if "footprint" in g else None,
            "info": json.loads(g.attrs.get("info", "{}")),
        })
    return out


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
    its record; the callable runs only for blends that are kept (making a
    record rebuilds the model, about one fit iteration).

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
    >>> gallery.offer(row[0], lambda reason: gallery_record_from_result(blend, result, cfg, reason))  # doctest: +SKIP
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


def select_gallery_blends(blends: np.ndarray, n_failed: int = 20, n_flagged: int = 20,
                          n_slowest: int = 10) -> dict:
    """Which blends deserve a gallery record: failed, flagged and slowest.

    Parameters
    ----------
    blends : ndarray
        ``/blends`` rows (or a rank's buffered rows).
    n_failed : int
        At most this many failed blends (``flag_failed`` or non-empty
        ``error_type``), slowest first.
    n_flagged : int
        At most this many other flagged blends (any ``flag_*``), highest
        χ²/px first.
    n_slowest : int
        The slowest blends by ``t_total``.

    Returns
    -------
    dict of int -> str
        Blend id → reason (``"failed"``, ``"flagged"``, ``"slowest"``, or
        several joined by ``"; "``).
    """
    out: dict = {}
    if len(blends) == 0:
        return out
    failed = blends["flag_failed"] | (blends["error_type"] != b"")
    flagged = np.zeros(len(blends), dtype=bool)
    for c in blends.dtype.names:
        if c.startswith("flag_") and blends.dtype[c] == np.bool_:
            flagged |= blends[c]
    flagged &= ~failed
    t = blends["t_total"]
    chi = np.nan_to_num(blends["chi2_per_pixel"], nan=np.inf)

    def add(idx: np.ndarray, reason: str) -> None:
        for i in idx:
            bid = int(blends["id"][i])
            out[bid] = f"{out[bid]}; {reason}" if bid in out else reason

    fi = np.where(failed)[0]
    add(fi[np.argsort(-t[fi], kind="stable")][: max(n_failed, 0)], "failed")
    gi = np.where(flagged)[0]
    add(gi[np.argsort(-chi[gi], kind="stable")][: max(n_flagged, 0)], "flagged")
    add(np.argsort(-t, kind="stable")[: max(n_slowest, 0)], "slowest")
    return out


def records_from_inputs(catalog_path: str | os.PathLike, reasons: Mapping[int, str]) -> list:
    """Gallery records for blends of a finished catalog, re-deblended from their input files.

    For catalogs written without a gallery: each blend's ``source_file`` is
    read again and deblended with the catalog's ``/config`` deblend settings.
    Blends whose file cannot be read get no record.

    Parameters
    ----------
    catalog_path : str or os.PathLike
    reasons : dict of int -> str
        Blend id → reason (e.g. from :func:`select_gallery_blends`).

    Returns
    -------
    list of dict
        :func:`gallery_record` dicts (for :func:`write_gallery`).
    """
    from hpcblend.io.catalog import read_json_group, read_table
    from hpcblend.config import job_from_dict
    from hpcblend.deblend.deblender import deblend_blend
    from hpcblend.io.blends import read_blend

    blends = read_table(catalog_path, "blends")
    cfg = dict(read_json_group(catalog_path, "config"))
    base_dir = cfg.pop("base_dir", ".")
    job = job_from_dict(cfg, source=f"{os.fspath(catalog_path)}:/config", base_dir=base_dir)
    bands = job.input.bands
    rows = {int(r["id"]): r for r in blends}
    out = []
    for bid, reason in reasons.items():
        row = rows.get(int(bid))
        if row is None:
            continue
        path = row["source_file"].decode("utf-8", "replace")
        try:
            blend = read_blend(path, bands=tuple(bands) if bands else None, blend_id=int(bid))
        except Exception:  # noqa: BLE001 - unreadable input: no image to show
            continue
        try:
            result = deblend_blend(blend, job.deblend)
        except Exception as exc:  # noqa: BLE001 - shown as a failed blend without a model
            result = None
            info = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            info = {}
        out.append(gallery_record_from_result(blend, result, job.deblend, reason, info=info))
    return out
