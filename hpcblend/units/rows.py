"""Catalog rows of a work unit: a deblending result copied into ``/blends`` and ``/sources`` rows, failure rows, ids.

Both work sources (:mod:`hpcblend.units.blends`, :mod:`hpcblend.units.tract`) make their rows with
these helpers, so a parent that failed or was skipped looks the same in a blend-file run and in a
tract run: the exception's class and message on the ``/blends`` row (:func:`flag_exception`), NaN
measurements on its children (:func:`nan_child_measurements`) and the flag that says why.
"""

from __future__ import annotations

import numpy as np

from hpcblend.diagnostics.gallery import gallery_record_from_result
from hpcblend.errors import BlendDataError
from hpcblend.io.schema import ERROR_MESSAGE_BYTES, ERROR_TYPE_BYTES, fixed_width_bytes
from hpcblend.io.blends import PEAK_DROPPED, PEAK_DUPLICATE, PEAK_MASKED, PEAK_MERGED, PEAK_OUTSIDE_FOOTPRINT

__all__ = ["error_columns", "flag_exception", "fill_parent_row", "fill_child_rows", "nan_child_measurements", "nan_float_columns",
           "child_id", "CHILD_PEAK_BITS", "MAX_CHILD_PEAKS", "offer_to_gallery"]

#: Bits of a blend-file child id that hold the peak index + 1 (see :func:`child_id`).
CHILD_PEAK_BITS = 16
#: Most peaks a blend file may have for its children to get ids.
MAX_CHILD_PEAKS = (1 << CHILD_PEAK_BITS) - 2


def error_columns(row, error_type: str, error_message: str) -> None:
    """Write an error's class name and message into a row's ``error_type`` / ``error_message`` (cut to their widths)."""
    row["error_type"] = fixed_width_bytes(error_type, ERROR_TYPE_BYTES)
    row["error_message"] = fixed_width_bytes(error_message, ERROR_MESSAGE_BYTES)


def flag_exception(row, exc: BaseException) -> None:
    """Mark a ``/blends`` row (shape (1,)) failed with the exception's class and message (truncated to the columns)."""
    row["flag_failed"] = True
    error_columns(row, type(exc).__name__, str(exc))


def fill_parent_row(row, result) -> None:
    """Copy a :class:`hpcblend.deblend.deblender.DeblendResult`'s times (s), iterations, χ², flags and error into a
    ``/blends`` row (shape (1,))."""
    row["t_init"] = result.t_init
    row["t_fit"] = result.t_fit
    row["t_measure"] = result.t_measure
    row["iterations"] = result.iterations
    row["converged"] = result.converged
    row["chi2_per_pixel"] = result.chi2_per_pixel
    row["n_sub_blends"] = result.n_sub_blends
    for f, v in result.flags.items():
        row[f] = v
    error_columns(row, result.error_type, result.error_message)


def nan_child_measurements(src) -> None:
    """Set the measurements of children without a model to NaN: every ``flux*`` column, ``x``, ``y``, ``blendedness``.

    Parameters
    ----------
    src : ndarray, shape (K,), dtype of :func:`hpcblend.io.schema.source_spec`
        Modified in place.
    """
    for n in src.dtype.names:
        if n.startswith("flux") or n in ("x", "y", "blendedness"):
            src[n] = np.nan


def nan_float_columns(rows, names=None) -> None:
    """Set the floating-point columns of ``rows`` among ``names`` (default: all) to NaN (not yet measured)."""
    for n in rows.dtype.names if names is None else names:
        if rows.dtype[n].kind == "f":
            rows[n] = np.nan


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
    nan_child_measurements(src)
    skipped = result.flags.get("flag_skipped_too_many_peaks") or result.flags.get("flag_skipped_too_large")
    src["flag_parent_skipped"] = bool(skipped)
    src["flag_parent_failed"] = bool(result.flags.get("flag_failed"))


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


def offer_to_gallery(gallery, row, blend, result, job) -> None:
    """Offer a finished blend to the failure gallery (a record is made only if it is kept).

    Parameters
    ----------
    gallery : hpcblend.diagnostics.gallery.GalleryCollector
    row : ndarray, shape (1,)
        The blend's ``/blends`` row.
    blend : hpcblend.io.blends.BlendData
    result : hpcblend.deblend.deblender.DeblendResult or None
        None when the deblender raised.
    job : hpcblend.config.JobConfig
    """
    gallery.offer(row[0], lambda reason: gallery_record_from_result(blend, result, reason))
