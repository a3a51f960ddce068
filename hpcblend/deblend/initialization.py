"""Initial sources of a blend: which peaks get a second component, and their first morphologies and SEDs.

scarlet's initialisation (Melchior et al. 2018, Sect. 3.1, as scarlet_lite does it): every peak
starts as a source whose morphology is cut from the detection image ``Σ_b Y_b/σ_b² / Σ_b 1/σ_b²``
(optionally deconvolved to the model frame), made monotonic (and symmetric) about its peak, above
``init_bg_thresh`` times the detection noise; SEDs come from one joint non-negative least-squares fit
per band. A peak whose detection S/N reaches ``multi_component_snr`` gets a second, *core* component
(:func:`component_layout`); the two start as scarlet splits a source into bulge and disk
(:func:`split_core_and_halo`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import scipy.fft

from hpcblend.config import DeblendConfig
from hpcblend.deblend.observation import Observation, convolve_sources
from hpcblend.kernels import initialization

__all__ = ["DEAD_SOURCE_SED_FRACTION", "SLOPE_PEAK_REACH", "SLOPE_PEAK_RESOLVED_RISE", "SLOPE_PEAK_UNRESOLVED_RATIO",
           "detection_image", "detection_snr", "component_layout", "initialize_sources", "split_core_and_halo",
           "slope_peak_caps"]

#: A source whose initial SED fit gives no flux in any band starts at this fraction of the noise σ_b
#: in every band, so that the fit can still grow it (a zero SED has a zero morphology gradient).
DEAD_SOURCE_SED_FRACTION = 0.1
#: A peak can be on the slope of a brighter peak at most this far away (pixels, Chebyshev).
SLOPE_PEAK_REACH = 24
#: A slope peak rising less than this above the brighter source's profile (σ_det of the detection image)
#: is not resolved from the slope, however high it is (:func:`slope_peak_caps`).
SLOPE_PEAK_RESOLVED_RISE = 10.0
#: A slope peak the data cannot resolve from the slope gets the model PSF's box once this share of its detection
#: value is the brighter source's profile; a resolved one needs ``slope_peak_ratio`` (:func:`slope_peak_caps`).
SLOPE_PEAK_UNRESOLVED_RATIO = 0.2


def detection_image(obs: Observation) -> Tuple[np.ndarray, float]:
    """The observed-frame detection image, (H, W) float32 (counts), and its noise σ_det (counts).

    The band-weighted mean ``Σ_b Y_b/σ_b² / Σ_b 1/σ_b²`` (scarlet's detection image), over the bands
    with data at each pixel: where some bands have zero weight (saturated or masked there) it is the
    mean of the others, instead of a mean that counts the missing bands as 0 (a star saturated in
    three of five bands had 40 % of its core's value there). Pixels with no data in any band
    (:attr:`Observation.no_data`: a saturated core, a bleed trail) are 0: a peak there starts compact
    (the model PSF, :func:`hpcblend.kernels.initialization.init_morphology`), which is a star's shape,
    and grows in the fit.

    Parameters
    ----------
    obs : Observation

    Returns
    -------
    detect : ndarray, shape (H, W), float32
    sigma_det : float
        ``(Σ_b 1/σ_b²)^-½`` with ``σ_b`` = ``obs.noise_rms``.
    """
    band_weight = 1.0 / obs.noise_rms ** 2
    detect = _band_mean(obs.images, obs.weights > 0, band_weight)
    return detect.astype(np.float32), float(1.0 / np.sqrt(band_weight.sum()))


def _band_weighted_sum(band_weight: np.ndarray, planes: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``Σ_b w_b planes_b`` over the first axis of ``planes`` (B, ...), accumulated band by band in ``dtype``.

    Not ``np.tensordot``: a BLAS product splits its sums by the BLAS thread count (a Slurm job sets it to
    ``--cpus-per-task``), and the last bits it changes reached 4e-5 of a fitted flux on real HSC blends.
    """
    total = np.zeros(planes.shape[1:], dtype=dtype)
    for b in range(planes.shape[0]):
        total += dtype(band_weight[b]) * planes[b].astype(dtype, copy=False)
    return total


def _band_mean(images: np.ndarray, has_data: np.ndarray, band_weight: np.ndarray) -> np.ndarray:
    """:func:`detection_image`'s band-weighted mean over the bands with data, float64, for pixels laid out as
    ``images`` (B, ...) with ``has_data`` (B, ...) bool: whole frames or selected pixels alike."""
    total = band_weight.sum()
    mean = _band_weighted_sum(band_weight, images) / total
    partial = has_data.any(axis=0) & ~has_data.all(axis=0)
    if partial.any():
        mean[partial] *= total / _band_weighted_sum(band_weight, has_data[:, partial])
    return mean


def detection_snr(obs: Observation, peaks: np.ndarray) -> np.ndarray:
    """S/N of each peak in the detection image (:func:`detection_image`; noise ``(Σ_b 1/σ_b²)^-½``).

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (K, 2), int (y, x)

    Returns
    -------
    snr : ndarray, shape (K,), float64
    """
    band_weight = 1.0 / obs.noise_rms ** 2
    ys, xs = peaks[:, 0], peaks[:, 1]  # the detection image at the peaks only
    values = _band_mean(obs.images[:, ys, xs], obs.weights[:, ys, xs] > 0, band_weight)
    return values * np.sqrt(band_weight.sum())


def component_layout(obs: Observation, child_peaks: np.ndarray, config: DeblendConfig) -> Tuple[np.ndarray, np.ndarray]:
    """The components to fit: one per child, plus a core for each bright child.

    Parameters
    ----------
    obs : Observation
    child_peaks : ndarray, shape (K, 2), int64
        Peaks (y, x) of the children fitted.
    config : DeblendConfig
        ``max_components`` (2: cores allowed) and ``multi_component_snr``.

    Returns
    -------
    owner : ndarray, shape (C,), int64
        The child of each component: ``0..K-1`` (the main components, in peak
        order), then the children that get a core (detection S/N ≥
        ``multi_component_snr``).
    core : ndarray, shape (C,), bool
        True for the core components (index ≥ K).
    """
    n_children = child_peaks.shape[0]
    owner = np.arange(n_children, dtype=np.int64)
    if config.max_components >= 2 and n_children:
        bright = np.nonzero(detection_snr(obs, child_peaks) >= config.multi_component_snr)[0]
        owner = np.concatenate([owner, bright]).astype(np.int64)
    return owner, np.arange(len(owner)) >= n_children


def _detection_image(obs: Observation, config: DeblendConfig) -> Tuple[np.ndarray, float, float]:
    """The image the morphologies are cut from, (H, W) float32, its threshold and its noise σ_det (counts).

    The detection image (:func:`detection_image`) lives in the observed frame, morphologies in
    the model frame (model PSF): with ``init_deconvolve > 0`` it is deconvolved by the band-weighted
    difference kernel (Tikhonov) for the *shapes*, keeping the support where the observed detection
    image is above the threshold ``init_bg_thresh × σ_det``.
    """
    h, w = obs.images.shape[1:]
    detect, sigma_det = detection_image(obs)
    threshold = config.init_bg_thresh * sigma_det
    if config.init_deconvolve > 0:
        hp, wp = obs.fft_shape
        band_weight = 1.0 / obs.noise_rms ** 2
        t = _band_weighted_sum((band_weight / band_weight.sum()).astype(np.float32), obs.transfer, np.complex64)
        spec = scipy.fft.rfft2(detect, s=(hp, wp), workers=1)
        power = (t.real ** 2 + t.imag ** 2).astype(np.float32)
        spec *= np.conj(t) / (power + np.float32(config.init_deconvolve))
        sharp = scipy.fft.irfft2(spec, s=(hp, wp), workers=1)[:h, :w]
        sharp = np.where(detect > threshold, np.maximum(sharp, 0), 0)
        detect = sharp.astype(np.float32)
    return detect, threshold, sigma_det


def initialize_sources(obs: Observation, peaks: np.ndarray, config: DeblendConfig,
                       owner: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial morphologies and SEDs of all sources (scarlet's initialisation).

    Morphologies come from the detection image ``Σ_b Y_b/σ_b² / Σ_b 1/σ_b²``
    via :func:`hpcblend.kernels.initialization.init_morphology` (threshold
    ``init_bg_thresh × σ_det``); SEDs from a joint non-negative least-squares fit
    per band (:func:`hpcblend.kernels.initialization.fit_seds`).

    Parameters
    ----------
    obs : Observation
    peaks : ndarray, shape (K, 2), int
        Peaks (y, x).
    config : DeblendConfig
    owner : ndarray, shape (K,), int, optional
        The child of each component, as :func:`component_layout` lays them out: a component ``c`` with
        ``owner[c] != c`` is the core of a two-component source, whose halo is component ``owner[c]`` (at the
        same peak). The two morphologies start as :func:`split_core_and_halo` divides the source's; every
        SED is then fitted jointly. None: one component per peak.

    Returns
    -------
    sed : ndarray, shape (K, B), float64
    morphs : ndarray, shape (K, H, W), float32
    boxes : ndarray, shape (K, 4), int64
        The kernels' per-source boxes (y0, y1, x0, x1), half-open.
    caps : ndarray, shape (K,), int64
        :func:`slope_peak_caps`: box limits the fit keeps (0: none).
    """
    h, w = obs.images.shape[1:]
    detect, threshold, sigma_det = _detection_image(obs, config)
    k = peaks.shape[0]
    morphs = np.zeros((k, h, w), dtype=np.float32)
    boxes = np.zeros((k, 4), dtype=np.int64)
    for i in range(k):
        boxes[i] = initialization.init_morphology(detect, int(peaks[i, 0]), int(peaks[i, 1]), threshold,
                                                  config.init_symmetric, config.box_margin, morphs[i])
    if owner is not None:
        split_core_and_halo(morphs, peaks, np.asarray(owner, dtype=np.int64), obs.weights, config.core_fraction)
    caps = slope_peak_caps(detect, threshold, peaks, morphs, config, obs.no_data, sigma_det)
    for i in np.flatnonzero(caps):
        _cap_box(morphs[i], boxes[i], peaks[i], int(caps[i]))
    conv = convolve_sources(morphs, obs, boxes)
    sed = initialization.fit_seds(obs.images, obs.weights, conv.flat, conv.offsets, conv.grown, config.sed_ridge)
    dead = ~(sed > 0).any(axis=1)
    sed[dead] = obs.noise_rms[None, :] * DEAD_SOURCE_SED_FRACTION
    return sed, morphs, boxes, caps


def split_core_and_halo(morphs: np.ndarray, peaks: np.ndarray, owner: np.ndarray, weights: np.ndarray,
                        fraction: float) -> None:
    """Divide each two-component source's initial morphology between its core and its halo, in place.

    scarlet's split of a source into bulge and disk (scarlet_lite's ``FactorizedInitialization``, its
    ``disk_percentile``, "the same algorithm as scarlet main"): with ``t = fraction`` and the source's
    initial morphology S (peak 1, monotonic), the core starts as ``max(S − t, 0) / (1 − t)`` and the halo
    as ``min(S, t) / t``, a flat top. Both are monotonic with peak 1, ``t · halo + (1 − t) · core = S``,
    and they overlap far less than S and its inner part, so the fit can give the inner and outer light
    different colours. On real HSC blends that is what a colour gradient needs: a galaxy whose g- and
    r-band light peaks 4 px from its i-band peak ended at χ²/px 5.3 with the core started as S where
    ``S ≥ t`` (and the halo as S), and reaches 1.09 (scarlet_lite: 1.06; profiling/README.md).

    A peak without data in some band keeps that older start (core: S where ``S ≥ t``, else 0; halo: S).
    Its detection image lacks those bands at the core, so S is not the source's profile there (a red star
    saturated in r, i and z rises to a flat plateau), and the split fitted it worse (χ²/px 5.09 → 9.4).

    Parameters
    ----------
    morphs : ndarray, shape (K, H, W), float32
        Initial morphologies; a core and its halo both hold the source's S on entry.
    peaks : ndarray, shape (K, 2), int
        Peak pixel (y, x) of each component.
    owner : ndarray, shape (K,), int
        :func:`component_layout`'s owner: component ``c`` with ``owner[c] != c`` is a core, and component
        ``owner[c]`` its halo; the others are left as they are.
    weights : ndarray, shape (B, H, W)
        Inverse variance; 0 where a band has no data.
    fraction : float
        ``t``, in (0, 1).
    """
    py, px = peaks[:, 0], peaks[:, 1]
    full_data = (weights[:, py, px] > 0).all(axis=0)
    for i in np.flatnonzero(owner != np.arange(len(owner))):
        core_morph, halo_morph = morphs[i], morphs[owner[i]]
        if not full_data[i]:
            core_morph[core_morph < fraction] = 0.0
            continue
        profile = core_morph.copy()
        np.maximum(profile - fraction, 0.0, out=core_morph)
        core_morph /= 1.0 - fraction
        np.minimum(profile, fraction, out=halo_morph)
        halo_morph /= fraction


def slope_peak_caps(detect: np.ndarray, threshold: float, peaks: np.ndarray, morphs: np.ndarray,
                    config: DeblendConfig, no_data: Optional[np.ndarray] = None,
                    sigma_det: Optional[float] = None) -> np.ndarray:
    """Box limits of faint peaks sitting on a brighter source's slope.

    A peak ``i`` whose detection-image value ``D_i`` is at least ``config.slope_peak_ratio`` explained by a
    brighter source ``j``'s (larger initial flux ``D_j Σ S_j``) monotonic profile there,
    ``D_j S_j(p_i) >= ratio · D_i`` with ``S_j`` the (not symmetrised) monotonic projection of the
    detection image about ``p_j`` within :data:`SLOPE_PEAK_REACH` pixels, i.e. whose rise above the
    saddle towards ``j`` is small, is a bump on ``j``'s slope: a knot of ``j`` or a faint neighbour
    in front of it. Left free, its monotonic morphology extends downhill along ``j``'s outskirts and
    takes their light (a faint galaxy 1.5″ from a bright irregular one got 3.9× its flux, the bright one
    −24 %). Its box is limited to ``config.slope_peak_box`` pixels from its peak; a slope peak the data
    cannot resolve from the slope it sits on, to the compact start's box, the model PSF's
    (:data:`hpcblend.kernels.initialization.COMPACT_HALF_SIZE`): at 4 px its morphology still held a
    pedestal of the bright source's light (profiling/README.md, "Deblender accuracy: slope peaks").
    Unresolved: fainter than ``config.slope_peak_resolved_snr`` (its S/N in ``detect``), or rising less
    than :data:`SLOPE_PEAK_RESOLVED_RISE` σ_det above ``j``'s profile, ``D_i − D_j S_j(p_i)`` (a faint
    neighbour near a very bright core is high only by the core's light: one 7 px from a galaxy of
    S/N 400 got 8× its flux with 4 px). An unresolved peak needs less of the slope under it: a share of
    :data:`SLOPE_PEAK_UNRESOLVED_RATIO` (its free morphology cannot be told from the slope's light, and took
    it: the simulated bright set's faint neighbours, 28 → 26 % median error, the set 10.0 → 8.5 %). The
    brighter sources are taken brightest first, and the first whose profile reaches that share at ``p_i``
    settles the peak: the profile value used, in the share and in the rise, is the highest among the
    brighter sources taken up to that one.

    Parameters
    ----------
    detect : ndarray, shape (H, W), float32
        The detection image the initial morphologies are cut from.
    threshold : float
        Its background threshold (counts).
    peaks : ndarray, shape (K, 2), int
    morphs : ndarray, shape (K, H, W)
        The initial morphologies (peak 1): their sums rank the sources by flux.
    config : DeblendConfig
        ``slope_peak_ratio`` and ``slope_peak_box`` (either 0: no limits).
    no_data : ndarray, shape (H, W), bool, optional
        :attr:`Observation.no_data`: a peak on such a pixel (a saturated core, a bleed trail) has no
        measured height and is never limited (a limited box stays limited through the fit: a galaxy whose
        peak a masked column crossed kept 4 px, χ²/px 1.2 → 40).
    sigma_det : float, optional
        Noise σ of ``detect`` (counts): with it (and ``config.slope_peak_resolved_snr > 0``), unresolved
        slope peaks get the compact box; without it, every slope peak gets ``config.slope_peak_box``.

    Returns
    -------
    ndarray, shape (K,), int64
        The limit (pixels from the peak along each axis), 0 for none.
    """
    k = len(peaks)
    caps = np.zeros(k, dtype=np.int64)
    if config.slope_peak_ratio <= 0 or config.slope_peak_box <= 0 or k < 2:
        return caps
    py, px = peaks[:, 0].astype(np.int64), peaks[:, 1].astype(np.int64)
    height = detect[py, px]
    unknown = np.zeros(k, dtype=bool) if no_data is None else no_data[py, px]
    flux = height * morphs.reshape(k, -1).sum(axis=1, dtype=np.float64)
    h, w = detect.shape
    resolving = sigma_det is not None and sigma_det > 0 and config.slope_peak_resolved_snr > 0
    ratio = min(SLOPE_PEAK_UNRESOLVED_RATIO, config.slope_peak_ratio) if resolving else config.slope_peak_ratio
    marked = np.zeros(k, dtype=bool)
    under = np.zeros(k)  # brighter sources' monotonic profile at each peak, brightest first, until one marks it
    for j in np.argsort(-flux):
        near = ((flux < flux[j]) & (np.abs(py - py[j]) <= SLOPE_PEAK_REACH)
                & (np.abs(px - px[j]) <= SLOPE_PEAK_REACH) & ~marked & ~unknown
                & ((py != py[j]) | (px != px[j])))  # not a component of the same source (its core)
        if not near.any() or not height[j] > threshold:
            continue
        y0, y1 = max(py[j] - SLOPE_PEAK_REACH, 0), min(py[j] + SLOPE_PEAK_REACH + 1, h)
        x0, x1 = max(px[j] - SLOPE_PEAK_REACH, 0), min(px[j] + SLOPE_PEAK_REACH + 1, w)
        profile = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        initialization.init_morphology(np.ascontiguousarray(detect[y0:y1, x0:x1]), int(py[j] - y0), int(px[j] - x0),
                                       threshold, False, 0, profile)
        idx = np.flatnonzero(near)
        under[idx] = np.maximum(under[idx], height[j] * profile[py[idx] - y0, px[idx] - x0])
        marked[idx[under[idx] >= ratio * height[idx]]] = True
    caps[marked & (under >= config.slope_peak_ratio * height)] = config.slope_peak_box
    if resolving:
        rise = height - under  # above the brighter source's profile; 0 where no dip separates them
        unresolved = marked & ((height < config.slope_peak_resolved_snr * sigma_det)
                               | (rise < SLOPE_PEAK_RESOLVED_RISE * sigma_det))
        caps[unresolved] = min(initialization.COMPACT_HALF_SIZE, config.slope_peak_box)
    return caps


def _cap_box(morph: np.ndarray, box: np.ndarray, peak: np.ndarray, cap: int) -> None:
    """Limit an initial morphology's box to ``cap`` pixels from its peak (in place; zero outside)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    ny0, ny1 = max(y0, int(peak[0]) - cap), min(y1, int(peak[0]) + cap + 1)
    nx0, nx1 = max(x0, int(peak[1]) - cap), min(x1, int(peak[1]) + cap + 1)
    keep = morph[ny0:ny1, nx0:nx1].copy()
    morph[y0:y1, x0:x1] = 0.0
    morph[ny0:ny1, nx0:nx1] = keep
    box[:] = (ny0, ny1, nx0, nx1)
