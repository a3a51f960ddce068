"""Deblender benchmark: ``hpcblend bench deblend PATHS [--reference scarlet_lite]``.

Deblends every blend on one core after a warm-up and reports per-blend and
total times (init, fit, measure), the fit's *FFT floor* and fit quality. With
``reference="scarlet_lite"`` it also runs LSST's production deblender,
scarlet_lite (``lsst.scarlet.lite``), on the same blends in the same process,
interleaved blend by blend (the order of the two alternates from blend to
blend), configured as the LSST pipeline configures it
(:class:`ScarletLiteSettings`), and compares the two: wall and process CPU
time, per-blend time ratios, χ²/pixel, iterations, exceptions, convergence
and the per-child model flux. Every figure comes from this run; nothing is
compared against remembered numbers.

scarlet_lite is an optional reference, never a dependency of hpcblend and
never imported by a run: it is not on PyPI, and ``../shared/reference/README.txt``
says how to install it. When it cannot be imported the benchmark says so in
one line and runs hpcblend alone.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from hpcblend.analysis.bench_reference import ScarletLiteRunner, ScarletLiteSettings, load_scarlet_lite
from hpcblend.analysis.truth_metrics import (ISOLATION_ARCSEC, OUTLIER_SNR, OUTLIER_TOLERANCE, SNR_MIN,
                                             _known_shape_estimate, _stats, _truth_status)
from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, deblend_blend, warm_up
from hpcblend.errors import InputError, is_programming_error
from hpcblend.io.blends import BlendData, expand_inputs, read_blend
from hpcblend.io.json_values import json_default
from hpcblend.kernels.convolution import convolve_bands, correlate_bands
from hpcblend.parallel.allocator import keep_freed_memory
from hpcblend.io.blend_truth import read_blend_truth

__all__ = ["REFERENCES", "REFERENCE_README", "ScarletLiteSettings", "ScarletLiteRunner", "load_scarlet_lite",
           "run_bench_deblend", "format_report", "write_json"]

#: Reference deblenders ``--reference`` accepts.
REFERENCES: tuple = ("scarlet_lite",)

#: Where the install instructions of the reference live (relative to the repository root).
REFERENCE_README: str = "../shared/reference/README.txt"

#: Band of the per-child model-flux comparison (the middle band when a blend has no such band).
FLUX_BAND: str = "i"

#: A fit "ends far worse" than the other deblender's on a blend when its χ²/px is more than this
#: factor above the other's (it stopped early and wrong, or ran to its cap without getting near).
FAR_WORSE_CHI2_FACTOR: float = 2.0


def _timed(func: Callable, *args):
    """``func(*args)`` with its wall and process CPU seconds; an exception is returned, not raised."""
    t, c = time.perf_counter(), time.process_time()
    try:
        out, exc = func(*args), None
    except Exception as err:  # noqa: BLE001 - recorded per blend; the caller re-raises programming errors
        out, exc = None, err
    return out, exc, time.perf_counter() - t, time.process_time() - c


def _flux_band(blend: BlendData) -> int:
    return blend.bands.index(FLUX_BAND) if FLUX_BAND in blend.bands else blend.n_bands // 2


def _hpcblend_row(blend: BlendData, config: DeblendConfig) -> dict:
    """Deblend one blend with hpcblend; the row of its figures."""
    r, exc, wall, cpu = _timed(deblend_blend, blend, config)
    if exc is not None and is_programming_error(exc):
        raise exc
    row = dict(wall=wall, cpu=cpu, t_init=0.0, t_fit=0.0, t_measure=0.0, iterations=0, converged=False,
               fitted=False, skipped=False, chi2_per_pixel=float("nan"), error="",
               flux_model=[float("nan")] * blend.n_peaks)
    if exc is not None:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    fitted = r.fitted and r.sed is not None
    row.update(t_init=r.t_init, t_fit=r.t_fit, t_measure=r.t_measure, iterations=r.iterations,
               converged=bool(r.converged), fitted=bool(fitted), chi2_per_pixel=float(r.chi2_per_pixel),
               skipped=bool(r.flags.get("flag_skipped_too_many_peaks") or r.flags.get("flag_skipped_too_large")))
    if r.error_type:
        row["error"] = f"{r.error_type}: {r.error_message}"
    if fitted and "flux_model" in r.children:
        row["flux_model"] = [float(v) for v in np.asarray(r.children["flux_model"])[:, _flux_band(blend)]]
    return row


def _truth_row(path: str, blend: BlendData) -> dict:
    """The truth a simulated blend file carries, in :data:`FLUX_BAND` per peak; empty for a file without truth.

    Scored: S/N > ``SNR_MIN`` and a truth status "ok" (neither saturated nor masked); bright and isolated:
    also S/N > ``OUTLIER_SNR`` and no other peak within ``ISOLATION_ARCSEC``
    (:mod:`hpcblend.analysis.truth_metrics`).
    """
    try:
        t = read_blend_truth(path)
    except InputError:
        return {}
    if t["n_peaks"] != blend.n_peaks:
        return {}
    b = _flux_band(blend)
    snr = np.asarray(t["snr"], dtype=np.float64)[:, b]
    scored = (_truth_status(t) == "ok") & (snr > SNR_MIN)
    isolated = np.asarray(t["nn_arcsec"], dtype=np.float64) >= ISOLATION_ARCSEC
    row = dict(truth_flux=[float(v) for v in np.asarray(t["flux_image"], dtype=np.float64)[:, b]],
               truth_snr=[float(v) for v in snr], truth_scored=[bool(v) for v in scored],
               truth_bright_isolated=[bool(v) for v in scored & (snr > OUTLIER_SNR) & isolated])
    if "flux_known_shape" in t:  # truth version 2 on
        row["truth_known_shape"] = [float(v) for v in _known_shape_estimate(t, "flux_image")[:, b]]
    return row


def _truth_accuracy(rows: Sequence[dict], key: str) -> Optional[dict]:
    """Model flux against the truth (Δf/f = (f − f_true)/f_true) of one deblender over the rows with truth.

    ``key``: the rows' flux, ``flux_model`` (hpcblend), ``ref_flux_model`` (scarlet_lite) or
    ``truth_known_shape`` (the known-shape floor, :mod:`hpcblend.simulate.known_shapes`; only files of truth
    version 2 on have it). Returns None when no row has truth and ``key``; else ``n``, ``bias`` (median Δf/f),
    ``median_abs``, ``p90_abs`` and
    ``noise`` (median 1/S/N) of the modelled sources (:func:`hpcblend.analysis.truth_metrics._stats`),
    ``n_not_modelled``, ``n_bright_isolated`` and ``outliers`` (bright isolated sources off by more than the
    tolerance; a source the deblender did not model, NaN, counts as one).
    """
    dff, snr, bright = [], [], []
    for r in rows:
        if "truth_flux" not in r or key not in r:
            continue
        f = np.asarray(r[key], dtype=np.float64)
        f_true = np.asarray(r["truth_flux"])
        d = (f - f_true) / f_true
        scored = np.asarray(r["truth_scored"])
        dff.append(d[scored])
        snr.append(np.asarray(r["truth_snr"])[scored])
        bright.append(d[np.asarray(r["truth_bright_isolated"])])
    if not dff:
        return None
    d, db = np.concatenate(dff), np.concatenate(bright)
    return dict(band=FLUX_BAND, n_not_modelled=int((~np.isfinite(d)).sum()), **_stats(d, np.concatenate(snr)),
                n_bright_isolated=int(db.size), outliers=int(np.sum(~(np.abs(db) <= OUTLIER_TOLERANCE))))


def _reference_row(runner: ScarletLiteRunner, blend: BlendData) -> dict:
    """Deblend one blend with scarlet_lite; the row of its figures (prefixed ``ref_``)."""
    out, exc, wall, cpu = _timed(runner.deblend, blend)
    row = dict(ref_wall=wall, ref_cpu=cpu, ref_t_init=0.0, ref_t_fit=0.0, ref_iterations=0, ref_converged=False,
               ref_fitted=False, ref_chi2_per_pixel=float("nan"), ref_error="", ref_n_components=0,
               ref_flux_model=[float("nan")] * blend.n_peaks)
    if exc is not None:
        row["ref_error"] = f"{type(exc).__name__}: {exc}"
        return row
    fitted, t_init, t_fit = out
    weights = blend.weights(runner.bad_mask_planes)
    flux = runner.model_flux(fitted, blend.n_bands)[:, _flux_band(blend)]
    row.update(ref_t_init=t_init, ref_t_fit=t_fit, ref_iterations=int(fitted.it), ref_fitted=True,
               ref_converged=runner.converged(fitted), ref_n_components=len(fitted.components),
               ref_chi2_per_pixel=runner.chi2_per_pixel(fitted, blend, weights),
               ref_flux_model=[float(v) for v in flux])
    return row


def _fft_floor(blends: Sequence[BlendData], rows: Sequence[dict], config: DeblendConfig) -> float:
    """The fit's FFT floor: each blend's iterations × (one forward and one adjoint batched convolution).

    Timed alone on each blend's own grid: the part of the fit no loop fusion can remove (seconds).
    """
    total = 0.0
    for blend, row in zip(blends, rows):
        if not row["iterations"]:
            continue
        obs = build_observation(blend, config)
        hp, wp = obs.fft_shape
        t = time.perf_counter()
        for _ in range(row["iterations"]):
            convolve_bands(obs.images, obs.transfer, hp, wp)
            correlate_bands(obs.images, obs.transfer, hp, wp)
        total += time.perf_counter() - t
    return total


def _quantiles(values, qs=(50, 10, 90)) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    names = {50: "median", 10: "p10", 90: "p90"}
    out = {names.get(q, f"p{q}"): (float(np.percentile(v, q)) if len(v) else float("nan")) for q in qs}
    out["n"] = int(len(v))
    return out


def _side_summary(rows: Sequence[dict], prefix: str) -> dict:
    """Totals and quality figures of one deblender's rows (``prefix`` "" for hpcblend, "ref_" for the reference)."""
    p = prefix
    wall = np.array([r[p + "wall"] for r in rows])
    chi = np.array([r[p + "chi2_per_pixel"] for r in rows])
    fitted = [r for r in rows if r[p + "fitted"]]
    its = [r[p + "iterations"] for r in fitted]
    finite = chi[np.isfinite(chi)]
    return dict(total_s=float(wall.sum()), cpu_s=float(sum(r[p + "cpu"] for r in rows)),
                init_s=float(sum(r[p + "t_init"] for r in rows)), fit_s=float(sum(r[p + "t_fit"] for r in rows)),
                median_s=float(np.median(wall)), p90_s=float(np.percentile(wall, 90)), max_s=float(wall.max()),
                chi2_median=float(np.median(finite)) if len(finite) else float("nan"),
                chi2_p90=float(np.percentile(finite, 90)) if len(finite) else float("nan"),
                iterations_total=int(sum(its)), iterations_median=float(np.median(its)) if its else float("nan"),
                exceptions=sum(1 for r in rows if r[p + "error"]), fitted=len(fitted),
                not_converged=sum(1 for r in fitted if not r[p + "converged"]))


def _comparison(rows: Sequence[dict], hp: dict, ref: dict) -> dict:
    """Ratios of the two deblenders: times as scarlet_lite / hpcblend (×faster), fluxes as hpcblend / scarlet_lite."""
    both = [r for r in rows if not r["error"] and not r["ref_error"]]
    per_blend = [r["ref_wall"] / r["wall"] for r in both if r["wall"] > 0]
    largest = max(rows, key=lambda r: r["n_peaks"] * r["area"])
    flux = []
    for r in both:
        for a, b in zip(r["flux_model"], r["ref_flux_model"]):
            if np.isfinite(a) and np.isfinite(b) and b > 0:
                flux.append(a / b)
    return dict(total_wall_ratio=ref["total_s"] / hp["total_s"], total_cpu_ratio=ref["cpu_s"] / hp["cpu_s"],
                far_worse_fits=_far_worse_fits(both),
                init_fit_ratio=(ref["init_s"] + ref["fit_s"]) / (hp["init_s"] + hp["fit_s"]),
                per_blend_wall_ratio=_quantiles(per_blend),
                largest_blend=dict(file=largest["file"], n_peaks=largest["n_peaks"], area=largest["area"],
                                   hpcblend_s=largest["wall"], scarlet_lite_s=largest["ref_wall"],
                                   ratio=largest["ref_wall"] / largest["wall"]),
                flux_ratio=dict(band=FLUX_BAND, **_quantiles(flux)))


def _far_worse_fits(both: Sequence[dict]) -> dict:
    """The blends where one deblender's fit ends at more than :data:`FAR_WORSE_CHI2_FACTOR` × the other's χ²/px.

    Such a fit stopped early and wrong (scarlet_lite's relative-change test can fire on a slow first
    step: 10 iterations at χ²/px 347 on a simulated large parent) or ran to its iteration cap without
    getting near, so its time says little about speed. Both directions are counted, and the total
    wall-time ratio (scarlet_lite / hpcblend) is given over the other blends: a like-for-like figure
    beside the headline total, never instead of it.

    Parameters
    ----------
    both : sequence of dict
        Rows fitted by both deblenders without an exception (``chi2_per_pixel``, ``ref_chi2_per_pixel``,
        ``wall``, ``ref_wall``).

    Returns
    -------
    dict
        ``factor``; ``scarlet_lite`` and ``hpcblend`` (each ``n`` blends where that deblender's fit ends far
        worse, and the two deblenders' wall seconds on them, ``hpcblend_s`` and ``scarlet_lite_s``);
        ``rest_n`` and ``rest_wall_ratio`` (NaN when no blend is left).
    """
    def side(worse: str, better: str) -> list:
        return [r for r in both if np.isfinite(r[better + "chi2_per_pixel"]) and (
            not np.isfinite(r[worse + "chi2_per_pixel"])
            or r[worse + "chi2_per_pixel"] > FAR_WORSE_CHI2_FACTOR * r[better + "chi2_per_pixel"])]

    def figures(rows: list) -> dict:
        return dict(n=len(rows), hpcblend_s=float(sum(r["wall"] for r in rows)),
                    scarlet_lite_s=float(sum(r["ref_wall"] for r in rows)))

    ref_worse, hp_worse = side("ref_", ""), side("", "ref_")
    flagged = {id(r) for r in ref_worse + hp_worse}
    rest = figures([r for r in both if id(r) not in flagged])
    ratio = rest["scarlet_lite_s"] / rest["hpcblend_s"] if rest["hpcblend_s"] > 0 else float("nan")
    return dict(factor=FAR_WORSE_CHI2_FACTOR, scarlet_lite=figures(ref_worse), hpcblend=figures(hp_worse),
                rest_n=rest["n"], rest_wall_ratio=ratio)


def _far_worse_line(fw: dict) -> str:
    """The report's line of :func:`_far_worse_fits`' figures."""
    ref, hp = fw["scarlet_lite"], fw["hpcblend"]
    rest = (f"total wall ratio over the other {fw['rest_n']} blends {_fmt(fw['rest_wall_ratio'], '.2f')}x"
            if fw["rest_n"] else "no other blend to compare")
    return (f"fits ending at > {fw['factor']:g}x the other's chi2/px: scarlet_lite on {ref['n']} blends "
            f"(scarlet_lite {ref['scarlet_lite_s']:.3f} s, hpcblend {ref['hpcblend_s']:.3f} s there), hpcblend on "
            f"{hp['n']} (hpcblend {hp['hpcblend_s']:.3f} s, scarlet_lite {hp['scarlet_lite_s']:.3f} s); {rest}")


def _reference_runner(reference: Optional[str], config: DeblendConfig, note: Callable[[str], None]):
    if reference is None:
        return None, None
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; known: {', '.join(REFERENCES)}")
    try:
        module = load_scarlet_lite()
    except ImportError as exc:
        status = f"scarlet_lite is not installed: {exc}; see {REFERENCE_README}; running hpcblend alone"
        note(status)
        return None, status
    return ScarletLiteRunner(module, ScarletLiteSettings(), config.bad_mask_planes), "ok"


def run_bench_deblend(paths: Sequence[str], reference: Optional[str] = None, config: Optional[DeblendConfig] = None,
                      note: Callable[[str], None] = print) -> dict:
    """Deblend every blend of ``paths`` on one core after a warm-up, optionally beside a reference.

    Blends are read first (:func:`~hpcblend.io.blends.read_blend`, not timed).
    hpcblend's kernels are warmed by :func:`~hpcblend.deblend.deblender.warm_up`
    (``cold_start_s``); with a reference, the smallest blend (n_peaks ×
    footprint area) then goes once through each deblender, not timed. Each
    blend is then deblended by hpcblend (:func:`~hpcblend.deblend.deblender.deblend_blend`:
    init, fit, measure) and, with a reference, by scarlet_lite
    (:meth:`ScarletLiteRunner.deblend`: observation, initialisation, fit — the
    call the LSST pipeline times), one after the other, hpcblend first on even
    blends and the reference first on odd ones. The process keeps its freed
    memory as a run's ranks do (:func:`hpcblend.parallel.allocator.keep_freed_memory`), for both.

    Parameters
    ----------
    paths : sequence of str
        Files, directories or glob patterns (:func:`~hpcblend.io.blends.expand_inputs`).
    reference : {"scarlet_lite"} or None
    config : DeblendConfig, optional
        hpcblend's settings (default: ``DeblendConfig()``).
    note : callable
        Receives the one-line notice when the reference cannot be imported.

    Returns
    -------
    dict
        ``summary`` (hpcblend's figures, seconds), ``reference`` (the
        reference's figures and settings, or None), ``reference_status``
        (None, "ok" or the notice), ``comparison`` (ratios, or None), ``truth`` (for files
        with truth: ``hpcblend`` and ``scarlet_lite`` model-flux accuracy in :data:`FLUX_BAND` by the
        criteria of ``hpcblend truth``, :mod:`hpcblend.analysis.truth_metrics`, and ``known shapes``, the
        files' known-shape floor on the same sources (None before truth version 2); None otherwise) and
        ``blends`` (one row per blend; reference fields prefixed ``ref_``, truth fields ``truth_``), and
        ``settings_changed`` (hpcblend's deblender settings that are not the defaults, by name).

    Raises
    ------
    hpcblend.errors.InputError
        No file matches, or a file cannot be read.
    """
    config = DeblendConfig() if config is None else config
    runner, status = _reference_runner(reference, config, note)
    keep_freed_memory(True)  # as a run's ranks do (run.keep_freed_memory); both deblenders alike
    cold = warm_up()
    files = expand_inputs(list(paths))
    blends = [read_blend(f, blend_id=i + 1) for i, f in enumerate(files)]
    ref_cold = None
    if runner is not None:
        small = min(blends, key=lambda b: b.n_peaks * b.footprint_area)
        _hpcblend_row(small, config)
        ref_cold = _reference_row(runner, small)["ref_wall"]
    rows = []
    for i, (f, blend) in enumerate(zip(files, blends)):
        gc.collect()
        row = dict(file=os.path.basename(f), n_peaks=blend.n_peaks, area=blend.footprint_area, **_truth_row(f, blend))
        if runner is not None and i % 2:
            row.update(_reference_row(runner, blend))
            row.update(_hpcblend_row(blend, config))
        else:
            row.update(_hpcblend_row(blend, config))
            if runner is not None:
                row.update(_reference_row(runner, blend))
        rows.append(row)
    hp = _side_summary(rows, "")
    summary = dict(n_blends=len(rows), n_peaks=int(sum(r["n_peaks"] for r in rows)), cold_start_s=cold,
                   total_s=hp["total_s"], cpu_s=hp["cpu_s"], init_s=hp["init_s"], fit_s=hp["fit_s"],
                   measure_s=float(sum(r["t_measure"] for r in rows)), fit_fft_floor_s=_fft_floor(blends, rows, config),
                   median_s=hp["median_s"], p90_s=hp["p90_s"], max_s=hp["max_s"],
                   median_chi2=hp["chi2_median"], p90_chi2=hp["chi2_p90"], median_iterations=hp["iterations_median"],
                   total_iterations=hp["iterations_total"], exceptions=hp["exceptions"],
                   not_converged=hp["not_converged"], skipped=sum(1 for r in rows if r["skipped"]))
    ref = comparison = None
    if runner is not None:
        ref = dict(name="scarlet_lite", version=runner.version, settings=dataclasses.asdict(runner.settings),
                   warm_up_s=ref_cold, **_side_summary(rows, "ref_"))
        comparison = _comparison(rows, hp, ref)
    truth = None
    if any("truth_flux" in r for r in rows):
        truth = {"hpcblend": _truth_accuracy(rows, "flux_model"),
                 "scarlet_lite": _truth_accuracy(rows, "ref_flux_model") if runner is not None else None,
                 "known shapes": _truth_accuracy(rows, "truth_known_shape")}
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != f.default}
    return dict(summary=summary, reference=ref, reference_status=status, comparison=comparison, truth=truth,
                blends=rows, settings_changed=changed)


def _fmt(v, spec: str) -> str:
    return "nan" if v is None or not np.isfinite(v) else format(v, spec)


def format_report(report: dict, top: int = 10) -> list:
    """Text lines of a :func:`run_bench_deblend` report: the slowest blends, hpcblend's figures, the comparison.

    Parameters
    ----------
    report : dict
    top : int
        Number of slowest blends (by hpcblend's wall time) to list.

    Returns
    -------
    list of str
    """
    rows, ref, cmp_ = report["blends"], report["reference"], report["comparison"]
    lines = []
    for r in sorted(rows, key=lambda r: -r["wall"])[:top]:
        line = f"{r['file']:28s} {r['wall'] * 1e3:8.1f} ms"
        if ref is not None:
            line += f"  scarlet_lite {r['ref_wall'] * 1e3:8.1f} ms"
        line += (f"  it {r['iterations']:4d}  chi2/px {r['chi2_per_pixel']:8.3f}  n_peaks {r['n_peaks']:3d}  "
                 f"area {r['area']:6d}")
        lines.append(line)
    for k, v in report["summary"].items():
        lines.append(f"{k:20s} {v}")
    changed = report.get("settings_changed") or {}
    lines.append("hpcblend settings   " + (", ".join(f"deblend.{k}={v}" for k, v in changed.items()) or "default"))
    if ref is None:
        return lines + _truth_lines(report.get("truth"))
    hp, c = _side_summary(rows, ""), cmp_
    lines.append(f"side by side with scarlet_lite {ref['version']} (LSST pipeline configuration), one process, "
                 f"interleaved blend by blend, order alternating; scarlet_lite warm-up {ref['warm_up_s']:.3f} s")
    lines.append(f"{'':24s} {'hpcblend':>12s} {'scarlet_lite':>12s} {'scarlet_lite/hpcblend':>22s}")

    def both(name, a, b, spec=".3f", ratio=True):
        rt = f"{b / a:21.2f}x" if ratio and a else ""
        lines.append(f"{name:24s} {_fmt(a, '12' + spec)} {_fmt(b, '12' + spec)} {rt}")

    both("total wall [s]", hp["total_s"], ref["total_s"])
    both("total CPU [s]", hp["cpu_s"], ref["cpu_s"])
    both("init [s]", hp["init_s"], ref["init_s"])
    both("fit [s]", hp["fit_s"], ref["fit_s"])
    both("init + fit [s]", hp["init_s"] + hp["fit_s"], ref["init_s"] + ref["fit_s"])
    lines.append(f"(hpcblend's totals include its measurement, {report['summary']['measure_s']:.3f} s in all; "
                 "scarlet_lite's are observation + initialisation + fit, the call the LSST pipeline times; "
                 "init + fit compares those stages alone)")
    pb = c["per_blend_wall_ratio"]
    lines.append(f"per-blend wall ratio scarlet_lite/hpcblend (n={pb['n']}): median {_fmt(pb['median'], '.2f')}x  "
                 f"p10 {_fmt(pb['p10'], '.2f')}x  p90 {_fmt(pb['p90'], '.2f')}x")
    lb = c["largest_blend"]
    lines.append(f"largest blend {lb['file']} ({lb['n_peaks']} peaks, area {lb['area']}): hpcblend "
                 f"{lb['hpcblend_s']:.3f} s, scarlet_lite {lb['scarlet_lite_s']:.3f} s, ratio {lb['ratio']:.2f}x")
    lines.append(_far_worse_line(c["far_worse_fits"]))
    both("chi2/px median", hp["chi2_median"], ref["chi2_median"], ratio=False)
    both("chi2/px p90", hp["chi2_p90"], ref["chi2_p90"], ratio=False)
    both("iterations total", hp["iterations_total"], ref["iterations_total"], spec=".0f", ratio=False)
    both("iterations median", hp["iterations_median"], ref["iterations_median"], spec=".1f", ratio=False)
    both("exceptions", hp["exceptions"], ref["exceptions"], spec=".0f", ratio=False)
    both("not converged", hp["not_converged"], ref["not_converged"], spec=".0f", ratio=False)
    fr = c["flux_ratio"]
    lines.append(f"model flux hpcblend/scarlet_lite per child, band {fr['band']} (n={fr['n']}): median "
                 f"{_fmt(fr['median'], '.4f')}  p10 {_fmt(fr['p10'], '.4f')}  p90 {_fmt(fr['p90'], '.4f')}")
    return lines + _truth_lines(report.get("truth"))


def _truth_lines(truth: Optional[dict]) -> list:
    """The model-flux accuracy against the files' truth, one line per deblender (none without truth)."""
    if not truth:
        return []
    lines = []
    for name, a in truth.items():
        if a is None:
            continue
        what = "flux with the true shapes known (the noise's floor)" if name == "known shapes" else "model flux"
        lines.append(f"{what} vs truth, band {a['band']}, S/N > {SNR_MIN:g} ({name}, n={a['n']}"
                     f"{', %d not modelled' % a['n_not_modelled'] if a['n_not_modelled'] else ''}): median "
                     f"|df/f| {_fmt(a['median_abs'], '.4f')}  p90 {_fmt(a['p90_abs'], '.4f')}  bias "
                     f"{_fmt(a['bias'], '+.4f')}; off > {OUTLIER_TOLERANCE:.0%} at S/N > {OUTLIER_SNR:g} "
                     f"with no peak within {ISOLATION_ARCSEC:g}\": {a['outliers']} of {a['n_bright_isolated']}")
    return lines


def write_json(report: dict, path: str) -> None:
    """Write a :func:`run_bench_deblend` report as JSON (NaN as ``NaN``, numpy scalars as numbers)."""
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, default=json_default)
