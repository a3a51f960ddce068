"""Column layout of the run catalog's ``/blends`` and ``/sources`` tables (units per column)."""

from __future__ import annotations

import numpy as np

from .catalog import TableSpec

__all__ = ["blend_spec", "source_spec", "PARENT_FLAG_COLUMNS", "CHILD_FLAG_COLUMNS"]

PARENT_FLAG_COLUMNS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large", "flag_not_converged",
                       "flag_failed", "flag_incomplete_data")
CHILD_FLAG_COLUMNS = ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero")


def blend_spec() -> TableSpec:
    """``/blends``: one row per parent blend."""
    cols = [("id", "i8", ""), ("source_file", "S256", ""), ("n_peaks", "i8", ""), ("footprint_area", "i8", "pix"),
            ("bbox", ("i8", (4,)), "pix"), ("t_load", "f8", "s"), ("t_init", "f8", "s"), ("t_fit", "f8", "s"),
            ("t_measure", "f8", "s"), ("t_total", "f8", "s"), ("iterations", "i8", ""), ("converged", "?", ""),
            ("chi2_per_pixel", "f8", "")]
    cols += [(f, "?", "") for f in PARENT_FLAG_COLUMNS]
    cols += [("error_type", "S64", ""), ("error_message", "S256", ""), ("rank", "i4", "")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="blends", dtype=dtype, units={n: u for n, _, u in cols})


def source_spec(bands) -> TableSpec:
    """``/sources``: one row per child (peak), per-band fluxes in counts."""
    cols = [("id", "i8", ""), ("parent_id", "i8", ""), ("peak_index", "i4", ""), ("peak_x", "i8", "pix"),
            ("peak_y", "i8", "pix"), ("x", "f8", "pix"), ("y", "f8", "pix")]
    for b in bands:
        cols += [(f"flux_model_{b}", "f8", "ct"), (f"flux_{b}", "f8", "ct"), (f"flux_err_{b}", "f8", "ct")]
    cols += [("blendedness", "f8", "")]
    cols += [(f, "?", "") for f in CHILD_FLAG_COLUMNS]
    dtype = np.dtype([(n, t) for n, t, _ in cols])
    return TableSpec(name="sources", dtype=dtype, units={n: u for n, _, u in cols})
