"""Runtime scaling: the power law t ≈ c · n_peaks^a · area^b, fitted in log space."""

from __future__ import annotations

import numpy as np

__all__ = ["fit_power_law", "binned_medians"]


def fit_power_law(t: np.ndarray, n_peaks: np.ndarray, area: np.ndarray) -> dict:
    """Least-squares fit of ``log t = log c + a log n_peaks + b log area``.

    Parameters
    ----------
    t : array_like, shape (N,)
        Runtime per blend (s). Rows where any of ``t``, ``n_peaks``,
        ``area`` is not finite and > 0 are left out.
    n_peaks : array_like, shape (N,)
    area : array_like, shape (N,)
        Footprint area (pixels).

    Returns
    -------
    dict
        ``c`` (s), ``a``, ``b``, their standard errors ``c_err``, ``a_err``,
        ``b_err`` (from the residual variance, ``σ² (XᵀX)⁻¹``; ``c_err`` by
        the delta method, ``c · σ(log c)``), ``r2`` (coefficient of
        determination in log space), ``n`` (rows used), ``rms_dex``
        (residual scatter in log10), and ``note`` ("" or why some values are
        NaN: fewer than 4 rows, or n_peaks/area without spread).
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    n_peaks = np.asarray(n_peaks, dtype=np.float64).ravel()
    area = np.asarray(area, dtype=np.float64).ravel()
    if not (t.shape == n_peaks.shape == area.shape):
        raise ValueError(f"fit_power_law: t, n_peaks, area differ in length ({len(t)}, {len(n_peaks)}, {len(area)})")
    ok = np.isfinite(t) & np.isfinite(n_peaks) & np.isfinite(area) & (t > 0) & (n_peaks > 0) & (area > 0)
    n = int(ok.sum())
    nan = float("nan")
    out = dict(c=nan, a=nan, b=nan, c_err=nan, a_err=nan, b_err=nan, r2=nan, n=n, rms_dex=nan, note="")
    if n < 4:
        out["note"] = f"too few rows to fit ({n} < 4)"
        return out
    y = np.log(t[ok])
    x = np.column_stack([np.ones(n), np.log(n_peaks[ok]), np.log(area[ok])])
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < 3:
        out["note"] = "n_peaks or area does not vary (or they are collinear): exponents not identifiable"
        return out
    resid = y - x @ coef
    dof = n - 3
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(x.T @ x)
    err = np.sqrt(np.diag(cov))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    c = float(np.exp(coef[0]))
    out.update(c=c, a=float(coef[1]), b=float(coef[2]), c_err=float(c * err[0]), a_err=float(err[1]),
               b_err=float(err[2]), r2=float(1.0 - float(resid @ resid) / ss_tot) if ss_tot > 0 else nan,
               rms_dex=float(np.sqrt(s2) / np.log(10.0)))
    return out


def binned_medians(x: np.ndarray, y: np.ndarray, n_bins: int = 8, log: bool = True, min_count: int = 3) -> tuple:
    """Medians of ``y`` in bins of ``x`` (logarithmic bins by default).

    Parameters
    ----------
    x, y : array_like, shape (N,)
    n_bins : int
    log : bool
        Geometric bin edges (``x`` must be > 0; other rows are left out).
    min_count : int
        Bins with fewer rows are left out.

    Returns
    -------
    centers : ndarray
        Bin centres (geometric for log bins).
    medians : ndarray
    counts : ndarray of int
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log else True)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=int)
    lo, hi = x.min(), x.max()
    if lo == hi:
        return np.array([lo]), np.array([np.median(y)]), np.array([len(y)])
    edges = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    centers, meds, counts = [], [], []
    for i in range(n_bins):
        sel = idx == i
        if sel.sum() >= min_count:
            centers.append(np.sqrt(edges[i] * edges[i + 1]) if log else 0.5 * (edges[i] + edges[i + 1]))
            meds.append(np.median(y[sel]))
            counts.append(int(sel.sum()))
    return np.array(centers), np.array(meds), np.array(counts, dtype=int)
