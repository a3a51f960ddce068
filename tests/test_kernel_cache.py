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


# --------------------------------------------------------------------------------------------------------------
# Numba's on-disk cache: a kernel whose callee in another file changed must not load stale machine code
# --------------------------------------------------------------------------------------------------------------


def test_stale_kernel_cache_is_deleted_when_any_kernel_source_changes(tmp_path):
    import os

    from hpcblend.kernels import _cache

    src = tmp_path / "kernels"
    src.mkdir()
    (src / "fit.py").write_text("def fit(): pass\n")
    (src / "operators.py").write_text("CAP = 1.0\n")
    digest = _cache.sources_digest(str(src))
    cache = tmp_path / "cache"
    cache.mkdir()
    kept = ["other.thing-1.py311.nbi", "notes.txt"]
    compiled = ["fit.fit_blend-242.py311.nbi", "fit.fit_blend-242.py311.1.nbc", "operators.prox-10.py311.nbi"]
    for name in kept + compiled:
        (cache / name).write_text("x")

    assert _cache.refresh_stale_cache([str(cache)], digest, ["fit", "operators"]) == [str(cache)]  # no stamp yet
    assert sorted(os.listdir(cache)) == sorted(kept + [_cache.STAMP_NAME])
    # compiled again from these sources: kept while no source changes
    for name in compiled:
        (cache / name).write_text("x")
    assert _cache.refresh_stale_cache([str(cache)], digest, ["fit", "operators"]) == []
    assert set(compiled) <= set(os.listdir(cache))
    # a callee changes in another file (operators.py): every kernel's cache goes, fit.py's too
    (src / "operators.py").write_text("CAP = 0.8\n")
    new = _cache.sources_digest(str(src))
    assert new != digest
    assert _cache.refresh_stale_cache([str(cache)], new, ["fit", "operators"]) == [str(cache)]
    assert not set(compiled) & set(os.listdir(cache))
    # a cache directory that does not exist yet starts with the current stamp (nothing compiled there)
    fresh = tmp_path / "fresh"
    assert _cache.refresh_stale_cache([str(fresh)], new, ["fit"]) == [str(fresh)]
    assert (fresh / _cache.STAMP_NAME).read_text().strip() == new


def test_importing_the_kernels_stamps_their_cache_with_the_current_sources():
    import os

    import hpcblend.kernels as kernels
    from hpcblend.kernels import _cache, fit

    dirs = _cache.cache_dirs([fit])
    assert dirs  # fit_blend is cached on disk
    digest = _cache.sources_digest(os.path.dirname(kernels.__file__))
    for d in dirs:
        with open(os.path.join(d, _cache.STAMP_NAME)) as f:
            assert f.read().strip() == digest


_SIGNATURES_SCRIPT = r'''
import importlib, sys
import hpcblend.kernels as K
from hpcblend.deblend import warm_up
from hpcblend.units.tract import warm_up_tract
from hpcblend.cli import main

def signatures():
    out = set()
    for m in K.__all__:
        mod = importlib.import_module(f"hpcblend.kernels.{m}")
        for n, o in vars(mod).items():
            if hasattr(o, "signatures") and getattr(o, "__module__", "") == mod.__name__:
                out |= {f"{m}.{n}{s}" for s in o.signatures}
    return out

warm_up()
warm_up_tract()
before = signatures()
main(["run", "--output", sys.argv[1], "--set", "run.progress=false"])
print("NEW:" + "|".join(sorted(signatures() - before)))
'''


def test_the_warm_up_compiles_every_kernel_signature_a_tract_run_uses(tmp_path):
    """What ./setup.sh compiles is what a run calls: no kernel is compiled for new argument types during the
    built-in tract run after the warm-up (a first run after set-up would pay for it in its first patch)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", _SIGNATURES_SCRIPT, str(tmp_path / "run.h5")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    new = [line for line in p.stdout.splitlines() if line.startswith("NEW:")]
    assert new == ["NEW:"], new
