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


def main(argv=None) -> int:
    """Parse arguments, merge, write; returns the exit code."""
    from hpcblend.analysis.flamegraph import format_stage_table, merge_stacks, select_profiles, write_speedscope
    from hpcblend.diagnostics.sampler import read_collapsed, read_profiles, write_collapsed

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

    stacks: dict = {}
    profiles_all: list = []
    try:
        for path in args.inputs:
            if path.endswith((".h5", ".hdf5", ".hdf")):
                profiles = read_profiles(path)
                if not profiles:
                    print(f"{path}: no /profile (profiling was off)", file=sys.stderr)
                    continue
                chosen = select_profiles(profiles, rank=args.rank, slowest=args.slowest)
                profiles_all += chosen
                part = merge_stacks(chosen, prefix_rank=args.by_rank)
            else:
                if args.rank is not None or args.slowest or args.by_rank:
                    print(f"{path}: --rank/--slowest/--by-rank apply to catalogs only; taken whole", file=sys.stderr)
                part = read_collapsed(path)
            stacks = merge_stacks([stacks, part])
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
        rates = {float(p.get("rate_hz") or 0) for p in profiles_all}
        sps = 1.0 / rates.pop() if len(rates) == 1 and 0 not in rates else None
        write_speedscope(args.speedscope, {"merged": stacks}, sps, name="hpcblend merged profile")
        print(f"speedscope -> {args.speedscope}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
