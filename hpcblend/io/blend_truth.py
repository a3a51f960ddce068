"""The truth inside a simulated blend file: the ``truth_*`` members of a seeded set's npz.

:mod:`hpcblend.simulate.blend_sets` writes blends in the ``hsc_blends`` layout plus ``truth_*`` members (its
module docstring lists them: true fluxes, centres, S/N, neighbour distances, kinds, conditions, and
``truth_version``); :func:`hpcblend.io.blends.read_blend` never loads them. :func:`read_blend_truth` does,
for :mod:`hpcblend.analysis.truth_metrics` and the side-by-side bench.
"""

from __future__ import annotations

import os
from typing import Union

from hpcblend.errors import InputError
from hpcblend.io.npz import npz_array, open_npz

__all__ = ["read_blend_truth"]


def read_blend_truth(path: Union[str, os.PathLike]) -> dict:
    """The truth of a file of :func:`~hpcblend.simulate.blend_sets.make_large_blends` or
    :func:`~hpcblend.simulate.blend_sets.make_bright_galaxy_blends`.

    Parameters
    ----------
    path : str or path
        An npz blend file with ``truth_*`` members.

    Returns
    -------
    dict
        The ``truth_*`` members without the prefix (``flux`` (K, B) counts, ``flux_image``, ``yx`` (K, 2) pixels,
        ...: :mod:`hpcblend.simulate.blend_sets`), 0-d ones as Python scalars, plus ``bands`` (tuple of str) and
        ``n_peaks``.

    Raises
    ------
    InputError
        The file cannot be read or has no truth (``truth_version`` missing).
    """
    path = os.fspath(path)
    with open_npz(path) as data:
        if "truth_version" not in data.files:
            raise InputError(f"{path}: no truth_* members (not a file of hpcblend.simulate.blend_sets)")
        out = {}
        for key in data.files:
            if key.startswith("truth_"):
                v = npz_array(data, path, key)
                out[key[len("truth_"):]] = v[()].item() if v.ndim == 0 else v
        bands = npz_array(data, path, "filters")
    out["bands"] = tuple(str(b) for b in bands)
    out["n_peaks"] = int(len(out["yx"]))
    return out
