"""Choose gallery blends of a finished catalog (records are made during the run: :mod:`hpcblend.diagnostics.gallery`)."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from hpcblend.diagnostics.gallery import gallery_record_from_result

__all__ = ["select_gallery_blends", "records_from_inputs"]


def select_gallery_blends(blends: np.ndarray, n_failed: int = 20, n_flagged: int = 20,
                          n_slowest: int = 10) -> dict:
    """Which blends deserve a gallery record: failed, flagged and slowest.

    Parameters
    ----------
    blends : ndarray
        ``/blends`` rows (or a rank's buffered rows).
    n_failed : int
        At most this many failed blends (``flag_failed`` or non-empty
        ``error_type``), slowest first.
    n_flagged : int
        At most this many other flagged blends (any ``flag_*``), highest
        χ²/px first.
    n_slowest : int
        The slowest blends by ``t_total``.

    Returns
    -------
    dict of int -> str
        Blend id → reason (``"failed"``, ``"flagged"``, ``"slowest"``, or
        several joined by ``"; "``).
    """
    out: dict = {}
    if len(blends) == 0:
        return out
    failed = blends["flag_failed"] | (blends["error_type"] != b"")
    flagged = np.zeros(len(blends), dtype=bool)
    for c in blends.dtype.names:
        if c.startswith("flag_") and blends.dtype[c] == np.bool_:
            flagged |= blends[c]
    flagged &= ~failed
    t = blends["t_total"]
    chi = np.nan_to_num(blends["chi2_per_pixel"], nan=np.inf)

    def add(idx: np.ndarray, reason: str) -> None:
        for i in idx:
            bid = int(blends["id"][i])
            out[bid] = f"{out[bid]}; {reason}" if bid in out else reason

    fi = np.where(failed)[0]
    add(fi[np.argsort(-t[fi], kind="stable")][: max(n_failed, 0)], "failed")
    gi = np.where(flagged)[0]
    add(gi[np.argsort(-chi[gi], kind="stable")][: max(n_flagged, 0)], "flagged")
    add(np.argsort(-t, kind="stable")[: max(n_slowest, 0)], "slowest")
    return out


def records_from_inputs(catalog_path: str | os.PathLike, reasons: Mapping[int, str]) -> list:
    """Gallery records for blends of a finished catalog, re-deblended from their input files.

    For catalogs written without a gallery: each blend's ``source_file`` is
    read again and deblended with the catalog's ``/config`` deblend settings.
    Blends whose file cannot be read get no record.

    Parameters
    ----------
    catalog_path : str or os.PathLike
    reasons : dict of int -> str
        Blend id → reason (e.g. from :func:`select_gallery_blends`).

    Returns
    -------
    list of dict
        :func:`gallery_record` dicts (for :func:`write_gallery`).
    """
    from hpcblend.io.catalog import read_json_group, read_table
    from hpcblend.config import job_from_dict
    from hpcblend.deblend.deblender import deblend_blend
    from hpcblend.io.blends import read_blend

    blends = read_table(catalog_path, "blends")
    cfg = dict(read_json_group(catalog_path, "config"))
    base_dir = cfg.pop("base_dir", ".")
    job = job_from_dict(cfg, source=f"{os.fspath(catalog_path)}:/config", base_dir=base_dir)
    bands = job.input.bands
    rows = {int(r["id"]): r for r in blends}
    out = []
    for bid, reason in reasons.items():
        row = rows.get(int(bid))
        if row is None:
            continue
        path = row["source_file"].decode("utf-8", "replace")
        try:
            blend = read_blend(path, bands=tuple(bands) if bands else None, blend_id=int(bid))
        except Exception:  # noqa: BLE001 - unreadable input: no image to show
            continue
        try:
            result = deblend_blend(blend, job.deblend)
        except Exception as exc:  # noqa: BLE001 - shown as a failed blend without a model
            result = None
            info = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            info = {}
        out.append(gallery_record_from_result(blend, result, job.deblend, reason, info=info))
    return out
