"""The WorkSource interface: the registry of input kinds, a third kind end to end, and the replay's unit order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpcblend.analysis.scaling import hand_out_order as replay_order
from hpcblend.analysis.scaling import load_workload
from hpcblend.config import job_from_dict
from hpcblend.errors import ConfigError
from hpcblend.io.blends import write_blend
from hpcblend.io.catalog import TableSpec, read_ledger, read_table
from hpcblend.parallel.driver import hand_out_order, run_job
from hpcblend.simulate.synthetic import make_synthetic_blend
from hpcblend.units import source as registry
from hpcblend.units.blends import BlendsSource
from hpcblend.units.source import WorkSource, WorkUnit, make_source, plan_units


def _with_kind(job, kind):
    """The job with another ``input.kind`` (past the config's own list of kinds: what a new source adds)."""
    return dataclasses.replace(job, input=dataclasses.replace(job.input, kind=kind))


def _blend_job(tmp_path, paths, **run):
    data = {"input": {"kind": "blends", "paths": [str(p) for p in paths]},
            "deblend": {"max_iter": 30},
            "output": {"path": str(tmp_path / "out.h5")},
            "run": {"progress": False, "warmup": False, **run},
            "profile": {"sample_hz": 0}}
    return job_from_dict(data, base_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------- the registry


def test_registry_maps_kinds_to_sources(tmp_path):
    job = _blend_job(tmp_path, [tmp_path / "x.npz"])
    assert type(make_source(job)) is BlendsSource
    demo = _with_kind(job, "demo")
    assert type(make_source(demo)).__name__ == "DemoBlendsSource"  # by dotted path: units/ never imports simulate/
    assert issubclass(registry.source_class(demo), BlendsSource)


def test_unknown_kind_is_a_config_error_naming_input_kind(tmp_path):
    job = _with_kind(_blend_job(tmp_path, [tmp_path / "x.npz"]), "butler")
    with pytest.raises(ConfigError, match=r"input\.kind.*'butler'.*known: blends, demo, tract"):
        make_source(job)
    with pytest.raises(ConfigError, match=r"input\.kind"):
        run_job(job, output=str(tmp_path / "never.h5"))
    assert not (tmp_path / "never.h5").exists()


def test_unloadable_source_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.SOURCES, "broken", "hpcblend.no_such_module:Source")
    with pytest.raises(ConfigError, match=r"input\.kind.*'broken'.*no_such_module"):
        make_source(_with_kind(_blend_job(tmp_path, [tmp_path / "x.npz"]), "broken"))


# --------------------------------------------------------------------------------------------- a third kind


#: The one table of the tiny kind.
_ITEMS = TableSpec(name="items", dtype=np.dtype([("id", "i8"), ("value", "f8"), ("flag_failed", "?"), ("rank", "i4")]),
                   units={"value": "ct"})


class TinySource(WorkSource):
    """Five units, each one row; unit 3 fails. What a third input kind needs to write."""

    unique_id_tables = ("items",)
    prepared = 0

    def prepare(self):
        TinySource.prepared += 1

    def plan(self):
        return [WorkUnit(index=i, key=f"item {i}", path=f"item-{i}", cost=float(i), kind="item") for i in range(5)]

    def catalog_bands(self, units):
        return ("r",)

    def tables(self, bands):
        return [_ITEMS]

    def input_files(self, units):
        return []

    def warm_up(self, bands, units):
        return 0.0

    def process(self, unit, bands, rank=0, sampler=None, gallery=None):
        row = _ITEMS.empty(1)
        row["id"] = unit.index + 1
        row["value"] = 10.0 * unit.index
        row["flag_failed"] = unit.index == 3
        row["rank"] = rank
        return {"items": row}

    def unit_failed(self, rows):
        return bool(rows["items"]["flag_failed"].all())


def test_a_third_kind_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.SOURCES, "tiny", f"{__name__}:TinySource")  # resolved with importlib
    job = _with_kind(_blend_job(tmp_path, [tmp_path / "unused.npz"], warmup=True), "tiny")
    TinySource.prepared = 0
    out = run_job(job, output=str(tmp_path / "tiny.h5"))
    assert TinySource.prepared == 1  # rank 0, before planning
    items = read_table(out, "items")
    assert items["id"].tolist() == [1, 2, 3, 4, 5] and items["value"].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    finished, counts = read_ledger(out)
    assert finished == {f"item {i}" for i in range(5)} and counts == {"items": 5}


# --------------------------------------------------------------------------------------------- replay order


def test_replay_orders_units_as_the_driver(tmp_path):
    """``hpcblend scaling replay``'s dynamic_cost / dynamic_file orders = the driver's cost / file orders."""
    paths = []
    for i, (n_src, shape) in enumerate([(2, (31, 31)), (4, (61, 61)), (1, (25, 25)), (3, (45, 45)), (2, (45, 45)),
                                        (3, (31, 31))]):
        blend, _ = make_synthetic_blend(seed=i, n_sources=n_src, shape=shape, blend_id=100 + i)
        paths.append(write_blend(str(tmp_path / f"{100 + i}.npz"), blend))
    job = _blend_job(tmp_path, paths)
    out = run_job(job)
    units = plan_units(job)
    wl = load_workload(out)
    assert wl.keys == [u.path for u in units]  # the same units, in the same (index) order
    np.testing.assert_allclose(wl.predicted(), [u.cost for u in units], rtol=1e-12)
    for schedule, policy in (("cost", "dynamic_cost"), ("file", "dynamic_file")):
        driver = [units[i].path for i in hand_out_order(units, schedule)]
        replayed = [wl.keys[i] for i in replay_order(wl, policy)]
        assert driver == replayed, schedule
    assert len({u.cost for u in units}) == len(units)  # distinct costs: the cost order is not the file order
    assert hand_out_order(units, "cost") != list(range(len(units)))
