"""Validate a tract run's catalog against the simulation truth (:func:`hpcblend.simulate.tract.read_truth`).

What is measured (:func:`validate_tract`)
-----------------------------------------
*Matching.* Catalog children (``/sources``, every row: each child is written
by exactly one patch, so primary-or-not does not matter) are matched to truth
sources by position in tract pixels (catalog ``x``, ``y``, falling back to
``peak_x``, ``peak_y`` where the centroid is NaN; truth ``x``, ``y``) within
``radius`` pixels (default 2 px, about one i-band PSF FWHM of HSC). The match
is one-to-one: truth sources take their nearest still-free catalog source
within the radius, brightest truth first (so ties between two truth sources
that share one detection go to the brighter, and the fainter one is a loss).

*Truth S/N.* Per band, the matched-filter (PSF-weighted) S/N of the source on
the sky noise,

.. math:: (S/N)_b = F_b / (\\sigma_b \\sqrt{n_{\\rm eff,b}}), \\qquad
          n_{\\rm eff,b} = 1/\\sum P_b^2 + 2.885\\,\\pi\\,r_{1/2}^2,

with ``F_b`` the truth flux, ``σ_b`` the sky noise per pixel
(``SKYSIG_<B>`` in the truth header), ``P_b`` the band's PSF image (from
``psf_<b>.fits``; a Gaussian of ``FWHM_<B>`` if the file is missing) and
``r_1/2`` the truth half-light radius in pixels (``hlr``, 0 for stars). The
first term is the PSF's effective area, the second the effective area
``4πσ²`` of a Gaussian with that half-light radius (an exponential disk gives
``2.84π r²``, within 2 %), added as for a Gaussian convolution. This ignores
blending, so it is an upper limit for crowded sources. ``snr`` (the sample
selection, ``snr_band="all"``) is the multi-band S/N
``sqrt(Σ_b (S/N)_b²)``; ``snr_band="<b>"`` uses one band instead.
``snr_det`` is the expected (noiseless) peak of the pipeline's detection
significance image: the bands' inverse-variance weighted mean
(:func:`hpcblend.detect.detection_image`) filtered by the Gaussian of
``filter_sigma`` (:func:`hpcblend.detect.significance_image`), with the real
PSF images and galaxies as circular Gaussians of their half-light radius; on
the simulated tracts the measured significance at isolated truth positions is
0.91 of it (median; bulge + disk profiles are not Gaussian, positions are
sub-pixel). It and the same model's profile at a neighbour's distance explain
losses (the brighter neighbours' light at a lost source's centre, in units
of its own expected peak significance, decides "blended_unresolved").

*Completeness and duplicates* for truth ``snr > snr_min`` (default 10):
detected = matched. A *duplicate* is a truth source with two or more catalog
sources within ``radius`` of which at least one is matched to no truth
source (the same object reported twice, e.g. by two patches). Structural
checks: no repeated ``id``; no two catalog sources from different patches
closer than ``dup_radius`` (0.5 px). Every lost source gets the first
applicable reason of :data:`LOSS_REASONS`.

*Flux accuracy.* ``Δf/f = (f_cat − f_true) / f_true`` of the flux-conserving
``flux_<b>`` for matched sources with ``snr > snr_min`` and band S/N
``(S/N)_b > flux_snr_min`` (default 20: a source at S/N 10 in a band has 10 %
noise alone), at least ``edge_margin`` from the tract edge; *isolated* means
``blendedness < 0.05`` or ``flag_isolated_unfitted``. Reported: the median of
``|Δf/f|`` per band for isolated sources and per blendedness bin, the bias
(median signed ``Δf/f``), the 90th percentile, and the median expected from
the catalog's own errors (0.674 × median ``flux_err / f_true``). Note that
``flux_<b>`` is a footprint sum (the LSST "heavy footprint" flux): light
outside the footprint is not in it, so extended galaxies read low. Stars:
``psf_flux_<b>`` and the aperture fluxes ``ap_flux_<r>_<b>`` divided by the
PSF's encircled energy at ``r`` (from the PSF image); galaxies: the median
ratio of each aperture flux to the total truth flux (information only).

*Astrometry.* For isolated matched sources with ``snr > 50`` away from the
edge: offsets of the catalog ``ra``, ``dec`` from the truth ``ra``, ``dec``
(arcsec, ``Δα cos δ`` and ``Δδ``): median and 90th percentile of the total
offset (target: median < 0.05").

Everything returned is plain Python (JSON-serialisable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

__all__ = ["LOSS_REASONS", "BLENDEDNESS_BINS", "truth_snr", "match_positions", "validate_tract", "format_report",
           "validate_main"]

#: Loss reasons, in the order they are tried (the first that applies is reported; "patch_border" falls back to a
#: geometric test, tried after "blended_unresolved", when the detection is not re-run).
LOSS_REASONS = {
    "failed_patch": "in the inner box of a patch whose status is not ok",
    "tract_edge": "centre closer than edge_margin px to the tract edge (footprint cut, peak off the data)",
    "parent_failed": "a catalog child within 3 x radius has a failed or skipped parent",
    "below_threshold": "re-running the run's detection on the patches that cover it: no detected (above "
                       "threshold, min_area) pixel within 2 px in any of them (noise, or a profile fainter than "
                       "its S/N says)",
    "patch_border": "detected by a patch whose outer box covers it, but its peak lies in the inner box of another "
                    "patch that did not detect it (per-patch background); without the re-run detection: within "
                    "border_margin px of an inner patch border",
    "offset": "an unmatched catalog source lies within 3 x radius: detected, but its position is off by more than "
              "radius (a deblended child pulled by its neighbour, or two sources merged into one peak)",
    "blended_unresolved": "a brighter truth source lies within blend_radius px, or the brighter neighbours' "
                          "expected light in the detection image at its centre is >= pedestal_ratio x its own "
                          "expected peak significance (no separate, prominent peak)",
    "peak_culled": "inside the footprint box of a catalog parent without a child near it: its peak was culled "
                   "(min_prominence / min_peak_separation) or merged into a neighbour's footprint",
    "near_threshold": "expected detection significance below threshold + near_threshold_sigma",
    "unexplained": "none of the above",
}
#: Blendedness bin edges of the flux-accuracy table.
BLENDEDNESS_BINS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0001)
_GAUSS_HLR = 1.1774100225154747  # half-light radius / sigma of a 2-D Gaussian
_MAD_GAUSS = 0.6744897501960817  # median |x| of a standard normal


# -----------------------------------------------------------------------------
# truth S/N
# -----------------------------------------------------------------------------


def _bands_of_truth(truth) -> list:
    return [c[len("flux_"):] for c in truth.colnames if c.startswith("flux_")]


def _psf_images(tract_dir: Optional[str], bands) -> dict:
    out = {}
    for b in bands:
        path = os.path.join(tract_dir, f"psf_{b}.fits") if tract_dir else ""
        if path and os.path.isfile(path):
            from hpcblend.io.coadd import _read_psf

            out[b] = _read_psf(path, b, 1e-2)
    return out


def _gauss_kernel(sigma: float, half: int) -> np.ndarray:
    r = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (r / max(sigma, 1e-6)) ** 2)
    return g / g.sum()


class _DetectionModel:
    """Expected (noiseless) significance profiles in the pipeline's detection image.

    For band PSF images ``P_b`` and a circular Gaussian galaxy of σ ``g``, the
    detection significance at distance ``r`` from a source of fluxes ``F_b`` is
    ``S(r) = Σ_b w_b F_b (K ⊗ P_b ⊗ G_g)(r) / (sqrt(Σ_b w_b) sqrt(Σ K²))``
    (:func:`hpcblend.detect.detection_image` weighted mean with ``w_b = 1/σ_b²``,
    :func:`hpcblend.detect.significance_image` with a Gaussian filter ``K`` of
    ``filter_sigma``). Profiles are tabulated on a grid of ``g`` (0-12 px,
    0.25 px steps) and radii 0-``half`` px along a pixel row.
    """

    def __init__(self, psfs: dict, bands, filter_sigma: float, half: int = 50):
        from scipy.ndimage import gaussian_filter

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
    """Per-source S/N of the truth catalog (definition in the module docstring).

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
        pipeline's detection significance image (:class:`_DetectionModel`,
        galaxies as circular Gaussians of their half-light radius);
        ``gal_sigma`` (N,): that Gaussian's σ (pixels); ``neff_psf``: band ->
        PSF effective area (pixels); ``model``: the :class:`_DetectionModel`;
        ``weights``: band -> ``1/σ_b²``.
    """
    meta = truth.meta
    bands = _bands_of_truth(truth)
    scale = float(meta.get("PIXSCALE", 0.168))
    hlr_px = np.nan_to_num(np.asarray(truth["hlr"], dtype=np.float64)) / scale if "hlr" in truth.colnames \
        else np.zeros(len(truth))
    gal_sigma = hlr_px / _GAUSS_HLR
    gal_area = 4.0 * math.pi * gal_sigma ** 2
    psfs = _psf_images(tract_dir, bands)
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
    model = _DetectionModel(psfs, bands, filter_sigma)
    out["snr"] = np.sqrt(quad)
    out["snr_det"] = _det_signif(model, truth, bands, weights, gal_sigma, np.arange(len(truth)),
                                 np.zeros(len(truth)))
    out["gal_sigma"] = gal_sigma
    out["neff_psf"] = neff_psf
    out["model"] = model
    out["weights"] = weights
    return out


def _det_signif(model, truth, bands, weights, gal_sigma, idx, r) -> np.ndarray:
    """Expected detection significance of truth sources ``idx`` at distances ``r`` (pixels) from their centres."""
    num = np.zeros(len(idx))
    for b in bands:
        f = np.asarray(truth[f"flux_{b}"], dtype=np.float64)[idx]
        num += weights[b] * f * model.profile(b, gal_sigma[idx], r)
    return num / math.sqrt(sum(weights.values())) / model.knorm


# -----------------------------------------------------------------------------
# matching
# -----------------------------------------------------------------------------


def match_positions(truth_xy: np.ndarray, cat_xy: np.ndarray, radius: float, order: np.ndarray):
    """One-to-one nearest-neighbour match, truth sources in ``order`` (brightest first) picking first.

    Parameters
    ----------
    truth_xy : ndarray, shape (N, 2)
    cat_xy : ndarray, shape (M, 2)
        Positions (x, y), pixels; non-finite catalog positions never match.
    radius : float
        Largest match distance, pixels.
    order : ndarray of int, shape (N,)
        Truth indices in the order they choose (e.g. descending flux).

    Returns
    -------
    t2c : ndarray of int, shape (N,)
        Catalog index matched to each truth source, -1 if none.
    c2t : ndarray of int, shape (M,)
        Truth index matched to each catalog source, -1 if none.
    dist : ndarray, shape (N,)
        Match distance (NaN if unmatched).
    """
    from scipy.spatial import cKDTree

    n, m = len(truth_xy), len(cat_xy)
    t2c = np.full(n, -1, dtype=np.int64)
    c2t = np.full(m, -1, dtype=np.int64)
    dist = np.full(n, np.nan)
    good = np.all(np.isfinite(cat_xy), axis=1)
    if m == 0 or not good.any():
        return t2c, c2t, dist
    idx_good = np.nonzero(good)[0]
    tree = cKDTree(cat_xy[good])
    near = tree.query_ball_point(truth_xy, r=radius)
    for t in order:
        cand = [idx_good[j] for j in near[t] if c2t[idx_good[j]] < 0]
        if not cand:
            continue
        cand = np.asarray(cand)
        d = np.hypot(cat_xy[cand, 0] - truth_xy[t, 0], cat_xy[cand, 1] - truth_xy[t, 1])
        k = int(np.argmin(d))
        t2c[t] = cand[k]
        c2t[cand[k]] = t
        dist[t] = float(d[k])
    return t2c, c2t, dist


# -----------------------------------------------------------------------------
# statistics helpers
# -----------------------------------------------------------------------------


def _f(v):
    """A float for JSON (None for NaN)."""
    v = float(v)
    return None if not math.isfinite(v) else v


def _rel_stats(measured, true, err) -> dict:
    """Statistics of ``Δf/f = (measured - true) / true``; ``noise_median_abs`` = 0.674 × median(err / true)."""
    measured = np.asarray(measured, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    ok = np.isfinite(measured) & np.isfinite(true) & (true > 0)
    rel = (measured[ok] - true[ok]) / true[ok]
    n_bad = int(np.count_nonzero(~ok))
    if rel.size == 0:
        return {"n": 0, "n_nonfinite": n_bad, "median_abs": None, "median": None, "p90_abs": None,
                "noise_median_abs": None}
    rel_err = err[ok] / true[ok]
    return {"n": int(rel.size), "n_nonfinite": n_bad, "median_abs": _f(np.median(np.abs(rel))),
            "median": _f(np.median(rel)), "p90_abs": _f(np.percentile(np.abs(rel), 90)),
            "noise_median_abs": _f(_MAD_GAUSS * np.nanmedian(rel_err)) if np.isfinite(rel_err).any() else None}


def _encircled_energy(psf: np.ndarray, radius: float) -> float:
    """Fraction of a (unit-sum) PSF image inside a circle of ``radius`` px about its centre (exact overlap, sep)."""
    import sep

    img = np.ascontiguousarray(psf, dtype=np.float64)
    cy, cx = (img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0
    s, _, _ = sep.sum_circle(img, np.array([cx]), np.array([cy]), float(radius), subpix=0)
    return float(s[0]) / float(img.sum())


def _radius_labels(names, bands) -> list:
    """Aperture labels present in the catalog (``ap_flux_<lab>_<b>`` columns), sorted by radius."""
    b0 = bands[0]
    labs = [n[len("ap_flux_"):-len(b0) - 1] for n in names if n.startswith("ap_flux_") and n.endswith(f"_{b0}")
            and not n.startswith("ap_flux_err_") and not n.startswith("ap_flux_flag_")]

    def rad(lab):
        try:
            return float(lab.replace("p", "."))
        except ValueError:
            return math.inf

    return sorted(labs, key=rad)


# -----------------------------------------------------------------------------
# main
# -----------------------------------------------------------------------------


def _read_catalog(path: str) -> dict:
    from hpcblend.io.catalog import open_catalog, read_table

    with open_catalog(path) as f:
        tables = {name: read_table(f, name) for name in ("sources", "patches", "blends") if name in f}
        bands = [b for b in str(f.attrs.get("bands", "")).split(",") if b]
    if "sources" not in tables:
        from hpcblend.errors import CatalogError

        raise CatalogError(f"{path}: no /sources table")
    missing = [c for c in ("x", "y", "peak_x", "peak_y", "ra", "dec", "patch", "blendedness")
               if c not in tables["sources"].dtype.names]
    if missing:
        from hpcblend.errors import CatalogError

        raise CatalogError(f"{path}: /sources lacks {missing}: not the catalog of a tract run (input.kind: tract)")
    tables["bands"] = bands
    return tables


def _config_tract_dir(path: str) -> Optional[str]:
    from hpcblend.io.catalog import read_json_group

    try:
        cfg = read_json_group(path, "config")
    except Exception:  # noqa: BLE001 - optional: only a default
        return None
    d = (cfg.get("input") or {}).get("tract_dir")
    if not d:
        return None
    if not os.path.isabs(d):
        d = os.path.normpath(os.path.join(cfg.get("base_dir", "."), d))
    return d


class _PatchDetection:
    """Re-run the pipeline's detection (background, detection image, significance, segmentation) per patch.

    Exactly the steps of :func:`hpcblend.units.tract.process_patch` before the
    footprints, with the run's ``detect`` settings, on each patch's outer box;
    used to tell why a truth source was lost (below threshold in the data, or
    seen only by a patch that does not own it). Maps are cached (at most
    ``cache`` patches).
    """

    def __init__(self, tract_dir: str, cfg: dict, bands, cache: int = 4):
        from hpcblend.io.coadd import read_tract_shape
        from hpcblend.skymap import make_patches

        inp = cfg.get("input") or {}
        self.det = cfg.get("detect") or {}
        self.tract_dir, self.bands = tract_dir, tuple(bands)
        shape = read_tract_shape(tract_dir, self.bands)
        self.patches = make_patches(shape, int(inp.get("patch_inner_size", 4000)), int(inp.get("patch_overlap", 100)),
                                    tract=int(inp.get("tract", 0)))
        self.threshold = float(self.det.get("threshold", 5.0))
        self._cache: dict = {}
        self._size = max(int(cache), 1)

    def covering(self, y: float, x: float) -> list:
        """Flat indices of the patches whose outer box holds the position."""
        return [p.flat for p in self.patches if p.outer.contains(y, x)]

    def _maps(self, flat: int):
        if flat not in self._cache:
            from hpcblend.io.coadd import read_patch
            from hpcblend.detect import _segment, detection_image, estimate_background, significance_image

            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            p = self.patches[flat]
            data = read_patch(self.tract_dir, p, bands=self.bands)
            images = data.images
            if self.det.get("subtract_background", True):
                images = estimate_background(images, data.mask, box_size=int(self.det.get("background_box", 128)),
                                             variance=data.variance).images
            det, sigma = detection_image(images, data.variance, data.mask,
                                         method=str(self.det.get("method", "weighted")))
            signif = significance_image(det, sigma)
            detected = _segment(signif, self.threshold, int(self.det.get("min_area", 5)))
            self._cache[flat] = (p, signif, detected)
        return self._cache[flat]

    def at(self, flat: int, y: float, x: float, r: float = 2.0) -> tuple:
        """In one patch: (largest significance within ``r`` px, whether a detected pixel lies within ``r`` px,
        the flat index of the patch owning the pixel of that largest significance)."""
        p, signif, detected = self._maps(flat)
        ly, lx = y - p.outer.y0, x - p.outer.x0
        y0, y1 = max(int(math.floor(ly - r)), 0), min(int(math.ceil(ly + r)) + 1, signif.shape[0])
        x0, x1 = max(int(math.floor(lx - r)), 0), min(int(math.ceil(lx + r)) + 1, signif.shape[1])
        if y1 <= y0 or x1 <= x0:
            return float("nan"), False, -1
        yy, xx = np.mgrid[y0:y1, x0:x1]
        near = np.hypot(yy - ly, xx - lx) <= r
        vals = np.where(near, signif[y0:y1, x0:x1], -np.inf)
        k = np.unravel_index(int(np.argmax(vals)), vals.shape)
        py, px = int(yy[k]) + p.outer.y0, int(xx[k]) + p.outer.x0
        owner = next((q.flat for q in self.patches if q.inner.contains(py, px)), -1)
        return float(vals[k]), bool(np.any(detected[y0:y1, x0:x1][near])), owner


def validate_tract(catalog: str, truth_dir: Optional[str] = None, *, radius: float = 2.0, snr_min: float = 10.0,
                   snr_band: str = "all", flux_snr_min: float = 20.0, astrometry_snr_min: float = 50.0,
                   isolated_blendedness: float = 0.05, blend_radius: Optional[float] = None,
                   edge_margin: Optional[float] = None, dup_radius: float = 0.5,
                   detect_threshold: Optional[float] = None, pedestal_ratio: float = 0.25,
                   border_margin: float = 2.0, near_threshold_sigma: float = 3.0,
                   measure_detection: bool = True) -> tuple:
    """Compare a tract run's catalog with the simulation truth.

    Parameters
    ----------
    catalog : str
        The run's HDF5 catalog.
    truth_dir : str, optional
        Directory of ``truth.fits`` (and ``psf_<b>.fits``), or the truth file;
        default: the catalog's ``/config`` ``input.tract_dir``.
    radius : float
        Match radius, pixels.
    snr_min : float
        Truth S/N above which every source should be detected.
    snr_band : str
        ``"all"`` (multi-band S/N) or a band name for the sample's S/N.
    flux_snr_min : float
        Band S/N a source needs to enter that band's flux statistics.
    astrometry_snr_min : float
        S/N of the astrometry sample.
    isolated_blendedness : float
        Children with blendedness below this (or unfitted isolated ones) are "isolated".
    blend_radius : float, optional
        Pixels within which a brighter truth neighbour explains a loss
        ("unresolved"); default 1 x the largest PSF FWHM.
    edge_margin : float, optional
        Pixels from the tract edge within which a loss is "tract_edge" and
        sources are left out of flux and astrometry statistics; default 1 x
        the largest PSF FWHM.
    dup_radius : float
        Two catalog sources from different patches closer than this (pixels) are a duplicate pair.
    detect_threshold : float, optional
        Detection threshold (σ); default the catalog's ``detect.threshold`` (else 5).
    pedestal_ratio : float
        A loss is "blended_unresolved" when the brighter truth neighbours'
        expected detection significance at its centre reaches this fraction
        of its own expected peak significance.
    border_margin : float
        Pixels from an inner patch border within which a loss is "patch_border".
    near_threshold_sigma : float
        A loss is "near_threshold" when its expected significance is below
        ``detect_threshold`` + this.
    measure_detection : bool
        Re-run the detection of every patch covering a lost source (from the
        coadds next to the truth and the run's ``/config``): a loss is
        "below_threshold" when no patch has a detected pixel within 2 px of it,
        "patch_border" when a patch detected it but the patch owning its
        peak pixel did not. Without coadds this falls
        back to the expected significance and the geometric border test.

    Returns
    -------
    result : dict
        JSON-serialisable numbers (keys: ``n_truth``, ``n_catalog``, ``sample``,
        ``completeness``, ``duplicates``, ``losses``, ``flux``, ``astrometry``,
        ``forced``, ``patches``, ``targets``, ``settings``).
    report : str
        The same as text (:func:`format_report`).
    """
    from hpcblend.simulate.tract import read_truth

    tabs = _read_catalog(catalog)  # first: a missing or foreign catalog is the error to report
    if truth_dir is None:
        truth_dir = _config_tract_dir(catalog)
        if truth_dir is None:
            from hpcblend.errors import InputError

            raise InputError(f"{catalog}: no truth directory given and the catalog's /config has no input.tract_dir")
    truth_dir = os.fspath(truth_dir)
    psf_dir = truth_dir if os.path.isdir(truth_dir) else os.path.dirname(truth_dir)
    truth = read_truth(truth_dir)
    src, patches = tabs["sources"], tabs.get("patches")
    cat_bands = tabs["bands"]
    bands = [b for b in _bands_of_truth(truth) if not cat_bands or b in cat_bands]
    meta = truth.meta
    scale = float(meta.get("PIXSCALE", 0.168))
    ny, nx = int(meta.get("NY", 0)), int(meta.get("NX", 0))
    fwhm_px = max(float(meta.get(f"FWHM_{b.upper()}", 0.7)) for b in bands) / scale
    blend_radius = fwhm_px if blend_radius is None else float(blend_radius)
    edge_margin = fwhm_px if edge_margin is None else float(edge_margin)
    run_cfg = {}
    try:
        from hpcblend.io.catalog import read_json_group

        run_cfg = read_json_group(catalog, "config")
    except Exception:  # noqa: BLE001 - defaults below
        pass
    detect_cfg = run_cfg.get("detect") or {}
    if detect_threshold is None:
        detect_threshold = float(detect_cfg.get("threshold", 5.0))
    detect_pad = int(detect_cfg.get("pad", 5))

    sn = truth_snr(truth, psf_dir)
    snr = sn["snr"] if snr_band == "all" else sn[f"snr_{snr_band}"]
    tx = np.asarray(truth["x"], dtype=np.float64)
    ty = np.asarray(truth["y"], dtype=np.float64)
    truth_xy = np.stack([tx, ty], 1)
    ref_band = "i" if "i" in bands else bands[len(bands) // 2]
    cx = np.where(np.isfinite(src["x"]), src["x"], src["peak_x"]).astype(np.float64)
    cy = np.where(np.isfinite(src["y"]), src["y"], src["peak_y"]).astype(np.float64)
    cat_xy = np.stack([cx, cy], 1)
    order = np.lexsort((np.arange(len(truth)), -snr))  # brightest (highest S/N) first, then by id
    t2c, c2t, dist = match_positions(truth_xy, cat_xy, radius, order)

    if nx and ny:
        edge_dist = np.minimum.reduce([tx + 0.5, ty + 0.5, nx - 0.5 - tx, ny - 0.5 - ty])
    else:
        edge_dist = np.full(len(truth), np.inf)
    near_edge = edge_dist < edge_margin
    sample = snr > snr_min
    detected = sample & (t2c >= 0)

    # -- duplicates -------------------------------------------------------------------------------
    from scipy.spatial import cKDTree

    good = np.all(np.isfinite(cat_xy), 1)
    gidx = np.nonzero(good)[0]
    ctree = cKDTree(cat_xy[good]) if good.any() else None
    dup_truth = []
    if ctree is not None:
        for t in np.nonzero(sample)[0]:
            near = gidx[ctree.query_ball_point(truth_xy[t], r=radius)]
            if len(near) >= 2 and np.any(c2t[near] < 0):
                dup_truth.append(int(truth["id"][t]))
    ids = np.asarray(src["id"])
    uniq, counts = np.unique(ids, return_counts=True)
    repeated_ids = [int(v) for v in uniq[counts > 1]]
    cross_pairs = []
    if ctree is not None:
        for i, j in sorted(ctree.query_pairs(r=dup_radius)):
            a, b = gidx[i], gidx[j]
            if src["patch"][a] != src["patch"][b]:
                cross_pairs.append((int(ids[a]), int(ids[b]), _f(np.hypot(*(cat_xy[a] - cat_xy[b])))))
    cross_pairs_radius = 0
    if ctree is not None:
        for i, j in ctree.query_pairs(r=radius):
            if src["patch"][gidx[i]] != src["patch"][gidx[j]]:
                cross_pairs_radius += 1

    # -- losses -------------------------------------------------------------------------------------
    failed_inner = []
    borders_y, borders_x = set(), set()
    if patches is not None and len(patches):
        for p in patches:
            y0, x0, h, w = (int(v) for v in p["inner_bbox"])
            if p["status"] != b"ok":
                failed_inner.append((y0, x0, h, w))
            for v in (y0, y0 + h):
                if 0 < v < ny:
                    borders_y.add(v)
            for v in (x0, x0 + w):
                if 0 < v < nx:
                    borders_x.add(v)
    parent_boxes = np.zeros((0, 4), dtype=np.int64)
    if tabs.get("blends") is not None and len(tabs["blends"]):
        parent_boxes = np.asarray(tabs["blends"]["bbox"], dtype=np.int64).reshape(-1, 4)
    ttree = cKDTree(truth_xy)
    bad_parent = np.asarray(src["flag_parent_failed"] | src["flag_parent_skipped"], dtype=bool)
    sdet = sn["snr_det"]
    pdet = None
    if measure_detection and os.path.isdir(psf_dir) and run_cfg:
        try:
            pdet = _PatchDetection(psf_dir, run_cfg, bands)
        except Exception:  # noqa: BLE001 - the coadds are optional here: fall back to the expected significance
            pdet = None
    losses = []
    lost = np.nonzero(sample & (t2c < 0))[0]
    if pdet is not None:  # patch by patch, so that each patch's detection is re-run once
        from hpcblend.skymap import owner_index

        lost = lost[np.argsort(owner_index((ny, nx), pdet.patches[0].inner.shape, ty[lost], tx[lost]),
                               kind="stable")] if nx and ny else lost
    for t in lost:
        reason, detail = "unexplained", ""
        ix, iy = math.floor(tx[t] + 0.5), math.floor(ty[t] + 0.5)
        neigh = np.array([j for j in ttree.query_ball_point(truth_xy[t], r=sn["model"].half)
                          if j != t and sdet[j] >= sdet[t]], dtype=np.int64)
        dn = np.hypot(tx[neigh] - tx[t], ty[neigh] - ty[t])
        pedestal = float(_det_signif(sn["model"], truth, bands, sn["weights"], sn["gal_sigma"], neigh, dn).sum()) \
            if len(neigh) else 0.0
        near_c = gidx[ctree.query_ball_point(truth_xy[t], r=3 * radius)] if ctree is not None else np.array([], int)
        in_box = np.nonzero((parent_boxes[:, 0] + detect_pad <= iy) & (iy < parent_boxes[:, 0] + parent_boxes[:, 2]
                                                                     - detect_pad)
                            & (parent_boxes[:, 1] + detect_pad <= ix)
                            & (ix < parent_boxes[:, 1] + parent_boxes[:, 3] - detect_pad))[0]
        border = [abs(ty[t] + 0.5 - v) for v in borders_y] + [abs(tx[t] + 0.5 - v) for v in borders_x]
        border = [v for v in border if v <= border_margin]
        seen = {}
        if pdet is not None and not near_edge[t]:
            seen = {f: pdet.at(f, ty[t], tx[t]) for f in pdet.covering(ty[t], tx[t])}
        if any(y0 <= iy < y0 + h and x0 <= ix < x0 + w for (y0, x0, h, w) in failed_inner):
            reason = "failed_patch"
        elif near_edge[t]:
            reason, detail = "tract_edge", f"{edge_dist[t]:.1f} px from the edge"
        elif len(near_c) and bad_parent[near_c].any():
            reason = "parent_failed"
        elif seen and not any(v[1] for v in seen.values()):
            smax = max(v[0] for v in seen.values())
            reason, detail = "below_threshold", (f"largest significance within 2 px {smax:.1f} (threshold "
                                                 f"{detect_threshold:g}, min_area) in patch(es) "
                                                 f"{sorted(seen)}; expected {sdet[t]:.1f}")
        elif seen and any(v[1] and v[2] in seen and not seen[v[2]][1] for v in seen.values()):
            reason, detail = "patch_border", ("detected in patch(es) " + str(sorted(f for f, v in seen.items() if v[1]))
                                              + " with its peak in the inner box of patch(es) "
                                              + str(sorted({v[2] for v in seen.values() if v[1]}))
                                              + ", which did not detect it (significance "
                                              + ", ".join(f"{v[0]:.2f}" for v in seen.values()) + ")")
        elif len(near_c) and np.any(c2t[near_c] < 0):
            k = near_c[c2t[near_c] < 0]
            d = np.hypot(cat_xy[k, 0] - tx[t], cat_xy[k, 1] - ty[t])
            kc = k[np.argmin(d)]
            others = [int(truth["id"][j]) for j in ttree.query_ball_point(cat_xy[kc], r=3 * radius) if j != t]
            reason, detail = "offset", (f"unmatched catalog source {int(ids[kc])} at {d.min():.1f} px"
                                        + (f", between it and truth {others} (a merged pair)" if others else ""))
        elif len(neigh) and (dn.min() < blend_radius or pedestal >= pedestal_ratio * sdet[t]):
            j = neigh[np.argmin(dn)]
            detail = (f"nearest brighter truth {int(truth['id'][j])} (S/N {snr[j]:.0f}) at {dn.min():.1f} px; "
                      f"neighbours' light {pedestal / max(sdet[t], 1e-9):.2f} x its peak significance")
            reason = "blended_unresolved"
        elif border and not seen:
            reason, detail = "patch_border", (f"{min(border):.1f} px from an inner patch border; expected "
                                              f"significance {sdet[t]:.1f}")
        elif len(in_box):
            pid = int(tabs["blends"]["id"][in_box[0]])
            reason, detail = "peak_culled", (f"inside the footprint box of parent {pid} "
                                            f"({int(tabs['blends']['n_peaks'][in_box[0]])} peaks); expected "
                                            f"significance {sdet[t]:.1f}, neighbours' light "
                                            f"{pedestal / max(sdet[t], 1e-9):.2f} x")
        elif sdet[t] < detect_threshold + near_threshold_sigma:
            reason, detail = "near_threshold", f"expected detection significance {sdet[t]:.1f}"
        else:
            detail = f"expected detection significance {sdet[t]:.1f}"
        losses.append({"truth_id": int(truth["id"][t]), "x": _f(tx[t]), "y": _f(ty[t]), "snr": _f(snr[t]),
                       "snr_det": _f(sdet[t]), "type": str(truth["type"][t]),
                       "mag_i": _f(truth[f"mag_{ref_band}"][t]) if f"mag_{ref_band}" in truth.colnames else None,
                       "reason": reason, "detail": detail})
    losses.sort(key=lambda rec: rec["truth_id"])
    reasons = {}
    for loss in losses:
        reasons[loss["reason"]] = reasons.get(loss["reason"], 0) + 1

    # -- flux accuracy -----------------------------------------------------------------------------------
    mt = np.nonzero(detected & ~near_edge)[0]
    mc = t2c[mt]
    blendedness = np.asarray(src["blendedness"], dtype=np.float64)[mc]
    iso_flag = np.asarray(src["flag_isolated_unfitted"], dtype=bool)[mc]
    isolated = iso_flag | (np.nan_to_num(blendedness, nan=np.inf) < isolated_blendedness)
    flux = {"isolated": {}, "bins": [], "deblended": {}, "psf_flux_stars": {}, "ap_flux_stars": {},
            "ap_flux_galaxies": {}}
    for b in bands:
        snr_b = sn[f"snr_{b}"][mt]
        sel = isolated & (snr_b > flux_snr_min)
        flux["isolated"][b] = _rel_stats(src[f"flux_{b}"][mc[sel]], truth[f"flux_{b}"][mt[sel]],
                                         src[f"flux_err_{b}"][mc[sel]])
    bl = np.where(iso_flag, 0.0, blendedness)
    for lo, hi in zip(BLENDEDNESS_BINS[:-1], BLENDEDNESS_BINS[1:]):
        row = {"lo": lo, "hi": min(hi, 1.0), "bands": {}}
        inbin = (bl >= lo) & (bl < hi)
        for b in bands:
            snr_b = sn[f"snr_{b}"][mt]
            sel = inbin & (snr_b > flux_snr_min)
            row["bands"][b] = _rel_stats(src[f"flux_{b}"][mc[sel]], truth[f"flux_{b}"][mt[sel]],
                                         src[f"flux_err_{b}"][mc[sel]])
        row["n"] = int(np.count_nonzero(inbin))
        flux["bins"].append(row)
    for b in bands:  # children fitted by the deblender (any blendedness)
        sel = ~iso_flag & (sn[f"snr_{b}"][mt] > flux_snr_min)
        flux["deblended"][b] = _rel_stats(src[f"flux_{b}"][mc[sel]], truth[f"flux_{b}"][mt[sel]],
                                          src[f"flux_err_{b}"][mc[sel]])
    star = np.asarray(truth["type"][mt]) == "star"
    psfs = _psf_images(psf_dir, bands)
    labels = _radius_labels(src.dtype.names, bands)
    for b in bands:
        snr_b = sn[f"snr_{b}"][mt]
        sel = star & (snr_b > flux_snr_min)
        if f"psf_flux_{b}" in src.dtype.names:
            flux["psf_flux_stars"][b] = _rel_stats(src[f"psf_flux_{b}"][mc[sel]], truth[f"flux_{b}"][mt[sel]],
                                                   src[f"psf_flux_err_{b}"][mc[sel]])
        for lab in labels:
            col = f"ap_flux_{lab}_{b}"
            r = float(lab.replace("p", "."))
            ee = _encircled_energy(psfs[b], r) if b in psfs else 1.0
            flux["ap_flux_stars"].setdefault(lab, {})[b] = dict(
                _rel_stats(src[col][mc[sel]] / ee, truth[f"flux_{b}"][mt[sel]],
                           src[f"ap_flux_err_{lab}_{b}"][mc[sel]] / ee),
                encircled_energy=_f(ee))
            gsel = ~star & isolated & (snr_b > flux_snr_min)
            ratio = np.asarray(src[col][mc[gsel]], dtype=np.float64) / np.asarray(truth[f"flux_{b}"][mt[gsel]])
            ratio = ratio[np.isfinite(ratio)]
            flux["ap_flux_galaxies"].setdefault(lab, {})[b] = {
                "n": int(ratio.size), "median_ratio": _f(np.median(ratio)) if ratio.size else None}

    # -- astrometry --------------------------------------------------------------------------------------------
    asel = isolated & (snr[mt] > astrometry_snr_min)
    at, ac = mt[asel], mc[asel]
    dec_t = np.asarray(truth["dec"], dtype=np.float64)[at]
    dra = (((np.asarray(src["ra"])[ac] - np.asarray(truth["ra"])[at] + 180.0) % 360.0) - 180.0) \
        * np.cos(np.radians(dec_t)) * 3600.0
    ddec = (np.asarray(src["dec"])[ac] - dec_t) * 3600.0
    off = np.hypot(dra, ddec)
    okr = np.isfinite(off)
    astrometry = {"n": int(np.count_nonzero(okr)), "n_nonfinite": int(np.count_nonzero(~okr)),
                  "median_arcsec": _f(np.median(off[okr])) if okr.any() else None,
                  "p90_arcsec": _f(np.percentile(off[okr], 90)) if okr.any() else None,
                  "median_dra_arcsec": _f(np.median(dra[okr])) if okr.any() else None,
                  "median_ddec_arcsec": _f(np.median(ddec[okr])) if okr.any() else None,
                  "median_pixels": _f(np.median(off[okr]) / scale) if okr.any() else None}

    # -- forced photometry present --------------------------------------------------------------------------------
    ok_child = ~bad_parent
    forced = {"n_children": int(len(src)), "n_unflagged": int(np.count_nonzero(ok_child)), "missing_psf_flux": {}}
    for b in bands:
        col = f"psf_flux_{b}"
        if col in src.dtype.names:
            forced["missing_psf_flux"][b] = int(np.count_nonzero(ok_child & ~np.isfinite(src[col])))

    # -- patches -------------------------------------------------------------------------------------------------
    pinfo = {}
    if patches is not None and len(patches):
        t = np.asarray(patches["t_total"], dtype=np.float64)
        pinfo = {"n": int(len(patches)), "n_failed": int(np.count_nonzero(patches["status"] != b"ok")),
                 "t_total_median": _f(np.median(t)), "t_total_max": _f(t.max()), "t_total_sum": _f(t.sum()),
                 "per_patch": [{"patch": int(p["patch"]), "status": p["status"].decode(),
                                "n_sources": int(p["n_sources"]), "t_total": _f(p["t_total"]),
                                "t_load": _f(p["t_load"]), "t_detect": _f(p["t_detect"]),
                                "t_deblend": _f(p["t_deblend"]), "t_measure": _f(p["t_measure"]),
                                "error": p["error_message"].decode("utf-8", "replace")} for p in patches]}

    n_sample = int(np.count_nonzero(sample))
    snr_bins = []
    for lo, hi in ((snr_min, 20.0), (20.0, 50.0), (50.0, math.inf)):
        inb = sample & (snr > lo) & (snr <= hi)
        snr_bins.append({"lo": lo, "hi": None if math.isinf(hi) else hi, "n": int(np.count_nonzero(inb)),
                         "n_detected": int(np.count_nonzero(inb & detected))})
    n_det = int(np.count_nonzero(detected))
    iso_med = [flux["isolated"][b]["median_abs"] for b in bands]
    targets = {
        "no_duplicates": len(dup_truth) == 0 and not repeated_ids and not cross_pairs,
        "flux_isolated_le_5pct": all(v is not None and v <= 0.05 for v in iso_med),
        "astrometry_median_lt_0p05_arcsec": astrometry["median_arcsec"] is not None
        and astrometry["median_arcsec"] < 0.05,
        "losses_explained": reasons.get("unexplained", 0) == 0,
        "forced_complete": all(v == 0 for v in forced["missing_psf_flux"].values()),
    }
    result = {
        "catalog": os.path.abspath(catalog), "truth": os.path.abspath(truth_dir), "bands": list(bands),
        "n_truth": int(len(truth)), "n_catalog": int(len(src)),
        "n_catalog_unmatched": int(np.count_nonzero(c2t < 0)),
        "sample": {"snr_min": snr_min, "snr_band": snr_band, "n": n_sample},
        "completeness": {"n_detected": n_det, "fraction": _f(n_det / n_sample) if n_sample else None,
                         "n_lost": n_sample - n_det,
                         "loss_fraction": _f((n_sample - n_det) / n_sample) if n_sample else None,
                         "median_match_distance": _f(np.nanmedian(dist[detected])) if n_det else None,
                         "by_snr": snr_bins},
        "duplicates": {"n_truth_with_duplicates": len(dup_truth), "truth_ids": dup_truth[:50],
                       "repeated_ids": repeated_ids[:50], "cross_patch_pairs": cross_pairs[:50],
                       "n_cross_patch_pairs": len(cross_pairs), "n_cross_patch_pairs_within_radius":
                       cross_pairs_radius},
        "losses": {"by_reason": reasons, "sources": losses},
        "flux": flux, "astrometry": astrometry, "forced": forced, "patches": pinfo, "targets": targets,
        "settings": {"radius": radius, "flux_snr_min": flux_snr_min, "astrometry_snr_min": astrometry_snr_min,
                     "isolated_blendedness": isolated_blendedness, "blend_radius": blend_radius,
                     "edge_margin": edge_margin, "dup_radius": dup_radius, "detect_threshold": detect_threshold,
                     "pedestal_ratio": pedestal_ratio, "border_margin": border_margin,
                     "near_threshold_sigma": near_threshold_sigma,
                     "pixel_scale": scale},
    }
    return result, format_report(result)


# -----------------------------------------------------------------------------
# text report
# -----------------------------------------------------------------------------


def _r(v, nd: int):
    return None if v is None else round(v, nd)


def _pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def format_report(res: dict, max_losses: int = 40) -> str:
    """The text report of a :func:`validate_tract` result."""
    bands = res["bands"]
    s, c, d = res["sample"], res["completeness"], res["duplicates"]
    st = res["settings"]
    lines = [f"validation of {res['catalog']}", f"  truth: {res['truth']} ({res['n_truth']} sources); "
             f"catalog: {res['n_catalog']} children ({res['n_catalog_unmatched']} unmatched to any truth)",
             f"  match radius {st['radius']:g} px, one-to-one, brightest truth first",
             "",
             f"truth S/N > {s['snr_min']:g} ({s['snr_band']}): {s['n']} sources; detected {c['n_detected']} "
             f"({_pct(c['fraction'])}), lost {c['n_lost']} ({_pct(c['loss_fraction'])}); median match distance "
             f"{_r(c['median_match_distance'], 3)} px",
             f"duplicates: {d['n_truth_with_duplicates']} truth sources with >1 catalog source; "
             f"{len(d['repeated_ids'])} repeated ids; {d['n_cross_patch_pairs']} cross-patch pairs < "
             f"{st['dup_radius']:g} px ({d['n_cross_patch_pairs_within_radius']} within {st['radius']:g} px)"]
    lines.append("  by S/N: " + ", ".join(
        f"({b['lo']:g}, {b['hi']:g}]: {b['n_detected']}/{b['n']}" if b["hi"] is not None
        else f"> {b['lo']:g}: {b['n_detected']}/{b['n']}" for b in c.get("by_snr", [])))
    if res["losses"]["sources"]:
        lines.append("losses by reason: " + ", ".join(f"{k} {v}"
                                                      for k, v in sorted(res["losses"]["by_reason"].items())))
        for loss in res["losses"]["sources"][:max_losses]:
            lines.append(f"  truth {loss['truth_id']:6d} ({loss['type']}) x={loss['x']:7.1f} y={loss['y']:7.1f} "
                         f"S/N {loss['snr']:7.1f}: {loss['reason']} {loss['detail']}")
        if len(res["losses"]["sources"]) > max_losses:
            lines.append(f"  ... {len(res['losses']['sources']) - max_losses} more")
    f = res["flux"]
    lines += ["", f"flux-conserving flux_<b> vs truth: median |df/f| (band S/N > {st['flux_snr_min']:g}, "
              f"median 0.674 x flux_err/f in brackets, n)"]
    lines.append("  " + "blendedness".ljust(16) + "".join(f"{b:>22s}" for b in bands))

    def cell(x):
        if not x["n"]:
            return f"{'-':>22s}"
        return f"{_pct(x['median_abs'])} [{_pct(x['noise_median_abs'])}] {x['n']:4d}".rjust(22)

    lines.append("  " + "isolated".ljust(16) + "".join(cell(f["isolated"][b]) for b in bands))
    for row in f["bins"]:
        lines.append("  " + f"[{row['lo']:.2f}, {row['hi']:.2f})".ljust(16) + "".join(cell(row["bands"][b])
                                                                                        for b in bands))
    if f.get("deblended"):
        lines.append("  " + "deblended (any)".ljust(16) + "".join(cell(f["deblended"][b]) for b in bands))
    lines.append("  bias (median df/f), isolated: " + ", ".join(
        f"{b} {_pct(f['isolated'][b]['median'])}" for b in bands))
    if f["psf_flux_stars"]:
        lines.append("  stars psf_flux".ljust(18) + "".join(cell(f["psf_flux_stars"][b]) for b in bands))
    for lab, per in f["ap_flux_stars"].items():
        lines.append(f"  stars ap_{lab}/EE".ljust(18) + "".join(cell(per[b]) for b in bands))
    for lab, per in f["ap_flux_galaxies"].items():
        lines.append(f"  galaxies ap_{lab}/true (median ratio): " + ", ".join(
            f"{b} {per[b]['median_ratio']:.3f}" if per[b]["median_ratio"] is not None else f"{b} n/a" for b in bands))
    a = res["astrometry"]
    lines += ["", f"astrometry (isolated, S/N > {st['astrometry_snr_min']:g}, n={a['n']}): median offset "
              f"{_r(a['median_arcsec'], 4)}\", p90 {_r(a['p90_arcsec'], 4)}\", bias dRA cos(Dec) "
              f"{_r(a['median_dra_arcsec'], 4)}\", dDec {_r(a['median_ddec_arcsec'], 4)}\""]
    fo = res["forced"]
    lines.append(f"forced photometry: {fo['n_unflagged']} of {fo['n_children']} children unflagged; missing psf_flux: "
                 + ", ".join(f"{b} {v}" for b, v in fo["missing_psf_flux"].items()))
    p = res["patches"]
    if p:
        lines.append(f"patches: {p['n']} ({p['n_failed']} failed), time per patch median {p['t_total_median']:.2f} s, "
                     f"max {p['t_total_max']:.2f} s, sum {p['t_total_sum']:.2f} s")
        for q in p["per_patch"]:
            err = f"  {q['error']}" if q["error"] else ""
            lines.append(f"  patch {q['patch']:3d} {q['status']:6s} {q['n_sources']:5d} sources  total "
                         f"{q['t_total']:.2f} s (load {q['t_load'] or 0:.2f}, detect {q['t_detect'] or 0:.2f}, "
                         f"deblend {q['t_deblend'] or 0:.2f}, measure {q['t_measure'] or 0:.2f}){err}")
    lines += ["", "targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in res["targets"].items())]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# CLI
# -----------------------------------------------------------------------------


def validate_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend validate CATALOG [--truth DIR] ...``: print the report; exit 1 with ``--check`` if a target fails.

    Returns
    -------
    int
        0, or 1 when ``--check`` is given and a target fails, or 2 on an input error.
    """
    ap = argparse.ArgumentParser(prog="hpcblend validate",
                                 description="Match a tract run's catalog to the simulation truth and report "
                                             "completeness, duplicates, losses, flux accuracy and astrometry.")
    ap.add_argument("catalog", help="the run's HDF5 catalog")
    ap.add_argument("--truth", default=None, help="truth directory or truth.fits (default: the run's tract_dir)")
    ap.add_argument("--radius", type=float, default=2.0, help="match radius in pixels (default 2)")
    ap.add_argument("--snr-min", type=float, default=10.0, help="truth S/N of the completeness sample (default 10)")
    ap.add_argument("--snr-band", default="all", help="'all' (multi-band S/N) or a band name")
    ap.add_argument("--flux-snr-min", type=float, default=20.0, help="band S/N for flux statistics (default 20)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    ap.add_argument("--max-losses", type=int, default=40, help="losses listed in the report")
    ap.add_argument("--no-rerun-detection", action="store_true",
                    help="do not re-run the patches' detection to explain losses (faster; coarser reasons)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = ap.parse_args(argv)
    from hpcblend.errors import HpcblendError

    try:
        res, _ = validate_tract(args.catalog, args.truth, radius=args.radius, snr_min=args.snr_min,
                                snr_band=args.snr_band, flux_snr_min=args.flux_snr_min,
                                measure_detection=not args.no_rerun_detection)
    except HpcblendError as exc:
        print(f"hpcblend validate: {exc}", file=sys.stderr)
        return 2
    print(format_report(res, max_losses=args.max_losses))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.check and not all(res["targets"].values()):
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(validate_main())
