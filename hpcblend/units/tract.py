"""Work units from a coadd tract cut into patches: :class:`TractSource` (``input.kind: tract``); one patch → rows.

A patch is loaded, detected, deblended and measured (the measurements beyond the deblender's own are
:mod:`hpcblend.measure.patch`); this module decides which footprints and which children a patch
writes and makes their rows.

Ownership (no source written twice, none lost at a patch edge): every
footprint is detected on the patch's *outer* box; a child is written by the
patch whose *inner* box holds its peak (:meth:`hpcblend.skymap.PatchInfo.owns`).
A footprint whose peaks are shared between two patches is deblended in both
(with all its peaks, so the models are right) and each patch writes only the
children it owns; each writes its own ``/blends`` row (``n_peaks_owned``,
``primary`` True in the patch owning the brightest peak), so runtime per
patch is accounted exactly and ``primary`` rows count physical blends once.

Unfitted isolated footprints (one peak, ``detect.fit_isolated`` false: 85 % of a tract's parents) are
not deblended one by one: the patch measures them all together after the blends
(:mod:`hpcblend.measure.isolated`, one compiled call), and the rows are put back in detection order.

Ids (:func:`hpcblend.skymap.encode_id`): tract, patch and a running number —
``(n << 12)`` for the n-th owned footprint (1-based, detection order) and
``(n << 12) | (k + 1)`` for its peak k — so they do not depend on ranks.

Failure policy: bad data become masked pixels or flagged rows, never a lost
patch. Bad pixels of a coadd (non-finite image, variance not finite or <= 0,
without ``NO_DATA``) are masked on reading (:func:`hpcblend.io.coadd.read_patch`)
and counted in the patch row's ``n_bad_pixels``; the blends that touch them
are deblended with those pixels at zero weight. A data error in one blend
becomes a flagged row; a data error of the patch itself (unreadable file, a
band with no usable pixel in the outer box, detection error) becomes a
``/patches`` row with ``status = failed`` and the exception, and the run goes
on. A programming error (:func:`hpcblend.errors.is_programming_error`:
``TypeError``, ``AttributeError``, ...) is never turned into a row: it
propagates and stops the job.
"""

from __future__ import annotations

import os
import time

import numpy as np

from hpcblend.io.blends import DEFAULT_BANDS
from hpcblend.config import JobConfig
from hpcblend.deblend.deblender import deblend_blend, warm_up
from hpcblend.deblend.observation import DifferenceKernels
from hpcblend.detect import detect_footprints, detection_image, estimate_background, footprint_to_blend
from hpcblend.diagnostics.sampler import NullSampler
from hpcblend.errors import HpcblendError, is_programming_error
from hpcblend.geometry import Box, grow_boxes
from hpcblend.io.masks import mask_bits
from hpcblend.io.coadd import check_tract, read_box, read_patch, read_tract_shape, tract_paths
from hpcblend.io.models import pack_models
from hpcblend.io.schema import blend_spec, model_pixel_spec, model_spec, patch_spec, source_spec
from hpcblend.measure.forced import forced_photometry
from hpcblend.measure.isolated import measure_isolated_footprints, warm_up_isolated
from hpcblend.measure.patch import forced_on_patch, sky_coordinates, warm_up_measure
from hpcblend.skymap import encode_id, make_patches
from hpcblend.units.costmodel import unit_cost
from hpcblend.units.rows import error_columns, fill_child_rows, fill_parent_row, flag_exception, nan_float_columns, offer_to_gallery
from hpcblend.units.source import WorkSource, WorkUnit

__all__ = ["TractSource", "process_patch", "patch_tables", "warm_up_tract"]

#: A footprint's children's models up to this size (bytes, float32 (K, B, h, w)) are rendered at once for its
#: forced photometry (vectorised: the common small parent); above it, one child at a time, so that a large
#: parent's K models are never held together.
DENSE_CHILD_MODELS_BYTES = 64_000_000
#: Bits of a tract id's running number that hold the peak index + 1 (the footprint's number above them).
_PEAK_BITS = 12


class TractSource(WorkSource):
    """A coadd tract (``input.tract_dir``: ``coadd_<band>.fits``, ``psf_<band>.fits``) cut into patches, one unit each.

    Parameters
    ----------
    job : JobConfig
    """

    unique_id_tables = ("patches", "blends", "sources")
    unit_id_name = "/patches.id"

    @property
    def tract_dir(self) -> str:
        """The job's tract directory, absolute (relative to the job's base directory)."""
        d = self.job.input.tract_dir
        return d if os.path.isabs(d) else os.path.normpath(os.path.join(self.job.base_dir, d))

    def plan(self) -> list:
        """One unit per patch (index the patch number), expected cost :func:`~hpcblend.units.costmodel.unit_cost`.

        Every band's headers, WCS and PSF are checked first (:func:`hpcblend.io.coadd.check_tract`),
        before any patch runs.
        """
        d = self.tract_dir
        inp = self.job.input
        shape = check_tract(d, inp.bands)
        patches = make_patches(shape, inp.patch_inner_size, inp.patch_overlap, tract=inp.tract)
        model = self.cost_model()
        return [WorkUnit(index=p.flat, key=f"tract {p.tract} patch {p.name}", path=d,
                         cost=unit_cost(model, "patch", area=p.outer.area), kind="patch", info={"patch": p})
                for p in patches]

    def catalog_bands(self, units) -> tuple:
        """Every band with a coadd in the tract directory."""
        return tuple(tract_paths(self.tract_dir).bands)

    def tables(self, bands) -> list:
        """``/patches``, ``/blends``, ``/sources``, ``/models``, ``/model_pixels`` (:func:`patch_tables`)."""
        return patch_tables(bands, self.job.measure.aperture_radii)

    def input_files(self, units) -> list:
        """The coadd and PSF files of the job's bands (none without units)."""
        return list(tract_paths(self.tract_dir, self.job.input.bands).files()) if units else []

    def warm_up(self, bands, units) -> float:
        """The deblender's kernels, then the tract-only code (:func:`warm_up_tract`)."""
        return warm_up() + warm_up_tract(bands, units[0].path if units else None)

    def process(self, unit: WorkUnit, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
        """The rows of one patch (:func:`process_patch`)."""
        return process_patch(unit, self.job, bands, rank, sampler=sampler, gallery=gallery)

    def unit_failed(self, rows: dict) -> bool:
        """The ``/patches`` row has ``status = failed``."""
        patches = rows.get("patches")
        return patches is not None and bool(len(patches)) and bool(np.any(patches["status"] == b"failed"))


def patch_tables(bands, radii) -> list:
    """The catalog tables of a tract run."""
    return [patch_spec(), blend_spec(), source_spec(bands, tract=True, radii=radii), model_spec(bands),
            model_pixel_spec()]


def warm_up_tract(bands=DEFAULT_BANDS, tract_dir=None) -> float:
    """First calls of the tract-only code, so the first real patch's times are steady-state.

    Detection, forced photometry and adaptive moments on a tiny synthetic
    patch; detection once more on a 512 × 512 px noise image (the first
    large detection on a rank is otherwise 1.5–3× slower than the next
    ones, more so when the ranks of a node start together: first-touch
    memory and library set-up); with ``tract_dir``, a 256 × 256 px read of
    the tract (FITS, WCS and units machinery: ~0.3 s the first time).

    Returns
    -------
    float
        Seconds taken.
    """
    t0 = time.perf_counter()
    if tract_dir is not None:
        try:
            shape = read_tract_shape(tract_dir, bands=tuple(bands))
            read_box(tract_dir, Box((0, 0), (min(256, shape[0]), min(256, shape[1]))), bands=tuple(bands))
        except HpcblendError:
            pass  # a bad tract is reported by planning or by the patch that reads it, not the warm-up
    yy, xx = np.indices((48, 48))
    source = 200.0 * np.exp(-((yy - 24.3) ** 2 + (xx - 23.8) ** 2) / 8.0)
    nb = len(bands)
    images = np.repeat(source[None], nb, 0).astype(np.float32)
    variance = np.ones_like(images)
    mask = np.zeros(images.shape, dtype=np.int32)
    g = np.exp(-(np.indices((11, 11)) - 5.0) ** 2 / 4.0).prod(axis=0)
    psfs = np.repeat((g / g.sum())[None], nb, 0)
    noise = np.random.default_rng(0).normal(0.0, 1.0, (nb, 512, 512)).astype(np.float32)
    detect_footprints(*detection_image(noise, np.ones_like(noise), np.zeros(noise.shape, dtype=np.int32)))
    det, sigma = detection_image(images, variance, mask)
    for fp in detect_footprints(det, sigma):
        blend = footprint_to_blend(fp, images, variance, mask, psfs, bands, blend_id=1, source="<warm-up>")
        model = (blend.images * blend.footprint[None])[None].astype(np.float32)
        forced_photometry(blend.images, blend.variance, blend.peaks.astype(float), psfs, bands, model)
        warm_up_measure(blend, images, variance, mask, bands)
    warm_up_isolated(images, variance, mask, np.ones(images.shape[1:], dtype=np.int32), psfs, bands)
    return time.perf_counter() - t0


def process_patch(unit, job: JobConfig, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
    """Detect, deblend and measure one patch.

    Parameters
    ----------
    unit : hpcblend.units.source.WorkUnit
        ``unit.info["patch"]`` is the :class:`hpcblend.skymap.PatchInfo`,
        ``unit.path`` the tract directory.
    job : JobConfig
    bands : tuple of str
    rank : int
    sampler : hpcblend.diagnostics.sampler.StackSampler, optional
        Stage tags (load, detect, init, fit, measure) for the call-stack sampler.
    gallery : hpcblend.diagnostics.gallery.GalleryCollector, optional
        Offered every deblended blend (image records of failed, flagged, slow ones).

    Returns
    -------
    dict of str -> ndarray
        Rows for ``patches``, ``blends``, ``sources``, ``models``, ``model_pixels``.
        The ``patches`` row's ``n_bad_pixels`` counts the outer box's pixels
        masked on reading (all bands); a data error of the patch gives
        ``status = failed`` and no other rows.

    Raises
    ------
    Exception
        A programming error (:func:`hpcblend.errors.is_programming_error`)
        anywhere in the patch, never turned into a failed row.
    """
    sampler = sampler or NullSampler()
    patch = unit.info["patch"]
    specs = {s.name: s for s in patch_tables(bands, job.measure.aperture_radii)}
    prow = _patch_row(specs["patches"], unit.index + 1, patch, rank)
    out = {name: [] for name in specs if name != "patches"}
    t0 = time.perf_counter()
    try:
        with sampler.stage("load"):
            data = read_patch(unit.path, patch, bands=tuple(bands))
        prow["n_bad_pixels"] = int(np.sum(data.n_bad_pixels))
        t1 = time.perf_counter()
        sampler.set_stage("detect")
        images, footprints = _detect(data, job)
        t2 = time.perf_counter()
        counts = _deblend_footprints(footprints, patch, data, images, job, bands, rank, sampler, gallery, out)
        for name, value in counts.items():
            prow[name] = value
        prow["n_footprints"] = len(footprints)
        prow["t_load"] = t1 - t0
        prow["t_detect"] = t2 - t1
        prow["status"] = b"ok"
    except Exception as exc:  # noqa: BLE001 - one failed patch never kills a rank
        if is_programming_error(exc):
            raise
        prow["status"] = b"failed"
        error_columns(prow, type(exc).__name__, str(exc))
        out = {name: [] for name in out}  # a failed patch contributes no partial rows
    prow["t_total"] = time.perf_counter() - t0
    result = {"patches": prow}
    for name, parts in out.items():
        result[name] = specs[name].concatenate(parts)
    for name in ("blends", "sources"):  # footprint (detection) order: isolated footprints were measured last
        result[name] = result[name][np.argsort(result[name]["id"], kind="stable")]
    return result


def _patch_row(spec, patch_id: int, patch, rank: int):
    """The ``/patches`` row of a patch before it is processed (shape (1,))."""
    prow = spec.empty(1)
    prow["id"] = patch_id
    prow["tract"] = patch.tract
    prow["patch"] = patch.flat
    prow["patch_y"], prow["patch_x"] = patch.index
    prow["inner_bbox"] = [patch.inner.y0, patch.inner.x0, patch.inner.height, patch.inner.width]
    prow["outer_bbox"] = [patch.outer.y0, patch.outer.x0, patch.outer.height, patch.outer.width]
    prow["rank"] = rank
    return prow


def _detect(data, job: JobConfig) -> tuple:
    """The patch's images (background-subtracted when ``detect.subtract_background``) and its footprints."""
    images = data.images
    d = job.detect
    if d.subtract_background:
        images = estimate_background(images, data.mask, box_size=d.background_box, variance=data.variance).images
    det, sigma = detection_image(images, data.variance, data.mask, method=d.method)
    footprints = detect_footprints(det, sigma, threshold=d.threshold, min_area=d.min_area, grow=d.grow,
                                   min_peak_separation=d.min_peak_separation, min_prominence=d.min_prominence)
    return images, footprints


def _deblend_footprints(footprints, patch, data, images, job, bands, rank, sampler, gallery, out: dict) -> dict:
    """Rows of every footprint with a peak this patch owns, appended to ``out`` (table name -> list of rows).

    Returns
    -------
    dict
        The ``/patches`` row's counts and times: ``n_blends``, ``n_isolated``, ``n_sources``,
        ``t_deblend``, ``t_measure``.
    """
    labels = np.zeros(images.shape[1:], dtype=np.int32)
    for fp in footprints:
        labels[fp.bbox.slices][fp.mask] = fp.label
    n_blend = n_iso = n_src = 0
    t_deblend = t_measure = 0.0
    running = 0
    kernels = DifferenceKernels()  # one PSF per band in a patch: its difference kernels are computed once
    together = not job.detect.fit_isolated  # unfitted isolated footprints: measured all at once, below
    isolated, isolated_running = [], []
    for fp in footprints:
        owned = np.asarray(patch.owns_local(fp.peaks[:, 0], fp.peaks[:, 1]), dtype=bool)
        if not owned.any():
            continue
        running += 1
        if together and fp.n_peaks == 1:
            isolated.append(fp)
            isolated_running.append(running)
            continue
        with sampler.stage("init"):
            rows = _process_footprint(fp, owned, running, patch, data, images, labels, job, bands, rank,
                                      sampler, gallery, kernels=kernels)
        for name, r in rows.items():
            out[name].append(r)
        t_deblend += rows["blends"]["t_init"][0] + rows["blends"]["t_fit"][0]
        t_measure += rows["blends"]["t_measure"][0]
        n_iso += bool(rows["blends"]["isolated"][0])
        n_blend += not bool(rows["blends"]["isolated"][0])
        n_src += len(rows["sources"])
    if isolated:
        with sampler.stage("measure"):
            rows = _isolated_rows(isolated, isolated_running, patch, data, images, labels, job, bands, rank)
        for name, r in rows.items():
            out[name].append(r)
        t_measure += float(rows["blends"]["t_measure"].sum())
        n_iso += len(isolated)
        n_src += len(isolated)
    sky_coordinates(out["sources"], data.wcs)  # every child of the patch in one WCS call
    return {"n_blends": n_blend, "n_isolated": n_iso, "n_sources": n_src, "t_deblend": t_deblend,
            "t_measure": t_measure}


def _isolated_rows(footprints, running, patch, data, images, labels, job, bands, rank: int) -> dict:
    """``/blends`` and ``/sources`` rows of the patch's unfitted isolated footprints, measured together
    (:func:`hpcblend.measure.isolated.measure_isolated_footprints`); each ``/blends`` row's ``t_measure``
    and ``t_total`` are an equal share of the whole batch's time."""
    t0 = time.perf_counter()
    n = len(footprints)
    h_out, w_out = images.shape[1:]
    run = np.asarray(running, dtype=np.int64) << _PEAK_BITS
    ids = np.asarray(encode_id(patch.tract, patch.flat, np.concatenate([run, run | 1])), dtype=np.int64)
    parent_ids, child_ids = ids[:n], ids[n:]
    fboxes = np.array([[fp.bbox.y0, fp.bbox.stop[0], fp.bbox.x0, fp.bbox.stop[1]] for fp in footprints],
                      dtype=np.int64).reshape(n, 4)
    bboxes = grow_boxes(fboxes, int(job.detect.pad), (h_out, w_out))  # footprint_to_blend's boxes
    outer = patch.outer
    origins = bboxes[:, [0, 2]] + np.array([outer.y0, outer.x0], dtype=np.int64)
    peaks = np.array([fp.peaks[0] for fp in footprints], dtype=np.int64).reshape(n, 2)
    label_of = np.array([fp.label for fp in footprints], dtype=np.int64)
    row = _parent_rows(patch, parent_ids, 1, 1, True, [fp.area for fp in footprints],
                       np.column_stack([origins, bboxes[:, 1] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 2]]), fboxes,
                       data.tract_shape, rank)
    row["converged"] = True
    src = _source_rows(source_spec(bands, tract=True, radii=job.measure.aperture_radii), child_ids, parent_ids, 0,
                       peaks[:, 0] + outer.y0, peaks[:, 1] + outer.x0, patch)
    row["flag_incomplete_data"] = measure_isolated_footprints(
        src, fboxes, bboxes, label_of, peaks, origins, outer, data, images, labels, bands,
        forced_pad=job.measure.forced_pad, bad_mask_planes=job.deblend.bad_mask_planes,
        radii=job.measure.aperture_radii)
    share = (time.perf_counter() - t0) / n
    row["t_measure"] = share
    row["t_total"] = share
    return {"blends": row, "sources": src}


def _truncated(fboxes, outer, tract_shape) -> np.ndarray:
    """Per footprint box ``(y0, y1, x0, x1)`` (patch-outer frame): whether it touches an edge of the outer box
    that is not the tract's (the footprint may be cut there)."""
    ty, tx = tract_shape
    return (((fboxes[:, 0] == 0) & (outer.y0 > 0)) | ((fboxes[:, 2] == 0) & (outer.x0 > 0))
            | ((fboxes[:, 1] >= outer.height) & (outer.y0 + outer.height < ty))
            | ((fboxes[:, 3] >= outer.width) & (outer.x0 + outer.width < tx)))


def _process_footprint(fp, owned, running, patch, data, images, labels, job, bands, rank, sampler,
                       gallery=None, kernels=None) -> dict:
    """Rows of one footprint (the children this patch owns): ``blends``, ``sources``, ``models``, ``model_pixels``."""
    t0 = time.perf_counter()
    # the parent's id (peak bits 0) and its children's (peak index + 1), in one call
    all_ids = np.asarray(encode_id(patch.tract, patch.flat, (running << _PEAK_BITS) | np.arange(fp.n_peaks + 1)),
                         dtype=np.int64).reshape(fp.n_peaks + 1)
    parent_id = int(all_ids[0])
    blend = footprint_to_blend(fp, images, data.variance, data.mask, data.psfs, bands, blend_id=parent_id,
                               source=f"tract {patch.tract} patch {patch.name}", origin=patch.outer.origin,
                               pad=job.detect.pad)
    row = _blend_row(fp, blend, owned, parent_id, patch, data.tract_shape, rank)
    ids = all_ids[1:]
    src_all = _child_rows(source_spec(bands, tract=True, radii=job.measure.aperture_radii), blend, ids, parent_id,
                          patch)
    result, models = _fit(blend, row, src_all, job, bands, sampler, kernels)
    t1 = time.perf_counter()
    sampler.set_stage("measure", parent_id)
    if models is not None:
        forced_on_patch(blend, fp.label, models, src_all, patch.outer, data, images, labels, bands,
                        pad=job.measure.forced_pad, bad_mask_planes=job.deblend.bad_mask_planes,
                        radii=job.measure.aperture_radii)
    t2 = time.perf_counter()
    row["t_measure"] = row["t_measure"][0] + (t2 - t1)
    row["t_total"] = t2 - t0
    # a blend whose footprint holds pixels without data (masked NO_DATA on reading: NaN/inf pixels,
    # variance <= 0, or the coadd's own NO_DATA) is flagged, however few they are
    no_data = (blend.mask & np.int32(mask_bits("NO_DATA"))) != 0
    if np.any(no_data[:, blend.footprint]):
        row["flag_incomplete_data"] = True
    rows = {"blends": row, "sources": src_all[owned]}
    if gallery is not None and not row["isolated"][0]:
        offer_to_gallery(gallery, row, blend, result, job)
    rows["models"], rows["model_pixels"] = _model_rows(result, owned, ids, parent_id, blend, job, bands)
    return rows


def _parent_rows(patch, ids, n_peaks, n_owned, primary, areas, bboxes, fboxes, tract_shape, rank: int):
    """``/blends`` rows (N,) of footprints before they are fitted: ``ids``, ``n_peaks``, ``n_owned``,
    ``primary``, ``areas`` (N,), their blend boxes ``bboxes`` (N, 4) as (y0, x0, h, w) in the tract frame and
    bounding boxes ``fboxes`` (N, 4) as (y0, y1, x0, x1) in the patch-outer frame."""
    row = blend_spec().empty(len(ids))
    nan_float_columns(row, ["chi2_per_pixel"])
    row["id"] = ids
    row["source_file"] = f"tract {patch.tract} patch {patch.name}".encode()
    row["tract"] = patch.tract
    row["patch"] = patch.flat
    row["n_peaks"] = n_peaks
    row["n_peaks_owned"] = n_owned
    row["primary"] = primary
    row["footprint_area"] = areas
    row["bbox"] = bboxes
    row["rank"] = rank
    row["isolated"] = np.asarray(n_peaks) == 1
    # a footprint touching the outer box's edge (where that edge is not the tract's) may be cut
    row["flag_footprint_truncated"] = _truncated(np.asarray(fboxes), patch.outer, tract_shape)
    return row


def _blend_row(fp, blend, owned, parent_id: int, patch, tract_shape, rank: int):
    """The footprint's ``/blends`` row before it is fitted (shape (1,))."""
    fb = fp.bbox
    return _parent_rows(patch, [parent_id], [blend.n_peaks], [int(owned.sum())], [bool(owned[0])],
                        [blend.footprint_area], [[blend.origin[0], blend.origin[1], blend.shape[0], blend.shape[1]]],
                        [[fb.y0, fb.stop[0], fb.x0, fb.stop[1]]], tract_shape, rank)


def _source_rows(sspec, ids, parent_ids, peak_index, peak_y, peak_x, patch):
    """``/sources`` rows (N,) of peaks (tract pixels) before they are measured (floats NaN, flags False)."""
    src = sspec.empty(len(ids))
    nan_float_columns(src)
    src["id"] = ids
    src["parent_id"] = parent_ids
    src["peak_index"] = peak_index
    src["peak_y"] = peak_y
    src["peak_x"] = peak_x
    src["tract"] = patch.tract
    src["patch"] = patch.flat
    for f in ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero", "flag_isolated_unfitted"):
        src[f] = False
    return src


def _child_rows(sspec, blend, ids, parent_id: int, patch):
    """``/sources`` rows of every peak of the footprint (floats NaN until measured, flags False)."""
    return _source_rows(sspec, ids, parent_id, np.arange(blend.n_peaks), blend.peaks[:, 0] + blend.origin[0],
                        blend.peaks[:, 1] + blend.origin[1], patch)


def _fit(blend, row, src_all, job, bands, sampler, kernels=None) -> tuple:
    """Deblend the footprint into ``row`` and ``src_all`` (unfitted isolated footprints are
    :func:`_isolated_rows`'s).

    Returns
    -------
    result : hpcblend.deblend.deblender.DeblendResult or None
        None for a failed blend.
    models : ndarray, shape (K, B, h, w), or callable, or None
        The children's observed-frame models on the blend's cut-out; for a parent whose K models would
        take more than :data:`DENSE_CHILD_MODELS_BYTES`, ``models(k)`` rendering child k's (B, h, w) when
        needed (:meth:`DeblendResult.child_model`); None without children.
    """
    models = None
    result = None
    try:
        result = deblend_blend(blend, job.deblend, sampler=sampler, kernels=kernels)
        fill_parent_row(row, result)
        fill_child_rows(src_all, result, blend.origin, bands)
        if result.children:
            dense = 4 * blend.n_peaks * len(bands) * blend.shape[0] * blend.shape[1]
            models = result.child_models() if dense <= DENSE_CHILD_MODELS_BYTES else result.child_model
    except Exception as exc:  # noqa: BLE001 - one bad blend is a flagged row
        if is_programming_error(exc):
            raise
        flag_exception(row, exc)
        src_all["flag_parent_failed"] = True
        models = None
    return result, models


def _model_rows(result, owned, ids, parent_id: int, blend, job, bands) -> tuple:
    """``/models`` and ``/model_pixels`` rows of the owned children's components (if ``measure.store_models``)."""
    if job.measure.store_models and result is not None and result.morphs is not None:
        comps = np.nonzero(owned[result.owner])[0]  # components of the children this patch owns
        number = (comps >= blend.n_peaks).astype(np.int64)  # 0: main (halo), 1: core
        return pack_models(ids[result.owner[comps]], [parent_id] * len(comps), result.sed[comps],
                           result.morphs[comps], result.boxes[comps], blend.origin, bands,
                           job.deblend.model_psf_sigma, component=number)
    return model_spec(bands).empty(0), model_pixel_spec().empty(0)
