"""The one registry of every file format hpcblend writes or reads, with its versions and what each version was.

Each :class:`FileFormat` names a format (the HDF5 catalog's layout, its ``/models``, ``/profile`` and
``/gallery`` parts, npz blends, coadd FITS files of a tract, a simulated tract's truth table), where a
file records its version, the version written now, the versions read (older ones migrated on reading, by
the reader named in the history), and what each version changed. Readers call :func:`check_version` with
the version a file records (or ``None`` when it records none: :attr:`FileFormat.unrecorded` says what that
means) and get back the version to read it as, or an error naming the file, the group (HDU, member) and the
version, whether the file is too old or too new for this hpcblend, and what to do. Writers take the
version they stamp from :data:`FORMATS` (or the ``*_VERSION`` constants below, which are the same numbers).

Catalog parts raise :class:`~hpcblend.errors.SchemaVersionError` (a
:class:`~hpcblend.errors.CatalogError`); input files raise :class:`InputVersionError` (an
:class:`~hpcblend.errors.InputError`), so the failure policy treats a too-new input like any unreadable one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from hpcblend.errors import InputVersionError, SchemaVersionError

__all__ = [
    "InputVersionError",
    "FileFormat",
    "FORMATS",
    "SCHEMA_VERSION",
    "READABLE_SCHEMA_VERSIONS",
    "MODELS_VERSION",
    "PROFILE_VERSION",
    "GALLERY_VERSION",
    "NPZ_BLEND_VERSION",
    "COADD_FORMAT_VERSION",
    "TRUTH_VERSION",
    "check_version",
    "check_resumable",
    "format_versions",
]


@dataclass(frozen=True)
class FileFormat:
    """One file format (or one versioned part of the catalog) and its versions.

    Attributes
    ----------
    name : str
        What the format is, as messages name it (``"catalog"``, ``"/models"``, ``"coadd file"``).
    recorded_as : str
        The attribute, header card or npz member holding the version (``"schema_version"``,
        ``"HBCOADD"``).
    current : int
        The version this hpcblend writes.
    readable : tuple of int
        The versions this hpcblend reads; those below :attr:`current` are migrated on reading (see
        :attr:`history`).
    history : dict of int -> str
        What each version is (and, for an old one, how it is read).
    unrecorded : int or None
        The version of a file that records none (written before the version was recorded, or by
        another program); None: such a file is not of this format.
    when_old : str
        What to do with a file older than every readable version.
    error : type
        The exception class its readers raise.
    """

    name: str
    recorded_as: str
    current: int
    readable: tuple
    history: Mapping[int, str] = field(default_factory=dict, hash=False)
    unrecorded: Optional[int] = None
    when_old: str = "re-run or convert the file"
    error: type = SchemaVersionError


_CATALOG = FileFormat(
    name="catalog", recorded_as="schema_version", current=3, readable=(1, 2, 3),
    history={1: "the first layout: no /ledger/attempts or /ledger/checksums, tables without the version-2 "
                "columns; read as it is (nothing to verify, absent columns stay absent), never resumed",
             2: "/ledger/attempts and /ledger/checksums (failed units, integrity); /blends n_peaks_dropped, "
                "flag_bad_fit; /sources flag_peak_*; /patches n_bad_pixels; read as it is (absent columns stay "
                "absent), not resumed by this version",
             3: "/blends n_sub_blends (independent groups a parent was fitted in)"},
    when_old="re-run or convert the file")

_MODELS = FileFormat(
    name="table /models", recorded_as="format_version", current=2, readable=(1, 2),
    history={1: "one row per child: id, parent_id, y0, x0, height, width, sed, n_chunks, model_psf_sigma; "
                "read by hpcblend.io.models.migrate_models with component = 0 and chunk0 = 0 (the child's "
                "one component, whose pixels are the chunks 0 .. n_chunks-1 of its id: exact, not a guess)",
             2: "one row per component (core + halo): columns component and chunk0 added"},
    unrecorded=None,  # inferred from the columns: see hpcblend.io.models.models_version
    when_old="re-run the job")

_PROFILE = FileFormat(
    name="/profile", recorded_as="profile_version", current=1, readable=(1,),
    history={1: "/profile/rank_<r> groups: stacks, counts, stages, blends (hpcblend.io.profiles)"},
    unrecorded=1, when_old="re-run the job with profiling on")

_GALLERY = FileFormat(
    name="/gallery", recorded_as="gallery_version", current=1, readable=(1,),
    history={1: "/gallery/<id> groups: images, residual or model, child_boxes, child_bad, footprint "
                "(hpcblend.io.gallery)"},
    unrecorded=1, when_old="re-run the job")

_NPZ_BLEND = FileFormat(
    name="npz blend", recorded_as="format_version", current=1, readable=(1,),
    history={1: "the hsc_blends layout (images, variance, mask, footprint True outside, psfs, centers, "
                "filters, origin) or the scarlet catalog layout (catalog with x, y); files from elsewhere "
                "record no version and are version 1"},
    unrecorded=1, when_old="convert the file to the hsc_blends layout", error=InputVersionError)

_COADD = FileFormat(
    name="coadd file", recorded_as="HBCOADD", current=1, readable=(1,),
    history={1: "coadd_<band>.fits with IMAGE, VARIANCE, MASK HDUs and psf_<band>.fits with a PSF HDU "
                "(hpcblend.io.coadd); files from the LSST pipeline record no version and are version 1"},
    unrecorded=1, when_old="convert the file", error=InputVersionError)

_TRUTH = FileFormat(
    name="truth table", recorded_as="HBTRUTH", current=1, readable=(1,),
    history={1: "truth.fits, HDU TRUTH: id, x, y, ra, dec, type, flux_<b>, mag_<b>, hlr, bulge_fraction, "
                "cosmos_index (hpcblend.io.truth); files written before the card are version 1"},
    unrecorded=1, when_old="simulate the tract again", error=InputVersionError)

#: Every format, by key.
FORMATS: dict = {
    "catalog": _CATALOG,
    "models": _MODELS,
    "profile": _PROFILE,
    "gallery": _GALLERY,
    "npz_blend": _NPZ_BLEND,
    "coadd": _COADD,
    "truth": _TRUTH,
}

#: Version of the catalog's file layout (root attribute ``schema_version``).
SCHEMA_VERSION: int = _CATALOG.current
#: Catalog versions :func:`hpcblend.io.catalog.open_catalog` and the readers accept; only
#: :data:`SCHEMA_VERSION` can be resumed.
READABLE_SCHEMA_VERSIONS: tuple = _CATALOG.readable
#: Version of the ``/models`` and ``/model_pixels`` tables (their attribute ``format_version``).
MODELS_VERSION: int = _MODELS.current
#: Version of the ``/profile`` layout (attribute ``profile_version``).
PROFILE_VERSION: int = _PROFILE.current
#: Version of the ``/gallery`` layout (attribute ``gallery_version``).
GALLERY_VERSION: int = _GALLERY.current
#: Version of the npz blend layout (npz member ``format_version``).
NPZ_BLEND_VERSION: int = _NPZ_BLEND.current
#: Version of the coadd FITS layout (``HBCOADD`` card).
COADD_FORMAT_VERSION: int = _COADD.current
#: Version of the truth table (``HBTRUTH`` card).
TRUTH_VERSION: int = _TRUTH.current


def _listed(versions: tuple) -> str:
    return ", ".join(str(v) for v in versions)


def check_version(key: str, version, path: str, where: str = "") -> int:
    """The version to read a file part as, or an error saying why it cannot be read.

    Parameters
    ----------
    key : str
        A key of :data:`FORMATS`.
    version : int, numpy integer, or None
        What the file records (``None``: it records nothing).
    path : str
        The file, for the message.
    where : str, optional
        The group, dataset, HDU or member that records it (``"/models"``, ``"HDU 'PRIMARY'"``); default
        the format's name.

    Returns
    -------
    int
        A version of :attr:`FileFormat.readable`.

    Raises
    ------
    SchemaVersionError or InputVersionError
        (:attr:`FileFormat.error`) The version is not an integer, is newer than this hpcblend reads
        ("upgrade hpcblend"), or older (:attr:`FileFormat.when_old`), or missing where the format
        requires it. The message names the file, ``where``, the attribute and the version.
    """
    fmt = FORMATS[key]
    where = where or fmt.name
    attr = fmt.recorded_as
    if version is None:
        if fmt.unrecorded is None:
            raise fmt.error(f"{path}: {where}: no {attr}; not an hpcblend {fmt.name}")
        return fmt.unrecorded
    if isinstance(version, bool) or not hasattr(version, "__index__"):
        raise fmt.error(f"{path}: {where}: {attr} = {version!r} is not an integer version")
    version = int(version)
    if version in fmt.readable:
        return version
    newer = version > fmt.current
    age = "newer" if newer else "older"
    advice = "upgrade hpcblend" if newer else fmt.when_old
    raise fmt.error(f"{path}: {where} {attr} is {version}, this hpcblend reads {attr} {_listed(fmt.readable)}: "
                    f"the file is {age} than this hpcblend ({advice})")


def check_resumable(version: int, path: str) -> None:
    """Refuse to resume a catalog whose layout is not the one written now.

    Raises
    ------
    SchemaVersionError
        ``version`` is not :data:`SCHEMA_VERSION` (an older file stays readable: run again without
        ``--resume``).
    """
    if int(version) != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: cannot resume: the catalog has schema_version {int(version)}, this hpcblend writes "
            f"{SCHEMA_VERSION}; run again without --resume (the file stays readable)")


def format_versions() -> dict:
    """The version of every format this hpcblend writes, ``{key: version}`` (for the run's provenance)."""
    return {key: fmt.current for key, fmt in FORMATS.items()}
