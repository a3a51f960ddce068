"""Column layout of the run catalog's tables (``/blends``, ``/sources``, ``/patches``, ``/models``, units per column).

Fixed-width text columns hold at most :data:`ERROR_TYPE_BYTES`, :data:`ERROR_MESSAGE_BYTES`,
:data:`SOURCE_FILE_BYTES` or :data:`STATUS_BYTES` bytes of UTF-8; :func:`fixed_width_bytes` cuts a text to
its column (keeping the head of a message, the tail of a path).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import numpy as np

from hpcblend.io.tables import TableSpec
from hpcblend.io.versions import MODELS_VERSION

__all__ = ["DEFAULT_APERTURE_RADII", "radius_label", "forced_columns", "blend_spec", "source_spec", "patch_spec", "model_spec", "model_pixel_spec", "MODEL_CHUNK",
           "PARENT_FLAG_COLUMNS", "CHILD_FLAG_COLUMNS", "ERROR_TYPE_BYTES", "ERROR_MESSAGE_BYTES",
           "SOURCE_FILE_BYTES", "STATUS_BYTES", "fixed_width_bytes"]

#: Aperture radii (pixels) of the forced photometry when a job does not set ``measure.aperture_radii``:
#: 3, 6 and 12 px bracket the HSC PSF (FWHM ~3.5 px at 0.168"/px) from the core to a faint galaxy's extent.
DEFAULT_APERTURE_RADII: Tuple[float, ...] = (3.0, 6.0, 12.0)
#: Bytes of the ``error_type`` columns (the exception's class name).
ERROR_TYPE_BYTES: int = 64
#: Bytes of the ``error_message`` columns (the start of the exception's message).
ERROR_MESSAGE_BYTES: int = 256
#: Bytes of ``/blends.source_file`` (the end of the input's path: the file name survives).
SOURCE_FILE_BYTES: int = 256
#: Bytes of ``/patches.status``.
STATUS_BYTES: int = 16


def fixed_width_bytes(text: str, width: int, keep: str = "head") -> bytes:
    """``text`` as UTF-8 bytes cut to a fixed-width string column of ``width`` bytes.

    Parameters
    ----------
    text : str
        Encoded as UTF-8; characters that cannot be encoded (lone surrogates) become ``?``.
    width : int
        The column's width in bytes (:data:`ERROR_TYPE_BYTES`, :data:`ERROR_MESSAGE_BYTES`, ...).
    keep : {"head", "tail"}
        Keep the first ``width`` bytes (messages) or the last (paths, whose file name is at the end).
        The cut is on bytes, so a multi-byte character at the cut may be split, as numpy would store it.

    Returns
    -------
    bytes
        At most ``width`` bytes.

    Raises
    ------
    ValueError
        ``keep`` is neither ``"head"`` nor ``"tail"``.
    """
    data = str(text).encode("utf-8", "replace")
    if keep == "head":
        return data[:width]
    if keep == "tail":
        return data[-width:] if len(data) > width else data
    raise ValueError(f"keep must be 'head' or 'tail', got {keep!r}")

PARENT_FLAG_COLUMNS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large", "flag_not_converged",
                       "flag_failed", "flag_incomplete_data", "flag_footprint_truncated")
CHILD_FLAG_COLUMNS = ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero", "flag_isolated_unfitted")
MODEL_CHUNK = 256  # morphology pixels per /model_pixels row


@functools.lru_cache(maxsize=None)
def blend_spec() -> TableSpec:
    """``/blends``: one row per parent blend.

    ``n_peaks`` counts every peak given (one ``/sources`` row each); ``n_peaks_dropped`` (int64) how many of
    them were not fitted (duplicate, masked, outside the footprint or image: see the ``flag_peak_*`` columns
    of ``/sources``); ``n_sub_blends`` in how many independent groups its sources were fitted (1: in one
    piece, 0: not fitted; :mod:`hpcblend.deblend.subblends`). ``flag_bad_fit``: the fit ended with a χ²/pixel that is not finite or above
    ``deblend.max_chi2_per_pixel`` (config) (the model does not describe the data; its fluxes are
    not to be trusted). ``flag_incomplete_data``: more than 10 % of the footprint has zero weight in some
    band, in particular a band without any data (fitted on the other bands; that band's fluxes are NaN).
    Times in s; a tract patch measures its unfitted one-peak footprints together
    (:mod:`hpcblend.measure.isolated`), and each of their rows gets an equal share of that batch as
    ``t_measure`` and ``t_total``.
    """
    cols = [("id", "i8", ""), ("source_file", f"S{SOURCE_FILE_BYTES}", ""), ("n_peaks", "i8", ""),
            ("n_peaks_dropped", "i8", ""), ("n_sub_blends", "i4", ""),
            ("footprint_area", "i8", "pix"),
            ("bbox", ("i8", (4,)), "pix"), ("t_load", "f8", "s"), ("t_init", "f8", "s"), ("t_fit", "f8", "s"),
            ("t_measure", "f8", "s"), ("t_total", "f8", "s"), ("iterations", "i8", ""), ("converged", "?", ""),
            ("chi2_per_pixel", "f8", ""), ("tract", "i4", ""), ("patch", "i4", ""), ("isolated", "?", ""),
            ("primary", "?", ""), ("n_peaks_owned", "i8", "")]
    cols += [(f, "?", "") for f in PARENT_FLAG_COLUMNS + ("flag_bad_fit",)]
    cols += [("error_type", f"S{ERROR_TYPE_BYTES}", ""), ("error_message", f"S{ERROR_MESSAGE_BYTES}", ""),
             ("rank", "i4", "")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="blends", dtype=dtype, units={n: u for n, _, u in cols})


def source_spec(bands, tract: bool = False, radii: Optional[Sequence[float]] = None) -> TableSpec:
    """``/sources``: one row per child (peak), per-band fluxes in counts.

    Parameters
    ----------
    bands : sequence of str
    tract : bool
        Add the columns of tract runs: ``ra``, ``dec`` (deg), ``tract``,
        ``patch``, and the forced photometry of :func:`forced_columns`
        (prefixed ``forced_`` where a name would clash).
    radii : sequence of float, optional
        Aperture radii (pixels) of the forced photometry: the job's
        ``measure.aperture_radii``. Default: those of
        :func:`forced_columns`.

    Notes
    -----
    Peaks that are not fitted keep their row (``peak_x``, ``peak_y`` as given, even outside the image), with
    NaN fluxes, centroids and blendedness and one of: ``flag_peak_duplicate`` (same pixel as an earlier,
    kept peak of the blend, which gets ``flag_peak_merged``), ``flag_peak_masked`` (the peak pixel is bad in
    every band: a bad mask plane, or variance not finite or <= 0 — unless it is SAT in some band: a saturated
    star's core keeps its peak and is modelled), ``flag_peak_outside_footprint`` (outside
    the parent footprint, or outside the image). In a band without data (``flag_incomplete_data`` on the
    parent) ``flux_model_<b>``, ``flux_<b>`` and ``flux_err_<b>`` are NaN. ``flux_model_<b>`` is the fitted
    model's flux in band b inside the blend's frame (``a_kb Σ_px D_b * S_k``): the model-frame flux
    ``a_kb Σ S_k`` of DESIGN.md except for a child within the difference-kernel radius of the frame's edge,
    whose model light beyond the edge no data constrains.
    """
    # built once per (bands, tract, radii): a tract run asks for it once per footprint
    return _source_spec(tuple(str(b) for b in bands), bool(tract),
                        None if radii is None else tuple(float(r) for r in radii))


@functools.lru_cache(maxsize=64)
def _source_spec(bands: Tuple[str, ...], tract: bool, radii: Optional[Tuple[float, ...]]) -> TableSpec:
    """The spec of :func:`source_spec`, built once per arguments."""
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
        unit_map = {"count": "ct", "pixel": "pix", "pixel**2": "pix2", "": ""}
        forced = forced_columns(bands, radii) if radii else forced_columns(bands)
        for name, dt, unit in forced:
            if name in ("y", "x"):
                continue
            name = "forced_flags" if name == "flags" else name
            cols.append((name, np.dtype(dt).str, unit_map.get(unit, unit)))
    dtype = np.dtype([(n, t) for n, t, _ in cols])
    return TableSpec(name="sources", dtype=dtype, units={n: u for n, _, u in cols})


def radius_label(radius: float) -> str:
    """Column-name form of an aperture radius: ``3.0 -> "3"``, ``4.5 -> "4p5"``."""
    r = float(radius)
    if r == int(r):
        return str(int(r))
    return repr(r).replace(".", "p")


def forced_columns(bands: Sequence[str], radii: Sequence[float] = DEFAULT_APERTURE_RADII) -> List[Tuple[str, np.dtype, str]]:
    """The output columns of :func:`hpcblend.measure.forced.forced_photometry`: ``(name, dtype, unit)``.

    Columns, in order: ``y``, ``x`` (pixels, the positions measured at);
    per band ``b``: ``psf_flux_<b>``, ``psf_flux_err_<b>`` (counts),
    ``psf_flux_flag_<b>`` (bits ``FORCED_PSF_*``); per radius label ``r``
    (:func:`radius_label`) and band: ``ap_flux_<r>_<b>``,
    ``ap_flux_err_<r>_<b>`` (counts), ``ap_flux_flag_<r>_<b>`` (bits
    ``FORCED_AP_*``); then ``shape_xx``, ``shape_yy``, ``shape_xy``
    (pixels²), ``shape_x``, ``shape_y`` (pixels), ``shape_flux`` (counts),
    ``shape_n_iter``, ``shape_flag`` (``MOMENTS_*`` bits of
    :mod:`hpcblend.kernels.moments`), ``psf_shape_xx``, ``psf_shape_yy``,
    ``psf_shape_xy`` (pixels²), and ``flags`` (OR of all ``FORCED_*`` bits).
    """
    f8, i4 = np.dtype(np.float64), np.dtype(np.int32)
    cols = [("y", f8, "pixel"), ("x", f8, "pixel")]
    for b in bands:
        cols += [(f"psf_flux_{b}", f8, "count"), (f"psf_flux_err_{b}", f8, "count"),
                 (f"psf_flux_flag_{b}", i4, "")]
    for r in radii:
        lab = radius_label(r)
        for b in bands:
            cols += [(f"ap_flux_{lab}_{b}", f8, "count"), (f"ap_flux_err_{lab}_{b}", f8, "count"),
                     (f"ap_flux_flag_{lab}_{b}", i4, "")]
    cols += [("shape_xx", f8, "pixel**2"), ("shape_yy", f8, "pixel**2"), ("shape_xy", f8, "pixel**2"),
             ("shape_x", f8, "pixel"), ("shape_y", f8, "pixel"), ("shape_flux", f8, "count"),
             ("shape_n_iter", i4, ""), ("shape_flag", i4, ""),
             ("psf_shape_xx", f8, "pixel**2"), ("psf_shape_yy", f8, "pixel**2"),
             ("psf_shape_xy", f8, "pixel**2"), ("flags", i4, "")]
    return cols


@functools.lru_cache(maxsize=None)
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
            ("t_total", "f8", "s"), ("status", f"S{STATUS_BYTES}", ""), ("error_type", f"S{ERROR_TYPE_BYTES}", ""),
            ("error_message", f"S{ERROR_MESSAGE_BYTES}", ""), ("rank", "i4", "")]
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
    row-major). The child's model is the sum of its components. Format version
    :data:`hpcblend.io.versions.MODELS_VERSION` (attribute ``format_version``;
    version 1 tables are migrated by :func:`hpcblend.io.models.migrate_models`).
    """
    return _model_spec(tuple(str(b) for b in bands))


@functools.lru_cache(maxsize=64)
def _model_spec(bands: Tuple[str, ...]) -> TableSpec:
    """The spec of :func:`model_spec`, built once per arguments."""
    cols = [("id", "i8", ""), ("parent_id", "i8", ""), ("component", "i4", ""), ("y0", "i8", "pix"),
            ("x0", "i8", "pix"), ("height", "i4", "pix"), ("width", "i4", "pix"), ("sed", ("f4", (len(bands),)), "ct"),
            ("chunk0", "i4", ""), ("n_chunks", "i4", ""), ("model_psf_sigma", "f4", "pix")]
    dtype = np.dtype([(n, t) if not isinstance(t, tuple) else (n, t[0], t[1]) for n, t, _ in cols])
    return TableSpec(name="models", dtype=dtype, units={n: u for n, _, u in cols}, version=MODELS_VERSION)


@functools.lru_cache(maxsize=None)
def model_pixel_spec() -> TableSpec:
    """``/model_pixels``: morphology pixels of the stored models, :data:`MODEL_CHUNK` per row (row-major)."""
    dtype = np.dtype([("id", "i8"), ("chunk", "i4"), ("values", "f4", (MODEL_CHUNK,))])
    return TableSpec(name="model_pixels", dtype=dtype, units={}, version=MODELS_VERSION)
