"""Read and write a coadded tract: one FITS file per band, plus one PSF file per band.

File layout (what :func:`write_tract` writes and :func:`read_tract` reads)
---------------------------------------------------------------------------
A tract is a directory (or any set of paths, see :class:`TractPaths`) holding,
for each band ``<b>``:

``coadd_<b>.fits``
    * HDU 0 ``PRIMARY``: no data; header keys ``TRACT`` (int), ``BAND``
      (str), ``MAGZERO`` (zero point: ``mag = MAGZERO - 2.5 log10(counts)``),
      ``HBCOADD`` (format version, currently 1).
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
  ``psf_tolerance`` (default 1e-3) (:class:`PsfError`); it is then
  renormalised to sum to exactly 1 (float64). PSFs of different sizes are
  zero-padded to the largest (both odd, so the centre stays the centre).

Mask planes: hpcblend's planes and bits are :data:`hpcblend.io.blends.MASK_PLANES`.
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

import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from hpcblend.errors import InputError, PsfError
from hpcblend.io.blends import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, mask_bits
from hpcblend.geometry import Box
from hpcblend.skymap import PatchInfo

__all__ = [
    "COADD_FORMAT_VERSION",
    "DEFAULT_PATTERN",
    "DEFAULT_PSF_PATTERN",
    "PSF_TOLERANCE",
    "TractPaths",
    "TractData",
    "tract_paths",
    "read_tract",
    "read_patch",
    "read_box",
    "read_tract_shape",
    "check_tract",
    "write_tract",
]

#: Version of the file layout written by :func:`write_tract` (``HBCOADD`` card).
COADD_FORMAT_VERSION: int = 1
#: Default coadd file name pattern.
DEFAULT_PATTERN: str = "coadd_{band}.fits"
#: Default PSF file name pattern.
DEFAULT_PSF_PATTERN: str = "psf_{band}.fits"
#: A PSF image must sum to 1 within this (then it is renormalised exactly).
PSF_TOLERANCE: float = 1e-3

_HDUS = ("IMAGE", "VARIANCE", "MASK")
_WCS_TOL = dict(crval=1e-9, crpix=1e-6, cd_rtol=1e-9)
#: The truth catalog a simulated tract carries next to its coadds (:data:`hpcblend.simulate.tract.TRUTH_FILE`; its
#: ``flux_<band>`` columns name the tract's bands). Not imported: simulate imports this module.
_TRUTH_FILE = "truth.fits"
#: Canonical band order used when bands are discovered from file names.
_BAND_ORDER = ("u", "g", "r", "i", "z", "y", "N387", "N816", "N921")

PathLike = Union[str, os.PathLike]


# -----------------------------------------------------------------------------
# paths
# -----------------------------------------------------------------------------


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
    truth = os.path.join(directory, _TRUTH_FILE)
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


def _as_paths(source, bands, pattern, psf_pattern) -> TractPaths:
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


# -----------------------------------------------------------------------------
# data
# -----------------------------------------------------------------------------


@dataclass
class TractData:
    """Pixels of a tract, or of one patch's outer box, in all bands.

    Attributes
    ----------
    bands : tuple of str
        Band names, one per plane.
    images : ndarray, shape (B, H, W), float32
        Background-subtracted counts.
    variance : ndarray, shape (B, H, W), float32
        Variance in counts².
    mask : ndarray, shape (B, H, W), int32
        Mask bits, planes as in :attr:`mask_planes`.
    wcs : astropy.wcs.WCS
        Celestial WCS of the **tract** pixel frame (0-based in astropy's
        ``pixel_to_world``); see :meth:`local_wcs` for the arrays' frame.
    psfs : ndarray, shape (B, Ph, Pw), float64
        PSF per band, odd-sized, centred, each summing to 1.
    tract : int
        Tract number (``TRACT`` card; 0 if absent).
    paths : TractPaths
        Files read.
    mask_planes : dict of str to int
        Plane name -> bit number; equals :data:`hpcblend.io.blends.MASK_PLANES`
        plus any extra planes found in the files.
    box : Box
        Where the arrays sit in the tract frame: ``Box((0, 0), tract_shape)``
        for :func:`read_tract`, the patch's outer box for :func:`read_patch`.
    tract_shape : tuple of int
        (H, W) of the whole tract.
    zero_point : float
        ``MAGZERO``: ``mag = zero_point - 2.5 log10(counts)``; NaN if absent.
    patch : PatchInfo or None
        The patch read by :func:`read_patch`.
    n_bad_pixels : ndarray, shape (B,), int64
        Per band, the pixels of the box that were masked on reading (image
        not finite, or variance not finite or <= 0, without ``NO_DATA``):
        image set to 0, variance to ``inf``, ``NO_DATA`` bit set. Zeros when
        read with ``validate=False``.
    """

    bands: tuple
    images: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    wcs: WCS
    psfs: np.ndarray
    tract: int = 0
    paths: Optional[TractPaths] = None
    mask_planes: dict = field(default_factory=lambda: dict(MASK_PLANES))
    box: Optional[Box] = None
    tract_shape: Optional[Tuple[int, int]] = None
    zero_point: float = float("nan")
    patch: Optional[PatchInfo] = None
    n_bad_pixels: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.n_bad_pixels is None:
            self.n_bad_pixels = np.zeros(len(self.bands), dtype=np.int64)
        if self.box is None:
            self.box = Box((0, 0), tuple(int(n) for n in self.images.shape[1:]))
        if self.tract_shape is None:
            self.tract_shape = self.box.stop

    @property
    def n_bands(self) -> int:
        """Number of bands B."""
        return len(self.bands)

    @property
    def shape(self) -> Tuple[int, int]:
        """(H, W) of the arrays."""
        return tuple(int(n) for n in self.images.shape[1:])

    def local_wcs(self) -> WCS:
        """The WCS of the arrays' own frame (pixel ``[0, 0]`` = tract pixel ``box.origin``)."""
        y0, x0 = self.box.origin
        if y0 == 0 and x0 == 0:
            return self.wcs.deepcopy()
        return self.wcs.slice((slice(y0, None), slice(x0, None)))

    def pixel_to_sky(self, y, x):
        """Sky position of array positions.

        Parameters
        ----------
        y, x : float or array_like
            Positions in the arrays' frame (pixels, 0-based).

        Returns
        -------
        ra, dec : ndarray
            Degrees.
        """
        ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, float) + self.box.x0,
                                                 np.asarray(y, float) + self.box.y0)
        return ra, dec

    def bad_pixels(self, bad_planes=DEFAULT_BAD_MASK_PLANES) -> np.ndarray:
        """Pixels that must get zero weight, shape (B, H, W), bool.

        True where a plane of ``bad_planes`` is set, or the variance is not
        finite or <= 0.
        """
        bits = 0
        for name in ([bad_planes] if isinstance(bad_planes, str) else bad_planes):
            key = str(name).upper()
            if key in self.mask_planes:
                bits |= 1 << self.mask_planes[key]
            else:
                bits |= mask_bits(key)  # raises KeyError naming the unknown plane
        bad = ~np.isfinite(self.variance) | ~(self.variance > 0)
        if bits:
            bad |= (self.mask & bits) != 0
        return bad


# -----------------------------------------------------------------------------
# reading helpers
# -----------------------------------------------------------------------------


def _open_fits(path: str, what: str, error=InputError) -> fits.HDUList:
    if not os.path.isfile(path):
        raise error(f"{path}: {what} file not found")
    try:
        return fits.open(path, memmap=True, lazy_load_hdus=True)
    except (OSError, ValueError, TypeError) as exc:
        raise error(f"{path}: cannot read {what} file as FITS: {exc}") from None


def _get_hdu(hdul: fits.HDUList, path: str, name: str):
    try:
        return hdul[name]
    except KeyError:
        names = []
        try:
            names = [h.name for h in hdul]
        except Exception:  # truncated file: listing the HDUs fails too
            pass
        raise InputError(f"{path}: HDU {name!r} missing (HDUs: {names})") from None
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: HDU {name!r}: cannot read: {exc}") from None


def _hdu_shape(hdu, path: str, name: str) -> Tuple[int, int]:
    hdr = hdu.header
    naxis = hdr.get("NAXIS", 0)
    if naxis != 2:
        raise InputError(f"{path}: HDU {name!r}: expected a 2-D image, got NAXIS = {naxis}")
    return (int(hdr["NAXIS2"]), int(hdr["NAXIS1"]))


_BITPIX_DTYPE = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _read_section(hdu, path: str, name: str, box: Box) -> np.ndarray:
    (y0, x0), (y1, x1) = box.origin, box.stop
    try:
        hdr = hdu.header
        scaled = hdr.get("BSCALE", 1) != 1 or hdr.get("BZERO", 0) != 0 or "BLANK" in hdr
        bitpix = hdr.get("BITPIX")
        if isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and not scaled and bitpix in _BITPIX_DTYPE:
            # the box's full rows in chunks of ~256 KiB read into one reused buffer (cache-resident),
            # each chunk's columns copied out in native byte order: ~10x faster than hdu.section
            # (which reads and wraps the box row by row), no memory-map page faults, and no
            # tract-wide row buffer streamed through memory
            dtype = np.dtype(_BITPIX_DTYPE[bitpix])
            nx = int(hdr["NAXIS1"])
            row_bytes = nx * dtype.itemsize
            chunk = max(1, min(y1 - y0, (256 * 1024) // row_bytes))
            buf = np.empty((chunk, nx), dtype=dtype)
            arr = np.empty((y1 - y0, x1 - x0), dtype=dtype.newbyteorder("="))
            with open(path, "rb", buffering=0) as fh:
                fh.seek(int(hdu.fileinfo()["datLoc"]) + y0 * row_bytes)
                for r0 in range(0, y1 - y0, chunk):
                    n = min(chunk, y1 - y0 - r0)
                    view = memoryview(buf[:n]).cast("B")
                    got = 0
                    while got < n * row_bytes:  # a raw read may return short; stop only at end of file
                        more = fh.readinto(view[got:])
                        if not more:
                            break
                        got += more
                    if got != n * row_bytes:
                        raise InputError(f"{path}: HDU {name!r}: truncated data: rows {y0 + r0}:{y0 + r0 + n} "
                                         f"need {n * row_bytes} bytes, the file holds {got}")
                    arr[r0:r0 + n] = buf[:n, x0:x1]
        else:
            # scaled (BSCALE/BZERO/BLANK) or compressed: astropy refuses sections of memory-mapped
            # scaled data, so this HDU is read through a file opened without a memory map
            with fits.open(path, memmap=False, lazy_load_hdus=True) as plain:
                arr = plain[name].section[y0:y1, x0:x1]
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: HDU {name!r}: cannot read pixels [{y0}:{y1}, {x0}:{x1}]: {exc}") from None
    arr = np.asarray(arr)
    if arr.shape != box.shape:
        raise InputError(f"{path}: HDU {name!r}: truncated data: read {arr.shape} pixels, expected {box.shape}")
    return arr


def _read_wcs(hdu, path: str) -> WCS:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(hdu.header, naxis=2)
    except Exception as exc:  # astropy raises assorted types for malformed WCS cards
        raise InputError(f"{path}: HDU 'IMAGE': invalid WCS: {exc}") from None
    if not w.has_celestial or w.naxis != 2 or w.celestial.naxis != 2:
        raise InputError(f"{path}: HDU 'IMAGE': no 2-axis celestial WCS in the header "
                         f"(CTYPE = {list(w.wcs.ctype)})")
    return w


_WCS_KEY_PREFIXES = ("WCSAXES", "CTYPE", "CUNIT", "CRVAL", "CRPIX", "CDELT", "CROTA", "CD1_", "CD2_", "PC1_", "PC2_",
                     "PV", "PS", "RADESYS", "RADECSYS", "EQUINOX", "EPOCH", "LONPOLE", "LATPOLE", "A_", "B_", "AP_",
                     "BP_", "MJD", "DATE-OBS")


def _wcs_cards(header) -> tuple:
    """The header's WCS cards (keyword, value) in order: equal tuples mean equal WCSs."""
    return tuple((c.keyword, c.value) for c in header.cards if c.keyword.startswith(_WCS_KEY_PREFIXES))


def _numbers(values) -> str:
    """``[v, ...]`` as plain numbers (Python float reprs: shortest round-trip, never ``np.float64(...)``)."""
    return "[" + ", ".join(repr(float(v)) for v in np.ravel(values)) + "]"


def _wcs_difference(a: WCS, b: WCS) -> Optional[str]:
    """Why two WCSs differ, or None if they agree within :data:`_WCS_TOL`."""
    if list(a.wcs.ctype) != list(b.wcs.ctype):
        return f"CTYPE {[str(c) for c in b.wcs.ctype]} != {[str(c) for c in a.wcs.ctype]}"
    if not np.allclose(a.wcs.crval, b.wcs.crval, rtol=0, atol=_WCS_TOL["crval"]):
        return f"CRVAL {_numbers(b.wcs.crval)} != {_numbers(a.wcs.crval)}"
    if not np.allclose(a.wcs.crpix, b.wcs.crpix, rtol=0, atol=_WCS_TOL["crpix"]):
        return f"CRPIX {_numbers(b.wcs.crpix)} != {_numbers(a.wcs.crpix)}"
    ma, mb = a.pixel_scale_matrix, b.pixel_scale_matrix
    scale = float(np.max(np.abs(ma)))
    if not np.allclose(ma, mb, rtol=0, atol=_WCS_TOL["cd_rtol"] * scale):
        return f"CD (pixel scale matrix) {_numbers(mb)} != {_numbers(ma)} (row-major)"
    return None


def _header_mask_planes(header, path: str) -> Optional[dict]:
    planes = {}
    for key, value in header.items():
        if key.startswith("MP_"):
            name = key[3:]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 31:
                raise InputError(f"{path}: HDU 'MASK': card {key} = {value!r} is not a bit number 0..31")
            planes[name] = int(value)
    if not planes:
        return None
    if len(set(planes.values())) != len(planes):
        raise InputError(f"{path}: HDU 'MASK': two planes share a bit in {planes}")
    return planes


def _remap_table(file_planes: Optional[dict], merged: dict) -> Optional[list]:
    """(src_bit, dst_bit) pairs turning a file's bits into hpcblend's, or None if identical.

    ``merged`` (plane -> bit) is updated with extra planes.
    """
    if file_planes is None:
        return None
    pairs = []
    for name, bit in sorted(file_planes.items(), key=lambda kv: kv[1]):
        if name not in merged:
            used = set(merged.values())
            free = [b for b in range(31) if b not in used]
            if not free:
                raise InputError(f"more than 31 mask planes in the tract's files ({sorted(merged)} + {name})")
            merged[name] = free[0]
        pairs.append((bit, merged[name]))
    if all(src == dst for src, dst in pairs):
        return None
    return pairs


def _apply_remap(mask: np.ndarray, pairs: Optional[list]) -> np.ndarray:
    if pairs is None:
        return mask
    out = np.zeros_like(mask)
    for src, dst in pairs:
        out |= (((mask >> src) & 1) << dst).astype(mask.dtype)
    return out


def _read_psf(path: str, band: str, tolerance: float) -> np.ndarray:
    if not os.path.isfile(path):
        raise PsfError(f"{path}: PSF file for band {band!r} not found")
    hdul = _open_fits(path, "PSF", error=PsfError)
    with hdul:
        try:
            names = [h.name for h in hdul]
        except (OSError, ValueError, TypeError) as exc:
            raise PsfError(f"{path}: cannot read PSF file: {exc}") from None
        if "PSF" in names:
            name = "PSF"
        elif names and hdul[0].header.get("NAXIS", 0) > 0:
            name = "PRIMARY"
        else:
            raise PsfError(f"{path}: no HDU 'PSF' and no image in the primary HDU (HDUs: {names})")
        try:
            psf = hdul[name].data
        except (OSError, ValueError, TypeError) as exc:
            raise PsfError(f"{path}: HDU {name!r}: cannot read PSF: {exc}") from None
        psf = None if psf is None else np.array(psf, dtype=np.float64)
    if psf is None or psf.ndim != 2:
        shape = None if psf is None else psf.shape
        raise PsfError(f"{path}: HDU {name!r}: expected a 2-D PSF image, got shape {shape} "
                       f"(per-patch PSF cubes are not supported)")
    if psf.shape[0] % 2 == 0 or psf.shape[1] % 2 == 0:
        raise PsfError(f"{path}: HDU {name!r}: PSF shape {psf.shape} is not odd-sized on both axes")
    if not np.isfinite(psf).all():
        raise PsfError(f"{path}: HDU {name!r}: PSF has {int(np.count_nonzero(~np.isfinite(psf)))} "
                       f"non-finite pixel(s)")
    total = float(psf.sum())
    if not abs(total - 1.0) <= tolerance:
        raise PsfError(f"{path}: HDU {name!r}: PSF sums to {total:.6g}, not 1 within {tolerance:g}")
    return psf / total


def _pad_psfs(psfs: list) -> np.ndarray:
    ph = max(p.shape[0] for p in psfs)
    pw = max(p.shape[1] for p in psfs)
    out = np.zeros((len(psfs), ph, pw), dtype=np.float64)
    for i, p in enumerate(psfs):
        dy, dx = (ph - p.shape[0]) // 2, (pw - p.shape[1]) // 2
        out[i, dy:dy + p.shape[0], dx:dx + p.shape[1]] = p
    return out


def _read(source, bands, box: Optional[Box], pattern: str, psf_pattern: str, psf_tolerance: float,
          validate: bool, patch: Optional[PatchInfo] = None) -> TractData:
    paths = _as_paths(source, bands, pattern, psf_pattern)
    merged_planes = dict(MASK_PLANES)
    nodata_bit = 1 << MASK_PLANES["NO_DATA"]
    images = variance = mask = None
    ref_wcs = ref_shape = ref_path = ref_cards = None
    tract = None
    zero_point = float("nan")
    for i, band in enumerate(paths.bands):
        path = paths.coadds[band]
        hdul = _open_fits(path, "coadd")
        with hdul:
            try:
                primary = hdul[0].header
            except (OSError, ValueError, TypeError, IndexError) as exc:
                raise InputError(f"{path}: HDU 'PRIMARY': cannot read: {exc}") from None
            version = primary.get("HBCOADD")
            if version is not None and (not isinstance(version, int) or version > COADD_FORMAT_VERSION):
                raise InputError(f"{path}: HDU 'PRIMARY': format version HBCOADD = {version!r} is newer "
                                 f"than this hpcblend reads ({COADD_FORMAT_VERSION})")
            file_band = primary.get("BAND")
            if file_band is not None and str(file_band).strip() != band:
                raise InputError(f"{path}: HDU 'PRIMARY': BAND = {file_band!r}, but the file was given "
                                 f"for band {band!r}")
            try:
                file_tract = int(primary.get("TRACT", 0))
            except (TypeError, ValueError):
                raise InputError(f"{path}: HDU 'PRIMARY': TRACT = {primary.get('TRACT')!r} is not an "
                                 f"integer") from None
            if tract is None:
                tract = file_tract
            elif file_tract != tract:
                raise InputError(f"{path}: HDU 'PRIMARY': TRACT = {file_tract}, but {ref_path} has "
                                 f"TRACT = {tract}")
            if i == 0 and "MAGZERO" in primary:
                zero_point = float(primary["MAGZERO"])

            hdus = {name: _get_hdu(hdul, path, name) for name in _HDUS}
            shape = _hdu_shape(hdus["IMAGE"], path, "IMAGE")
            for name in ("VARIANCE", "MASK"):
                other = _hdu_shape(hdus[name], path, name)
                if other != shape:
                    raise InputError(f"{path}: HDU {name!r}: shape {other} differs from IMAGE {shape}")
            cards = _wcs_cards(hdus["IMAGE"].header)
            # bands after the first: parse the WCS only if its cards differ from the first band's
            wcs = ref_wcs if (ref_shape is not None and cards == ref_cards) else _read_wcs(hdus["IMAGE"], path)
            if ref_shape is None:
                ref_cards = cards
                ref_shape, ref_wcs, ref_path = shape, wcs, path
                read_box = Box((0, 0), shape) if box is None else box
                if not Box((0, 0), shape).contains_box(read_box) or read_box.is_empty:
                    raise InputError(f"{path}: HDU 'IMAGE': requested box {read_box} is not inside the "
                                     f"tract of shape {shape}")
                n_bands = len(paths.bands)
                n_bad = np.zeros(n_bands, dtype=np.int64)
                images = np.empty((n_bands,) + read_box.shape, dtype=np.float32)
                variance = np.empty((n_bands,) + read_box.shape, dtype=np.float32)
                mask = np.empty((n_bands,) + read_box.shape, dtype=np.int32)
            else:
                if shape != ref_shape:
                    raise InputError(f"{path}: HDU 'IMAGE': shape {shape} differs from {ref_path} {ref_shape}")
                why = _wcs_difference(ref_wcs, wcs)
                if why is not None:
                    raise InputError(f"{path}: HDU 'IMAGE': WCS differs from {ref_path}: {why}")

            img = _read_section(hdus["IMAGE"], path, "IMAGE", read_box)
            var = _read_section(hdus["VARIANCE"], path, "VARIANCE", read_box)
            msk = _read_section(hdus["MASK"], path, "MASK", read_box)
            for name, arr in (("IMAGE", img), ("VARIANCE", var)):
                if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                    raise InputError(f"{path}: HDU {name!r}: expected numbers, got dtype {arr.dtype}")
            if not np.issubdtype(msk.dtype, np.integer):
                raise InputError(f"{path}: HDU 'MASK': expected integer bits, got dtype {msk.dtype}")
            pairs = _remap_table(_header_mask_planes(hdus["MASK"].header, path), merged_planes)
            msk = _apply_remap(msk.astype(np.int64), pairs).astype(np.int32)
            images[i] = img
            variance[i] = var
            mask[i] = msk

            if validate:
                n_bad[i] = _mask_bad_pixels(images[i], variance[i], mask[i], nodata_bit, path, band, read_box,
                                            patch)

    psfs = _pad_psfs([_read_psf(paths.psfs[b], b, psf_tolerance) for b in paths.bands])
    return TractData(bands=paths.bands, images=images, variance=variance, mask=mask, wcs=ref_wcs,
                     psfs=psfs, tract=int(tract), paths=paths, mask_planes=merged_planes, box=read_box,
                     tract_shape=ref_shape, zero_point=zero_point, patch=patch, n_bad_pixels=n_bad)


def _mask_bad_pixels(img: np.ndarray, var: np.ndarray, msk: np.ndarray, nodata_bit: int, path: str, band: str,
                     box: Box, patch: Optional[PatchInfo]) -> int:
    """Mask one band's bad pixels in place (image 0, variance inf, ``NO_DATA``); returns how many.

    Bad: ``NO_DATA`` clear and the image not finite or the variance not finite or <= 0. Raises
    :class:`InputError` when the band has no usable pixel left in the box (and the file, not ``NO_DATA``, says
    so for at least one pixel): nothing of the band could be measured there.
    """
    usable = (msk & nodata_bit) == 0
    bad_image = ~np.isfinite(img) & usable
    bad_var = ~((var > 0) & (var < np.inf)) & usable  # NaN compares False: not finite or <= 0
    bad = bad_image | bad_var
    n = int(np.count_nonzero(bad))
    if n == 0:
        return 0
    if not (usable & ~bad).any():
        rows_cols = f"[{box.y0}:{box.y0 + box.height}, {box.x0}:{box.x0 + box.width}]"
        where = f"patch {patch.name} (outer box {rows_cols})" if patch is not None else f"box {rows_cols}"
        raise InputError(f"{path}: band {band!r}: no usable pixel in {where}: "
                         f"{int(np.count_nonzero(bad_image))} non-finite in HDU 'IMAGE', "
                         f"{int(np.count_nonzero(bad_var))} variance <= 0 or non-finite in HDU 'VARIANCE' "
                         f"(NO_DATA not set), the rest NO_DATA")
    img[bad] = 0.0
    var[bad] = np.inf
    msk[bad] |= nodata_bit
    return n


# -----------------------------------------------------------------------------
# public readers
# -----------------------------------------------------------------------------


def read_tract(source: Union[PathLike, TractPaths, Mapping], bands: Optional[Sequence[str]] = None, *,
               pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
               psf_tolerance: float = PSF_TOLERANCE, validate: bool = True) -> TractData:
    """Read a whole tract, all bands, and validate it.

    Parameters
    ----------
    source : str, path, TractPaths or mapping
        A tract directory (files found by ``pattern`` / ``psf_pattern``), a
        :class:`TractPaths`, or a mapping band -> coadd path (the PSF is then
        ``psf_pattern`` next to it) or band -> ``(coadd_path, psf_path)``.
    bands : sequence of str, optional
        Bands to read, in this order; default: all bands of ``source``
        (discovered in a directory, in u g r i z y order).
    pattern, psf_pattern : str
        File name patterns with a ``{band}`` field (directory sources only,
        and ``psf_pattern`` for a mapping of coadd paths).
    psf_tolerance : float, default 1e-3
        Allowed ``|sum(psf) - 1|``.
    validate : bool, default True
        Check and repair pixels: where ``NO_DATA`` is clear, a non-finite
        image or a variance that is not finite or <= 0 makes the pixel
        masked (image 0, variance ``inf``, ``NO_DATA`` set; counted in
        ``n_bad_pixels``); a band with no usable pixel raises. False returns
        the pixels as stored. Headers, shapes, WCS and PSFs are always
        checked.

    Returns
    -------
    TractData
        ``images``/``variance`` float32 (B, H, W), ``mask`` int32 (B, H, W),
        ``psfs`` float64 (B, Ph, Pw), ``box == Box((0, 0), (H, W))``,
        ``n_bad_pixels`` (B,) the pixels masked on reading.

    Raises
    ------
    InputError
        A file or HDU missing or unreadable, shapes or WCS differing between
        bands, a band with no usable pixel in the box read (see the module
        docstring); the message names the file and HDU (or band). With no
        ``bands`` and a directory ``source``, a band's coadd file missing
        while the tract's other files name it (:func:`tract_paths`).
    PsfError
        PSF file missing, not 2-D, even-sized, not finite or not normalised.
    """
    return _read(source, bands, None, pattern, psf_pattern, psf_tolerance, validate)


def read_box(source: Union[PathLike, TractPaths, Mapping], box: Box, bands: Optional[Sequence[str]] = None, *,
             pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
             psf_tolerance: float = PSF_TOLERANCE, validate: bool = True) -> TractData:
    """Read any box of a tract, all bands, validated as in :func:`read_tract`.

    Parameters
    ----------
    source, bands, pattern, psf_pattern, psf_tolerance, validate
        As :func:`read_tract`.
    box : Box
        Pixels (y, x) of the tract to read; must lie inside it.

    Returns
    -------
    TractData
        Arrays of shape (B, box.h, box.w); ``patch`` is None; bad pixels
        masked and counted as in :func:`read_tract`.

    Raises
    ------
    InputError, PsfError
        As :func:`read_tract` (a band with no usable pixel in ``box``), and
        if the box is empty or not inside the tract.
    """
    return _read(source, bands, box, pattern, psf_pattern, psf_tolerance, validate)


def read_patch(source: Union[PathLike, TractPaths, Mapping], patch: PatchInfo,
               bands: Optional[Sequence[str]] = None, *, pattern: str = DEFAULT_PATTERN,
               psf_pattern: str = DEFAULT_PSF_PATTERN, psf_tolerance: float = PSF_TOLERANCE,
               validate: bool = True) -> TractData:
    """Read the outer box of one patch, all bands, without loading the whole tract.

    Only the rows of ``patch.outer`` are read (one contiguous read per HDU,
    then its columns; ``ImageHDU.section`` for scaled or compressed HDUs), so a rank holds
    ``B x outer area`` pixels, not the tract. Headers, WCS and PSFs are
    validated as in :func:`read_tract`; pixel checks cover the outer box only:
    bad pixels there are masked and counted (``n_bad_pixels``), and only a
    band with no usable pixel in the outer box fails the patch.

    Parameters
    ----------
    source : str, path, TractPaths or mapping
        As for :func:`read_tract`.
    patch : PatchInfo
        From :func:`hpcblend.skymap.make_patches` for this tract's shape.
    bands, pattern, psf_pattern, psf_tolerance, validate
        As for :func:`read_tract`.

    Returns
    -------
    TractData
        Arrays of shape (B, outer.h, outer.w); ``box == patch.outer``,
        ``patch`` set; ``wcs`` is still the tract's (use
        :meth:`TractData.local_wcs` or :meth:`TractData.pixel_to_sky` for
        array positions).

    Raises
    ------
    InputError
        As :func:`read_tract` (a band with no usable pixel in the outer box:
        the message names the file, band and patch), and if the outer box is
        not inside the tract (a patch made for another tract shape), or
        ``patch.tract`` differs from the files' ``TRACT``.
    PsfError
        As :func:`read_tract`.
    """
    if not isinstance(patch, PatchInfo):
        raise InputError(f"read_patch: expected a PatchInfo, got {patch!r}")
    data = _read(source, bands, patch.outer, pattern, psf_pattern, psf_tolerance, validate, patch=patch)
    if data.tract != patch.tract:
        raise InputError(f"{data.paths.coadds[data.bands[0]]}: HDU 'PRIMARY': TRACT = {data.tract}, "
                         f"but the patch belongs to tract {patch.tract}")
    return data


def read_tract_shape(source: Union[PathLike, TractPaths, Mapping],
                     bands: Optional[Sequence[str]] = None, *,
                     pattern: str = DEFAULT_PATTERN) -> Tuple[int, int]:
    """(H, W) of a tract from the first band's ``IMAGE`` header, reading no pixels.

    For making the patch grid (:func:`hpcblend.skymap.make_patches`) before
    any rank reads pixels.

    Raises
    ------
    InputError
        File or ``IMAGE`` HDU missing or not 2-D.
    """
    paths = _as_paths(source, bands, pattern, DEFAULT_PSF_PATTERN)
    path = paths.coadds[paths.bands[0]]
    with _open_fits(path, "coadd") as hdul:
        return _hdu_shape(_get_hdu(hdul, path, "IMAGE"), path, "IMAGE")


def check_tract(source: Union[PathLike, TractPaths, Mapping], bands: Optional[Sequence[str]] = None, *,
                pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
                psf_tolerance: float = 1e-3) -> Tuple[int, int]:
    """Check every band of a tract before any work is planned: headers, shapes, WCS and PSFs.

    Reads one pixel per band (all header, WCS, mask-plane and PSF checks of
    :func:`read_tract` run; pixel checks run per patch later, so one bad
    pixel at the corner read here is not an error), so a band with another
    shape or WCS, a missing or bad PSF file, or — when ``bands`` is None and
    ``source`` is a directory — a missing coadd file of a band that the
    tract's PSF files, ``BANDS`` cards or ``truth.fits`` name
    (:func:`tract_paths`), fails the run at once with a message naming the
    file and HDU, instead of failing every patch or running without the band.

    Parameters
    ----------
    source, bands, pattern, psf_pattern, psf_tolerance
        As :func:`read_tract`. With ``bands`` given, only their files are
        required.

    Returns
    -------
    (H, W) : tuple of int
        The tract's shape.

    Raises
    ------
    InputError, PsfError
        As :func:`read_tract` and :func:`tract_paths` (missing band files).
    """
    data = _read(source, bands, Box((0, 0), (1, 1)), pattern, psf_pattern, psf_tolerance, validate=False)
    return tuple(int(n) for n in data.tract_shape)


# -----------------------------------------------------------------------------
# writer
# -----------------------------------------------------------------------------


def _atomic_writeto(hdul: fits.HDUList, path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: file exists (overwrite=False)")
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        hdul.writeto(tmp, overwrite=True, output_verify="exception")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_tract(directory: PathLike, bands: Sequence[str], images: np.ndarray, variance: np.ndarray,
                mask: Optional[np.ndarray], wcs: WCS, psfs: np.ndarray, *, tract: int = 0,
                zero_point: float = 27.0, mask_planes: Optional[Mapping[str, int]] = None,
                pattern: str = DEFAULT_PATTERN, psf_pattern: str = DEFAULT_PSF_PATTERN,
                header: Optional[Mapping] = None, overwrite: bool = True) -> TractPaths:
    """Write a tract in the layout of this module (one coadd and one PSF file per band).

    Every coadd's primary header lists ``bands`` in its ``BANDS`` card, so a
    reader discovering the bands (:func:`tract_paths`) notices a coadd file
    that went missing.

    Parameters
    ----------
    directory : str or path
        Output directory (created if missing).
    bands : sequence of str
        Band names, one per plane.
    images, variance : array_like, shape (B, H, W)
        Counts and counts²; written as float32.
    mask : array_like, shape (B, H, W), int, or None
        Mask bits (planes of ``mask_planes``); written as int32; None writes zeros.
    wcs : astropy.wcs.WCS
        2-axis celestial WCS of the tract pixel frame; written to every HDU header.
    psfs : array_like, shape (B, Ph, Pw)
        PSF images, odd-sized; written as float64 as given (not renormalised).
    tract : int, default 0
        ``TRACT`` card.
    zero_point : float, default 27.0
        ``MAGZERO`` card (HSC coadds: 27).
    mask_planes : mapping of str to int, optional
        Plane -> bit, written as ``MP_<NAME>`` cards; default
        :data:`hpcblend.io.blends.MASK_PLANES`.
    pattern, psf_pattern : str
        File names with a ``{band}`` field.
    header : mapping, optional
        Extra cards for every primary header (keys <= 8 characters, or
        ``HIERARCH``-style longer keys).
    overwrite : bool, default True
        Replace existing files (each file is written to a temporary name and
        renamed, so a reader never sees half a file).

    Returns
    -------
    TractPaths
        The files written.

    Raises
    ------
    InputError
        Shapes inconsistent, WCS not 2-axis celestial, a file exists and
        ``overwrite`` is False.
    PsfError
        PSFs not 3-D (B, Ph, Pw) with odd Ph, Pw.
    """
    bands = tuple(str(b) for b in bands)
    images = np.asarray(images)
    variance = np.asarray(variance)
    if images.ndim != 3 or images.shape[0] != len(bands):
        raise InputError(f"write_tract: images shape {images.shape} is not (B={len(bands)}, H, W)")
    if variance.shape != images.shape:
        raise InputError(f"write_tract: variance shape {variance.shape} differs from images {images.shape}")
    if mask is None:
        mask = np.zeros(images.shape, dtype=np.int32)
    mask = np.asarray(mask)
    if mask.shape != images.shape or not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"write_tract: mask must be integer (B, H, W) = {images.shape}, got "
                         f"{mask.dtype} {mask.shape}")
    psfs = np.asarray(psfs, dtype=np.float64)
    if psfs.ndim != 3 or psfs.shape[0] != len(bands) or psfs.shape[1] % 2 == 0 or psfs.shape[2] % 2 == 0:
        raise PsfError(f"write_tract: psfs shape {psfs.shape} is not (B={len(bands)}, odd, odd)")
    if not isinstance(wcs, WCS) or wcs.naxis != 2 or not wcs.has_celestial:
        raise InputError("write_tract: wcs must be a 2-axis celestial astropy WCS")
    planes = dict(MASK_PLANES if mask_planes is None else mask_planes)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    wcs_header = wcs.to_header()
    if any(key.startswith("PC") for key in wcs_header):
        # astropy omits zero PC terms; write the full matrix so that readers that need every
        # term (GalSim's GSFitsWCS) read the same WCS
        pc = {f"PC{i}_{j}": float(wcs_header.get(f"PC{i}_{j}", 0.0)) for i in (1, 2) for j in (1, 2)}
        for key in pc:
            wcs_header.remove(key, ignore_missing=True)
        after = "CRPIX2"
        for key, value in pc.items():
            wcs_header.set(key, value, "Coordinate transformation matrix element", after=after)
            after = key
    paths = tract_paths(directory, bands, pattern, psf_pattern)

    for i, band in enumerate(bands):
        primary = fits.PrimaryHDU()
        primary.header["HBCOADD"] = (COADD_FORMAT_VERSION, "hpcblend coadd file layout version")
        primary.header["TRACT"] = (int(tract), "tract number")
        primary.header["BAND"] = (band, "band (filter) name")
        primary.header["MAGZERO"] = (float(zero_point), "mag = MAGZERO - 2.5 log10(counts)")
        primary.header["BANDS"] = (",".join(bands), "bands of the tract written together")
        for key, value in (header or {}).items():
            primary.header[key] = value
        hdus = [primary]
        for name, arr, dtype, unit in (("IMAGE", images[i], np.float32, "count"),
                                       ("VARIANCE", variance[i], np.float32, "count2"),
                                       ("MASK", mask[i], np.int32, None)):
            hdu = fits.ImageHDU(np.ascontiguousarray(arr, dtype=dtype), name=name)
            hdu.header.extend(wcs_header, update=True)
            if unit:
                hdu.header["BUNIT"] = unit
            if name == "MASK":
                for plane, bit in sorted(planes.items(), key=lambda kv: kv[1]):
                    key = f"MP_{plane.upper()}"
                    if len(key) > 8:  # LSST writes these as HIERARCH cards too
                        key = "HIERARCH " + key
                    hdu.header[key] = (int(bit), f"mask plane {plane} = 1 << {int(bit)}")
            hdus.append(hdu)
        _atomic_writeto(fits.HDUList(hdus), paths.coadds[band], overwrite)

        psf_primary = fits.PrimaryHDU()
        psf_primary.header["HBCOADD"] = (COADD_FORMAT_VERSION, "hpcblend coadd file layout version")
        psf_primary.header["TRACT"] = (int(tract), "tract number")
        psf_primary.header["BAND"] = (band, "band (filter) name")
        psf_hdu = fits.ImageHDU(np.ascontiguousarray(psfs[i]), name="PSF")
        _atomic_writeto(fits.HDUList([psf_primary, psf_hdu]), paths.psfs[band], overwrite)
    return paths
