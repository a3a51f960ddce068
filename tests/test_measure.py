"""The compiled per-box child measurements against the full-frame NumPy reference."""

import numpy as np
import pytest

from hpcblend.config import DeblendConfig
from hpcblend.deblend import build_observation, convolve_sources, initialize_sources
from hpcblend.kernels import convolution
from hpcblend.measure.children import chi2_per_pixel, measure_children, measure_children_reference
from hpcblend.simulate.synthetic import make_synthetic_blend


@pytest.mark.parametrize("seed", [1, 5])
def test_measure_kernel_matches_numpy_reference(seed):
    blend, _ = make_synthetic_blend(seed=seed, n_sources=4)
    cfg = DeblendConfig()
    obs = build_observation(blend, cfg)
    sed, morphs, boxes, _ = initialize_sources(obs, np.asarray(blend.peaks, dtype=np.int64), cfg)
    rng = np.random.default_rng(seed)
    sed = sed * rng.uniform(0.5, 1.5, sed.shape)  # any model will do: the two must agree on it
    conv = convolve_sources(morphs, obs, boxes)  # per-source blocks on small grids
    hp, wp = obs.fft_shape
    dense = np.stack([convolution.convolve_morphology(m, obs.transfer, hp, wp) for m in morphs])  # whole frames
    np.testing.assert_allclose(conv.dense(), dense, atol=2e-6 * dense.max())
    var = np.asarray(blend.variance, dtype=np.float32)
    # a masked pixel inside the footprint exercises the "model stands in for data" branch
    weights = obs.weights.copy()
    ys, xs = np.nonzero(blend.footprint)
    weights[:, ys[len(ys) // 2], xs[len(xs) // 2]] = 0
    ref = measure_children_reference(obs.images, var, weights, blend.footprint, sed, morphs, dense)
    got, chi2 = measure_children(obs.images, var, weights, blend.footprint, sed, morphs, conv, boxes)
    for key in ("flux_model", "flux", "flux_err", "x", "y", "blendedness"):
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=1e-3 * np.nanmax(np.abs(ref[key])),
                                   err_msg=key)
    model_observed = (dense * sed[:, :, None, None].astype(np.float32)).sum(axis=0)
    assert chi2 == pytest.approx(chi2_per_pixel(obs.images, weights, model_observed), rel=1e-4)
    assert np.all(got["flux_err"] > 0)
    assert np.all((got["blendedness"] >= 0) & (got["blendedness"] <= 1))


def test_model_flux_is_the_flux_inside_the_frame():
    """A source on the frame's edge: its model flux is the light the frame holds, not the model-frame sum.

    Before, ``flux_model`` was ``a Σ S``: the model-frame light of a source on the edge that the PSF spreads
    beyond the frame counted too (up to +50 % on simulated blends with truth). An interior source keeps
    ``a Σ S`` (the difference kernels conserve flux).
    """
    blend, _ = make_synthetic_blend(seed=3, n_sources=2)
    cfg = DeblendConfig()
    obs = build_observation(blend, cfg)
    h, w = blend.shape
    peaks = np.array([[h // 2, 0], [h // 2, w // 2]], dtype=np.int64)  # on the left edge; in the middle
    sed, morphs, boxes, _ = initialize_sources(obs, peaks, cfg)
    morphs[:] = 0
    yy, xx = np.indices((h, w))
    for k, (py, px) in enumerate(peaks):
        morphs[k] = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 2.0 ** 2))
        boxes[k] = (max(py - 8, 0), min(py + 9, h), max(px - 8, 0), min(px + 9, w))
        morphs[k][:boxes[k, 0]] = 0
        morphs[k][boxes[k, 1]:] = 0
        morphs[k][:, :boxes[k, 2]] = 0
        morphs[k][:, boxes[k, 3]:] = 0
    conv = convolve_sources(morphs, obs, boxes)
    var = np.asarray(blend.variance, dtype=np.float32)
    got, _ = measure_children(obs.images, var, obs.weights, blend.footprint, sed, morphs, conv, boxes)
    model_frame = sed * morphs.sum(axis=(1, 2), dtype=np.float64)[:, None]
    in_frame = sed * conv.dense().sum(axis=(2, 3), dtype=np.float64)
    np.testing.assert_allclose(got["flux_model"], in_frame, rtol=1e-4)
    np.testing.assert_allclose(got["flux_model"][1], model_frame[1], rtol=1e-3)
    assert np.all(got["flux_model"][0] < 0.9 * model_frame[0])  # the PSF takes light off the edge
