"""Tract and patch geometry: the patch grid (boxes are :class:`hpcblend.geometry.Box`), peak ownership and 64-bit ids.

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

from dataclasses import dataclass
from typing import Iterable, Tuple

import numpy as np

from hpcblend.errors import ConfigError, InputError
from hpcblend.geometry import Box, IntPair, int_pair, is_integer, pixel_index

__all__ = [
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


def _check_sizes(tract_shape, inner_size, overlap=0) -> Tuple[Tuple[int, int], Tuple[int, int], int]:
    if is_integer(tract_shape):
        raise ConfigError(f"tract_shape: expected (H, W), got {tract_shape!r}")
    shape = int_pair(tract_shape, "tract_shape", allow_negative=True)
    if min(shape) < 1:
        raise ConfigError(f"tract_shape: expected positive (H, W), got {tract_shape!r}")
    inner = int_pair(inner_size, "inner_size", allow_negative=True)
    if min(inner) < 1:
        raise ConfigError(f"inner_size: expected a positive number of pixels, got {inner_size!r}")
    if not is_integer(overlap) or overlap < 0:
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
    if not is_integer(tract) or not 0 <= int(tract) <= MAX_TRACT:
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
        if not all(is_integer(v) for v in arr.ravel()):
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
