"""Figure builders of the report (matplotlib, Agg; no pyplot state).

Every builder returns a :class:`matplotlib.figure.Figure` whose artists hold
the catalog's values (scatter offsets are the plotted rows), so tests can check
what is drawn; :func:`figure_png` renders one to PNG bytes.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from astropy.visualization import make_lupton_rgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hpcblend.diagnostics.stages import OTHER_STAGE, STAGES
from hpcblend.report.data import RunData, exception_mask, flag_columns, match_ids, scaling_mask
from hpcblend.report.fit import binned_medians

__all__ = [
    "new_figure",
    "figure_png",
    "lupton_rgb",
    "fig_runtime_hist",
    "fig_rank_time",
    "fig_flags",
    "fig_runtime_scaling",
    "fig_gallery_record",
    "fig_compare_runtime",
    "fig_compare_flux",
    "STAGE_COLORS",
]

#: Colour of each stage in the per-rank bars (idle stages grey).
STAGE_COLORS: dict = {"load": "#8c564b", "detect": "#bcbd22", "init": "#1f77b4", "fit": "#d62728",
                      "measure": "#2ca02c", "write": "#9467bd", "mpi": "#7f7f7f", "wait": "#c7c7c7",
                      OTHER_STAGE: "#e8e8e8"}


def new_figure(width: float = 8.0, height: float = 4.0) -> Figure:
    """A Figure with an Agg canvas attached (no pyplot)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# --------------------------------------------------------------------------- time


def fig_runtime_hist(run: RunData) -> Figure:
    """Left: histogram of ``t_total`` (log bins). Right: share of total runtime vs share of blends.

    The right panel sorts blends from slowest to fastest: a point (x, y)
    says the slowest x % of blends take y % of the blend time.
    """
    fig = new_figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    t = run.blends["t_total"].astype(np.float64)
    t = t[t > 0]
    if len(t):
        lo, hi = t.min(), t.max()
        bins = np.geomspace(lo, hi * 1.0001, 30) if hi > lo else 10
        ax1.hist(t, bins=bins, color="#4477aa")
        ax1.set_xscale("log")
        for q, ls in ((50, "-"), (90, "--")):
            ax1.axvline(np.percentile(t, q), color="k", ls=ls, lw=1, label=f"p{q} {np.percentile(t, q) * 1e3:.1f} ms")
        ax1.legend(fontsize=8)
        ts = np.sort(t)[::-1]
        ax2.plot(100 * np.arange(1, len(ts) + 1) / len(ts), 100 * np.cumsum(ts) / ts.sum(), color="#aa3377")
        ax2.plot([0, 100], [0, 100], color="0.7", lw=0.8)
    ax1.set_xlabel("runtime per blend t_total [s]")
    ax1.set_ylabel("blends")
    ax1.set_title("runtime per blend")
    ax2.set_xlabel("slowest blends [% of blends]")
    ax2.set_ylabel("share of blend time [%]")
    ax2.set_title("where the blend time is")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fig_rank_time(run: RunData, wall_s: Optional[float] = None) -> Figure:
    """Per-rank horizontal bars: stage seconds (profile) or busy Σ t_total vs idle (no profile)."""
    profiles = run.profiles
    if profiles:
        ranks = [int(p.get("rank", i)) for i, p in enumerate(profiles)]
        stages = []
        for p in profiles:
            for s in (p.get("stage_seconds") or {}):
                if s not in stages:
                    stages.append(s)
        order = list(STAGES) + [OTHER_STAGE]
        stages.sort(key=lambda s: (order.index(s) if s in order else len(order), s))
        fig = new_figure(9, 0.6 + 0.45 * max(len(ranks), 2))
        ax = fig.subplots()
        left = np.zeros(len(ranks))
        for s in stages:
            v = np.array([float((p.get("stage_seconds") or {}).get(s, 0.0)) for p in profiles])
            ax.barh(ranks, v, left=left, color=STAGE_COLORS.get(s, None), label=s, edgecolor="white", lw=0.5)
            left += v
        ax.set_title("time per rank by stage (stage timers; wait = idle, waiting for work)")
    else:
        b = run.blends
        ranks = sorted(int(r) for r in np.unique(b["rank"])) if len(b) else [0]
        busy = np.array([float(b["t_total"][b["rank"] == r].sum()) for r in ranks])
        wall = wall_s if wall_s is not None else (busy.max() if len(busy) else 0.0)
        idle = np.maximum(wall - busy, 0.0)
        fig = new_figure(9, 0.6 + 0.45 * max(len(ranks), 2))
        ax = fig.subplots()
        ax.barh(ranks, busy, color=STAGE_COLORS["fit"], label="busy (Σ t_total)")
        ax.barh(ranks, idle, left=busy, color=STAGE_COLORS["wait"], label="idle / overhead (wall − busy)")
        ax.set_title("time per rank (from /blends t_total; profiling was off)")
    ax.set_yticks(ranks)
    ax.set_yticklabels([f"rank {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- exceptions and flags


def fig_flags(run: RunData) -> Figure:
    """Horizontal bars: fraction of blends with an exception and with each ``flag_*`` column."""
    b = run.blends
    n = max(len(b), 1)
    names = ["exception (error_type set)"] + flag_columns(b) + ["any flag"]
    any_flag = np.zeros(len(b), dtype=bool)
    for c in flag_columns(b):
        any_flag |= b[c]
    counts = [int(exception_mask(b).sum())] + [int(b[c].sum()) for c in flag_columns(b)] + [int(any_flag.sum())]
    frac = np.array(counts) / n
    fig = new_figure(8, 0.5 + 0.35 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))
    colors = ["#cc3311"] + ["#ee7733"] * len(flag_columns(b)) + ["#994455"]
    ax.barh(y, 100 * frac, color=colors)
    for i, (f, c) in enumerate(zip(frac, counts)):
        ax.text(100 * f, i, f"  {100 * f:.1f}% ({c})", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(100 * frac.max() * 1.35, 1.0))
    ax.set_xlabel(f"% of {len(b)} blends")
    ax.set_title("exceptions and flags")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- scaling


def fig_runtime_scaling(blends: np.ndarray, fit: Optional[Mapping[str, float]] = None) -> Figure:
    """Runtime per blend vs n_peaks and vs footprint area (log-log), and measured vs the power law.

    Rows: :func:`hpcblend.report.data.scaling_mask`. Axes 0 and 1 hold one
    scatter each (``collections[0]``; offsets are ``(n_peaks, t_total)`` and
    ``(footprint_area, t_total)`` of those rows, in table order) coloured by
    the other variable, with binned medians (black line) and the fitted power
    law evaluated at the other variable's median (dashed). Axis 2 plots
    ``t_total`` against the power-law prediction.
    """
    sel = scaling_mask(blends)
    t = blends["t_total"][sel].astype(np.float64)
    k = blends["n_peaks"][sel].astype(np.float64)
    a = blends["footprint_area"][sel].astype(np.float64)
    fig = new_figure(13, 4.0)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    if len(t):
        sc0 = ax0.scatter(k, t, c=a, s=12, cmap="viridis", norm=LogNorm(vmin=a.min(), vmax=max(a.max(), a.min() + 1)))
        fig.colorbar(sc0, ax=ax0, label="footprint area [px]")
        sc1 = ax1.scatter(a, t, c=k, s=12, cmap="plasma", norm=LogNorm(vmin=k.min(), vmax=max(k.max(), k.min() + 1)))
        fig.colorbar(sc1, ax=ax1, label="n_peaks")
        for ax, x in ((ax0, k), (ax1, a)):
            cx, my, _ = binned_medians(x, t)
            if len(cx):
                ax.plot(cx, my, "k-o", ms=4, lw=1.5, label="median per bin")
        ok = fit is not None and np.isfinite(fit.get("a", np.nan))
        if ok:
            kk = np.geomspace(k.min(), k.max(), 50)
            aa = np.geomspace(a.min(), a.max(), 50)
            ax0.plot(kk, fit["c"] * kk ** fit["a"] * np.median(a) ** fit["b"], "r--", lw=1.2,
                     label=f"fit at median area, a={fit['a']:.2f}")
            ax1.plot(aa, fit["c"] * np.median(k) ** fit["a"] * aa ** fit["b"], "r--", lw=1.2,
                     label=f"fit at median n_peaks, b={fit['b']:.2f}")
            pred = fit["c"] * k ** fit["a"] * a ** fit["b"]
            ax2.scatter(pred, t, s=10, c="#4477aa")
            lim = [min(pred.min(), t.min()), max(pred.max(), t.max())]
            ax2.plot(lim, lim, "k-", lw=0.8)
            ax2.set_title(f"t vs c·n^{fit['a']:.2f}·A^{fit['b']:.2f} (R² {fit['r2']:.2f})", fontsize=10)
        else:
            ax2.text(0.5, 0.5, "no power-law fit\n(too few rows or no spread)", ha="center", va="center",
                     transform=ax2.transAxes)
            ax2.set_title("measured vs power law", fontsize=10)
        for ax in (ax0, ax1):
            ax.legend(fontsize=7, loc="upper left")
    else:
        for ax in (ax0, ax1, ax2):
            ax.text(0.5, 0.5, "no deblended blends", ha="center", va="center", transform=ax.transAxes)
    for ax in (ax0, ax1, ax2):
        if len(t):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    ax0.set_xlabel("n_peaks")
    ax0.set_ylabel("t_total [s]")
    ax0.set_title("runtime vs n_peaks", fontsize=10)
    ax1.set_xlabel("footprint area [px]")
    ax1.set_ylabel("t_total [s]")
    ax1.set_title("runtime vs footprint area", fontsize=10)
    ax2.set_xlabel("power-law prediction [s]")
    ax2.set_ylabel("t_total [s]")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- gallery


def _rgb_bands(bands: Sequence[str]) -> tuple:
    """Indices (red, green, blue): i, r, g when present, else the three reddest-listed planes."""
    bands = list(bands)
    if all(x in bands for x in ("i", "r", "g")):
        return bands.index("i"), bands.index("r"), bands.index("g")
    nb = len(bands)
    return min(2, nb - 1), min(1, nb - 1), 0


def _noise(images: np.ndarray, noise_rms: Optional[np.ndarray]) -> np.ndarray:
    if noise_rms is not None and np.all(np.isfinite(noise_rms)) and np.all(np.asarray(noise_rms) > 0):
        return np.asarray(noise_rms, dtype=np.float64)
    out = []
    for im in images:
        v = im[np.isfinite(im)]
        mad = np.median(np.abs(v - np.median(v))) if len(v) else 0.0
        out.append(1.4826 * mad if mad > 0 else (np.std(v) if len(v) and np.std(v) > 0 else 1.0))
    return np.array(out)


def lupton_rgb(images: np.ndarray, bands: Sequence[str], noise_rms: Optional[np.ndarray] = None,
               stretch: Optional[float] = None, Q: float = 8.0) -> np.ndarray:
    """Lupton et al. (2004) asinh colour image of three bands (astropy's ``make_lupton_rgb``).

    Parameters
    ----------
    images : ndarray, shape (B, H, W)
    bands : sequence of str
        Red/green/blue = i/r/g when present, else planes 2/1/0.
    noise_rms : ndarray, shape (B,), optional
        Per-band noise (estimated by the MAD when absent).
    stretch : float, optional
        Linear range of the stretch; default 5 × mean noise of the three bands.
    Q : float
        Asinh softening.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
    """
    ir, ig, ib = _rgb_bands(bands)
    noise = _noise(images, noise_rms)
    if stretch is None:
        stretch = 5.0 * float(np.mean(noise[[ir, ig, ib]]))
    planes = [np.nan_to_num(np.asarray(images[i], dtype=np.float64)) for i in (ir, ig, ib)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(*planes, minimum=0.0, stretch=stretch, Q=Q)


def fig_gallery_record(record: Mapping[str, Any], row: Optional[np.void] = None) -> Figure:
    """One gallery blend: colour image with child boxes, model, and residual in σ.

    Boxes are green for good children and red for bad ones (``child_bad``).
    The title gives the id, why it is in the gallery, the set flags, the
    runtime and the error message (from ``row``, the blend's ``/blends``
    row, when given).
    """
    images = np.asarray(record["images"], dtype=np.float32)
    model = record.get("model")
    bands = record.get("bands") or tuple(str(i) for i in range(images.shape[0]))
    noise = _noise(images, record.get("noise_rms"))
    ir, ig, ib = _rgb_bands(bands)
    stretch = 5.0 * float(np.mean(noise[[ir, ig, ib]]))
    fig = new_figure(11, 4.2)
    axes = fig.subplots(1, 3)
    rgb = lupton_rgb(images, bands, noise, stretch=stretch)
    axes[0].imshow(rgb, origin="lower", interpolation="nearest")
    axes[0].set_title(f"data ({bands[ir]}{bands[ig]}{bands[ib]})", fontsize=9)
    if model is not None:
        axes[1].imshow(lupton_rgb(np.asarray(model), bands, noise, stretch=stretch), origin="lower",
                       interpolation="nearest")
        axes[1].set_title("model (observed frame)", fontsize=9)
        resid = images - np.asarray(model, dtype=np.float32)
        w = 1.0 / noise ** 2
        chi = (resid * w[:, None, None]).sum(axis=0) / np.sqrt(w.sum())  # inverse-variance band sum, in σ
        im = axes[2].imshow(chi, origin="lower", cmap="RdBu_r", vmin=-5, vmax=5, interpolation="nearest")
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04, label="residual [σ]")
        axes[2].set_title("residual (data − model), bands combined", fontsize=9)
    else:
        for ax in axes[1:]:
            ax.text(0.5, 0.5, "no model\n(the fit did not run or failed)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
        axes[1].set_title("model", fontsize=9)
        axes[2].set_title("residual", fontsize=9)
    boxes = np.asarray(record["child_boxes"]).reshape(-1, 4)
    bad = np.asarray(record["child_bad"], dtype=bool).reshape(-1)
    for ax in (axes[:2] if model is not None else axes[:1]):
        for (y0, x0, h, w), isbad in zip(boxes, bad):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, lw=1.0,
                                   edgecolor="#ff2222" if isbad else "#22dd22"))
        ax.set_xlim(-0.5, images.shape[2] - 0.5)
        ax.set_ylim(-0.5, images.shape[1] - 0.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    lines = [f"blend {record['blend_id']} — {record.get('reason', '')}"]
    if row is not None:
        names = row.dtype.names
        flags = [c for c in names if c.startswith("flag_") and bool(row[c])]
        lines[0] += (f" — {int(row['n_peaks'])} peaks, {int(row['footprint_area'])} px, "
                     f"t {float(row['t_total']) * 1e3:.1f} ms, {int(row['iterations'])} it, "
                     f"χ²/px {float(row['chi2_per_pixel']):.2f}")
        lines.append("flags: " + (", ".join(flags) if flags else "none"))
        et = row["error_type"].decode("utf-8", "replace")
        if et:
            msg = row["error_message"].decode("utf-8", "replace")
            lines.append(textwrap.shorten(f"{et}: {msg}", 160))
    elif record.get("info", {}).get("error"):
        lines.append(textwrap.shorten(str(record["info"]["error"]), 160))
    lines.append(f"{int(bad.sum())} of {len(bad)} children bad (red)")
    fig.suptitle("\n".join(lines), fontsize=9, x=0.01, ha="left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- comparison


def fig_compare_runtime(a: RunData, b: RunData) -> Figure:
    """Runtime per blend matched by id: B vs A (log-log, ``collections[0]`` offsets = (t_A, t_B)) and B/A vs A."""
    ia, ib = match_ids(a.blends, b.blends)
    ta = a.blends["t_total"][ia].astype(np.float64)
    tb = b.blends["t_total"][ib].astype(np.float64)
    ok = (ta > 0) & (tb > 0)
    ta, tb = ta[ok], tb[ok]
    fig = new_figure(10, 4)
    ax0, ax1 = fig.subplots(1, 2)
    if len(ta):
        ax0.scatter(ta, tb, s=10, c="#4477aa")
        lim = [min(ta.min(), tb.min()), max(ta.max(), tb.max())]
        ax0.plot(lim, lim, "k-", lw=0.8)
        ax0.set_xscale("log")
        ax0.set_yscale("log")
        r = tb / ta
        ax1.scatter(ta, r, s=10, c="#aa3377")
        ax1.axhline(np.median(r), color="k", lw=1, label=f"median {np.median(r):.3f}")
        ax1.axhline(1.0, color="0.6", lw=0.8)
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.legend(fontsize=8)
    ax0.set_xlabel("t_total A [s]")
    ax0.set_ylabel("t_total B [s]")
    ax0.set_title(f"runtime per blend, {len(ta)} matched by id", fontsize=10)
    ax1.set_xlabel("t_total A [s]")
    ax1.set_ylabel("B / A")
    ax1.set_title("runtime ratio", fontsize=10)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def fig_compare_flux(a: RunData, b: RunData, max_bands: int = 5) -> Figure:
    """Flux differences of sources matched by id, per band: (B − A)/flux_err_A vs S/N of A (symlog y).

    Axis ``i`` holds one scatter (``collections[0]``) with offsets
    ``(|flux_A| / flux_err_A, (flux_B − flux_A) / flux_err_A)`` of the matched
    sources with finite values and ``flux_err_A > 0``.
    """
    bands = [x for x in a.bands if x in b.bands][:max_bands]
    fig = new_figure(3.0 * max(len(bands), 1) + 1, 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(len(bands), 1)))
    if a.sources is None or b.sources is None or not bands:
        axes[0].text(0.5, 0.5, "no matched sources", ha="center", va="center", transform=axes[0].transAxes)
        return fig
    sa, sb = match_ids(a.sources, b.sources)
    for ax, band in zip(axes, bands):
        fa = a.sources[f"flux_{band}"][sa]
        fb = b.sources[f"flux_{band}"][sb]
        ea = a.sources[f"flux_err_{band}"][sa]
        good = np.isfinite(fa) & np.isfinite(fb) & np.isfinite(ea) & (ea > 0) & (fa != 0)
        snr = np.abs(fa[good]) / ea[good]
        d = (fb[good] - fa[good]) / ea[good]
        ax.scatter(snr, d, s=6, c="#228833")
        ax.axhline(0, color="k", lw=0.8)
        if good.any():
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=1.0)  # ±1σ linear, outliers logarithmic
            ax.axhspan(-1, 1, color="0.85", zorder=0)
            ax.set_title(f"{band}: median {np.median(d):+.3g}σ, {100 * np.mean(np.abs(d) > 1):.1f}% beyond 1σ",
                         fontsize=9)
        ax.set_xlabel(f"|flux_{band}| / flux_err A (S/N)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("(B − A) / flux_err A")
    fig.tight_layout()
    return fig
