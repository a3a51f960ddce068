"""Read and write a coadded tract: one FITS file per band, plus one PSF file per band.

File layout (what :func:`write_tract` writes and :func:`read_tract` reads)
---------------------------------------------------------------------------
A tract is a directory (or any set of paths, see :class:`TractPaths`) holding,
for each band ``<b>``:

``coadd_<b>.fits``
    * HDU 0 ``PRIMARY``: no data; header keys ``TRACT`` (int), ``BAND``
      (str), ``MAGZERO`` (zero point: ``mag = MAGZERO - 2.5 log10(counts)``),
      ``HBCOADD`` (format version, currently 1: :mod:`hpcblend.io.versions`;
      a file without it, e.g. from the LSST pipeline, is version 1, a newer
      one is refused naming the version).
    * HDU ``IMAGE``: float32 (H, W), background-subtracted counts; the header
      holds the tract's celestial WCS (FITS convention, 1-based ``CRPIX``).
    * HDU ``VARIANCE``: float32 (H, W), counts², same WCS.
    * HDU ``MASK``: int32 (H, W) bit planes, same WCS; the header carries the
      mask-plane dictionary as ``MP_<NAME> = <bit>`` cards, as LSST's
      ``afw`` writes them (value of a plane = ``1 << bit``).

    Written by :func:`write_tract`, the primary header also holds ``BANDS``
    (str): the comma-separated bands written together, so that a directory
    missing one of them is recognised (:func:`tract_paths`); readers do not
    require it.

``psf_<b>.fits``
    One PSF image for the whole tract (no spatial variation): HDU ``PSF``
    (the primary HDU is accepted when no HDU is named ``PSF``), 2-D float,
    odd-sized on both axes, centred on the central pixel, summing to 1.
    Per-patch PSF cubes are not supported (a 3-D PSF raises
    :class:`~hpcblend.errors.PsfError`).

The file names are patterns (``pattern``, ``psf_pattern``) with a ``{band}``
field, so other layouts are a keyword away.

Where the code is: the files of a tract in :mod:`hpcblend.io.tract_files`,
:class:`TractData` in :mod:`hpcblend.io.tract_data`, the readers in
:mod:`hpcblend.io.coadd_read`, the writer in :mod:`hpcblend.io.coadd_write`,
the FITS helpers in :mod:`hpcblend.io.fits_hdus`. This module re-exports
what callers use.

Validation done on reading (``read_tract`` and, on the patch's outer box only,
``read_patch``); every failure names the file and the HDU:

* every band file has ``IMAGE``, ``VARIANCE`` and ``MASK`` HDUs, 2-D, of the
  same shape, and the same shape in every band (:class:`InputError`);
* the ``IMAGE`` header holds a 2-axis celestial WCS, the same in every band
  (``CTYPE`` equal, ``CRVAL`` within 1e-9 deg, ``CRPIX`` within 1e-6 px, the
  pixel-scale matrix (CD, or PC x CDELT) within relative 1e-9)
  (:class:`InputError`);
* ``TRACT`` is the same in every band; ``BAND``, where present, matches the
  band the file was read as (:class:`InputError`);
* bad pixels become masked pixels, not errors: where the ``NO_DATA`` mask bit
  is clear but the image is not finite, or the variance is not finite or
  <= 0, the pixel is *repaired* on reading — image set to 0, variance to
  ``inf``, ``NO_DATA`` bit set — so every later stage (background,
  detection, deblending, forced photometry) gives it zero weight; their
  number per band is :attr:`TractData.n_bad_pixels`. Only a band with no
  usable pixel at all in the box read (every pixel ``NO_DATA`` or bad, at
  least one of them bad without ``NO_DATA``) is an error
  (:class:`InputError` naming the file, band and patch or box). Pixels that
  already carry ``NO_DATA`` are returned as stored;
* the PSF file exists, is 2-D, odd-sized, finite and sums to 1 within
  ``psf_tolerance`` (default :data:`hpcblend.io.psf.COADD_PSF_SUM_TOLERANCE`,
  1e-3) (:class:`PsfError`); it is then
  renormalised to sum to exactly 1 (float64). PSFs of different sizes are
  zero-padded to the largest (both odd, so the centre stays the centre).

Mask planes: hpcblend's planes and bits are :data:`hpcblend.io.masks.MASK_PLANES`.
A file without ``MP_`` cards is taken to use them. A file whose dictionary
differs is remapped on reading: planes named in ``MASK_PLANES`` get hpcblend's
bit, other planes get the free bits above it (in the order of their file
bits), and :attr:`TractData.mask_planes` lists the result.

Coordinates: arrays are band-first ``(B, H, W)`` and positions ``(y, x)``,
0-based, pixel centres at integers. :attr:`TractData.wcs` is the tract's WCS
(tract pixel frame, astropy's 0-based ``pixel_to_world``);
:attr:`TractData.box` is where the arrays sit in the tract frame, and
:meth:`TractData.local_wcs` gives the WCS of the arrays' own frame.

References
----------
Bosch, J. et al. 2018, PASJ 70, S5 (HSC pipeline: coadds, tracts, patches,
mask planes). Pence, W. D. et al. 2010, A&A 524, A42 (FITS standard 3.0).
Calabretta, M. R. & Greisen, E. W. 2002, A&A 395, 1077 (celestial WCS, TAN).
"""

from __future__ import annotations

from hpcblend.io.coadd_read import check_tract, read_box, read_patch, read_tract, read_tract_shape
from hpcblend.io.coadd_write import write_tract
from hpcblend.io.fits_hdus import read_psf_file
from hpcblend.io.psf import COADD_PSF_SUM_TOLERANCE
from hpcblend.io.tract_data import TractData
from hpcblend.io.tract_files import DEFAULT_PATTERN, DEFAULT_PSF_PATTERN, TractPaths, tract_paths
from hpcblend.io.truth import TRUTH_FILE
from hpcblend.io.versions import COADD_FORMAT_VERSION

__all__ = [
    "COADD_FORMAT_VERSION",
    "COADD_PSF_SUM_TOLERANCE",
    "DEFAULT_PATTERN",
    "DEFAULT_PSF_PATTERN",
    "TractPaths",
    "TractData",
    "tract_paths",
    "read_tract",
    "read_patch",
    "read_box",
    "read_tract_shape",
    "check_tract",
    "read_psf_file",
    "write_tract",
]

_TRUTH_FILE = TRUTH_FILE  # its old private name here (tests compare it with the simulation's)
