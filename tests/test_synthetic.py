"""Tests of hpcblend.simulate.synthetic: synthetic blends with known truth and the demo collection."""

import os
import time

import numpy as np
import pytest

from hpcblend.io.blends import read_blend, write_blend
from hpcblend.simulate.synthetic import double_gaussian_psf, make_synthetic_blend, write_demo_blends


def _assert_same(a, b):
    blend_a, truth_a = a
    blend_b, truth_b = b
    for name in ("images", "variance", "mask", "footprint", "psfs", "peaks"):
        np.testing.assert_array_equal(getattr(blend_a, name), getattr(blend_b, name))
    for key in truth_a:
        np.testing.assert_array_equal(truth_a[key], truth_b[key])


def test_deterministic():
    _assert_same(make_synthetic_blend(11), make_synthetic_blend(11))
    _assert_same(make_synthetic_blend(11, profile="sersic"), make_synthetic_blend(11, profile="sersic"))
    a, _ = make_synthetic_blend(11)
    b, _ = make_synthetic_blend(12)
    assert not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("profile", ["gaussian", "sersic", "exponential", "devaucouleurs"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_truth_consistent(profile, seed):
    blend, truth = make_synthetic_blend(seed, n_sources=3, profile=profile)
    k, b = truth["flux"].shape
    h, w = blend.shape
    assert (k, b, h, w) == truth["models"].shape == (3, 5, 41, 41)
    # the image holds the sources' whole flux within 0.5 %
    np.testing.assert_allclose(truth["models"].sum(axis=(2, 3)), truth["flux"], rtol=5e-3)
    np.testing.assert_allclose(truth["flux_in_image"], truth["models"].sum(axis=(2, 3)))
    np.testing.assert_allclose(truth["noiseless"], truth["models"].sum(axis=0))
    np.testing.assert_allclose(truth["sed"].sum(axis=1), 1.0)
    np.testing.assert_allclose(truth["flux"].sum(axis=1), truth["total_flux"])
    assert np.all(truth["flux"] > 0)
    assert truth["flux"].sum(axis=1).min() >= 2e3 and truth["flux"].sum(axis=1).max() <= 2e4
    # positions: ≥ 8 px from the edges, ≥ min_separation apart, peaks = rounded truth (y, x)
    y, x = truth["y"], truth["x"]
    assert y.min() >= 7.5 and x.min() >= 7.5 and y.max() <= h - 8.5 and x.max() <= w - 8.5
    d = np.hypot(y[:, None] - y[None, :], x[:, None] - x[None, :])
    assert d[np.triu_indices(k, 1)].min() >= 6.0
    np.testing.assert_array_equal(blend.peaks, np.floor(np.stack([y, x], axis=1) + 0.5))
    assert blend.peaks.dtype == np.int64
    assert blend.footprint[blend.peaks[:, 0], blend.peaks[:, 1]].all()
    # model centroids match the true centres (symmetric profiles)
    yy, xx = np.indices(blend.shape)
    for i in range(k):
        m = truth["models"][i].sum(axis=0)
        assert (m * yy).sum() / m.sum() == pytest.approx(y[i], abs=0.02)
        assert (m * xx).sum() / m.sum() == pytest.approx(x[i], abs=0.02)


def test_blend_planes():
    blend, truth = make_synthetic_blend(5, noise_sigma=(1.0, 2.0, 3.0, 2.0, 1.0), shape=(48, 40))
    assert blend.images.dtype == np.float32 and blend.variance.dtype == np.float32
    assert blend.mask.dtype == np.int32 and not blend.mask.any()
    np.testing.assert_allclose(blend.variance[:, 0, 0], [1.0, 4.0, 9.0, 4.0, 1.0])
    resid = blend.images - truth["noiseless"]
    np.testing.assert_allclose(resid.std(axis=(1, 2)), [1.0, 2.0, 3.0, 2.0, 1.0], rtol=0.1)
    assert blend.psfs.shape == (5, 41, 41) and blend.psfs.dtype == np.float64
    np.testing.assert_allclose(blend.psfs.sum(axis=(1, 2)), 1.0, atol=1e-12)
    c = np.arange(41) - 20
    np.testing.assert_allclose(blend.psfs.sum(axis=2) @ c, 0.0, atol=1e-12)
    # not a pure Gaussian: a wing makes the 2nd moment larger than the core's
    psf = double_gaussian_psf(41, 1.5)
    assert (psf.sum(axis=0) @ c.astype(float) ** 2) > 1.5 ** 2 * 1.5
    # footprint covers the detection threshold region and is smaller than the box
    det = truth["noiseless"].sum(axis=0) > 0.5 * np.sqrt(np.sum(truth["noise_sigma"] ** 2))
    assert blend.footprint[det].all()
    assert 0 < blend.footprint_area < 48 * 40


def test_close_pair_and_arguments():
    blend, truth = make_synthetic_blend(1, centers=[(20.0, 19.0), (20.0, 21.0)], min_separation=2.0)
    assert blend.peaks.tolist() == [[20, 19], [20, 21]]
    with pytest.raises(ValueError):
        make_synthetic_blend(1, bands=("g", "r"))  # 5 psf_sigma for 2 bands
    with pytest.raises(ValueError):
        make_synthetic_blend(1, profile="moffat")
    with pytest.raises(ValueError):
        make_synthetic_blend(1, n_sources=30, shape=(20, 20))


def test_write_read_roundtrip(tmp_path):
    blend, _ = make_synthetic_blend(7, n_sources=4, shape=(50, 45), profile="sersic", blend_id=77)
    path = tmp_path / "77.npz"
    assert write_blend(path, blend) == str(path)
    back = read_blend(path)
    assert back.id == 77 and back.bands == blend.bands and back.origin == blend.origin
    for name in ("images", "variance", "mask", "footprint", "psfs", "peaks"):
        a, b = getattr(blend, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    # stored in the hsc_blends layout: footprint True OUTSIDE, peaks as 'centers'
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["footprint"], ~blend.footprint)
        np.testing.assert_array_equal(data["centers"], blend.peaks)
        assert tuple(data["filters"]) == blend.bands
    # deterministic bytes
    write_blend(tmp_path / "again.npz", blend)
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()


def test_demo_blends(tmp_path):
    t0 = time.perf_counter()
    paths = write_demo_blends(tmp_path / "demo")
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0  # ~0.7 s here; generous for slow CI machines
    assert [os.path.basename(p) for p in paths] == [f"{i}.npz" for i in range(1, 9)]
    blends = [read_blend(p) for p in paths]
    assert [b.id for b in blends] == list(range(1, 9))
    counts = [b.n_peaks for b in blends]
    assert min(counts) == 1 and max(counts) == 6
    assert all(30 <= s <= 80 for b in blends for s in b.shape)
    close = []
    for b in blends:
        p = b.peaks.astype(float)
        d = np.hypot(*(p[:, None, :] - p[None, :, :]).transpose(2, 0, 1))
        close.append(b.n_peaks > 1 and d[np.triu_indices(b.n_peaks, 1)].min() <= 2.0)
    assert sum(close) == 1
    # idempotent: same bytes, files not rewritten
    before = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in paths}
    again = write_demo_blends(tmp_path / "demo")
    assert again == paths
    for p in paths:
        assert os.stat(p).st_mtime_ns == before[p][0]
        assert open(p, "rb").read() == before[p][1]
