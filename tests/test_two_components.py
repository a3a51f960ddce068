"""Two-component sources: scarlet's bulge/disk split of the start, and the threshold that grants it.

``hpcblend.deblend.initialization.split_core_and_halo`` divides a bright source's initial morphology
between a core (the part above ``core_fraction``) and a halo (the morphology capped there, a flat top),
as scarlet does; ``deblend.multi_component_snr`` (300) decides which sources get the two.
"""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from hpcblend.config import DeblendConfig, default_job
from hpcblend.deblend import build_observation, deblend_blend, detection_snr
from hpcblend.deblend.initialization import component_layout, initialize_sources, split_core_and_halo
from hpcblend.errors import ConfigError
from hpcblend.io.blend_data import BlendData
from hpcblend.simulate.synthetic import double_gaussian_psf


def _profile(shape=(15, 15), centre=(7, 7), sigma=2.0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    s = np.exp(-0.5 * ((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / sigma ** 2)
    return (s / s.max()).astype(np.float32)


def test_split_core_and_halo_adds_up_to_the_profile():
    profile, neighbour = _profile(), _profile(centre=(3, 3))
    morphs = np.stack([profile, neighbour, profile])  # the halo, another source, the halo's core
    peaks = np.array([[7, 7], [3, 3], [7, 7]])
    owner = np.array([0, 1, 0])  # component_layout's: the core (2) belongs to child 0, whose halo is component 0
    weights = np.ones((5, 15, 15), dtype=np.float32)
    t = 0.25
    split_core_and_halo(morphs, peaks, owner, weights, t)
    halo, other, inner = morphs
    assert halo.max() == pytest.approx(1.0) and inner.max() == pytest.approx(1.0)
    np.testing.assert_allclose(t * halo + (1 - t) * inner, profile, atol=1e-6)
    assert np.all(halo[profile >= t] == pytest.approx(1.0))  # a flat top where the core has light
    assert np.all(inner[profile <= t] == 0.0)
    np.testing.assert_array_equal(other, neighbour)  # another source's morphology is not touched


def test_split_keeps_the_plain_core_where_a_band_has_no_data():
    """A peak without data in some band: its detection image is not its profile there; core = S ≥ t, halo = S."""
    profile = _profile()
    morphs = np.stack([profile, profile])
    weights = np.ones((5, 15, 15), dtype=np.float32)
    weights[2, 6:9, 6:9] = 0.0  # i band saturated at the core
    split_core_and_halo(morphs, np.array([[7, 7], [7, 7]]), np.array([0, 0]), weights, 0.1)
    np.testing.assert_array_equal(morphs[0], profile)
    np.testing.assert_array_equal(morphs[1], np.where(profile >= 0.1, profile, 0.0))


def test_initialize_sources_splits_the_cores_component_layout_gives():
    """The deblender's path: ``component_layout``'s owner tells ``initialize_sources`` which halo each core
    splits with; the pair adds back up to the one-component start, and the faint neighbour is untouched."""
    blend, _ = _colour_gradient_galaxy()
    peaks = np.array([[25, 25], [45, 8]])  # the galaxy and a peak on its faint outskirts
    config = DeblendConfig()
    obs = build_observation(blend, config)
    owner, core = component_layout(obs, peaks, config)
    np.testing.assert_array_equal(owner, [0, 1, 0])  # only the galaxy reaches multi_component_snr
    np.testing.assert_array_equal(core, [False, False, True])
    _, single, _, _ = initialize_sources(obs, peaks, config)
    _, split, _, _ = initialize_sources(obs, peaks[owner], config, owner=owner)
    t = config.core_fraction
    np.testing.assert_allclose(t * split[0] + (1 - t) * split[2], single[0], atol=1e-6)
    assert split[0].max() == pytest.approx(1.0) and split[2].max() == pytest.approx(1.0)
    assert np.count_nonzero(split[2]) < np.count_nonzero(split[0])  # the core is the inner part
    np.testing.assert_array_equal(split[1], single[1])


def _colour_gradient_galaxy(seed=0):
    """One galaxy, one peak: a red compact bulge (σ 1.2 px) and a blue disk (σ 3.5 px) centred 4 px away
    (a real HSC galaxy of detection S/N 391 looks so: its g and r light peaks 4 px from its i peak)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:51, :51].astype(float)
    bulge = np.exp(-0.5 * ((y - 25) ** 2 + (x - 25) ** 2) / 1.2 ** 2)
    disk = np.exp(-0.5 * ((y - 21) ** 2 + (x - 25) ** 2) / 3.5 ** 2)
    sed_bulge = 1.2 * np.array([300., 1500., 4000., 6000., 7000.]) / bulge.sum()
    sed_disk = 1.2 * np.array([3000., 3000., 2000., 1500., 1200.]) / disk.sum()
    psfs = np.stack([double_gaussian_psf(41, s) for s in (1.7, 1.6, 1.5, 1.5, 1.6)])
    images = np.stack([fftconvolve(a * bulge + b * disk, p, mode="same")
                       for a, b, p in zip(sed_bulge, sed_disk, psfs)])
    images = (images + rng.normal(0.0, 1.0, images.shape)).astype(np.float32)
    truth = sed_bulge * bulge.sum() + sed_disk * disk.sum()
    blend = BlendData(id=1, source="colour_gradient", bands=tuple("grizy"), images=images,
                      variance=np.ones_like(images), mask=None, footprint=np.ones((51, 51), dtype=bool),
                      psfs=psfs, peaks=np.array([[25, 25]]))
    return blend, truth


def test_a_colour_gradient_needs_two_components():
    """At the old threshold (500) this galaxy had one component and one colour: χ²/px 6.0. It gets two now."""
    blend, truth = _colour_gradient_galaxy()
    config = DeblendConfig()
    snr = detection_snr(build_observation(blend, config), blend.peaks)[0]
    assert config.multi_component_snr <= snr < 500
    one = deblend_blend(blend, DeblendConfig(max_components=1))
    assert one.chi2_per_pixel > 4.0  # one colour cannot fit it
    two = deblend_blend(blend, config)
    assert len(two.owner) == 2 and two.converged
    assert two.chi2_per_pixel < 1.1
    np.testing.assert_allclose(two.children["flux"][0], truth, rtol=0.02)


@pytest.mark.parametrize("value", [1.0, 1.5])
def test_core_fraction_must_be_below_one(value):
    """``core_fraction`` divides the split (``1 − t``): 1 or more is refused once, naming the key."""
    with pytest.raises(ConfigError, match=r"key 'deblend.core_fraction': must be < 1"):
        default_job((f"deblend.core_fraction={value}",))
    assert default_job(("deblend.core_fraction=0.5",)).deblend.core_fraction == 0.5
