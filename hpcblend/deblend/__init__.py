"""The deblender: one blend in, its children's models and measurements out (scarlet-style, Numba underneath).

One concept per module, as scarlet_lite splits them: :mod:`~hpcblend.deblend.observation` (data,
weights, noise, PSF-difference kernels, source convolutions), :mod:`~hpcblend.deblend.initialization`
(components and their first morphologies and SEDs), :mod:`~hpcblend.deblend.fitting` (the kernels'
settings and the compiled fit call), :mod:`~hpcblend.deblend.result` (:class:`DeblendResult`, parent
flags, scattering a fit back over all peaks and bands) and :mod:`~hpcblend.deblend.deblender`
(:func:`deblend_blend`, which runs them in order, and :func:`warm_up`). Arrays and a
:class:`~hpcblend.config.DeblendConfig` in, a result out: the room never opens a file (the work units
in :mod:`hpcblend.units` read and write) and never imports ``report``, ``analysis`` or ``simulate``.
"""

from hpcblend.deblend.component_models import ComponentModels
from hpcblend.deblend.deblender import deblend_blend, warm_up
from hpcblend.deblend.fitting import fit_settings, fit_sources
from hpcblend.deblend.initialization import detection_snr, initialize_sources
from hpcblend.deblend.observation import Observation, build_observation, convolve_sources
from hpcblend.deblend.result import PARENT_FLAGS, DeblendResult

__all__ = ["deblend_blend", "warm_up", "ComponentModels", "DeblendResult", "PARENT_FLAGS", "Observation",
           "build_observation", "convolve_sources", "initialize_sources", "detection_snr", "fit_settings", "fit_sources"]
