"""Command line: every ``hpcblend`` subcommand and its parser (``run``, ``summary``, ``simulate``, ``model``,
``bench deblend|tract``, and the pass-through subcommands with parsers of their own: ``report``, ``profile``,
``validate``, ``costmodel``, ``scorecard``, ``reproduce``, ``scaling``, ``inject``).

Subcommands import what they need when they run (function-level imports): the thread settings and
Numba's cache directory must be set before numpy and Numba load, and ``hpcblend --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# One BLAS / Numba thread per rank unless the user says otherwise: must be set before numpy
# (OpenBLAS reads it once, at import).
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hpcblend.errors import HpcblendError  # noqa: E402
from hpcblend.io.blends import DEFAULT_BANDS  # noqa: E402

__all__ = ["main", "summarize"]


def _stderr_line(text: str) -> None:
    """Write one line to stderr in a single ``write`` call.

    Under MPI every rank writes its own line to the same pipe; ``print``
    writes the text and the newline separately, so two ranks' lines could run
    together. One write of a line shorter than the pipe's atomic size (4 KiB)
    is never interleaved.
    """
    sys.stderr.flush()
    data = (text.replace("\n", " ")[:4000] + "\n").encode("utf-8", "replace")
    try:
        os.write(2, data)
    except OSError:
        pass


def _setup_env():
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _setup_logging(level: str = "INFO") -> None:
    """Log lines name the rank and host: ``time rank r@host LEVEL message``."""
    from mpi4py import MPI
    import socket

    fmt = f"%(asctime)s rank {MPI.COMM_WORLD.rank}@{socket.gethostname()} %(levelname)s %(message)s"
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, datefmt="%H:%M:%S")


def _numba_environment(job) -> None:
    """Threads and the compiled-kernel cache, set before Numba is imported.

    ``run.numba_cache_dir`` (e.g. on a shared filesystem) gets one
    sub-directory per node (Slurm's node name, else the host name), so
    nodes with different CPUs never share compiled code and no two nodes
    write the same cache files.
    """
    if "numba" in sys.modules:
        return
    if job.run.numba_threads > 0:
        os.environ["NUMBA_NUM_THREADS"] = str(job.run.numba_threads)
    if job.run.numba_cache_dir:
        d = job.run.numba_cache_dir
        if not os.path.isabs(d):
            d = os.path.join(job.base_dir, d)
        from hpcblend.parallel.markers import node_name  # Slurm's node name, else the host's (imports no Numba)

        os.environ["NUMBA_CACHE_DIR"] = os.path.join(d, node_name())


def cmd_run(args) -> int:
    from hpcblend.config import default_job, load_job, apply_overrides, job_from_dict, job_to_dict

    from hpcblend.parallel.signals import StopOnSignal  # imports no Numba: the cache directory is still free to set

    stop = StopOnSignal().__enter__()  # from now on SIGTERM/SIGUSR1 ask for a checkpoint, never kill
    try:
        overrides = tuple(args.set or ())
        if args.input:  # a path on the command line is relative to the current directory, as in every CLI
            overrides += (f"input.paths=[{os.path.abspath(args.input)!r}]", "input.kind=blends")
        job = load_job(args.job, overrides) if args.job else default_job(overrides)
        if args.input and not args.job:
            data = apply_overrides(job_to_dict(job), ())
            data.pop("base_dir", None)
            job = job_from_dict(data, source="--input", base_dir=os.getcwd())
        _numba_environment(job)
        _setup_logging(job.run.log_level)
        from hpcblend.parallel.driver import run_job

        out = run_job(job, output=os.path.abspath(args.output) if args.output else None, resume=args.resume,
                      stop_signal=stop, retry_failed=not args.no_retry_failed)
    except HpcblendError as exc:
        if type(exc).__name__ == "RunInterrupted":  # by name: an earlier step may fail before the driver loads
            _stderr_line(f"hpcblend: {exc}")
            return 3
        _stderr_line(f"hpcblend: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _stderr_line("hpcblend: interrupted (Ctrl-C): the catalog holds every unit of the last completed write "
                     "round; run the same command with --resume to finish")
        return 130
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank == 0:
        print(f"catalog written: {out}")
        print(summarize(out))
    return 0


def summarize(path: str) -> str:
    """Text summary of a run catalog: fractions, runtime statistics, tables by n_peaks and area."""
    from hpcblend.io.catalog import read_table

    b = read_table(path, "blends")
    n = len(b)
    lines = [f"{path}: {n} blends, {int(b['n_peaks'].sum())} peaks"]
    if n == 0:
        return "\n".join(lines)
    exc = (b["error_type"] != b"") & b["flag_failed"]
    lines.append(f"exception fraction: {exc.mean():.4f} ({int(exc.sum())})")
    types = {}
    for t in b["error_type"][exc]:
        types[t.decode()] = types.get(t.decode(), 0) + 1
    for t, c in sorted(types.items()):
        lines.append(f"  {t}: {c}")
    for f in [c for c in b.dtype.names if c.startswith("flag_")]:
        lines.append(f"flagged {f}: {b[f].mean():.4f} ({int(b[f].sum())})")
    t = b["t_total"]
    lines.append(f"runtime per blend [s]: total {t.sum():.3f}  median {np.median(t):.4f}  "
                 f"p90 {np.percentile(t, 90):.4f}  max {t.max():.4f}")
    chi = b["chi2_per_pixel"][np.isfinite(b["chi2_per_pixel"])]
    if len(chi):
        lines.append(f"chi2/pixel: median {np.median(chi):.4f}  p90 {np.percentile(chi, 90):.3f}")
    for col, edges in (("n_peaks", [1, 2, 3, 5, 9, 17, 33, 10**9]),
                       ("footprint_area", [0, 500, 1000, 2000, 4000, 8000, 16000, 10**12])):
        lines.append(f"median runtime by {col}:")
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (b[col] >= lo) & (b[col] < hi)
            if sel.any():
                hi_s = "inf" if hi >= 10**9 else str(hi)
                lines.append(f"  [{lo}, {hi_s}): n={int(sel.sum()):4d}  median {np.median(t[sel]):.4f} s")
    lines.append("slowest 10 blends:")
    for i in np.argsort(-t)[:10]:
        lines.append(f"  id {b['id'][i]}  {t[i]:.4f} s  n_peaks {b['n_peaks'][i]}  area {b['footprint_area'][i]}  "
                     f"iterations {b['iterations'][i]}  chi2/px {b['chi2_per_pixel'][i]:.3f}")
    return "\n".join(lines)


def cmd_summary(args) -> int:
    print(summarize(args.catalog))
    return 0


def cmd_bench_deblend(args) -> int:
    """Deblend every blend on one core after a warm-up, optionally beside scarlet_lite (:mod:`hpcblend.analysis.bench`)."""
    from hpcblend.analysis.bench import format_report, run_bench_deblend, write_json
    from hpcblend.config import default_job
    from hpcblend.errors import ConfigError

    overrides = tuple(args.set or ())
    if any(not o.startswith("deblend.") for o in overrides):
        raise ConfigError(f"--set: bench deblend takes deblend.KEY=VALUE only, got {list(overrides)}")
    config = default_job(overrides).deblend
    report = run_bench_deblend(args.paths, reference=args.reference, config=config, note=_stderr_line)
    print("\n".join(format_report(report, top=args.top)))
    if args.json:
        write_json(report, args.json)
    return 0


def cmd_bench_tract(args) -> int:
    """A tract job on one core after warm-up: seconds and share per stage, throughput (:mod:`hpcblend.analysis.bench_tract`)."""
    from hpcblend.analysis.bench_tract import format_tract_report, run_bench_tract, write_tract_json

    report = run_bench_tract(args.job, tuple(args.set or ()))
    print(format_tract_report(report))
    if args.json:
        write_tract_json(report, args.json)
    return 0


def cmd_simulate(args) -> int:
    """Simulate a tract (GalSim) into a directory: coadd_<band>.fits, psf_<band>.fits, truth.fits."""
    from hpcblend.simulate.tract import simulate_tract

    sim = simulate_tract(args.out_dir, shape=(args.shape[0], args.shape[1]), bands=tuple(args.bands),
                         density=args.density, star_density=args.star_density, seed=args.seed,
                         psf=args.psf, cosmos_dir=args.cosmos, tract=args.tract)
    print(f"simulated tract {args.tract}: {args.shape[0]}x{args.shape[1]} px, bands {''.join(args.bands)}, "
          f"{len(sim.truth)} sources in {sim.elapsed:.1f} s -> {sim.directory}")
    return 0


def cmd_model(args) -> int:
    """Render one child's stored deblended model to a PNG (asinh colour) and print its SED."""
    from hpcblend.io.models import read_model, render_model_rgb

    m = read_model(args.catalog, args.id)
    rgb = render_model_rgb(m, rgb_bands=tuple(args.rgb) if args.rgb else None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = max(1, int(256 / max(rgb.shape[:2])))
    plt.imsave(args.out, np.kron(rgb, np.ones((scale, scale, 1), dtype=rgb.dtype)), origin="lower")
    y0, x0, h, w = m.box
    print(f"child {m.id} (parent {m.parent_id}): box y0={y0} x0={x0} {h}x{w} px, {len(m.components)} "
          f"component(s), model PSF sigma {m.model_psf_sigma} px")
    print("model flux [counts]: " + "  ".join(f"{b}={v:.4g}" for b, v in zip(m.bands, m.flux())))
    print(f"written {args.out}")
    return 0


_PASSTHROUGH = {
    "report": ("hpcblend.report.build", "report_main",
               "HTML report answering the sprint's questions: hpcblend report CATALOG --out DIR [--compare B.h5]"),
    "profile": ("hpcblend.analysis.flamegraph", "profile_main",
                "merged call-stack profiles: hpcblend profile CATALOG [--rank R|--slowest] [--svg F] [--speedscope F]"),
    "validate": ("hpcblend.analysis.validate", "validate_main",
                 "match a tract run's catalog to the simulation truth: hpcblend validate CATALOG --truth DIR"),
    "costmodel": ("hpcblend.analysis.costfit", "costmodel_main",
                  "runtime model per unit from earlier runs: hpcblend costmodel fit RUN.h5 ... --out model.json"),
    "scorecard": ("hpcblend.analysis.scorecard", "scorecard_main",
                  "PASS/FAIL table of a run's metrics: hpcblend scorecard RUN.h5 [--baseline OLD.h5] [--thresholds F]"),
    "reproduce": ("hpcblend.analysis.reproduce", "reproduce_main",
                  "re-run one unit from a catalog's recorded config and inputs: hpcblend reproduce CATALOG UNIT_ID"),
    "scaling": ("hpcblend.analysis.scaling", "scaling_main",
                "replay simulator and scaling study: hpcblend scaling replay CATALOG --ranks 1 2 ... 4096"),
    "inject": ("hpcblend.analysis.injection", "inject_main",
               "source injection (blend files or a tract) and its metrics: hpcblend inject blends|tract|metrics"),
    "truth": ("hpcblend.analysis.truth_metrics", "main",
              "flux accuracy vs the truth inside simulated blend sets: hpcblend truth CATALOG BLENDS... [--json OUT]"),
}


def main(argv=None) -> int:
    """Entry point of the ``hpcblend`` console script."""
    _setup_env()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:  # subcommands with their own argument parsers
        import importlib

        module, func, _ = _PASSTHROUGH[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    p = argparse.ArgumentParser(prog="hpcblend", description="MPI-parallel batch deblending (scarlet model, Numba)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a job (no job file: the built-in demo)")
    r.add_argument("job", nargs="?")
    r.add_argument("--input")
    r.add_argument("--output")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run of the same --output: units in its ledger are skipped, "
                        "failed units are run again")
    r.add_argument("--no-retry-failed", action="store_true",
                   help="with --resume: keep the units that failed before instead of running them again")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("summary", help="summarise a run catalog")
    s.add_argument("catalog")
    s.set_defaults(func=cmd_summary)
    sm = sub.add_parser("simulate", help="simulate a multi-band tract with known truth (GalSim)")
    sm.add_argument("out_dir")
    sm.add_argument("--shape", type=int, nargs=2, default=(2000, 2000), metavar=("H", "W"))
    sm.add_argument("--bands", nargs="+", default=list(DEFAULT_BANDS))
    sm.add_argument("--density", type=float, default=10.0, help="galaxies per arcmin^2")
    sm.add_argument("--star-density", type=float, default=1.0, help="stars per arcmin^2")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--psf", choices=("moffat", "kolmogorov"), default="moffat")
    sm.add_argument("--cosmos", metavar="DIR", help="RealGalaxyCatalog directory (real COSMOS morphologies)")
    sm.add_argument("--tract", type=int, default=0)
    sm.set_defaults(func=cmd_simulate)
    md = sub.add_parser("model", help="render a child's stored deblended model to PNG")
    md.add_argument("catalog")
    md.add_argument("id", type=int)
    md.add_argument("--out", default="child.png")
    md.add_argument("--rgb", nargs=3, metavar=("R", "G", "B"), help="bands for red, green, blue")
    md.set_defaults(func=cmd_model)
    for name, (_, _, text) in _PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False)
    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    bd = bsub.add_parser("deblend", help="deblend every npz blend on one core, optionally beside scarlet_lite")
    bd.add_argument("paths", nargs="+", help="npz files, directories or glob patterns")
    bd.add_argument("--reference", choices=("scarlet_lite",),
                    help="also run this reference deblender on every blend, interleaved, and compare")
    bd.add_argument("--json", metavar="OUT", help="write every figure and the per-blend rows here")
    bd.add_argument("--top", type=int, default=10, metavar="N", help="list the N slowest blends")
    bd.add_argument("--set", action="append", metavar="deblend.KEY=VALUE", help="hpcblend's deblender settings")
    bd.set_defaults(func=cmd_bench_deblend)
    bt = bsub.add_parser("tract", help="a tract job on one core: seconds and share per stage, throughput")
    bt.add_argument("job", nargs="?", help="tract job file (default: the built-in job)")
    bt.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    bt.add_argument("--json", metavar="OUT", help="write every figure here")
    bt.set_defaults(func=cmd_bench_tract)
    args = p.parse_args(argv)
    _setup_logging("INFO")
    try:
        return args.func(args)
    except HpcblendError as exc:  # bad input or environment: one line, exit 2 (cmd_run has its own codes)
        _stderr_line(f"hpcblend: error: {exc}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside cmd_run's own handling (e.g. while the summary is printed)
        _stderr_line("hpcblend: interrupted (Ctrl-C); a run's catalog keeps what it had written: run the same "
                     "command with --resume to finish it")
        return 130


if __name__ == "__main__":
    sys.exit(main())
