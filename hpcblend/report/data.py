"""What the report reads from a catalog, and the numbers it computes from it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import numpy as np

from hpcblend.io.catalog import open_catalog, read_table
from hpcblend.io.profiles import read_profiles
from hpcblend.io.tables import attr_value as _attr_to_py
from hpcblend.report.fit import fit_power_law

__all__ = ["RunData", "load_run", "run_numbers", "scaling_mask", "exception_mask", "flag_columns",
           "compare_numbers", "match_ids"]

SKIP_FLAGS = ("flag_skipped_too_many_peaks", "flag_skipped_too_large")


@dataclass
class RunData:
    """One catalog's tables and metadata (the gallery is read on demand).

    Attributes
    ----------
    path : str
    blends : ndarray
        ``/blends`` rows (structured).
    sources : ndarray or None
        ``/sources`` rows.
    patches : ndarray or None
        ``/patches`` rows (tract runs).
    attrs : dict
        Root attributes.
    provenance, config : dict
        JSON groups (``{}`` when absent).
    profiles : list of dict
        ``/profile`` (see :func:`hpcblend.io.profiles.read_profiles`); ``[]``
        when profiling was off.
    gallery_ids : list of int
        Blend ids with a ``/gallery`` record.
    has_gallery : bool
        True when the file has a ``/gallery`` group (even empty).
    """

    path: str
    blends: np.ndarray
    sources: Optional[np.ndarray]
    patches: Optional[np.ndarray] = None
    attrs: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    profiles: list = field(default_factory=list)
    gallery_ids: list = field(default_factory=list)
    has_gallery: bool = False

    @property
    def bands(self) -> tuple:
        """Band names (root attribute ``bands``, else from the flux columns)."""
        b = self.attrs.get("bands")
        if b:
            return tuple(str(b).split(","))
        if self.sources is not None:
            return tuple(n[len("flux_err_"):] for n in self.sources.dtype.names if n.startswith("flux_err_"))
        return ()


def load_run(path: str | os.PathLike) -> RunData:
    """Read a run catalog for the report.

    Raises
    ------
    hpcblend.errors.CatalogError, hpcblend.errors.SchemaVersionError
        Not a readable catalog of this schema, or no ``/blends``.
    """
    path = os.fspath(path)
    with open_catalog(path) as f:
        blends = read_table(f, "blends")
        sources = read_table(f, "sources") if "sources" in f else None
        patches = read_table(f, "patches") if "patches" in f else None
        attrs = {k: _attr_to_py(v) for k, v in f.attrs.items()}
        groups = {}
        for name in ("provenance", "config"):
            if name in f and "json" in f[name].attrs:
                groups[name] = json.loads(_attr_to_py(f[name].attrs["json"]))
        profiles = read_profiles(f)
        has_gallery = "gallery" in f
        gids = sorted(int(k) for k in f["gallery"]) if has_gallery else []
    return RunData(path=path, blends=blends, sources=sources, patches=patches, attrs=attrs, provenance=groups.get("provenance", {}),
                   config=groups.get("config", {}), profiles=profiles, gallery_ids=gids, has_gallery=has_gallery)


def flag_columns(table: np.ndarray) -> list:
    """Boolean columns whose names start with ``flag_``."""
    return [n for n in table.dtype.names if n.startswith("flag_") and table.dtype[n] == np.bool_]


def exception_mask(blends: np.ndarray) -> np.ndarray:
    """Rows that raised: non-empty ``error_type``."""
    return blends["error_type"] != b""


def scaling_mask(blends: np.ndarray) -> np.ndarray:
    """Rows used for the runtime-scaling plots and fit.

    Blends that were deblended: ``t_total > 0``, ``n_peaks > 0``,
    ``footprint_area > 0``, ``iterations > 0`` (isolated sources measured
    without a fit in tract runs have 0), no exception, not ``flag_failed``
    and not skipped by a size guard (their time is not a fit's time).
    """
    ok = (blends["t_total"] > 0) & (blends["n_peaks"] > 0) & (blends["footprint_area"] > 0)
    if "iterations" in blends.dtype.names:
        ok &= blends["iterations"] > 0
    ok &= ~exception_mask(blends)
    for f in ("flag_failed",) + SKIP_FLAGS:
        if f in blends.dtype.names:
            ok &= ~blends[f]
    return ok


def _parse_time(s: Any) -> Optional[datetime]:
    if not s:
        return None
    try:
        return datetime.fromisoformat(str(s))
    except ValueError:
        return None


def _n_ranks(run: RunData) -> int:
    n = run.provenance.get("n_ranks")
    if n:
        return int(n)
    if len(run.blends):
        return int(run.blends["rank"].max()) + 1
    return 1


def run_numbers(run: RunData) -> dict:
    """Every number the report shows about one run (JSON-serialisable).

    Wall time: from ``/provenance`` ``start_time_utc`` (after the kernels'
    warm-up) to the root attribute ``finished``; without them, the largest
    profile ``elapsed_s``; without that, ``Σ t_total / n_ranks`` (a lower
    bound, ``wall_source`` says which). Core-hours = wall × ranks × Numba
    threads per rank / 3600.
    """
    b = run.blends
    n = len(b)
    ranks = _n_ranks(run)
    threads = int(((run.config.get("run") or {}).get("numba_threads")) or 1)
    start = _parse_time(run.provenance.get("start_time_utc"))
    end = _parse_time(run.attrs.get("finished"))
    t = b["t_total"].astype(np.float64) if n else np.zeros(0)
    if start and end and end > start:
        wall, source = (end - start).total_seconds(), "provenance start_time_utc → finished"
    elif run.profiles:
        wall, source = max(float(p.get("elapsed_s") or 0) for p in run.profiles), "profile elapsed (max over ranks)"
    else:
        wall, source = float(t.sum()) / max(ranks, 1), "Σ t_total / ranks (lower bound)"
    exc = exception_mask(b) if n else np.zeros(0, dtype=bool)
    types: dict = {}
    for et in b["error_type"][exc]:
        key = et.decode("utf-8", "replace")
        types[key] = types.get(key, 0) + 1
    flags = {c: {"count": int(b[c].sum()), "fraction": float(b[c].mean()) if n else 0.0} for c in flag_columns(b)}
    any_flag = np.zeros(n, dtype=bool)
    for c in flag_columns(b):
        any_flag |= b[c]
    child_flags = {}
    if run.sources is not None and len(run.sources):
        s = run.sources
        for c in flag_columns(s):
            child_flags[c] = {"count": int(s[c].sum()), "fraction": float(s[c].mean())}
    sel = scaling_mask(b) if n else np.zeros(0, dtype=bool)
    fit = fit_power_law(t[sel], b["n_peaks"][sel], b["footprint_area"][sel]) if n else fit_power_law([], [], [])
    per_rank = {}
    for r in (np.unique(b["rank"]) if n else []):
        m = b["rank"] == r
        per_rank[int(r)] = {"n_blends": int(m.sum()), "busy_s": float(t[m].sum())}
    stage_sums = {c: float(b[c].sum()) for c in ("t_load", "t_init", "t_fit", "t_measure") if c in b.dtype.names}
    chi = b["chi2_per_pixel"][np.isfinite(b["chi2_per_pixel"])] if n else np.zeros(0)
    patch_info = {}
    if run.patches is not None and len(run.patches):
        pt = run.patches
        patch_info = {"n_patches": int(len(pt)),
                      "n_failed": int((pt["status"] == b"failed").sum()) if "status" in pt.dtype.names else 0,
                      "stage_sums_s": {c: float(pt[c].sum()) for c in pt.dtype.names
                                       if c.startswith("t_") and c != "t_total"},
                      "sum_t_total_s": float(pt["t_total"].sum()) if "t_total" in pt.dtype.names else float("nan")}

    def pct(q: float) -> float:
        return float(np.percentile(t, q)) if n else float("nan")

    return {
        "path": run.path,
        "n_blends": n,
        "n_sources": int(len(run.sources)) if run.sources is not None else 0,
        "n_peaks_total": int(b["n_peaks"].sum()) if n else 0,
        "bands": list(run.bands),
        "n_ranks": ranks,
        "threads_per_rank": threads,
        "wall_s": float(wall),
        "wall_source": source,
        "warmup_s_rank0": float(run.provenance.get("warmup_seconds_rank0") or 0.0),
        "start_time_utc": run.provenance.get("start_time_utc"),
        "finished_utc": run.attrs.get("finished"),
        "n_resumes": int(run.attrs.get("n_resumes") or 0),
        "core_hours": float(wall) * ranks * threads / 3600.0,
        "blends_per_s": n / wall if wall > 0 else float("nan"),
        "sum_t_total_s": float(t.sum()),
        "stage_sums_s": stage_sums,
        "patches": patch_info,
        "t_median_s": pct(50), "t_p90_s": pct(90), "t_max_s": float(t.max()) if n else float("nan"),
        "parallel_efficiency": float(t.sum()) / (wall * ranks) if wall > 0 and ranks else float("nan"),
        "per_rank": per_rank,
        "exception_count": int(exc.sum()),
        "exception_fraction": float(exc.mean()) if n else 0.0,
        "exception_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "flags": flags,
        "any_flag_count": int(any_flag.sum()),
        "any_flag_fraction": float(any_flag.mean()) if n else 0.0,
        "child_flags": child_flags,
        "chi2_median": float(np.median(chi)) if len(chi) else float("nan"),
        "power_law": fit,
        "n_scaling_rows": int(sel.sum()),
        "profiled": bool(run.profiles),
        "has_gallery": run.has_gallery,
        "n_gallery": len(run.gallery_ids),
        "versions": run.provenance.get("versions", {}),
        "hosts": run.provenance.get("hosts", []),
    }


def match_ids(a: np.ndarray, b: np.ndarray) -> tuple:
    """Indices ``(ia, ib)`` of rows with the same ``id`` in two tables (ids unique in each)."""
    common, ia, ib = np.intersect1d(a["id"], b["id"], assume_unique=False, return_indices=True)
    return ia, ib


def compare_numbers(a: RunData, b: RunData, na: Optional[dict] = None, nb: Optional[dict] = None) -> dict:
    """Side-by-side differences of two runs: fractions, runtime ratio by id, flux differences by source id.

    Returns
    -------
    dict
        ``n_matched_blends``, ``runtime_ratio_median`` (B/A over matched
        blends with t > 0 in both), ``runtime_ratio_p16``/``p84``,
        ``n_matched_sources``, ``flux`` (band → ``{"n", "median_rel",
        "median_abs_rel", "median_dsigma", "max_abs_rel"}`` for finite fluxes
        in both: rel = (B − A)/|A|, dsigma = (B − A)/flux_err_A),
        ``only_in_a``/``only_in_b`` (blend counts).
    """
    na = na or run_numbers(a)
    nb = nb or run_numbers(b)
    ia, ib = match_ids(a.blends, b.blends)
    ta, tb = a.blends["t_total"][ia], b.blends["t_total"][ib]
    ok = (ta > 0) & (tb > 0)
    ratio = tb[ok] / ta[ok]
    out = {
        "n_matched_blends": int(len(ia)),
        "only_in_a": int(len(a.blends) - len(ia)),
        "only_in_b": int(len(b.blends) - len(ib)),
        "runtime_ratio_median": float(np.median(ratio)) if len(ratio) else float("nan"),
        "runtime_ratio_p16": float(np.percentile(ratio, 16)) if len(ratio) else float("nan"),
        "runtime_ratio_p84": float(np.percentile(ratio, 84)) if len(ratio) else float("nan"),
        "n_matched_sources": 0,
        "flux": {},
    }
    if a.sources is not None and b.sources is not None:
        sa, sb = match_ids(a.sources, b.sources)
        out["n_matched_sources"] = int(len(sa))
        for band in [x for x in a.bands if x in b.bands]:
            col, ecol = f"flux_{band}", f"flux_err_{band}"
            if col not in a.sources.dtype.names or col not in b.sources.dtype.names:
                continue
            fa, fb = a.sources[col][sa], b.sources[col][sb]
            ea = a.sources[ecol][sa] if ecol in a.sources.dtype.names else np.full(len(sa), np.nan)
            good = np.isfinite(fa) & np.isfinite(fb) & (fa != 0)
            rel = (fb[good] - fa[good]) / np.abs(fa[good])
            eg = ea[good]
            ds = (fb[good] - fa[good])[eg > 0] / eg[eg > 0]
            out["flux"][band] = {
                "n": int(good.sum()),
                "median_rel": float(np.median(rel)) if len(rel) else float("nan"),
                "median_abs_rel": float(np.median(np.abs(rel))) if len(rel) else float("nan"),
                "max_abs_rel": float(np.abs(rel).max()) if len(rel) else float("nan"),
                "median_dsigma": float(np.median(ds)) if len(ds) else float("nan"),
            }
    rows = []
    keys = [("n_blends", "blends"), ("wall_s", "wall time [s]"), ("core_hours", "core-hours"),
            ("blends_per_s", "blends / s"), ("sum_t_total_s", "Σ t_total [s]"), ("t_median_s", "median t [s]"),
            ("t_p90_s", "p90 t [s]"), ("exception_fraction", "exception fraction"),
            ("any_flag_fraction", "any-flag fraction")]
    keys += [(f"flag:{c}", f"{c} fraction") for c in sorted(set(na["flags"]) | set(nb["flags"]))]
    for key, label in keys:
        if key.startswith("flag:"):
            c = key[5:]
            va = na["flags"].get(c, {}).get("fraction", float("nan"))
            vb = nb["flags"].get(c, {}).get("fraction", float("nan"))
        else:
            va, vb = float(na[key]), float(nb[key])
        rows.append({"key": key, "label": label, "a": va, "b": vb, "diff": vb - va})
    for name, key in (("power-law a (n_peaks)", "a"), ("power-law b (area)", "b")):
        va, vb = na["power_law"][key], nb["power_law"][key]
        rows.append({"key": f"power_law:{key}", "label": name, "a": va, "b": vb, "diff": vb - va})
    out["rows"] = rows
    return out
