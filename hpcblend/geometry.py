"""The one box type of hpcblend: :class:`Box` (origin + shape, half-open), and integer-pair parsing.

Every rectangle above the kernels is a :class:`Box` — a patch's inner and
outer boxes, a blend's bounding box, a footprint's box in its patch, a
source's box in its blend. Kernels take plain ints (``y0, x0, height, width``)
unpacked from it at the call. Conventions (``DESIGN.md``): coordinates are
``(y, x)``, 0-based; pixel centres are at integer coordinates; a box covers
rows ``y0 .. y0 + height - 1`` and columns ``x0 .. x0 + width - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np

from hpcblend.errors import ConfigError, InputError

__all__ = ["Box", "IntPair", "grow_boxes", "int_pair", "is_integer", "pixel_index"]

#: An ``int`` (same value on both axes) or a ``(y, x)`` pair of ints.
IntPair = Union[int, Tuple[int, int], Sequence[int]]




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
        origin = int_pair(self.origin, "Box origin", allow_negative=True)
        shape = int_pair(self.shape, "Box shape", allow_negative=False)
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
        ny, nx = int_pair(n, "grow amount", allow_negative=True)
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


def grow_boxes(boxes: np.ndarray, pad: int, shape) -> np.ndarray:
    """Boxes ``(y0, y1, x0, x1)`` (N, 4), int64, half-open, grown by ``pad`` pixels on every side and clipped
    to an image of ``shape`` (H, W): :meth:`Box.grow` then ``&`` the image, for many boxes at once (the
    kernels' box layout rather than :class:`Box` objects)."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    h, w = shape
    return np.stack([np.maximum(boxes[:, 0] - pad, 0), np.minimum(boxes[:, 1] + pad, h),
                     np.maximum(boxes[:, 2] - pad, 0), np.minimum(boxes[:, 3] + pad, w)], 1)


def is_integer(v) -> bool:
    """Whether ``v`` is a Python or NumPy integer (``bool`` is not)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_pair(value, what: str, allow_negative: bool) -> Tuple[int, int]:
    """``value`` as a ``(y, x)`` pair of ints: an int is used on both axes.

    Raises
    ------
    ConfigError
        Not an integer or two integers, or negative where ``allow_negative`` is False; ``what`` names the value.
    """
    if is_integer(value):
        pair = (int(value), int(value))
    else:
        try:
            seq = tuple(value)
        except TypeError:
            raise ConfigError(f"{what}: expected an integer or two integers, got {value!r}") from None
        if len(seq) != 2 or not all(is_integer(v) for v in seq):
            raise ConfigError(f"{what}: expected two integers, got {value!r}")
        pair = (int(seq[0]), int(seq[1]))
    if not allow_negative and min(pair) < 0:
        raise ConfigError(f"{what}: expected non-negative values, got {value!r}")
    return pair


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
