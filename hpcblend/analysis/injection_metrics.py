"""Metrics of injected sources against their truth, for both kinds of injection: the tables and the yardstick ratio.

A run over injected data (blend files, :mod:`hpcblend.simulate.inject`, or a tract,
:mod:`hpcblend.simulate.inject_tract`) is matched to its truth by :mod:`hpcblend.analysis.injection`
(blends: by parent and peak index) or :mod:`hpcblend.analysis.injection_tract` (tracts: by position);
either gives an :class:`InjectionSample`, one entry per injected source, and :func:`summarize` turns it
into the tables :func:`format_summary` prints:

* **completeness** (found / injected) and **purity** (catalog sources matched to a truth source / all, where
  the truth lists every source) per bin of magnitude;
* per bin of magnitude, S/N, separation and blendedness, for every estimator: the **bias** (median of
  Δf/f), the median and the 90th percentile of |Δf/f|, with ``Δf/f = (f − f_true) / f_true`` and
  ``f_true`` the noiseless injected flux in the image; the median **centroid error** (px) of the catalog
  and of the yardstick;
* the **yardstick ratio**: each catalog estimator's median |Δf/f| divided by the yardstick's on the same
  sources (those the catalog found and gave that estimator a value: an unfitted isolated source has no
  model flux), the yardstick being the best there (smallest median |Δf/f|) of the perfect deblender's
  forced PSF and aperture fluxes. The other statistics of a bin are over every found source with a
  value; the *floor* estimators (the true-profile amplitude, or a source's own pixels summed) are shown
  beside them, not used in the ratio.

``snr`` (the S/N > ``snr_min`` sample, default 10) holds the figures the scorecard judges:
completeness, the model flux's median |Δf/f| and its yardstick ratio. ``targets`` checks issue 16's:
completeness at S/N > 10 ≥ 95 %, and the model flux's median |Δf/f| within 1.5× the yardstick's in every
blendedness bin with at least 30 model fluxes (found sources with a model flux).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["InjectionSample", "summarize", "format_summary", "TARGET_COMPLETENESS", "TARGET_RATIO",
           "TARGET_MIN_BIN"]

#: Issue 16's targets: completeness at S/N > 10, the model/yardstick ratio, the smallest bin judged.
TARGET_COMPLETENESS: float = 0.95
TARGET_RATIO: float = 1.5
TARGET_MIN_BIN: int = 30

_SNR_EDGES = (0.0, 5.0, 10.0, 20.0, 50.0, 100.0, np.inf)
_SEP_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, np.inf)
_BLEND_EDGES = (-np.inf, 0.02, 0.1, 0.3, np.inf)


@dataclass
class InjectionSample:
    """The injected sources of one run, matched to the catalog (arrays over the N injected sources).

    Attributes
    ----------
    kind : str
        ``"blends"`` or ``"tract"``.
    bands : tuple of str
    band : str
        The band of the tables.
    f_true : dict of str to ndarray (N,)
        Noiseless injected flux in the image, per band (counts).
    flux : dict of str to dict of str to ndarray (N,)
        Estimator -> band -> flux (counts); NaN where the catalog did not find the source.
    estimators, yardsticks, floors : tuple of str
        The catalog's estimators, the yardstick's (forced PSF and aperture) and the floors (keys of ``flux``).
    found : ndarray of bool (N,)
    mag, snr, separation, blendedness : ndarray (N,)
        Reference-band magnitude; matched-filter S/N; arcsec to the nearest other source; blendedness
        (``blendedness_from`` says whose: ``"truth"`` or ``"catalog"``).
    centroid : dict of str to ndarray (N,)
        ``"catalog"`` and ``"yardstick"``: distance to the true position (px; NaN where none).
    purity : tuple or None
        ``(magnitude (M,), matched (M,) bool)`` of the catalog's sources, where the truth lists every source.
    notes : list of str
        How the sample was made (printed under the tables).
    """

    kind: str
    bands: tuple
    band: str
    f_true: dict
    flux: dict
    estimators: tuple
    yardsticks: tuple
    floors: tuple
    found: np.ndarray
    mag: np.ndarray
    snr: np.ndarray
    separation: np.ndarray
    blendedness: np.ndarray
    blendedness_from: str
    centroid: dict
    purity: Optional[tuple] = None
    notes: list = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of injected sources N."""
        return int(len(self.found))

    @property
    def all_estimators(self) -> tuple:
        """Catalog estimators, then yardsticks, then floors."""
        return tuple(self.estimators) + tuple(self.yardsticks) + tuple(self.floors)


def _stats(rel: np.ndarray) -> list:
    """[bias (median), median |.|, 90th percentile |.|] of the finite values; NaNs when there are none."""
    rel = rel[np.isfinite(rel)]
    if rel.size == 0:
        return [float("nan")] * 3
    a = np.abs(rel)
    return [float(np.median(rel)), float(np.median(a)), float(np.percentile(a, 90))]


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def _rel(s: InjectionSample, est: str, band: str, sel: np.ndarray) -> np.ndarray:
    """Δf/f of ``est`` in ``band`` over the found sources of ``sel`` (index array)."""
    keep = sel[s.found[sel]]
    f_true = s.f_true[band][keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s.flux[est][band][keep] - f_true) / f_true


def _paired_yardstick(s: InjectionSample, est: str, sel: np.ndarray) -> tuple:
    """``(best yardstick, its med|Δf/f|, that / est's med|Δf/f|'s inverse)`` over the sources of ``sel`` that
    ``est`` measured (found, finite flux): the yardstick with the smallest median |Δf/f| there."""
    keep = sel[s.found[sel] & np.isfinite(s.flux[est][s.band][sel])]
    med_est = _stats(_rel(s, est, s.band, keep))[1]
    yard = [(_stats(_rel(s, y, s.band, keep))[1], y) for y in s.yardsticks]
    yard = [(m, y) for m, y in yard if np.isfinite(m)]
    if not yard:
        return None, float("nan"), float("nan")
    best_med, best = min(yard)
    return best, best_med, (med_est / best_med if best_med > 0 else float("nan"))


def _row(s: InjectionSample, sel: np.ndarray, label: str, lo: float, hi: float) -> dict:
    """One bin: counts, completeness, per-estimator statistics, and each catalog estimator's yardstick ratio."""
    n, found = int(len(sel)), int(np.count_nonzero(s.found[sel]))
    stats = {est: _stats(_rel(s, est, s.band, sel)) for est in s.all_estimators}
    paired = {est: _paired_yardstick(s, est, sel) for est in s.estimators}
    counts = {est: int(np.count_nonzero(s.found[sel] & np.isfinite(s.flux[est][s.band][sel])))
              for est in s.estimators}
    head = paired[s.estimators[0]]
    return {"bin": label, "lo": float(lo), "hi": float(hi), "n": n, "found": found,
            "completeness": found / n if n else float("nan"), "stats": stats, "n_measured": counts,
            "yardstick": head[0], "yard_med": head[1], "ratio": {est: paired[est][2] for est in s.estimators},
            "ratio_yardstick": {est: paired[est][0] for est in s.estimators},
            "centroid": {k: _median(v[sel[s.found[sel]]]) for k, v in s.centroid.items()}}


def _label(name: str, lo: float, hi: float) -> str:
    if not np.isfinite(lo):
        return f"{name} <{hi:g}"
    if not np.isfinite(hi):
        return f"{name} >={lo:g}"
    return f"{name} {lo:g}-{hi:g}"


def _binned(s: InjectionSample, quantity: np.ndarray, edges, name: str) -> list:
    """One :func:`_row` per bin ``[lo, hi)`` of ``quantity`` (sources with a NaN quantity are in none)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = np.flatnonzero((quantity >= lo) & (quantity < hi))
        rows.append(_row(s, sel, _label(name, lo, hi), lo, hi))
    return rows


def _purity(s: InjectionSample) -> Optional[list]:
    """Purity per 1-mag bin of the catalog's magnitude (over its range), or None without a complete truth."""
    if s.purity is None:
        return None
    mag, matched = s.purity
    finite = mag[np.isfinite(mag)]
    edges = np.arange(math.floor(finite.min()), math.ceil(finite.max()) + 1e-9, 1.0) if finite.size else [0.0, 1.0]
    if len(edges) < 2:
        edges = [edges[0], edges[0] + 1.0]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mag >= lo) & (mag < hi)
        n = int(np.count_nonzero(sel))
        m = int(np.count_nonzero(matched & sel))
        out.append({"bin": _label("mag", lo, hi), "n": n, "matched": m, "purity": m / n if n else float("nan")})
    return out


def _targets(snr: dict, by_blend: list) -> dict:
    """Issue 16's targets (module docstring); a blendedness bin with fewer than 30 model fluxes is not judged."""
    judged = [r for r in by_blend if r["n_measured"].get("model", 0) >= TARGET_MIN_BIN]
    ratios = [r["ratio"].get("model", float("nan")) for r in judged]
    return {"completeness_snr_ge_0.95": bool(snr["completeness"] >= TARGET_COMPLETENESS),
            "model_within_1.5x_yardstick_per_blendedness_bin":
                bool(judged) and all(np.isfinite(v) and v <= TARGET_RATIO for v in ratios),
            "blendedness_bins_judged": [r["bin"] for r in judged]}


def summarize(s: InjectionSample, mag_edges=None, snr_min: float = 10.0) -> dict:
    """The metric tables of an injection sample (module docstring).

    Parameters
    ----------
    s : InjectionSample
    mag_edges : sequence of float, optional
        Magnitude bin edges; default 1-mag bins over the injected range.
    snr_min : float
        S/N of the ``snr`` summary sample.

    Returns
    -------
    dict
        ``kind``, ``band``, ``n``, ``n_found``, ``completeness``, ``estimators``, ``yardsticks``,
        ``floors``, ``blendedness_from``; ``snr`` (the S/N > ``snr_min`` row, plus ``snr_min``);
        rows (see :func:`_row`: ``bin``, ``n``, ``found``, ``completeness``, ``stats`` {estimator:
        [bias, med|Δf/f|, p90|Δf/f|]}, ``n_measured`` {estimator: sources with a value}, ``ratio``
        {estimator: ratio}, ``ratio_yardstick`` {estimator: the yardstick of its ratio}, ``yardstick`` and
        ``yard_med`` (the first estimator's, ``model``: its yardstick and that's med|Δf/f|),
        ``centroid`` {catalog, yardstick: median px}) in ``by_mag``, ``by_snr``, ``by_sep``,
        ``by_blendedness`` and ``all``; ``purity_by_mag`` (rows ``bin``, ``n``, ``matched``, ``purity`` per 1-mag
        bin of the catalog's magnitude; None without a complete truth);
        ``per_band`` {band: {estimator: [bias, med, p90]}} over all found sources; ``targets``; ``notes``.
    """
    n = s.n
    finite_mag = s.mag[np.isfinite(s.mag)]
    if mag_edges is None:
        lo, hi = (math.floor(finite_mag.min()), math.ceil(finite_mag.max())) if finite_mag.size else (0, 1)
        mag_edges = np.arange(lo, max(hi, lo + 1) + 1e-9, 1.0)
    mag_edges = list(mag_edges)
    every = np.arange(n)
    bright = np.flatnonzero(s.snr > snr_min)
    snr_row = dict(_row(s, bright, f"S/N >{snr_min:g}", snr_min, np.inf), snr_min=float(snr_min))
    by_blend = _binned(s, s.blendedness, _BLEND_EDGES, "blnd")
    return {
        "kind": s.kind, "band": s.band, "n": n, "n_found": int(np.count_nonzero(s.found)),
        "completeness": float(np.mean(s.found)) if n else float("nan"),
        "estimators": list(s.estimators), "yardsticks": list(s.yardsticks), "floors": list(s.floors),
        "blendedness_from": s.blendedness_from, "snr": snr_row,
        "by_mag": _binned(s, s.mag, mag_edges, "mag"), "by_snr": _binned(s, s.snr, _SNR_EDGES, "snr"),
        "by_sep": _binned(s, s.separation, _SEP_EDGES, "sep\""), "by_blendedness": by_blend,
        "all": _row(s, every, "all", -np.inf, np.inf), "purity_by_mag": _purity(s),
        "per_band": {b: {est: _stats(_rel_band(s, est, b)) for est in s.all_estimators} for b in s.bands},
        "targets": _targets(snr_row, by_blend), "notes": list(s.notes),
    }


def _rel_band(s: InjectionSample, est: str, band: str) -> np.ndarray:
    return _rel(s, est, band, np.arange(s.n))


# -----------------------------------------------------------------------------
# text
# -----------------------------------------------------------------------------


def _fmt(v, spec: str = ".3f", width: int = 8) -> str:
    try:
        ok = v is not None and np.isfinite(v)
    except TypeError:
        ok = False
    return format(format(v, spec) if ok else "-", f">{width}")


def _short(est: str) -> str:
    return est.replace("yard_", "Y:").replace("conserving", "conserv")


def _table_lines(m: dict, rows: list) -> list:
    """Three lines per bin (med|d|, p90|d|, bias) with a column per estimator; ratios and centroids on the first."""
    ests = m["estimators"] + m["yardsticks"] + m["floors"]
    n_est = "N(" + m["estimators"][0][:3] + ")"
    head = (f"{'bin':<16}{'N':>5}{'found':>6}{'compl':>7}{n_est:>7}  {'stat':<7}"
            + "".join(f"{_short(e):>9}" for e in ests) + "  "
            + "".join(f"{'r:' + _short(e):>10}" for e in m["estimators"]) + f"{'best yard':>11}{'cen':>6}{'cenY':>6}")
    lines = [head]
    for r in rows:
        if r["n"] == 0:  # an empty bin has nothing to show
            continue
        for k, stat in ((1, "med|d|"), (2, "p90|d|"), (0, "bias")):
            first = k == 1
            lead = (f"{r['bin']:<16}{r['n']:>5}{r['found']:>6}{_fmt(100 * r['completeness'], '.1f', 6)}%"
                    f"{r['n_measured'].get(m['estimators'][0], 0):>7}" if first else " " * 41)
            line = lead + f"  {stat:<7}" + "".join(_fmt(r["stats"][e][k], "+.3f" if k == 0 else ".3f", 9)
                                                   for e in ests)
            if first:
                line += "  " + "".join(_fmt(r["ratio"][e], ".2f", 10) for e in m["estimators"])
                line += f"{_short(r['yardstick'] or '-'):>11}"
                line += _fmt(r["centroid"].get("catalog"), ".2f", 6) + _fmt(r["centroid"].get("yardstick"), ".2f", 6)
            lines.append(line)
    return lines


def format_summary(m: dict) -> str:
    """Plain-text tables of :func:`summarize` output."""
    snr = m["snr"]
    lines = [f"{m['kind']} injection: {m['n']} injected, {m['n_found']} found (completeness "
             f"{100 * m['completeness']:.1f} %); S/N > {snr['snr_min']:g}: {snr['n']} injected, {snr['found']} found "
             f"({_fmt(100 * snr['completeness'], '.1f', 0)} %), model median |df/f| "
             f"{_fmt(snr['stats']['model'][1], '.4f', 0)}, yardstick ({snr['yardstick']}) "
             f"{_fmt(snr['yard_med'], '.4f', 0)}, ratio "
             f"{_fmt(snr['ratio'].get('model'), '.2f', 0)}",
             f"flux errors in band {m['band']}: d = (f - f_true)/f_true over the found sources; estimators "
             f"{', '.join(m['estimators'])} (catalog), {', '.join(_short(y) for y in m['yardsticks'])} (Y: the perfect-"
             f"deblender yardstick, forced photometry at the true position with every other source's true model "
             f"removed), {', '.join(_short(f) for f in m['floors'])} (floor); r: = med|d| / the best yardstick's "
             f"med|d| on the same sources (best yard: the model's); N(mod) = found sources with a model flux "
             f"(an unfitted isolated source has none); cen/cenY = median centroid error (px) of the catalog / the "
             f"yardstick"]
    blocks = (("by_mag", "by magnitude"), ("by_snr", "by matched-filter S/N"),
              ("by_sep", "by separation from the nearest other source (arcsec)"),
              ("by_blendedness", f"by blendedness ({m['blendedness_from']})"))
    for key, title in blocks:
        lines += ["", title] + _table_lines(m, m[key])
    lines += ["", "all"] + _table_lines(m, [m["all"]])
    if m["purity_by_mag"] is not None:
        lines += ["", "purity by the catalog's magnitude (model flux): catalog sources matched to a truth source",
                  f"{'bin':<16}{'N':>6}{'matched':>8}{'purity':>8}"]
        lines += [f"{r['bin']:<16}{r['n']:>6}{r['matched']:>8}{_fmt(100 * r['purity'], '.1f', 7)}%"
                  for r in m["purity_by_mag"] if r["n"]]
    lines += ["", "all found sources, per band: bias / med|d| / p90|d|",
              f"{'band':<6}" + "".join(f"{_short(e):>24}" for e in m["estimators"] + m["yardsticks"] + m["floors"])]
    for b, per in m["per_band"].items():
        cells = (" / ".join(_fmt(v, f, 0) for v, f in zip(per[e], ("+.3f", ".3f", ".3f")))
                 for e in m["estimators"] + m["yardsticks"] + m["floors"])
        lines.append(f"{b:<6}" + "".join(f"{c:>24}" for c in cells))
    t = m["targets"]
    lines += ["", f"targets: completeness at S/N > {snr['snr_min']:g} >= {TARGET_COMPLETENESS:.0%}: "
                  f"{'PASS' if t['completeness_snr_ge_0.95'] else 'FAIL'}; model med|d| <= {TARGET_RATIO}x the "
                  f"yardstick's in every blendedness bin with >= {TARGET_MIN_BIN} model fluxes "
                  f"({', '.join(t['blendedness_bins_judged']) or 'none'}): "
                  f"{'PASS' if t['model_within_1.5x_yardstick_per_blendedness_bin'] else 'FAIL'}"]
    lines += [f"note: {n}" for n in m["notes"]]
    return "\n".join(lines)
