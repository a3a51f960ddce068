"""Collapsed call stacks → merged profiles, speedscope JSON, text tables; the ``hpcblend profile`` command.

Input everywhere is the collapsed-stack mapping ``{"root;frame;...;leaf": count}``
(see :mod:`hpcblend.diagnostics.sampler`) or a list of per-rank profile dicts
(:meth:`hpcblend.diagnostics.sampler.StackSampler.results`,
:func:`hpcblend.io.profiles.read_profiles`). Nothing here runs an external
program: the flame-graph SVG is drawn by :mod:`hpcblend.analysis.flamegraph_svg`.

``hpcblend profile CATALOG`` is :func:`profile_main`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from hpcblend.analysis.flamegraph_svg import write_flamegraph_svg
from hpcblend.diagnostics.stages import IDLE_STAGES, OTHER_STAGE, STAGES, busy_seconds
from hpcblend.errors import HpcblendError
from hpcblend.io.profiles import read_collapsed, read_profiles, write_collapsed

__all__ = [
    "slowest_rank",
    "select_profiles",
    "merge_stacks",
    "speedscope_document",
    "write_speedscope",
    "speedscope_profile_sets",
    "top_functions",
    "format_top_functions",
    "stage_names",
    "stage_table",
    "format_stage_table",
    "load_stacks",
    "merge_inputs",
    "seconds_per_sample",
    "profile_main",
]

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

# --------------------------------------------------------------------------- selecting and merging


def slowest_rank(profiles: Sequence[Mapping[str, Any]]) -> int:
    """Rank with the most busy seconds (:func:`busy_seconds`; ties: most samples, then lowest rank).

    Raises
    ------
    ValueError
        If ``profiles`` is empty.
    """
    if not profiles:
        raise ValueError("no profiles")
    best = max(range(len(profiles)),
               key=lambda i: (busy_seconds(profiles[i]), profiles[i].get("n_samples", 0), -_rank_of(profiles[i], i)))
    return _rank_of(profiles[best], best)


def _rank_of(p: Mapping[str, Any], i: int) -> int:
    r = p.get("rank")
    return int(i if r is None else r)


def select_profiles(profiles: Sequence[Mapping[str, Any]], rank: Optional[int] = None,
                    slowest: bool = False) -> list:
    """The profiles of all ranks, of one rank, or of the slowest rank.

    Parameters
    ----------
    profiles : list of dict
    rank : int, optional
        Keep only this rank.
    slowest : bool
        Keep only :func:`slowest_rank` (``rank`` must then be None).

    Returns
    -------
    list of dict

    Raises
    ------
    ValueError
        Both ``rank`` and ``slowest``, or no profile of ``rank``.
    """
    if rank is not None and slowest:
        raise ValueError("give rank or slowest, not both")
    if slowest and profiles:
        rank = slowest_rank(profiles)
    if rank is None:
        return list(profiles)
    out = [p for i, p in enumerate(profiles) if _rank_of(p, i) == int(rank)]
    if not out:
        have = sorted(_rank_of(p, i) for i, p in enumerate(profiles))
        raise ValueError(f"no profile of rank {rank} (ranks: {have})")
    return out


def merge_stacks(sources: Iterable[Any], rank: Optional[int] = None, slowest: bool = False,
                 prefix_rank: bool = False) -> dict:
    """Add up collapsed stacks of several ranks.

    Parameters
    ----------
    sources : list of dict
        Profile dicts (with a ``stacks`` key) or plain collapsed mappings.
    rank, slowest :
        As :func:`select_profiles` (profile dicts only).
    prefix_rank : bool
        Put ``rank:<r>`` as the root frame of each rank's stacks (profile
        dicts only), so a flame graph shows ranks side by side.

    Returns
    -------
    dict of str -> int
    """
    sources = list(sources)
    profiles = [s for s in sources if isinstance(s, Mapping) and "stacks" in s]
    plain = [s for s in sources if not (isinstance(s, Mapping) and "stacks" in s)]
    if rank is not None or slowest:
        if plain:
            raise ValueError("rank/slowest selection needs profile dicts, not plain stack mappings")
        profiles = select_profiles(profiles, rank=rank, slowest=slowest)
    out: dict = {}
    for i, p in enumerate(profiles):
        pre = f"rank:{_rank_of(p, i)};" if prefix_rank else ""
        for line, n in p["stacks"].items():
            out[pre + line] = out.get(pre + line, 0) + int(n)
    for s in plain:
        for line, n in s.items():
            out[line] = out.get(line, 0) + int(n)
    return out


def load_stacks(path: str | os.PathLike, rank: Optional[int] = None, slowest: bool = False) -> tuple:
    """Profiles from a catalog (``.h5``/``.hdf5``) or stacks from a collapsed text file.

    Returns
    -------
    profiles : list of dict
        Empty for a text file.
    stacks : dict of str -> int
        Merged (and selected) stacks.
    """
    path = os.fspath(path)
    if path.endswith((".h5", ".hdf5", ".hdf")):
        profiles = read_profiles(path)
        return profiles, merge_stacks(profiles, rank=rank, slowest=slowest)
    if rank is not None or slowest:
        raise ValueError(f"{path}: --rank/--slowest need a catalog, not a collapsed text file")
    return [], read_collapsed(path)


def merge_inputs(paths: Sequence[str | os.PathLike], rank: Optional[int] = None, slowest: bool = False,
                 by_rank: bool = False, note: Callable[[str], None] = print) -> tuple:
    """Merge catalogs' profiles and collapsed text files into one stack set (counts of a stack add up).

    Parameters
    ----------
    paths : sequence of str
        Catalogs (``.h5``/``.hdf5``/``.hdf``, their ``/profile``) and/or collapsed-stack text files.
    rank, slowest
        Of each catalog, only this rank / only its busiest rank (:func:`select_profiles`).
    by_rank : bool
        Prefix every catalog stack with a ``rank:<r>`` root frame.
    note : callable
        Receives a line for a catalog without ``/profile`` (left out) and for a text file given with
        ``rank``/``slowest``/``by_rank`` (taken whole).

    Returns
    -------
    stacks : dict of str -> int
    profiles : list of dict
        The catalogs' selected profiles.
    """
    stacks: dict = {}
    profiles_all: list = []
    for path in paths:
        path = os.fspath(path)
        if path.endswith((".h5", ".hdf5", ".hdf")):
            profiles = read_profiles(path)
            if not profiles:
                note(f"{path}: no /profile (profiling was off)")
                continue
            chosen = select_profiles(profiles, rank=rank, slowest=slowest)
            profiles_all += chosen
            part = merge_stacks(chosen, prefix_rank=by_rank)
        else:
            if rank is not None or slowest or by_rank:
                note(f"{path}: --rank/--slowest/--by-rank apply to catalogs only; taken whole")
            part = read_collapsed(path)
        stacks = merge_stacks([stacks, part])
    return stacks, profiles_all


def seconds_per_sample(profiles: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """``1 / rate_hz`` when every profile sampled at one non-zero rate, else None (counts stay counts)."""
    rates = {float(p.get("rate_hz") or 0) for p in profiles}
    return 1.0 / rates.pop() if len(rates) == 1 and 0 not in rates else None


# --------------------------------------------------------------------------- speedscope


def _split_label(label: str) -> dict:
    """speedscope frame for a label ``file:function:line`` (other labels: name only)."""
    parts = label.split(":")
    if len(parts) == 3 and parts[2].split("@")[0].isdigit():
        line = parts[2].split("@")
        name = f"{parts[1]}@{line[1]}" if len(line) > 1 else parts[1]
        return {"name": f"{name} ({parts[0]})", "file": parts[0], "line": int(line[-1])}
    return {"name": label}


def speedscope_document(profiles: Mapping[str, Mapping[str, int]], seconds_per_sample: Optional[float] = None,
                        name: str = "hpcblend") -> dict:
    """A speedscope file (``sampled`` profiles) holding one profile per named stack set.

    Parameters
    ----------
    profiles : dict of str -> (dict of str -> int)
        Profile name (e.g. ``"all ranks"``, ``"rank 0"``) → collapsed stacks.
    seconds_per_sample : float, optional
        When given, weights are in seconds (``count × seconds_per_sample``);
        otherwise unit ``"none"`` (sample counts).
    name : str
        Name of the document.

    Returns
    -------
    dict
        JSON-serialisable; see https://www.speedscope.app/file-format-schema.json.
        Samples are stacks of frame indices, root first.
    """
    frames: list = []
    index: dict = {}
    out_profiles = []
    for pname, stacks in profiles.items():
        samples, weights = [], []
        for line in sorted(stacks):
            n = int(stacks[line])
            if n <= 0:
                continue
            stack = []
            for label in line.split(";"):
                if label not in index:
                    index[label] = len(frames)
                    frames.append(_split_label(label))
                stack.append(index[label])
            samples.append(stack)
            weights.append(n * seconds_per_sample if seconds_per_sample else n)
        out_profiles.append({
            "type": "sampled",
            "name": str(pname),
            "unit": "seconds" if seconds_per_sample else "none",
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        })
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "version": "0.0.1",
        "shared": {"frames": frames},
        "profiles": out_profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "hpcblend",
    }


def write_speedscope(path: str | os.PathLike, profiles: Mapping[str, Mapping[str, int]],
                     seconds_per_sample: Optional[float] = None, name: str = "hpcblend") -> str:
    """Write :func:`speedscope_document` to ``path`` (open it at https://www.speedscope.app); returns the path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(speedscope_document(profiles, seconds_per_sample, name), fh)
    return path


def speedscope_profile_sets(profiles: Sequence[Mapping[str, Any]], stacks: Mapping[str, int]) -> tuple:
    """Stack sets for :func:`write_speedscope`: ``"merged"`` plus one per rank.

    Parameters
    ----------
    profiles : sequence of dict
        Per-rank profiles (``stacks``, ``rank``, ``rate_hz``).
    stacks : dict of str -> int
        The merged stacks.

    Returns
    -------
    sets : dict of str -> dict
        Name -> collapsed stacks.
    seconds_per_sample : float or None
        ``1 / rate_hz`` when every rank sampled at one rate, else None.
    """
    sets = {"merged": dict(stacks)}
    for i, p in enumerate(profiles):
        sets[f"rank {_rank_of(p, i)}"] = dict(p.get("stacks") or {})
    return sets, seconds_per_sample(profiles)


# --------------------------------------------------------------------------- tables


def top_functions(stacks: Mapping[str, int], n: int = 20, include_stages: bool = False) -> list:
    """Frames with the most samples, self (leaf) and total (anywhere on the stack).

    Parameters
    ----------
    stacks : dict of str -> int
    n : int
        Rows to return (sorted by self, then total samples).
    include_stages : bool
        Keep ``stage:``/``rank:`` root frames (default: leave them out).

    Returns
    -------
    list of dict
        ``{"frame", "self", "total", "self_frac", "total_frac"}``; a frame
        that appears twice in one stack (recursion) counts once in total.
    """
    self_n: dict = {}
    total_n: dict = {}
    grand = 0
    for line, c in stacks.items():
        c = int(c)
        grand += c
        frames = line.split(";")
        if not include_stages:
            frames = [f for f in frames if not f.startswith(("stage:", "rank:"))]
        if not frames:
            continue
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + c
        for f in set(frames):
            total_n[f] = total_n.get(f, 0) + c
    rows = [{"frame": f, "self": self_n.get(f, 0), "total": t,
             "self_frac": self_n.get(f, 0) / grand if grand else 0.0, "total_frac": t / grand if grand else 0.0}
            for f, t in total_n.items()]
    rows.sort(key=lambda r: (-r["self"], -r["total"], r["frame"]))
    return rows[: max(int(n), 0)]


def format_top_functions(stacks: Mapping[str, int], n: int = 20) -> str:
    """Text table of :func:`top_functions`, by self samples."""
    rows = top_functions(stacks, n)
    total = sum(int(v) for v in stacks.values())
    lines = [f"top {len(rows)} frames of {total} samples (self = leaf, total = anywhere on the stack)",
             f"{'self':>8} {'self%':>6} {'total':>8} {'total%':>6}  frame"]
    for r in rows:
        lines.append(f"{r['self']:8d} {100 * r['self_frac']:6.1f} {r['total']:8d} {100 * r['total_frac']:6.1f}  "
                     f"{r['frame']}")
    return "\n".join(lines)


def stage_names(profiles: Sequence[Mapping[str, Any]]) -> list:
    """Stages present in any profile (timers or samples): the standard ones in their order, then others sorted."""
    seen = set()
    for p in profiles:
        seen.update((p.get("stage_seconds") or {}).keys())
        seen.update((p.get("stage_samples") or {}).keys())
    order = list(STAGES) + [OTHER_STAGE]
    return [s for s in order if s in seen] + sorted(seen - set(order))


def stage_table(profiles: Sequence[Mapping[str, Any]]) -> list:
    """Seconds per stage per rank (stage timers) with sample counts, busy and idle time.

    Parameters
    ----------
    profiles : list of dict

    Returns
    -------
    list of dict
        One row per rank, sorted by rank: ``rank``, ``host``, ``elapsed_s``,
        ``seconds`` (stage → s), ``samples`` (stage → n), ``busy_s`` (not
        ``wait``/``mpi``), ``idle_s`` (``wait`` + ``mpi``), ``busy_frac``,
        ``n_samples``, ``overhead_fraction``.
    """
    rows = []
    for i, p in enumerate(profiles):
        secs = {k: float(v) for k, v in (p.get("stage_seconds") or {}).items()}
        elapsed = float(p.get("elapsed_s") or 0.0)
        busy = busy_seconds(p)
        idle = sum(secs.get(s, 0.0) for s in IDLE_STAGES)
        rows.append({"rank": _rank_of(p, i), "host": p.get("host", ""), "elapsed_s": elapsed, "seconds": secs,
                     "samples": {k: int(v) for k, v in (p.get("stage_samples") or {}).items()},
                     "busy_s": busy, "idle_s": idle, "busy_frac": busy / elapsed if elapsed > 0 else 0.0,
                     "n_samples": int(p.get("n_samples") or 0),
                     "overhead_fraction": float(p.get("overhead_fraction") or 0.0)})
    rows.sort(key=lambda r: r["rank"])
    return rows


def format_stage_table(profiles: Sequence[Mapping[str, Any]]) -> str:
    """Text table: one row per rank, seconds per stage (incl. ``wait`` idle and ``mpi``), busy %."""
    rows = stage_table(profiles)
    names = stage_names(profiles)
    head = f"{'rank':>4} " + " ".join(f"{n:>9}" for n in names) + f" {'elapsed':>9} {'busy%':>6} {'samples':>8}"
    lines = ["seconds per stage per rank (stage timers; wait = waiting for work, mpi = communication)", head]
    for r in rows:
        lines.append(f"{r['rank']:4d} " + " ".join(f"{r['seconds'].get(n, 0.0):9.3f}" for n in names)
                     + f" {r['elapsed_s']:9.3f} {100 * r['busy_frac']:6.1f} {r['n_samples']:8d}")
    if len(rows) > 1:
        tot = {n: sum(r["seconds"].get(n, 0.0) for r in rows) for n in names}
        el = sum(r["elapsed_s"] for r in rows)
        busy = sum(r["busy_s"] for r in rows)
        lines.append(f"{'all':>4} " + " ".join(f"{tot[n]:9.3f}" for n in names)
                     + f" {el:9.3f} {100 * busy / el if el else 0:6.1f} {sum(r['n_samples'] for r in rows):8d}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def profile_main(argv: Optional[Sequence[str]] = None) -> int:
    """``hpcblend profile CATALOG [--rank R | --slowest] [--speedscope F] [--svg F] [--collapsed F] [--top N]``.

    Prints the per-rank stage table and the top frames; writes the merged
    (or selected) flame graph SVG, speedscope JSON (merged + one profile per
    rank) and collapsed text when asked.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``profile`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 when the catalog has no profile, 2 on a usage or
        read error.
    """
    ap = argparse.ArgumentParser(prog="hpcblend profile",
                                 description="call-stack profile of a run: stage table, top frames, flame graph")
    ap.add_argument("catalog", help="run catalog (.h5) with /profile, or a collapsed-stack text file")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int, help="only this rank")
    g.add_argument("--slowest", action="store_true", help="only the rank with the most busy seconds")
    ap.add_argument("--speedscope", metavar="F", help="write speedscope JSON (merged + per rank)")
    ap.add_argument("--svg", metavar="F", help="write a flame graph SVG")
    ap.add_argument("--collapsed", metavar="F", help="write collapsed stacks (flamegraph.pl input)")
    ap.add_argument("--top", type=int, default=25, metavar="N", help="rows of the top-frames table (default 25)")
    ap.add_argument("--by-rank", action="store_true", help="flame graph with one root per rank")
    args = ap.parse_args(argv)
    try:
        profiles, stacks = load_stacks(args.catalog, rank=args.rank, slowest=args.slowest)
    except (HpcblendError, ValueError, OSError) as exc:
        print(f"hpcblend profile: error: {exc}", file=sys.stderr)
        return 2
    if args.catalog.endswith((".h5", ".hdf5", ".hdf")) and not profiles:
        print(f"hpcblend profile: {args.catalog}: no /profile in the catalog (profiling was off)", file=sys.stderr)
        return 1
    selected = select_profiles(profiles, rank=args.rank, slowest=args.slowest) if profiles else []
    if selected:
        what = "all ranks" if args.rank is None and not args.slowest else f"rank {_rank_of(selected[0], 0)}"
        print(f"{args.catalog}: profile of {what} ({len(profiles)} rank(s) recorded)")
        print(format_stage_table(selected))
        ov = [p.get("overhead_fraction", 0.0) for p in selected]
        rates = [p.get("achieved_rate_hz", 0.0) for p in selected]
        print(f"sampler: {sum(p.get('n_samples', 0) for p in selected)} samples, achieved rate "
              f"{min(rates):.1f}-{max(rates):.1f} Hz, sampler CPU {100 * max(ov):.2f}% of elapsed (max over ranks)")
        print()
    print(format_top_functions(stacks, args.top))
    sps = seconds_per_sample(selected)
    if args.svg:
        chosen = merge_stacks(selected, prefix_rank=True) if (args.by_rank and selected) else stacks
        write_flamegraph_svg(args.svg, chosen, title=f"hpcblend: {os.path.basename(args.catalog)}",
                             seconds_per_sample=sps)
        print(f"flame graph: {args.svg}")
    if args.speedscope:
        sets, sps2 = speedscope_profile_sets(selected, stacks)
        write_speedscope(args.speedscope, sets, sps2, name=os.path.basename(args.catalog))
        print(f"speedscope: {args.speedscope}")
    if args.collapsed:
        write_collapsed(args.collapsed, stacks)
        print(f"collapsed stacks: {args.collapsed}")
    return 0
