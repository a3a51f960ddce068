"""Column layout of the run catalog's ``/blends`` and ``/sources`` tables (units per column)."""

from __future__ import annotations

import numpy as np

from hpcblend.io.catalog import TableSpec

__all__ = ["blend_spec", "source_spec", "patch_spec", "model_spec", "model_pixel_spec", "MODEL_CHUNK",
           "PARENT_FLAG_COLUMNS", "CHILD_FLAG_COLUMNS"]

PARENT_FLAG_COLUMNS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large", "flag_not_converged",
                       "flag_failed", "flag_incomplete_data", "flag_footprint_truncated")
CHILD_FLAG_COLUMNS = ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero", "flag_isolated_unfitted")
MODEL_CHUNK = 256  # morphology pixels per /model_pixels row


def blend_spec() -> TableSpec:
    """``/blends``: one row per parent blend.

    ``n_peaks`` counts every peak given (one ``/sources`` row each); ``n_peaks_dropped`` (int64) how many of
    them were not fitted (duplicate, masked, outside the footprint or image: see the ``flag_peak_*`` columns
    of ``/sources``). ``flag_bad_fit``: the fit ended with a χ²/pixel that is not finite or above
    ``deblend.max_chi2_per_pixel`` (config) (the model does not describe the data; its fluxes are
    not to be trusted). ``flag_incomplete_data``: more than 10 % of the footprint has zero weight in some
    band, in particular a band without any data (fitted on the other bands; that band's fluxes are NaN).
    """
    cols = [("id", "i8", ""), ("source_file", "S256", ""), ("n_peaks", "i8", ""), ("n_peaks_dropped", "i8", ""),
            ("footprint_area", "i8", "pix"),
            ("bbox", ("i8", (4,)), "pix"), ("t_load", "f8", "s"), ("t_init", "f8", "s"), ("t_fit", "f8", "s"),
            ("t_measure", "f8", "s"), ("t_total", "f8", "s"), ("iterations", "i8", ""), ("converged", "?", ""),
            ("chi2_per_pixel", "f8", ""), ("tract", "i4", ""), ("patch", "i4", ""), ("isolated", "?", ""),
            ("primary", "?", ""), ("n_peaks_owned", "i8", "")]
    cols += [(f, "?", "") for f in PARENT_FLAG_COLUMNS + ("flag_bad_fit",)]
    cols += [("error_type", "S64", ""), ("error_message", "S256", ""), ("rank", "i4", "")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="blends", dtype=dtype, units={n: u for n, _, u in cols})


def source_spec(bands, tract: bool = False, radii=None) -> TableSpec:
    """``/sources``: one row per child (peak), per-band fluxes in counts.

    Parameters
    ----------
    bands : sequence of str
    tract : bool
        Add the columns of tract runs: ``ra``, ``dec`` (deg), ``tract``,
        ``patch``, and the forced photometry of :func:`hpcblend.measure.forced.forced_columns`
        (prefixed ``forced_`` where a name would clash).
    radii : sequence of float, optional
        Aperture radii (pixels) of the forced photometry.

    Notes
    -----
    Peaks that are not fitted keep their row (``peak_x``, ``peak_y`` as given, even outside the image), with
    NaN fluxes, centroids and blendedness and one of: ``flag_peak_duplicate`` (same pixel as an earlier,
    kept peak of the blend, which gets ``flag_peak_merged``), ``flag_peak_masked`` (the peak pixel is bad in
    every band: a bad mask plane, or variance not finite or <= 0), ``flag_peak_outside_footprint`` (outside
    the parent footprint, or outside the image). In a band without data (``flag_incomplete_data`` on the
    parent) ``flux_model_<b>``, ``flux_<b>`` and ``flux_err_<b>`` are NaN.
    """
    cols = [("id", "i8", ""), ("parent_id", "i8", ""), ("peak_index", "i4", ""), ("peak_x", "i8", "pix"),
            ("peak_y", "i8", "pix"), ("x", "f8", "pix"), ("y", "f8", "pix")]
    if tract:
        cols += [("ra", "f8", "deg"), ("dec", "f8", "deg"), ("tract", "i4", ""), ("patch", "i4", "")]
    for b in bands:
        cols += [(f"flux_model_{b}", "f8", "ct"), (f"flux_{b}", "f8", "ct"), (f"flux_err_{b}", "f8", "ct")]
    cols += [("blendedness", "f8", "")]
    cols += [(f, "?", "") for f in CHILD_FLAG_COLUMNS + ("flag_peak_duplicate", "flag_peak_merged",
                                                        "flag_peak_masked", "flag_peak_outside_footprint")]
    if tract:
        from hpcblend.measure.forced import forced_columns

        unit_map = {"count": "ct", "pixel": "pix", "pixel**2": "pix2", "": ""}
        for name, dt, unit in forced_columns(bands, radii or (3.0, 6.0, 12.0)):
            if name in ("y", "x"):
                continue
            name = "forced_flags" if name == "flags" else name
            cols.append((name, np.dtype(dt).str, unit_map.get(unit, unit)))
    dtype = np.dtype([(n, t) for n, t, _ in cols])
    return TableSpec(name="sources", dtype=dtype, units={n: u for n, _, u in cols})


def patch_spec() -> TableSpec:
    """``/patches``: one row per patch of a tract run (times in seconds, boxes (y0, x0, h, w) in tract pixels).

    ``n_bad_pixels`` (int64): pixels of the patch's outer box masked on reading, summed over bands — image not
    finite, or variance not finite or <= 0, where the coadd's ``NO_DATA`` bit was clear
    (:func:`hpcblend.io.coadd.read_patch` sets ``NO_DATA`` on them); 0 for a patch that failed on reading.
    """
    cols = [("id", "i8", ""), ("tract", "i4", ""), ("patch", "i4", ""), ("patch_y", "i4", ""), ("patch_x", "i4", ""),
            ("inner_bbox", ("i8", (4,)), "pix"), ("outer_bbox", ("i8", (4,)), "pix"),
            ("n_footprints", "i8", ""), ("n_blends", "i8", ""), ("n_isolated", "i8", ""), ("n_sources", "i8", ""),
            ("n_bad_pixels", "i8", ""),
            ("t_load", "f8", "s"), ("t_detect", "f8", "s"), ("t_deblend", "f8", "s"), ("t_measure", "f8", "s"),
            ("t_total", "f8", "s"), ("status", "S16", ""), ("error_type", "S64", ""), ("error_message", "S256", ""),
            ("rank", "i4", "")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="patches", dtype=dtype, units={n: u for n, _, u in cols})


def model_spec(bands) -> TableSpec:
    """``/models``: one row per child with a stored deblended model ("deblendedModel").

    One row per *component* (a bright child has two: halo 0 and core 1). A
    component's model at the model PSF is ``sed[b] * morph`` on its box
    (``y0``, ``x0``, ``height``, ``width``; parent frame: tract pixels for
    tract runs, the blend's own pixels otherwise); the morphology's pixels
    are the ``/model_pixels`` rows of this id with ``chunk`` in
    ``[chunk0, chunk0 + n_chunks)`` (:data:`MODEL_CHUNK` values each,
    row-major). The child's model is the sum of its components.
    """
    cols = [("id", "i8", ""), ("parent_id", "i8", ""), ("component", "i4", ""), ("y0", "i8", "pix"),
            ("x0", "i8", "pix"), ("height", "i4", "pix"), ("width", "i4", "pix"), ("sed", ("f4", (len(bands),)), "ct"),
            ("chunk0", "i4", ""), ("n_chunks", "i4", ""), ("model_psf_sigma", "f4", "pix")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="models", dtype=dtype, units={n: u for n, _, u in cols})


def model_pixel_spec() -> TableSpec:
    """``/model_pixels``: morphology pixels of the stored models, :data:`MODEL_CHUNK` per row (row-major)."""
    dtype = np.dtype([("id", "i8"), ("chunk", "i4"), ("values", "f4", (MODEL_CHUNK,))])
    return TableSpec(name="model_pixels", dtype=dtype, units={})
