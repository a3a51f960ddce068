"""The ``hpcblend inject`` command (issue 16), and the metrics of a run over injected data, both kinds.

``hpcblend inject blends IN OUT ...`` calls :func:`hpcblend.simulate.inject.inject_blends` (blend files);
``hpcblend inject tract SRC_DIR OUT_DIR ...`` calls :func:`hpcblend.simulate.inject_tract.inject_tract` (a
coadd tract); those modules document the conventions, the truth columns and the *perfect-deblender
yardstick*. ``hpcblend inject metrics CATALOG [TRUTH | --truth TRUTH] [--band i] [--radius 2] [--json OUT]``
measures a run over either against its truth and prints the tables of
:mod:`hpcblend.analysis.injection_metrics` (completeness and purity, flux errors and centroid errors per
magnitude, S/N, separation and blendedness bin, the yardstick ratio); the truth's kind is told by its file
(``truth/injections.npz`` of blend files, ``truth.fits`` of a tract) and, without one, it is the one the
run's ``/config`` points at (:func:`find_injection_truth`). :func:`injection_scorecard` gives the figures
``hpcblend scorecard`` judges.

Blend files are matched by (parent, peak index) (:func:`match_injections`): an injection is *found* when its
peak's child row exists, its parent was deblended (not failed or skipped) and the peak was fitted (no
``flag_peak_*`` other than ``flag_peak_merged``, not ``flag_model_zero``). Their estimators: ``model``,
``conserving``, ``psf`` (the catalog's ``psf_flux_<b>``, where the run measured it); yardsticks ``yard_ap``,
``yard_psf``; floor ``yard_sum`` (the injected source's own pixels: no sky noise). The S/N is the truth's
``snr`` (matched filter), or for a truth written before it existed the aperture S/N
``sqrt(Σ_b (flux_b / yard_ap_sigma_b)²)``; blendedness the truth's ``blendedness_true`` where it exists,
else the catalog's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from astropy.io import fits

from hpcblend.analysis.injection_metrics import InjectionSample, format_summary, summarize
from hpcblend.analysis.injection_tract import DEFAULT_RADIUS, tract_sample
from hpcblend.errors import HpcblendError, InputError
from hpcblend.io.catalog import read_json_group, read_table
from hpcblend.io.json_values import json_default
from hpcblend.io.truth import TRUTH_FILE as TRACT_TRUTH_FILE
from hpcblend.simulate.inject import TRUTH_FILE, inject_blends, read_truth, ref_band
from hpcblend.simulate.inject_tract import DEFAULT_MARGIN_PX, DEFAULT_MIN_SEPARATION, inject_tract

__all__ = ["match_injections", "blends_sample", "find_injection_truth", "load_sample", "injection_metrics",
           "format_metrics", "injection_scorecard", "inject_main"]


# -----------------------------------------------------------------------------
# matching
# -----------------------------------------------------------------------------


def match_injections(catalog: str, table: np.ndarray) -> tuple:
    """The catalog's child row of each injection, by (parent, peak index).

    Parameters
    ----------
    catalog : str
        HDF5 catalog of a run over the injected files (``/blends``, ``/sources``).
    table : ndarray
        The truth table of :func:`hpcblend.simulate.inject.read_truth`.

    Returns
    -------
    sources : ndarray
        The catalog's ``/sources`` rows.
    index : ndarray of int64, shape (N,)
        Row of ``sources`` per injection, -1 when there is none.
    found : ndarray of bool, shape (N,)
        True when the row exists, its parent was deblended and its peak was fitted.
    """
    blends = read_table(catalog, "blends")
    src = read_table(catalog, "sources")
    bid = {os.path.basename(r["source_file"].decode() if isinstance(r["source_file"], bytes)
                            else str(r["source_file"])): int(r["id"]) for r in blends}
    bad_parent = {int(r["id"]) for r in blends
                  if r["flag_failed"] or r["flag_skipped_too_many_peaks"] or r["flag_skipped_too_large"]}
    key = {(int(p), int(k)): i for i, (p, k) in enumerate(zip(src["parent_id"], src["peak_index"]))}
    idx = np.full(len(table), -1, dtype=np.int64)
    ok = np.zeros(len(table), dtype=bool)
    drop = [c for c in src.dtype.names if c.startswith("flag_peak_") and c != "flag_peak_merged"]
    drop += [c for c in ("flag_parent_failed", "flag_parent_skipped", "flag_model_zero") if c in src.dtype.names]
    for t, r in enumerate(table):
        pid = bid.get(str(r["blend_file"]))
        i = key.get((pid, int(r["peak_index"]))) if pid is not None else None
        if i is None:
            continue
        idx[t] = i
        ok[t] = pid not in bad_parent and not any(bool(src[c][i]) for c in drop)
    return src, idx, ok


# -----------------------------------------------------------------------------
# the sample of a run over injected blend files
# -----------------------------------------------------------------------------


def _snr(table: np.ndarray, bands) -> np.ndarray:
    """The truth's matched-filter ``snr``, else the aperture S/N over bands (module docstring)."""
    if "snr" in table.dtype.names:
        return np.asarray(table["snr"], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sum((table[f"flux_{b}"] / table[f"yard_ap_sigma_{b}"]) ** 2 for b in bands))


def blends_sample(catalog: str, truth: str, band: Optional[str] = None) -> InjectionSample:
    """The injections of a run over injected blend files (:func:`match_injections`), as an :class:`InjectionSample`.

    Parameters
    ----------
    catalog : str
        HDF5 catalog of the run (``/blends``, ``/sources``).
    truth : str
        :data:`~hpcblend.simulate.inject.TRUTH_FILE` of :func:`~hpcblend.simulate.inject.inject_blends`.
    band : str, optional
        Band of the tables (default ``i``, else the middle band).

    Returns
    -------
    InjectionSample
    """
    table, _, bands, meta = read_truth(truth)
    band = band or bands[ref_band(bands)]
    if band not in bands:
        raise InputError(f"{truth}: no band {band!r} in the injection truth (bands {bands})")
    src, idx, ok = match_injections(catalog, table)
    ii = np.clip(idx, 0, None)
    names = src.dtype.names or ()

    def cat(col: str) -> np.ndarray:
        if col not in names or not len(src):
            return np.full(len(table), np.nan)
        return np.where(ok, np.asarray(src[col], np.float64)[ii], np.nan)

    flux = {"model": {}, "conserving": {}, "psf": {}, "yard_ap": {}, "yard_psf": {}, "yard_sum": {}}
    for b in bands:
        flux["model"][b], flux["conserving"][b], flux["psf"][b] = (cat(f"flux_model_{b}"), cat(f"flux_{b}"),
                                                                   cat(f"psf_flux_{b}"))
        for key in ("ap", "psf", "sum"):
            flux[f"yard_{key}"][b] = np.asarray(table[f"yard_{key}_flux_{b}"], np.float64)
    ty, tx = np.asarray(table["y_centroid"], np.float64), np.asarray(table["x_centroid"], np.float64)
    truth_blend = "blendedness_true" in table.dtype.names
    estimators = ("model", "conserving") + (("psf",) if f"psf_flux_{band}" in names else ())
    return InjectionSample(
        kind="blends", bands=tuple(bands), band=band,
        f_true={b: np.asarray(table[f"flux_{b}"], np.float64) for b in bands}, flux=flux, estimators=estimators,
        yardsticks=("yard_psf", "yard_ap"), floors=("yard_sum",), found=ok,
        mag=np.asarray(table["mag"], np.float64), snr=_snr(table, bands),
        separation=np.asarray(table["separation"], np.float64),
        blendedness=np.asarray(table["blendedness_true"], np.float64) if truth_blend else cat("blendedness"),
        blendedness_from="truth" if truth_blend else "catalog",
        centroid={"catalog": np.hypot(cat("y") - ty, cat("x") - tx),
                  "yardstick": np.hypot(np.asarray(table["yard_y"]) - ty, np.asarray(table["yard_x"]) - tx)},
        notes=[f"matched by (parent, peak index); truth: {truth} ({meta.get('n_injected', len(table))} injected "
               f"into {meta.get('n_inputs', '?')} blend files); the yardstick is measured on the injected source "
               f"plus a realisation of the blend's variance (the real sources' models are unknown)"])


# -----------------------------------------------------------------------------
# either kind
# -----------------------------------------------------------------------------


def _resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir or ".", path))


def _is_injection_truth_fits(path: str) -> bool:
    try:
        return bool(fits.getheader(path, 0).get("INJECTED", False))
    except (OSError, ValueError):
        return False


def find_injection_truth(catalog: str) -> Optional[str]:
    """The injection truth of the data a run read, from its ``/config``; None when there is none.

    A tract run: ``<input.tract_dir>/truth.fits`` when its primary header says ``INJECTED``; a run over
    blend files: the first ``<dir>/truth/injections.npz`` of the directories of ``input.paths`` (a
    directory itself, else the folder of the file or pattern). Relative paths are taken from the
    config's ``base_dir``.
    """
    try:
        cfg = read_json_group(catalog, "config")
    except Exception:  # noqa: BLE001 - no config: no recorded truth
        return None
    inp, base = cfg.get("input") or {}, cfg.get("base_dir", ".")
    if inp.get("kind") == "tract" and inp.get("tract_dir"):
        path = os.path.join(_resolve(str(inp["tract_dir"]), base), TRACT_TRUTH_FILE)
        return path if os.path.isfile(path) and _is_injection_truth_fits(path) else None
    for p in inp.get("paths") or []:
        p = _resolve(str(p), base)
        folder = p if os.path.isdir(p) else os.path.dirname(p)
        cand = os.path.join(folder, TRUTH_FILE)
        if os.path.isfile(cand):
            return cand
    return None


def load_sample(catalog: str, truth: Optional[str] = None, band: Optional[str] = None,
                radius: float = DEFAULT_RADIUS) -> InjectionSample:
    """The :class:`InjectionSample` of a run: blend-file truth (``.npz``) or tract truth (``truth.fits`` or its folder).

    Raises
    ------
    InputError
        No truth given and none recorded for the run, or an unreadable truth.
    """
    if truth is None:
        truth = find_injection_truth(catalog)
        if truth is None:
            raise InputError(f"{catalog}: no injection truth given (--truth) and none found where the run's "
                             f"/config says its inputs are")
    if os.path.isdir(truth):
        cand = [os.path.join(truth, TRACT_TRUTH_FILE), os.path.join(truth, TRUTH_FILE)]
        truth = next((c for c in cand if os.path.isfile(c)), cand[0])
    if truth.endswith(".npz"):
        return blends_sample(catalog, truth, band=band)
    return tract_sample(catalog, truth, band=band, radius=radius)


def injection_metrics(catalog: str, truth: Optional[str] = None, band: Optional[str] = None,
                      radius: float = DEFAULT_RADIUS, snr_min: float = 10.0, mag_edges=None) -> dict:
    """The metric tables of a run over injected data (:func:`hpcblend.analysis.injection_metrics.summarize`).

    Parameters
    ----------
    catalog : str
    truth : str, optional
        The injection truth (default: :func:`find_injection_truth`).
    band : str, optional
        Band of the tables (default ``i``, else the middle band).
    radius : float
        Tract match radius, px.
    snr_min : float
        S/N of the summary sample.
    mag_edges : sequence of float, optional

    Returns
    -------
    dict
        See :func:`~hpcblend.analysis.injection_metrics.summarize`.
    """
    return summarize(load_sample(catalog, truth, band=band, radius=radius), mag_edges=mag_edges, snr_min=snr_min)


#: The plain-text tables of :func:`injection_metrics`.
format_metrics = format_summary


def injection_scorecard(catalog: str, truth: Optional[str] = None, band: Optional[str] = None) -> dict:
    """The injection figures the scorecard judges (all at truth S/N > 10).

    Returns
    -------
    dict of str -> float
        ``injection.n_snr10``, ``injection.completeness_snr10``,
        ``injection.flux_model_median_abs_snr10`` (median |Δf/f| of the model flux over the found sources)
        and ``injection.flux_model_yardstick_ratio_snr10`` (that over the best yardstick's on the same
        sources).
    """
    m = injection_metrics(catalog, truth, band=band)
    s = m["snr"]
    return {"injection.n_snr10": float(s["n"]), "injection.completeness_snr10": float(s["completeness"]),
            "injection.flux_model_median_abs_snr10": float(s["stats"]["model"][1]),
            "injection.flux_model_yardstick_ratio_snr10": float(s["ratio"]["model"])}


# -----------------------------------------------------------------------------
# CLI
# -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpcblend inject", description="source injection and its metrics")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("blends", help="inject fake galaxies into blend files; writes new files and a truth table")
    b.add_argument("inputs", help="blend files: a directory or glob pattern (quote it)")
    b.add_argument("out_dir")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--per-blend", type=int, default=2, metavar="N")
    b.add_argument("--mag-range", type=float, nargs=2, default=(21.0, 25.0), metavar=("BRIGHT", "FAINT"))
    b.add_argument("--separation-range", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                   help="arcsec from a real peak")
    b.add_argument("--morphology", choices=("cosmos", "sersic"), default="cosmos")
    b.add_argument("--cosmos", metavar="DIR", help="GalSim COSMOS sample directory (for --morphology cosmos)")
    b.add_argument("--no-noise", action="store_true", help="add the noiseless sources (for checks)")
    t = sub.add_parser("tract", help="inject fake galaxies into a tract's coadds; writes a new tract and its truth")
    t.add_argument("src_dir", help="the tract directory (coadd_<b>.fits, psf_<b>.fits[, truth.fits]); only read")
    t.add_argument("out_dir", help="the new tract directory")
    count = t.add_mutually_exclusive_group()
    count.add_argument("--n", type=int, help="sources to inject (default 100)")
    count.add_argument("--density", type=float, help="sources per arcmin^2")
    t.add_argument("--mag-range", type=float, nargs=2, default=(20.0, 25.0), metavar=("BRIGHT", "FAINT"),
                   help="i-band AB magnitude range (uniform)")
    t.add_argument("--seed", type=int, default=0)
    morph = t.add_mutually_exclusive_group()
    morph.add_argument("--cosmos", metavar="DIR", help="COSMOS morphologies from this GalSim sample (the default)")
    morph.add_argument("--sersic", action="store_true", help="Sersic bulge + disk morphologies")
    t.add_argument("--separation", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="arcsec from a random real (truth or detected) source; default: uniform positions")
    t.add_argument("--min-separation", type=float, default=DEFAULT_MIN_SEPARATION, metavar="ARCSEC",
                   help=f"between injected sources (default {DEFAULT_MIN_SEPARATION:g})")
    t.add_argument("--margin", type=float, default=DEFAULT_MARGIN_PX, metavar="PX",
                   help=f"from the tract edge (default {DEFAULT_MARGIN_PX})")
    t.add_argument("--no-noise", action="store_true", help="add the noiseless sources (for checks)")
    mt = sub.add_parser("metrics", help="completeness, purity, flux and centroid errors of the injections in a run")
    mt.add_argument("catalog")
    mt.add_argument("truth_pos", nargs="?", metavar="TRUTH", help="the injection truth (same as --truth)")
    mt.add_argument("--truth", help=f"{TRUTH_FILE} of blend files, or a tract's truth.fits (or its directory); "
                                    f"default: the one next to the run's inputs")
    mt.add_argument("--band", help="band of the tables (default i, else the middle band)")
    mt.add_argument("--radius", type=float, default=DEFAULT_RADIUS, help="tract match radius, px (default 2)")
    mt.add_argument("--snr-min", type=float, default=10.0, help="S/N of the summary sample (default 10)")
    mt.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    mt.add_argument("--check", action="store_true", help="exit 1 when a target of issue 16 fails")
    return p


def _inject_tract(args) -> int:
    res = inject_tract(args.src_dir, args.out_dir, n=args.n, density=args.density, mag_range=tuple(args.mag_range),
                       seed=args.seed, morphology="sersic" if args.sersic else "cosmos", cosmos_dir=args.cosmos,
                       separation=tuple(args.separation) if args.separation else None,
                       min_separation=args.min_separation, margin=args.margin, add_noise=not args.no_noise)
    print(f"injected {res.n_injected} of {res.n_requested} sources into {res.directory} (yardstick noise: "
          f"{res.yard_noise}); truth: {res.truth_path}")
    return 0


def _metrics(args) -> int:
    if args.truth and args.truth_pos and args.truth != args.truth_pos:
        raise InputError("inject metrics: two different truths given (TRUTH and --truth)")
    m = injection_metrics(args.catalog, args.truth or args.truth_pos, band=args.band, radius=args.radius,
                          snr_min=args.snr_min)
    print(format_summary(m))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(m, fh, indent=1, default=json_default)
    t = m["targets"]
    failed = not (t["completeness_snr_ge_0.95"] and t["model_within_1.5x_yardstick_per_blendedness_bin"])
    return 1 if args.check and failed else 0


def inject_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend inject blends|tract|metrics ...`` (see the module docstring).

    Returns
    -------
    int
        0; 1 with ``metrics --check`` when a target fails; 2 on an input error (message on stderr).
    """
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "blends":
            truth = inject_blends(args.inputs, args.out_dir, seed=args.seed, per_blend=args.per_blend,
                                  mag_range=tuple(args.mag_range), sep_range=tuple(args.separation_range),
                                  morphology=args.morphology, cosmos_dir=args.cosmos, add_noise=not args.no_noise)
            table = read_truth(truth)[0]
            print(f"injected {len(table)} sources into {len(set(table['blend_file']))} blend files; truth: {truth}")
            return 0
        if args.cmd == "tract":
            return _inject_tract(args)
        return _metrics(args)
    except (HpcblendError, OSError, KeyError) as exc:
        print(f"hpcblend: error: {exc}", file=sys.stderr)
        return 2
