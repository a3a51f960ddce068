"""Stored deblended models: pack (one or two components per child), write, read back, render."""

import numpy as np
import pytest

from hpcblend.io.catalog import CatalogWriter
from hpcblend.errors import CatalogError
from hpcblend.io.models import pack_models, read_model, render_model_rgb
from hpcblend.io.schema import MODEL_CHUNK, model_pixel_spec, model_spec

BANDS = ("g", "r", "i")


def _write(path, rows, pixels):
    from mpi4py import MPI

    w = CatalogWriter(str(path), MPI.COMM_SELF, [model_spec(BANDS), model_pixel_spec()], attrs={"bands": "g,r,i"})
    w.write_round({"models": rows, "model_pixels": pixels}, ["u"])
    w.finalize()


def test_two_component_child_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    h, w = 40, 50
    morphs = np.zeros((3, h, w), np.float32)
    boxes = np.array([[5, 25, 10, 40], [10, 18, 20, 28], [20, 39, 2, 47]])  # (y0, y1, x0, x1); 2nd is big: >1 chunk
    for c, (y0, y1, x0, x1) in enumerate(boxes):
        morphs[c, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0))
    sed = rng.uniform(1, 10, (3, 3))
    child = [101, 101, 102]  # child 101: halo + core; child 102: one component
    rows, pixels = pack_models(child, [100] * 3, sed, morphs, boxes, (1000, 2000), BANDS, 0.8,
                               component=[0, 1, 0])
    assert (boxes[2, 1] - boxes[2, 0]) * (boxes[2, 3] - boxes[2, 2]) > MODEL_CHUNK
    _write(tmp_path / "m.h5", rows, pixels)
    m = read_model(tmp_path / "m.h5", 101)
    assert len(m.components) == 2 and m.parent_id == 100
    assert m.box == (1005, 2010, 20, 30)  # union of the two components' boxes, parent frame
    # the child's model is the sum of its components
    expect = np.zeros((3, h, w), np.float32)
    for c in (0, 1):
        expect += sed[c][:, None, None].astype(np.float32) * morphs[c][None]
    np.testing.assert_allclose(m.image(), expect[:, 5:25, 10:40], rtol=1e-6)
    np.testing.assert_allclose(m.flux(), expect.sum(axis=(1, 2)), rtol=1e-5)
    single = read_model(tmp_path / "m.h5", 102)
    np.testing.assert_allclose(single.image()[1], sed[2, 1] * morphs[2, 20:39, 2:47], rtol=1e-6)
    rgb = render_model_rgb(m)
    assert rgb.shape == (20, 30, 3) and rgb.max() > 0
    with pytest.raises(CatalogError, match="no model for id 7"):
        read_model(tmp_path / "m.h5", 7)
