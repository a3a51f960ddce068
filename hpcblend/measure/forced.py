"""Forced photometry of deblended children, with the neighbours' models subtracted.

The LSST pipeline's ``forced_src`` / ``deepCoadd_forced_src`` measure every
object in every band at a fixed (reference) position, on the image with the
deblended neighbours replaced by noise (Bosch et al. 2018, PASJ 70, S5,
Sect. 4.9 and 5.1). Here the neighbours are removed by subtracting their
fitted models: for child ``k`` in band ``b``

.. math:: R_{kb} = Y_b - \\sum_{j \\ne k} m_{jb} = Y_b - M_b + m_{kb},

with ``m_kb`` the child's rendered observed-frame model (counts) and
``M_b = Σ_j m_jb``. On ``R_kb`` (no file access, plain arrays):

* **PSF flux** — the linear least-squares amplitude of the band's PSF image
  (normalised to sum 1) centred at the child's position,
  ``f = Σ w R P / Σ w P²``, with error
  ``sqrt(Σ w² V P²) / Σ w P²`` (= ``(Σ w P²)^{-1/2}`` for ``w = 1/V``). The
  sub-pixel part of the position is applied to the PSF by a Fourier shift
  (exact for a band-limited PSF; Nyquist-sampled PSFs may ring slightly).
* **Aperture fluxes** — ``sep.sum_circle`` (Bertin & Arnouts 1996; Barbary
  2016) with exact pixel/circle overlap at radii ``radii`` (pixels), error
  from the variance. Zero-weight pixels are filled with the child's own model
  (as the flux-conserving deblender does) and flagged.
* **Shape** — adaptive second moments (:mod:`hpcblend.kernels.moments`,
  Bernstein & Jarvis 2002) of the child's flux-conserving deblended image
  ("heavy footprint") ``H_kb = Y_b · m_kb / M_b`` (zero where ``M_b = 0``, the
  model standing in for the data at zero-weight pixels), summed over bands
  or taken in one band; plus the same moments of the PSF.

The models are treated as exact: the errors contain the pixel noise only,
not the uncertainty of the subtracted neighbours.

Units: fluxes in counts (the images' units), positions in pixels of the
images' frame (``(y, x)`` in code, ``x``/``y`` columns), moments in pixels².
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import sep

from hpcblend.io.schema import DEFAULT_APERTURE_RADII, forced_columns, radius_label
from hpcblend.errors import BlendDataError, PsfError
from hpcblend.kernels.moments import MOMENTS_OK, adaptive_moments

__all__ = [
    "FORCED_PSF_EDGE",
    "FORCED_PSF_NO_DATA",
    "FORCED_PSF_MASKED",
    "FORCED_AP_TRUNCATED",
    "FORCED_AP_MASKED",
    "FORCED_SHAPE_FAILED",
    "FORCED_OFF_IMAGE",
    "radius_label",
    "forced_columns",
    "shift_image",
    "psf_flux",
    "forced_photometry",
]

#: PSF pixels above 1 % of its peak fall outside the image (the fit uses the part inside).
FORCED_PSF_EDGE = 1
#: No pixel with weight > 0 under the PSF: PSF flux is NaN.
FORCED_PSF_NO_DATA = 2
#: Zero-weight pixels where the PSF is above 1 % of its peak.
FORCED_PSF_MASKED = 4
#: An aperture extends beyond the image edge (``sep.APER_TRUNC``).
FORCED_AP_TRUNCATED = 8
#: An aperture holds zero-weight pixels (filled with the child's model).
FORCED_AP_MASKED = 16
#: Adaptive moments failed (see ``shape_flag`` for the kernel's bits).
FORCED_SHAPE_FAILED = 32
#: The position lies outside the image: every measurement is NaN.
FORCED_OFF_IMAGE = 64

#: PSF pixels above this fraction of its peak are its core: the ``FORCED_PSF_EDGE`` and
#: ``FORCED_PSF_MASKED`` flags look at them only (the wings carry little of the fit's weight).
PSF_CORE_FRACTION = 1e-2
#: Zero pixels around the PSF image before its Fourier sub-pixel shift (less wrap-around).
PSF_SHIFT_PAD = 2
#: σ (pixels) the adaptive moments of the PSF start from: about the HSC coadd PSF.
PSF_MOMENTS_SIGMA0 = 1.5
#: σ (pixels) the children's adaptive moments start from when the PSF's moments fail.
SHAPE_SIGMA0_FALLBACK = 2.0

ModelSource = Union[np.ndarray, Callable[[int], np.ndarray]]


def shift_image(image: np.ndarray, dy: float, dx: float, pad: int = PSF_SHIFT_PAD) -> np.ndarray:
    """Shift an odd-sized image by a sub-pixel offset with the Fourier shift theorem.

    Parameters
    ----------
    image : ndarray, shape (h, w), h and w odd
        E.g. a PSF image centred on its central pixel.
    dy, dx : float
        Shift (pixels); the content moves to larger ``y``/``x`` for positive values.
    pad : int
        Zero padding on every side before the FFT (reduces wrap-around).

    Returns
    -------
    ndarray, shape (h + 2 pad, w + 2 pad), float64
        The shifted image (same sum), still centred on its central pixel
        apart from the shift.
    """
    p = np.pad(np.asarray(image, dtype=np.float64), int(pad))
    if dy == 0 and dx == 0:
        return p
    ky = np.fft.fftfreq(p.shape[0])[:, None]
    kx = np.fft.rfftfreq(p.shape[1])[None, :]
    phase = np.exp(-2j * np.pi * (ky * dy + kx * dx))
    return np.fft.irfft2(np.fft.rfft2(p) * phase, s=p.shape)


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def psf_flux(image: np.ndarray, weights: np.ndarray, variance: np.ndarray, psf: np.ndarray,
             y: float, x: float) -> Tuple[float, float, int]:
    """Least-squares PSF amplitude at a fixed position in one band.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Pixels (counts), e.g. the image with the neighbours' models subtracted.
    weights : ndarray, shape (H, W)
        Fit weights (1/counts², 0 = ignore the pixel).
    variance : ndarray, shape (H, W)
        Variance (counts²) for the error.
    psf : ndarray, shape (Ph, Pw), odd sides
        PSF image, centred on its central pixel, summing to 1.
    y, x : float
        Position (pixels, image frame).

    Returns
    -------
    flux, flux_err : float
        Counts; NaN when no weighted pixel lies under the PSF.
    flag : int
        ``FORCED_PSF_EDGE | FORCED_PSF_NO_DATA | FORCED_PSF_MASKED`` bits.
    """
    h, w = image.shape
    iy, ix = _round_half_up(y), _round_half_up(x)
    p = shift_image(psf, y - iy, x - ix, pad=PSF_SHIFT_PAD)
    ry, rx = p.shape[0] // 2, p.shape[1] // 2
    y0, x0 = iy - ry, ix - rx
    ya, yb = max(y0, 0), min(y0 + p.shape[0], h)
    xa, xb = max(x0, 0), min(x0 + p.shape[1], w)
    flag = 0
    if ya >= yb or xa >= xb:
        return float("nan"), float("nan"), FORCED_PSF_NO_DATA | FORCED_PSF_EDGE
    core = np.abs(p) > PSF_CORE_FRACTION * np.abs(p).max()
    inside = np.zeros(p.shape, dtype=bool)
    inside[ya - y0:yb - y0, xa - x0:xb - x0] = True
    if (core & ~inside).any():
        flag |= FORCED_PSF_EDGE
    ps = p[ya - y0:yb - y0, xa - x0:xb - x0]
    ws = np.asarray(weights[ya:yb, xa:xb], dtype=np.float64)
    good = ws > 0
    if (core[ya - y0:yb - y0, xa - x0:xb - x0] & ~good).any():
        flag |= FORCED_PSF_MASKED
    wp = np.where(good, ws * ps, 0.0)
    den = float((wp * ps).sum())
    if not den > 0:
        return float("nan"), float("nan"), flag | FORCED_PSF_NO_DATA
    data = np.where(good, image[ya:yb, xa:xb], 0.0)
    var = np.where(good, variance[ya:yb, xa:xb], 0.0)
    flux = float((wp * data).sum()) / den
    err = math.sqrt(float((wp * wp * var).sum())) / den
    return flux, err, flag


def _check_inputs(images, variance, weights, positions, psfs, bands):
    images = np.asarray(images)
    variance = np.asarray(variance)
    if images.ndim != 3:
        raise BlendDataError(f"forced_photometry: images must be (B, H, W), got shape {images.shape}")
    if variance.shape != images.shape:
        raise BlendDataError(f"forced_photometry: variance shape {variance.shape} differs from images {images.shape}")
    nb = images.shape[0]
    if len(bands) != nb:
        raise BlendDataError(f"forced_photometry: {len(bands)} band names {tuple(bands)} for {nb} image planes")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != images.shape:
            raise BlendDataError(f"forced_photometry: weights shape {weights.shape} differs from images {images.shape}")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise BlendDataError(f"forced_photometry: positions must be (K, 2) in (y, x), got shape {positions.shape}")
    if not np.all(np.isfinite(positions)):
        raise BlendDataError("forced_photometry: positions not finite")
    psfs = np.asarray(psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != nb or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"forced_photometry: psfs must be (B={nb}, Ph, Pw) with odd sides, got shape {psfs.shape}")
    sums = psfs.sum(axis=(1, 2))
    if not np.all(np.isfinite(psfs)) or np.any(sums <= 0):
        raise PsfError(f"forced_photometry: PSF images not finite or not positive (sums {sums.tolist()})")
    return images, variance, weights, positions, psfs / sums[:, None, None]


def forced_photometry(images, variance, positions, psfs, bands: Sequence[str], models: ModelSource,
                      weights=None, radii: Sequence[float] = DEFAULT_APERTURE_RADII,
                      shape_band: Optional[Union[int, str]] = None) -> np.ndarray:
    """PSF, aperture and shape measurements of every child in every band.

    Parameters
    ----------
    images : array_like, shape (B, H, W)
        Background-subtracted pixels (counts), e.g. a blend's ``images``.
    variance : array_like, shape (B, H, W)
        Variance (counts²).
    positions : array_like, shape (K, 2)
        Child positions ``(y, x)`` (pixels, images' frame; float, e.g. the
        centroids, or integer peaks).
    psfs : array_like, shape (B, Ph, Pw)
        Per-band PSF images, odd-sized, centred (renormalised to sum 1 here).
    bands : sequence of str
        Band names (B), used in the column names.
    models : ndarray, shape (K, B, H, W), or callable
        Each child's observed-frame model (counts; ``a_k ⊗ (D_b * S_k)``), or
        ``models(k) -> ndarray (B, H, W)`` (called twice per child: once to
        build the sum, once to measure) so that K full-size models need not
        be held at once.
    weights : array_like, shape (B, H, W), optional
        Inverse-variance weights (1/counts²), 0 where a pixel must be ignored
        (masked; outside the parent footprint, to keep out other objects).
        Default: ``1/variance`` where image and variance are finite and
        variance > 0, else 0. Pixels with weight 0 are left out of the PSF
        fit and are filled with the child's model in the apertures and the
        heavy footprint.
    radii : sequence of float
        Aperture radii (pixels).
    shape_band : int or str, optional
        Band (index or name) whose heavy footprint and PSF give the shape;
        None: the sum over bands of the heavy footprints, and the mean PSF.

    Returns
    -------
    ndarray, shape (K,), structured
        One row per child, columns as :func:`forced_columns` lists them
        (``psf_flux_<b>``, ``psf_flux_err_<b>``, ``ap_flux_<r>_<b>``,
        ``ap_flux_err_<r>_<b>``, ``shape_xx``, ``shape_yy``, ``shape_xy``,
        ``flags``, ...).

    Raises
    ------
    BlendDataError
        If shapes disagree (images/variance/weights/models/positions/bands).
    PsfError
        If the PSFs are not (B, odd, odd), finite and of positive sum.
    ValueError
        If a radius is not > 0 or ``shape_band`` is unknown.
    """
    bands = tuple(str(b) for b in bands)
    images, variance, weights, positions, psfs = _check_inputs(images, variance, weights, positions,
                                                               psfs, bands)
    nb, h, w = images.shape
    nk = positions.shape[0]
    radii = tuple(float(r) for r in radii)
    if any(not r > 0 for r in radii):
        raise ValueError(f"forced_photometry: aperture radii must be > 0 px, got {radii}")
    sb = _shape_band_index(shape_band, bands)
    data, var, wts, good = _weighted_pixels(images, variance, weights)
    model = _model_source(models, nk, (nb, h, w))
    total = np.zeros((nb, h, w))
    for k in range(nk):
        total += model(k)
    out = _empty_table(bands, radii, nk)
    psf_moments = _psf_moments(psfs, sb)
    out["psf_shape_xx"], out["psf_shape_yy"], out["psf_shape_xy"] = psf_moments[:3]
    sigma = np.sqrt(var)
    data_or_model = np.where(good, data, total)  # the model stands in for missing data
    ratio_den = np.where(total > 0, total, 1.0)
    for k in range(nk):
        y, x = float(positions[k, 0]), float(positions[k, 1])
        out["y"][k], out["x"][k] = y, x
        if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
            out["flags"][k] = FORCED_OFF_IMAGE
            continue
        mk = model(k)
        # Y - Σ_{j≠k} m_j at good pixels; the child's own model where data are missing
        resid = np.where(good, data - total + mk, mk)
        flags = 0
        for b, band in enumerate(bands):
            flags |= _measure_band(out, k, band, resid[b], wts[b], var[b], sigma[b], good[b], psfs[b], y, x, radii)
        # heavy footprint: flux-conserving share of the data (model where data are missing)
        heavy = np.where(total > 0, data_or_model * mk / ratio_den, 0.0)
        flags |= _measure_shape(out, k, heavy.sum(axis=0) if sb is None else heavy[sb], y, x, psf_moments[3])
        out["flags"][k] = flags
    return out


def _shape_band_index(shape_band: Optional[Union[int, str]], bands: Tuple[str, ...]) -> Optional[int]:
    """Index of the band that gives the shape (None: the sum over bands); ValueError when unknown."""
    if shape_band is None:
        return None
    if isinstance(shape_band, str):
        if shape_band not in bands:
            raise ValueError(f"forced_photometry: shape_band {shape_band!r} not in bands {bands}")
        return bands.index(shape_band)
    sb = int(shape_band)
    if not 0 <= sb < len(bands):
        raise ValueError(f"forced_photometry: shape_band index {shape_band} out of range for {len(bands)} bands")
    return sb


def _weighted_pixels(images: np.ndarray, variance: np.ndarray, weights: Optional[np.ndarray]):
    """Data, variance and weights (B, H, W) float64, zero where a pixel has no weight, and the weighted pixels (bool).

    Weights default to ``1/variance`` where image and variance are finite and the variance > 0.
    """
    data = np.asarray(images, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    if weights is None:
        good = np.isfinite(data) & np.isfinite(var) & (var > 0)
        wts = np.zeros(data.shape)
        np.divide(1.0, var, out=wts, where=good)
    else:
        wts = np.where(np.isfinite(weights), np.asarray(weights, dtype=np.float64), 0.0)
        good = wts > 0
    return np.where(good, data, 0.0), np.where(good, var, 0.0), wts, good


def _model_source(models: ModelSource, nk: int, shape: Tuple[int, int, int]) -> Callable[[int], np.ndarray]:
    """``model(k)``: child k's model (B, H, W) float64, from an array (K, B, H, W) or a callable; shapes checked."""
    if callable(models):
        get_model = models
    else:
        marr = np.asarray(models)
        if marr.shape != (nk,) + shape:
            raise BlendDataError(f"forced_photometry: models shape {marr.shape}, expected (K, B, H, W) = "
                                 f"{(nk,) + shape}")
        get_model = marr.__getitem__

    def model(k: int) -> np.ndarray:
        m = np.asarray(get_model(k), dtype=np.float64)
        if m.shape != shape:
            raise BlendDataError(f"forced_photometry: model of child {k} has shape {m.shape}, expected {shape}")
        return m

    return model


def _empty_table(bands: Tuple[str, ...], radii: Tuple[float, ...], nk: int) -> np.ndarray:
    """The output rows (K,) of :func:`forced_columns`: NaN in every float column, 0 in the others."""
    cols = forced_columns(bands, radii)
    out = np.zeros(nk, dtype=[(n, d) for n, d, _ in cols])
    for n, d, _ in cols:
        if d.kind == "f":
            out[n] = np.nan
    return out


def _psf_moments(psfs: np.ndarray, sb: Optional[int]) -> Tuple[float, float, float, float]:
    """Adaptive moments ``xx``, ``yy``, ``xy`` (pixels², NaN when they fail) of the shape PSF (band ``sb``,
    or the mean PSF), and the σ (pixels) the children's moments start from."""
    psf_for_shape = psfs.mean(axis=0) if sb is None else psfs[sb]
    pc = (psf_for_shape.shape[0] // 2, psf_for_shape.shape[1] // 2)
    pxx, pyy, pxy, _, _, _, _, pflag = adaptive_moments(np.ascontiguousarray(psf_for_shape),
                                                        float(pc[0]), float(pc[1]), PSF_MOMENTS_SIGMA0)
    sigma0 = math.sqrt(0.5 * (pxx + pyy)) if pflag == MOMENTS_OK else SHAPE_SIGMA0_FALLBACK
    if pflag != MOMENTS_OK:
        pxx = pyy = pxy = float("nan")
    return pxx, pyy, pxy, sigma0


def _measure_band(out: np.ndarray, k: int, band: str, resid: np.ndarray, wts: np.ndarray, var: np.ndarray,
                  sigma: np.ndarray, good: np.ndarray, psf: np.ndarray, y: float, x: float,
                  radii: Tuple[float, ...]) -> int:
    """PSF and aperture fluxes of child k in one band on its residual image (H, W), into row k of ``out``.

    Returns the ``FORCED_PSF_*`` and ``FORCED_AP_*`` bits set.
    """
    f, e, fl = psf_flux(resid, wts, var, psf, y, x)
    out[f"psf_flux_{band}"][k], out[f"psf_flux_err_{band}"][k] = f, e
    out[f"psf_flux_flag_{band}"][k] = fl
    flags = fl
    rr = np.asarray(radii, dtype=np.float64)
    ys = np.full(len(rr), y)
    xs = np.full(len(rr), x)
    s, se, sflag = sep.sum_circle(np.ascontiguousarray(resid), xs, ys, rr, err=np.ascontiguousarray(sigma), subpix=0)
    nbad, _, _ = sep.sum_circle(np.ascontiguousarray((~good).astype(np.float64)), xs, ys, rr, subpix=0)
    for i, r in enumerate(radii):
        lab = radius_label(r)
        af = 0
        if sflag[i] & sep.APER_TRUNC:
            af |= FORCED_AP_TRUNCATED
        if nbad[i] > 0:
            af |= FORCED_AP_MASKED
        out[f"ap_flux_{lab}_{band}"][k] = s[i]
        out[f"ap_flux_err_{lab}_{band}"][k] = se[i]
        out[f"ap_flux_flag_{lab}_{band}"][k] = af
        flags |= af
    return flags


def _measure_shape(out: np.ndarray, k: int, image: np.ndarray, y: float, x: float, sigma0: float) -> int:
    """Adaptive moments of child k's heavy footprint ``image`` (H, W) into row k of ``out``; FORCED_SHAPE_FAILED or 0."""
    mxx, myy, mxy, mx, my, mflux, n_iter, mflag = adaptive_moments(np.ascontiguousarray(image), y, x, sigma0)
    out["shape_xx"][k], out["shape_yy"][k], out["shape_xy"][k] = mxx, myy, mxy
    out["shape_x"][k], out["shape_y"][k], out["shape_flux"][k] = mx, my, mflux
    out["shape_n_iter"][k], out["shape_flag"][k] = n_iter, mflag
    return FORCED_SHAPE_FAILED if mflag != MOMENTS_OK else 0
