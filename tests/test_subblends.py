"""Sub-blends (hpcblend.deblend.subblends): grouping, crops, and fits that agree with the one-piece fit."""

import dataclasses

import numpy as np
import pytest

import hpcblend.deblend.subblends as subblends
from hpcblend.config import DeblendConfig
from hpcblend.deblend import deblend_blend
from hpcblend.deblend.subblends import _domain, crop_observation, sub_blend_labels
from hpcblend.geometry import Box
from hpcblend.simulate.synthetic import make_synthetic_blend


def _clusters(seed, n_clusters=4, per=5, gap=150, height=60):
    """A wide blend of ``n_clusters`` groups of ``per`` exponential galaxies, ``gap`` px apart along x."""
    rng = np.random.default_rng(seed)
    centers = [[rng.uniform(15, height - 15), 30 + c * gap + rng.uniform(-12, 12)]
               for c in range(n_clusters) for _ in range(per)]
    return make_synthetic_blend(seed, shape=(height, n_clusters * gap + 40), centers=np.array(centers),
                                profile="exponential", psf_sigma=1.6)


def test_labels_join_overlapping_grown_boxes_and_the_components_of_one_child():
    boxes = np.array([[0, 10, 0, 10], [0, 10, 30, 40], [0, 10, 100, 110], [50, 60, 100, 110]])
    owner = np.array([0, 1, 2, 3])
    n, labels = sub_blend_labels(boxes, owner, reach=5)
    assert n == 4 and list(labels) == [0, 1, 2, 3]
    n, labels = sub_blend_labels(boxes, owner, reach=11)  # 0-1 gap of 20 px closes at reach > 10
    assert n == 3 and labels[0] == labels[1] and len(set(labels[1:])) == 3
    n, labels = sub_blend_labels(boxes, np.array([0, 1, 2, 0]), reach=5)  # a core and its halo stay together
    assert n == 3 and labels[0] == labels[3]


def test_one_group_shortcut_agrees_with_the_sparse_graph_labels():
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    from hpcblend.deblend.subblends import _reaches_all

    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        c = int(rng.integers(1, 12))
        adjacency = rng.random((c, c)) < rng.uniform(0.05, 0.6)
        adjacency = adjacency | adjacency.T
        n, _ = connected_components(csr_matrix(adjacency), directed=False)
        assert _reaches_all(adjacency) == (n == 1)
        seen.add(n == 1)
    assert seen == {True, False}
    chain = np.array([[0, 10, 20 * i, 20 * i + 10] for i in range(6)])  # joined only through its neighbours
    n, labels = sub_blend_labels(chain, np.arange(6), reach=6)
    assert n == 1 and not labels.any()


def test_crop_observation_weights_only_the_groups_domain():
    blend, _ = _clusters(0, n_clusters=2)
    from hpcblend.deblend.observation import build_observation

    obs = build_observation(blend, DeblendConfig())
    boxes = np.array([[20, 30, 20, 30], [20, 30, 60, 70]])
    crop = Box((10, 10), (40, 80))
    domain = _domain(boxes, 5, crop)
    sub = crop_observation(obs, crop, domain)
    assert sub.images.shape[1:] == (40, 80) and sub.transfer.shape[1] >= 40 + obs.kernel_radius
    assert np.array_equal(sub.images, obs.images[:, 10:50, 10:90])
    assert np.all(sub.weights[:, ~domain] == 0)
    assert np.array_equal(sub.weights[:, domain], obs.weights[:, 10:50, 10:90][:, domain])
    assert domain[15, 15] and domain[15, 50] and not domain[15, 35] and not domain[30, 15]  # crop coordinates


@pytest.fixture(scope="module")
def cluster_fits():
    out = []
    for seed in range(3):
        blend, truth = _clusters(seed)
        one = deblend_blend(blend, DeblendConfig(sub_blends=False))
        sub = deblend_blend(blend, DeblendConfig(sub_blends=True))
        out.append((truth, one, sub))
    return out


def test_separate_groups_are_fitted_as_sub_blends_and_agree_with_truth(cluster_fits):
    for truth, one, sub in cluster_fits:
        assert sub.n_sub_blends == 4 and one.n_sub_blends == 1
        assert sub.converged and not sub.flags["flag_not_converged"]
        tf = np.asarray(truth["flux"])
        err_one = np.median(np.abs(one.children["flux_model"] - tf) / tf)
        err_sub = np.median(np.abs(sub.children["flux_model"] - tf) / tf)
        assert err_sub <= err_one + 0.005, (err_sub, err_one)
        assert sub.chi2_per_pixel <= one.chi2_per_pixel * 1.01
        # the loss history is the blend's: it ends where the measured chi2 says
        assert len(sub.loss_history) == sub.iterations


def test_a_blend_in_one_group_is_fitted_exactly_as_before():
    blend, _ = make_synthetic_blend(3, n_sources=4, shape=(51, 51))
    a = deblend_blend(blend, DeblendConfig(sub_blends=False))
    b = deblend_blend(blend, DeblendConfig(sub_blends=True))
    assert b.n_sub_blends == 1
    assert np.array_equal(a.sed, b.sed) and np.array_equal(a.morphs, b.morphs)
    assert a.iterations == b.iterations and np.array_equal(a.loss_history, b.loss_history)


def test_boxes_that_outgrow_their_reserve_are_regrouped(monkeypatch):
    """With no growth reserve, boxes grow past their domains: the groups are re-checked and refitted."""
    blend, truth = _clusters(1, n_clusters=3, gap=60)
    one = deblend_blend(blend, DeblendConfig(sub_blends=False))
    calls = []
    real = subblends._fit_group

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(subblends, "GROWTH_RESERVE", 0)
    monkeypatch.setattr(subblends, "_fit_group", counting)
    sub = deblend_blend(blend, DeblendConfig(sub_blends=True))
    assert len(calls) > 3, calls  # some group was fitted again
    assert sub.converged and 1 <= sub.n_sub_blends <= 3
    tf = np.asarray(truth["flux"])
    err_one = np.median(np.abs(one.children["flux_model"] - tf) / tf)
    err_sub = np.median(np.abs(sub.children["flux_model"] - tf) / tf)
    assert err_sub <= err_one + 0.005, (err_sub, err_one)


def test_n_sub_blends_reaches_the_catalog(tmp_path):
    from hpcblend.config import default_job, job_from_dict, job_to_dict
    from hpcblend.io.blends import write_blend
    from hpcblend.io.catalog import read_table
    from hpcblend.parallel.driver import run_job

    blend, _ = _clusters(2, n_clusters=2)
    write_blend(str(tmp_path / "7.npz"), dataclasses.replace(blend, id=7))
    data = job_to_dict(default_job())
    data["input"] = {"kind": "blends", "paths": [str(tmp_path / "7.npz")]}
    data["run"]["progress"] = False
    data.pop("base_dir", None)
    job = job_from_dict(data, base_dir=str(tmp_path))
    out = run_job(job, output=str(tmp_path / "c.h5"))
    rows = read_table(out, "blends")
    assert list(rows["n_sub_blends"]) == [2]
