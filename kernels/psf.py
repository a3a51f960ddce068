"""PSF kernels: the Gaussian model PSF and per-band PSF-difference kernels.

Plain NumPy (these run once per blend, outside the fit loop), except two transforms that run compiled
(Numba + rocket-fft), each in one call: the deconvolution of :func:`psf_difference_kernels` (tested
against :func:`psf_difference_kernels_reference`) and the complex64 transfer functions of
:func:`kernel_transfer_function` (tested against its complex128 NumPy path). On 60² grids the numpy and
scipy calls cost Python overhead five times their arithmetic.

The deblender models every source at a common, narrow *model PSF*
``P_model`` (a circular Gaussian) and maps the model into each observed band
with a *difference kernel* ``D_b`` such that ``P_b ≈ D_b * P_model``
(Melchior et al. 2018, Astronomy & Computing 24, 129, Sect. 2.2 and Eq. 7).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import rocket_fft  # noqa: F401  (registers numpy.fft for numba)
import scipy.fft
import scipy.special
from numba import njit

__all__ = [
    "gaussian_psf",
    "psf_difference_kernel",
    "psf_difference_kernels",
    "psf_difference_kernels_reference",
    "kernel_radius_for_tolerance",
    "crop_kernel",
    "fft_shape_for",
    "next_smooth_length",
    "kernel_transfer_function",
]


def _pixel_integrated_gaussian_1d(n: int, sigma: float) -> np.ndarray:
    """1-D Gaussian of width ``sigma`` (pixels) integrated over ``n`` unit pixels centred on n // 2."""
    edges = np.arange(n + 1, dtype=np.float64) - n // 2 - 0.5
    cdf = 0.5 * (1.0 + scipy.special.erf(edges / (math.sqrt(2.0) * sigma)))
    return np.diff(cdf)


def gaussian_psf(size: int, sigma: float = 0.8) -> np.ndarray:
    """Circular Gaussian model PSF, integrated over pixels and normalised to sum 1.

    Parameters
    ----------
    size : int
        Side of the square image in pixels; must be odd so the PSF centre
        falls on pixel ``(size // 2, size // 2)``.
    sigma : float
        Gaussian standard deviation in pixels (scarlet's default 0.8).

    Returns
    -------
    psf : ndarray, shape (size, size), float64
        The model PSF, sum 1.

    Raises
    ------
    ValueError
        If ``size`` is even or not positive, or ``sigma`` is not positive.
    """
    if size <= 0 or size % 2 == 0:
        raise ValueError(f"gaussian_psf: size must be odd and positive, got {size}")
    if not sigma > 0:
        raise ValueError(f"gaussian_psf: sigma must be positive, got {sigma}")
    g = _pixel_integrated_gaussian_1d(size, sigma)
    psf = np.outer(g, g)
    return psf / psf.sum()


def _pad_centered(images: np.ndarray, shape: tuple) -> np.ndarray:
    """Zero-pad and/or centre-crop odd-sided images (..., h, w) to odd ``shape`` keeping their centre pixel."""
    out = np.zeros(images.shape[:-2] + tuple(shape), dtype=np.float64)
    src = []
    dst = []
    for n_in, n_out in zip(images.shape[-2:], shape):
        if n_in <= n_out:
            o = (n_out - n_in) // 2
            src.append(slice(0, n_in))
            dst.append(slice(o, o + n_in))
        else:
            o = (n_in - n_out) // 2
            src.append(slice(o, o + n_out))
            dst.append(slice(0, n_out))
    out[(Ellipsis,) + tuple(dst)] = images[(Ellipsis,) + tuple(src)]
    return out


def psf_difference_kernels(psfs: np.ndarray, model_psf: np.ndarray, regularization: float = 1e-7,
                           padding: int = 8) -> np.ndarray:
    """Kernels ``D_b`` with ``psf_b ≈ D_b * model_psf`` for a stack of PSFs, solved in Fourier space.

    ``D̂ = P̂ · conj(P̂_m) / (|P̂_m|² + λ·max|P̂_m|²)`` — a Tikhonov-regularised
    deconvolution of each observed PSF by the model PSF (scarlet's
    ``match_psf``, Melchior et al. 2018, Sect. 2.2, plus the regularisation
    term, which guards against the model PSF's transfer function approaching
    zero). All images are zero-padded to a common grid at least ``padding``
    pixels wider on every side than the largest image, rounded up to a
    2·3·5-smooth length (fast FFTs), so the circular deconvolution does not
    wrap; all bands are transformed in one call; each result is cropped back
    to its PSF's size.

    Parameters
    ----------
    psfs : ndarray, shape (B, Ph, Pw), odd sides (need not be square)
        Observed PSFs, each summing to 1.
    model_psf : ndarray, shape (Mh, Mw), odd sides
        Model PSF, sum 1.
    regularization : float
        λ, relative to the model PSF's peak power.
    padding : int
        Minimum extra zero pixels on each side of the transform grid.

    Returns
    -------
    kernels : ndarray, shape (B, Ph, Pw), float64
        Difference kernels, centred on ``(Ph // 2, Pw // 2)``, each
        renormalised to sum 1.

    Raises
    ------
    ValueError
        If the PSF stack is not 3-D or an image does not have odd sides.
    """
    psfs, model_psf, shape = _difference_grid(psfs, model_psf, padding)
    filt = _deconvolution_filter(model_psf.tobytes(), model_psf.shape, shape, float(regularization))
    return _deconvolve_on_grid(psfs, filt, shape[0], shape[1])


def psf_difference_kernels_reference(psfs: np.ndarray, model_psf: np.ndarray, regularization: float = 1e-7,
                                     padding: int = 8) -> np.ndarray:
    """:func:`psf_difference_kernels` in plain NumPy/SciPy (the reference its compiled core is tested against).

    The same Tikhonov-regularised deconvolution (Melchior et al. 2018, Sect. 2.2), computed with
    ``scipy.fft`` and NumPy indexing instead of one compiled call; the same arguments, result and errors:
    ``psfs`` (B, Ph, Pw) and ``model_psf`` (Mh, Mw), odd sides, each summing to 1; returns the kernels
    (B, Ph, Pw) float64 centred on ``(Ph // 2, Pw // 2)``, each summing to 1; ValueError for a stack that
    is not 3-D or an even side.
    """
    psfs, model_psf, shape = _difference_grid(psfs, model_psf, padding)
    grid_p = np.zeros((psfs.shape[0],) + shape)
    _place_at_origin(psfs, grid_p)
    p_hat = scipy.fft.rfft2(grid_p, workers=1)
    p_hat *= _deconvolution_filter(model_psf.tobytes(), model_psf.shape, shape, float(regularization))[None]
    d = scipy.fft.irfft2(p_hat, s=shape, workers=1)
    ph, pw = psfs.shape[1:]
    out = np.roll(d, (ph // 2, pw // 2), axis=(1, 2))[:, :ph, :pw]  # centre (0, 0) back to (ph // 2, pw // 2)
    return out / out.sum(axis=(1, 2), keepdims=True)


def _difference_grid(psfs: np.ndarray, model_psf: np.ndarray, padding: int) -> tuple:
    """Checked float64 ``psfs`` (B, Ph, Pw) and ``model_psf``, and the transform grid of
    :func:`psf_difference_kernels`; ValueError for even sides or wrong dimensions."""
    psfs = np.ascontiguousarray(psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise ValueError(f"psf_difference_kernels: psfs must be (B, Ph, Pw) with odd sides, got {psfs.shape}")
    if model_psf.ndim != 2 or model_psf.shape[0] % 2 == 0 or model_psf.shape[1] % 2 == 0:
        raise ValueError(f"psf_difference_kernels: model_psf must be 2-D with odd sides, got {model_psf.shape}")
    # centres sit at pixel (0, 0), so even grid sides are fine
    shape = tuple(next_smooth_length(max(a, b) + 2 * padding) for a, b in zip(psfs.shape[1:], model_psf.shape))
    return psfs, np.ascontiguousarray(model_psf, dtype=np.float64), shape


@njit(nogil=True, cache=True)
def _deconvolve_on_grid(psfs, filt, n1, n2):
    """The compiled core of :func:`psf_difference_kernels`: every PSF (B, Ph, Pw) placed with its centre at
    pixel (0, 0) of an (n1, n2) grid, transformed, multiplied by the deconvolution filter ``filt``
    (n1, n2 // 2 + 1), transformed back, cropped around its centre to (Ph, Pw) and normalised to sum 1."""
    nb, ph, pw = psfs.shape
    grid = np.zeros((nb, n1, n2))
    _place_at_origin_compiled(psfs, grid)
    spec = np.fft.rfft2(grid)
    for b in range(nb):
        spec[b] *= filt
    d = np.fft.irfft2(spec, s=(n1, n2))
    ys = (np.arange(ph) - ph // 2) % n1  # grid row of each PSF row, its centre at 0
    xs = (np.arange(pw) - pw // 2) % n2
    out = np.empty((nb, ph, pw))
    for b in range(nb):
        total = 0.0
        for y in range(ph):
            for x in range(pw):
                v = d[b, ys[y], xs[x]]
                out[b, y, x] = v
                total += v
        out[b] /= total
    return out


@functools.lru_cache(maxsize=16)
def _deconvolution_filter(model_bytes: bytes, model_shape: tuple, shape: tuple, regularization: float) -> np.ndarray:
    """``conj(P̂_m) / (|P̂_m|² + λ·max|P̂_m|²)`` on the ``shape`` grid (read-only), for the float64 model PSF
    given by its bytes and shape: every blend of a run has the same model PSF, so it is made once."""
    grid_m = np.zeros(shape)
    _place_at_origin(np.frombuffer(model_bytes, dtype=np.float64).reshape((1,) + tuple(model_shape)), grid_m[None])
    m_hat = scipy.fft.rfft2(grid_m, workers=1)
    power = np.abs(m_hat) ** 2
    filt = np.conj(m_hat) / (power + regularization * power.max())
    filt.flags.writeable = False
    return filt


def _place_at_origin(images: np.ndarray, grid: np.ndarray) -> None:
    """Write centred odd-sided images (N, h, w) into grids (N, Hg, Wg) with their centre at pixel (0, 0)."""
    h, w = images.shape[1:]
    ys = (np.arange(h) - h // 2) % grid.shape[1]
    xs = (np.arange(w) - w // 2) % grid.shape[2]
    grid[:, ys[:, None], xs[None, :]] = images


def psf_difference_kernel(psf: np.ndarray, model_psf: np.ndarray, regularization: float = 1e-7,
                          padding: int = 8) -> np.ndarray:
    """Kernel ``D`` with ``psf ≈ D * model_psf`` for one PSF; see :func:`psf_difference_kernels`.

    Parameters
    ----------
    psf : ndarray, shape (Ph, Pw), odd sides
    model_psf : ndarray, shape (Mh, Mw), odd sides
    regularization : float
    padding : int

    Returns
    -------
    kernel : ndarray, shape (Ph, Pw), float64, sum 1

    Raises
    ------
    ValueError
        If an image is not 2-D with odd sides.
    """
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 2:
        raise ValueError(f"psf_difference_kernel: psf must be 2-D with odd sides, got {psf.shape}")
    return psf_difference_kernels(psf[None], model_psf, regularization, padding)[0]


def kernel_radius_for_tolerance(kernel: np.ndarray, tolerance: float) -> int:
    """Smallest radius ``r`` such that every pixel of ``kernel`` outside the
    central ``(2r+1)²`` square has ``|value| ≤ tolerance · max|kernel|``.

    Parameters
    ----------
    kernel : ndarray, shape (Ny, Nx) or (B, Ny, Nx), odd sides, centred
        One kernel or a stack of them (the largest radius of the stack is returned).
    tolerance : float
        Relative amplitude below which wings are dropped.

    Returns
    -------
    radius : int
        In pixels, between 0 and max(Ny, Nx) // 2.
    """
    k = np.abs(np.asarray(kernel, dtype=np.float64))
    if k.ndim == 2:
        k = k[None]
    ny, nx = k.shape[-2:]
    cheb = np.maximum(np.abs(np.arange(ny) - ny // 2)[:, None], np.abs(np.arange(nx) - nx // 2)[None, :])
    above = (k > tolerance * k.max(axis=(1, 2), keepdims=True)).any(axis=0)
    return int(cheb[above].max()) if above.any() else 0


def crop_kernel(kernel: np.ndarray, radius: int, renormalize: bool = True) -> np.ndarray:
    """Central ``(2·radius+1)²`` part of a centred kernel (or stack of kernels).

    Parameters
    ----------
    kernel : ndarray, shape (..., Ny, Nx), odd sides
    radius : int
        Half-size of the crop in pixels; sides shorter than 2r+1 are zero-padded.
    renormalize : bool
        If True, each plane is rescaled to its original sum, so the
        convolution conserves flux.

    Returns
    -------
    cropped : ndarray, shape (..., 2r+1, 2r+1), float64
    """
    k = np.asarray(kernel, dtype=np.float64)
    r = int(radius)
    out = _pad_centered(k, (2 * r + 1, 2 * r + 1))
    if renormalize:
        total = k.sum(axis=(-2, -1), keepdims=True)
        out *= total / out.sum(axis=(-2, -1), keepdims=True)
    return out


def next_smooth_length(n: int, primes: tuple = (2, 3, 5)) -> int:
    """Smallest integer ≥ n whose prime factors are all in ``primes``.

    Parameters
    ----------
    n : int
        Minimum length (pixels).
    primes : tuple of int
        Allowed factors: (2, 3, 5) gives the lengths pocketfft transforms
        fastest; (2, 3) a coarser ladder.

    Returns
    -------
    int
    """
    m = max(int(n), 1)
    while True:
        k = m
        for p in primes:
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_shape_for(shape: tuple, radius: int) -> tuple:
    """Padded FFT grid for a *linear* convolution of an (H, W) image with a kernel of radius r.

    Circular convolution on a grid of at least ``(H + r, W + r)`` equals the
    linear convolution on the (H, W) image (zero outside), because the kernel
    reaches at most ``r`` pixels, so wrapped contributions land in the padding.

    Returns
    -------
    (Hp, Wp) : tuple of int
        Each the next 2·3·5-smooth length ≥ H + r (W + r).
    """
    h, w = shape
    return next_smooth_length(h + radius), next_smooth_length(w + radius)


def kernel_transfer_function(kernels: np.ndarray, fft_shape: tuple, dtype=np.complex64) -> np.ndarray:
    """Real-FFT transfer functions of centred kernels on a padded grid.

    The kernel centre is moved to pixel (0, 0) (wrapping negative offsets to
    the far edge), so that ``irfft2(rfft2(x, s) * T, s)[:H, :W]`` is the
    convolution ``kernel * x`` evaluated at the pixels of ``x``.

    Parameters
    ----------
    kernels : ndarray, shape (B, K, K), odd K
    fft_shape : tuple (Hp, Wp)
        Padded grid; each side ≥ K.
    dtype : numpy dtype
        complex64 (default, for float32 fits) or complex128.

    Returns
    -------
    transfer : ndarray, shape (B, Hp, Wp // 2 + 1), complex
    """
    b = kernels.shape[0]
    hp, wp = fft_shape
    if np.dtype(dtype) == np.complex64:  # compiled, the same values (the fits' transfer functions)
        return _transfer_on_grid(np.ascontiguousarray(kernels, dtype=np.float32), int(hp), int(wp))
    grid = np.zeros((b, hp, wp))
    _place_at_origin(np.asarray(kernels, dtype=np.float64), grid)
    return scipy.fft.rfft2(grid, workers=1).astype(dtype, copy=False)


@njit(nogil=True, cache=True)
def _transfer_on_grid(kernels, hp, wp):
    """:func:`kernel_transfer_function` in float32 (complex64 result), compiled: each centred kernel (B, Kh, Kw)
    placed with its centre at pixel (0, 0) of a zero (hp, wp) grid, then one real 2-D FFT of the stack."""
    grid = np.zeros((kernels.shape[0], hp, wp), dtype=np.float32)
    _place_at_origin_compiled(kernels, grid)
    return np.fft.rfft2(grid)


@njit(nogil=True, cache=True)
def _place_at_origin_compiled(images, grid):
    """:func:`_place_at_origin` compiled: centred odd-sided images (N, h, w) into grids (N, Hg, Wg) with their
    centre at pixel (0, 0), negative offsets wrapped to the far edges."""
    nb, h, w = images.shape
    ys = (np.arange(h) - h // 2) % grid.shape[1]
    xs = (np.arange(w) - w // 2) % grid.shape[2]
    for b in range(nb):
        for y in range(h):
            for x in range(w):
                grid[b, ys[y], xs[x]] = images[b, y, x]
