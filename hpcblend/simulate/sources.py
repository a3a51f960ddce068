"""Work sources whose inputs are simulated first: the demo blends (``input.kind: demo``) and simulated tracts.

Each is a source of :mod:`hpcblend.units` with a :meth:`~hpcblend.units.source.WorkSource.prepare`
step that rank 0 runs before planning: it writes the inputs the job describes when they are not
there yet. The registry of :mod:`hpcblend.units.source` names these classes by dotted path, so the
run path imports this module (and GalSim) only for a job that asks for simulated inputs.
"""

from __future__ import annotations

import glob
import logging
import os
import time

from hpcblend.simulate.synthetic import write_demo_blends
from hpcblend.simulate.tract import simulate_tract
from hpcblend.units.blends import BlendsSource
from hpcblend.units.tract import TractSource

__all__ = ["DemoBlendsSource", "SimulatedTractSource"]

log = logging.getLogger("hpcblend")


class DemoBlendsSource(BlendsSource):
    """``input.kind: demo``: ``input.n_demo_blends`` synthetic blends written into ``input.cache_dir``, one unit each.

    Parameters
    ----------
    job : hpcblend.config.JobConfig
    """

    def __init__(self, job):
        super().__init__(job)
        self._paths = None

    def prepare(self) -> None:
        """Write the demo blends (:func:`hpcblend.simulate.synthetic.write_demo_blends`; the same files every time)."""
        self._paths = sorted(write_demo_blends(self.job_path(self.job.input.cache_dir),
                                               n_blends=self.job.input.n_demo_blends))

    def input_paths(self) -> list:
        """The demo blend files, sorted (written by :meth:`prepare`, called here if it was not)."""
        if self._paths is None:
            self.prepare()
        return list(self._paths)


class SimulatedTractSource(TractSource):
    """``input.kind: tract`` with ``input.simulate.enabled``: the tract is simulated (GalSim) when it has no coadds.

    Parameters
    ----------
    job : hpcblend.config.JobConfig
    """

    def prepare(self) -> None:
        """Simulate the tract into ``input.tract_dir`` (:func:`hpcblend.simulate.tract.simulate_tract`) unless it
        already holds ``coadd_*.fits``."""
        d = self.tract_dir
        sim = self.job.input.simulate
        if not sim.enabled or glob.glob(os.path.join(d, "coadd_*.fits")):
            return
        cosmos = sim.cosmos_dir
        if cosmos and not os.path.isabs(cosmos):
            cosmos = os.path.normpath(os.path.join(self.job.base_dir, cosmos))
        log.info("simulating tract %s (%dx%d px, bands %s, seed %d) ...", d, sim.shape[0], sim.shape[1],
                 "".join(sim.bands), sim.seed)
        t = time.time()
        simulate_tract(d, shape=tuple(sim.shape), bands=tuple(sim.bands), density=sim.density,
                       star_density=sim.star_density, psf=sim.psf, seed=sim.seed, cosmos_dir=cosmos or None,
                       tract=self.job.input.tract, galaxy_mag_range=tuple(sim.galaxy_mag_range))
        log.info("simulated tract in %.1f s", time.time() - t)
