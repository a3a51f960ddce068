"""Small synthetic blends with known truth (NumPy only, no GalSim).

For tests, benchmarks and the built-in demo job: :func:`make_synthetic_blend`
draws a few galaxies with random positions, shapes and SEDs, convolved with a
per-band double-Gaussian PSF, adds Gaussian noise, and returns the blend as
:class:`~hpcblend.io.blends.BlendData` together with the truth;
:func:`write_demo_blends` writes a small varied collection of them in the
hsc_blends npz layout.

Rendering (per source, once per blend):

1. the morphology (elliptical Gaussian, or Sérsic n=1 / n=4 with a smooth
   taper to zero between 3.75 and 5 half-light radii) is sampled at the centres
   of an ``oversample`` × ``oversample`` sub-pixel grid covering a stamp large
   enough for the profile plus 5 PSF wing widths, and normalised to sum 1
   (this *is* the flux normalisation: the drawn profile holds exactly its true
   flux, whatever the sampling of a cuspy centre);
2. it is convolved on the sub-pixel grid with the analytic transfer function of
   the band's PSF (continuous double Gaussian), then summed into pixels
   (pixel-box integration), so the image equals ``(profile ⊗ PSF ⊗ pixel)``
   sampled at pixel centres and the stamp holds the source's whole flux
   (circular wrap-around < 1e-6 by the stamp margin);
3. the stamp times the band flux is added into the image, clipped at its edges.

Sources are kept far enough from the image edges that the image holds at
least 99.5 % of each one's flux (the margin needed is measured on its stamp;
at least ``edge_margin`` = 8 px); if that is impossible for the requested
shape, the margin shrinks towards 8 px and ``truth["flux_in_image"]`` says
how much landed in the image.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence, Union

import numpy as np

from hpcblend.io.blends import DEFAULT_BANDS
from hpcblend.io.blends import BlendData, blend_arrays
from hpcblend.io.masks import mask_bits
from hpcblend.io.npz import atomic_write, npz_bytes

__all__ = [
    "make_synthetic_blend",
    "make_saturated_star_blend",
    "double_gaussian_psf",
    "write_demo_blends",
    "DEMO_BLEND_SPECS",
]

_FLUX_IN_IMAGE_MIN = 0.995
_SIGMA_PER_HLR = 1.0 / math.sqrt(2.0 * math.log(2.0))  # Gaussian sigma / half-light radius
_SERSIC_B = {1.0: 1.678346990016661, 4.0: 7.669249443855356}
_TAPER_START, _TAPER_END = 3.75, 5.0  # Sérsic taper, in half-light radii
#: Sérsic indices a profile name draws from (0.5 stands for the Gaussian).
_PROFILE_INDICES = {"gaussian": (0.5,), "sersic": (1.0, 4.0), "exponential": (1.0,), "devaucouleurs": (4.0,)}


def _sersic_b(n: float) -> float:
    """b_n with Γ(2n) = 2 γ(2n, b_n) (Ciotti & Bertin 1999 expansion for other n)."""
    if n in _SERSIC_B:
        return _SERSIC_B[n]
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _as_per_band(value, n_bands: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        arr = np.full(n_bands, float(arr[0]))
    if arr.shape != (n_bands,):
        raise ValueError(f"{name}: need one value or {n_bands} (one per band), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: values must be finite and > 0, got {arr.tolist()}")
    return arr


def double_gaussian_psf(size: int, sigma: float, wing_fraction: float = 0.1,
                        wing_scale: float = 2.5) -> np.ndarray:
    """Pixel-integrated circular double-Gaussian PSF image.

    ``(1 - f) N(0, σ²) + f N(0, (s σ)²)``, integrated over unit pixels,
    centred on pixel ``(size // 2, size // 2)``, normalised to sum 1.

    Parameters
    ----------
    size : int
        Odd side in pixels.
    sigma : float
        Core σ in pixels.
    wing_fraction, wing_scale : float
        Flux fraction f of the wide wing and its width relative to the core.

    Returns
    -------
    ndarray, shape (size, size), float64
    """
    if size <= 0 or size % 2 == 0:
        raise ValueError(f"double_gaussian_psf: size must be odd and positive, got {size}")
    edges = np.arange(size + 1, dtype=np.float64) - size // 2 - 0.5
    out = np.zeros((size, size))
    for frac, sig in ((1.0 - wing_fraction, sigma), (wing_fraction, sigma * wing_scale)):
        if frac <= 0:
            continue
        cdf = np.array([0.5 * (1.0 + math.erf(e / (math.sqrt(2.0) * sig))) for e in edges])
        g = np.diff(cdf)
        out += frac * np.outer(g, g)
    return out / out.sum()


def _profile_extent(profile_n: float, r_half: float) -> float:
    """Radius (px, along the major axis) beyond which the profile is zero or negligible."""
    if profile_n == 0.5:
        return 5.3 * r_half * _SIGMA_PER_HLR  # flux beyond: exp(-14) ~ 1e-6
    return _TAPER_END * r_half


def _render_source(offset: tuple, profile_n: float, r_half: float, q: float, theta: float,
                   psf_sigma: np.ndarray, wing_fraction: float, wing_scale: float,
                   oversample: int) -> np.ndarray:
    """Stamps (B, N, N), each summing to 1, of one source at sub-pixel ``offset`` from the centre pixel."""
    s = oversample
    wing_reach = 5.0 * float(np.max(psf_sigma)) * (wing_scale if wing_fraction > 0 else 1.0)
    half = int(math.ceil(_profile_extent(profile_n, r_half) + wing_reach)) + 2
    n = 2 * half + 1
    u = (np.arange(n * s, dtype=np.float64) - (s - 1) / 2.0) / s  # sub-pixel centres in pixel units
    dy = (u - (half + offset[0]))[:, None]
    dx = (u - (half + offset[1]))[None, :]
    ct, st = math.cos(theta), math.sin(theta)
    xp = dx * ct + dy * st
    yp = -dx * st + dy * ct
    r = np.sqrt(xp * xp + (yp / q) ** 2)
    if profile_n == 0.5:
        sig = r_half * _SIGMA_PER_HLR
        img = np.exp(-0.5 * (r / sig) ** 2)
    else:
        b = _sersic_b(profile_n)
        img = np.exp(-b * (r / r_half) ** (1.0 / profile_n))
        t = np.clip((r / r_half - _TAPER_START) / (_TAPER_END - _TAPER_START), 0.0, 1.0)
        img *= np.cos(0.5 * np.pi * t) ** 2
    img /= img.sum()
    g_hat = np.fft.rfft2(img)
    ky = np.fft.fftfreq(n * s, d=1.0 / s)[:, None]
    kx = np.fft.rfftfreq(n * s, d=1.0 / s)[None, :]
    k2 = ky * ky + kx * kx
    stamps = np.empty((len(psf_sigma), n, n))
    for b_i, sig in enumerate(psf_sigma):
        otf = (1.0 - wing_fraction) * np.exp(-2.0 * np.pi ** 2 * sig ** 2 * k2)
        if wing_fraction > 0:
            otf += wing_fraction * np.exp(-2.0 * np.pi ** 2 * (sig * wing_scale) ** 2 * k2)
        conv = np.fft.irfft2(g_hat * otf, s=img.shape)
        stamp = conv.reshape(n, s, n, s).sum(axis=(1, 3))
        stamps[b_i] = stamp / stamp.sum()
    return stamps


def _required_margin(stamp_sum: np.ndarray, max_loss: float) -> int:
    """Smallest d with ≤ max_loss/4 of the flux beyond d px of the centre on each of the 4 sides."""
    half = stamp_sum.shape[0] // 2
    tot = stamp_sum.sum()
    prof_y = stamp_sum.sum(axis=1) / tot
    prof_x = stamp_sum.sum(axis=0) / tot
    limit = max_loss / 4.0
    for d in range(half + 1):
        tails = (prof_y[:half - d].sum(), prof_y[half + d + 1:].sum(),
                 prof_x[:half - d].sum(), prof_x[half + d + 1:].sum())
        if max(tails) <= limit:
            return d
    return half


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of ``radius`` px (NumPy shifts)."""
    h, w = mask.shape
    pad = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for oy in range(-radius, radius + 1):
        for ox in range(-radius, radius + 1):
            if oy * oy + ox * ox <= radius * radius:
                out |= pad[radius + oy:radius + oy + h, radius + ox:radius + ox + w]
    return out


def _place_sources(rng: np.random.Generator, offsets: np.ndarray, margins: np.ndarray, shape: tuple,
                   min_separation: float, edge_margin: float) -> np.ndarray:
    """Integer centres (K, 2) so that centre+offset are ≥ min_separation apart and inside the margins."""
    h, w = shape
    k = len(offsets)
    floor_margin = int(math.ceil(edge_margin))
    for relax in range(int(max(0, margins.max() - floor_margin)) + 1):
        m = np.maximum(margins - relax, floor_margin)
        if np.any(h <= 2 * m) or np.any(w <= 2 * m):
            continue
        for _attempt in range(50):
            centres = np.zeros((k, 2), dtype=np.int64)
            ok = True
            for i in range(k):
                for _try in range(100):
                    cy = int(rng.integers(m[i], h - m[i]))
                    cx = int(rng.integers(m[i], w - m[i]))
                    pos = np.array([cy, cx]) + offsets[i]
                    if i == 0 or np.all(np.hypot(*(centres[:i] + offsets[:i] - pos).T) >= min_separation):
                        centres[i] = (cy, cx)
                        break
                else:
                    ok = False
                    break
            if ok:
                return centres
    raise ValueError(f"make_synthetic_blend: cannot place {k} sources at least {min_separation} px "
                     f"apart and {edge_margin} px from the edges of a {h}x{w} image")


def _check_arguments(n_bands, psf_sigma, noise_sigma, shape, psf_size, oversample, psf_wing_fraction,
                     psf_wing_scale, min_separation, flux_range, sizes, centers, n_sources, profile) -> tuple:
    """``(psf_sigma (B,), noise (B,), (h, w), centers (K, 2) or None, K, profile)`` checked; ValueError otherwise."""
    if n_bands == 0:
        raise ValueError("make_synthetic_blend: need at least one band")
    psf_sig = _as_per_band(psf_sigma, n_bands, "psf_sigma")
    noise = _as_per_band(noise_sigma, n_bands, "noise_sigma")
    h, w = (int(v) for v in shape)
    if psf_size <= 0 or psf_size % 2 == 0:
        raise ValueError(f"make_synthetic_blend: psf_size must be odd, got {psf_size}")
    if oversample < 5 or oversample % 2 == 0:
        raise ValueError(f"make_synthetic_blend: oversample must be odd and >= 5, got {oversample}")
    if not 0.0 <= psf_wing_fraction < 1.0 or psf_wing_scale <= 0:
        raise ValueError("make_synthetic_blend: need 0 <= psf_wing_fraction < 1 and psf_wing_scale > 0")
    if min_separation < 1.5:
        raise ValueError(f"make_synthetic_blend: min_separation must be >= 1.5 px, got {min_separation}")
    if not (0 < flux_range[0] <= flux_range[1]) or not (0 < sizes[0] <= sizes[1]):
        raise ValueError("make_synthetic_blend: flux_range and sizes need 0 < lo <= hi")
    if centers is not None:
        centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
        n_sources = len(centers)
    if n_sources < 1:
        raise ValueError(f"make_synthetic_blend: n_sources must be >= 1, got {n_sources}")
    profile = profile.lower()
    if profile not in _PROFILE_INDICES:
        raise ValueError(f"make_synthetic_blend: unknown profile {profile!r}; one of {sorted(_PROFILE_INDICES)}")
    return psf_sig, noise, (h, w), centers, n_sources, profile


def _draw_source_parameters(rng: np.random.Generator, k: int, n_bands: int, flux_range, sizes,
                            indices: tuple) -> dict:
    """The K sources' parameters, drawn in a fixed order (the result is a pure function of the generator state).

    Returns ``total_flux`` (K,) log-uniform, ``sed`` (K, B) rows summing to 1, ``r_half``, ``q``, ``theta``,
    ``sersic_n`` (K,) and ``offsets`` (K, 2) sub-pixel offsets in [-0.5, 0.5).
    """
    total_flux = np.exp(rng.uniform(np.log(flux_range[0]), np.log(flux_range[1]), k))
    sed = rng.uniform(0.1, 1.0, (k, n_bands))
    sed /= sed.sum(axis=1, keepdims=True)
    r_half = rng.uniform(sizes[0], sizes[1], k)
    q = rng.uniform(0.4, 1.0, k)
    theta = rng.uniform(0.0, np.pi, k)
    sersic_n = rng.choice(np.array(indices), k)
    offsets = rng.uniform(-0.5, 0.5, (k, 2))
    return {"total_flux": total_flux, "sed": sed, "r_half": r_half, "q": q, "theta": theta, "sersic_n": sersic_n,
            "offsets": offsets}


def _peak_pixels(pos: np.ndarray, shape: tuple) -> np.ndarray:
    """True centres (K, 2) rounded half-up to peak pixels (int64); ValueError if one is outside or two coincide."""
    h, w = shape
    peaks = np.floor(pos + 0.5).astype(np.int64)
    if np.any(peaks < 0) or np.any(peaks[:, 0] >= h) or np.any(peaks[:, 1] >= w):
        raise ValueError("make_synthetic_blend: a centre lies outside the image")
    if len({tuple(p) for p in peaks.tolist()}) != len(peaks):
        raise ValueError("make_synthetic_blend: two sources round to the same peak pixel")
    return peaks


def _source_models(stamps: list, int_centres: np.ndarray, flux: np.ndarray, shape: tuple) -> np.ndarray:
    """Per-source noiseless images (K, B, H, W) float64: each unit stamp times its band fluxes, clipped at the edges."""
    h, w = shape
    models = np.zeros((len(stamps), flux.shape[1], h, w))
    for i, st in enumerate(stamps):
        half = st.shape[1] // 2
        cy, cx = (int(v) for v in int_centres[i])
        y0, x0 = cy - half, cx - half
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + st.shape[1]), min(w, x0 + st.shape[2])
        if ye > ys and xe > xs:
            models[i, :, ys:ye, xs:xe] = st[:, ys - y0:ye - y0, xs - x0:xe - x0] * flux[i][:, None, None]
    return models


def _detection_footprint(noiseless: np.ndarray, noise: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Pixels where the band-summed noiseless image exceeds 0.5 sqrt(sum sigma^2), plus the peaks, grown by 2 px."""
    detection = noiseless.sum(axis=0) > 0.5 * math.sqrt(float(np.sum(noise ** 2)))
    detection[peaks[:, 0], peaks[:, 1]] = True
    return _grow(detection, 2)


def make_synthetic_blend(
    seed: int,
    n_sources: int = 3,
    shape: Sequence[int] = (41, 41),
    bands: Sequence[str] = DEFAULT_BANDS,
    psf_sigma: Union[float, Sequence[float]] = (1.7, 1.6, 1.5, 1.5, 1.6),
    psf_size: int = 41,
    noise_sigma: Union[float, Sequence[float]] = 1.0,
    profile: str = "gaussian",
    min_separation: float = 6.0,
    flux_range: Sequence[float] = (2e3, 2e4),
    sizes: Sequence[float] = (1.0, 3.0),
    blend_id: int = 1,
    *,
    centers: Optional[np.ndarray] = None,
    edge_margin: float = 8.0,
    psf_wing_fraction: float = 0.1,
    psf_wing_scale: float = 2.5,
    oversample: int = 5,
    source: Optional[str] = None,
) -> tuple:
    """A synthetic multi-band blend with known truth.

    Parameters
    ----------
    seed : int
        Seed of ``np.random.default_rng``; the result is a pure function of
        all arguments.
    n_sources : int
        Number of sources K (ignored when ``centers`` is given).
    shape : (H, W)
        Image size in pixels.
    bands : sequence of str
        Band names (B of them).
    psf_sigma : float or sequence of B floats
        Core σ (px) of each band's double-Gaussian PSF.
    psf_size : int
        Odd side of the PSF images returned in ``BlendData.psfs``.
    noise_sigma : float or sequence of B floats
        Per-band Gaussian noise σ (counts); the variance plane is σ².
    profile : {"gaussian", "sersic", "exponential", "devaucouleurs"}
        Galaxy profile; ``"sersic"`` picks n=1 or n=4 at random per source.
    min_separation : float
        Minimum distance (px) between true centres (≥ 1.5 so peaks differ).
    flux_range : (lo, hi)
        Range of the total (all-band) flux per source, drawn log-uniformly.
    sizes : (lo, hi)
        Range of the half-light radius along the major axis (px), uniform.
    blend_id : int
        ``BlendData.id``.
    centers : array (K, 2), optional
        Fixed true centres (y, x) in px instead of random ones (must be at
        least 1.5 px apart and inside the image; no edge margin enforced).
    edge_margin : float
        Minimum distance (px) of a random centre from the image edges.
    psf_wing_fraction, psf_wing_scale : float
        Flux fraction and relative width of the PSF's wide Gaussian wing.
    oversample : int
        Odd sub-pixel sampling factor per axis (≥ 5).
    source : str, optional
        ``BlendData.source``; default ``"synthetic:seed=<seed>"``.

    Returns
    -------
    blend : BlendData
        ``images`` float32 (noiseless + noise), ``variance`` float32 = σ²,
        ``mask`` int32 zeros, ``footprint`` = pixels where the band-summed
        noiseless image exceeds 0.5·sqrt(Σ_b σ_b²), plus the peak pixels,
        grown by a 2-px disk; ``psfs`` float64 double Gaussians (sum 1);
        ``peaks`` int64 (K, 2) = true centres rounded half-up, (y, x).
    truth : dict
        ``x``, ``y`` (K,) true centres (px, pixel centres at integers);
        ``flux`` (K, B) total flux per band (counts) — the whole drawn source,
        of which ``flux_in_image`` (K, B) landed inside the image (≥ 99.5 %
        unless the image is too small for the margins); ``sed`` (K, B) (rows
        sum to 1); ``total_flux`` (K,); ``noiseless`` (B, H, W) float64;
        ``models`` (K, B, H, W) float64 per-source noiseless images;
        ``r_half``, ``q`` (axis ratio), ``theta`` (rad, major axis from +x
        towards +y), ``sersic_n`` (0.5 for Gaussian) (K,); ``noise_sigma`` (B,).

    Raises
    ------
    ValueError
        Bad arguments, or the sources cannot be placed.
    """
    rng = np.random.default_rng(seed)
    bands = tuple(str(b) for b in bands)
    n_bands = len(bands)
    psf_sig, noise, (h, w), centers, k, profile = _check_arguments(
        n_bands, psf_sigma, noise_sigma, shape, psf_size, oversample, psf_wing_fraction, psf_wing_scale,
        min_separation, flux_range, sizes, centers, n_sources, profile)
    p = _draw_source_parameters(rng, k, n_bands, flux_range, sizes, _PROFILE_INDICES[profile])
    offsets = p["offsets"]
    if centers is not None:
        int_centres = np.floor(centers + 0.5).astype(np.int64)
        offsets = centers - int_centres
    stamps = [_render_source(tuple(offsets[i]), float(p["sersic_n"][i]), float(p["r_half"][i]), float(p["q"][i]),
                             float(p["theta"][i]), psf_sig, psf_wing_fraction, psf_wing_scale, oversample)
              for i in range(k)]
    if centers is None:
        margins = np.array([_required_margin(st.sum(axis=0), 1.0 - _FLUX_IN_IMAGE_MIN) + 1
                            for st in stamps], dtype=np.int64)
        margins = np.maximum(margins, int(math.ceil(edge_margin)))
        int_centres = _place_sources(rng, offsets, margins, (h, w), min_separation, edge_margin)
    pos = int_centres + offsets
    peaks = _peak_pixels(pos, (h, w))

    flux = p["total_flux"][:, None] * p["sed"]
    models = _source_models(stamps, int_centres, flux, (h, w))
    noiseless = models.sum(axis=0)
    images = (noiseless + rng.standard_normal((n_bands, h, w)) * noise[:, None, None]).astype(np.float32)
    variance = np.broadcast_to((noise ** 2).astype(np.float32)[:, None, None], (n_bands, h, w)).copy()
    psfs = np.stack([double_gaussian_psf(psf_size, float(sg), psf_wing_fraction, psf_wing_scale)
                     for sg in psf_sig])
    blend = BlendData(
        id=int(blend_id),
        source=source if source is not None else f"synthetic:seed={seed}",
        bands=bands,
        images=images,
        variance=variance,
        mask=np.zeros((n_bands, h, w), dtype=np.int32),
        footprint=_detection_footprint(noiseless, noise, peaks),
        psfs=psfs,
        peaks=peaks,
        origin=(0, 0),
        meta={"synthetic": True, "seed": seed, "profile": profile},
    )
    truth = {
        "x": pos[:, 1].copy(),
        "y": pos[:, 0].copy(),
        "flux": flux,
        "flux_in_image": models.sum(axis=(2, 3)),
        "sed": p["sed"],
        "total_flux": p["total_flux"],
        "noiseless": noiseless,
        "models": models,
        "r_half": p["r_half"],
        "q": p["q"],
        "theta": p["theta"],
        "sersic_n": p["sersic_n"].astype(np.float64),
        "noise_sigma": noise,
    }
    return blend, truth


def make_saturated_star_blend(seed: int, star_yx: Sequence[float], star_flux: float,
                              saturation: Optional[float] = 0.05, shape: Sequence[int] = (64, 64),
                              galaxy_yx: Optional[np.ndarray] = None, n_galaxies: int = 3,
                              galaxy_sizes: Sequence[float] = (1.5, 3.5), psf_sigma: float = 1.6) -> tuple:
    """A bright point-like star with a saturated, masked core among faint galaxies.

    :func:`make_synthetic_blend` draws K = 1 + n_galaxies exponential sources of 3000–6000 counts,
    the first at ``star_yx`` (the star's peak) and the others at ``galaxy_yx`` (default: uniform in
    the image at least 6 px from its edges, seeded), noise σ = 1 (counts); the star (a Gaussian of σ 0.05 px
    through the same PSF) adds ``star_flux`` counts per band at ``star_yx``. Pixels at or above
    ``saturation`` × the band's brightest pixel are clipped at that level and flagged ``SAT``, as a
    coadd's saturated core. The footprint is the whole image.

    Parameters
    ----------
    seed : int
        Seed of the galaxies' positions, shapes, fluxes and noise.
    star_yx : (float, float)
        Star centre (y, x), pixels.
    star_flux : float
        Star flux per band (counts).
    saturation : float or None
        Clip level as a fraction of each band's brightest pixel; None: no clipping, no mask.
    shape : (H, W)
    galaxy_yx : ndarray, shape (n_galaxies, 2), optional
    n_galaxies : int
        Galaxies drawn when ``galaxy_yx`` is not given.
    galaxy_sizes : (lo, hi)
        Half-light radius range of the galaxies (pixels).
    psf_sigma : float
        Core σ of the double-Gaussian PSF in every band (pixels).

    Returns
    -------
    blend : BlendData
        Peaks: the star first, then the galaxies.
    flux : ndarray, shape (K, B)
        True flux of each peak's sources per band (counts; the star's includes the faint source under it).

    Raises
    ------
    ValueError
        From :func:`make_synthetic_blend`: a size, flux or PSF argument out of range.
    """
    if galaxy_yx is None:
        galaxy_yx = np.random.default_rng(seed).uniform(6, np.array([shape[0] - 6, shape[1] - 6]),
                                                        size=(n_galaxies, 2))
    centers = np.vstack([np.asarray(star_yx, dtype=float)[None], np.asarray(galaxy_yx, dtype=float)])
    blend, truth = make_synthetic_blend(seed, shape=shape, centers=centers, profile="exponential",
                                        flux_range=(3e3, 6e3), sizes=galaxy_sizes, psf_sigma=psf_sigma,
                                        edge_margin=0.0)
    point, _ = make_synthetic_blend(seed, shape=shape, centers=centers[:1], profile="gaussian", flux_range=(1.0, 1.0),
                                    sizes=(0.05, 0.05), psf_sigma=psf_sigma, noise_sigma=1e-9, edge_margin=0.0)
    unit = point.images / point.images.sum(axis=(1, 2), keepdims=True)
    images = blend.images + (unit * star_flux).astype(np.float32)
    mask = np.zeros(images.shape, dtype=np.int32)
    if saturation is not None:
        level = saturation * images.max(axis=(1, 2), keepdims=True)
        clipped = images >= level
        images = np.where(clipped, level, images).astype(np.float32)
        mask[clipped] |= mask_bits("SAT")
    flux = np.array(truth["flux"], dtype=np.float64)
    flux[0] += star_flux
    return dataclasses.replace(blend, images=images, mask=mask, footprint=np.ones(tuple(shape), bool)), flux


#: The demo collection: (shape, n_sources, profile, sizes, fixed centres or None), ids 1.. in order.
DEMO_BLEND_SPECS: tuple = (
    ((30, 30), 1, "gaussian", (1.0, 2.5), None),
    ((36, 40), 2, "sersic", (1.0, 2.0), None),
    ((41, 41), 3, "gaussian", (1.0, 3.0), None),
    ((36, 44), 3, "gaussian", (1.0, 1.8), ((17.0, 19.0), (17.0, 21.0), (24.3, 29.6))),  # 2-px pair
    ((50, 56), 4, "sersic", (1.0, 2.5), None),
    ((64, 60), 5, "gaussian", (1.0, 3.0), None),
    ((72, 80), 6, "sersic", (1.0, 2.5), None),
    ((80, 80), 6, "gaussian", (1.0, 3.0), None),
)


def write_demo_blends(directory: Union[str, os.PathLike], n_blends: int = 8, seed: int = 0) -> list:
    """Write the built-in demo collection: ``<directory>/<id>.npz`` for ids 1..n_blends.

    Blends follow :data:`DEMO_BLEND_SPECS` (cycled with new seeds beyond 8):
    1 to 6 sources, 30–80 px boxes, Gaussian and Sérsic profiles, and one
    blend (id 4) with two peaks 2 px apart. Files are in the hsc_blends layout
    (:func:`~hpcblend.io.blends.write_blend`) with deterministic bytes; a file
    that already holds the same bytes is left untouched, so calling this again
    (or from several ranks) is harmless.

    Returns
    -------
    list of str
        The file paths, in id order.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(n_blends):
        blend_id = i + 1
        shape, n_src, profile, sizes, centres = DEMO_BLEND_SPECS[i % len(DEMO_BLEND_SPECS)]
        path = os.path.join(directory, f"{blend_id}.npz")
        blend, _ = make_synthetic_blend(
            seed=int(seed) * 100003 + blend_id, n_sources=n_src, shape=shape, profile=profile,
            sizes=sizes, blend_id=blend_id, centers=centres,
            min_separation=2.0 if centres is not None else 6.0, source=path)
        payload = npz_bytes(blend_arrays(blend))
        try:
            with open(path, "rb") as fh:
                same = fh.read() == payload
        except OSError:
            same = False
        if not same:
            atomic_write(path, payload)
        paths.append(path)
    return paths
