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

Importing the package imports every kernel module and, when any kernel source changed since the
kernels were cached, deletes their cached machine code first (:mod:`~hpcblend.kernels._cache`: Numba
alone would keep a kernel whose callee in another file changed).
"""

import importlib as _importlib
import os as _os

from . import _cache

__all__ = ["convolution", "detection", "fit", "fit_steps", "initialization", "isolated", "measurement", "moments",
           "operators", "photometry", "psf"]

_cache.refresh_stale_cache(_cache.cache_dirs([_importlib.import_module(f"{__name__}.{m}") for m in __all__]),
                           _cache.sources_digest(_os.path.dirname(__file__)), __all__)
