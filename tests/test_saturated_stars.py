"""A saturated star keeps its peak and its model (its masked core must not hand its wings to the neighbours)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend import deblend_blend
from hpcblend.io.blends import PEAK_MASKED, classify_peaks, read_blend, write_blend
from hpcblend.io.masks import MASK_PLANES
from hpcblend.simulate.synthetic import make_saturated_star_blend, make_synthetic_blend

SAT = 1 << MASK_PLANES["SAT"]


def _star_and_neighbours(seed=0, saturate=True):
    """A bright point-like source at the centre of 81x81 px and three faint galaxies 12-20 px away; the
    star's pixels above 5 % of its peak are clipped there and flagged SAT (as a coadd's saturated core)."""
    return make_saturated_star_blend(seed, (40.0, 40.0), 4e6, saturation=0.05 if saturate else None, shape=(81, 81),
                                     galaxy_yx=np.array([[40.0, 56.0], [25.0, 33.0], [55.0, 28.0]]),
                                     galaxy_sizes=(1.5, 2.5))


def test_a_peak_on_a_saturated_core_is_kept_and_other_masked_peaks_are_not():
    peaks = np.array([[5, 5], [6, 6], [7, 7]])
    bad = np.zeros((2, 10, 10), bool)
    bad[:, 5, 5] = bad[:, 6, 6] = True
    sat = np.zeros_like(bad)
    sat[1, 6, 6] = True  # saturated in one band: a star's core
    flags = classify_peaks(peaks, np.ones((10, 10), bool), bad, sat)
    assert list((flags & PEAK_MASKED) != 0) == [True, False, False]
    assert (classify_peaks(peaks, np.ones((10, 10), bool), bad)[1] & PEAK_MASKED) != 0


def test_saturated_star_is_modelled_and_its_neighbours_keep_their_flux(tmp_path):
    blend, flux = _star_and_neighbours()
    path = write_blend(str(tmp_path / "1.npz"), blend)
    read = read_blend(path)
    assert read.peak_flags[0] == 0  # the star's peak, on SAT pixels in every band, is kept
    result = deblend_blend(read, DeblendConfig())
    assert result.flags["n_peaks_dropped"] == 0
    assert result.converged and not result.flags["flag_bad_fit"]
    assert result.chi2_per_pixel < 2.0, result.chi2_per_pixel
    neighbours = result.children["flux_model"][1:]
    rel = np.abs(neighbours - flux[1:]) / flux[1:]
    assert np.median(rel) < 0.15, rel  # dropping the star's peak put its wings into them: +100 % and more


def test_star_whose_masked_core_holds_no_values_is_modelled(tmp_path):
    """Pipelines differ in what a saturated core's pixels hold: a clipped plateau, interpolated values, or
    nothing (NaN). NaN on pixels the mask marks bad is not corrupt data (it was a BlendDataError for
    the whole blend); the star starts compact and is fitted from its wings."""
    blend, flux = _star_and_neighbours()
    core = (blend.mask & SAT) != 0
    images = np.where(core, np.nan, blend.images).astype(np.float32)
    path = write_blend(str(tmp_path / "1.npz"), dataclasses.replace(blend, images=images))
    read = read_blend(path)
    assert np.array_equal(read.images == 0, core) or np.all(read.images[core] == 0)
    result = deblend_blend(read, DeblendConfig())
    assert result.converged and not result.flags["flag_bad_fit"]
    assert result.chi2_per_pixel < 2.0, result.chi2_per_pixel
    rel = np.abs(result.children["flux_model"] - flux) / flux
    assert np.median(rel[1:]) < 0.15, rel


def test_a_peak_on_a_masked_column_is_not_held_to_a_small_box():
    """A bleed trail (SAT in every band, image 0) through a galaxy's peak: the detection image is 0 at the
    peak, which made it look like a bump on its neighbour's slope, and the slope-peak limit held its box
    to ``slope_peak_box`` for the whole fit (a real HSC blend: χ²/px 1.2 → 40)."""
    from hpcblend.deblend.initialization import slope_peak_caps

    centers = np.array([[30.0, 30.0], [30.0, 44.0]])
    blend, truth = make_synthetic_blend(3, shape=(61, 75), centers=centers, profile="exponential",
                                        flux_range=(2e4, 2e4), sizes=(3.0, 3.0), psf_sigma=1.6)
    mask = blend.mask.copy() if blend.mask is not None else np.zeros(blend.images.shape, np.int32)
    images = blend.images.copy()
    mask[:, :, 30] |= SAT
    images[:, :, 30] = 0.0
    bled = dataclasses.replace(blend, images=images, mask=mask)
    config = DeblendConfig()
    clean = deblend_blend(blend, config)
    result = deblend_blend(bled, config)
    assert not result.flags["flag_bad_fit"] and result.converged
    assert result.chi2_per_pixel < 1.5 * clean.chi2_per_pixel, (result.chi2_per_pixel, clean.chi2_per_pixel)
    rel = np.abs(result.children["flux_model"] - truth["flux"]) / truth["flux"]
    assert np.all(rel < 0.1), rel
    box = result.boxes[0]
    assert min(box[1] - box[0], box[3] - box[2]) > 2 * config.slope_peak_box + 1, box
    # the criterion itself: with the hole not known, the galaxy on the column is limited
    detect = np.zeros((61, 75), np.float32)
    detect[20:41, 31:60] = 5.0
    peaks = np.array([[30, 30], [30, 44]])
    morphs = np.ones((2, 61, 75), np.float32)
    no_data = np.zeros((61, 75), bool)
    no_data[:, 30] = True
    assert slope_peak_caps(detect, 1.0, peaks, morphs, config)[0] > 0
    assert slope_peak_caps(detect, 1.0, peaks, morphs, config, no_data)[0] == 0


def test_detection_image_averages_the_bands_with_data():
    from hpcblend.deblend.initialization import detection_image
    from hpcblend.deblend.observation import build_observation

    blend, _ = _star_and_neighbours()
    images = blend.images.copy()
    images[1, 10, 10] = 0.0  # one band masked at (10, 10)
    mask = blend.mask.copy()
    mask[1, 10, 10] |= SAT
    obs = build_observation(dataclasses.replace(blend, images=images, mask=mask), DeblendConfig())
    detect, sigma = detection_image(obs)
    core = ((blend.mask & SAT) != 0).all(axis=0)
    assert core.sum() > 4 and np.array_equal(obs.no_data, core)
    assert np.all(detect[core] == 0)
    bw = 1.0 / obs.noise_rms ** 2
    others = np.delete(np.arange(len(bw)), 1)
    expect = (bw[others] * blend.images[others, 10, 10]).sum() / bw[others].sum()
    np.testing.assert_allclose(detect[10, 10], expect, rtol=1e-5)
    full = (bw[:, None] * blend.images[:, 20, 20:25]).sum(axis=0) / bw.sum()
    np.testing.assert_allclose(detect[20, 20:25], full, rtol=1e-6)
    assert sigma == 1.0 / np.sqrt(bw.sum())


def test_stars_set_script_writes_readable_blends_with_saturated_cores(tmp_path):
    """``profiling/make_blend_sets.py --set stars`` (the saturated-star set of profiling/README) is seeded and
    readable: every star's peak is on SAT pixels in every band, and the same seed gives the same bytes."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiling",
                          "make_blend_sets.py")
    for out in ("a", "b"):
        r = subprocess.run([sys.executable, script, str(tmp_path / out), "--set", "stars", "--n", "3", "--seed", "2"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "a"))
    assert len(names) == 3 and names == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        blend = read_blend(str(tmp_path / "a" / name))
        cy, cx = blend.peaks[0]
        assert np.all(blend.mask[:, cy, cx] & SAT) and blend.footprint.all()
