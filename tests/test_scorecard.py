"""hpcblend scorecard: metrics of a run against thresholds and against an earlier run (exit code = verdict)."""

import glob
import json
import os

import numpy as np
import pytest

from hpcblend.cli import main
from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job
from hpcblend.errors import ConfigError
from hpcblend.analysis.scorecard import judge, load_thresholds, scorecard_metrics


def _run(tmp, files, name, **deblend):
    job = job_from_dict({"input": {"kind": "blends", "paths": files, "bands": ["g", "r", "i", "z", "y"]},
                         "deblend": {"optimizer": "fista", **deblend},
                         "output": {"path": os.path.join(tmp, name)}, "run": {"progress": False}}, base_dir=tmp)
    return run_job(job, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data):
    """The 164 real HSC blends as the pipeline runs them, and a run made worse on purpose (max_iter 3)."""
    tmp = str(tmp_path_factory.mktemp("scorecard"))
    files = sorted(glob.glob(os.path.join(str(shared_data), "hsc_blends", "set*", "*.npz")))
    assert len(files) == 164
    return {"good": _run(tmp, files, "good.h5"), "worse": _run(tmp, files[:60], "worse.h5", max_iter=3, min_iter=1),
            "tmp": tmp}


def test_real_blends_pass_the_default_thresholds(runs, capsys):
    assert main(["scorecard", runs["good"]]) == 0
    out = capsys.readouterr().out
    assert "PASS:" in out.splitlines()[-1] and "FAIL" not in out
    m = scorecard_metrics(runs["good"])
    assert m["n_blends"] == 164 and m["exception_fraction"] == 0.0
    assert 0.8 < m["chi2_per_pixel_median"] < 1.2


def test_a_run_made_worse_fails(runs, capsys):
    assert main(["scorecard", runs["worse"]]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL") and "not_converged_fraction" in last


def test_baseline_comparison_catches_a_regression(runs, capsys, tmp_path):
    out = str(tmp_path / "card.json")
    assert main(["scorecard", runs["worse"], "--baseline", runs["good"], "--json", out]) == 1
    card = json.load(open(out))
    by = {c["metric"]: c for c in card["checks"]}
    assert by["not_converged_fraction"]["baseline_status"] == "FAIL"
    assert by["chi2_per_pixel_median"]["baseline_status"] == "FAIL"  # 3 iterations fit worse
    assert card["passed"] is False
    assert main(["scorecard", runs["good"], "--baseline", runs["good"]]) == 0  # a run against itself


def test_thresholds_file_errors_name_the_metric(runs, tmp_path, capsys):
    bad = tmp_path / "t.yaml"
    bad.write_text("exception_fraction: {maximum: 0.1}\n")
    with pytest.raises(ConfigError, match="exception_fraction.*unknown rule key"):
        load_thresholds(str(bad))
    assert main(["scorecard", runs["good"], "--thresholds", str(bad)]) == 2
    assert "exception_fraction" in capsys.readouterr().err
    bad.write_text("chi2_per_pixel_median: {max: low}\n")
    with pytest.raises(ConfigError, match="chi2_per_pixel_median.max.*expected a number"):
        load_thresholds(str(bad))
    bad.write_text("a: &x {max: 1}\nb: *x\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_thresholds(str(bad))


def test_judge_rules():
    th = {"rules": {"a": {"max": 1.0}, "b": {"min": 0.5, "baseline": {"rel": 0.0, "abs": 0.1}}, "c": {}},
          "default_baseline": {"rel": 0.1, "abs": 0.0}}
    checks = {c.metric: c for c in judge({"a": 1.0, "b": 0.45, "c": 2.0}, th, {"a": 0.5, "b": 0.5, "c": 1.0})}
    assert checks["a"].status == "PASS" and checks["a"].baseline_status == "FAIL"  # 1.0 > 0.5 * 1.1
    assert checks["b"].status == "FAIL" and checks["b"].baseline_status == "PASS"  # 0.45 >= 0.5 - 0.1
    assert checks["c"].status == "-" and checks["c"].baseline_status == "FAIL"
    nan = {c.metric: c for c in judge({"a": float("nan")}, th)}
    assert nan["a"].status == "FAIL" and np.isnan(nan["a"].value)


def test_damaged_catalog_is_exit_2(tmp_path, capsys):
    p = tmp_path / "x.h5"
    p.write_bytes(b"not hdf5")
    assert main(["scorecard", str(p)]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err


def test_default_thresholds_judge_the_injection_metrics():
    """The default file has rules for the injection metrics; a run whose model fluxes went bad fails them."""
    th = load_thresholds()
    for metric in ("injection.completeness_snr10", "injection.flux_model_median_abs_snr10",
                   "injection.flux_model_yardstick_ratio_snr10"):
        assert "max" in th["rules"][metric] or "min" in th["rules"][metric], metric
    good = {"injection.n_snr10": 400.0, "injection.completeness_snr10": 0.975,
            "injection.flux_model_median_abs_snr10": 0.033, "injection.flux_model_yardstick_ratio_snr10": 2.1}
    bad = dict(good, **{"injection.flux_model_median_abs_snr10": 0.3, "injection.flux_model_yardstick_ratio_snr10": 9.0,
                        "injection.completeness_snr10": 0.8})
    assert not any(c.failed for c in judge(good, th, good))
    by = {c.metric: c for c in judge(bad, th, good)}
    assert all(by[m].status == "FAIL" and by[m].baseline_status == "FAIL" for m in bad if m != "injection.n_snr10")
    assert by["injection.n_snr10"].status == "-" and by["injection.n_snr10"].baseline_status == "-"
