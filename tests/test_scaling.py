"""Replay simulator: exact answers on hand-made cases, scheduling bounds, invariants, catalog loading, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mpi4py import MPI

from hpcblend.io.catalog import CatalogWriter
from hpcblend.analysis.scaling import (POLICIES, ReplayParams, Workload, load_workload, params_for, replay, replicate,
                              replication_factor, scaling_main, self_replay, simulate)
from hpcblend.io.schema import blend_spec

#: no scheduling latency, no rounds but the (free) final one, no polling delay
FREE = ReplayParams(sched_latency_s=0.0, sched_service_s=0.0, round_latency_s=0.0, round_log_latency_s=0.0,
                    bytes_per_unit=0.0, write_every_units=10 ** 9, write_every_seconds=0.0, poll_s=0.0)


def wl_of(costs, features=None) -> Workload:
    costs = np.asarray(costs, float)
    feats = features or {"n_peaks": np.ones(len(costs)), "footprint_area": costs * 1000.0}
    return Workload(kind="blend", keys=[f"u{i}" for i in range(len(costs))], cost=costs, features=feats)


@pytest.mark.parametrize("policy", POLICIES)
def test_equal_units_two_ranks(policy):
    r = simulate(wl_of([1.0] * 4), 2, policy, FREE)
    assert r.makespan_s == pytest.approx(2.0)
    assert r.efficiency == pytest.approx(1.0)
    assert r.idle_fraction == pytest.approx(0.0)
    assert r.max_mean_busy == pytest.approx(1.0)
    assert r.n_rounds == 1  # the final round only


def test_lpt_known_instance_and_graham_bound():
    # {3,3,2,2,2} on 2 machines: OPT = 6 (3+3 | 2+2+2); LPT gives 7 = (4/3 - 1/(3m)) OPT, Graham's tight case
    w = wl_of([2, 3, 2, 3, 2])
    lpt = simulate(w, 2, "dynamic_oracle", FREE)
    assert lpt.makespan_s == pytest.approx(7.0)
    assert lpt.makespan_s <= (4 / 3 - 1 / 6) * 6.0 + 1e-12
    # an instance where LPT is optimal: 10,10,10,10,1,1,1,1 on 2 ranks -> 22
    w = wl_of([10, 1, 10, 1, 10, 1, 10, 1])
    assert simulate(w, 2, "dynamic_oracle", FREE).makespan_s == pytest.approx(22.0)
    # dynamic pull in file order: list scheduling, also 22 here
    assert simulate(w, 2, "dynamic_file", FREE).makespan_s == pytest.approx(22.0)
    # static round-robin on the skewed instance: rank 0 gets all the 10s -> 40
    rr = simulate(w, 2, "static_rr", FREE)
    assert rr.makespan_s == pytest.approx(40.0)
    assert rr.efficiency == pytest.approx(44.0 / 80.0)
    assert rr.max_mean_busy == pytest.approx(40.0 / 22.0)
    assert rr.idle_fraction == pytest.approx(36.0 / 80.0)


def test_cost_order_uses_prediction_not_truth():
    # the prediction (footprint_area) says the first unit is the smallest; truly it is the largest
    costs = [9.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    feats = {"n_peaks": np.ones(10), "footprint_area": np.array([10.0] + [100.0] * 9)}
    w = wl_of(costs, feats)
    oracle = simulate(w, 2, "dynamic_oracle", FREE).makespan_s
    npa = simulate(w, 2, "dynamic_npa", FREE).makespan_s
    cost = simulate(w, 2, "dynamic_cost", FREE).makespan_s
    assert oracle == pytest.approx(9.0)
    # both follow the (wrong) prediction: the nine 1 s units first (5 | 4), then the 9 s unit at t=4
    assert npa == pytest.approx(13.0)
    assert cost == pytest.approx(13.0)


def test_rounds_exact():
    # 4 units of 1 s on 2 ranks, a round every 2 claimed units costing 0.5 s:
    # both claim at 0, finish at 1 -> round (1 -> 1.5), both claim, finish at 2.5, final round 2.5 -> 3.0
    P = ReplayParams(sched_latency_s=0.0, sched_service_s=0.0, round_latency_s=0.5, round_log_latency_s=0.0,
                     write_every_units=2, write_every_seconds=0.0, poll_s=0.0)
    r = simulate(wl_of([1.0] * 4), 2, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(3.0)
    assert r.n_rounds == 2
    assert r.efficiency == pytest.approx(4.0 / 6.0)
    assert r.io_fraction == pytest.approx(2 * 2 * 0.5 / 6.0)
    # bytes at a bandwidth and the log2(N) term
    P2 = ReplayParams(round_latency_s=0.1, round_log_latency_s=0.01, io_bandwidth_Bps=100.0, bytes_per_unit=50.0)
    assert P2.round_cost(1, 4) == pytest.approx(0.1 + 2.0)
    assert P2.round_cost(8, 4) == pytest.approx(0.1 + 0.03 + 2.0)


def test_round_waits_for_slowest_unit():
    # rank A runs 1 s units, rank B one 5 s unit; a round raised at t=1 completes only at t=5
    P = ReplayParams(sched_latency_s=0.0, sched_service_s=0.0, round_latency_s=0.0, round_log_latency_s=0.0,
                     write_every_units=2, write_every_seconds=0.0, poll_s=0.0)
    r = simulate(wl_of([5.0, 1.0, 1.0, 1.0]), 2, "dynamic_file", P)
    # round at 5 (sync: rank with the 1 s unit waits 4 s), then 2 units of 1 s on 2 ranks: 6
    assert r.makespan_s == pytest.approx(6.0)
    assert r.sync_fraction == pytest.approx(4.0 / 12.0)
    free = simulate(wl_of([5.0, 1.0, 1.0, 1.0]), 2, "dynamic_file", FREE)
    assert free.makespan_s == pytest.approx(5.0)


def test_scheduling_latency_and_counter_queueing():
    P = ReplayParams(sched_latency_s=0.1, sched_ops_per_unit=1, sched_service_s=0.0, round_latency_s=0.0,
                     round_log_latency_s=0.0, write_every_units=10 ** 9, write_every_seconds=0.0, poll_s=0.0)
    # one rank: pull (0.1) + 1 + pull (0.1) + 1 + pull that finds nothing (0.1)
    r = simulate(wl_of([1.0, 1.0]), 1, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(2.3)
    assert r.sched_fraction == pytest.approx(0.3 / 2.3)
    # static round-robin pulls nothing from rank 0
    assert simulate(wl_of([1.0, 1.0]), 1, "static_rr", P).makespan_s == pytest.approx(2.0)
    # 4 ranks start together; the counter serves one op per 0.1 s: the 4th waits 0.3 s
    Q = ReplayParams(sched_latency_s=0.0, sched_ops_per_unit=1, sched_service_s=0.1, round_latency_s=0.0,
                     round_log_latency_s=0.0, write_every_units=10 ** 9, write_every_seconds=0.0, poll_s=0.0)
    r = simulate(wl_of([1.0] * 4), 4, "dynamic_file", Q)
    assert r.makespan_s == pytest.approx(1.3)
    assert r.coordination_fraction == pytest.approx((0.1 + 0.2 + 0.3) / (4 * 1.3))


def test_poll_delay_of_finished_ranks():
    # rank 1 finishes at 1 and polls every 0.25 s; rank 0 finishes at 1.1: rank 1 sees it at 1.25
    P = ReplayParams(sched_latency_s=0.0, sched_service_s=0.0, round_latency_s=0.0, round_log_latency_s=0.0,
                     write_every_units=10 ** 9, write_every_seconds=0.0, poll_s=0.25)
    r = simulate(wl_of([1.1, 1.0]), 2, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(1.25)


def test_rank_startup_paid_once_per_rank():
    P = ReplayParams(**{**FREE.__dict__, "rank_startup_s": 0.5})
    r = simulate(wl_of([1.0] * 4), 2, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(2.5)
    assert r.efficiency == pytest.approx(4.0 / 5.0)
    assert r.startup_fraction == pytest.approx(1.0 / 5.0)
    assert r.busy_fraction == pytest.approx(1.0)
    # a rank that never gets a unit pays nothing
    r = simulate(wl_of([1.0]), 2, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(1.5) and r.startup_fraction == pytest.approx(0.5 / 3.0)


def test_slowdown_when_ranks_exceed_cores():
    P = ReplayParams(**{**FREE.__dict__, "cores": 2})
    r = simulate(wl_of([1.0] * 8), 4, "dynamic_file", P)
    assert r.makespan_s == pytest.approx(4.0)  # 4 ranks share 2 cores: each unit takes 2 s
    assert r.efficiency == pytest.approx(0.5)


def test_invariants_random_instances():
    rng = np.random.default_rng(7)
    for trial in range(12):
        U = int(rng.integers(1, 300))
        costs = rng.lognormal(-3, 1.0, U)
        w = wl_of(costs, {"n_peaks": rng.integers(1, 10, U).astype(float),
                          "footprint_area": costs * rng.lognormal(8, 0.3, U)})
        P = ReplayParams(sched_latency_s=rng.uniform(0, 1e-3), sched_service_s=rng.uniform(0, 1e-4),
                         round_latency_s=rng.uniform(0, 0.05), write_every_units=int(rng.integers(1, 50)),
                         write_every_seconds=float(rng.uniform(0.05, 1.0)), poll_s=float(rng.uniform(0, 0.02)),
                         unit_overhead_s=1e-3, rank_startup_s=float(rng.uniform(0, 0.2)), bytes_per_unit=1000.0)
        for n in (1, 2, 3, 8, 64):
            for pol in POLICIES:
                r = simulate(w, n, pol, P)
                assert 0 < r.efficiency <= 1 + 1e-12
                assert r.max_mean_busy >= 1 - 1e-12
                parts = r.busy_fraction + r.sched_fraction + r.sync_fraction + r.io_fraction + r.tail_fraction
                assert parts == pytest.approx(1.0, abs=1e-9)
                assert r.idle_fraction == pytest.approx(r.sync_fraction + r.tail_fraction)
            # list scheduling without overheads (any order): lb <= makespan <= sum/n + (1 - 1/n) max
            lb = max(costs.max(), costs.sum() / n)
            for pol in ("dynamic_file", "dynamic_cost", "dynamic_npa", "dynamic_oracle"):
                f = simulate(w, n, pol, FREE).makespan_s
                assert lb - 1e-9 <= f <= costs.sum() / n + (1 - 1 / n) * costs.max() + 1e-9


def test_replication_and_replay():
    w = wl_of(np.linspace(0.1, 1.0, 10))
    assert replication_factor(10, 4, 2) == 1
    assert replication_factor(10, 64, 2) == 13
    assert replication_factor(10, 64, 0) == 1
    w3 = replicate(w, 3)
    assert w3.n_units == 30 and w3.cost.sum() == pytest.approx(3 * w.cost.sum())
    assert w3.keys[10] == "u0#1"
    res = replay(w, ranks=[1, 2, 64], policies=["static_rr", "dynamic_cost"], params=FREE, min_units_per_rank=2)
    assert [(r.policy, r.n_ranks, r.replication) for r in res] == [
        ("static_rr", 1, 1), ("static_rr", 2, 1), ("static_rr", 64, 13),
        ("dynamic_cost", 1, 1), ("dynamic_cost", 2, 1), ("dynamic_cost", 64, 13)]
    for r in res:
        assert r.efficiency <= 1 + 1e-12 and r.max_mean_busy >= 1 - 1e-12
        assert r.speedup_efficiency == pytest.approx(r.efficiency, rel=1e-9)  # FREE: T1 = work
    assert res[0].speedup_efficiency == pytest.approx(1.0)


def test_large_replay_is_fast():
    import time

    rng = np.random.default_rng(0)
    w = wl_of(rng.lognormal(-3.5, 0.8, 164))
    t = time.perf_counter()
    r = simulate(replicate(w, 625), 4096, "dynamic_cost", ReplayParams(write_every_units=8 * 4096))
    assert time.perf_counter() - t < 15.0
    assert r.n_units == 102500 and 0 < r.efficiency <= 1


def _catalog(path, n=40, ranks=2):
    rng = np.random.default_rng(5)
    spec = blend_spec()
    rows = spec.empty(n)
    rows["id"] = np.arange(n) + 1
    rows["source_file"] = [f"/data/b{i:03d}.npz".encode() for i in rng.permutation(n)]
    rows["n_peaks"] = rng.integers(1, 10, n)
    rows["footprint_area"] = rng.integers(200, 5000, n)
    rows["t_total"] = 1e-5 * rows["footprint_area"] * rng.lognormal(0, 0.2, n)
    rows["rank"] = np.arange(n) % ranks
    from hpcblend.io.profiles import write_profiles

    with CatalogWriter(path, MPI.COMM_SELF, [spec], json_groups={"config": {"run": {"schedule": "cost",
                       "write_every_units": 64, "write_every_seconds": 30.0}}, "provenance": {"n_ranks": ranks}}) as w:
        w.write_round({"blends": rows}, [f"b{i}" for i in range(n)])
        w.finalize()
    busy = [float(rows["t_total"][rows["rank"] == r].sum()) + 0.01 for r in range(ranks)]
    write_profiles(path, [{"rank": r, "elapsed_s": max(busy) + 0.05, "stage_seconds": {
        "load": busy[r], "write": 0.02 + 0.01 * r, "wait": 0.03}, "stage_calls": {"write": 2}} for r in range(ranks)])
    return path, rows


def test_load_workload_and_cli(tmp_path, capsys):
    path, rows = _catalog(str(tmp_path / "c.h5"))
    w = load_workload(path)
    assert w.kind == "blend" and w.n_units == 40
    order = np.argsort(rows["source_file"])
    assert w.cost == pytest.approx(rows["t_total"][order])  # file order = sorted source files
    assert w.keys == sorted(k.decode() for k in rows["source_file"])
    assert w.features["footprint_area"] == pytest.approx(rows["footprint_area"][order])
    m = w.measured
    assert m["n_ranks"] == 2 and m["schedule"] == "cost" and m["round_cost_s"] == pytest.approx(0.01)
    assert w.unit_overhead_s == 0.0 and w.rank_startup_s == pytest.approx(0.01)  # busy - Σ t_total, per rank
    assert load_workload(path, overhead="unit").unit_overhead_s == pytest.approx(0.02 / 40)
    assert w.bytes_per_unit == pytest.approx(blend_spec().dtype.itemsize)
    P = params_for(w)
    assert P.write_every_units == 64 and P.rank_startup_s == pytest.approx(0.01)
    s = self_replay(w, P)
    assert s["n_ranks"] == 2 and s["measured_s"] == pytest.approx(m["loop_wall_s"])
    assert abs(s["error"]) < 0.5
    assert w.predicted().shape == (40,)
    out = str(tmp_path / "r.json")
    assert scaling_main(["replay", path, "--ranks", "1", "2", "4096", "--policy", "static_rr", "dynamic_cost",
                         "--json", out]) == 0
    text = capsys.readouterr().out
    assert "self-replay" in text and "dynamic_cost" in text
    d = json.load(open(out))
    assert len(d["results"]) == 6
    r4096 = [r for r in d["results"] if r["n_ranks"] == 4096]
    assert all(r["replication"] == math.ceil(4096 * 25 / 40) for r in r4096)
    assert scaling_main(["replay", str(tmp_path / "missing.h5")]) == 2
    with pytest.raises(SystemExit) as exc:  # "study" hands its options to profiling/scaling_study.py
        scaling_main(["study", "--help"])
    assert exc.value.code == 0
    assert "hpcblend scaling study" in capsys.readouterr().out
