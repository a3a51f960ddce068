"""The sbatch scripts of ``slurm/`` on a real single-node Slurm.

A session fixture starts slurmctld + slurmd (and munged) with
``slurm/local_slurm.sh start`` — a private slurm.conf under
``$HPCBLEND_SLURM_DIR`` (default /tmp/hpcblend-slurm), no systemd — and stops
them at the end (unless they were already running). Needs root and the Debian
packages slurmctld, slurmd, slurm-client and munge (``./setup.sh`` installs
them): without them the tests skip, except when ``CI`` is set, where they fail;
a cluster that does not start always fails, with the daemons' logs.

The catalogs the jobs write must hold the same /blends and /sources rows (timing
columns ``t_*`` and ``rank`` aside) as a direct ``hpcblend run`` of the same
job, also when the job was checkpointed by SIGUSR1, requeued and resumed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcblend.io.catalog import read_table

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "slurm" / "local_slurm.sh"
HPCBLEND = Path(sys.executable).with_name("hpcblend")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged", "munge")

#: the built-in job switched to its synthetic-blend collection (8 blends, one unit each; the
#: built-in job itself is a simulated tract, too slow here), quiet
DEMO_OPTS = ["--set", "input.kind=demo", "--set", "run.progress=false"]
#: the slow job of the requeue test: 32 blends, every fit forced to 600 iterations
#: (~0.2 s per unit), a write round after every unit
SLOW_OPTS = ["--set", "input.kind=demo", "--set", "run.progress=false", "--set", "input.n_demo_blends=32",
             "--set", "deblend.min_iter=600", "--set", "deblend.max_iter=600",
             "--set", "run.write_every_units=1"]
JOB_TIMEOUT = 150.0


def _fail_or_skip(msg: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def _sbin_path() -> str:
    path = os.environ.get("PATH", "")
    return path + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"


class Cluster:
    """The running test cluster and the environment jobs are submitted with."""

    def __init__(self, conf: str, slurm_dir: Path, work: Path):
        self.conf = conf
        self.slurm_dir = slurm_dir
        self.work = work
        self.runs = work / "runs"
        self.demo = work / "demo_blends"
        self.runs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SBATCH_", "SLURM_", "SALLOC_"))}
        # HPCBLEND_NUMBA_CACHE=none: the jobs use the Numba cache the direct runs (and the rest of
        # the suite) use, instead of compiling the kernels afresh (~20 s) in every run directory
        env.update(SLURM_CONF=conf, PATH=_sbin_path(), JOB="none", HPCBLEND_RUNS=str(self.runs),
                   HPCBLEND_NUMBA_CACHE="none", HPCBLEND_ROOT=str(REPO),
                   HPCBLEND_VENV=str(Path(sys.executable).parent.parent))
        self.env = env

    def demo_opts(self, opts, cache: str = "") -> list:
        """Options that put the demo blends in this session's directory."""
        return list(opts) + ["--set", f"input.cache_dir={self.demo}{cache}"]

    def sbatch(self, args, wait: bool = False, timeout: float = JOB_TIMEOUT, env: dict | None = None) -> tuple:
        """Submit from the repository root (with ``env``, default the cluster's); return (job id, completed process)."""
        out = [] if any(a.startswith("--output=") for a in args) else [f"--output={self.work}/%x-%j.out"]
        cmd = ["sbatch"] + (["--wait"] if wait else ["--parsable"]) + out + args
        p = subprocess.run(cmd, cwd=REPO, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        m = re.search(r"(?:Submitted batch job )?(\d+)", p.stdout)
        if not m:
            pytest.fail(f"sbatch printed no job id (exit {p.returncode}):\n{p.stdout}\n{p.stderr}\n{self.logs()}")
        return int(m.group(1)), p

    def job(self, jid: int) -> dict:
        """`scontrol show job` as a dict (a finished job stays listed for MinJobAge, here 16 s)."""
        p = subprocess.run(["scontrol", "-o", "show", "job", str(jid)], env=self.env, capture_output=True,
                           text=True, timeout=30)
        return dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)

    def wait(self, jid: int, timeout: float = JOB_TIMEOUT) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            info = self.job(jid)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                                        "BOOT_FAIL", "DEADLINE", "PREEMPTED"):
                return info
            time.sleep(0.5)
        subprocess.run(["scancel", str(jid)], env=self.env, timeout=30)
        pytest.fail(f"job {jid} not finished after {timeout:.0f} s: {self.job(jid)}\n{self.logs(jid)}")

    def run_dir(self, name: str, jid: int) -> Path:
        return self.runs / f"{name}_{jid}"

    def logs(self, jid: int | None = None, name: str = "") -> str:
        """Batch output, rank logs and daemon logs, for failure messages."""
        parts = []
        if jid is not None:
            files = sorted(self.work.glob(f"*-{jid}.out"))
            files += sorted(self.runs.glob(f"*_{jid}/logs/*.log"))
            for f in files:
                parts.append(f"----- {f} -----\n{f.read_text(errors='replace')[-6000:]}")
        # slurmd.log, or slurmd.<node>.log per node of a cluster started with --nodes N
        for f in [self.slurm_dir / "log" / "slurmctld.log", *sorted((self.slurm_dir / "log").glob("slurmd*.log"))]:
            if f.exists():
                parts.append(f"----- {f} (tail) -----\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)


def require_local_slurm() -> None:
    """Fail (under CI) or skip unless the local Slurm test cluster can be started: its binaries, and root."""
    missing = [b for b in BINARIES if not shutil.which(b, path=_sbin_path())]
    if missing:
        _fail_or_skip(f"Slurm/munge binaries not found: {', '.join(missing)} "
                      "(apt-get install slurmctld slurmd slurm-client munge, or ./setup.sh)")
    if os.geteuid() != 0:
        _fail_or_skip("the local Slurm test cluster must be started as root (slurmd runs the jobs)")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Cluster:
    """A running single-node Slurm (started here, stopped at the end if this fixture started it)."""
    require_local_slurm()
    slurm_dir = Path(os.environ.get("HPCBLEND_SLURM_DIR", "/tmp/hpcblend-slurm"))
    # MinJobAge 16 s: `sbatch --wait` then polls every 8 s instead of every 32 s
    env = dict(os.environ, PATH=_sbin_path(), HPCBLEND_SLURM_DIR=str(slurm_dir), HPCBLEND_SLURM_MIN_JOB_AGE="16")
    was_running = subprocess.run(["bash", str(LOCAL_SLURM), "status"], env=env, capture_output=True,
                                 timeout=60).returncode == 0
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(LOCAL_SLURM), "start"], env=env, capture_output=True, text=True, timeout=180)
    if p.returncode != 0:
        pytest.fail(f"slurm/local_slurm.sh start failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    m = re.search(r"^export SLURM_CONF=(\S+)$", p.stdout, re.M)
    assert m, f"local_slurm.sh start printed no export line:\n{p.stdout}\n{p.stderr}"
    print(f"local Slurm ready in {time.monotonic() - t0:.1f} s ({'reused' if was_running else 'started'})")
    cluster = Cluster(m.group(1), slurm_dir, tmp_path_factory.mktemp("slurm_jobs"))
    try:
        yield cluster
    finally:
        if not was_running:
            subprocess.run(["bash", str(LOCAL_SLURM), "stop"], env=env, capture_output=True, timeout=120)


def _direct_run(cluster: Cluster, out: Path, opts) -> Path:
    """`hpcblend run` on one rank without Slurm, from the repository root (as the jobs run).

    It also warms the Numba cache the jobs then use.
    """
    env = dict(cluster.env, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([str(HPCBLEND), "run", "--output", str(out), *opts], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"direct hpcblend run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def demo_reference(slurm_cluster) -> Path:
    return _direct_run(slurm_cluster, slurm_cluster.work / "reference_demo.h5", slurm_cluster.demo_opts(DEMO_OPTS))


def assert_same_rows(got: Path, want: Path, tables=("blends", "sources")) -> None:
    """Same rows of ``tables`` (default /blends and /sources), apart from timing columns (t_*) and the rank."""
    for table in tables:
        a, b = read_table(str(got), table), read_table(str(want), table)
        assert a.dtype.names == b.dtype.names, table
        assert len(a) == len(b), f"/{table}: {len(a)} rows, reference {len(b)}"
        assert len(a) > 0, f"/{table} is empty"
        for col in a.dtype.names:
            if col.startswith("t_") or col == "rank":
                continue
            np.testing.assert_array_equal(a[col], b[col], err_msg=f"/{table} column {col}")


def _expect_ok(cluster: Cluster, jid: int, info: dict, name: str) -> Path:
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", \
        f"job {jid}: {info.get('JobState')} exit {info.get('ExitCode')}\n{cluster.logs(jid)}"
    cat = cluster.run_dir(name, jid) / "catalog.h5"
    assert cat.is_file(), f"no catalog at {cat}\n{cluster.logs(jid)}"
    return cat


def test_one_node_sbatch_wait_matches_direct_run(slurm_cluster, demo_reference):
    """`sbatch --wait slurm/one_node.sbatch` (mpirun, 2 ranks) on the demo blends: exit 0, same rows."""
    name = "hb_one_node"
    jid, p = slurm_cluster.sbatch([f"--job-name={name}", "--ntasks=2", "slurm/one_node.sbatch",
                                   *slurm_cluster.demo_opts(DEMO_OPTS)], wait=True)
    assert p.returncode == 0, f"sbatch --wait exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{slurm_cluster.logs(jid)}"
    cat = slurm_cluster.run_dir(name, jid) / "catalog.h5"
    assert cat.is_file(), f"no catalog at {cat}\n{slurm_cluster.logs(jid)}"
    assert_same_rows(cat, demo_reference)
    logs = sorted(p.name for p in (cat.parent / "logs").glob("rank_*.log"))
    assert logs == ["rank_0.log", "rank_1.log"], logs


def test_sbatch_wait_returns_the_job_exit_code(slurm_cluster):
    """A job that fails (a job file that does not exist) makes `sbatch --wait` fail too."""
    name = "hb_bad_job"
    jid, p = slurm_cluster.sbatch([f"--job-name={name}", "--ntasks=1", "slurm/one_node.sbatch",
                                   "jobs/no_such_job.yaml"], wait=True)
    assert p.returncode == 2, f"sbatch --wait exit {p.returncode}, not 2\n{slurm_cluster.logs(jid)}"
    assert "not found" in (slurm_cluster.work / f"{name}-{jid}.out").read_text()


def test_multi_node_srun_pmix_matches_direct_run(slurm_cluster, demo_reference):
    """slurm/multi_node.sbatch (srun --mpi=pmix), on the one node there is: same rows."""
    name = "hb_multi_node"
    jid, _ = slurm_cluster.sbatch([f"--job-name={name}", "--nodes=1", "--ntasks-per-node=2",
                                   "slurm/multi_node.sbatch", *slurm_cluster.demo_opts(DEMO_OPTS)])
    cat = _expect_ok(slurm_cluster, jid, slurm_cluster.wait(jid), name)
    assert_same_rows(cat, demo_reference)
    log0 = (cat.parent / "logs" / "rank_0.log").read_text()
    assert "srun" in (slurm_cluster.work / f"{name}-{jid}.out").read_text() and "rank 0" in log0


def test_usr1_checkpoint_requeue_resume_gives_the_same_catalog(slurm_cluster):
    """SIGUSR1 to the batch shell mid-run: hpcblend checkpoints (exit 3), the job requeues itself,
    the restart runs `--resume` in the same run directory, and the final catalog equals a direct run's."""
    opts = slurm_cluster.demo_opts(SLOW_OPTS, cache="_32")
    reference = _direct_run(slurm_cluster, slurm_cluster.work / "reference_slow.h5", opts)
    name = "hb_requeue"
    jid, _ = slurm_cluster.sbatch([f"--job-name={name}", "--ntasks=2", "slurm/one_node.sbatch", *opts])
    run_dir = slurm_cluster.run_dir(name, jid)
    rank0 = run_dir / "logs" / "rank_0.log"
    t0 = time.monotonic()
    while True:  # wait until the run has written two rounds (so a checkpoint exists), then signal
        if rank0.exists() and "round 2 written" in rank0.read_text(errors="replace"):
            break
        info = slurm_cluster.job(jid)
        if info.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {jid} ended before it could be signalled: {info}\n{slurm_cluster.logs(jid)}")
        if time.monotonic() - t0 > JOB_TIMEOUT:
            pytest.fail(f"job {jid} wrote no second round in {JOB_TIMEOUT:.0f} s\n{slurm_cluster.logs(jid)}")
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(jid)], env=slurm_cluster.env, check=True, timeout=30)
    info = slurm_cluster.wait(jid)
    cat = _expect_ok(slurm_cluster, jid, info, name)
    batch = (slurm_cluster.work / f"{name}-{jid}.out").read_text()
    assert int(info.get("Restarts", 0)) >= 1, f"job {jid} was not requeued: {info}\n{slurm_cluster.logs(jid)}"
    assert "exited with code 3" in batch, f"first attempt did not checkpoint (exit 3)\n{slurm_cluster.logs(jid)}"
    assert "requeueing job" in batch
    log0 = rank0.read_text()
    attempts = log0.count("=== ")
    assert "attempt 1 rank 0" in log0 and f"--output {cat} --resume" in log0, \
        f"the restart did not resume the same catalog\n{slurm_cluster.logs(jid)}"
    assert attempts >= 4  # two header lines per attempt
    assert_same_rows(cat, reference)


def test_rank_exec_logs_per_rank_and_sets_a_per_host_numba_cache(tmp_path):
    """slurm/rank_exec.sh (no Slurm needed): output to logs/rank_<r>.log, NUMBA_CACHE_DIR=<cache>/<host>."""
    env = dict(os.environ, HB_LOGDIR=str(tmp_path / "logs"), HB_NUMBA_CACHE=str(tmp_path / "nc"),
               OMPI_COMM_WORLD_RANK="3", SLURM_RESTART_COUNT="2")
    env.pop("SLURMD_NODENAME", None)  # outside Slurm: the node is the host
    cmd = ["bash", str(REPO / "slurm" / "rank_exec.sh"), "bash", "-c", 'echo "cache=$NUMBA_CACHE_DIR"; exit 7']
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 7 and p.stdout == ""
    host = socket.gethostname().split(".")[0]
    log = (tmp_path / "logs" / "rank_3.log").read_text()
    assert f"cache={tmp_path / 'nc' / host}" in log and "attempt 2 rank 3" in log
    assert (tmp_path / "nc" / host).is_dir()
    env["HB_NUMBA_CACHE"] = "none"
    env.pop("NUMBA_CACHE_DIR", None)
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert (tmp_path / "logs" / "rank_3.log").read_text().count("=== ") == 4
    assert (tmp_path / "logs" / "rank_3.log").read_text().rstrip().endswith("cache=")


def test_scaling_sweep_dry_run_lists_one_job_per_point(tmp_path):
    """slurm/scaling_sweep.sh --dry-run (no Slurm needed): strong and weak jobs, ranks packed per node."""
    p = subprocess.run(["bash", str(REPO / "slurm" / "scaling_sweep.sh"), "--dry-run", "--ranks", "1 4",
                        "--ntasks-per-node", "2", "--per-rank", "5", "--out", str(tmp_path / "sweep"),
                        "--", "--set", "run.progress=false"],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 4, p.stdout
    assert "--job-name=strong_n4 --ntasks=4" in lines[1] and "--nodes=2" in lines[1]
    assert "--set input.kind=demo --set input.n_demo_blends=20 --set run.progress=false" in lines[3]
    assert not (tmp_path / "sweep").exists()


def test_tract_array_runs_one_catalog_per_list_line(slurm_cluster, tmp_path):
    """slurm/tract_array.sbatch: array task N runs line N of the list (comments and blank lines skipped)."""
    listing = tmp_path / "tracts.txt"
    listing.write_text("# one run per line\nnone --set input.n_demo_blends=3\n\n"
                       "--set input.n_demo_blends=5   # no job file: $JOB (none)\n")
    name = "hb_array"
    jid, p = slurm_cluster.sbatch([f"--job-name={name}", "--array=0-1", "--ntasks=1",
                                   f"--output={slurm_cluster.work}/%x-%A_%a.out", "slurm/tract_array.sbatch",
                                   str(listing), *slurm_cluster.demo_opts(DEMO_OPTS)], wait=True)
    assert p.returncode == 0, f"sbatch --wait exit {p.returncode}\n{p.stderr}\n" + "\n".join(
        f.read_text() for f in sorted(slurm_cluster.work.glob(f"{name}-{jid}_*.out")))
    for task, n in ((0, 3), (1, 5)):
        cat = slurm_cluster.run_dir(name, jid) / f"task_{task}" / "catalog.h5"
        assert len(read_table(str(cat), "blends")) == n, cat
