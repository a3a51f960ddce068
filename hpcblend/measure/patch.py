"""Measurements of a tract patch's children beyond the deblender's own: isolated sources, forced photometry, RA/Dec.

:func:`measure_isolated` measures a single-peak footprint that is not fitted (the child is the
footprint's data), :func:`forced_on_patch` runs forced PSF/aperture photometry and adaptive moments
(:func:`hpcblend.measure.forced.forced_photometry`) on a cut-out of the patch with the neighbours
subtracted by their models, and :func:`sky_coordinates` converts the children's positions to RA/Dec.
The patch's orchestration (which footprints, which rows) is :mod:`hpcblend.units.tract`.
"""

from __future__ import annotations

import numpy as np

from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, mask_bits
from hpcblend.measure.forced import forced_photometry

__all__ = ["measure_isolated", "forced_on_patch", "sky_coordinates"]


def measure_isolated(blend, src, bands) -> None:
    """Measure an unfitted single-peak footprint: the child is the footprint's data ("heavy footprint").

    Parameters
    ----------
    blend : hpcblend.io.blends.BlendData
        The footprint's cut-out (one peak).
    src : ndarray, shape (1,), dtype of :func:`hpcblend.io.schema.source_spec`
        Its ``/sources`` row: ``flux_<b>``, ``flux_err_<b>`` (counts, sums over the footprint's
        good pixels), ``y``, ``x`` (windowed centroid, catalog pixels), ``blendedness`` 0 and
        ``flag_isolated_unfitted`` are set.
    bands : sequence of str
    """
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
    models : ndarray, shape (K, B, h, w)
        The children's observed-frame models on the blend's cut-out.
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
    img = np.nan_to_num(images[cut]).astype(np.float32)
    var = data.variance[cut]
    bad = ~np.isfinite(var) | ~(var > 0) | ~np.isfinite(images[cut])
    bad |= (data.mask[cut] & mask_bits(bad_mask_planes or DEFAULT_BAD_MASK_PLANES)) != 0
    lab = labels[y0:y1, x0:x1]
    other = (lab != 0) & (lab != label)
    weights = np.where(bad | other[None], 0.0, 1.0 / np.where(var > 0, var, 1.0)).astype(np.float32)
    k = models.shape[0]
    big = np.zeros((k, len(bands), y1 - y0, x1 - x0), dtype=np.float32)
    oy, ox = by0 - y0, bx0 - x0
    big[:, :, oy:oy + bh, ox:ox + bw] = models
    ys = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]) - outer.y0 - y0
    xs = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]) - outer.x0 - x0
    res = forced_photometry(img, np.where(var > 0, var, np.inf).astype(np.float32), np.stack([ys, xs], 1),
                            data.psfs, bands, big, weights=weights, radii=radii)
    for name in res.dtype.names:
        if name in ("y", "x"):
            continue
        col = "forced_flags" if name == "flags" else name
        src[col] = res[name]


def sky_coordinates(src, wcs) -> None:
    """RA, Dec (degrees) of every child: at its centroid, else at its peak.

    Parameters
    ----------
    src : ndarray, shape (K,), dtype of :func:`hpcblend.io.schema.source_spec` (tract columns)
        ``x``, ``y`` (NaN where not measured), ``peak_x``, ``peak_y`` in tract pixels; ``ra``,
        ``dec`` are set in place.
    wcs : astropy.wcs.WCS
        The tract's WCS.
    """
    yy = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"])
    xx = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"])
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    src["ra"], src["dec"] = ra, dec
