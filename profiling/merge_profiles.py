#!/usr/bin/env python
"""Merge per-rank call-stack profiles into one collapsed-stack file (and optionally speedscope JSON).

Inputs are run catalogs (``.h5``, their ``/profile/rank_<r>`` groups) and/or
collapsed-stack text files (``frame;frame count`` lines); counts of the same
stack add up.

Examples::

    profiling/merge_profiles.py output/hsc.h5 -o hsc.collapsed              # all ranks
    profiling/merge_profiles.py output/hsc.h5 --slowest -o slow.collapsed    # the busiest rank
    profiling/merge_profiles.py output/hsc.h5 --rank 1 --speedscope r1.json
    profiling/merge_profiles.py a.collapsed b.collapsed -o ab.collapsed
    profiling/merge_profiles.py output/hsc.h5 --by-rank -o ranks.collapsed   # root frame rank:<r>
"""

from __future__ import annotations

import argparse
import sys

from hpcblend.analysis.flamegraph import format_stage_table, merge_inputs, seconds_per_sample, write_speedscope
from hpcblend.io.profiles import write_collapsed


def main(argv=None) -> int:
    """Parse arguments, merge (:func:`hpcblend.analysis.flamegraph.merge_inputs`), write; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="catalogs (.h5) and/or collapsed text files")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--rank", type=int, help="only this rank (catalog inputs)")
    g.add_argument("--slowest", action="store_true", help="only the rank with the most busy seconds, per catalog")
    ap.add_argument("--by-rank", action="store_true", help="prefix every stack with a rank:<r> root frame")
    ap.add_argument("-o", "--output", help="collapsed output (default: stdout)")
    ap.add_argument("--speedscope", metavar="F", help="also write speedscope JSON")
    ap.add_argument("--stages", action="store_true", help="print the per-rank stage table to stderr")
    args = ap.parse_args(argv)
    try:
        stacks, profiles_all = merge_inputs(args.inputs, rank=args.rank, slowest=args.slowest, by_rank=args.by_rank,
                                            note=lambda line: print(line, file=sys.stderr))
    except (OSError, ValueError) as exc:
        print(f"merge_profiles: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - hpcblend errors (CatalogError, ...) with their message
        print(f"merge_profiles: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.stages and profiles_all:
        print(format_stage_table(profiles_all), file=sys.stderr)
    if args.output:
        write_collapsed(args.output, stacks)
        print(f"{sum(stacks.values())} samples in {len(stacks)} stacks -> {args.output}", file=sys.stderr)
    else:
        for line in sorted(stacks):
            sys.stdout.write(f"{line} {stacks[line]}\n")
    if args.speedscope:
        write_speedscope(args.speedscope, {"merged": stacks}, seconds_per_sample(profiles_all),
                         name="hpcblend merged profile")
        print(f"speedscope -> {args.speedscope}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
