"""Write a seeded set of simulated HSC-like blends with their truth (``hpcblend.simulate.blend_sets``).

    .venv/bin/python profiling/make_blend_sets.py OUT_DIR --set large|bright|stars --n N --seed S [--cosmos DIR] \
        [--psf-scale X]

``large``: crowded 200-340 px blends, 30-100 galaxies and 1-3 saturated stars each (what held-out real
HSC blends of up to 88 peaks on 286 x 340 px look like); ``bright``: 64-100 px blends of one bright extended
galaxy (i-band S/N 100-500) with 1-3 faint neighbours 0.8-2" away. The truth sits in every file
(``truth_*`` members, read with ``hpcblend.io.blend_truth.read_blend_truth``); ``--psf-scale`` draws them
in other seeing (every PSF FWHM times X; 0.7: 0.41-0.60", 1.6: 0.93-1.36"). ``stars``: 64 x 64 px
blends of one point-like star of 10^4.5-10^7.5 counts per band (noise 1) whose pixels above 1-20 % of the
brightest are clipped and flagged SAT, a third of them within 6 px of an edge, with three faint galaxies
(``hpcblend.simulate.synthetic.make_saturated_star_blend``; no truth members: compare with
``hpcblend bench deblend "DIR/*.npz" --reference scarlet_lite``).

Recipe (the settings of ``jobs/hsc_blends.yaml``, the real-data job, with its inputs replaced)::

    .venv/bin/python profiling/make_blend_sets.py /tmp/sets/large --set large --n 20 --seed 1 \\
        --cosmos ../shared/data/cosmos
    .venv/bin/python profiling/make_blend_sets.py /tmp/sets/bright --set bright --n 40 --seed 2 \\
        --cosmos ../shared/data/cosmos
    bin/hpcblend-mpirun -n 2 run jobs/hsc_blends.yaml --input /tmp/sets/large --output /tmp/sets/large.h5
    bin/hpcblend-mpirun -n 2 run jobs/hsc_blends.yaml --input /tmp/sets/bright --output /tmp/sets/bright.h5
    .venv/bin/hpcblend truth /tmp/sets/large.h5 /tmp/sets/large --json /tmp/sets/large_truth.json
    .venv/bin/hpcblend truth /tmp/sets/bright.h5 /tmp/sets/bright --json /tmp/sets/bright_truth.json
    .venv/bin/hpcblend bench deblend "/tmp/sets/large/*.npz"

(``hpcblend run --input DIR`` without a job file also works: the built-in job's deblend settings, which
are the same defaults: ``--set deblend.optimizer=fista --set deblend.max_iter=300``.)
"""

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from hpcblend.errors import HpcblendError
from hpcblend.io.blends import peek_blend
from hpcblend.io.blend_files import write_blend
from hpcblend.simulate.blend_sets import make_bright_galaxy_blends, make_large_blends
from hpcblend.simulate.synthetic import make_saturated_star_blend

__all__ = ["main", "make_star_blends"]


def make_star_blends(out_dir, n_blends: int, seed: int, cosmos_dir=None) -> list:
    """Write the ``stars`` set: ``<out_dir>/<3000000000 + 1000 seed + i>.npz`` (``cosmos_dir`` is not used)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(n_blends):
        rng = np.random.default_rng([seed, i])
        star_yx = (rng.uniform(20, 44), rng.uniform(1, 6) if rng.random() < 1 / 3 else rng.uniform(20, 44))
        blend, _ = make_saturated_star_blend(1000 * seed + i, star_yx, 10 ** rng.uniform(4.5, 7.5),
                                             saturation=rng.uniform(0.01, 0.2))
        blend_id = 3_000_000_000 + 1000 * seed + i
        paths.append(write_blend(os.path.join(out_dir, f"{blend_id}.npz"), dataclasses.replace(blend, id=blend_id)))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--set", choices=("large", "bright", "stars"), required=True)
    p.add_argument("--n", type=int, required=True, help="number of blends")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cosmos", metavar="DIR", help="GalSim COSMOS sample: real galaxy morphologies")
    p.add_argument("--psf-scale", type=float, default=1.0,
                   help="every PSF FWHM times this (other seeing; large and bright sets only)")
    args = p.parse_args(argv)
    make = {"large": make_large_blends, "bright": make_bright_galaxy_blends, "stars": make_star_blends}[args.set]
    if args.set == "stars" and args.psf_scale != 1.0:
        p.error("--psf-scale: the stars set has its own PSF")
    extra = {} if args.set == "stars" else {"psf_scale": args.psf_scale}
    t0 = time.perf_counter()
    try:
        paths = make(args.out_dir, args.n, args.seed, cosmos_dir=args.cosmos, **extra)
    except HpcblendError as exc:
        print(f"make_blend_sets: error: {exc}", file=sys.stderr)
        return 2
    info = [peek_blend(q) for q in paths]
    peaks = [i["n_peaks"] for i in info]
    print(f"{len(paths)} {args.set} blends in {time.perf_counter() - t0:.1f} s -> {args.out_dir}")
    if info:
        print(f"  peaks per blend {min(peaks)}-{max(peaks)} (total {sum(peaks)}); shapes "
              f"{min(min(i['shape']) for i in info)}-{max(max(i['shape']) for i in info)} px; footprint area "
              f"{min(i['footprint_area'] for i in info)}-{max(i['footprint_area'] for i in info)} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
