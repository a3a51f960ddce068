"""Which gallery records of a finished catalog the report shows.

Records are made during the run (:mod:`hpcblend.diagnostics.gallery`) and
stored in the catalog's ``/gallery`` (:mod:`hpcblend.io.gallery`); the report
never re-runs the deblender. A catalog without ``/gallery`` has no images to
show, and the report says so. :func:`select_gallery_blends` picks, among the
blends that have a record, the worst failed, flagged and slowest ones.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from hpcblend.report.data import exception_mask, flag_columns

__all__ = ["GALLERY_GROUPS", "select_gallery_blends"]

#: The gallery's groups, in the order they are filled and shown.
GALLERY_GROUPS = ("failed", "flagged", "slowest")


def select_gallery_blends(blends: np.ndarray, n: int, with_records: Optional[Iterable[int]] = None) -> list:
    """The blends to show: worst failed, flagged (highest χ²/px) and slowest.

    Parameters
    ----------
    blends : ndarray
        ``/blends`` rows (``id``, ``t_total``, ``chi2_per_pixel``,
        ``error_type``, ``flag_*``).
    n : int
        At most this many blends per group.
    with_records : iterable of int, optional
        Blend ids that have a ``/gallery`` record; only those are chosen
        (default: every blend).

    Returns
    -------
    list of (int, str)
        ``(blend_id, group)`` with group in :data:`GALLERY_GROUPS`: failed
        blends (exception or ``flag_failed``) slowest first, then other
        flagged blends highest χ²/px first (NaN counts as highest), then the
        slowest of all; a blend appears once, in the first group it is
        chosen for.
    """
    if not len(blends):
        return []
    if with_records is not None:
        have = {int(i) for i in with_records}
        idx = np.array([i for i in range(len(blends)) if int(blends["id"][i]) in have], dtype=int)
        if not len(idx):
            return []
        blends = blends[idx]
    failed = exception_mask(blends) | blends["flag_failed"]
    flagged = np.zeros(len(blends), dtype=bool)
    for c in flag_columns(blends):
        flagged |= blends[c]
    flagged &= ~failed
    chosen: list = []
    seen: set = set()

    def take(mask: np.ndarray, key: np.ndarray, group: str) -> None:
        cand = np.where(mask)[0]
        cand = cand[np.argsort(-key[cand], kind="stable")]
        k = 0
        for i in cand:
            bid = int(blends["id"][i])
            if bid in seen:
                continue
            chosen.append((bid, group))
            seen.add(bid)
            k += 1
            if k >= n:
                break

    chi = np.nan_to_num(blends["chi2_per_pixel"], nan=np.inf)
    take(failed, blends["t_total"], "failed")
    take(flagged, chi, "flagged")
    take(np.ones(len(blends), dtype=bool), blends["t_total"], "slowest")
    return chosen
