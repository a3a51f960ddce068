"""The per-unit cache of PSF-difference kernels (hpcblend.deblend.observation.DifferenceKernels)."""

import numpy as np

import hpcblend.deblend.observation as observation
from hpcblend.config import DeblendConfig
from hpcblend.deblend import deblend_blend
from hpcblend.deblend.observation import DifferenceKernels, build_observation
from hpcblend.simulate.synthetic import make_synthetic_blend


def test_cached_observation_equals_a_fresh_one_and_kernels_are_computed_once(monkeypatch):
    calls = []
    real = observation._difference_kernels
    monkeypatch.setattr(observation, "_difference_kernels", lambda *a: calls.append(1) or real(*a))
    cache = DifferenceKernels()
    blends = [make_synthetic_blend(seed, n_sources=3, shape=(41 + 6 * seed, 45))[0] for seed in range(3)]
    config = DeblendConfig()
    for blend in blends:
        fresh = build_observation(blend, config)
        cached = build_observation(blend, config, kernels=cache)
        for name in ("images", "weights", "diff_kernels", "model_psf", "transfer", "curvature"):
            assert np.array_equal(getattr(fresh, name), getattr(cached, name)), name
    # one PSF stack (the synthetic blends share their PSFs): computed once for the cache, once per fresh call
    assert len(calls) == 1 + len(blends)
    other = DeblendConfig(kernel_tolerance=1e-3)  # a setting the kernels depend on: a new entry
    build_observation(blends[0], other, kernels=cache)
    assert len(calls) == 2 + len(blends)


def test_deblending_with_the_cache_gives_the_same_result():
    blend, _ = make_synthetic_blend(5, n_sources=4, shape=(51, 51))
    a = deblend_blend(blend, DeblendConfig())
    b = deblend_blend(blend, DeblendConfig(), kernels=DifferenceKernels())
    assert np.array_equal(a.sed, b.sed) and np.array_equal(a.morphs, b.morphs)
    assert np.array_equal(a.children["flux"], b.children["flux"])
