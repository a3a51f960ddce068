"""Numba kernels of hpcblend (installed as ``hpcblend.kernels``): arrays in, arrays out.

PSF-difference kernels and FFT grids (:mod:`~hpcblend.kernels.psf`), FFT convolutions
(:mod:`~hpcblend.kernels.convolution`), proximal operators on morphologies
(:mod:`~hpcblend.kernels.operators`), initial morphologies and SEDs
(:mod:`~hpcblend.kernels.initialization`), the fit loop (:mod:`~hpcblend.kernels.fit`, its
per-source steps in :mod:`~hpcblend.kernels.fit_steps`), child measurements
(:mod:`~hpcblend.kernels.measurement`), forced PSF photometry (:mod:`~hpcblend.kernels.photometry`) and
adaptive moments (:mod:`~hpcblend.kernels.moments`), a patch's isolated footprints measured in one call
(:mod:`~hpcblend.kernels.isolated`), and the patch's detection image and footprint growth
(:mod:`~hpcblend.kernels.detection`).
Kernels take plain ints, floats and arrays (boxes as ``(y0, y1, x0, x1)`` arrays) and import
nothing of hpcblend; every compiled kernel has a plain NumPy reference it is tested against
(``tests/test_kernels.py`` and the tests of its callers).
"""

__all__ = ["convolution", "detection", "fit", "fit_steps", "initialization", "isolated", "measurement", "moments",
           "operators", "photometry", "psf"]
