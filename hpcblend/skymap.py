"""Tract and patch geometry: boxes, the patch grid, peak ownership and 64-bit ids.

A *tract* is one large coadd image (shape ``(H, W)`` pixels, one WCS). It is cut
into a regular grid of *patches* so that one MPI rank can work on one patch
without holding the whole tract:

* the **inner** boxes of the patches tile the tract exactly, with no overlap
  and no gap; every patch's inner box is ``inner_size`` pixels on a side,
  except the last row / last column of the grid, which may be smaller;
* the **outer** box of a patch is its inner box grown by ``overlap`` pixels on
  every side, clipped to the tract. Detection and deblending run on the outer
  box, so a blend that straddles an inner border is seen whole by both patches;
* a peak (detected source) is **owned** by the one patch whose inner box holds
  it; a patch keeps only the blends/children it owns, so every source is
  reported exactly once (the LSST "detect-in-patch, keep-if-inner" rule,
  Bosch et al. 2018, PASJ 70, S5, section 3.2).

Conventions (see ``DESIGN.md``): coordinates are ``(y, x)`` in code, 0-based,
in the tract's pixel frame; pixel centres are at integer coordinates, so pixel
``[iy, ix]`` covers ``[iy - 0.5, iy + 0.5) x [ix - 0.5, ix + 0.5)``. A peak at a
fractional position ``(y, x)`` lies in pixel ``(floor(y + 0.5), floor(x + 0.5))``
and belongs to the patch whose inner box contains that pixel: a position exactly
on a pixel edge (``y = k + 0.5``) goes to the higher pixel, so ownership is
half-open and unique.

Ids: :func:`encode_id` packs a tract number, a patch flat index and a running
number into one non-negative 64-bit integer (layout below), :func:`decode_id`
unpacks it. This follows the LSST ``ExposureIdInfo`` / ``IdFactory`` idea of
reserving high bits for the data id and low bits for a running source number.

Id bit layout (bit 0 = least significant)::

    bit 63      : 0 (sign bit: ids are non-negative int64)
    bits 48..62 : tract          (15 bits, 0 .. 32767)
    bits 32..47 : patch index    (16 bits, 0 .. 65535; PatchInfo.flat)
    bits  0..31 : running number (32 bits, 0 .. 4294967295)

References
----------
Bosch, J. et al. 2018, "The Hyper Suprime-Cam software pipeline", PASJ 70, S5.
Melchior, P. et al. 2018, "scarlet: Source separation in multi-band images by
constrained matrix factorization", Astronomy and Computing 24, 129.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple, Union

import numpy as np

from hpcblend.errors import ConfigError, InputError

__all__ = [
    "Box",
    "PatchInfo",
    "ID_TRACT_BITS",
    "ID_PATCH_BITS",
    "ID_RUNNING_BITS",
    "MAX_TRACT",
    "MAX_PATCH",
    "MAX_RUNNING",
    "pixel_index",
    "patch_grid_shape",
    "make_patches",
    "owning_patch",
    "owner_index",
    "encode_id",
    "decode_id",
]

#: Bits of a 64-bit id used by the tract number (bits 48..62).
ID_TRACT_BITS: int = 15
#: Bits of a 64-bit id used by the patch flat index (bits 32..47).
ID_PATCH_BITS: int = 16
#: Bits of a 64-bit id used by the running number (bits 0..31).
ID_RUNNING_BITS: int = 32
#: Largest tract number an id can hold.
MAX_TRACT: int = (1 << ID_TRACT_BITS) - 1
#: Largest patch flat index an id can hold (so at most ``MAX_PATCH + 1`` patches per tract).
MAX_PATCH: int = (1 << ID_PATCH_BITS) - 1
#: Largest running number an id can hold.
MAX_RUNNING: int = (1 << ID_RUNNING_BITS) - 1

_PATCH_SHIFT = ID_RUNNING_BITS
_TRACT_SHIFT = ID_RUNNING_BITS + ID_PATCH_BITS

IntPair = Union[int, Tuple[int, int], Sequence[int]]


# -----------------------------------------------------------------------------
# Box
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned, half-open rectangle of pixels.

    The box covers rows ``y0 <= iy < y0 + h`` and columns ``x0 <= ix < x0 + w``
    (integer pixel indices, 0-based, in whatever frame the origin refers to —
    for tracts and patches, the tract frame). A box with ``h == 0`` or
    ``w == 0`` is empty.

    Parameters
    ----------
    origin : tuple of int
        ``(y0, x0)``, the pixel index of the box's first row and column.
    shape : tuple of int
        ``(h, w)`` in pixels, both >= 0.

    Raises
    ------
    ConfigError
        If origin or shape are not two integers, or the shape is negative.

    Examples
    --------
    >>> b = Box((10, 20), (5, 8))
    >>> b.stop, b.area
    ((15, 28), 40)
    >>> image[b.slices]  # doctest: +SKIP
    """

    origin: Tuple[int, int]
    shape: Tuple[int, int]

    def __post_init__(self) -> None:
        origin = _int_pair(self.origin, "Box origin", allow_negative=True)
        shape = _int_pair(self.shape, "Box shape", allow_negative=False)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "shape", shape)

    # -- constructors ----------------------------------------------------------

    @classmethod
    def from_bounds(cls, y0: int, y1: int, x0: int, x1: int) -> "Box":
        """The box of rows ``[y0, y1)`` and columns ``[x0, x1)``; empty if ``y1 <= y0`` or ``x1 <= x0``."""
        return cls((int(y0), int(x0)), (max(int(y1) - int(y0), 0), max(int(x1) - int(x0), 0)))

    # -- properties -------------------------------------------------------------

    @property
    def y0(self) -> int:
        """First row."""
        return self.origin[0]

    @property
    def x0(self) -> int:
        """First column."""
        return self.origin[1]

    @property
    def height(self) -> int:
        """Number of rows ``h``."""
        return self.shape[0]

    @property
    def width(self) -> int:
        """Number of columns ``w``."""
        return self.shape[1]

    @property
    def stop(self) -> Tuple[int, int]:
        """``(y0 + h, x0 + w)``: one past the last row and column."""
        return (self.origin[0] + self.shape[0], self.origin[1] + self.shape[1])

    @property
    def area(self) -> int:
        """Number of pixels ``h * w``."""
        return self.shape[0] * self.shape[1]

    @property
    def is_empty(self) -> bool:
        """True if the box holds no pixel."""
        return self.area == 0

    @property
    def slices(self) -> Tuple[slice, slice]:
        """``(slice(y0, y0 + h), slice(x0, x0 + w))`` to index a (..., H, W) array in the same frame.

        Only meaningful for a box with non-negative origin inside the array;
        use :meth:`slices_in` for a box relative to another one.
        """
        y1, x1 = self.stop
        return (slice(self.origin[0], y1), slice(self.origin[1], x1))

    # -- operations ----------------------------------------------------------------

    def contains(self, y, x):
        """Whether pixel positions lie in the box (half-open).

        Parameters
        ----------
        y, x : float or int or array_like
            Positions in the box's frame, in pixels. Fractional positions are
            assigned to a pixel by ``floor(v + 0.5)`` (pixel centres at integer
            coordinates), so ``y0 - 0.5 <= y < y0 + h - 0.5`` is inside.

        Returns
        -------
        bool or ndarray of bool
            Broadcast shape of ``y`` and ``x``; a Python bool for scalars.
        """
        iy = pixel_index(y)
        ix = pixel_index(x)
        y1, x1 = self.stop
        inside = (iy >= self.origin[0]) & (iy < y1) & (ix >= self.origin[1]) & (ix < x1)
        if np.ndim(inside) == 0:
            return bool(inside)
        return inside

    def contains_box(self, other: "Box") -> bool:
        """True if every pixel of ``other`` is in this box (an empty box is contained in any box)."""
        if other.is_empty:
            return True
        return (other.y0 >= self.y0 and other.x0 >= self.x0
                and other.stop[0] <= self.stop[0] and other.stop[1] <= self.stop[1])

    def intersection(self, other: "Box") -> "Box":
        """The overlap of two boxes.

        Returns
        -------
        Box
            The common pixels; an empty box (shape ``(0, 0)``) if there are none.
        """
        y0 = max(self.y0, other.y0)
        x0 = max(self.x0, other.x0)
        y1 = min(self.stop[0], other.stop[0])
        x1 = min(self.stop[1], other.stop[1])
        if y1 <= y0 or x1 <= x0:
            return Box((y0, x0), (0, 0))
        return Box((y0, x0), (y1 - y0, x1 - x0))

    def __and__(self, other: "Box") -> "Box":
        return self.intersection(other)

    def grow(self, n: IntPair) -> "Box":
        """The box grown by ``n`` pixels on every side (``n`` int or ``(ny, nx)``; negative shrinks)."""
        ny, nx = _int_pair(n, "grow amount", allow_negative=True)
        return Box.from_bounds(self.y0 - ny, self.stop[0] + ny, self.x0 - nx, self.stop[1] + nx)

    def shifted(self, dy: int, dx: int) -> "Box":
        """The same box with its origin moved by ``(dy, dx)``."""
        return Box((self.y0 + int(dy), self.x0 + int(dx)), self.shape)

    def slices_in(self, other: "Box") -> Tuple[slice, slice]:
        """Slices that cut this box out of an array covering ``other``.

        Parameters
        ----------
        other : Box
            The box an array covers (e.g. a patch's outer box).

        Returns
        -------
        tuple of slice
            ``array[self.slices_in(other)]`` is this box's part of the array.

        Raises
        ------
        ValueError
            If this box is not inside ``other``.
        """
        if not other.contains_box(self):
            raise ValueError(f"{self} is not inside {other}")
        y0, x0 = self.y0 - other.y0, self.x0 - other.x0
        return (slice(y0, y0 + self.height), slice(x0, x0 + self.width))

    def __repr__(self) -> str:
        return f"Box(origin={self.origin}, shape={self.shape})"


# -----------------------------------------------------------------------------
# Patches
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchInfo:
    """One patch of a tract.

    Attributes
    ----------
    tract : int
        Tract number (0 .. :data:`MAX_TRACT`).
    index : tuple of int
        ``(iy, ix)``: the patch's row and column in the patch grid.
    flat : int
        ``iy * nx + ix`` with ``nx`` the number of patch columns: the patch's
        position in :func:`make_patches`'s list and the patch field of ids.
    inner : Box
        Pixels the patch owns (tract frame); the inner boxes tile the tract.
    outer : Box
        ``inner`` grown by the overlap and clipped to the tract: the pixels a
        rank reads and processes for this patch.
    grid_shape : tuple of int
        ``(ny, nx)``: patch rows and columns of the whole tract.
    """

    tract: int
    index: Tuple[int, int]
    flat: int
    inner: Box
    outer: Box
    grid_shape: Tuple[int, int] = (1, 1)

    @property
    def name(self) -> str:
        """``"<iy>,<ix>"``, the LSST-style patch name."""
        return f"{self.index[0]},{self.index[1]}"

    @property
    def id_base(self) -> int:
        """``encode_id(tract, flat, 0)``: add a running number (< 2**32) to get an object id."""
        return encode_id(self.tract, self.flat, 0)

    def owns(self, y, x):
        """Whether positions (tract frame, pixels) lie in this patch's inner box.

        Same rule as :func:`owner_index`: pixel ``floor(v + 0.5)``, half-open.

        Parameters
        ----------
        y, x : float or array_like
            Positions in the tract frame (not the outer-box frame).

        Returns
        -------
        bool or ndarray of bool
        """
        return self.inner.contains(y, x)

    def owns_local(self, y, x):
        """Like :meth:`owns` for positions relative to the outer box's origin (e.g. peaks found in a patch cut-out)."""
        return self.inner.contains(np.asarray(y) + self.outer.y0, np.asarray(x) + self.outer.x0)


def pixel_index(v):
    """Pixel index of a position: ``floor(v + 0.5)`` (pixel centres at integers).

    Parameters
    ----------
    v : float or int or array_like
        Coordinates in pixels.

    Returns
    -------
    int or ndarray of int64
        A Python int for a scalar input.
    """
    a = np.asarray(v)
    if np.issubdtype(a.dtype, np.integer):
        idx = a.astype(np.int64)
    else:
        idx = np.floor(a.astype(np.float64) + 0.5)
        if np.ndim(idx) == 0:
            if not np.isfinite(idx):
                raise InputError(f"position {v!r} is not finite")
            return int(idx)
        bad = ~np.isfinite(idx)
        if bad.any():
            # Keep vectorised callers going: non-finite positions map to an impossible pixel.
            idx = np.where(bad, np.iinfo(np.int64).min // 2, idx)
        idx = idx.astype(np.int64)
    if idx.ndim == 0:
        return int(idx)
    return idx


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_pair(value, what: str, allow_negative: bool) -> Tuple[int, int]:
    if _is_int(value):
        pair = (int(value), int(value))
    else:
        try:
            seq = tuple(value)
        except TypeError:
            raise ConfigError(f"{what}: expected an integer or two integers, got {value!r}") from None
        if len(seq) != 2 or not all(_is_int(v) for v in seq):
            raise ConfigError(f"{what}: expected two integers, got {value!r}")
        pair = (int(seq[0]), int(seq[1]))
    if not allow_negative and min(pair) < 0:
        raise ConfigError(f"{what}: expected non-negative values, got {value!r}")
    return pair


def _check_sizes(tract_shape, inner_size, overlap=0) -> Tuple[Tuple[int, int], Tuple[int, int], int]:
    if _is_int(tract_shape):
        raise ConfigError(f"tract_shape: expected (H, W), got {tract_shape!r}")
    shape = _int_pair(tract_shape, "tract_shape", allow_negative=True)
    if min(shape) < 1:
        raise ConfigError(f"tract_shape: expected positive (H, W), got {tract_shape!r}")
    inner = _int_pair(inner_size, "inner_size", allow_negative=True)
    if min(inner) < 1:
        raise ConfigError(f"inner_size: expected a positive number of pixels, got {inner_size!r}")
    if not _is_int(overlap) or overlap < 0:
        raise ConfigError(f"overlap: expected a non-negative integer number of pixels, got {overlap!r}")
    return shape, inner, int(overlap)


def patch_grid_shape(tract_shape: Tuple[int, int], inner_size: IntPair = 4000) -> Tuple[int, int]:
    """Number of patch rows and columns ``(ny, nx) = ceil(H / inner_h), ceil(W / inner_w)``.

    Parameters
    ----------
    tract_shape : tuple of int
        ``(H, W)`` of the tract in pixels.
    inner_size : int or tuple of int
        Inner patch size in pixels, square (int) or ``(h, w)``.

    Raises
    ------
    ConfigError
        If a size is not a positive integer.
    """
    (h, w), (ih, iw), _ = _check_sizes(tract_shape, inner_size)
    return (-(-h // ih), -(-w // iw))


def make_patches(tract_shape: Tuple[int, int], inner_size: IntPair = 4000, overlap: int = 100,
                 tract: int = 0) -> list:
    """Cut a tract into a grid of patches.

    Parameters
    ----------
    tract_shape : tuple of int
        ``(H, W)`` of the tract in pixels.
    inner_size : int or tuple of int, default 4000
        Inner box size in pixels (square, or ``(h, w)``). The last patch row and
        column get what is left, so they may be smaller; a tract smaller than
        ``inner_size`` is one patch.
    overlap : int, default 100
        Pixels added on every side of the inner box to make the outer box
        (then clipped to the tract). 0 makes outer == inner.
    tract : int, default 0
        Tract number stored in each :class:`PatchInfo` (0 .. :data:`MAX_TRACT`).

    Returns
    -------
    list of PatchInfo
        In row-major order (``patches[p].flat == p``), ``ny * nx`` of them.

    Raises
    ------
    ConfigError
        If a size is not a positive integer (``overlap`` non-negative), the
        tract number does not fit an id, or there are more than
        ``MAX_PATCH + 1`` patches.
    """
    (h, w), (ih, iw), overlap = _check_sizes(tract_shape, inner_size, overlap)
    if not _is_int(tract) or not 0 <= int(tract) <= MAX_TRACT:
        raise ConfigError(f"tract: expected an integer in [0, {MAX_TRACT}], got {tract!r}")
    ny, nx = -(-h // ih), -(-w // iw)
    if ny * nx > MAX_PATCH + 1:
        raise ConfigError(f"inner_size: {inner_size!r} cuts a {h}x{w} tract into {ny * nx} patches; "
                          f"ids hold at most {MAX_PATCH + 1}")
    tract_box = Box((0, 0), (h, w))
    patches = []
    for iy in range(ny):
        for ix in range(nx):
            inner = Box.from_bounds(iy * ih, min((iy + 1) * ih, h), ix * iw, min((ix + 1) * iw, w))
            outer = inner.grow(overlap) & tract_box
            patches.append(PatchInfo(tract=int(tract), index=(iy, ix), flat=iy * nx + ix,
                                     inner=inner, outer=outer, grid_shape=(ny, nx)))
    return patches


def owner_index(tract_shape: Tuple[int, int], inner_size: IntPair, y, x):
    """Flat index of the patch owning each position (vectorised).

    Parameters
    ----------
    tract_shape : tuple of int
        ``(H, W)`` of the tract in pixels.
    inner_size : int or tuple of int
        Inner patch size, as given to :func:`make_patches`.
    y, x : float or array_like
        Positions in the tract frame (pixels, centres at integers). Assigned to
        pixel ``floor(v + 0.5)``.

    Returns
    -------
    int or ndarray of int64
        ``iy * nx + ix`` of the owning patch (the index into
        :func:`make_patches`'s list), or ``-1`` for positions outside the tract
        or not finite. A Python int for scalar input.

    Raises
    ------
    ConfigError
        If a size is not a positive integer.
    """
    (h, w), (ih, iw), _ = _check_sizes(tract_shape, inner_size)
    nx = -(-w // iw)
    py = np.asarray(pixel_index(y), dtype=np.int64)
    px = np.asarray(pixel_index(x), dtype=np.int64)
    py, px = np.broadcast_arrays(py, px)
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    flat = np.where(inside, (py // ih) * nx + (px // iw), -1).astype(np.int64)
    if flat.ndim == 0:
        return int(flat)
    return flat


def owning_patch(patches: Iterable[PatchInfo], y: float, x: float) -> PatchInfo:
    """The patch whose inner box holds a position.

    Parameters
    ----------
    patches : iterable of PatchInfo
        Patches of one tract (any subset of :func:`make_patches`'s list).
    y, x : float
        One position in the tract frame (pixels). Assigned to pixel
        ``(floor(y + 0.5), floor(x + 0.5))``.

    Returns
    -------
    PatchInfo

    Raises
    ------
    InputError
        If the position is not finite or no patch's inner box holds it.
    """
    if np.ndim(y) != 0 or np.ndim(x) != 0:
        raise InputError(f"owning_patch takes one position, got arrays of shapes {np.shape(y)}, "
                         f"{np.shape(x)}; use owner_index for many")
    iy, ix = pixel_index(y), pixel_index(x)
    for patch in patches:
        if patch.inner.contains(iy, ix):
            return patch
    raise InputError(f"position (y={y}, x={x}) (pixel ({iy}, {ix})) is in no patch's inner box")


# -----------------------------------------------------------------------------
# Ids
# -----------------------------------------------------------------------------


def _check_range(name: str, value, maximum: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == object):
        raise InputError(f"{name}: expected integers, got dtype {arr.dtype} ({value!r})")
    if arr.dtype == object:
        if not all(_is_int(v) for v in arr.ravel()):
            raise InputError(f"{name}: expected integers, got {value!r}")
    if arr.size and (int(np.min(arr)) < 0 or int(np.max(arr)) > maximum):
        raise InputError(f"{name}: values must lie in [0, {maximum}], got min {np.min(arr)}, max {np.max(arr)}")
    return arr.astype(np.int64)


def encode_id(tract, patch, running):
    """Pack tract, patch and running number into non-negative 64-bit ids.

    Layout: ``tract << 48 | patch << 32 | running`` (see the module docstring).

    Parameters
    ----------
    tract : int or array_like of int
        0 .. :data:`MAX_TRACT` (32767).
    patch : int or array_like of int
        Patch flat index, 0 .. :data:`MAX_PATCH` (65535).
    running : int or array_like of int
        Running number within the patch, 0 .. :data:`MAX_RUNNING` (2**32 - 1).

    Returns
    -------
    int or ndarray of int64
        Broadcast shape of the inputs; a Python int for scalars. Ids sort by
        tract, then patch, then running number.

    Raises
    ------
    InputError
        If a field is not an integer or does not fit its bits.
    """
    t = _check_range("tract", tract, MAX_TRACT)
    p = _check_range("patch", patch, MAX_PATCH)
    r = _check_range("running", running, MAX_RUNNING)
    ids = (t << _TRACT_SHIFT) | (p << _PATCH_SHIFT) | r
    if np.ndim(ids) == 0:
        return int(ids)
    return ids


def decode_id(ids):
    """Unpack ids made by :func:`encode_id`.

    Parameters
    ----------
    ids : int or array_like of int
        Non-negative 64-bit ids.

    Returns
    -------
    tract, patch, running : int or ndarray of int64
        Python ints for a scalar input.

    Raises
    ------
    InputError
        If an id is negative or not an integer.
    """
    a = _check_range("id", ids, np.iinfo(np.int64).max)
    tract = (a >> _TRACT_SHIFT) & MAX_TRACT
    patch = (a >> _PATCH_SHIFT) & MAX_PATCH
    running = a & MAX_RUNNING
    if a.ndim == 0:
        return int(tract), int(patch), int(running)
    return tract, patch, running
