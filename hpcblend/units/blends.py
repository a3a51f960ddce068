"""One work unit (a blend file) → catalog rows, with failure isolation.

A blend that raises becomes a flagged row (``flag_failed``, exception class
and message); the run goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import numpy as np

from hpcblend.config import JobConfig
from hpcblend.deblend.deblender import deblend_blend
from hpcblend.errors import BlendDataError, InputError, is_programming_error
from hpcblend.io.blends import (PEAK_DROPPED, PEAK_DUPLICATE, PEAK_MASKED, PEAK_MERGED, PEAK_OUTSIDE_FOOTPRINT, _id_from_stem,
                     peek_blend, read_blend)
from hpcblend.io.schema import blend_spec, source_spec

__all__ = ["process_unit", "process_blend_file", "blend_file_ids", "unit_failed", "child_id", "flag_exception",
           "fill_parent_row", "fill_child_rows", "offer_to_gallery"]


def flag_exception(row, exc: BaseException) -> None:
    """Mark a ``/blends`` row (shape (1,)) failed with the exception's class and message (truncated to the columns)."""
    row["flag_failed"] = True
    row["error_type"] = type(exc).__name__.encode()[:64]
    row["error_message"] = str(exc).encode("utf-8", "replace")[:256]


def fill_parent_row(row, result) -> None:
    """Copy a :class:`hpcblend.deblend.deblender.DeblendResult`'s times (s), iterations, χ², flags and error into a
    ``/blends`` row (shape (1,))."""
    row["t_init"] = result.t_init
    row["t_fit"] = result.t_fit
    row["t_measure"] = result.t_measure
    row["iterations"] = result.iterations
    row["converged"] = result.converged
    row["chi2_per_pixel"] = result.chi2_per_pixel
    for f, v in result.flags.items():
        row[f] = v
    row["error_type"] = result.error_type.encode()[:64]
    row["error_message"] = result.error_message.encode("utf-8", "replace")[:256]


def fill_child_rows(src, result, origin, bands) -> None:
    """Copy a result's child measurements into ``/sources`` rows (one per peak, peak order).

    Parameters
    ----------
    src : ndarray, shape (K,), dtype of :func:`hpcblend.io.schema.source_spec`
    result : hpcblend.deblend.deblender.DeblendResult
    origin : (int, int)
        (y0, x0) of the blend's pixel [0, 0] in the catalog's frame; centroids are shifted by it (pixels).
    bands : sequence of str

    Notes
    -----
    Without children (skipped or failed blends) the fluxes, centroids and
    blendedness become NaN and ``flag_parent_skipped`` / ``flag_parent_failed``
    say why. The ``flag_peak_*`` columns come from ``result.peak_flags``
    (peaks the deblender did not fit; their measurements are NaN, and
    ``flag_model_zero`` is left False for them) either way.
    """
    pf = getattr(result, "peak_flags", None)
    pf = np.zeros(len(src), dtype=np.int32) if pf is None or len(pf) != len(src) else np.asarray(pf)
    if "flag_peak_duplicate" in src.dtype.names:
        src["flag_peak_duplicate"] = (pf & PEAK_DUPLICATE) != 0
        src["flag_peak_merged"] = (pf & PEAK_MERGED) != 0
        src["flag_peak_masked"] = (pf & PEAK_MASKED) != 0
        src["flag_peak_outside_footprint"] = (pf & PEAK_OUTSIDE_FOOTPRINT) != 0
    ch = result.children
    if ch:
        src["x"] = ch["x"] + origin[1]
        src["y"] = ch["y"] + origin[0]
        for i, b in enumerate(bands):
            src[f"flux_model_{b}"] = ch["flux_model"][:, i]
            src[f"flux_{b}"] = ch["flux"][:, i]
            src[f"flux_err_{b}"] = ch["flux_err"][:, i]
        src["blendedness"] = ch["blendedness"]
        src["flag_model_zero"] = ~ch["alive"] & ((pf & PEAK_DROPPED) == 0)
        return
    for n in src.dtype.names:
        if n.startswith("flux") or n in ("x", "y", "blendedness"):
            src[n] = np.nan
    skipped = result.flags.get("flag_skipped_too_many_peaks") or result.flags.get("flag_skipped_too_large")
    src["flag_parent_skipped"] = bool(skipped)
    src["flag_parent_failed"] = bool(result.flags.get("flag_failed"))


def offer_to_gallery(gallery, row, blend, result, job) -> None:
    """Offer a finished blend to the failure gallery (a record is made only if it is kept)."""
    from hpcblend.diagnostics.gallery import gallery_record_from_result

    gallery.offer(row[0], lambda reason: gallery_record_from_result(blend, result, job.deblend, reason))


def process_unit(unit, job: JobConfig, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
    """Process one work unit into catalog rows.

    Parameters
    ----------
    unit : hpcblend.parallel.driver.WorkUnit
    job : JobConfig
    bands : tuple of str
    rank : int
    sampler : hpcblend.diagnostics.sampler.StackSampler, optional
        Stage tags (load, detect, init, fit, measure) for the call-stack sampler.
    gallery : hpcblend.diagnostics.gallery.GalleryCollector, optional
        Offered every blend, keeps image records of failed, flagged and slow ones.

    Returns
    -------
    dict of str -> ndarray
        Rows per catalog table (``"blends"``, ``"sources"``).
    """
    from hpcblend.diagnostics.sampler import NullSampler

    sampler = sampler or NullSampler()
    if unit.kind == "blend":
        row, src = process_blend_file(unit.path, unit.index, job, bands, rank, sampler=sampler, gallery=gallery,
                                      parent_id=unit.info.get("blend_id"))
        return {"blends": row, "sources": src}
    if unit.kind == "patch":
        from hpcblend.units.tract import process_patch

        return process_patch(unit, job, bands, rank, sampler=sampler, gallery=gallery)
    raise ValueError(f"unknown work unit kind {unit.kind!r}")


#: Bits of a blend-file child id that hold the peak index + 1 (see :func:`child_id`).
CHILD_PEAK_BITS = 16
#: Most peaks a blend file may have for its children to get ids.
MAX_CHILD_PEAKS = (1 << CHILD_PEAK_BITS) - 2


def unit_failed(tables: dict) -> bool:
    """Whether a unit's rows say the unit failed as a whole (``--resume`` retries such units).

    A patch failed when its ``/patches`` row has ``status = failed``; a blend
    file failed when its ``/blends`` row has ``flag_failed`` (unreadable,
    bad data, or a deblender error).

    Parameters
    ----------
    tables : dict of str -> ndarray
        The unit's rows per table (:func:`process_unit`).

    Returns
    -------
    bool
    """
    patches = tables.get("patches")
    if patches is not None:
        return bool(len(patches)) and bool(np.any(patches["status"] == b"failed"))
    blends = tables.get("blends")
    return blends is not None and len(blends) > 0 and bool(np.all(blends["flag_failed"]))


def child_id(unit_index: int, peak_index: int) -> int:
    """Child id of a blend-file run: ``(unit_index + 1) << 16 | (peak_index + 1)``.

    ``unit_index`` is the unit's position in the sorted input list, so ids do
    not depend on which rank ran the unit.

    Raises
    ------
    BlendDataError
        ``peak_index + 1`` does not fit 16 bits (more than
        :data:`MAX_CHILD_PEAKS` peaks), or ``unit_index + 1`` does not fit 46
        bits: the id would collide with another child's.
    """
    unit_index, peak_index = int(unit_index), int(peak_index)
    if not 0 <= peak_index <= MAX_CHILD_PEAKS:
        raise BlendDataError(f"peak index {peak_index} does not fit the {CHILD_PEAK_BITS} bits of a child id "
                             f"(at most {MAX_CHILD_PEAKS + 1} peaks per blend file)")
    if not 0 <= unit_index < (1 << 46) - 1:
        raise BlendDataError(f"unit index {unit_index} does not fit the 46 bits of a child id")
    return ((unit_index + 1) << CHILD_PEAK_BITS) | (peak_index + 1)


def blend_file_ids(paths, keys) -> list:
    """Parent ids of a blend-file run, one per input file, unique and independent of ranks.

    A file whose name stem is a non-negative integer (``12345.npz``, the
    HSC object id) keeps that id — even when the file cannot be read, so a
    failed blend's row names the same object. A file whose stem is not an
    integer, or whose integer stem occurs more than once in the run (the same
    name in two ``set*/`` folders), gets an id derived from its unit key (the
    path relative to the job's base directory): the first 61 bits of the
    BLAKE2b hash of the key with bit 61 set, a range that no HSC object id
    reaches; it depends only on the file's path, not on the running number.

    Parameters
    ----------
    paths : sequence of str
        Input files, in unit order.
    keys : sequence of str
        Their unit keys (same order).

    Returns
    -------
    list of int

    Raises
    ------
    InputError
        Two files would get the same id (a hash collision, or an integer stem
        equal to another file's derived id): the message names both files.
    """
    natural = [_id_from_stem(p) for p in paths]
    count = Counter(n for n in natural if n is not None)
    ids = []
    for p, key, n in zip(paths, keys, natural):
        if n is not None and count[n] == 1:
            ids.append(n)
        else:
            digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
            ids.append((1 << 61) | (digest & ((1 << 61) - 1)))
    seen = {}
    for p, i in zip(paths, ids):
        if i in seen:
            raise InputError(f"{p}: parent id {i} is also the id of {seen[i]}; rename one of the files")
        seen[i] = p
    return ids


def process_blend_file(path: str, unit_index: int, job: JobConfig, bands, rank: int = 0, sampler=None,
                       gallery=None, parent_id: int | None = None):
    """Read, deblend and measure one npz blend.

    Parameters
    ----------
    path : str
        npz blend file.
    unit_index : int
        Position of the file in the sorted input list (for child ids).
    job : JobConfig
    bands : tuple of str
        Catalog bands; a blend with another band count becomes a flagged row.
    rank : int
        MPI rank, recorded in the row.
    sampler : hpcblend.diagnostics.sampler.StackSampler, optional
        Stage tags for the call-stack sampler.
    gallery : hpcblend.diagnostics.gallery.GalleryCollector, optional
        Offered the finished blend (image records of failed, flagged, slow blends).
    parent_id : int, optional
        The parent's id (:func:`blend_file_ids`); default: from the file alone.

    Returns
    -------
    blend_rows : ndarray, shape (1,), dtype of :func:`hpcblend.io.schema.blend_spec`
    source_rows : ndarray, shape (K,), dtype of :func:`hpcblend.io.schema.source_spec`

    Raises
    ------
    Exception
        A programming error (:func:`hpcblend.errors.is_programming_error`) is
        re-raised, never turned into a row; every other error of the blend
        becomes a row with ``flag_failed``, the exception's class and message.
    """
    bspec, sspec = blend_spec(), source_spec(bands)
    if parent_id is None:
        parent_id = blend_file_ids([path], [path])[0]
    row = np.zeros(1, dtype=bspec.dtype)
    row["chi2_per_pixel"] = np.nan
    row["source_file"] = path.encode()[-256:]
    row["rank"] = rank
    row["id"] = parent_id
    t0 = time.perf_counter()
    peaks = None
    blend_read = None
    from hpcblend.diagnostics.sampler import NullSampler

    sampler = sampler or NullSampler()
    try:
        with sampler.stage("load", parent_id):
            blend = read_blend(path, bands=tuple(bands), blend_id=parent_id)
        blend.id = parent_id
        blend_read = blend
        peaks = blend.peaks
        t1 = time.perf_counter()
        row["t_load"] = t1 - t0
        row["n_peaks"] = blend.n_peaks
        row["footprint_area"] = blend.footprint_area
        row["bbox"] = [blend.origin[0], blend.origin[1], blend.shape[0], blend.shape[1]]
        if blend.n_peaks > MAX_CHILD_PEAKS + 1:
            raise BlendDataError(f"{path}: key 'centers': {blend.n_peaks} peaks; child ids hold at most "
                                 f"{MAX_CHILD_PEAKS + 1} per blend file")
        with sampler.stage("init", parent_id):
            result = deblend_blend(blend, job.deblend, sampler=sampler)
    except Exception as exc:  # one bad blend is a flagged row, never a crashed run
        if is_programming_error(exc):
            raise
        flag_exception(row, exc)
        row["t_total"] = time.perf_counter() - t0
        if peaks is None:
            info = peek_blend(path)
            k = int(info.get("n_peaks") or 0)
            row["n_peaks"] = k
            peaks = np.full((k, 2), -1, dtype=np.int64)
        if len(peaks) > MAX_CHILD_PEAKS + 1:
            peaks = peaks[:0]  # no child ids to give: the parent row says why
        src = np.zeros(len(peaks), dtype=sspec.dtype)
        _fill_ids(src, parent_id, unit_index, peaks)
        for n in src.dtype.names:
            if n.startswith("flux") or n in ("x", "y", "blendedness"):
                src[n] = np.nan
        src["flag_parent_failed"] = True
        if gallery is not None and blend_read is not None:
            offer_to_gallery(gallery, row, blend_read, None, job)
        return row, src
    fill_parent_row(row, result)
    src = np.zeros(blend.n_peaks, dtype=sspec.dtype)
    _fill_ids(src, parent_id, unit_index, blend.peaks)
    fill_child_rows(src, result, blend.origin, bands)
    row["t_total"] = time.perf_counter() - t0
    if gallery is not None:
        offer_to_gallery(gallery, row, blend, result, job)
    return row, src


def _fill_ids(src, parent_id, unit_index, peaks):
    src["parent_id"] = parent_id
    for k in range(len(src)):
        src["id"][k] = child_id(unit_index, k)
        src["peak_index"][k] = k
        src["peak_y"][k] = peaks[k, 0]
        src["peak_x"][k] = peaks[k, 1]
