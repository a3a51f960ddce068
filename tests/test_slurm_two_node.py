"""hpcblend across two Slurm nodes on this one machine (``slurm/local_slurm.sh start --nodes 2``).

A module fixture starts a second, separate test cluster — slurmctld on port 16827, two slurmd
(``slurmd -N n1`` and ``-N n2``, ports 17001/17002, one CPU each) under
``$HPCBLEND_SLURM_DIR-2n`` (default /tmp/hpcblend-slurm-2n) — so it can run next to the
single-node cluster of ``tests/test_slurm.py``, and stops it at the end (unless it was already
running). The ranks of a job then run on two Slurm nodes: launched by two slurmd, wired up by
two PMIx servers, talking TCP to each other (no shared memory), one MPI window spanning both.
Both "nodes" have the same host name, so the tests identify them by Slurm's node name
(``SLURMD_NODENAME``), which hpcblend records in ``/provenance`` (``rank_nodes``), in the rank
logs and in the in-flight markers.

``pytest -k two_node`` runs these tests; like tests/test_slurm.py they skip without root or the
Slurm packages, except under ``CI``, where they fail. Every job is awaited with a time limit, so
a hang fails the test instead of blocking the run.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hpcblend.io.catalog import read_json_group, read_table
from rank_kill import kill_rank_in_a_unit
from test_slurm import (JOB_TIMEOUT, LOCAL_SLURM, REPO, Cluster, _direct_run, _sbin_path, assert_same_rows,
                        require_local_slurm)

#: the built-in job (the simulated 2 x 2-patch demo tract: 4 units, a few seconds each), quiet
TRACT_OPTS = ["--set", "run.progress=false"]
#: the slow job of the lost-rank and requeue tests: 16 synthetic blends, every fit forced to 600
#: iterations (~0.2-0.5 s per unit), a write round after every unit
SLOW16_OPTS = ["--set", "input.kind=demo", "--set", "run.progress=false", "--set", "input.n_demo_blends=16",
               "--set", "deblend.min_iter=600", "--set", "deblend.max_iter=600", "--set", "run.write_every_units=1"]
NODES = ["n1", "n2"]
#: one rank per node
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "slurm/multi_node.sbatch"]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory) -> Cluster:
    """A running two-node Slurm on this machine (started here, stopped at the end if this fixture started it)."""
    require_local_slurm()
    slurm_dir = Path(os.environ.get("HPCBLEND_SLURM_DIR", "/tmp/hpcblend-slurm") + "-2n")
    # the single-node cluster's ports (if set) must not leak into this one: local_slurm.sh's
    # defaults for --nodes 2 differ from its single-node ones
    env = {k: v for k, v in os.environ.items() if k not in ("HPCBLEND_SLURMCTLD_PORT", "HPCBLEND_SLURMD_PORT")}
    # MinJobAge 16 s: `sbatch --wait` then polls every 8 s instead of every 32 s
    env.update(PATH=_sbin_path(), HPCBLEND_SLURM_DIR=str(slurm_dir), HPCBLEND_SLURM_MIN_JOB_AGE="16")
    cmd = ["bash", str(LOCAL_SLURM)]
    was_running = subprocess.run(cmd + ["status", "--nodes", "2"], env=env, capture_output=True,
                                 timeout=60).returncode == 0
    t0 = time.monotonic()
    p = subprocess.run(cmd + ["start", "--nodes", "2"], env=env, capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        pytest.fail(f"slurm/local_slurm.sh start --nodes 2 failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    m = re.search(r"^export (SLURM_CONF=\S+.*)$", p.stdout, re.M)
    assert m, f"local_slurm.sh start --nodes 2 printed no export line:\n{p.stdout}\n{p.stderr}"
    exports = dict(kv.split("=", 1) for kv in m.group(1).split())
    # SLURM_CONF and the MPI settings a window across the two "nodes" (TCP) needs
    assert {"OMPI_MCA_osc", "MPI4PY_RC_THREAD_LEVEL"} <= set(exports), exports
    print(f"local two-node Slurm ready in {time.monotonic() - t0:.1f} s ({'reused' if was_running else 'started'})")
    cluster = Cluster(exports["SLURM_CONF"], slurm_dir, tmp_path_factory.mktemp("slurm_two_node_jobs"))
    cluster.env.update(exports)
    try:
        sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=cluster.env, capture_output=True,
                               text=True, timeout=30).stdout.split()
        assert sinfo == ["n1", "idle", "n2", "idle"], f"sinfo: {sinfo}\n{cluster.logs()}"
        yield cluster
    finally:
        if not was_running:
            subprocess.run(cmd + ["stop", "--nodes", "2"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def tract_reference(two_node_cluster) -> Path:
    """The built-in tract job run directly on one rank (simulates the tract once, in .hpcblend_cache)."""
    return _direct_run(two_node_cluster, two_node_cluster.work / "reference_tract.h5", TRACT_OPTS)


@pytest.fixture(scope="module")
def slow_reference(two_node_cluster) -> Path:
    """The slow synthetic job (16 units of ~0.2 s, a write round after every unit) run directly on one rank."""
    return _direct_run(two_node_cluster, two_node_cluster.work / "reference_slow.h5",
                       two_node_cluster.demo_opts(SLOW16_OPTS, cache="_16"))


def _header_nodes(log: Path) -> list:
    """The node of every attempt's header in a rank log (`... rank r on node n2 (host h, pid p)`)."""
    return re.findall(r"^=== .* rank \d+ on node (\S+) \(host", log.read_text(errors="replace"), re.M)


def _wait_until(cluster: Cluster, jid: int, ready, what: str) -> None:
    """Poll ``ready()`` while job ``jid`` runs; fail if the job ends first or after JOB_TIMEOUT."""
    t0 = time.monotonic()
    while not ready():
        info = cluster.job(jid)
        if info.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {jid} ended before {what}: {info}\n{cluster.logs(jid)}")
        if time.monotonic() - t0 > JOB_TIMEOUT:
            subprocess.run(["scancel", str(jid)], env=cluster.env, timeout=30)
            pytest.fail(f"job {jid}: not {what} after {JOB_TIMEOUT:.0f} s\n{cluster.logs(jid)}")
        time.sleep(0.02)


def _kill_rank_1_in_a_unit(cat: Path) -> dict | None:
    """If rank 1 is inside a unit: SIGKILL it there (after checking it runs on n2) and return its marker's record."""

    def on_n2(pid: int) -> None:  # the process really is the rank on n2 (Slurm's node name in its environment)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"SLURMD_NODENAME=n2" in environ, f"pid {pid} of rank 1 does not run on n2"

    return kill_rank_in_a_unit(cat, 1, check=on_n2)


def test_two_node_multi_node_sbatch_matches_direct_run(two_node_cluster, tract_reference):
    """`sbatch --wait slurm/multi_node.sbatch`, 2 nodes x 1 rank, the built-in tract job: exit 0, the same
    /patches, /blends and /sources rows as a direct one-rank run, ranks (and units) on both nodes."""
    c = two_node_cluster
    name = "hb2_tract"
    jid, p = c.sbatch([f"--job-name={name}", *TWO_NODES, *TRACT_OPTS], wait=True)
    assert p.returncode == 0, f"sbatch --wait exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{c.logs(jid)}"
    cat = c.run_dir(name, jid) / "catalog.h5"
    assert cat.is_file(), f"no catalog at {cat}\n{c.logs(jid)}"
    assert_same_rows(cat, tract_reference, tables=("patches", "blends", "sources"))
    prov = read_json_group(str(cat), "provenance")
    assert prov["n_ranks"] == 2 and prov["rank_nodes"] == NODES, prov
    # both "nodes" are this host: the host list cannot tell them apart, the node names do
    assert len(prov["hosts"]) == 1, prov["hosts"]
    logs = cat.parent / "logs"
    assert _header_nodes(logs / "rank_0.log") == ["n1"] and _header_nodes(logs / "rank_1.log") == ["n2"], \
        c.logs(jid)
    # each rank ran patches (rank 1 pulls its units over TCP from rank 0's window while rank 0 works)
    assert set(read_table(str(cat), "patches")["rank"].tolist()) == {0, 1}, c.logs(jid)
    assert "on n[1-2]" in (c.work / f"{name}-{jid}.out").read_text()


def test_two_node_rank_lost_on_n2_then_resume_gives_the_same_catalog(two_node_cluster, slow_reference):
    """kill -9 of the rank on n2 inside a unit: the job fails naming node, rank and unit; a resubmitted job
    with --resume finishes the same catalog: the direct run's rows, no id twice, none missing."""
    c = two_node_cluster
    opts = c.demo_opts(SLOW16_OPTS, cache="_16")
    name = "hb2_lost"
    jid, _ = c.sbatch([f"--job-name={name}", *TWO_NODES, *opts])
    run_dir = c.run_dir(name, jid)
    cat = run_dir / "catalog.h5"
    rank0 = run_dir / "logs" / "rank_0.log"
    killed = {}

    def kill_when_ready() -> bool:  # two write rounds in the catalog, and rank 1 inside a unit
        if not (rank0.exists() and "round 2 written" in rank0.read_text(errors="replace")):
            return False
        killed["rec"] = _kill_rank_1_in_a_unit(cat)
        return killed["rec"] is not None

    _wait_until(c, jid, kill_when_ready, "rank 1 was killed inside a unit after two write rounds")
    rec = killed["rec"]
    assert rec["node"] == "n2", rec
    info = c.wait(jid)
    assert info.get("JobState") == "FAILED" and info.get("ExitCode") != "0:0", f"{info}\n{c.logs(jid)}"
    batch = (c.work / f"{name}-{jid}.out").read_text()
    lost = f"rank 1 on node n2 (host {rec['host']}, pid {rec['pid']}) was working on unit {rec['path']}"
    assert lost in batch, f"no line naming node, rank and unit ({lost!r})\n{c.logs(jid)}"
    assert f"HPCBLEND_RUNDIR={run_dir} HPCBLEND_RESUME=1 sbatch" in batch

    env = dict(c.env, HPCBLEND_RUNDIR=str(run_dir), HPCBLEND_RESUME="1")
    jid2, _ = c.sbatch([f"--job-name={name}", *TWO_NODES, *opts], env=env)
    info = c.wait(jid2)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", \
        f"resumed job {jid2}: {info}\n{c.logs(jid2)}\n{c.logs(jid)}"
    log0 = rank0.read_text(errors="replace")
    assert f"--output {cat} --resume" in log0, c.logs(jid2)
    assert re.search(r"previous run: rank 1 \(node n2, host \S+\) was working on " + re.escape(rec["path"]), log0), \
        log0[-4000:]
    done_before = re.search(r"resume: (\d+) of 16 units already in the catalog", log0)
    assert done_before and int(done_before.group(1)) >= 2, log0[-4000:]  # the two rounds before the kill
    for table in ("blends", "sources"):
        ids = read_table(str(cat), table)["id"]
        ref = read_table(str(slow_reference), table)["id"]
        assert len(np.unique(ids)) == len(ids), f"/{table}: {len(ids) - len(np.unique(ids))} duplicated ids"
        assert not set(ref.tolist()) - set(ids.tolist()), f"/{table}: rows missing"
    assert len(read_table(str(cat), "blends")) == 16
    assert_same_rows(cat, slow_reference)


def test_two_node_usr1_checkpoint_requeue_resume_gives_the_same_catalog(two_node_cluster, slow_reference):
    """SIGUSR1 to the batch shell of a two-node job: checkpoint (exit 3), requeue, `--resume` on both nodes,
    and the direct run's catalog."""
    c = two_node_cluster
    opts = c.demo_opts(SLOW16_OPTS, cache="_16")
    name = "hb2_requeue"
    jid, _ = c.sbatch([f"--job-name={name}", *TWO_NODES, *opts])
    run_dir = c.run_dir(name, jid)
    rank0 = run_dir / "logs" / "rank_0.log"
    _wait_until(c, jid, lambda: rank0.exists() and "round 2 written" in rank0.read_text(errors="replace"),
                "it wrote two rounds")
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(jid)], env=c.env, check=True, timeout=30)
    info = c.wait(jid)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{c.logs(jid)}"
    assert int(info.get("Restarts", 0)) >= 1, f"job {jid} was not requeued: {info}\n{c.logs(jid)}"
    batch = (c.work / f"{name}-{jid}.out").read_text()
    assert "exited with code 3" in batch, f"first attempt did not checkpoint (exit 3)\n{c.logs(jid)}"
    assert "requeueing job" in batch
    cat = run_dir / "catalog.h5"
    log0 = rank0.read_text()
    assert "attempt 1 rank 0 on node n1" in log0 and f"--output {cat} --resume" in log0, \
        f"the restart did not resume the same catalog\n{c.logs(jid)}"
    assert _header_nodes(run_dir / "logs" / "rank_1.log")[-2:] == ["n2", "n2"], c.logs(jid)
    assert_same_rows(cat, slow_reference)
    assert read_json_group(str(cat), "provenance")["rank_nodes"] == NODES


def test_two_node_rank_exec_names_the_slurm_node(tmp_path):
    """slurm/rank_exec.sh (no Slurm needed) on a node whose Slurm name is not the host name: the log header
    names the node, the Numba cache and TMPDIR are per node."""
    env = dict(os.environ, HB_LOGDIR=str(tmp_path / "logs"), HB_NUMBA_CACHE=str(tmp_path / "nc"),
               OMPI_COMM_WORLD_RANK="1", SLURMD_NODENAME="n7", TMPDIR=str(tmp_path / "tmp"))
    cmd = ["bash", str(REPO / "slurm" / "rank_exec.sh"), "bash", "-c",
           'echo "cache=$NUMBA_CACHE_DIR tmp=$TMPDIR"; exit 0']
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    log = tmp_path / "logs" / "rank_1.log"
    assert _header_nodes(log) == ["n7"], log.read_text()
    assert f"cache={tmp_path / 'nc' / 'n7'} tmp={tmp_path / 'tmp' / 'hpcblend-n7'}" in log.read_text()
    assert (tmp_path / "nc" / "n7").is_dir() and (tmp_path / "tmp" / "hpcblend-n7").is_dir()
