"""The run's scorecard: the metrics a survey team checks every week, each PASS or FAIL.

``hpcblend scorecard RUN.h5 [--baseline OLD.h5] [--thresholds FILE.yaml] [--truth FILE] [--json OUT]``
reads a finished catalog and prints one table: exception fraction, the flagged fraction of every parent
flag, the not-converged fraction, runtime per blend (median, p90, max) and core-hours, χ²/pixel (median,
p90), and, when the run read injected data, the injection metrics at truth S/N > 10
(:func:`hpcblend.analysis.injection.injection_scorecard`): ``injection.n_snr10`` (reported),
``injection.completeness_snr10``, ``injection.flux_model_median_abs_snr10`` and
``injection.flux_model_yardstick_ratio_snr10`` (the model flux's median |Δf/f| over the perfect-deblender
yardstick's). The injection truth is ``--truth FILE`` or, without it, the one next to the inputs the
run's ``/config`` records (:func:`hpcblend.analysis.injection.find_injection_truth`: a tract's
``truth.fits`` marked ``INJECTED``, or the ``truth/injections.npz`` of injected blend files); a
``--baseline`` run's is always found that way. Each metric is checked against a threshold
(``jobs/scorecard.yaml`` documents the defaults) and, with ``--baseline``, against the same metric of an
earlier run ("trunk against trunk") within a tolerance. The exit code is 1 when anything fails, 2 when a
catalog cannot be read, 0 otherwise; so a weekly job (or CI) fails when the deblender got worse.

Thresholds file (YAML, a mapping of metric name to a rule)::

    exception_fraction: {max: 0.01}
    not_converged_fraction: {max: 0.02, baseline: {rel: 0.25, abs: 0.005}}
    chi2_per_pixel_median: {max: 1.5}

``max``/``min``: the metric must stay at or below / at or above it. ``baseline``: with ``--baseline``,
the metric may be worse than the old run's by at most ``abs + rel × |old|`` (worse means larger for a
``max`` rule, smaller for a ``min`` rule; metrics without a rule are compared as lower-is-better with
the file's ``default_baseline``). Metrics without a ``max``/``min`` are reported, not judged. Flag
fractions are named ``flagged_fraction.<flag column>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import yaml

from hpcblend.analysis.injection import find_injection_truth, injection_scorecard
from hpcblend.errors import ConfigError, HpcblendError
from hpcblend.io.catalog import read_table
from hpcblend.io.profiles import read_profiles
from hpcblend.io.yaml_files import load_yaml, yaml_error_message

__all__ = ["Check", "scorecard_metrics", "load_thresholds", "judge", "format_scorecard", "scorecard_main",
           "DEFAULT_THRESHOLDS"]

#: The thresholds used without ``--thresholds`` (the same as ``jobs/scorecard.yaml``).
DEFAULT_THRESHOLDS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "jobs",
                                  "scorecard.yaml")

_RULE_KEYS = {"max", "min", "baseline"}
#: Counts: reported, never compared with a baseline.
_COUNTS = {"n_blends", "injection.n_snr10"}


def _fraction(mask: np.ndarray, total: int) -> float:
    return float(np.count_nonzero(mask)) / total if total else 0.0


def _percentile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else float("nan")


def scorecard_metrics(path: str, truth: str | None = None, injection: bool = True) -> dict:
    """The scorecard's metrics of one finished catalog.

    Parameters
    ----------
    path : str
        Catalog (``/blends``; ``/profile`` for core-hours when present).
    truth : str, optional
        The run's injection truth; default: the one its ``/config`` points at, if any.
    injection : bool
        Add the injection metrics when there is a truth.

    Returns
    -------
    dict of str -> float
        ``n_blends``; ``exception_fraction`` (parents with ``flag_failed`` and an exception class);
        ``flagged_fraction.<flag>`` for every ``flag_*`` column of ``/blends``;
        ``not_converged_fraction`` (among fitted parents: not skipped, not failed, not an unfitted
        isolated source); ``runtime_per_blend_{p50,p90,max}_s`` (``t_total``, s);
        ``core_hours`` (ranks × the run's wall time from ``/profile``, else the sum of ``t_total``;
        hours); ``chi2_per_pixel_{median,p90}`` over fitted parents with a finite χ²; with an injection
        truth, the ``injection.*`` metrics of the module docstring.

    Raises
    ------
    hpcblend.errors.CatalogError
        The catalog cannot be read or is damaged.
    hpcblend.errors.InputError
        The injection truth cannot be read.
    """
    blends = read_table(path, "blends")
    n = len(blends)
    out = {"n_blends": float(n)}
    failed = blends["flag_failed"].astype(bool)
    out["exception_fraction"] = _fraction(failed & (blends["error_type"] != b""), n)
    for col in blends.dtype.names:
        if col.startswith("flag_"):
            out[f"flagged_fraction.{col}"] = _fraction(blends[col].astype(bool), n)
    skipped = np.zeros(n, dtype=bool)
    for col in ("flag_skipped_too_many_peaks", "flag_skipped_too_large"):
        if col in blends.dtype.names:
            skipped |= blends[col].astype(bool)
    fitted = ~failed & ~skipped & (blends["iterations"] > 0)
    out["not_converged_fraction"] = _fraction(fitted & ~blends["converged"].astype(bool), int(fitted.sum()))
    t = blends["t_total"].astype(float)
    out["runtime_per_blend_p50_s"] = _percentile(t, 50)
    out["runtime_per_blend_p90_s"] = _percentile(t, 90)
    out["runtime_per_blend_max_s"] = float(np.max(t)) if n else float("nan")
    out["core_hours"] = _core_hours(path, t)
    chi2 = blends["chi2_per_pixel"][fitted].astype(float)
    out["chi2_per_pixel_median"] = _percentile(chi2, 50)
    out["chi2_per_pixel_p90"] = _percentile(chi2, 90)
    if injection:
        truth = truth or find_injection_truth(path)
        if truth:
            out.update(injection_scorecard(path, truth))
    return out


def _core_hours(path: str, t_total: np.ndarray) -> float:
    profiles = read_profiles(path)
    if profiles:
        wall = max(float(p["elapsed_s"]) for p in profiles)
        return len(profiles) * wall / 3600.0
    return float(np.sum(t_total)) / 3600.0


def load_thresholds(path: str | None = None) -> dict:
    """Read a thresholds file (YAML; see the module docstring).

    Parameters
    ----------
    path : str, optional
        Default :data:`DEFAULT_THRESHOLDS`.

    Returns
    -------
    dict
        ``{"rules": {metric: {"max"/"min": float, "baseline": {"rel": float, "abs": float}}},
        "default_baseline": {"rel": float, "abs": float}}``.

    Raises
    ------
    hpcblend.errors.ConfigError
        The file cannot be read, is not a mapping, or a rule has an unknown key or a non-number, named
        with the metric.
    """
    path = path or DEFAULT_THRESHOLDS
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the thresholds file: {exc.strerror}") from None
    try:
        data = load_yaml(text) or {}  # the job files' strict loader: no aliases or duplicate keys
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_message(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of metric name to rule")
    default = data.pop("default_baseline", {"rel": 0.1, "abs": 0.0})
    rules = {}
    for metric, rule in data.items():
        if not isinstance(rule, dict):
            raise ConfigError(f"{path}: key {metric!r}: expected a mapping like {{max: 0.01}}")
        unknown = set(rule) - _RULE_KEYS
        if unknown:
            raise ConfigError(f"{path}: key {metric!r}: unknown rule key(s) {sorted(unknown)} "
                              f"(allowed: {sorted(_RULE_KEYS)})")
        clean = {}
        for key in ("max", "min"):
            if key in rule:
                clean[key] = _number(path, f"{metric}.{key}", rule[key])
        if "baseline" in rule:
            clean["baseline"] = _tolerance(path, f"{metric}.baseline", rule["baseline"])
        rules[str(metric)] = clean
    return {"rules": rules, "default_baseline": _tolerance(path, "default_baseline", default)}


def _number(path: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: key {key!r}: expected a number, got {str(value)[:80]!r}")
    return float(value)


def _tolerance(path: str, key: str, value) -> dict:
    if not isinstance(value, dict) or set(value) - {"rel", "abs"}:
        raise ConfigError(f"{path}: key {key!r}: expected {{rel: R, abs: A}}")
    return {"rel": _number(path, f"{key}.rel", value.get("rel", 0.0)),
            "abs": _number(path, f"{key}.abs", value.get("abs", 0.0))}


@dataclass(frozen=True)
class Check:
    """One row of the scorecard.

    Attributes
    ----------
    metric : str
    value : float
    limit : str
        The rule, e.g. ``"<= 0.01"``, or ``""``.
    status : str
        ``"PASS"``, ``"FAIL"`` or ``"-"`` (reported, not judged).
    baseline : float or None
        The old run's value (``--baseline``).
    baseline_status : str
        ``"PASS"``/``"FAIL"`` against the baseline's tolerance, ``"-"`` without one.
    """

    metric: str
    value: float
    limit: str
    status: str
    baseline: float | None = None
    baseline_status: str = "-"

    @property
    def failed(self) -> bool:
        """True when the threshold or the baseline comparison failed."""
        return "FAIL" in (self.status, self.baseline_status)


def judge(metrics: dict, thresholds: dict, baseline: dict | None = None) -> list:
    """Check metrics against thresholds and, optionally, an old run's metrics.

    Parameters
    ----------
    metrics : dict of str -> float
        :func:`scorecard_metrics` of the run.
    thresholds : dict
        :func:`load_thresholds`.
    baseline : dict of str -> float, optional
        :func:`scorecard_metrics` of an earlier run.

    Returns
    -------
    list of Check
        One per metric, in the order of ``metrics``. A NaN value fails a ``max``/``min`` rule.
    """
    rules = thresholds["rules"]
    checks = []
    for metric, value in metrics.items():
        rule = rules.get(metric, {})
        status, limit = "-", ""
        if "max" in rule:
            limit, status = f"<= {rule['max']:g}", "PASS" if value <= rule["max"] else "FAIL"
        elif "min" in rule:
            limit, status = f">= {rule['min']:g}", "PASS" if value >= rule["min"] else "FAIL"
        old, b_status = None, "-"
        if baseline is not None and metric in baseline and metric not in _COUNTS:
            old = baseline[metric]
            tol = rule.get("baseline", thresholds["default_baseline"])
            slack = tol["abs"] + tol["rel"] * abs(old)
            if math.isnan(value) or math.isnan(old):
                b_status = "PASS" if math.isnan(value) == math.isnan(old) else "FAIL"
            elif "min" in rule:
                b_status = "PASS" if value >= old - slack else "FAIL"
            else:
                b_status = "PASS" if value <= old + slack else "FAIL"
        checks.append(Check(metric, float(value), limit, status, old, b_status))
    return checks


def format_scorecard(checks: list, path: str, baseline_path: str | None = None) -> str:
    """The scorecard as a text table, with a last line saying PASS or FAIL and how many failed."""
    lines = [f"scorecard of {path}" + (f" against {baseline_path}" if baseline_path else "")]
    head = f"{'metric':44s} {'value':>12s} {'threshold':>12s} {'status':>6s}"
    if baseline_path:
        head += f" {'baseline':>12s} {'change':>10s} {'vs base':>7s}"
    lines += [head, "-" * len(head)]
    for c in checks:
        row = f"{c.metric:44s} {c.value:12.5g} {c.limit:>12s} {c.status:>6s}"
        if baseline_path:
            if c.baseline is None:
                row += f" {'':>12s} {'':>10s} {'-':>7s}"
            else:
                change = c.value - c.baseline
                row += f" {c.baseline:12.5g} {change:+10.3g} {c.baseline_status:>7s}"
        lines.append(row)
    failed = [c.metric for c in checks if c.failed]
    lines.append(f"FAIL: {len(failed)} metric(s): {', '.join(failed)}" if failed else
                 f"PASS: {sum(c.status == 'PASS' for c in checks)} thresholds"
                 + (f", {sum(c.baseline_status == 'PASS' for c in checks)} baseline comparisons" if baseline_path
                    else ""))
    return "\n".join(lines)


def scorecard_main(argv=None) -> int:
    """``hpcblend scorecard RUN.h5 [--baseline OLD.h5] [--thresholds FILE.yaml] [--truth FILE] [--json OUT]``.

    Returns
    -------
    int
        0 all pass, 1 a metric failed, 2 a catalog or the thresholds file cannot be read.
    """
    p = argparse.ArgumentParser(prog="hpcblend scorecard", description=__doc__.splitlines()[0])
    p.add_argument("catalog")
    p.add_argument("--baseline", help="an earlier run's catalog to compare with")
    p.add_argument("--thresholds", help=f"YAML thresholds (default {DEFAULT_THRESHOLDS})")
    p.add_argument("--truth", help="the run's injection truth (default: the one next to its inputs, if any)")
    p.add_argument("--json", help="write the metrics and checks as JSON")
    args = p.parse_args(argv)
    try:
        thresholds = load_thresholds(args.thresholds)
        metrics = scorecard_metrics(args.catalog, truth=args.truth)
        old = scorecard_metrics(args.baseline) if args.baseline else None
    except HpcblendError as exc:
        print(f"hpcblend scorecard: error: {exc}", file=sys.stderr)
        return 2
    checks = judge(metrics, thresholds, old)
    print(format_scorecard(checks, args.catalog, args.baseline))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"catalog": args.catalog, "baseline": args.baseline, "metrics": metrics,
                       "baseline_metrics": old,
                       "checks": [c.__dict__ | {"failed": c.failed} for c in checks],
                       "passed": not any(c.failed for c in checks)}, fh, indent=1)
    return 1 if any(c.failed for c in checks) else 0
