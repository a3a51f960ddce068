"""Measurements of a tract patch's children beyond the deblender's own: isolated sources, forced photometry, RA/Dec.

:func:`measure_isolated` measures a single-peak footprint that is not fitted (the child is the
footprint's data) — a run measures all of a patch's isolated footprints together
(:mod:`hpcblend.measure.isolated`), and this one-by-one path is what the tests compare that with —,
:func:`forced_on_patch` runs forced PSF/aperture photometry and adaptive moments
(:func:`hpcblend.measure.forced.forced_photometry`) on a cut-out of the patch with the neighbours
subtracted by their models, and :func:`sky_coordinates` converts the children's positions to RA/Dec
(all children of a patch in one WCS call).
The patch's orchestration (which footprints, which rows) is :mod:`hpcblend.units.tract`.
"""

from __future__ import annotations

import numpy as np

from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, mask_bits
from hpcblend.io.schema import source_spec
from hpcblend.kernels.moments import windowed_centroid
from hpcblend.kernels.photometry import cutout_planes
from hpcblend.measure.forced import forced_photometry

__all__ = ["measure_isolated", "forced_on_patch", "sky_coordinates", "warm_up_measure"]

#: Iterations of an isolated source's windowed centroid (:func:`hpcblend.kernels.moments.windowed_centroid`).
CENTROID_MAX_ITER = 50
#: Pixels the windowed centroid may move from the peak before it falls back to the peak.
CENTROID_MAX_SHIFT = 3.0


def measure_isolated(blend, src, bands) -> None:
    """Measure an unfitted single-peak footprint: the child is the footprint's data ("heavy footprint").

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
        The footprint's cut-out (one peak).
    src : ndarray, shape (1,), dtype of :func:`hpcblend.io.schema.source_spec`
        Its ``/sources`` row: ``flux_<b>``, ``flux_err_<b>`` (counts, sums over the footprint's
        good pixels; NaN in a band without one), ``y``, ``x`` (windowed centroid, catalog pixels), ``blendedness`` 0 and
        ``flag_isolated_unfitted`` are set.
    bands : sequence of str
    """
    fp = blend.footprint
    w = blend.weights()
    good = w > 0
    data = np.where(good, blend.images, 0.0)
    var = np.where(good, blend.variance, 0.0)
    for i, b in enumerate(bands):
        if not good[i][fp].any():  # no data in this band: no measurement (NaN), not 0 ± 0
            src[f"flux_{b}"] = src[f"flux_err_{b}"] = np.nan
            continue
        src[f"flux_{b}"] = float(data[i][fp].sum())
        src[f"flux_err_{b}"] = float(np.sqrt(var[i][fp].sum()))
    det = ((data * w).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-30)) * fp
    # centroid in a Gaussian window about the peak (not the first moment of the whole footprint,
    # which undetected neighbours and clipped noise in a large footprint pull by pixels)
    cy, cx = windowed_centroid(det, float(blend.peaks[0, 0]), float(blend.peaks[0, 1]), _psf_sigma(blend.psfs),
                               CENTROID_MAX_ITER, CENTROID_MAX_SHIFT)
    src["y"] = cy + blend.origin[0]
    src["x"] = cx + blend.origin[1]
    src["blendedness"] = 0.0
    src["flag_isolated_unfitted"] = True


#: The last PSF stack :func:`_psf_sigma` measured and its σ (a patch's footprints share one).
_LAST_PSF_SIGMA: list = []


def _psf_sigma(psfs) -> float:
    """Gaussian σ (pixels) of the band-mean PSF from its area above half maximum (1 <= σ <= 5)."""
    psfs = np.asarray(psfs)
    if _LAST_PSF_SIGMA and np.array_equal(_LAST_PSF_SIGMA[0], psfs):
        return _LAST_PSF_SIGMA[1]
    p = np.asarray(psfs, dtype=np.float64).mean(axis=0)
    n_half = float(np.count_nonzero(p >= 0.5 * p.max()))
    sigma = float(np.clip(2.0 * np.sqrt(n_half / np.pi) / 2.3548, 1.0, 5.0))
    _LAST_PSF_SIGMA[:] = [psfs.copy(), sigma]
    return sigma


def forced_on_patch(blend, label: int, models, src, outer, data, images, labels, bands, pad: int, bad_mask_planes,
                    radii) -> None:
    """Forced photometry of a footprint's children on a cut-out of the patch grown for the apertures.

    Pixels of *other* footprints get zero weight (the child's model stands in
    for them), the blend's other children are subtracted by their models.

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
        The footprint's cut-out (its ``origin`` in tract pixels).
    label : int
        The footprint's label in ``labels``.
    models : ndarray, shape (K, B, h, w), or callable
        The children's observed-frame models on the blend's cut-out, or ``models(k) -> (B, h, w)``
        (rendered when needed, so that K of them are never held at once).
    src : ndarray, shape (K,), dtype of :func:`hpcblend.io.schema.source_spec` (tract columns)
        The children's rows: measured at ``y``, ``x`` (else the peak, tract pixels); the forced
        columns are filled in place.
    outer : hpcblend.geometry.Box
        The patch's outer box (tract pixels); ``images`` cover it.
    data : hpcblend.io.coadd.PatchData
        The patch as read (variance, mask, PSFs).
    images : ndarray, shape (B, H, W)
        The patch's images (background-subtracted when the job says so).
    labels : ndarray, shape (H, W), int
        Footprint label per pixel of the outer box (0: none).
    bands : sequence of str
    pad : int
        ``measure.forced_pad``: pixels added around the blend's box.
    bad_mask_planes : sequence of str
        ``deblend.bad_mask_planes`` (empty: :data:`hpcblend.io.blends.DEFAULT_BAD_MASK_PLANES`).
    radii : sequence of float
        ``measure.aperture_radii`` (pixels).
    """
    h_out, w_out = images.shape[1:]
    by0 = blend.origin[0] - outer.y0
    bx0 = blend.origin[1] - outer.x0
    bh, bw = blend.shape
    y0, x0 = max(by0 - pad, 0), max(bx0 - pad, 0)
    y1, x1 = min(by0 + bh + pad, h_out), min(bx0 + bw + pad, w_out)
    cut = (slice(None), slice(y0, y1), slice(x0, x1))
    # weight 0: no data, a bad mask plane, or another footprint's pixel
    img, var, weights = cutout_planes(images[cut], data.variance[cut], data.mask[cut],
                                      mask_bits(bad_mask_planes or DEFAULT_BAD_MASK_PLANES), labels[y0:y1, x0:x1],
                                      label)
    oy, ox = by0 - y0, bx0 - x0
    if callable(models):  # one child at a time (a large parent)
        def on_cutout(k: int) -> np.ndarray:
            out = np.zeros((len(bands), y1 - y0, x1 - x0), dtype=np.float32)
            out[:, oy:oy + bh, ox:ox + bw] = models(k)
            return out
    else:
        on_cutout = np.zeros((models.shape[0], len(bands), y1 - y0, x1 - x0), dtype=np.float32)
        on_cutout[:, :, oy:oy + bh, ox:ox + bw] = models
    ys = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]) - outer.y0 - y0
    xs = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]) - outer.x0 - x0
    res = forced_photometry(img, var, np.stack([ys, xs], 1), data.psfs, bands, on_cutout, weights=weights,
                            radii=radii)
    for name in res.dtype.names:
        if name in ("y", "x"):
            continue
        col = "forced_flags" if name == "flags" else name
        src[col] = res[name]


def sky_coordinates(src, wcs) -> None:
    """RA, Dec (degrees) of every child: at its centroid, else at its peak, in one WCS call.

    Parameters
    ----------
    src : ndarray, shape (K,), or list of such arrays
        Rows of dtype :func:`hpcblend.io.schema.source_spec` (tract columns): ``x``, ``y`` (NaN where
        not measured), ``peak_x``, ``peak_y`` in tract pixels; ``ra``, ``dec`` are set in place. A
        list (e.g. the rows of every blend of a patch) is converted in a single call.
    wcs : astropy.wcs.WCS
        The tract's WCS.
    """
    parts = list(src) if isinstance(src, (list, tuple)) else [src]
    parts = [p for p in parts if len(p)]
    if not parts:
        return
    yy = np.concatenate([np.where(np.isfinite(p["y"]), p["y"], p["peak_y"]) for p in parts])
    xx = np.concatenate([np.where(np.isfinite(p["x"]), p["x"], p["peak_x"]) for p in parts])
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    start = 0
    for p in parts:
        p["ra"], p["dec"] = ra[start:start + len(p)], dec[start:start + len(p)]
        start += len(p)


def warm_up_measure(blend, images, variance, mask, bands) -> None:
    """Compile (or load) the kernels of :func:`measure_isolated` and :func:`forced_on_patch`'s cut-out.

    :func:`hpcblend.measure.forced.forced_photometry` is warmed up by calling it; this covers the
    rest, with the argument types of a patch run (float32 patch arrays, sliced as a cut-out is).

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
        A one-peak warm-up blend.
    images, variance : ndarray, shape (B, H, W), float32
        The patch it was cut from.
    mask : ndarray, shape (B, H, W), int32
    bands : sequence of str
    """
    measure_isolated(blend, source_spec(bands, tract=True).empty(1), bands)
    labels = np.zeros(images.shape[1:], dtype=np.int32)
    cutout_planes(images[:, 1:, 1:], variance[:, 1:, 1:], mask[:, 1:, 1:], mask_bits(DEFAULT_BAD_MASK_PLANES),
                  labels[1:, 1:], 1)
