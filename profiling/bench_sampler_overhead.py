#!/usr/bin/env python
"""Overhead of the call-stack sampler on the real deblender.

Deblends the real HSC blends (``../shared/data/hsc_blends/set*/*.npz`` by
default) in one process, one blend after the other, in passes:

* ``off``      no sampler (a :class:`~hpcblend.diagnostics.sampler.NullSampler`, the same ``with stage`` calls),
* ``stages``   :class:`~hpcblend.diagnostics.sampler.StackSampler` with ``rate_hz=0`` (stage timers only),
* ``<R>hz``    :class:`~hpcblend.diagnostics.sampler.StackSampler` sampling at R Hz (default 100),

interleaved (the order of the modes is shuffled in every repeat) so that a
drift of the machine's speed hits every mode alike. Each pass wraps every
blend in ``sampler.stage("fit", blend_id)`` (``"load"`` as well with
``--with-io``, where every pass reads the files again). The kernels are
compiled and one untimed pass is run first.

Prints, per mode, the median and minimum pass time, the overhead against
``off`` (median of the per-repeat ratios, and ratio of the minima), the same
on process CPU time (all threads; far less sensitive to other load on a
shared machine than wall time), and for
sampling modes the samples taken, the achieved rate and the sampler thread's
own CPU time. ``--json F`` writes all of it.

Example::

    .venv/bin/python profiling/bench_sampler_overhead.py --repeats 5
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

# before hpcblend (and Numba) are imported: one thread each, as a rank runs
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from hpcblend.analysis.bench_sampler import format_sampler_overhead, run_sampler_overhead  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GLOB = os.path.join(_REPO, "..", "shared", "data", "hsc_blends", "set*", "*.npz")


def main(argv=None) -> int:
    """Run the benchmark (:func:`hpcblend.analysis.bench_sampler.run_sampler_overhead`); see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help=f"npz blends (default {DEFAULT_GLOB})")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per mode (default 5)")
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0], help="sampling rates to test (default 100)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N blends (0: all)")
    ap.add_argument("--with-io", action="store_true", help="read the npz files inside every pass")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mode order shuffle")
    ap.add_argument("--json", metavar="F", help="write the results as JSON")
    args = ap.parse_args(argv)

    files = []
    for p in args.paths or [DEFAULT_GLOB]:
        files += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"no input blends (looked for {args.paths or DEFAULT_GLOB})", file=sys.stderr)
        return 2
    results = run_sampler_overhead(files, repeats=args.repeats, rates=args.rates, with_io=args.with_io,
                                   seed=args.seed, note=lambda line: print(line, flush=True))
    print("\n".join(format_sampler_overhead(results)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
