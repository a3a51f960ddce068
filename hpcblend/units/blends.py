"""Work units from a collection of npz blend files: :class:`BlendsSource` (``input.kind: blends``).

One unit per file, expected cost the cost model's prediction from the file's peaks and footprint
area (read cheaply, without the pixels). A unit reads, deblends and measures its blend into one
``/blends`` row and one ``/sources`` row per peak; a blend that raises a data error becomes a
flagged row (``flag_failed``, exception class and message) and the run goes on.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

import numpy as np

from hpcblend.io.blends import DEFAULT_BANDS
from hpcblend.config import JobConfig
from hpcblend.deblend.deblender import deblend_blend, warm_up
from hpcblend.diagnostics.sampler import NullSampler
from hpcblend.errors import BlendDataError, InputError, is_programming_error
from hpcblend.io.blends import expand_inputs, id_from_stem, peek_blend, read_blend
from hpcblend.io.schema import SOURCE_FILE_BYTES, blend_spec, fixed_width_bytes, source_spec
from hpcblend.units.costmodel import unit_cost
from hpcblend.units.rows import (MAX_CHILD_PEAKS, child_id, fill_child_rows, fill_parent_row, flag_exception,
                                 nan_child_measurements, offer_to_gallery)
from hpcblend.units.source import WorkSource, WorkUnit

__all__ = ["BlendsSource", "process_blend_file", "blend_file_ids"]

#: Bands of a run whose job lists none and whose blend files cannot be read.


class BlendsSource(WorkSource):
    """npz blend files (``input.paths``: files, directories or globs), one work unit each.

    Parameters
    ----------
    job : JobConfig
    """

    unit_id_name = "/blends.id (a blend file's parent id)"

    def input_paths(self) -> list:
        """The job's input files, sorted (their position is the unit index).

        Raises
        ------
        InputError
            No file matches.
        """
        return expand_inputs(list(self.job.input.paths), base_dir=self.job.base_dir)

    def plan(self) -> list:
        """One unit per file: key the path relative to the job, cost :func:`~hpcblend.units.costmodel.unit_cost`.

        ``info`` holds the file's peek (``n_peaks``, ``footprint_area``, ...) and its ``blend_id``
        (:func:`blend_file_ids`).
        """
        model = self.cost_model()
        paths = self.input_paths()
        keys = [_unit_key(p, self.job.base_dir) for p in paths]
        units = []
        for i, (p, key, blend_id) in enumerate(zip(paths, keys, blend_file_ids(paths, keys))):
            info = peek_blend(p)
            info["blend_id"] = blend_id
            cost = unit_cost(model, "blend", n_peaks=info.get("n_peaks"), area=info.get("footprint_area"))
            units.append(WorkUnit(index=i, key=key, path=p, cost=cost, info=info))
        return units

    def catalog_bands(self, units) -> tuple:
        """The bands of the first readable blend file (:data:`DEFAULT_BANDS` if none is)."""
        for u in units:
            try:
                return tuple(read_blend(u.path, blend_id=u.info.get("blend_id", u.index + 1)).bands)
            except Exception as exc:  # noqa: BLE001 - a bad first file must not decide the run
                if is_programming_error(exc):
                    raise
                continue
        return DEFAULT_BANDS

    def tables(self, bands) -> list:
        """``/blends`` and ``/sources``."""
        return [blend_spec(), source_spec(bands)]

    def input_files(self, units) -> list:
        """The blend files."""
        return [u.path for u in units]

    def warm_up(self, bands, units) -> float:
        """The deblender's kernels (:func:`hpcblend.deblend.deblender.warm_up`)."""
        return warm_up()

    def process(self, unit: WorkUnit, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
        """``{"blends": row, "sources": rows}`` of one blend file (:func:`process_blend_file`)."""
        row, src = process_blend_file(unit.path, unit.index, self.job, bands, rank, sampler=sampler, gallery=gallery,
                                      parent_id=unit.info.get("blend_id"))
        return {"blends": row, "sources": src}

    def unit_failed(self, rows: dict) -> bool:
        """The ``/blends`` row has ``flag_failed`` (unreadable, bad data, or a deblender error)."""
        blends = rows.get("blends")
        return blends is not None and len(blends) > 0 and bool(np.all(blends["flag_failed"]))

    def unit_id(self, unit: WorkUnit) -> int:
        """The blend's parent id (``/blends.id``)."""
        return unit.info["blend_id"]


def _unit_key(path: str, base_dir: str) -> str:
    """Ledger key of a blend file: its path relative to the job's base directory."""
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir))
    except ValueError:  # different drive (Windows) – keep the absolute path
        return os.path.abspath(path)


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
    natural = [id_from_stem(p) for p in paths]
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
    row["source_file"] = fixed_width_bytes(path, SOURCE_FILE_BYTES, keep="tail")
    row["rank"] = rank
    row["id"] = parent_id
    t0 = time.perf_counter()
    peaks = None
    blend_read = None
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
        nan_child_measurements(src)
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
    """Ids, parent id and peaks (y, x) of a blend file's ``/sources`` rows (peak order)."""
    src["parent_id"] = parent_id
    for k in range(len(src)):
        src["id"][k] = child_id(unit_index, k)
        src["peak_index"][k] = k
        src["peak_y"][k] = peaks[k, 0]
        src["peak_x"][k] = peaks[k, 1]
