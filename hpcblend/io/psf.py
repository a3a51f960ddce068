"""PSF images read from inputs: how far their sum may be from 1, and their normalisation.

Every reader of a PSF (npz blends, coadd PSF files) checks that the image is finite and sums to 1
within a tolerance, then divides it by its sum, so that every later stage sees a PSF of flux exactly 1
(float64). The check is only there to catch a wrong array — a PSF stored in counts, cut too small, or of
another band — since the renormalisation fixes any small error. The readers take the tolerance as a
``psf_tolerance`` argument.
"""

from __future__ import annotations

import numpy as np

from hpcblend.errors import PsfError

__all__ = ["PSF_SUM_TOLERANCE", "COADD_PSF_SUM_TOLERANCE", "normalised_psf"]

#: Allowed ``|sum(psf) - 1|`` of a PSF read from an input: the default of the readers' ``psf_tolerance``
#: (and of a job's setting, where one is given). 1 %: PSF images cut from a survey's PSF model and stored
#: as float32 sum to 1 to ~1e-5 (the 164 HSC blends: at most 1.5e-5), so anything off by more than a
#: percent is not a normalised PSF at all (counts, a truncated stamp), while the renormalisation makes the
#: accepted ones exact.
PSF_SUM_TOLERANCE: float = 1e-2

#: The tolerance the coadd readers (:mod:`hpcblend.io.coadd`) have applied since tract runs began, kept
#: as their default so that tract runs accept exactly the PSF files they accepted before (coadd PSF files
#: are written in float64 by :func:`hpcblend.io.coadd.write_tract`, so 1e-3 leaves them ample room). A
#: caller that passes ``psf_tolerance`` (a job's setting) overrides it.
COADD_PSF_SUM_TOLERANCE: float = 1e-3


def normalised_psf(psf: np.ndarray, tolerance: float, where: str) -> np.ndarray:
    """A PSF image divided by its sum, after checking it is finite and sums to 1 within ``tolerance``.

    Parameters
    ----------
    psf : ndarray, shape (Ph, Pw)
        The PSF image as read (any float or integer dtype).
    tolerance : float
        Allowed ``|sum(psf) - 1|`` (:data:`PSF_SUM_TOLERANCE`).
    where : str
        File and HDU or key (and band) for messages, e.g. ``"psf_g.fits: HDU 'PSF'"``.

    Returns
    -------
    ndarray, shape (Ph, Pw), float64
        Sums to 1.

    Raises
    ------
    PsfError
        Non-finite pixels, or a sum farther than ``tolerance`` from 1 (the message gives the sum).
    """
    psf = np.asarray(psf, dtype=np.float64)
    finite = np.isfinite(psf)
    if not finite.all():
        raise PsfError(f"{where}: PSF has {int(np.count_nonzero(~finite))} non-finite pixel(s) (NaN/inf)")
    total = float(psf.sum())
    if not abs(total - 1.0) <= tolerance:
        raise PsfError(f"{where}: PSF sums to {total:.6g}, not within {tolerance:g} of 1")
    return psf / total
