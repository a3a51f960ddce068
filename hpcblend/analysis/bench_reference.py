"""The reference deblender of ``hpcblend bench deblend``: scarlet_lite run as the LSST pipeline runs it.

:class:`ScarletLiteSettings` is the pipeline's configuration (meas_extensions_scarlet
``ScarletDeblendConfig``), :func:`load_scarlet_lite` imports the optional reference and
:class:`ScarletLiteRunner` deblends a :class:`~hpcblend.io.blends.BlendData` with it, timing the part
the pipeline times, and reads back its χ²/pixel, convergence and model fluxes. scarlet_lite is never
a dependency of hpcblend (``../shared/reference/README.txt`` says how to install it); it is imported
only when a benchmark asks for it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hpcblend.io.blends import BlendData

__all__ = ["ScarletLiteSettings", "ScarletLiteRunner", "load_scarlet_lite"]


@dataclass(frozen=True)
class ScarletLiteSettings:
    """scarlet_lite's configuration in the LSST pipeline (meas_extensions_scarlet ``ScarletDeblendConfig``).

    Attributes
    ----------
    model_psf_sigma : float
        σ (pixels) of ``utils.integrated_circular_gaussian``, the model PSF.
    convolution_mode : str
        ``"fft"``.
    min_snr : float
        ``FactorizedInitialization(min_snr=...)``: a source gets two components
        above twice this peak S/N.
    bg_thresh, initial_bg_thresh : float
        Morphology thresholds in units of the background RMS (fit, initialisation).
    monotonicity_shape : tuple of int
        Shape of the one ``operators.Monotonicity`` shared by every blend.
    is_symmetric : bool
        No symmetry constraint.
    max_components : int
        At most two components per source.
    spectrum_cutoff : float
        ``Blend.fit_spectra()`` runs when ``n_peaks · H · W`` is below this.
    noise_rms_factor : float
        Adaprox parameterisation with ``noise_rms × noise_rms_factor`` as the
        spectrum step's floor.
    max_iter, min_iter : int
    e_rel : float
        ``Blend.fit(max_iter, e_rel, min_iter, resize)``; converged when
        ``|L[-2] − L[-1]| < e_rel |L[-1]|``.
    resize : int
        Iterations between box resizes.
    """

    model_psf_sigma: float = 0.8
    convolution_mode: str = "fft"
    min_snr: float = 50.0
    bg_thresh: float = 1.0
    initial_bg_thresh: float = 1.0
    monotonicity_shape: tuple = (101, 101)
    is_symmetric: bool = False
    max_components: int = 2
    spectrum_cutoff: float = 1e6
    noise_rms_factor: float = 0.1
    max_iter: int = 300
    e_rel: float = 1e-3
    min_iter: int = 5
    resize: int = 3


def load_scarlet_lite():
    """Import scarlet_lite and its compiled operators.

    Imported here, not at module level: scarlet_lite is an optional reference
    (GPL, not on PyPI) that hpcblend never depends on.

    Returns
    -------
    module
        ``lsst.scarlet.lite``.

    Raises
    ------
    ImportError
        When it (or its pybind11 operators) cannot be imported.
    """
    module = importlib.import_module("lsst.scarlet.lite")
    importlib.import_module("lsst.scarlet.lite.operators_pybind11")
    return module


class ScarletLiteRunner:
    """Deblend :class:`~hpcblend.io.blends.BlendData` with scarlet_lite as the LSST pipeline does.

    Parameters
    ----------
    module : module
        ``lsst.scarlet.lite`` (:func:`load_scarlet_lite`).
    settings : ScarletLiteSettings
    bad_mask_planes : sequence of str
        Mask planes whose pixels get zero weight (hpcblend's
        ``DeblendConfig.bad_mask_planes``, the pipeline's ``badMask``).
    """

    def __init__(self, module, settings: ScarletLiteSettings, bad_mask_planes: Sequence[str]):
        self.sl = module
        self.settings = settings
        self.bad_mask_planes = tuple(bad_mask_planes)
        self.model_psf = module.utils.integrated_circular_gaussian(sigma=settings.model_psf_sigma)
        # one operator for every blend, as the pipeline's task holds one
        self.monotonicity = module.operators.Monotonicity(settings.monotonicity_shape)

    @property
    def version(self) -> str:
        """scarlet_lite's version string ("unknown" when it has none)."""
        version = getattr(self.sl, "__version__", None)
        if version is None:
            try:
                version = importlib.metadata.version("lsst-scarlet-lite")
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
        return str(version)

    def deblend(self, blend: BlendData):
        """Build the observation, initialise the sources, fit; the part the pipeline times.

        Weights are ``1/variance``, zero at :attr:`bad_mask_planes`, at
        non-positive variance and outside the footprint
        (:meth:`~hpcblend.io.blends.BlendData.weights`, as hpcblend weights the
        same blend). Images, variance, PSFs and peaks are the blend's own.

        Parameters
        ----------
        blend : BlendData

        Returns
        -------
        fitted : lsst.scarlet.lite.Blend
        t_init, t_fit : float
            Wall seconds of observation + initialisation (+ ``fit_spectra``)
            and of the fit.
        """
        sl, s = self.sl, self.settings
        t0 = time.perf_counter()
        weights = blend.weights(self.bad_mask_planes)
        observation = sl.Observation(images=blend.images, variance=blend.variance, weights=weights,
                                     psfs=blend.psfs, model_psf=self.model_psf[None, :, :],
                                     bands=tuple(blend.bands), convolution_mode=s.convolution_mode)
        centers = [(int(y), int(x)) for y, x in blend.peaks]
        sources = sl.initialization.FactorizedInitialization(
            observation=observation, centers=centers, min_snr=s.min_snr, monotonicity=self.monotonicity,
            bg_thresh=s.bg_thresh, initial_bg_thresh=s.initial_bg_thresh, max_components=s.max_components,
            is_symmetric=s.is_symmetric).sources
        fitted = sl.Blend(sources, observation)
        h, w = blend.shape
        if blend.n_peaks * h * w < s.spectrum_cutoff:
            fitted.fit_spectra()
        noise_rms = observation.noise_rms * s.noise_rms_factor
        fitted.parameterize(lambda c: sl.component.default_adaprox_parameterization(c, noise_rms=noise_rms))
        t1 = time.perf_counter()
        fitted.fit(max_iter=s.max_iter, e_rel=s.e_rel, min_iter=s.min_iter, resize=s.resize)
        return fitted, t1 - t0, time.perf_counter() - t1

    def converged(self, fitted) -> bool:
        """The pipeline's test: ``|L[-2] − L[-1]| < e_rel |L[-1]|``."""
        loss = fitted.loss
        return bool(len(loss) > 1 and abs(loss[-2] - loss[-1]) < self.settings.e_rel * abs(loss[-1]))

    @staticmethod
    def chi2_per_pixel(fitted, blend: BlendData, weights: np.ndarray) -> float:
        """hpcblend's χ²/pixel of a fitted scarlet_lite blend.

        ``Σ W (D*M − Y)² / N`` over the N (band, pixel) with ``W > 0``, float64
        (:func:`hpcblend.measure.children.chi2_per_pixel`), with the observed-frame model
        ``D*M`` from ``Blend.get_model(convolve=True)``.
        """
        model = np.asarray(fitted.get_model(convolve=True).data, dtype=np.float64)
        good = weights > 0
        n = int(good.sum())
        if n == 0:
            return float("nan")
        r = (model - blend.images) ** 2 * weights
        return float(r[good].sum() / n)

    @staticmethod
    def model_flux(fitted, n_bands: int) -> np.ndarray:
        """Model flux per source and band (model frame), shape (K, B), float64; NaN for a null source."""
        out = np.full((len(fitted.sources), n_bands), np.nan)
        for k, src in enumerate(fitted.sources):
            if not src.is_null:
                out[k] = np.asarray(src.get_model().data, dtype=np.float64).sum(axis=(1, 2))
        return out
