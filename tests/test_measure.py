"""The compiled per-box child measurements against the full-frame NumPy reference."""

import numpy as np
import pytest

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, convolve_sources, initialize_sources
from hpcblend.measure.children import chi2_per_pixel, measure_children, measure_children_reference
from hpcblend.simulate.synthetic import make_synthetic_blend


@pytest.mark.parametrize("seed", [1, 5])
def test_measure_kernel_matches_numpy_reference(seed):
    blend, _ = make_synthetic_blend(seed=seed, n_sources=4)
    cfg = DeblendConfig()
    obs = build_observation(blend, cfg)
    sed, morphs, boxes = initialize_sources(obs, np.asarray(blend.peaks, dtype=np.int64), cfg)
    rng = np.random.default_rng(seed)
    sed = sed * rng.uniform(0.5, 1.5, sed.shape)  # any model will do: the two must agree on it
    conv = convolve_sources(morphs, obs)
    var = np.asarray(blend.variance, dtype=np.float32)
    # a masked pixel inside the footprint exercises the "model stands in for data" branch
    weights = obs.weights.copy()
    ys, xs = np.nonzero(blend.footprint)
    weights[:, ys[len(ys) // 2], xs[len(xs) // 2]] = 0
    ref = measure_children_reference(obs.images, var, weights, blend.footprint, sed, morphs, conv)
    got, chi2 = measure_children(obs.images, var, weights, blend.footprint, sed, morphs, conv, boxes,
                                 obs.kernel_radius)
    for key in ("flux_model", "flux", "flux_err", "x", "y", "blendedness"):
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=1e-3 * np.nanmax(np.abs(ref[key])),
                                   err_msg=key)
    model_observed = (conv * sed[:, :, None, None].astype(np.float32)).sum(axis=0)
    assert chi2 == pytest.approx(chi2_per_pixel(obs.images, weights, model_observed), rel=1e-4)
    assert np.all(got["flux_err"] > 0)
    assert np.all((got["blendedness"] >= 0) & (got["blendedness"] <= 1))
