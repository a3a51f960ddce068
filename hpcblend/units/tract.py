"""One patch of a tract → catalog rows: load, detect, deblend, measure, forced photometry, models.

Ownership (no source written twice, none lost at a patch edge): every
footprint is detected on the patch's *outer* box; a child is written by the
patch whose *inner* box holds its peak (:meth:`hpcblend.skymap.PatchInfo.owns`).
A footprint whose peaks are shared between two patches is deblended in both
(with all its peaks, so the models are right) and each patch writes only the
children it owns; each writes its own ``/blends`` row (``n_peaks_owned``,
``primary`` True in the patch owning the brightest peak), so runtime per
patch is accounted exactly and ``primary`` rows count physical blends once.

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

import time

import numpy as np

from hpcblend.config import JobConfig
from hpcblend.deblend.deblender import deblend_blend
from hpcblend.errors import is_programming_error
from hpcblend.io.blends import DEFAULT_BAD_MASK_PLANES, mask_bits
from hpcblend.units.blends import fill_child_rows, fill_parent_row, flag_exception, offer_to_gallery
from hpcblend.io.schema import blend_spec, model_pixel_spec, model_spec, patch_spec, source_spec

__all__ = ["process_patch", "patch_tables", "warm_up_tract"]

_PEAK_BITS = 12


def patch_tables(bands, radii) -> list:
    """The catalog tables of a tract run."""
    return [patch_spec(), blend_spec(), source_spec(bands, tract=True, radii=radii), model_spec(bands),
            model_pixel_spec()]


def warm_up_tract(bands=("g", "r", "i", "z", "y"), tract_dir=None) -> float:
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
    from hpcblend.detect import detection_image, detect_footprints, footprint_to_blend
    from hpcblend.measure.forced import forced_photometry

    t0 = time.perf_counter()
    if tract_dir is not None:
        from hpcblend.io.coadd import read_box
        from hpcblend.geometry import Box

        from hpcblend.errors import HpcblendError

        try:
            from hpcblend.io.coadd import read_tract_shape

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
    return time.perf_counter() - t0


def _nan_fill(rows, names):
    for n in names:
        if rows.dtype[n].kind == "f":
            rows[n] = np.nan


def process_patch(unit, job: JobConfig, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
    """Detect, deblend and measure one patch.

    Parameters
    ----------
    unit : hpcblend.parallel.driver.WorkUnit
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
    from hpcblend.io.coadd import read_patch
    from hpcblend.detect import detection_image, detect_footprints, estimate_background
    from hpcblend.diagnostics.sampler import NullSampler

    sampler = sampler or NullSampler()

    patch = unit.info["patch"]
    radii = job.measure.aperture_radii
    specs = {s.name: s for s in patch_tables(bands, radii)}
    prow = specs["patches"].empty(1)
    prow["id"] = unit.index + 1
    prow["tract"] = patch.tract
    prow["patch"] = patch.flat
    prow["patch_y"], prow["patch_x"] = patch.index
    prow["inner_bbox"] = [patch.inner.y0, patch.inner.x0, patch.inner.height, patch.inner.width]
    prow["outer_bbox"] = [patch.outer.y0, patch.outer.x0, patch.outer.height, patch.outer.width]
    prow["rank"] = rank
    out = {name: [] for name in specs if name != "patches"}
    t0 = time.perf_counter()
    try:
        with sampler.stage("load"):
            data = read_patch(unit.path, patch, bands=tuple(bands))
        prow["n_bad_pixels"] = int(np.sum(data.n_bad_pixels))
        t1 = time.perf_counter()
        sampler.set_stage("detect")
        images = data.images
        if job.detect.subtract_background:
            images = estimate_background(images, data.mask, box_size=job.detect.background_box,
                                         variance=data.variance).images
        det, sigma = detection_image(images, data.variance, data.mask, method=job.detect.method)
        footprints = detect_footprints(det, sigma, threshold=job.detect.threshold, min_area=job.detect.min_area,
                                       grow=job.detect.grow, min_peak_separation=job.detect.min_peak_separation,
                                       min_prominence=job.detect.min_prominence)
        t2 = time.perf_counter()
        labels = np.zeros(images.shape[1:], dtype=np.int32)
        for fp in footprints:
            labels[fp.bbox.slices][fp.mask] = fp.label
        n_blend = n_iso = n_src = 0
        t_deblend = t_measure = 0.0
        running = 0
        for fp in footprints:
            owned = np.asarray(patch.owns_local(fp.peaks[:, 0], fp.peaks[:, 1]), dtype=bool)
            if not owned.any():
                continue
            running += 1
            with sampler.stage("init"):
                rows = _process_footprint(fp, owned, running, patch, data, images, labels, job, bands, rank,
                                          sampler, gallery)
            for name, r in rows.items():
                out[name].append(r)
            t_deblend += rows["blends"]["t_init"][0] + rows["blends"]["t_fit"][0]
            t_measure += rows["blends"]["t_measure"][0]
            n_iso += bool(rows["blends"]["isolated"][0])
            n_blend += not bool(rows["blends"]["isolated"][0])
            n_src += len(rows["sources"])
        prow["n_footprints"] = len(footprints)
        prow["n_blends"] = n_blend
        prow["n_isolated"] = n_iso
        prow["n_sources"] = n_src
        prow["t_load"] = t1 - t0
        prow["t_detect"] = t2 - t1
        prow["t_deblend"] = t_deblend
        prow["t_measure"] = t_measure
        prow["status"] = b"ok"
    except Exception as exc:  # noqa: BLE001 - one failed patch never kills a rank
        if is_programming_error(exc):
            raise
        prow["status"] = b"failed"
        prow["error_type"] = type(exc).__name__.encode()[:64]
        prow["error_message"] = str(exc).encode("utf-8", "replace")[:256]
        out = {name: [] for name in out}  # a failed patch contributes no partial rows
    prow["t_total"] = time.perf_counter() - t0
    result = {"patches": prow}
    for name, parts in out.items():
        result[name] = np.concatenate(parts) if parts else specs[name].empty(0)
    return result


def _process_footprint(fp, owned, running, patch, data, images, labels, job, bands, rank, sampler,
                       gallery=None) -> dict:
    """Rows of one footprint (the children this patch owns)."""
    from hpcblend.detect import footprint_to_blend
    from hpcblend.skymap import encode_id

    bspec = blend_spec()
    sspec = source_spec(bands, tract=True, radii=job.measure.aperture_radii)
    parent_id = int(encode_id(patch.tract, patch.flat, running << _PEAK_BITS))
    outer = patch.outer
    t0 = time.perf_counter()
    blend = footprint_to_blend(fp, images, data.variance, data.mask, data.psfs, bands, blend_id=parent_id,
                               source=f"tract {patch.tract} patch {patch.name}", origin=outer.origin,
                               pad=job.detect.pad)
    row = bspec.empty(1)
    _nan_fill(row, ["chi2_per_pixel"])
    row["id"] = parent_id
    row["source_file"] = f"tract {patch.tract} patch {patch.name}".encode()
    row["tract"] = patch.tract
    row["patch"] = patch.flat
    row["n_peaks"] = blend.n_peaks
    row["n_peaks_owned"] = int(owned.sum())
    row["primary"] = bool(owned[0])
    row["footprint_area"] = blend.footprint_area
    row["bbox"] = [blend.origin[0], blend.origin[1], blend.shape[0], blend.shape[1]]
    row["rank"] = rank
    row["isolated"] = blend.n_peaks == 1
    # a footprint touching the outer box's edge (where that edge is not the tract's) may be cut
    by0, bx0 = fp.bbox.origin
    by1, bx1 = fp.bbox.stop
    h_out, w_out = outer.height, outer.width
    ty, tx = data.tract_shape
    row["flag_footprint_truncated"] = ((by0 == 0 and outer.y0 > 0) or (bx0 == 0 and outer.x0 > 0)
                                       or (by1 >= h_out and outer.y0 + h_out < ty)
                                       or (bx1 >= w_out and outer.x0 + w_out < tx))
    k_all = blend.n_peaks
    ids = np.array([int(encode_id(patch.tract, patch.flat, (running << _PEAK_BITS) | (k + 1))) for k in range(k_all)],
                   dtype=np.int64)
    src_all = sspec.empty(k_all)
    _nan_fill(src_all, sspec.dtype.names)
    src_all["id"] = ids
    src_all["parent_id"] = parent_id
    src_all["peak_index"] = np.arange(k_all)
    src_all["peak_y"] = blend.peaks[:, 0] + blend.origin[0]
    src_all["peak_x"] = blend.peaks[:, 1] + blend.origin[1]
    src_all["tract"] = patch.tract
    src_all["patch"] = patch.flat
    for f in ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero", "flag_isolated_unfitted"):
        src_all[f] = False
    models = None  # (K, B, h, w) observed-frame child models on the blend cut-out
    result = None
    try:
        if blend.n_peaks == 1 and not job.detect.fit_isolated:
            _measure_isolated(blend, src_all, bands)
            models = (blend.images * blend.footprint[None])[None].astype(np.float32)
            row["converged"] = True
            row["t_measure"] = 0.0
        else:
            result = deblend_blend(blend, job.deblend, sampler=sampler)
            fill_parent_row(row, result)
            fill_child_rows(src_all, result, blend.origin, bands)
            if result.children:
                models = result.child_models()
    except Exception as exc:  # noqa: BLE001 - one bad blend is a flagged row
        if is_programming_error(exc):
            raise
        flag_exception(row, exc)
        src_all["flag_parent_failed"] = True
        models = None
    t1 = time.perf_counter()
    sampler.set_stage("measure", parent_id)
    if models is not None:
        _forced(blend, fp, models, src_all, patch, data, images, labels, job, bands)
    # sky coordinates of every child (centroid, else peak)
    yy = np.where(np.isfinite(src_all["y"]), src_all["y"], src_all["peak_y"])
    xx = np.where(np.isfinite(src_all["x"]), src_all["x"], src_all["peak_x"])
    ra, dec = data.wcs.pixel_to_world_values(xx, yy)
    src_all["ra"], src_all["dec"] = ra, dec
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
    mspec, pspec = model_spec(bands), model_pixel_spec()
    if job.measure.store_models and result is not None and result.morphs is not None:
        from hpcblend.io.models import pack_models

        comps = np.nonzero(owned[result.owner])[0]  # components of the children this patch owns
        number = (comps >= blend.n_peaks).astype(np.int64)  # 0: main (halo), 1: core
        m, p = pack_models(ids[result.owner[comps]], [parent_id] * len(comps), result.sed[comps],
                           result.morphs[comps], result.boxes[comps], blend.origin, bands,
                           job.deblend.model_psf_sigma, component=number)
        rows["models"], rows["model_pixels"] = m, p
    else:
        rows["models"], rows["model_pixels"] = mspec.empty(0), pspec.empty(0)
    return rows


def _measure_isolated(blend, src, bands) -> None:
    """An unfitted single-peak footprint: the child is the footprint's data ("heavy footprint")."""
    fp = blend.footprint
    w = blend.weights()
    good = w > 0
    data = np.where(good, blend.images, 0.0)
    var = np.where(good, blend.variance, 0.0)
    for i, b in enumerate(bands):
        src[f"flux_{b}"] = float(data[i][fp].sum())
        src[f"flux_err_{b}"] = float(np.sqrt(var[i][fp].sum()))
    det = ((data * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-30)) * fp
    # centroid in a Gaussian window about the peak (not the first moment of the whole footprint,
    # which undetected neighbours and clipped noise in a large footprint pull by pixels)
    cy, cx = _windowed_centroid(det, float(blend.peaks[0, 0]), float(blend.peaks[0, 1]), _psf_sigma(blend.psfs))
    src["y"] = cy + blend.origin[0]
    src["x"] = cx + blend.origin[1]
    src["blendedness"] = 0.0
    src["flag_isolated_unfitted"] = True


def _psf_sigma(psfs) -> float:
    """Gaussian σ (pixels) of the band-mean PSF from its area above half maximum (1 <= σ <= 5)."""
    p = np.asarray(psfs, dtype=np.float64).mean(axis=0)
    n_half = float(np.count_nonzero(p >= 0.5 * p.max()))
    return float(np.clip(2.0 * np.sqrt(n_half / np.pi) / 2.3548, 1.0, 5.0))


def _windowed_centroid(img, y0: float, x0: float, sigma: float, max_iter: int = 50,
                       max_shift: float = 3.0) -> tuple:
    """Gaussian-windowed centroid (SExtractor's XWIN_IMAGE iteration) started at a peak.

    ``c ← c + 2 Σ w I (r − c) / Σ w I`` with ``w`` a circular Gaussian of
    ``sigma`` px about ``c`` (truncated at 4σ). Falls back to the start
    (the peak pixel) if the windowed flux is not positive or the centroid
    moves more than ``max_shift`` px.
    """
    h, w = img.shape
    r = int(np.ceil(4 * sigma))
    cy, cx = y0, x0
    for _ in range(max_iter):
        iy0, iy1 = max(int(np.floor(cy)) - r, 0), min(int(np.floor(cy)) + r + 2, h)
        ix0, ix1 = max(int(np.floor(cx)) - r, 0), min(int(np.floor(cx)) + r + 2, w)
        yy = np.arange(iy0, iy1, dtype=np.float64)[:, None] - cy
        xx = np.arange(ix0, ix1, dtype=np.float64)[None, :] - cx
        wi = np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2)) * img[iy0:iy1, ix0:ix1]
        s = wi.sum()
        if not s > 0:
            return y0, x0
        dy, dx = 2 * (wi * yy).sum() / s, 2 * (wi * xx).sum() / s
        cy, cx = cy + dy, cx + dx
        if not (np.isfinite(cy) and np.isfinite(cx)) or np.hypot(cy - y0, cx - x0) > max_shift:
            return y0, x0
        if abs(dy) < 1e-4 and abs(dx) < 1e-4:
            break
    return cy, cx


def _forced(blend, fp, models, src, patch, data, images, labels, job, bands) -> None:
    """Forced photometry of the children on a cut-out grown for the apertures.

    Pixels of *other* footprints get zero weight (the child's model stands in
    for them), the blend's other children are subtracted by their models.
    """
    from hpcblend.measure.forced import forced_photometry

    pad = job.measure.forced_pad
    h_out, w_out = images.shape[1:]
    by0 = blend.origin[0] - patch.outer.y0
    bx0 = blend.origin[1] - patch.outer.x0
    bh, bw = blend.shape
    y0, x0 = max(by0 - pad, 0), max(bx0 - pad, 0)
    y1, x1 = min(by0 + bh + pad, h_out), min(bx0 + bw + pad, w_out)
    cut = (slice(None), slice(y0, y1), slice(x0, x1))
    img = np.nan_to_num(images[cut]).astype(np.float32)
    var = data.variance[cut]
    bad = ~np.isfinite(var) | ~(var > 0) | ~np.isfinite(images[cut])
    bad |= (data.mask[cut] & mask_bits(job.deblend.bad_mask_planes or DEFAULT_BAD_MASK_PLANES)) != 0
    lab = labels[y0:y1, x0:x1]
    other = (lab != 0) & (lab != fp.label)
    weights = np.where(bad | other[None], 0.0, 1.0 / np.where(var > 0, var, 1.0)).astype(np.float32)
    k = models.shape[0]
    big = np.zeros((k, len(bands), y1 - y0, x1 - x0), dtype=np.float32)
    oy, ox = by0 - y0, bx0 - x0
    big[:, :, oy:oy + bh, ox:ox + bw] = models
    ys = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]) - patch.outer.y0 - y0
    xs = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]) - patch.outer.x0 - x0
    res = forced_photometry(img, np.where(var > 0, var, np.inf).astype(np.float32), np.stack([ys, xs], 1),
                            data.psfs, bands, big, weights=weights, radii=job.measure.aperture_radii)
    for name in res.dtype.names:
        if name in ("y", "x"):
            continue
        col = "forced_flags" if name == "flags" else name
        src[col] = res[name]
