"""Expected S/N of simulated truth sources: matched-filter S/N per band and the detection significance model.

Used by :mod:`hpcblend.analysis.validate` (definitions in its module
docstring, "Truth S/N"): :func:`truth_snr` gives each truth source's
per-band and multi-band S/N on the sky noise, and its expected peak in the
pipeline's detection significance image (:class:`DetectionModel`, galaxies
as circular Gaussians of their half-light radius);
:func:`detection_significance` evaluates that model at a distance from a
source (a neighbour's light at a lost source's centre).
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter

from hpcblend.io.psf import PSF_SUM_TOLERANCE
from hpcblend.io.coadd import read_psf_file

__all__ = ["bands_of_truth", "truth_psf_images", "DetectionModel", "truth_snr", "detection_significance"]

_GAUSS_HLR = 1.1774100225154747  # half-light radius / sigma of a 2-D Gaussian


def bands_of_truth(truth) -> list:
    """Band names of a truth table, from its ``flux_<b>`` columns, in column order."""
    return [c[len("flux_"):] for c in truth.colnames if c.startswith("flux_")]


def truth_psf_images(tract_dir: Optional[str], bands) -> dict:
    """Band -> PSF image (unit sum) read from ``<tract_dir>/psf_<b>.fits``; bands without a file are left out."""
    out = {}
    for b in bands:
        path = os.path.join(tract_dir, f"psf_{b}.fits") if tract_dir else ""
        if path and os.path.isfile(path):
            out[b] = read_psf_file(path, b, PSF_SUM_TOLERANCE)
    return out


def _gauss_kernel(sigma: float, half: int) -> np.ndarray:
    r = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    return g / g.sum()


class DetectionModel:
    """Expected (noiseless) significance profiles in the pipeline's detection image.

    For band PSF images ``P_b`` and a circular Gaussian galaxy of σ ``g``, the
    detection significance at distance ``r`` from a source of fluxes ``F_b`` is
    ``S(r) = Σ_b w_b F_b (K ⊗ P_b ⊗ G_g)(r) / (sqrt(Σ_b w_b) sqrt(Σ K²))``
    (:func:`hpcblend.detect.detection_image` weighted mean with ``w_b = 1/σ_b²``,
    :func:`hpcblend.detect.significance_image` with a Gaussian filter ``K`` of
    ``filter_sigma``). Profiles are tabulated on a grid of ``g`` (0-12 px,
    0.25 px steps) and radii 0-``half`` px along a pixel row.

    Parameters
    ----------
    psfs : dict of str to ndarray (Ph, Pw)
        PSF image per band (unit sum).
    bands : sequence of str
    filter_sigma : float
        σ (pixels) of the detection's Gaussian filter.
    half : int
        Largest tabulated radius (pixels).
    """

    def __init__(self, psfs: dict, bands, filter_sigma: float, half: int = 50):
        self.g_grid = np.arange(0.0, 12.0001, 0.25)
        self.half = half
        kern = np.outer(_gauss_kernel(filter_sigma, half), _gauss_kernel(filter_sigma, half))
        self.knorm = float(np.sqrt(np.sum(kern ** 2)))
        size = 2 * half + 1
        self.prof = {}
        for b in bands:
            p = np.zeros((size, size))
            ph, pw = psfs[b].shape
            hy, hx = min(ph // 2, half), min(pw // 2, half)
            cy, cx = ph // 2, pw // 2
            p[half - hy:half + hy + 1, half - hx:half + hx + 1] = psfs[b][cy - hy:cy + hy + 1, cx - hx:cx + hx + 1]
            base = gaussian_filter(p, filter_sigma, mode="constant", truncate=6.0)
            tab = np.empty((len(self.g_grid), half + 1))
            for i, g in enumerate(self.g_grid):
                img = gaussian_filter(base, g, mode="constant", truncate=5.0) if g > 0 else base
                tab[i] = img[half, half:]
            self.prof[b] = tab

    def profile(self, band: str, g: np.ndarray, r: np.ndarray) -> np.ndarray:
        """``(K ⊗ P_b ⊗ G_g)(r)`` for arrays of galaxy σ ``g`` and radii ``r`` (pixels; 0 beyond the table)."""
        tab = self.prof[band]
        gi = np.clip(np.searchsorted(self.g_grid, np.clip(g, 0, self.g_grid[-1])), 0, len(self.g_grid) - 1)
        r = np.asarray(r, dtype=np.float64)
        r0 = np.clip(np.floor(r).astype(int), 0, self.half)
        r1 = np.clip(r0 + 1, 0, self.half)
        t = np.clip(r - r0, 0, 1)
        v = (1 - t) * tab[gi, r0] + t * tab[gi, r1]
        return np.where(r <= self.half, v, 0.0)


def truth_snr(truth, tract_dir: Optional[str] = None, filter_sigma: float = 1.5) -> dict:
    """Per-source S/N of the truth catalog (definition in :mod:`hpcblend.analysis.validate`).

    Parameters
    ----------
    truth : astropy.table.Table
        From :func:`hpcblend.simulate.tract.read_truth` (``meta`` holds ``SKYSIG_<B>``,
        ``FWHM_<B>``, ``PIXSCALE``).
    tract_dir : str, optional
        Directory of ``psf_<b>.fits`` (the PSF's effective area); Gaussian PSFs otherwise.
    filter_sigma : float
        σ (pixels) of the detection's Gaussian matched filter (:func:`hpcblend.detect.significance_image`).

    Returns
    -------
    dict
        ``snr_<b>`` per band, ``snr`` (quadrature sum over bands), each an
        ndarray of shape (N,); ``snr_det``: the expected peak of the
        pipeline's detection significance image (:class:`DetectionModel`,
        galaxies as circular Gaussians of their half-light radius);
        ``gal_sigma`` (N,): that Gaussian's σ (pixels); ``neff_psf``: band ->
        PSF effective area (pixels); ``model``: the :class:`DetectionModel`;
        ``weights``: band -> ``1/σ_b²``.
    """
    meta = truth.meta
    bands = bands_of_truth(truth)
    scale = float(meta.get("PIXSCALE", 0.168))
    hlr_px = np.nan_to_num(np.asarray(truth["hlr"], dtype=np.float64)) / scale if "hlr" in truth.colnames \
        else np.zeros(len(truth))
    gal_sigma = hlr_px / _GAUSS_HLR
    gal_area = 4.0 * math.pi * gal_sigma ** 2
    psfs = truth_psf_images(tract_dir, bands)
    out, neff_psf, weights = {}, {}, {}
    quad = np.zeros(len(truth))
    for b in bands:
        key = b.upper()
        sig = float(meta[f"SKYSIG_{key}"])
        fwhm_px = float(meta.get(f"FWHM_{key}", 0.7)) / scale
        if b not in psfs:  # Gaussian stand-in of the FWHM
            s = fwhm_px / 2.3548200450309493
            half = int(np.ceil(5 * s))
            psfs[b] = np.outer(_gauss_kernel(s, half), _gauss_kernel(s, half))
        neff_psf[b] = float(1.0 / np.sum(psfs[b] ** 2))
        neff = neff_psf[b] + gal_area
        f = np.asarray(truth[f"flux_{b}"], dtype=np.float64)
        snr_b = f / (sig * np.sqrt(neff))
        out[f"snr_{b}"] = snr_b
        quad += snr_b ** 2
        weights[b] = 1.0 / sig ** 2
    model = DetectionModel(psfs, bands, filter_sigma)
    out["snr"] = np.sqrt(quad)
    out["snr_det"] = detection_significance(model, truth, bands, weights, gal_sigma, np.arange(len(truth)),
                                            np.zeros(len(truth)))
    out["gal_sigma"] = gal_sigma
    out["neff_psf"] = neff_psf
    out["model"] = model
    out["weights"] = weights
    return out


def detection_significance(model: DetectionModel, truth, bands, weights: dict, gal_sigma: np.ndarray,
                           idx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Expected detection significance of truth sources ``idx`` at distances ``r`` (pixels) from their centres.

    Parameters
    ----------
    model : DetectionModel
    truth : astropy.table.Table
        With ``flux_<b>`` columns (counts).
    bands : sequence of str
    weights : dict of str to float
        ``1/σ_b²`` per band.
    gal_sigma : ndarray, shape (N,)
        Gaussian σ of every truth source (pixels).
    idx : ndarray of int, shape (M,)
        Truth rows.
    r : ndarray, shape (M,)
        Distances (pixels).

    Returns
    -------
    ndarray, shape (M,)
    """
    num = np.zeros(len(idx))
    for b in bands:
        f = np.asarray(truth[f"flux_{b}"], dtype=np.float64)[idx]
        num += weights[b] * f * model.profile(b, gal_sigma[idx], r)
    return num / math.sqrt(sum(weights.values())) / model.knorm
