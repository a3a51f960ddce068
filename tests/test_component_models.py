"""ComponentModels: each component's convolved model over its own grown box, against dense arrays."""

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend import ComponentModels, build_observation, convolve_sources, deblend_blend, initialize_sources
from hpcblend.deblend.component_models import grown_boxes
from hpcblend.simulate.synthetic import make_synthetic_blend


def _random_models(seed=0, shape=(30, 34), nb=3):
    rng = np.random.default_rng(seed)
    boxes = np.array([[2, 10, 3, 12], [12, 29, 0, 20], [5, 5, 7, 7], [0, 30, 20, 34]], dtype=np.int64)  # one empty
    grown = grown_boxes(boxes, 3, shape)
    dense = np.zeros((len(boxes), nb) + shape, np.float32)
    for c, (y0, y1, x0, x1) in enumerate(grown):
        dense[c, :, y0:y1, x0:x1] = rng.random((nb, y1 - y0, x1 - x0))
    return ComponentModels.from_dense(dense, grown), dense, rng


def test_blocks_hold_the_dense_array_and_nothing_more():
    models, dense, _ = _random_models()
    np.testing.assert_array_equal(models.dense(), dense)
    assert tuple(models.grown[2]) == (0, 0, 0, 0) and models.component(2).size == 0  # an empty box stays empty
    area = ((models.grown[:, 1] - models.grown[:, 0]) * (models.grown[:, 3] - models.grown[:, 2])).sum()
    assert models.flat.size == 3 * area < dense.size


def test_render_and_child_models_sum_the_components():
    models, dense, rng = _random_models(1)
    sed = rng.uniform(0.5, 2.0, (4, 3))
    owner = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(models.render(sed), np.einsum("cb,cbhw->bhw", sed, dense), rtol=1e-6)
    children = models.child_models(sed, owner, 3)
    assert children.shape == (3, 3, 30, 34) and not children[2].any()
    np.testing.assert_allclose(children[1], sed[1, :, None, None] * dense[1] + sed[2, :, None, None] * dense[2],
                               rtol=1e-6)


def test_bands_and_components_scatter_like_the_dense_array():
    models, dense, _ = _random_models(2)
    band_ok = np.array([True, False, True, True])
    wide = models.with_bands(band_ok)
    ref = np.zeros((4, 4, 30, 34), np.float32)
    ref[:, band_ok] = dense
    np.testing.assert_array_equal(wide.dense(), ref)
    dest = np.array([0, 3, 4, 6])
    scattered = models.scattered(dest, 7)
    ref = np.zeros((7, 3, 30, 34), np.float32)
    ref[dest] = dense
    np.testing.assert_array_equal(scattered.dense(), ref)


def test_convolved_sources_are_stored_per_source_not_per_frame():
    """A blend's convolved sources take the pixels of their grown boxes (the heavy tail's memory), and the
    deblender's result keeps them so."""
    blend, _ = make_synthetic_blend(seed=4, n_sources=5, shape=(90, 110))
    cfg = DeblendConfig()
    obs = build_observation(blend, cfg)
    _, morphs, boxes, _ = initialize_sources(obs, np.asarray(blend.peaks, dtype=np.int64), cfg)
    conv = convolve_sources(morphs, obs, boxes)
    assert isinstance(conv, ComponentModels)
    assert conv.flat.size < 0.8 * morphs.shape[0] * obs.images.shape[0] * morphs[0].size
    result = deblend_blend(blend, cfg)
    assert isinstance(result.conv, ComponentModels)
    dense_model = np.einsum("cb,cbhw->bhw", result.sed.astype(np.float32), result.conv.dense())
    np.testing.assert_allclose(result.model_observed, dense_model, rtol=1e-5, atol=1e-6)
