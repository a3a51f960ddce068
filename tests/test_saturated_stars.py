"""A saturated star keeps its peak and its model (its masked core must not hand its wings to the neighbours)."""

import dataclasses

import numpy as np

from hpcblend.config import DeblendConfig
from hpcblend.deblend import deblend_blend
from hpcblend.io.blends import PEAK_MASKED, classify_peaks, read_blend, write_blend
from hpcblend.io.masks import MASK_PLANES
from hpcblend.simulate.synthetic import make_synthetic_blend

SAT = 1 << MASK_PLANES["SAT"]


def _star_and_neighbours(seed=0, saturate=True):
    """A bright point-like source at the centre of 81x81 px and three faint galaxies 12-20 px away; the
    star's pixels above 5 % of its peak are clipped there and flagged SAT (as a coadd's saturated core)."""
    centers = np.array([[40.0, 40.0], [40.0, 56.0], [25.0, 33.0], [55.0, 28.0]])
    blend, truth = make_synthetic_blend(seed, shape=(81, 81), centers=centers, profile="exponential",
                                        flux_range=(3e3, 6e3), sizes=(1.5, 2.5), psf_sigma=1.6)
    star_flux = np.full(blend.n_bands, 4e6)
    star, _ = make_synthetic_blend(seed, shape=(81, 81), centers=centers[:1], profile="gaussian",
                                   flux_range=(1.0, 1.0), sizes=(0.05, 0.05), psf_sigma=1.6, noise_sigma=1e-9)
    unit = star.images / star.images.sum(axis=(1, 2), keepdims=True)
    images = blend.images + (unit * star_flux[:, None, None]).astype(np.float32)
    mask = np.zeros(images.shape, dtype=np.int32)
    if saturate:
        level = 0.05 * images.max(axis=(1, 2), keepdims=True)
        clipped = images >= level
        images = np.where(clipped, level, images).astype(np.float32)
        mask[clipped] |= SAT
    flux = np.asarray(truth["flux"], dtype=np.float64)
    flux[0] += star_flux
    out = dataclasses.replace(blend, images=images, mask=mask, footprint=np.ones((81, 81), bool))
    return out, flux


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
