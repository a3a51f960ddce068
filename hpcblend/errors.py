"""Exception hierarchy of hpcblend.

Every error hpcblend raises on purpose is a subclass of :class:`HpcblendError`,
and its message names the file, key (or HDU / dataset) and value at fault, so a
user can fix the input without reading the code.
"""

__all__ = [
    "HpcblendError",
    "ConfigError",
    "InputError",
    "InputVersionError",
    "PsfError",
    "BlendDataError",
    "DeblendError",
    "NumericalFailure",
    "CatalogError",
    "SchemaVersionError",
    "PROGRAMMING_ERRORS",
    "is_programming_error",
]


class HpcblendError(Exception):
    """Base class of every error hpcblend raises deliberately."""


class ConfigError(HpcblendError):
    """A job file or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class InputError(HpcblendError):
    """An input file cannot be read or is malformed (missing key, wrong shape, truncated)."""


class InputVersionError(InputError):
    """An input file records a format version that this hpcblend does not read (too old or too new)."""


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


#: Exception classes that mean a bug in hpcblend (or a library it calls), never bad data: they are
#: never turned into a flagged row; the unit stops the job loudly (see :func:`is_programming_error`).
PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, ImportError, NotImplementedError,
                      SyntaxError, RecursionError)


def is_programming_error(exc: BaseException) -> bool:
    """True when ``exc`` is a bug to report loudly rather than bad data to flag in a row.

    The failure policy (README, "Failure policy"): data errors (a bad pixel, an
    unreadable blend, a PSF that does not sum to 1) become flagged rows; an
    error of the environment stops the job on every rank; a programming error
    — ``TypeError``, ``AttributeError``, ``NameError`` (``UnboundLocalError``),
    ``AssertionError``, ``ImportError``, ``NotImplementedError``, a Numba
    typing or lowering error — is never swallowed into a row.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    bool
    """
    if isinstance(exc, HpcblendError):
        return False
    if isinstance(exc, PROGRAMMING_ERRORS):
        return True
    return type(exc).__module__.startswith("numba")  # TypingError, LoweringError, ...
