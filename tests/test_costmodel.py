"""Cost model: power-law fit recovers known exponents; persistence; catalog fit; CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mpi4py import MPI

from hpcblend.io.catalog import CatalogWriter
from hpcblend.analysis.costfit import costmodel_main, fit_arrays, fit_cost_model, spearman
from hpcblend.units.costmodel import CostModel, default_cost_model, load_cost_model
from hpcblend.errors import ConfigError
from hpcblend.io.schema import blend_spec, patch_spec


def _synthetic(n=400, a=0.3, b=1.1, c=2e-5, noise=0.05, seed=1):
    rng = np.random.default_rng(seed)
    n_peaks = rng.integers(1, 31, n).astype(float)
    area = np.exp(rng.uniform(np.log(100), np.log(20000), n))
    t = c * n_peaks ** a * area ** b * np.exp(rng.normal(0, noise, n))
    return t, n_peaks, area


def test_fit_recovers_exponents():
    t, n_peaks, area = _synthetic()
    m = fit_arrays(t, {"n_peaks": n_peaks, "footprint_area": area})
    assert m.features == ["n_peaks", "footprint_area"]
    assert m.exponents[0] == pytest.approx(0.3, abs=0.03)
    assert m.exponents[1] == pytest.approx(1.1, abs=0.03)
    assert np.exp(m.log_c) == pytest.approx(2e-5, rel=0.3)
    assert m.r2 > 0.98 and m.n == 400
    assert m.rms_dex == pytest.approx(0.05 / np.log(10), rel=0.2)
    assert m.spearman > 0.98
    pred = m.predict(n_peaks, area)
    assert np.median(t / pred) == pytest.approx(1.0, abs=0.03)


def test_fit_exact_and_three_features():
    rng = np.random.default_rng(2)
    x = {"n_peaks": rng.uniform(1, 20, 50), "footprint_area": rng.uniform(100, 5000, 50),
         "peak_flux": rng.uniform(10, 1e4, 50)}
    t = 1e-4 * x["n_peaks"] ** 0.5 * x["footprint_area"] ** 0.9 * x["peak_flux"] ** -0.1
    m = fit_arrays(t, x)
    assert np.allclose(m.exponents, [0.5, 0.9, -0.1], atol=1e-8)
    assert m.r2 == pytest.approx(1.0)
    assert np.allclose(m.predict(x["n_peaks"], x["footprint_area"], peak_flux=x["peak_flux"]), t, rtol=1e-8)


def test_bad_rows_dropped_constant_feature_left_out_and_too_few_rows():
    t, n_peaks, area = _synthetic(n=60)
    t[:5] = 0.0
    area[5:8] = np.nan
    m = fit_arrays(t, {"n_peaks": n_peaks, "footprint_area": area, "const": np.full(60, 7.0)})
    assert m.n == 52 and m.features == ["n_peaks", "footprint_area"]
    with pytest.raises(ValueError):
        fit_arrays([1.0, 2.0], {"n_peaks": [1, 2], "footprint_area": [10, 30]})


def test_predict_scalar_array_and_missing_feature():
    m = CostModel(kind="blend", features=["n_peaks", "footprint_area"], log_c=np.log(1e-3), exponents=[0.5, 1.0],
                  feature_log_mean=[np.log(4.0), np.log(100.0)])
    assert isinstance(m.predict(4, 100), float)
    assert m.predict(4, 100) == pytest.approx(1e-3 * 2 * 100)
    assert m.predict([1, 4], [10, 100]) == pytest.approx([1e-2, 0.2])
    # unknown feature -> its training mean (log space)
    assert m.predict(area=100) == pytest.approx(0.2)
    assert m.predict(n_peaks=[4, 0], area=[100, 100]) == pytest.approx([0.2, 0.2])
    assert m.predict(footprint_area=100, n_peaks=4) == pytest.approx(0.2)


def test_save_load_roundtrip(tmp_path):
    t, n_peaks, area = _synthetic(n=50)
    m = fit_arrays(t, {"n_peaks": n_peaks, "footprint_area": area}, sources=["x.h5"])
    p = m.save(tmp_path / "m.json")
    d = json.load(open(p))
    assert d["cost_model_version"] == 1 and d["features"] == ["n_peaks", "footprint_area"]
    m2 = CostModel.load(p)
    assert m2.exponents == pytest.approx(m.exponents) and m2.log_c == pytest.approx(m.log_c)
    assert m2.predict(3, 500) == pytest.approx(m.predict(3, 500))
    assert load_cost_model(p).predict(3, 500) == pytest.approx(m.predict(3, 500))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        CostModel.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError):
        CostModel.load(tmp_path / "missing.json")
    (tmp_path / "short.json").write_text(json.dumps({"features": ["n_peaks"], "exponents": [1, 2], "log_c": 0}))
    with pytest.raises(ConfigError, match="exponents"):
        CostModel.load(tmp_path / "short.json")


def test_default_model_is_documented_and_monotonic():
    m = default_cost_model()
    assert m.kind == "blend" and m.n == 164 and m.features == ["n_peaks", "footprint_area"]
    assert load_cost_model(None).exponents == m.exponents
    assert all(e > 0 for e in m.exponents)
    p = m.predict([2, 2, 10], [500, 5000, 5000])
    assert p[0] < p[1] < p[2]
    assert 1e-4 < p[0] < 1.0  # seconds, the scale of a small HSC blend
    assert "R²" in m.describe()


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def _blend_catalog(path, t, n_peaks, area, flags=None):
    spec = blend_spec()
    rows = spec.empty(len(t))
    rows["id"] = np.arange(len(t)) + 1
    rows["source_file"] = [f"/data/b{i:04d}.npz".encode() for i in range(len(t))]
    rows["n_peaks"], rows["footprint_area"], rows["t_total"] = n_peaks, area, t
    if flags is not None:
        rows["flag_skipped_too_many_peaks"] = flags
    with CatalogWriter(path, MPI.COMM_SELF, [spec]) as w:
        w.write_round({"blends": rows}, [f"b{i}" for i in range(len(t))])
        w.finalize()
    return path


def test_fit_from_catalogs_and_cli(tmp_path, capsys):
    t, n_peaks, area = _synthetic(n=120, a=0.2, b=1.2)
    flags = np.zeros(120, bool)
    flags[:10] = True  # skipped blends are left out of the fit
    t_bad = t.copy()
    t_bad[:10] = 1e-9
    p1 = _blend_catalog(str(tmp_path / "a.h5"), t_bad[:60], n_peaks[:60], area[:60].astype(int), flags[:60])
    p2 = _blend_catalog(str(tmp_path / "b.h5"), t[60:], n_peaks[60:], area[60:].astype(int))
    m = fit_cost_model([p1, p2])
    assert m.kind == "blend" and m.n == 110 and m.sources == [p1, p2]
    assert m.exponents == pytest.approx([0.2, 1.2], abs=0.05)
    out = str(tmp_path / "m.json")
    assert costmodel_main(["fit", p1, p2, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "R²" in text and "actual/pred" in text and "Spearman" in text
    assert CostModel.load(out).n == 110
    assert costmodel_main(["show"]) == 0
    assert costmodel_main(["fit", str(tmp_path / "nope.h5")]) == 2


def test_fit_patch_catalog(tmp_path):
    spec = patch_spec()
    rng = np.random.default_rng(3)
    n = 30
    rows = spec.empty(n)
    rows["patch"] = np.arange(n)
    h = rng.integers(400, 800, n)
    rows["outer_bbox"] = np.stack([np.zeros(n), np.zeros(n), h, np.full(n, 600)], axis=1)
    rows["n_sources"] = rng.integers(20, 200, n)
    rows["t_total"] = 1e-3 * rows["n_sources"] ** 0.8 * (h * 600.0) ** 0.5
    rows["status"] = b"ok"
    path = str(tmp_path / "p.h5")
    with CatalogWriter(path, MPI.COMM_SELF, [spec]) as w:
        w.write_round({"patches": rows}, [f"p{i}" for i in range(n)])
        w.finalize()
    m = fit_cost_model(path)
    assert m.kind == "patch" and m.features == ["n_sources", "area"]
    assert m.exponents == pytest.approx([0.8, 0.5], abs=1e-6)
    assert m.predict_table(rows) == pytest.approx(rows["t_total"], rel=1e-6)
    # source count unknown (first run of a tract): falls back to the training mean
    assert np.isfinite(m.predict(area=h * 600.0)).all()
