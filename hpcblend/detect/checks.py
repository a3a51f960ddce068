"""Input checks shared by the detection steps: array dimensions and matching shapes.

Every step of :mod:`hpcblend.detect` takes band-first cubes ``(B, H, W)`` (or ``(H, W)`` planes)
and says which argument is wrong, with its shape, in a
:class:`~hpcblend.errors.BlendDataError`. (Bad pixels: :func:`hpcblend.io.masks.bad_pixel_mask`.)
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from hpcblend.errors import BlendDataError

__all__ = ["check_cube", "check_same_shape"]


def check_cube(name: str, arr, ndim: int = 3) -> np.ndarray:
    """``arr`` as an array of ``ndim`` dimensions and non-zero size; BlendDataError naming ``name`` otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != ndim:
        expect = "(B, H, W)" if ndim == 3 else "(H, W)"
        raise BlendDataError(f"{name}: expected {ndim}-D {expect}, got shape {arr.shape}")
    if arr.size == 0:
        raise BlendDataError(f"{name}: empty array of shape {arr.shape}")
    return arr


def check_same_shape(ref_name: str, ref: np.ndarray, name: str, arr: Optional[np.ndarray]) -> None:
    """BlendDataError when ``arr`` (unless None) differs in shape from ``ref``."""
    if arr is not None and arr.shape != ref.shape:
        raise BlendDataError(f"{name}: shape {arr.shape} differs from {ref_name} shape {ref.shape}")
