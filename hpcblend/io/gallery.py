"""The ``/gallery`` groups of a catalog: per-blend image records written after a run, read by the report.

A record holds what the report needs to draw a blend without its input file:
the observed images, the observed model (convolved with the PSF), each
child's box and whether the child is bad. The driver makes records for
failed, flagged and slow blends (:func:`gallery_record` or
:func:`gallery_record_from_result`) and rank 0 appends them to the finished
catalog with :func:`write_gallery`; the report reads them with
:func:`read_gallery`.

HDF5 layout (``GALLERY_VERSION`` 1, :mod:`hpcblend.io.versions`)::

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

import json
import os
from typing import Any, Iterable, Mapping, Optional

import h5py
import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.catalog_read import append_group
from hpcblend.io.json_values import json_default
from hpcblend.io.versions import GALLERY_VERSION, check_version

__all__ = ["GALLERY_VERSION", "write_gallery", "read_gallery", "gallery_ids"]

_F16_RANGE = 1024.0  # float16 arrays are scaled so that max |x| = this


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
            g.attrs["info"] = json.dumps(rec.get("info") or {}, default=json_default)
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
        If ``/gallery`` is of a version this hpcblend does not read
        (:class:`~hpcblend.errors.SchemaVersionError`, naming the version), or
        the file cannot be read.
    """
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
    check_version("gallery", grp.attrs.get("gallery_version"), f.filename, "/gallery")
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
