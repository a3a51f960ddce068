"""The truth table of a simulated tract (``truth.fits``): write it, read it, with its format version.

A simulated tract (:func:`hpcblend.simulate.tract.simulate_tract`) carries next to its coadds
``<out_dir>/truth.fits``: HDU ``TRUTH``, one row per source (columns in :mod:`hpcblend.simulate.tract`);
the primary header records the simulation parameters and ``HBTRUTH``, the table's format version
(:data:`hpcblend.io.versions.TRUTH_VERSION`; a file without the card, written before it existed, is
version 1). :func:`read_truth` refuses a version this hpcblend does not read, naming it.
"""

from __future__ import annotations

import os
from typing import Mapping, Union

from astropy.io import fits
from astropy.table import Table

from hpcblend.errors import InputError
from hpcblend.io.fits_hdus import atomic_writeto
from hpcblend.io.versions import TRUTH_VERSION, check_version

__all__ = ["TRUTH_FILE", "TRUTH_VERSION_CARD", "write_truth", "read_truth"]

#: Name of the truth catalog written into a simulated tract's directory.
TRUTH_FILE: str = "truth.fits"
#: Primary-header card holding the truth table's format version.
TRUTH_VERSION_CARD: str = "HBTRUTH"

_STRUCTURAL_CARDS = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")


def write_truth(path: Union[str, os.PathLike], truth: Table, header: Mapping, overwrite: bool = True) -> str:
    """Write a truth table as ``path`` (HDU ``TRUTH``), the simulation parameters in the primary header.

    Parameters
    ----------
    path : str or path
        The file (``<out_dir>/truth.fits``); written to a temporary name, then renamed.
    truth : astropy.table.Table
        One row per source, with units.
    header : mapping
        Primary-header cards (``SEED``, ``TRACT``, ``PIXSCALE``, ...); ``HBTRUTH`` is added.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    InputError
        The file exists and ``overwrite`` is False.
    """
    path = os.fspath(path)
    primary = fits.PrimaryHDU()
    primary.header[TRUTH_VERSION_CARD] = (TRUTH_VERSION, "hpcblend truth table layout version")
    for key, value in header.items():
        primary.header[key] = value
    table_hdu = fits.table_to_hdu(truth)
    table_hdu.name = "TRUTH"
    atomic_writeto(fits.HDUList([primary, table_hdu]), path, overwrite)
    return path


def read_truth(path: Union[str, os.PathLike]) -> Table:
    """Read a truth catalog written by :func:`write_truth` (a simulated tract's).

    Parameters
    ----------
    path : str or path
        ``truth.fits``, or the simulation's directory.

    Returns
    -------
    astropy.table.Table
        Columns as in :mod:`hpcblend.simulate.tract`, with units; ``meta`` holds the
        primary header's simulation parameters (and ``HBTRUTH`` where written).

    Raises
    ------
    InputError
        File or ``TRUTH`` HDU missing or unreadable.
    InputVersionError
        ``HBTRUTH`` names a version this hpcblend does not read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, TRUTH_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{path}: truth catalog not found")
    try:
        with fits.open(path) as hdul:
            check_version("truth", hdul[0].header.get(TRUTH_VERSION_CARD), path, "HDU 'PRIMARY'")
            table = Table.read(hdul["TRUTH"])
            meta = {k: v for k, v in hdul[0].header.items() if k not in _STRUCTURAL_CARDS}
    except KeyError:
        raise InputError(f"{path}: HDU 'TRUTH' missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read truth catalog: {exc}") from None
    table.meta.update(meta)
    return table
