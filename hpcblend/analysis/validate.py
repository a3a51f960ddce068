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

The steps are in :mod:`~hpcblend.analysis.validate_snr` (truth S/N and the
detection model), :mod:`~hpcblend.analysis.validate_match` (matching,
duplicates, loss reasons), :mod:`~hpcblend.analysis.validate_metrics` (flux,
astrometry, forced photometry, patches) and
:mod:`~hpcblend.analysis.validate_report` (the text); this module reads the
inputs, runs them in order and holds the command line.
"""


from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from hpcblend.analysis.validate_match import (LossCriteria, PatchDetection, explain_losses, find_duplicates,
                                              json_float, match_truth)
from hpcblend.analysis.validate_metrics import (astrometry, completeness_by_snr, flux_accuracy, forced_summary,
                                                patch_summary)
from hpcblend.analysis.validate_report import format_report
from hpcblend.analysis.validate_snr import bands_of_truth, truth_snr
from hpcblend.errors import CatalogError, HpcblendError, InputError
from hpcblend.io.catalog import open_catalog, read_json_group, read_table
from hpcblend.io.truth import read_truth

__all__ = ["validate_tract", "validate_main"]


# -----------------------------------------------------------------------------
# inputs
# -----------------------------------------------------------------------------


def _read_catalog(path: str) -> dict:
    """The catalog's ``/sources``, ``/patches``, ``/blends`` and ``bands``; CatalogError unless a tract run's."""
    with open_catalog(path) as f:
        tables = {name: read_table(f, name) for name in ("sources", "patches", "blends") if name in f}
        bands = [b for b in str(f.attrs.get("bands", "")).split(",") if b]
    if "sources" not in tables:
        raise CatalogError(f"{path}: no /sources table")
    missing = [c for c in ("x", "y", "peak_x", "peak_y", "ra", "dec", "patch", "blendedness")
               if c not in tables["sources"].dtype.names]
    if missing:
        raise CatalogError(f"{path}: /sources lacks {missing}: not the catalog of a tract run (input.kind: tract)")
    tables["bands"] = bands
    return tables


def _run_config(path: str) -> dict:
    """The catalog's ``/config`` ({} when it has none or it cannot be read: only defaults depend on it)."""
    try:
        return read_json_group(path, "config")
    except Exception:  # noqa: BLE001 - optional: only defaults
        return {}


def _config_tract_dir(cfg: dict) -> Optional[str]:
    """The run's ``input.tract_dir`` (relative to its ``base_dir``), or None."""
    d = (cfg.get("input") or {}).get("tract_dir")
    if not d:
        return None
    if not os.path.isabs(d):
        d = os.path.normpath(os.path.join(cfg.get("base_dir", "."), d))
    return d


def _read_inputs(catalog: str, truth_dir: Optional[str]) -> tuple:
    """``(tables, truth, truth_dir, psf_dir, run_cfg)``: the catalog first, so a foreign catalog is the error."""
    tabs = _read_catalog(catalog)
    run_cfg = _run_config(catalog)
    if truth_dir is None:
        truth_dir = _config_tract_dir(run_cfg)
        if truth_dir is None:
            raise InputError(f"{catalog}: no truth directory given and the catalog's /config has no input.tract_dir")
    truth_dir = os.fspath(truth_dir)
    psf_dir = truth_dir if os.path.isdir(truth_dir) else os.path.dirname(truth_dir)
    return tabs, read_truth(truth_dir), truth_dir, psf_dir, run_cfg


def _patch_detection(psf_dir: str, run_cfg: dict, bands) -> Optional[PatchDetection]:
    """A :class:`PatchDetection` on the coadds next to the truth, or None without coadds or a run config."""
    if not (os.path.isdir(psf_dir) and run_cfg):
        return None
    try:
        return PatchDetection(psf_dir, run_cfg, bands)
    except Exception:  # noqa: BLE001 - the coadds are optional here: fall back to the expected significance
        return None


# -----------------------------------------------------------------------------
# main
# -----------------------------------------------------------------------------


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
        The same as text (:func:`~hpcblend.analysis.validate_report.format_report`).

    Raises
    ------
    CatalogError
        No ``/sources`` table, or not the catalog of a tract run.
    InputError
        No truth directory given or recorded, or the truth catalog is unreadable.
    """
    tabs, truth, truth_dir, psf_dir, run_cfg = _read_inputs(catalog, truth_dir)
    src, patches = tabs["sources"], tabs.get("patches")
    cat_bands = tabs["bands"]
    bands = [b for b in bands_of_truth(truth) if not cat_bands or b in cat_bands]
    meta = truth.meta
    scale = float(meta.get("PIXSCALE", 0.168))
    ny, nx = int(meta.get("NY", 0)), int(meta.get("NX", 0))
    fwhm_px = max(float(meta.get(f"FWHM_{b.upper()}", 0.7)) for b in bands) / scale
    blend_radius = fwhm_px if blend_radius is None else float(blend_radius)
    edge_margin = fwhm_px if edge_margin is None else float(edge_margin)
    detect_cfg = run_cfg.get("detect") or {}
    if detect_threshold is None:
        detect_threshold = float(detect_cfg.get("threshold", 5.0))

    sn = truth_snr(truth, psf_dir)
    snr = sn["snr"] if snr_band == "all" else sn[f"snr_{snr_band}"]
    m = match_truth(truth, src, bands, sn, snr, radius=radius, snr_min=snr_min, edge_margin=edge_margin, nx=nx,
                    ny=ny)
    dups = find_duplicates(m, radius, dup_radius)
    bad_parent = np.asarray(src["flag_parent_failed"] | src["flag_parent_skipped"], dtype=bool)
    pdet = _patch_detection(psf_dir, run_cfg, bands) if measure_detection else None
    criteria = LossCriteria(radius=radius, blend_radius=blend_radius, pedestal_ratio=pedestal_ratio,
                            border_margin=border_margin, near_threshold_sigma=near_threshold_sigma,
                            detect_threshold=detect_threshold, detect_pad=int(detect_cfg.get("pad", 5)))
    losses, reasons = explain_losses(m, criteria, patches, tabs.get("blends"), bad_parent, pdet, nx, ny)
    flux, isolated, mt, mc = flux_accuracy(m, flux_snr_min=flux_snr_min, isolated_blendedness=isolated_blendedness,
                                           psf_dir=psf_dir)
    astro = astrometry(m, mt, mc, isolated, astrometry_snr_min, scale)
    forced = forced_summary(src, bands, bad_parent)

    n_sample = int(np.count_nonzero(m.sample))
    n_det = int(np.count_nonzero(m.detected))
    iso_med = [flux["isolated"][b]["median_abs"] for b in bands]
    targets = {
        "no_duplicates": len(dups["dup_truth"]) == 0 and not dups["repeated_ids"] and not dups["cross_pairs"],
        "flux_isolated_le_5pct": all(v is not None and v <= 0.05 for v in iso_med),
        "astrometry_median_lt_0p05_arcsec": astro["median_arcsec"] is not None and astro["median_arcsec"] < 0.05,
        "losses_explained": reasons.get("unexplained", 0) == 0,
        "forced_complete": all(v == 0 for v in forced["missing_psf_flux"].values()),
    }
    result = {
        "catalog": os.path.abspath(catalog), "truth": os.path.abspath(truth_dir), "bands": list(bands),
        "n_truth": int(len(truth)), "n_catalog": int(len(src)),
        "n_catalog_unmatched": int(np.count_nonzero(m.c2t < 0)),
        "sample": {"snr_min": snr_min, "snr_band": snr_band, "n": n_sample},
        "completeness": {"n_detected": n_det, "fraction": json_float(n_det / n_sample) if n_sample else None,
                         "n_lost": n_sample - n_det,
                         "loss_fraction": json_float((n_sample - n_det) / n_sample) if n_sample else None,
                         "median_match_distance": json_float(np.nanmedian(m.dist[m.detected])) if n_det else None,
                         "by_snr": completeness_by_snr(m, snr_min)},
        "duplicates": {"n_truth_with_duplicates": len(dups["dup_truth"]), "truth_ids": dups["dup_truth"][:50],
                       "repeated_ids": dups["repeated_ids"][:50], "cross_patch_pairs": dups["cross_pairs"][:50],
                       "n_cross_patch_pairs": len(dups["cross_pairs"]),
                       "n_cross_patch_pairs_within_radius": dups["cross_pairs_radius"]},
        "losses": {"by_reason": reasons, "sources": losses},
        "flux": flux, "astrometry": astro, "forced": forced, "patches": patch_summary(patches), "targets": targets,
        "settings": {"radius": radius, "flux_snr_min": flux_snr_min, "astrometry_snr_min": astrometry_snr_min,
                     "isolated_blendedness": isolated_blendedness, "blend_radius": blend_radius,
                     "edge_margin": edge_margin, "dup_radius": dup_radius, "detect_threshold": detect_threshold,
                     "pedestal_ratio": pedestal_ratio, "border_margin": border_margin,
                     "near_threshold_sigma": near_threshold_sigma,
                     "pixel_scale": scale},
    }
    return result, format_report(result)


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
