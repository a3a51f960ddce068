"""JSON of what hpcblend stores as text: the one ``default`` hook for :func:`json.dumps`.

Configuration, provenance, profile metadata, gallery extras, report
summaries and benchmark figures are written as JSON; NumPy scalars and
arrays, paths and sets appear in them. :func:`json_default` turns those into
plain JSON values and refuses anything else, so an unexpected object is an
error where it is written, not a silently stringified value.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["json_default", "dumps"]


def json_default(obj: Any) -> Any:
    """``default`` hook of :func:`json.dumps`: NumPy scalars → Python, arrays → lists, paths → str, sets → sorted lists.

    Raises
    ------
    TypeError
        Any other type (as :func:`json.dumps` itself would).
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` with :func:`json_default` (keyword arguments passed on)."""
    return json.dumps(obj, default=json_default, **kwargs)
