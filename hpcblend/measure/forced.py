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
  sub-pixel part of the position is applied to the PSF stamp by a Fourier shift
  (exact for a band-limited PSF; Nyquist-sampled PSFs may ring slightly); the
  stamp's spectrum is computed once per PSF and the fit runs in compiled code
  (:mod:`hpcblend.kernels.photometry`), on the stamp's pixels only.
* **Aperture fluxes** — ``sep.sum_circle`` (Bertin & Arnouts 1996; Barbary
  2016) with exact pixel/circle overlap at radii ``radii`` (pixels), error
  from the variance. Zero-weight pixels are filled with the child's own model
  (as the flux-conserving deblender does) and flagged.
* **Shape** — adaptive second moments (:mod:`hpcblend.kernels.moments`,
  Bernstein & Jarvis 2002) of the child's flux-conserving deblended image
  ("heavy footprint") ``H_kb = Y_b · m_kb / M_b`` (zero where ``M_b = 0``, the
  model standing in for the data at zero-weight pixels), summed over bands
  or taken in one band; plus the same moments of the PSF (once per PSF).

:func:`forced_photometry` writes ``R_kb = A_b + m_kb`` with ``A_b = Y_b − M_b``
at weighted pixels (0 elsewhere, so ``R_kb = m_kb`` there): the compiled PSF
fit reads ``A`` and ``m_k`` pixel by pixel, the apertures sum ``A + m_k``, and
the masked-pixel counts of all children's apertures take one ``sep`` call per
band.
:func:`forced_photometry_reference` is the former child-by-child NumPy
implementation, kept as the reference the tests compare it with (same values
to rounding).

The models are treated as exact: the errors contain the pixel noise only,
not the uncertainty of the subtracted neighbours.

Units: fluxes in counts (the images' units), positions in pixels of the
images' frame (``(y, x)`` in code, ``x``/``y`` columns), moments in pixels².
"""

from __future__ import annotations

import functools
import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import sep

from hpcblend.errors import BlendDataError, PsfError
from hpcblend.io.schema import DEFAULT_APERTURE_RADII, forced_columns, radius_label
from hpcblend.kernels import photometry as kp
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
    "forced_photometry",
    "forced_photometry_reference",
]

#: PSF pixels above 1 % of its peak fall outside the image (the fit uses the part inside).
FORCED_PSF_EDGE = kp.PSF_EDGE
#: No pixel with weight > 0 under the PSF: PSF flux is NaN.
FORCED_PSF_NO_DATA = kp.PSF_NO_DATA
#: Zero-weight pixels where the PSF is above 1 % of its peak.
FORCED_PSF_MASKED = kp.PSF_MASKED
#: An aperture extends beyond the image edge (``sep.APER_TRUNC``).
FORCED_AP_TRUNCATED = 8
#: An aperture holds zero-weight pixels (filled with the child's model).
FORCED_AP_MASKED = 16
#: Adaptive moments failed (see ``shape_flag`` for the kernel's bits).
FORCED_SHAPE_FAILED = 32
#: The position lies outside the image: every measurement is NaN.
FORCED_OFF_IMAGE = 64

#: σ (pixels) the adaptive moments of the PSF start from: about the HSC coadd PSF.
PSF_MOMENTS_SIGMA0 = 1.5
#: σ (pixels) the children's adaptive moments start from when the PSF's moments fail.
SHAPE_SIGMA0_FALLBACK = 2.0
#: PSFs whose padded stamps, spectra and moments are kept (a patch has one; a job a few).
PSF_CACHE_SIZE = 8

ModelSource = Union[np.ndarray, Callable[[int], np.ndarray]]


class _PsfTerms(NamedTuple):
    """What forced photometry needs of one PSF stack: computed once per PSF (and shape band)."""

    psfs: np.ndarray  # (B, Ph, Pw) float64, the normalised PSFs (the cache's key, with sb)
    sb: Optional[int]
    padded: np.ndarray  # (B, Ph + 2 pad, Pw + 2 pad) float64, zero-padded
    spectra: np.ndarray  # (B, Ph + 2 pad, (Pw + 2 pad) // 2 + 1) complex128, their rfft2
    moments: Tuple[float, float, float, float]  # psf xx, yy, xy (px², NaN if failed), children's start σ


#: The last :data:`PSF_CACHE_SIZE` PSF stacks seen, newest last.
_PSF_CACHE: List[_PsfTerms] = []


def _psf_terms(psfs: np.ndarray, sb: Optional[int]) -> _PsfTerms:
    """:class:`_PsfTerms` of the normalised ``psfs`` (B, Ph, Pw): from the cache when the same values were seen."""
    for hit in reversed(_PSF_CACHE):
        if hit.sb == sb and hit.psfs.shape == psfs.shape and np.array_equal(hit.psfs, psfs):
            return hit
    padded, spectra = kp.padded_psf_spectra(psfs)
    hit = _PsfTerms(psfs.copy(), sb, padded, spectra, _psf_moments(psfs, sb))
    _PSF_CACHE.append(hit)
    del _PSF_CACHE[:-PSF_CACHE_SIZE]
    return hit


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


class _Inputs(NamedTuple):
    """The checked inputs of :func:`forced_photometry` and its reference."""

    bands: Tuple[str, ...]
    radii: Tuple[float, ...]
    positions: np.ndarray  # (K, 2) float64
    psfs: np.ndarray  # (B, Ph, Pw) float64, each summing to 1
    sb: Optional[int]  # shape band, None: all
    images: np.ndarray  # (B, H, W) as given
    variance: np.ndarray  # (B, H, W) as given
    weights: Optional[np.ndarray]  # (B, H, W) as given, or None
    model: Callable[[int], np.ndarray]  # k -> (B, H, W) float64
    total: np.ndarray  # (B, H, W) float64, the sum of the models


def _inputs(images, variance, positions, psfs, bands, models, weights, radii, shape_band) -> _Inputs:
    """Check and convert the arguments of :func:`forced_photometry` (its Raises) and sum the models."""
    bands = tuple(str(b) for b in bands)
    images, variance, weights, positions, psfs = _check_inputs(images, variance, weights, positions,
                                                               psfs, bands)
    radii = tuple(float(r) for r in radii)
    if any(not r > 0 for r in radii):
        raise ValueError(f"forced_photometry: aperture radii must be > 0 px, got {radii}")
    sb = _shape_band_index(shape_band, bands)
    model = _model_source(models, positions.shape[0], images.shape)
    total = np.zeros(images.shape)
    for k in range(positions.shape[0]):
        total += model(k)
    return _Inputs(bands, radii, positions, psfs, sb, images, variance, weights, model, total)


def _on_image(y: float, x: float, h: int, w: int) -> bool:
    """Whether ``(y, x)`` lies on an (h, w) image (pixel centres at integers)."""
    return -0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5


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
        ``flags``, ...). The same values as :func:`forced_photometry_reference`
        to rounding.

    Raises
    ------
    BlendDataError
        If shapes disagree (images/variance/weights/models/positions/bands).
    PsfError
        If the PSFs are not (B, odd, odd), finite and of positive sum.
    ValueError
        If a radius is not > 0 or ``shape_band`` is unknown.
    """
    inp = _inputs(images, variance, positions, psfs, bands, models, weights, radii, shape_band)
    nb, h, w = inp.images.shape
    nk, nr = inp.positions.shape[0], len(inp.radii)
    terms = _psf_terms(inp.psfs, inp.sb)
    # base = Y - M at weighted pixels (R_k = base + m_k); data_or_model: the model stands in for missing data
    wts, good, var, base, data_or_model, sigma = kp.weighted_planes(
        inp.images, inp.variance, inp.images if inp.weights is None else inp.weights, inp.weights is not None,
        inp.total)
    rr = np.asarray(inp.radii, dtype=np.float64)
    ys, xs = inp.positions[:, 0], inp.positions[:, 1]
    cols = _Measured(nk, nb, nr)
    for k in range(nk):
        y, x = float(ys[k]), float(xs[k])
        if not _on_image(y, x, h, w):
            continue
        cols.on_image[k] = True
        mk = inp.model(k)
        kp.psf_fluxes(base, mk, wts, var, terms.padded, terms.spectra, y, x,
                      cols.psf[k], cols.psf_err[k], cols.psf_flag[k])
        resid = base + mk
        yk, xk = np.full(nr, y), np.full(nr, x)
        for b in range(nb):
            cols.ap[k, :, b], cols.ap_err[k, :, b], cols.sep_flag[k, :, b] = sep.sum_circle(
                resid[b], xk, yk, rr, err=sigma[b], subpix=0)
        cols.shape[k] = kp.heavy_moments(data_or_model, inp.total, mk, -1 if inp.sb is None else inp.sb,
                                         y, x, terms.moments[3])
    return cols.table(inp.bands, inp.radii, inp.positions, terms.moments, _masked_in_apertures(good, ys, xs, rr))


def _masked_in_apertures(good: np.ndarray, ys: np.ndarray, xs: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """``sep.sum_circle`` of the zero-weight pixels (B, K, R): > 0 where child k's aperture r holds one in band b."""
    out = np.zeros((good.shape[0], ys.size, rr.size))
    if ys.size:
        xa, ya, ra = np.repeat(xs, rr.size), np.repeat(ys, rr.size), np.tile(rr, ys.size)
        # only bands with a masked pixel within reach of an aperture can count one
        near = kp.masked_near(good, np.ascontiguousarray(ys), np.ascontiguousarray(xs), float(rr.max()) + 1.0)
        for b in np.flatnonzero(near):
            bad = (~good[b]).astype(np.float64)
            out[b] = sep.sum_circle(bad, xa, ya, ra, subpix=0)[0].reshape(ys.size, rr.size)
    return out


class _Measured:
    """The measurements of :func:`forced_photometry` as arrays (child first), turned into rows by :meth:`table`."""

    def __init__(self, nk: int, nb: int, nr: int) -> None:
        self.on_image = np.zeros(nk, dtype=bool)
        self.psf = np.full((nk, nb), np.nan)
        self.psf_err = np.full((nk, nb), np.nan)
        self.psf_flag = np.zeros((nk, nb), dtype=np.int32)
        self.ap = np.full((nk, nr, nb), np.nan)
        self.ap_err = np.full((nk, nr, nb), np.nan)
        self.sep_flag = np.zeros((nk, nr, nb), dtype=np.int64)  # sep.sum_circle's flags
        # adaptive moments: xx, yy, xy, x, y, flux, n_iter, flag
        self.shape = np.full((nk, 8), np.nan)
        self.shape[:, 6:] = 0

    def table(self, bands: Tuple[str, ...], radii: Tuple[float, ...], positions: np.ndarray, psf_moments,
              n_bad: np.ndarray) -> np.ndarray:
        """The rows (K,) of :func:`forced_columns` for children at ``positions`` (K, 2); ``n_bad`` (B, K, R):
        masked pixels in each aperture (only ``> 0`` matters)."""
        on = self.on_image
        ap_flag = (np.where(self.sep_flag & sep.APER_TRUNC, FORCED_AP_TRUNCATED, 0)
                   | np.where(n_bad.transpose(1, 2, 0) > 0, FORCED_AP_MASKED, 0)) * on[:, None, None]
        shape_failed = np.where(on & (self.shape[:, 7] != MOMENTS_OK), FORCED_SHAPE_FAILED, 0)
        flags = (np.bitwise_or.reduce(self.psf_flag, axis=1) | np.bitwise_or.reduce(ap_flag, axis=(1, 2))
                 | shape_failed)
        out = _empty_table(bands, radii, len(on))
        out["y"], out["x"] = positions[:, 0], positions[:, 1]
        psf_names, ap_names = _flux_column_names(bands, radii)
        for b, (f, e, fl) in enumerate(psf_names):
            out[f], out[e], out[fl] = self.psf[:, b], self.psf_err[:, b], self.psf_flag[:, b]
        for (i, b), (f, e, fl) in ap_names.items():
            out[f], out[e], out[fl] = self.ap[:, i, b], self.ap_err[:, i, b], ap_flag[:, i, b]
        for i, name in enumerate(_SHAPE_COLUMNS):
            out[name] = self.shape[:, i]
        out["psf_shape_xx"], out["psf_shape_yy"], out["psf_shape_xy"] = psf_moments[:3]
        out["flags"] = np.where(on, flags, FORCED_OFF_IMAGE)
        return out


def forced_photometry_reference(images, variance, positions, psfs, bands: Sequence[str], models: ModelSource,
                                weights=None, radii: Sequence[float] = DEFAULT_APERTURE_RADII,
                                shape_band: Optional[Union[int, str]] = None) -> np.ndarray:
    """:func:`forced_photometry` child by child on full frames in NumPy (the reference; same parameters).

    Forms each child's residual ``R_k`` and heavy footprint, fits the PSF with
    :func:`hpcblend.kernels.photometry.psf_flux_reference` (a Fourier shift of the PSF per child and
    band) and calls ``sep.sum_circle`` twice per child and band. Kept for the tests.
    """
    inp = _inputs(images, variance, positions, psfs, bands, models, weights, radii, shape_band)
    data, var, wts, good = _weighted_pixels(inp.images, inp.variance, inp.weights)
    nb, h, w = data.shape
    nk = inp.positions.shape[0]
    out = _empty_table(inp.bands, inp.radii, nk)
    psf_moments = _psf_moments(inp.psfs, inp.sb)
    out["psf_shape_xx"], out["psf_shape_yy"], out["psf_shape_xy"] = psf_moments[:3]
    sigma = np.sqrt(var)
    data_or_model = np.where(good, data, inp.total)
    ratio_den = np.where(inp.total > 0, inp.total, 1.0)
    for k in range(nk):
        y, x = float(inp.positions[k, 0]), float(inp.positions[k, 1])
        out["y"][k], out["x"][k] = y, x
        if not _on_image(y, x, h, w):
            out["flags"][k] = FORCED_OFF_IMAGE
            continue
        mk = inp.model(k)
        # Y - Σ_{j≠k} m_j at good pixels; the child's own model where data are missing
        resid = np.where(good, data - inp.total + mk, mk)
        flags = 0
        for b, band in enumerate(inp.bands):
            flags |= _measure_band(out, k, band, resid[b], wts[b], var[b], sigma[b], good[b], inp.psfs[b], y, x,
                                   inp.radii)
        # heavy footprint: flux-conserving share of the data (model where data are missing)
        heavy = np.where(inp.total > 0, data_or_model * mk / ratio_den, 0.0)
        flags |= _measure_shape(out, k, heavy.sum(axis=0) if inp.sb is None else heavy[inp.sb], y, x,
                                psf_moments[3])
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


#: The columns of :func:`hpcblend.kernels.moments.adaptive_moments`'s results, in its order.
_SHAPE_COLUMNS = ("shape_xx", "shape_yy", "shape_xy", "shape_x", "shape_y", "shape_flux", "shape_n_iter",
                  "shape_flag")


@functools.lru_cache(maxsize=16)
def _flux_column_names(bands: Tuple[str, ...], radii: Tuple[float, ...]) -> tuple:
    """``(psf, ap)``: per band the (flux, error, flag) column names of the PSF flux, and per
    (radius index, band index) those of the aperture flux."""
    psf = tuple((f"psf_flux_{b}", f"psf_flux_err_{b}", f"psf_flux_flag_{b}") for b in bands)
    ap = {(i, j): (f"ap_flux_{radius_label(r)}_{b}", f"ap_flux_err_{radius_label(r)}_{b}",
                   f"ap_flux_flag_{radius_label(r)}_{b}")
          for i, r in enumerate(radii) for j, b in enumerate(bands)}
    return psf, ap


@functools.lru_cache(maxsize=16)
def _empty_row(bands: Tuple[str, ...], radii: Tuple[float, ...]) -> np.ndarray:
    """One row (1,) of :func:`forced_columns`: NaN in every float column, 0 in the others (read-only)."""
    cols = forced_columns(bands, radii)
    row = np.zeros(1, dtype=[(n, d) for n, d, _ in cols])
    for n, d, _ in cols:
        if d.kind == "f":
            row[n] = np.nan
    row.flags.writeable = False
    return row


def _empty_table(bands: Tuple[str, ...], radii: Tuple[float, ...], nk: int) -> np.ndarray:
    """The output rows (K,) of :func:`forced_columns`: NaN in every float column, 0 in the others."""
    return np.repeat(_empty_row(bands, radii), nk)


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
    """Reference: PSF and aperture fluxes of child k in one band on its residual image (H, W), into row k of ``out``.

    Returns the ``FORCED_PSF_*`` and ``FORCED_AP_*`` bits set.
    """
    f, e, fl = kp.psf_flux_reference(resid, wts, var, psf, y, x)
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
    """Reference: adaptive moments of child k's heavy footprint ``image`` (H, W) into row k of ``out``;
    FORCED_SHAPE_FAILED or 0."""
    mxx, myy, mxy, mx, my, mflux, n_iter, mflag = adaptive_moments(np.ascontiguousarray(image), y, x, sigma0)
    out["shape_xx"][k], out["shape_yy"][k], out["shape_xy"][k] = mxx, myy, mxy
    out["shape_x"][k], out["shape_y"][k], out["shape_flux"][k] = mx, my, mflux
    out["shape_n_iter"][k], out["shape_flag"][k] = n_iter, mflag
    return FORCED_SHAPE_FAILED if mflag != MOMENTS_OK else 0
