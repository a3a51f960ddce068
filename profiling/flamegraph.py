#!/usr/bin/env python
"""Draw a flame graph SVG from collapsed stacks or a run catalog's /profile (no external programs).

Examples::

    profiling/flamegraph.py merged.collapsed -o flame.svg
    profiling/flamegraph.py output/hsc.h5 -o flame.svg              # all ranks merged
    profiling/flamegraph.py output/hsc.h5 --slowest -o slow.svg
    profiling/flamegraph.py output/hsc.h5 --by-rank -o ranks.svg    # one root per rank
"""

from __future__ import annotations

import argparse
import os
import sys

from hpcblend.analysis.flamegraph import (format_top_functions, load_stacks, merge_stacks, seconds_per_sample,
                                          select_profiles)
from hpcblend.analysis.flamegraph_svg import write_flamegraph_svg


def main(argv=None) -> int:
    """Parse arguments, draw (:mod:`hpcblend.analysis.flamegraph`), write; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="collapsed text file or catalog (.h5)")
    ap.add_argument("-o", "--output", required=True, help="SVG to write")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int)
    g.add_argument("--slowest", action="store_true")
    ap.add_argument("--by-rank", action="store_true", help="catalog input: one root frame per rank")
    ap.add_argument("--title", help="title (default: the input's name)")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--top", type=int, default=0, help="also print the top N frames")
    args = ap.parse_args(argv)
    try:
        profiles, stacks = load_stacks(args.input, rank=args.rank, slowest=args.slowest)
    except Exception as exc:  # noqa: BLE001 - report any read error with its message
        print(f"flamegraph: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    sps = None
    if profiles:
        chosen = select_profiles(profiles, rank=args.rank, slowest=args.slowest)
        if args.by_rank:
            stacks = merge_stacks(chosen, prefix_rank=True)
        sps = seconds_per_sample(chosen)
    write_flamegraph_svg(args.output, stacks, title=args.title or os.path.basename(args.input), width=args.width,
                         seconds_per_sample=sps)
    print(f"{sum(stacks.values())} samples -> {args.output}", file=sys.stderr)
    if args.top:
        print(format_top_functions(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
