"""The GalSim COSMOS sample: real HST galaxy morphologies with HSC magnitudes, for simulations and injection.

GalSim's example COSMOS training sample (Mandelbaum et al. 2012) is two FITS
tables in one directory (``../shared/data/cosmos``): the RealGalaxyCatalog
:data:`COSMOS_CATALOG` (HST F814W postage stamps and their PSFs) and the
parametric-fit catalog :data:`COSMOS_FITS_CATALOG` (``flux_radius`` in HST
pixels of :data:`COSMOS_PIXEL_SCALE`, and ``HSC_<band>`` AB magnitudes).
:func:`load_cosmos_catalog` reads both, with the fit catalog's rows put in the
RealGalaxyCatalog's order (matched by ``IDENT``), so row ``k`` of one is
galaxy ``k`` of the other. Used by :mod:`hpcblend.simulate.tract` and
:mod:`hpcblend.simulate.inject`.
"""

from __future__ import annotations

import os

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table

from hpcblend.errors import InputError

__all__ = ["COSMOS_CATALOG", "COSMOS_FITS_CATALOG", "COSMOS_PIXEL_SCALE", "load_cosmos_catalog"]

#: COSMOS catalog file names inside ``cosmos_dir``.
COSMOS_CATALOG: str = "real_galaxy_catalog_26_extension_example.fits"
COSMOS_FITS_CATALOG: str = "real_galaxy_catalog_26_extension_example_fits.fits"
#: COSMOS HST pixel scale (arcsec), for the catalog's ``flux_radius``.
COSMOS_PIXEL_SCALE: float = 0.03


def load_cosmos_catalog(cosmos_dir: str) -> tuple:
    """Read the COSMOS RealGalaxyCatalog and its parametric-fit catalog in the same row order.

    Parameters
    ----------
    cosmos_dir : str
        Directory holding :data:`COSMOS_CATALOG` and :data:`COSMOS_FITS_CATALOG`.

    Returns
    -------
    rgc : galsim.RealGalaxyCatalog
        The galaxies (``rgc.nobjects`` of them).
    fit : astropy.table.Table
        The fit catalog, row ``k`` describing ``rgc`` galaxy ``k`` (``IDENT``,
        ``flux_radius`` (HST pixels), ``HSC_<band>`` (AB mag), ...).

    Raises
    ------
    InputError
        A file is missing or unreadable, or a galaxy of the RealGalaxyCatalog
        has no row in the fit catalog.
    """
    cat_path = os.path.join(cosmos_dir, COSMOS_CATALOG)
    fit_path = os.path.join(cosmos_dir, COSMOS_FITS_CATALOG)
    for p in (cat_path, fit_path):
        if not os.path.isfile(p):
            raise InputError(f"{p}: COSMOS catalog file not found (cosmos_dir={cosmos_dir})")
    try:
        rgc = galsim.RealGalaxyCatalog(COSMOS_CATALOG, dir=cosmos_dir)
        with fits.open(cat_path) as hdul:
            idents = np.asarray(hdul[1].data["IDENT"])
        with fits.open(fit_path) as hdul:
            fit = Table(hdul[1].data)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{cat_path}: cannot read the COSMOS catalog: {exc}") from None
    row_of = {int(i): k for k, i in enumerate(np.asarray(fit["IDENT"]))}
    missing = [int(i) for i in idents if int(i) not in row_of]
    if missing:
        raise InputError(f"{fit_path}: IDENT {missing[:5]} of {cat_path} not found")
    return rgc, fit[[row_of[int(i)] for i in idents]]
