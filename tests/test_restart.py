"""Checkpoint / restart and rank failure of the MPI driver, with real processes under mpirun.

Each test starts ``mpirun -n 2`` in a subprocess (so a hang shows up as a
timeout, not a stuck suite), interrupts it, resumes, and compares the catalog
with an uninterrupted run's row for row.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpcblend.io.catalog import read_table
from rank_kill import kill_rank_in_a_unit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, "bin", "hpcblend-mpirun")
HPCBLEND = os.path.join(ROOT, ".venv", "bin", "hpcblend")

pytestmark = pytest.mark.skipif(shutil.which("mpirun") is None and not os.environ.get("CI"),
                                reason="mpirun not installed (CI installs it through setup.sh)")


def _env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", NUMBA_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    return env


def _hsc_job(tmp_path, shared_data, n_files=48):
    """A job over the first ``n_files`` real HSC blends (sorted), written into tmp_path."""
    import glob

    files = sorted(glob.glob(os.path.join(shared_data, "hsc_blends", "set*", "*.npz")))[:n_files]
    assert len(files) == n_files
    job = tmp_path / "job.yaml"
    job.write_text("name: restart-test\ninput:\n  kind: blends\n  paths:\n"
                   + "".join(f"    - {f}\n" for f in files)
                   + "run:\n  progress: false\n  write_every_units: 4\n  write_every_seconds: 1000\n")
    return str(job)


def _compare(a_path, b_path):
    for table in ("blends", "sources"):
        a, b = read_table(a_path, table), read_table(b_path, table)
        assert len(a) == len(b), table
        assert len(np.unique(a["id"])) == len(a), f"duplicate ids in {table}"
        for name in a.dtype.names:
            if name.startswith("t_") or name == "rank":
                continue
            if a[name].dtype.kind == "f":
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{table}.{name}")
            else:
                assert np.array_equal(a[name], b[name]), f"{table}.{name}"


def _rounds(path):
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["ledger"].attrs["rounds"])
    except Exception:  # noqa: BLE001 - file being created
        return 0


def _reference(tmp_path, job):
    ref = str(tmp_path / "reference.h5")
    r = subprocess.run([HPCBLEND, "run", job, "--output", ref], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return ref


def test_kill_one_rank_then_resume_gives_identical_catalog(tmp_path, shared_data):
    job = _hsc_job(tmp_path, shared_data)
    out = str(tmp_path / "killed.h5")
    proc = subprocess.Popen([WRAPPER, "-n", "2", "run", job, "--output", out], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _rounds(out) >= 2:
            killed = kill_rank_in_a_unit(out, 1)  # stopped, re-read, killed only inside the unit it names
            if killed is not None:
                break
        time.sleep(0.02)
    text, _ = proc.communicate(timeout=120)
    assert killed is not None, "the run ended before a rank could be killed:\n" + text[-3000:]
    assert proc.returncode != 0
    lost = rf"hpcblend-mpirun: rank 1 \([^)]*pid {killed['pid']}\) was working on unit {re.escape(killed['path'])} "
    assert re.search(lost, text), text[-3000:]
    rounds_before = _rounds(out)
    assert rounds_before >= 2
    r = subprocess.run([WRAPPER, "-n", "2", "run", job, "--output", out, "--resume"], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    # the resumed run reports the unit lost in the kill
    assert re.search(rf"previous run: rank 1 .* was working on {re.escape(killed['path'])} since .* did not finish it",
                     r.stderr), r.stderr[-3000:]
    _compare(out, _reference(tmp_path, job))


def test_stop_signal_checkpoints_and_resume_finishes(tmp_path, shared_data):
    job = _hsc_job(tmp_path, shared_data)
    out = str(tmp_path / "stopped.h5")
    proc = subprocess.Popen([WRAPPER, "-n", "2", "run", job, "--output", out], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    sent = False
    while time.time() < deadline and proc.poll() is None:
        if _rounds(out) >= 1:
            proc.send_signal(signal.SIGUSR1)  # mpirun forwards SIGUSR1 to every rank
            sent = True
            break
        time.sleep(0.02)
    text, _ = proc.communicate(timeout=120)
    assert sent, text[-3000:]
    assert proc.returncode == 3, text[-3000:]
    assert "--resume" in text
    with h5py.File(out, "r") as f:
        assert not f.attrs["complete"]
        n_done = int(f["ledger"].attrs["n_units"])
    assert 0 < n_done < 48
    r = subprocess.run([WRAPPER, "-n", "2", "run", job, "--output", out, "--resume"], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _compare(out, _reference(tmp_path, job))


def test_unexpected_error_on_one_rank_ends_job_naming_rank_and_unit(tmp_path):
    """An error outside the per-blend isolation must abort all ranks (no hang) and say where."""
    inject = (
        "import sys, hpcblend.units.blends as p\n"
        "from mpi4py import MPI\n"
        "orig = p.BlendsSource.process\n"
        "def broken(self, unit, bands, rank=0, **kw):\n"
        "    if MPI.COMM_WORLD.rank == 1:\n"
        "        raise MemoryError('injected failure')\n"
        "    return orig(self, unit, bands, rank, **kw)\n"
        "p.BlendsSource.process = broken\n"
        "from hpcblend.cli import main\n"
        f"sys.exit(main(['run', '--output', {str(tmp_path / 'fatal.h5')!r}, '--set', 'run.progress=false', "
        "'--set', 'input.kind=demo']))\n"
    )
    r = subprocess.run(["mpirun", "--oversubscribe", "-n", "2", sys.executable, "-c", inject], env=_env(),
                       capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rank 1" in text and "MemoryError" in text and "injected failure" in text, text[-3000:]
    assert "unit" in text


def test_existing_output_without_overwrite_or_resume_is_an_error(tmp_path):
    out = tmp_path / "exists.h5"
    out.write_bytes(b"not a catalog")
    r = subprocess.run([HPCBLEND, "run", "--output", str(out), "--set", "output.overwrite=false",
                        "--set", "input.kind=demo"], env=_env(),
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 2 and "overwrite" in r.stderr
    assert out.read_bytes() == b"not a catalog"  # nothing lost
    r = subprocess.run([HPCBLEND, "run", "--output", str(out), "--resume", "--set", "input.kind=demo"], env=_env(),
                       capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 2 and str(out) in r.stderr  # a file that is not a catalog is reported, never extended
    assert out.read_bytes() == b"not a catalog"


def test_resume_of_a_complete_catalog_is_a_no_op(tmp_path):
    """A requeued job may resume any number of times: a finished catalog is left as it is."""
    out = tmp_path / "done.h5"
    args = [HPCBLEND, "run", "--output", str(out), "--set", "input.kind=demo", "--set", "run.progress=false"]
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    before = out.read_bytes()
    r = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True, timeout=180,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "already complete" in r.stderr
    assert out.read_bytes() == before
