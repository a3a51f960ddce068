"""All isolated (one-peak, unfitted) footprints of a patch measured together.

85 % of a tract's parents have one peak. Unless ``detect.fit_isolated`` is set they are not fitted:
the child is the footprint's data ("heavy footprint"). Measuring them one by one (cut-out,
:func:`hpcblend.measure.patch.measure_isolated`, :func:`hpcblend.measure.patch.forced_on_patch`)
spends most of its time in Python around small arrays; :func:`measure_isolated_footprints` does the
same for every isolated footprint of a patch in one compiled call
(:func:`hpcblend.kernels.isolated.isolated_measurements`: fluxes, windowed centroid, PSF fluxes,
adaptive moments, each on the same cut-outs as before) and one ``sep.sum_circle`` per band for the
apertures of all of them, summed on the patch with the footprint labels as ``sep``'s segmentation map
(other footprints' pixels left out, as the cut-out's zero weights left them out).

What differs from the one-by-one path, all far below the errors: the footprint fluxes ``flux_<b>`` are
summed in float64 (before: NumPy's float32 pairwise sum; relative differences ~1e-7), and the
apertures are placed in the patch's frame instead of the cut-out's (the pixel/circle overlaps agree to
~1e-15). An aperture larger than ``measure.forced_pad`` plus ``detect.pad`` is no longer truncated at
the cut-out's edge, only at the patch's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import sep

from hpcblend.geometry import grow_boxes
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, NO_DATA_BIT, mask_bits
from hpcblend.kernels.isolated import aperture_planes, isolated_measurements
from hpcblend.measure.forced import _check_inputs, _Measured, _psf_terms
from hpcblend.measure.patch import CENTROID_MAX_ITER, CENTROID_MAX_SHIFT, _psf_sigma

__all__ = ["measure_isolated_footprints", "warm_up_isolated"]


def measure_isolated_footprints(src, fboxes, bboxes, labels_of, peaks, origins, outer, data, images, labels,
                                bands: Sequence[str], forced_pad: int, bad_mask_planes, radii) -> np.ndarray:
    """Measure the children of a patch's isolated footprints into their ``/sources`` rows.

    Parameters
    ----------
    src : ndarray, shape (N,), dtype of :func:`hpcblend.io.schema.source_spec` (tract columns)
        One row per footprint; filled in place: ``flux_<b>``, ``flux_err_<b>`` (counts, over the
        footprint's good pixels), ``y``, ``x`` (windowed centroid, tract pixels), ``blendedness`` 0,
        ``flag_isolated_unfitted``, and the forced columns (``psf_flux_<b>``, ``ap_flux_<r>_<b>``,
        shapes, ``forced_flags``) as :func:`hpcblend.measure.patch.forced_on_patch` fills them.
    fboxes, bboxes : ndarray, shape (N, 4), int64
        The footprints' bounding boxes and blend boxes (bounding box grown by ``detect.pad``, clipped),
        ``(y0, y1, x0, x1)`` in the patch-outer frame.
    labels_of : ndarray, shape (N,), int64
        The footprints' labels in ``labels``.
    peaks : ndarray, shape (N, 2), int64
        Peak ``(y, x)``, patch-outer frame.
    origins : ndarray, shape (N, 2), int64
        The blend boxes' origins in the tract frame.
    outer : hpcblend.geometry.Box
        The patch's outer box (tract pixels).
    data : hpcblend.io.coadd.PatchData
        The patch as read (variance, mask, PSFs).
    images : ndarray, shape (B, H, W)
        The patch's images (background-subtracted when the job says so).
    labels : ndarray, shape (H, W), int32
        Footprint label per pixel (0: none).
    bands : sequence of str
    forced_pad : int
        ``measure.forced_pad`` (pixels around the blend box for the forced photometry's cut-out).
    bad_mask_planes : sequence of str
        ``deblend.bad_mask_planes`` for the forced photometry (empty: the default planes).
    radii : sequence of float
        ``measure.aperture_radii`` (pixels).

    Returns
    -------
    ndarray, shape (N,), bool
        Whether a footprint pixel has no data (``NO_DATA``) in some band.

    Raises
    ------
    BlendDataError, PsfError
        Shapes disagree or the PSFs are unusable (as the one-by-one path).
    """
    bands = tuple(str(b) for b in bands)
    radii = tuple(float(r) for r in radii)
    n = len(src)
    h_out, w_out = images.shape[1:]
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, _, _, _, psfs = _check_inputs(images, data.variance, None, np.zeros((0, 2)), data.psfs, bands)
    terms = _psf_terms(psfs, None)
    cboxes = grow_boxes(bboxes, forced_pad, (h_out, w_out))  # forced_on_patch's cut-outs
    outer_origin = np.array([outer.y0, outer.x0], dtype=np.int64)
    forced_bits = mask_bits(bad_mask_planes or DEFAULT_BAD_MASK_PLANES)
    flux, flux_err, centroid, incomplete, on_image, psf, psf_err, psf_flag, shape, near = isolated_measurements(
        images, data.variance, data.mask, labels, *(np.ascontiguousarray(a, dtype=np.int64)  # the warm-up's types
                                                    for a in (labels_of, fboxes, bboxes, cboxes, peaks, origins)),
        outer_origin, NO_DATA_BIT, 1 << MASK_PLANES["DETECTED"], mask_bits(DEFAULT_BAD_MASK_PLANES), forced_bits,
        _psf_sigma(psfs), CENTROID_MAX_ITER, CENTROID_MAX_SHIFT, terms.padded, terms.spectra, terms.moments[3],
        max(radii) + 1.0)
    for b, name in enumerate(bands):
        src[f"flux_{name}"] = flux[:, b]
        src[f"flux_err_{name}"] = flux_err[:, b]
    src["y"], src["x"] = centroid[:, 0], centroid[:, 1]
    src["blendedness"] = 0.0
    src["flag_isolated_unfitted"] = True
    cols = _Measured(n, len(bands), len(radii))
    cols.on_image[:] = on_image
    cols.psf[:], cols.psf_err[:], cols.psf_flag[:], cols.shape[:] = psf, psf_err, psf_flag, shape
    positions = centroid - outer_origin  # patch frame
    n_bad = _apertures(cols, positions, labels_of, near, images, data, labels, forced_bits, radii)
    res = cols.table(bands, radii, positions, terms.moments, n_bad)
    for name in res.dtype.names:
        if name not in ("y", "x"):
            src["forced_flags" if name == "flags" else name] = res[name]
    return incomplete


def _apertures(cols, positions, labels_of, near, images, data, labels, forced_bits: int, radii) -> np.ndarray:
    """Aperture fluxes of every child into ``cols`` (one ``sep.sum_circle`` per band, other footprints left
    out by the segmentation map); returns the masked-pixel overlap (B, N, R) (> 0: a zero-weight pixel,
    bad or another footprint's, lies in the aperture), summed only where ``near`` (N, B) says one may."""
    nr = len(radii)
    n = len(positions)
    nb = images.shape[0]
    on = cols.on_image
    rr = np.asarray(radii, dtype=np.float64)
    seg = np.ascontiguousarray(labels, dtype=np.int32)
    planes, sigma, bad = aperture_planes(images, data.variance, data.mask, seg, forced_bits)

    def circles(k):  # the apertures of children k: x, y, r and segmentation id, each (len(k) * R,)
        return (np.repeat(positions[k, 1], nr), np.repeat(positions[k, 0], nr), np.tile(rr, len(k)),
                np.repeat(labels_of[k].astype(np.int32), nr))

    xa, ya, ra, seg_id = circles(np.arange(n))
    for b in range(nb):
        flux, err, flag = sep.sum_circle(planes[b], xa, ya, ra, err=sigma[b], subpix=0, segmap=seg, seg_id=seg_id)
        cols.ap[:, :, b] = np.where(on[:, None], flux.reshape(n, nr), np.nan)
        cols.ap_err[:, :, b] = np.where(on[:, None], err.reshape(n, nr), np.nan)
        cols.sep_flag[:, :, b] = np.where(on[:, None], flag.reshape(n, nr), 0)
    n_bad = np.zeros((nb, n, nr))
    near = near & on[:, None]
    k_near = np.flatnonzero(near.any(axis=1))
    if k_near.size:
        # other footprints' pixels: the labelled overlap minus the labelled overlap sep keeps for the child
        xk, yk, rk, sk = circles(k_near)
        labelled = (seg != 0).astype(np.float32)
        others = (sep.sum_circle(labelled, xk, yk, rk, subpix=0)[0]
                  - sep.sum_circle(labelled, xk, yk, rk, subpix=0, segmap=seg, seg_id=sk)[0])
        n_bad[:, k_near] = others.reshape(-1, nr)[None]
    for b in range(nb):
        k = np.flatnonzero(near[:, b])
        if k.size:
            xk, yk, rk, _ = circles(k)
            n_bad[b, k] += sep.sum_circle(bad[b], xk, yk, rk, subpix=0)[0].reshape(-1, nr)
    return n_bad


def warm_up_isolated(images, variance, mask, labels, psfs, bands) -> None:
    """Compile (or load) :func:`hpcblend.kernels.isolated.isolated_measurements` and
    :func:`~hpcblend.kernels.isolated.aperture_planes` with a patch run's argument types (float32 patch
    arrays, int32 mask and labels, one footprint labelled 1 covering the whole image)."""
    from types import SimpleNamespace

    from hpcblend.geometry import Box
    from hpcblend.io.schema import source_spec

    h, w = images.shape[1:]
    src = source_spec(bands, tract=True).empty(1)
    box = np.array([[0, h, 0, w]], dtype=np.int64)
    measure_isolated_footprints(src, box, box, np.array([1]), np.array([[h // 2, w // 2]]), np.zeros((1, 2), int),
                                Box((0, 0), (h, w)), SimpleNamespace(variance=variance, mask=mask, psfs=psfs),
                                images, labels, bands, 14, (), (3.0,))
