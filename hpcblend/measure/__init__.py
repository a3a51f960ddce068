"""Everything measured on the children of a deblended blend; no file access.

Model and flux-conserving fluxes, centroids and blendedness from the fitted model
(:mod:`~hpcblend.measure.children`), forced PSF and aperture photometry and adaptive moments with the
neighbours' models subtracted (:mod:`~hpcblend.measure.forced`), and the measurements of a tract
patch's children beyond the deblender's own: isolated sources, RA/Dec (:mod:`~hpcblend.measure.patch`).
Arrays in, arrays out; the units in :mod:`hpcblend.units` turn them into catalog rows. Never imports
``report``, ``analysis`` or ``simulate``.
"""

__all__: list = []
