"""Simulated inputs with known truth: GalSim tracts, synthetic blends, source injection; never imported by a run.

Synthetic HSC-like coadd tracts drawn with GalSim (:mod:`~hpcblend.simulate.tract`), the COSMOS galaxy
sample (:mod:`~hpcblend.simulate.cosmos`), small NumPy-only synthetic blends for tests and the demo
(:mod:`~hpcblend.simulate.synthetic`), seeded large and bright-galaxy blend sets with their truth
(:mod:`~hpcblend.simulate.blend_sets`) and injection of sources into blend files
(:mod:`~hpcblend.simulate.inject`) and into tracts (:mod:`~hpcblend.simulate.inject_tract`). Inputs made here are written with :mod:`hpcblend.io` and then read
by a run like any other; a job that needs them first (the built-in demo) reaches them through the CLI
or a work source resolved by name, never through an import from the run path
(``tests/test_house.py``).
"""

__all__: list = []
