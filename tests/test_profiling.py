"""Call-stack sampler, profile storage, merging, speedscope JSON and the flame-graph SVG."""

import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from hpcblend.io.catalog import CatalogWriter, TableSpec
from hpcblend.errors import CatalogError
from hpcblend.analysis.flamegraph import (format_stage_table, format_top_functions, merge_stacks, profile_main,
                                          select_profiles, slowest_rank, speedscope_document, stage_table,
                                          top_functions, write_speedscope)
from hpcblend.analysis.flamegraph_svg import flamegraph_svg
from hpcblend.diagnostics.sampler import NullSampler, StackSampler
from hpcblend.io.profiles import read_collapsed, read_profiles, write_collapsed, write_profiles

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _busy_loop_for_sampler_test(seconds):
    """Pure-Python work holding the GIL most of the time."""
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < seconds:
        for i in range(1000):
            x += i * i
    return x


def _sleepy_for_sampler_test(seconds):
    time.sleep(seconds)


def _catalog(path):
    """A tiny finished catalog (one table) to append profiles to."""
    from mpi4py import MPI

    spec = TableSpec("blends", np.dtype([("id", "i8"), ("t_total", "f8")]))
    w = CatalogWriter(str(path), MPI.COMM_SELF, [spec])
    rows = spec.empty(3)
    rows["id"] = [3, 1, 2]
    w.write_round({"blends": rows}, ["u"])
    w.finalize()
    return str(path)


@pytest.fixture(scope="module")
def busy_profile():
    """1.5 s: 1.2 s busy in stage fit (blend 7), 0.3 s asleep in stage wait, at 100 Hz."""
    s = StackSampler(rate_hz=100.0).start()
    with s.stage("fit", blend_id=7):
        _busy_loop_for_sampler_test(1.2)
    with s.stage("wait"):
        _sleepy_for_sampler_test(0.3)
    s.stop()
    return s.results(rank=0)


def test_busy_function_is_the_top_frame(busy_profile):
    rows = top_functions(busy_profile["stacks"], 3)
    assert "_busy_loop_for_sampler_test" in rows[0]["frame"]
    assert rows[0]["self_frac"] > 0.6
    # labels are file:function:line-of-def, root first, stage as root frame
    line = max(busy_profile["stacks"], key=busy_profile["stacks"].get)
    frames = line.split(";")
    assert frames[0] == "stage:fit"
    assert frames[-1].startswith("test_profiling.py:_busy_loop_for_sampler_test:")
    assert frames[-1].rsplit(":", 1)[1].isdigit()


def test_sampler_frames_never_appear(busy_profile):
    for line in busy_profile["stacks"]:
        for frame in line.split(";"):
            assert not frame.startswith(("profiling.py:", "threading.py:")), line
            assert "_sample_once" not in frame and "StackSampler" not in frame, line


def test_sample_count_matches_rate(busy_profile):
    p = busy_profile
    expected = p["elapsed_s"] * p["rate_hz"]
    # every tick is counted once: a late sample carries the weight of the ticks it missed (n_missed
    # counts those ticks again, as information), so the weighted samples follow elapsed x rate
    assert 0.9 * expected <= p["n_samples"] <= 1.02 * expected + 1
    assert 0 <= p["n_missed"] <= p["n_samples"]
    # generous bound for a loaded machine; the benchmark measures the real rate
    assert p["n_samples"] >= 0.75 * expected, (p["n_samples"], expected, p["achieved_rate_hz"])
    assert p["achieved_rate_hz"] == pytest.approx(p["n_samples"] / p["elapsed_s"])
    assert sum(p["stacks"].values()) == p["n_samples"]
    assert 0 <= p["overhead_cpu_s"] < 0.2 * p["elapsed_s"]


def test_stages_and_blends_are_tagged(busy_profile):
    p = busy_profile
    assert set(p["stage_samples"]) <= {"fit", "wait", "other"}
    assert p["stage_samples"]["fit"] > 3 * p["stage_samples"].get("wait", 0) > 0
    assert p["stage_seconds"]["fit"] == pytest.approx(1.2, abs=0.1)
    assert p["stage_seconds"]["wait"] == pytest.approx(0.3, abs=0.1)
    assert p["stage_calls"] == {"fit": 1, "wait": 1}
    assert list(p["blend_samples"]) == [7]
    assert p["blend_samples"][7] == p["stage_samples"]["fit"]
    assert p["blend_seconds"][7] == pytest.approx(p["stage_seconds"]["fit"])
    wait_lines = [k for k in p["stacks"] if k.startswith("stage:wait;")]
    assert wait_lines and all("_sleepy_for_sampler_test" in k for k in wait_lines)


def test_nested_stages_are_exclusive_and_restore():
    s = StackSampler(rate_hz=0).start()
    with s.stage("load", blend_id=1):
        time.sleep(0.05)
        with s.stage("fit"):
            assert s.current_stage == ("fit", 1)  # the blend id is inherited
            time.sleep(0.1)
        assert s.current_stage == ("load", 1)
    s.set_stage("mpi")
    time.sleep(0.02)
    s.set_stage(None)
    s.stop()
    r = s.results()
    assert r["stage_seconds"]["fit"] == pytest.approx(0.1, abs=0.04)
    assert r["stage_seconds"]["load"] == pytest.approx(0.05, abs=0.04)
    assert r["stage_seconds"]["mpi"] == pytest.approx(0.02, abs=0.02)
    assert r["stage_calls"] == {"load": 1, "fit": 1, "mpi": 1}
    assert sum(r["stage_seconds"].values()) == pytest.approx(r["elapsed_s"], abs=1e-3)
    with pytest.raises(ValueError):
        s.stage("two words")


def test_rate_zero_starts_no_thread():
    before = {t.name for t in threading.enumerate()}
    s = StackSampler(rate_hz=0).start()
    assert "hpcblend-stack-sampler" not in {t.name for t in threading.enumerate()} - before
    with s.stage("fit", blend_id=3):
        time.sleep(0.02)
    s.stop()
    r = s.results()
    assert r["n_samples"] == 0 and r["stacks"] == {}
    assert r["stage_seconds"]["fit"] >= 0.015
    assert r["blend_seconds"][3] >= 0.015


def test_other_thread_target_and_null_sampler():
    done = threading.Event()
    ident = {}

    def worker():
        ident["id"] = threading.get_ident()
        _busy_loop_for_sampler_test(0.4)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while "id" not in ident:
        time.sleep(0.001)
    s = StackSampler(rate_hz=200, target_thread_id=ident["id"]).start()
    t.join()
    time.sleep(0.05)
    s.stop()
    r = s.results()
    assert r["n_samples"] > 10
    assert any("_busy_loop_for_sampler_test" in k for k in r["stacks"])
    assert r["target_lost"]
    n = NullSampler().start()
    with n.stage("fit", blend_id=1):
        pass
    n.set_stage("wait")
    n.stop()


def test_write_read_profiles_round_trip(tmp_path, busy_profile):
    path = _catalog(tmp_path / "cat.h5")
    other = dict(busy_profile, rank=1, stacks={"stage:fit;a.py:f:1;b.py:g:2": 5, "stage:wait;a.py:f:1": 2},
                 stage_seconds={"fit": 3.0, "wait": 0.5, "mpi": 0.25}, stage_samples={"fit": 5, "wait": 2},
                 blend_samples={11: 5}, blend_seconds={11: 3.0})
    written = write_profiles(path, [busy_profile, other])
    assert written == ["/profile/rank_0", "/profile/rank_1"]
    back = read_profiles(path)
    assert [p["rank"] for p in back] == [0, 1]
    for orig, got in zip([busy_profile, other], back):
        assert got["stacks"] == orig["stacks"]
        for key in ("stage_seconds", "blend_seconds"):
            assert got[key] == pytest.approx(orig[key])
        assert got["stage_samples"] == {k: v for k, v in orig["stage_samples"].items() if v}
        assert got["blend_samples"] == orig["blend_samples"]
        for key in ("rate_hz", "n_samples", "elapsed_s", "overhead_cpu_s", "n_missed", "host"):
            assert got[key] == orig[key]
    with h5py.File(path, "r") as f:
        g = f["profile/rank_0"]
        assert g["counts"].dtype == np.int64 and g["stacks"].shape == g["counts"].shape
        assert g.attrs["rate_hz"] == 100.0
        assert f["profile"].attrs["n_ranks"] == 2
        assert f.attrs["complete"]  # the catalog itself is untouched
    # replacing a rank's group
    write_profiles(path, [dict(other, stacks={"stage:fit;x.py:y:1": 1})])
    assert read_profiles(path)[1]["stacks"] == {"stage:fit;x.py:y:1": 1}
    assert read_profiles(_catalog(tmp_path / "empty.h5")) == []


def test_write_profiles_refuses_non_catalogs(tmp_path, busy_profile):
    with pytest.raises(CatalogError, match="no such catalog"):
        write_profiles(tmp_path / "missing.h5", [busy_profile])
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w"):
        pass
    with pytest.raises(CatalogError, match="not an hpcblend catalog"):
        write_profiles(p, [busy_profile])
    with pytest.raises(CatalogError, match="same rank"):
        write_profiles(_catalog(tmp_path / "c.h5"), [busy_profile, busy_profile])


def test_collapsed_text_round_trip(tmp_path, busy_profile):
    p = write_collapsed(tmp_path / "x.collapsed", busy_profile["stacks"])
    assert read_collapsed(p) == busy_profile["stacks"]
    line = open(p).readline().rstrip("\n")
    stack, count = line.rsplit(" ", 1)
    assert stack.startswith("stage:") and int(count) > 0


def _profiles():
    a = {"rank": 0, "rate_hz": 100.0, "n_samples": 6, "elapsed_s": 2.0,
         "stacks": {"stage:fit;m.py:main:1;d.py:fit:5": 4, "stage:wait;m.py:main:1": 2},
         "stage_seconds": {"fit": 0.04, "wait": 1.9, "other": 0.06}, "stage_samples": {"fit": 4, "wait": 2}}
    b = {"rank": 1, "rate_hz": 100.0, "n_samples": 10, "elapsed_s": 2.0,
         "stacks": {"stage:fit;m.py:main:1;d.py:fit:5": 7, "stage:fit;m.py:main:1;d.py:<lambda>:9": 3},
         "stage_seconds": {"fit": 1.8, "mpi": 0.2}, "stage_samples": {"fit": 10}}
    return [a, b]


def test_merge_select_slowest():
    ps = _profiles()
    merged = merge_stacks(ps)
    assert merged["stage:fit;m.py:main:1;d.py:fit:5"] == 11
    assert sum(merged.values()) == 16
    assert merge_stacks(ps, rank=0) == ps[0]["stacks"]
    assert slowest_rank(ps) == 1
    assert merge_stacks(ps, slowest=True) == ps[1]["stacks"]
    assert [p["rank"] for p in select_profiles(ps, rank=1)] == [1]
    with pytest.raises(ValueError):
        select_profiles(ps, rank=5)
    by_rank = merge_stacks(ps, prefix_rank=True)
    assert by_rank["rank:1;stage:fit;m.py:main:1;d.py:fit:5"] == 7
    assert merge_stacks([ps[0]["stacks"], ps[0]["stacks"]])["stage:wait;m.py:main:1"] == 4


def test_tables():
    ps = _profiles()
    rows = top_functions(merge_stacks(ps), 10)
    by = {r["frame"]: r for r in rows}
    assert by["d.py:fit:5"]["self"] == 11 and by["d.py:fit:5"]["total"] == 11
    assert by["m.py:main:1"]["self"] == 2 and by["m.py:main:1"]["total"] == 16
    assert not any(r["frame"].startswith("stage:") for r in rows)
    assert "d.py:fit:5" in format_top_functions(merge_stacks(ps))
    st = stage_table(ps)
    assert st[0]["idle_s"] == pytest.approx(1.9) and st[1]["idle_s"] == pytest.approx(0.2)
    assert st[1]["busy_s"] == pytest.approx(1.8)
    text = format_stage_table(ps)
    assert "wait" in text and "mpi" in text and "all" in text


def test_speedscope_document_structure(tmp_path):
    ps = _profiles()
    merged = merge_stacks(ps)
    doc = speedscope_document({"merged": merged, "rank 1": ps[1]["stacks"]}, seconds_per_sample=0.01, name="t")
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert all(isinstance(f["name"], str) for f in frames)
    assert {"name": "fit (d.py)", "file": "d.py", "line": 5} in frames
    assert len(doc["profiles"]) == 2
    for prof in doc["profiles"]:
        assert prof["type"] == "sampled" and prof["unit"] == "seconds"
        assert len(prof["samples"]) == len(prof["weights"])
        assert all(0 <= i < len(frames) for s in prof["samples"] for i in s)
        assert prof["endValue"] == pytest.approx(sum(prof["weights"]))
        assert prof["startValue"] == 0
    first = doc["profiles"][0]
    assert sum(first["weights"]) == pytest.approx(0.16)
    # root first: every sample starts at a stage frame
    assert all(frames[s[0]]["name"].startswith("stage:") for s in first["samples"])
    p = write_speedscope(tmp_path / "p.json", {"merged": merged})
    assert json.load(open(p))["profiles"][0]["unit"] == "none"


def test_flamegraph_svg_is_xml_with_titles():
    ps = _profiles()
    svg = flamegraph_svg(merge_stacks(ps), title="a <test> & more", seconds_per_sample=0.01)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    rects = root.findall(f".//{ns}g/{ns}rect")
    titles = [t.text for t in root.findall(f".//{ns}title")]
    assert len(rects) == len(titles) == 7  # all, 2 stages, main ×2, fit, <lambda>
    assert any(t.startswith("d.py:<lambda>:9 (3 samples") for t in titles)
    widths = {t.split(" (")[0]: float(r.get("width")) for t, r in zip(titles, rects)}
    assert widths["all"] == pytest.approx(1180.0)
    assert widths["d.py:fit:5"] == pytest.approx(1180.0 * 11 / 16)
    empty = ET.fromstring(flamegraph_svg({}))
    assert "no samples" in "".join(empty.itertext())


def test_profile_main_and_tools(tmp_path, busy_profile, capsys):
    path = _catalog(tmp_path / "cat.h5")
    assert profile_main([path]) == 1  # no /profile yet
    write_profiles(path, [busy_profile] + [dict(p, n_missed=0, achieved_rate_hz=1.0) for p in _profiles()[1:]])
    svg, ss, col = tmp_path / "f.svg", tmp_path / "s.json", tmp_path / "c.txt"
    rc = profile_main([path, "--rank", "0", "--svg", str(svg), "--speedscope", str(ss), "--collapsed", str(col),
                       "--top", "5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "seconds per stage per rank" in out and "_busy_loop_for_sampler_test" in out
    ET.parse(svg)
    assert [p["name"] for p in json.load(open(ss))["profiles"]] == ["merged", "rank 0"]
    assert read_collapsed(col) == busy_profile["stacks"]
    # the command-line tools in profiling/
    env = dict(os.environ, PYTHONPATH=REPO)
    merged = tmp_path / "merged.collapsed"
    r = subprocess.run([sys.executable, os.path.join(REPO, "profiling", "merge_profiles.py"), path, "-o", str(merged),
                        "--speedscope", str(tmp_path / "m.json")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sum(read_collapsed(merged).values()) == busy_profile["n_samples"] + 10
    r = subprocess.run([sys.executable, os.path.join(REPO, "profiling", "flamegraph.py"), str(merged), "-o",
                        str(tmp_path / "g.svg")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    ET.parse(tmp_path / "g.svg")
