"""The run report: one self-contained HTML page answering the sprint's six questions.

``make_report(catalog, out_dir)`` writes ``out_dir/index.html`` (every image
inline: PNG as base64 ``data:`` URIs, the flame graph as inline SVG; no
scripts, no external resources) and, next to it, the same figures as PNG
files, ``flamegraph.svg``, ``profile.collapsed``, ``profile.speedscope.json``
(when the catalog has ``/profile``) and ``summary.json`` (every number shown).

Sections (``<section id=...>``, :data:`SECTION_IDS`):

``overview``     the run: catalog, bands, ranks, versions
``scorecard``    the metrics of ``hpcblend scorecard`` against ``jobs/scorecard.yaml`` (and
                 against the compared run), PASS/FAIL
``time``         1. how long: wall time, core-hours, blends/s, per-blend
                 runtime distribution, busy/idle per rank, slowest blends
``failures``     2. what failures look like: gallery of failed, flagged and
                 slowest blends (data, model, residual, child boxes) from
                 ``/gallery``, and the table of failed blends
``exceptions``   3. fraction of blends that raised, by exception type
``flags``        4. fraction flagged, per flag column (parents and children)
``scaling``      5. runtime vs n_peaks and footprint area, power-law fit
``callstack``    6. where the time goes: stage table per rank, flame graph,
                 top frames (``/profile``); per-stage blend times
``compare``      (with ``compare=``) the same numbers for a second catalog,
                 side by side, runtime matched by id, flux differences
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from hpcblend.analysis.flamegraph import (merge_stacks, speedscope_profile_sets, stage_names, stage_table,
                                          top_functions, write_speedscope)
from hpcblend.analysis.flamegraph_svg import flamegraph_svg
from hpcblend.analysis.scorecard import judge, load_thresholds, scorecard_metrics
from hpcblend.errors import HpcblendError
from hpcblend.io.gallery import read_gallery
from hpcblend.io.json_values import json_default
from hpcblend.io.profiles import write_collapsed
from hpcblend.report.data import RunData, compare_numbers, exception_mask, load_run, run_numbers, scaling_mask
from hpcblend.report.fit import binned_medians
from hpcblend.report.figures import (fig_compare_flux, fig_compare_runtime, fig_flags, fig_gallery_record,
                                     fig_rank_time, fig_runtime_hist, fig_runtime_scaling, figure_png)
from hpcblend.report.gallery import GALLERY_GROUPS, select_gallery_blends

__all__ = ["make_report", "report_main", "SECTION_IDS"]

#: Ids of the report's sections, in page order (``compare`` only with ``compare=``).
SECTION_IDS: tuple = ("overview", "scorecard", "time", "failures", "exceptions", "flags", "scaling", "callstack", "compare")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0 auto;max-width:1300px;
padding:0 1.5em 3em;color:#222;line-height:1.4}
h1{margin-top:.8em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}h3{margin-bottom:.3em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
td,th{border:1px solid #ccd;padding:.2em .6em;text-align:right;vertical-align:top}
th{background:#eef}td.l,th.l{text-align:left}img{max-width:100%;height:auto}
.answer{background:#f3f7ee;border-left:4px solid #7a5;padding:.5em 1em;margin:.8em 0}
.note{color:#666;font-size:.9em}.flame{overflow-x:auto;border:1px solid #ddd}.flame svg{max-width:100%;height:auto}
.gallery figure{margin:0 0 1.5em}.bad{color:#b22}code{font-size:.9em}
"""


# --------------------------------------------------------------------------- small helpers


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return _e(v)
    if math.isnan(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], left: Sequence[int] = (0,)) -> str:
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i in left else ""}">{_e(h)}</th>'
                                   for i, h in enumerate(header)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i in left else ""}">{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


class _Figures:
    """Saves figures as PNG files in ``out_dir`` and returns ``<img>`` tags embedding the same bytes."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.files: list = []

    def img(self, fig: Any, name: str, alt: str) -> str:
        data = figure_png(fig)
        path = os.path.join(self.out_dir, f"{name}.png")
        with open(path, "wb") as fh:
            fh.write(data)
        self.files.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_e(title)}</h2>\n{body}\n</section>'


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, (bytes, np.bytes_)) else str(b)


# --------------------------------------------------------------------------- sections


def _overview(run: RunData, nums: dict) -> str:
    cfg = run.config or {}
    rows = [
        ("catalog", f"<code>{_e(os.path.abspath(run.path))}</code>"),
        ("job", _e(cfg.get("name", "–"))),
        ("blends / children (peaks)", f"{nums['n_blends']:,} / {nums['n_sources']:,} ({nums['n_peaks_total']:,})"),
        ("bands", _e(", ".join(nums["bands"]))),
        ("ranks × Numba threads per rank", f"{nums['n_ranks']} × {nums['threads_per_rank']}"),
        ("hosts", _e(", ".join(nums["hosts"]) or "–")),
        ("optimizer", _e((cfg.get("deblend") or {}).get("optimizer", "–"))),
        ("started (UTC)", _e(nums["start_time_utc"] or "–")),
        ("finished (UTC)", _e(nums["finished_utc"] or "–")),
        ("writer / resumes", f"{_e(run.attrs.get('writer', '–'))} / {nums['n_resumes']}"),
        ("profiling (/profile)", "yes" if nums["profiled"] else "off"),
        ("gallery (/gallery)", f"{nums['n_gallery']} records" if nums["has_gallery"] else "none"),
        ("versions", _e(", ".join(f"{k} {v}" for k, v in nums["versions"].items()
                                   if k in ("hpcblend", "python", "numpy", "numba", "h5py", "mpi4py")) or "–")),
    ]
    return _table(["", ""], rows, left=(0, 1))


def _time_section(run: RunData, nums: dict, figs: _Figures) -> str:
    b = run.blends
    answer = (f"The run took <b>{_fmt(nums['wall_s'])} s</b> of wall time on {nums['n_ranks']} rank(s) × "
              f"{nums['threads_per_rank']} thread(s): <b>{nums['core_hours']:.4g} core-hours</b>, "
              f"<b>{_fmt(nums['blends_per_s'])} blends/s</b>. Blends took {_fmt(nums['sum_t_total_s'])} s in all "
              f"(median {_fmt(nums['t_median_s'] * 1e3)} ms, p90 {_fmt(nums['t_p90_s'] * 1e3)} ms, max "
              f"{_fmt(nums['t_max_s'] * 1e3)} ms per blend); ranks were busy with blends "
              f"{_pct(nums['parallel_efficiency'])} of the wall time.")
    rows = [("wall time [s]", _fmt(nums["wall_s"]), _e(nums["wall_source"])),
            ("kernel warm-up on rank 0 [s] (before the wall time)", _fmt(nums["warmup_s_rank0"]), ""),
            ("core-hours", _fmt(nums["core_hours"]), "wall × ranks × threads / 3600"),
            ("blends per second", _fmt(nums["blends_per_s"]), ""),
            ("Σ t_total over blends [s]", _fmt(nums["sum_t_total_s"]), "time inside blends, all ranks"),
            ("busy fraction", _pct(nums["parallel_efficiency"]), "Σ t_total / (wall × ranks)")]
    for c, v in nums["stage_sums_s"].items():
        rows.append((f"Σ {c} [s]", _fmt(v), "over blends"))
    if nums["patches"]:
        pi = nums["patches"]
        rows.append(("patches (failed)", f"{pi['n_patches']} ({pi['n_failed']})", "/patches"))
        rows.append(("Σ patch t_total [s]", _fmt(pi["sum_t_total_s"]), "over patches"))
        for c, v in pi["stage_sums_s"].items():
            rows.append((f"Σ patch {c} [s]", _fmt(v), "over patches"))
    rows += [("median / p90 / max t_total [ms]",
              f"{_fmt(nums['t_median_s'] * 1e3)} / {_fmt(nums['t_p90_s'] * 1e3)} / {_fmt(nums['t_max_s'] * 1e3)}", "")]
    body = [f'<div class="answer">{answer}</div>', _table(["", "value", "how"], rows, left=(0, 2))]
    if len(b):
        body.append(figs.img(fig_runtime_hist(run), "runtime_hist", "runtime per blend"))
    body.append("<h3>Busy and idle time per rank</h3>")
    body.append(figs.img(fig_rank_time(run, nums["wall_s"]), "rank_time", "time per rank"))
    pr = nums["per_rank"]
    if pr:
        body.append(_table(["rank", "blends", "Σ t_total [s]", "busy of wall"],
                           [(str(r), _fmt(v["n_blends"]), _fmt(v["busy_s"]),
                             _pct(v["busy_s"] / nums["wall_s"]) if nums["wall_s"] > 0 else "–")
                            for r, v in sorted(pr.items())]))
    if len(b):
        body.append("<h3>Slowest blends</h3>")
        order = np.argsort(-b["t_total"], kind="stable")[:10]
        body.append(_table(["id", "t_total [ms]", "t_fit [ms]", "n_peaks", "area [px]", "iterations", "χ²/px",
                            "rank", "file"],
                           [(str(int(b["id"][i])), _fmt(b["t_total"][i] * 1e3), _fmt(b["t_fit"][i] * 1e3),
                             _fmt(int(b["n_peaks"][i])), _fmt(int(b["footprint_area"][i])),
                             _fmt(int(b["iterations"][i])), _fmt(b["chi2_per_pixel"][i]), str(int(b["rank"][i])),
                             _e(os.path.basename(_decode(b["source_file"][i])))) for i in order], left=(0, 8)))
    return "\n".join(body)


def _failures_section(run: RunData, figs: _Figures, n: int) -> str:
    b = run.blends
    body = []
    failed = (exception_mask(b) | b["flag_failed"]) if len(b) else np.zeros(0, dtype=bool)
    if not run.has_gallery:
        body.append('<p class="note">This catalog has no <code>/gallery</code>: no blend images were stored '
                    "during the run, so no failure images can be shown (the tables below still list the "
                    "failed and flagged blends).</p>")
    else:
        chosen = select_gallery_blends(run.blends, n, run.gallery_ids)
        if not chosen:
            body.append(f'<p class="note"><code>/gallery</code> holds {len(run.gallery_ids)} record(s), none of '
                        "a blend in <code>/blends</code>.</p>")
        else:
            records = {r["blend_id"]: r for r in read_gallery(run.path, [i for i, _ in chosen])}
            rows = {int(b["id"][i]): b[i] for i in range(len(b))}
            body.append(f'<p>Worst {n} failed, flagged (highest χ²/px) and slowest blends that have a gallery '
                        f"record ({len(run.gallery_ids)} stored). Left: data as a Lupton asinh colour image with "
                        "each child's box (<span style=\"color:#1a1\">green</span>: fine, "
                        "<span class=\"bad\">red</span>: failed or flagged child); middle: the model in the "
                        "observed frame on the same stretch; right: residual in σ.</p>")
            body.append('<div class="gallery">')
            for group in GALLERY_GROUPS:
                ids = [i for i, g in chosen if g == group and i in records]
                if not ids:
                    continue
                body.append(f"<h3>{_e(group)} ({len(ids)})</h3>")
                for bid in ids:
                    rec = records[bid]
                    img = figs.img(fig_gallery_record(rec, rows.get(bid)), f"gallery_{bid}", f"blend {bid}")
                    body.append(f'<figure id="gallery-{bid}">{img}</figure>')
            body.append("</div>")
    if failed.any():
        body.append(f"<h3>Failed blends ({int(failed.sum())})</h3>")
        idx = np.where(failed)[0][:50]
        body.append(_table(["id", "error_type", "error_message", "file", "image"],
                           [(str(int(b["id"][i])), _e(_decode(b["error_type"][i]) or "–"),
                             _e(_decode(b["error_message"][i])), _e(os.path.basename(_decode(b["source_file"][i]))),
                             "yes" if int(b["id"][i]) in set(run.gallery_ids) else "no") for i in idx],
                           left=(0, 1, 2, 3)))
    else:
        body.append("<p>No blend failed in this run.</p>")
    return "\n".join(body)


def _exceptions_section(nums: dict, run: RunData) -> str:
    n = nums["n_blends"]
    answer = (f"<b>{_pct(nums['exception_fraction'])}</b> of the blends raised an exception "
              f"({nums['exception_count']} of {n}; rows with a non-empty <code>error_type</code>, isolated as "
              "flagged rows — the run went on).")
    body = [f'<div class="answer">{answer}</div>']
    if nums["exception_types"]:
        b = run.blends
        exc = exception_mask(b)
        rows = []
        for t, c in nums["exception_types"].items():
            m = exc & (b["error_type"] == t.encode())
            first = np.where(m)[0][0]
            rows.append((_e(t), _fmt(c), _pct(c / n), _e(_decode(b["error_message"][first])),
                         str(int(b["id"][first]))))
        body.append(_table(["exception type", "blends", "fraction", "example message", "example id"], rows,
                           left=(0, 3)))
    else:
        body.append("<p>No exceptions.</p>")
    return "\n".join(body)


def _flags_section(nums: dict, run: RunData, figs: _Figures) -> str:
    answer = (f"<b>{_pct(nums['any_flag_fraction'])}</b> of the blends carry at least one flag "
              f"({nums['any_flag_count']} of {nums['n_blends']}).")
    body = [f'<div class="answer">{answer}</div>']
    body.append(_table(["parent flag", "blends", "fraction"],
                       [(f"<code>{_e(c)}</code>", _fmt(v["count"]), _pct(v["fraction"]))
                        for c, v in nums["flags"].items()]))
    if nums["child_flags"]:
        body.append(_table(["child flag (/sources)", "children", "fraction"],
                           [(f"<code>{_e(c)}</code>", _fmt(v["count"]), _pct(v["fraction"]))
                            for c, v in nums["child_flags"].items()]))
    body.append(figs.img(fig_flags(run), "flags", "exception and flag fractions"))
    return "\n".join(body)


def _scaling_section(nums: dict, run: RunData, figs: _Figures) -> str:
    f = nums["power_law"]
    if np.isfinite(f["a"]):
        answer = (f"Runtime per blend ≈ <b>{_fmt(f['c'])} s · n_peaks<sup>{f['a']:.2f} ± {f['a_err']:.2f}</sup> · "
                  f"area<sup>{f['b']:.2f} ± {f['b_err']:.2f}</sup></b> (least squares in log space over "
                  f"{f['n']} deblended blends, R² = {f['r2']:.2f}, scatter {f['rms_dex']:.2f} dex). "
                  + ("Footprint area, more than peak count, drives the cost."
                     if f["b"] > f["a"] else "Peak count, more than footprint area, drives the cost."))
    else:
        answer = f"No power law could be fitted: {_e(f['note'])}."
    body = [f'<div class="answer">{answer}</div>']
    body.append(_table(["", "value", "standard error"],
                       [("c [s]", _fmt(f["c"]), _fmt(f["c_err"])), ("a (n_peaks exponent)", _fmt(f["a"]), _fmt(f["a_err"])),
                        ("b (area exponent)", _fmt(f["b"]), _fmt(f["b_err"])), ("R² (log space)", _fmt(f["r2"]), ""),
                        ("blends in the fit", _fmt(f["n"]), "")]))
    body.append(figs.img(fig_runtime_scaling(run.blends, f), "runtime_scaling", "runtime vs n_peaks and area"))
    b = run.blends
    sel = scaling_mask(b) if len(b) else np.zeros(0, dtype=bool)
    for col, label in (("n_peaks", "n_peaks"), ("footprint_area", "footprint area [px]")):
        cx, med, cnt = binned_medians(b[col][sel], b["t_total"][sel], n_bins=8, min_count=1)
        if len(cx):
            body.append(_table([f"{label} (bin centre)", "blends", "median t_total [ms]"],
                               [(_fmt(x), _fmt(int(c)), _fmt(m * 1e3)) for x, m, c in zip(cx, med, cnt)]))
    body.append('<p class="note">Blends that raised, failed, were skipped by a size guard or were not fitted '
                "(0 iterations) are left out of the fit and plots: their time is not a fit's time.</p>")
    return "\n".join(body)


def _callstack_section(run: RunData, nums: dict, out_dir: str, figs: _Figures) -> str:
    body = []
    ss = nums["stage_sums_s"]
    tot = sum(ss.values())
    if tot > 0:
        body.append("<h3>Blend time by deblender stage (from /blends)</h3>")
        body.append(_table(["stage", "Σ seconds", "share"], [(c, _fmt(v), _pct(v / tot)) for c, v in ss.items()]))
    ps = (nums.get("patches") or {}).get("stage_sums_s") or {}
    ptot = sum(ps.values())
    if ptot > 0:
        body.append("<h3>Patch time by stage (from /patches)</h3>")
        body.append(_table(["stage", "Σ seconds", "share"], [(c, _fmt(v), _pct(v / ptot)) for c, v in ps.items()]))
    if not run.profiles:
        body.insert(0, '<div class="answer">Profiling was off for this run: the catalog has no '
                       "<code>/profile</code>, so there is no call-stack profile or stage timer table. "
                       "The per-blend stage times below come from <code>/blends</code>.</div>")
        return "\n".join(body)
    profiles = run.profiles
    stacks = merge_stacks(profiles)
    rates = {float(p.get("rate_hz") or 0) for p in profiles}
    sps = 1.0 / next(iter(rates)) if len(rates) == 1 and 0 not in rates else None
    rows = stage_table(profiles)
    names = stage_names(profiles)
    busy = sum(r["busy_s"] for r in rows)
    el = sum(r["elapsed_s"] for r in rows)
    top = top_functions(stacks, 1)
    leaf = f"; the frame with the most self samples is <code>{_e(top[0]['frame'])}</code> " \
           f"({_pct(top[0]['self_frac'])} of samples)" if top else ""
    stage_tot = {s: sum(r["seconds"].get(s, 0.0) for r in rows) for s in names}
    biggest = max(stage_tot, key=stage_tot.get) if stage_tot else "–"
    body.insert(0, f'<div class="answer">{len(profiles)} rank(s) sampled at {", ".join(_fmt(r) for r in sorted(rates))} '
                   f"Hz ({sum(p.get('n_samples', 0) for p in profiles):,} samples). Ranks were busy "
                   f"{_pct(busy / el if el else float('nan'))} of their time; the largest stage is "
                   f"<b>{_e(biggest)}</b> ({_pct(stage_tot.get(biggest, 0) / el if el else float('nan'))} of rank "
                   f"time){leaf}.</div>")
    body.append("<h3>Seconds per stage per rank (stage timers)</h3>")
    trows = []
    for r in rows:
        trows.append([str(r["rank"])] + [_fmt(r["seconds"].get(s, 0.0)) for s in names]
                     + [_fmt(r["elapsed_s"]), _pct(r["busy_frac"]), _fmt(r["n_samples"]),
                        _pct(r["overhead_fraction"])])
    if len(rows) > 1:
        trows.append(["all"] + [_fmt(stage_tot[s]) for s in names]
                     + [_fmt(el), _pct(busy / el if el else float("nan")), _fmt(sum(r["n_samples"] for r in rows)), ""])
    body.append(_table(["rank"] + names + ["elapsed", "busy", "samples", "sampler CPU"], trows))
    body.append('<p class="note"><code>wait</code> = idle, waiting for work; <code>mpi</code> = communication and '
                "collective writes; <code>other</code> = outside any declared stage.</p>")
    body.append("<h3>Flame graph (all ranks merged)</h3>")
    svg = flamegraph_svg(stacks, title=f"{os.path.basename(run.path)}: {len(profiles)} rank(s) merged",
                         seconds_per_sample=sps)
    with open(os.path.join(out_dir, "flamegraph.svg"), "w", encoding="utf-8") as fh:
        fh.write(svg)
    write_collapsed(os.path.join(out_dir, "profile.collapsed"), stacks)
    sets, sps2 = speedscope_profile_sets(profiles, stacks)
    write_speedscope(os.path.join(out_dir, "profile.speedscope.json"), sets, sps2, name=os.path.basename(run.path))
    body.append(f'<div class="flame">{svg}</div>')
    body.append('<p class="note">Width ∝ samples; hover a frame for its name and share. Root frames are the stages. '
                "Next to this page: <code>flamegraph.svg</code>, <code>profile.collapsed</code> (flamegraph.pl) and "
                "<code>profile.speedscope.json</code> (merged and per rank, for https://www.speedscope.app).</p>")
    body.append("<h3>Top frames</h3>")
    body.append(_table(["frame", "self", "self %", "total", "total %"],
                       [(f"<code>{_e(r['frame'])}</code>", _fmt(r["self"]), _pct(r["self_frac"]), _fmt(r["total"]),
                         _pct(r["total_frac"])) for r in top_functions(stacks, 20)]))
    return "\n".join(body)


def _compare_section(a: RunData, b: RunData, na: dict, nb: dict, figs: _Figures) -> tuple:
    c = compare_numbers(a, b, na, nb)
    body = [f"<p>A = <code>{_e(os.path.abspath(a.path))}</code><br>B = <code>{_e(os.path.abspath(b.path))}</code></p>"]
    ratio = c["runtime_ratio_median"]
    body.append(f'<div class="answer">{c["n_matched_blends"]} blends matched by id ({c["only_in_a"]} only in A, '
                f'{c["only_in_b"]} only in B): runtime per blend B/A median <b>{_fmt(ratio)}</b> '
                f'(16–84%: {_fmt(c["runtime_ratio_p16"])}–{_fmt(c["runtime_ratio_p84"])}); exception fraction '
                f'{_pct(na["exception_fraction"])} → {_pct(nb["exception_fraction"])}; any-flag fraction '
                f'{_pct(na["any_flag_fraction"])} → {_pct(nb["any_flag_fraction"])}.</div>')
    body.append(_table(["", "A", "B", "B − A"],
                       [(_e(r["label"]), _fmt(r["a"]), _fmt(r["b"]), _fmt(r["diff"])) for r in c["rows"]]))
    body.append(figs.img(fig_compare_runtime(a, b), "compare_runtime", "runtime B vs A"))
    if c["flux"]:
        body.append(f"<h3>Flux differences of {c['n_matched_sources']:,} sources matched by id "
                    "(flux-conserving <code>flux_&lt;band&gt;</code>)</h3>")
        body.append(_table(["band", "n", "median (B−A)/|A|", "median |B−A|/|A|", "max |B−A|/|A|", "median (B−A)/σ_A"],
                           [(_e(band), _fmt(v["n"]), _fmt(v["median_rel"]), _fmt(v["median_abs_rel"]),
                             _fmt(v["max_abs_rel"]), _fmt(v["median_dsigma"])) for band, v in c["flux"].items()]))
        body.append(figs.img(fig_compare_flux(a, b), "compare_flux", "flux differences"))
    return "\n".join(body), c


# --------------------------------------------------------------------------- entry points


def _scorecard_section(path: str, baseline: Optional[str]) -> tuple:
    """The scorecard's table (``hpcblend scorecard``; the compared run as baseline) and its checks as dicts."""
    checks = judge(scorecard_metrics(path), load_thresholds(), scorecard_metrics(baseline) if baseline else None)
    header = ["metric", "value", "threshold", "status"] + (["baseline", "vs baseline"] if baseline else [])
    rows = []
    for c in checks:
        row = [c.metric, _fmt(c.value), c.limit, c.status]
        if baseline:
            row += [_fmt(c.baseline) if c.baseline is not None else "", c.baseline_status]
        rows.append(row)
    failed = [c.metric for c in checks if c.failed]
    verdict = (f"<p><b>FAIL</b>: {_e(', '.join(failed))}</p>" if failed else "<p><b>PASS</b>: every threshold"
               + (" and baseline comparison" if baseline else "") + " holds.</p>")
    return verdict + _table(header, rows), [c.__dict__ | {"failed": c.failed} for c in checks]




def make_report(catalog_path: str | os.PathLike, out_dir: str | os.PathLike,
                compare: Optional[str | os.PathLike] = None, gallery_n: int = 6) -> str:
    """Write the run report for a catalog.

    Parameters
    ----------
    catalog_path : str or os.PathLike
        Finished run catalog (``/blends``, ``/sources``; ``/profile`` and
        ``/gallery`` are used when present).
    out_dir : str or os.PathLike
        Created if needed; existing files of the same names are replaced.
    compare : str or os.PathLike, optional
        A second catalog (B) to compare with (A = ``catalog_path``).
    gallery_n : int
        Gallery blends shown per group (failed, flagged, slowest).

    Returns
    -------
    str
        Path of ``index.html``.

    Raises
    ------
    hpcblend.errors.CatalogError, hpcblend.errors.SchemaVersionError
        A catalog cannot be read.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    run = load_run(catalog_path)
    nums = run_numbers(run)
    figs = _Figures(out_dir)
    sections = [
        ("overview", "Run overview", _overview(run, nums)),
        ("time", "1. How long does it take?", _time_section(run, nums, figs)),
        ("failures", "2. What do failures look like?", _failures_section(run, figs, gallery_n)),
        ("exceptions", "3. What fraction of blends raise exceptions?", _exceptions_section(nums, run)),
        ("flags", "4. What fraction of blends are flagged?", _flags_section(nums, run, figs)),
        ("scaling", "5. How does runtime per blend grow with n_peaks and footprint area?",
         _scaling_section(nums, run, figs)),
        ("callstack", "6. Where does the time go?", _callstack_section(run, nums, out_dir, figs)),
    ]
    summary: dict = {"a": nums}
    card = _scorecard_section(os.fspath(catalog_path), os.fspath(compare) if compare is not None else None)
    sections.insert(1, ("scorecard", "Scorecard (thresholds of jobs/scorecard.yaml)", card[0]))
    summary["scorecard"] = card[1]
    if compare is not None:
        other = load_run(compare)
        nb = run_numbers(other)
        body, c = _compare_section(run, other, nums, nb, figs)
        sections.append(("compare", f"Comparison with {os.path.basename(os.fspath(compare))}", body))
        summary.update(b=nb, compare=c)
    nav = " ".join(f'<a href="#{sid}">{_e(title.split("?")[0].split(". ", 1)[-1])}</a>' for sid, title, _ in sections)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>hpcblend report: {_e(os.path.basename(run.path))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>hpcblend run report: {_e(os.path.basename(run.path))}</h1>",
        f'<p class="note">Made {stamp} from the catalog alone. Self-contained page: figures are embedded; '
        "the same figures are PNG files in this directory.</p>",
        f"<nav>{nav}</nav>",
    ]
    page += [_section(sid, title, body) for sid, title, body in sections]
    page.append("</body></html>")
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as fh:
        fh.write("\n".join(page))
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, default=json_default)
    return index


def report_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend report CATALOG [--out DIR] [--compare B.h5] [--gallery-n N]``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``report`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 when a catalog cannot be read.
    """
    ap = argparse.ArgumentParser(prog="hpcblend report",
                                 description="HTML report of a run catalog: time, failures, exceptions, flags, "
                                             "runtime scaling, call-stack profile")
    ap.add_argument("catalog")
    ap.add_argument("--out", "-o", metavar="DIR", help="output directory (default: <catalog>_report)")
    ap.add_argument("--compare", metavar="B.h5", help="second catalog to compare with")
    ap.add_argument("--gallery-n", type=int, default=6, metavar="N",
                    help="gallery blends per group: failed, flagged, slowest (default 6)")
    args = ap.parse_args(argv)
    out = args.out or os.path.splitext(args.catalog)[0] + "_report"
    try:
        index = make_report(args.catalog, out, compare=args.compare, gallery_n=args.gallery_n)
    except (HpcblendError, OSError) as exc:
        print(f"hpcblend report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0
