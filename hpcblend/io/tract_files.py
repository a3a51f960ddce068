"""Where a tract's files are: :class:`TractPaths` (band -> coadd file, band -> PSF file) and how they are found.

A tract is a directory holding ``coadd_<band>.fits`` and ``psf_<band>.fits`` per band (the patterns are
arguments, with a ``{band}`` field), or any band -> file mapping. When the bands are not given they are
discovered from the file names and ordered u, g, r, i, z, y; a band that the tract's other files name (its
PSF file, a coadd's ``BANDS`` card, a ``flux_<band>`` column of the directory's truth table) but whose coadd
file is missing is an error, not a silently smaller run. The layout of the files is described in
:mod:`hpcblend.io.coadd`.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from astropy.io import fits

from hpcblend.errors import InputError
from hpcblend.io.truth import TRUTH_FILE

__all__ = ["DEFAULT_PATTERN", "DEFAULT_PSF_PATTERN", "PathLike", "TractPaths", "tract_paths", "as_tract_paths"]

#: Default coadd file name pattern.
DEFAULT_PATTERN: str = "coadd_{band}.fits"
#: Default PSF file name pattern.
DEFAULT_PSF_PATTERN: str = "psf_{band}.fits"
#: Canonical band order used when bands are discovered from file names.
_BAND_ORDER = ("u", "g", "r", "i", "z", "y", "N387", "N816", "N921")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class TractPaths:
    """The files of one tract.

    Attributes
    ----------
    bands : tuple of str
        Band names, in array order.
    coadds : dict of str to str
        Band -> coadd FITS file (IMAGE, VARIANCE, MASK HDUs).
    psfs : dict of str to str
        Band -> PSF FITS file.
    """

    bands: tuple
    coadds: dict
    psfs: dict

    def files(self) -> list:
        """All paths, coadds then PSFs, in band order (for provenance hashing)."""
        return [self.coadds[b] for b in self.bands] + [self.psfs[b] for b in self.bands]


def _band_sort_key(band: str):
    return (_BAND_ORDER.index(band), "") if band in _BAND_ORDER else (len(_BAND_ORDER), band)


def tract_paths(directory: PathLike, bands: Optional[Sequence[str]] = None,
                pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN) -> TractPaths:
    """Paths of a tract stored as one directory.

    Parameters
    ----------
    directory : str or path
        The tract directory.
    bands : sequence of str, optional
        Bands to use, in this order; only these files are required. If None,
        discovered from the files that match ``pattern`` and ordered u, g, r,
        i, z, y (others after, sorted) — and then every band that the tract's
        other files say exists must have its coadd file: a ``psf_pattern``
        file of the band, a ``BANDS`` card in a coadd's primary header (see
        the module docstring), or a ``flux_<band>`` column in the
        directory's ``truth.fits`` (:func:`hpcblend.simulate.tract.simulate_tract`).
        A band's coadd without its PSF file is reported by the readers
        (:class:`~hpcblend.errors.PsfError`, at planning through
        :func:`check_tract`).
    pattern, psf_pattern : str
        File names relative to ``directory`` with a ``{band}`` field.

    Returns
    -------
    TractPaths
        Paths of the given bands are not checked for existence here (the
        readers do).

    Raises
    ------
    InputError
        If ``directory`` is not a directory, a pattern lacks ``{band}``, no
        band is given and none is found, or no band is given and a band's
        coadd file is missing while the tract's other files name the band
        (the message names the missing file and the file that names the
        band; list the bands to run without it).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError(f"{directory}: tract directory not found")
    for name, pat in (("pattern", pattern), ("psf_pattern", psf_pattern)):
        if "{band}" not in pat:
            raise InputError(f"{name} {pat!r} has no '{{band}}' field")
    if bands is None:
        found = _bands_matching(directory, pattern)
        if not found:
            raise InputError(f"{directory}: no coadd file matches {pattern!r}")
        bands = sorted(set(found), key=_band_sort_key)
        expected = _expected_bands(directory, bands, pattern, psf_pattern)
        missing = [b for b in sorted(expected, key=_band_sort_key) if b not in bands]
        if missing:
            b = missing[0]
            raise InputError(f"{os.path.join(directory, pattern.format(band=b))}: coadd file for band {b!r} not "
                             f"found, but {expected[b]} (coadd files found for bands {tuple(bands)}; missing "
                             f"bands {tuple(missing)}); list the bands to use (input.bands) to run without it")
    bands = tuple(str(b) for b in bands)
    if not bands:
        raise InputError(f"{directory}: empty band list")
    if len(set(bands)) != len(bands):
        raise InputError(f"{directory}: duplicate bands {bands}")
    coadds = {b: os.path.join(directory, pattern.format(band=b)) for b in bands}
    psfs = {b: os.path.join(directory, psf_pattern.format(band=b)) for b in bands}
    return TractPaths(bands=bands, coadds=coadds, psfs=psfs)


def _bands_matching(directory: str, pattern: str) -> list:
    """Bands of the plain files in ``directory`` whose names match ``pattern`` (with its ``{band}`` field)."""
    head, tail = pattern.split("{band}", 1)
    regex = re.compile(re.escape(head) + r"(.+?)" + re.escape(tail) + r"$")
    found = []
    for hit in glob.glob(os.path.join(glob.escape(directory), glob.escape(head) + "*" + glob.escape(tail))):
        m = regex.match(os.path.relpath(hit, directory).replace(os.sep, "/"))
        if m and os.path.isfile(hit):
            found.append(m.group(1))
    return found


def _expected_bands(directory: str, found: Sequence[str], pattern: str, psf_pattern: str) -> dict:
    """Band -> why the tract should have it: its PSF file, a coadd's ``BANDS`` card, the truth catalog's columns.

    Unreadable files are skipped here (the readers report them with the file and HDU).
    """
    expected = {}
    for b in _bands_matching(directory, psf_pattern):
        expected.setdefault(b, f"{os.path.join(directory, psf_pattern.format(band=b))} exists")
    for band in found:
        path = os.path.join(directory, pattern.format(band=band))
        try:
            card = fits.getheader(path, 0).get("BANDS")
        except (OSError, ValueError, TypeError, IndexError):
            continue
        if isinstance(card, str):
            for b in (x.strip() for x in card.split(",")):
                if b:
                    expected.setdefault(b, f"{path} lists BANDS = {card!r}")
    truth = os.path.join(directory, TRUTH_FILE)
    if os.path.isfile(truth):
        try:
            with fits.open(truth, lazy_load_hdus=True) as hdul:
                header = hdul["TRUTH"].header
                names = [str(header.get(f"TTYPE{i}", "")) for i in range(1, int(header.get("TFIELDS", 0)) + 1)]
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            names = []
        for name in names:
            if name.startswith("flux_") and len(name) > 5:
                expected.setdefault(name[5:], f"{truth} has a column {name!r}")
    return expected


def as_tract_paths(source, bands: Optional[Sequence[str]], pattern: str, psf_pattern: str) -> TractPaths:
    """The files of a tract given as a directory, a :class:`TractPaths`, or a band -> path(s) mapping.

    Parameters
    ----------
    source : str, path, TractPaths or mapping
        A directory (files found by the patterns, :func:`tract_paths`), a :class:`TractPaths` (restricted to
        ``bands``), or band -> coadd path (the PSF is ``psf_pattern`` next to it) or band -> ``(coadd, psf)``.
    bands : sequence of str or None
        Bands to use, in this order; None: all of ``source``.
    pattern, psf_pattern : str
        File name patterns with a ``{band}`` field.

    Raises
    ------
    InputError
        A band not in ``source``, a malformed mapping entry, no band, or an unknown kind of source.
    """
    if isinstance(source, TractPaths):
        if bands is None:
            return source
        bands = tuple(str(b) for b in bands)
        missing = [b for b in bands if b not in source.coadds or b not in source.psfs]
        if missing:
            raise InputError(f"bands {missing} are not among the tract's bands {source.bands}")
        return TractPaths(bands=bands, coadds={b: source.coadds[b] for b in bands},
                          psfs={b: source.psfs[b] for b in bands})
    if isinstance(source, Mapping):
        order = tuple(str(b) for b in (bands if bands is not None else source.keys()))
        coadds, psfs = {}, {}
        for b in order:
            if b not in source:
                raise InputError(f"band {b!r}: no file given (bands given: {tuple(source)})")
            value = source[b]
            if isinstance(value, (str, os.PathLike)):
                coadds[b] = os.fspath(value)
                psfs[b] = os.path.join(os.path.dirname(coadds[b]), psf_pattern.format(band=b))
            else:
                try:
                    c, p = value
                except (TypeError, ValueError):
                    raise InputError(f"band {b!r}: expected a path or (coadd, psf) paths, got {value!r}") from None
                coadds[b], psfs[b] = os.fspath(c), os.fspath(p)
        if not order:
            raise InputError("no band given")
        return TractPaths(bands=order, coadds=coadds, psfs=psfs)
    if isinstance(source, (str, os.PathLike)):
        return tract_paths(source, bands, pattern, psf_pattern)
    raise InputError(f"expected a tract directory, a TractPaths or a band -> path mapping, got {source!r}")
