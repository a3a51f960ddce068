"""Exception hierarchy of hpcblend.

Every error hpcblend raises on purpose is a subclass of :class:`HpcblendError`,
and its message names the file, key (or HDU / dataset) and value at fault, so a
user can fix the input without reading the code.
"""

__all__ = [
    "HpcblendError",
    "ConfigError",
    "InputError",
    "PsfError",
    "BlendDataError",
    "DeblendError",
    "NumericalFailure",
    "CatalogError",
    "SchemaVersionError",
]


class HpcblendError(Exception):
    """Base class of every error hpcblend raises deliberately."""


class ConfigError(HpcblendError):
    """A job file or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class InputError(HpcblendError):
    """An input file cannot be read or is malformed (missing key, wrong shape, truncated)."""


class BlendDataError(InputError):
    """A blend's pixel data are unusable (NaN/inf, zero weight, band-count mismatch)."""


class PsfError(InputError):
    """A PSF image is not finite, not normalised to ~1, or not odd-sized."""


class DeblendError(HpcblendError):
    """The deblender could not process a blend."""


class NumericalFailure(DeblendError):
    """The fit diverged (NaN or inf loss) or hit a singular system it could not guard against."""


class CatalogError(HpcblendError):
    """An output catalog is corrupt, half-written or incompatible."""


class SchemaVersionError(CatalogError):
    """A catalog file's ``schema_version`` is older or newer than this hpcblend reads."""
