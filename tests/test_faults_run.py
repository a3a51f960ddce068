"""The fault matrix of a run: environment errors, concurrent writers, damaged catalogs, lost ranks.

The failure policy (README, "Failure policy") in tests: an unusable output, a full disk or a second
writer stops the job on every rank with one line and a non-zero exit, never a hang (each MPI case runs
under a timeout); a damaged catalog is refused with one line; a programming error is never turned into
a row; a failed unit is retried by ``--resume``; a rank killed mid-run or mid-write loses nothing.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hpcblend.io.catalog import CatalogWriter, TableSpec, read_table, verify_catalog
from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job
from hpcblend.parallel.markers import inflight_units
from hpcblend.parallel.signals import StopOnSignal
from hpcblend.errors import BlendDataError, CatalogError, InputError
from hpcblend.io.blends import write_blend
from hpcblend.units.blends import blend_file_ids
from hpcblend.units.rows import MAX_CHILD_PEAKS, child_id
from hpcblend.simulate.synthetic import make_synthetic_blend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, "bin", "hpcblend-mpirun")
HPCBLEND = os.path.join(ROOT, ".venv", "bin", "hpcblend")
BANDS = ["g", "r", "i", "z", "y"]

needs_mpirun = pytest.mark.skipif(shutil.which("mpirun") is None and not os.environ.get("CI"),
                                  reason="mpirun not installed (CI installs it through setup.sh)")


def _env(**extra):
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", NUMBA_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", **extra)
    return env


def _error_lines(text):
    return [line for line in text.splitlines() if line.startswith("hpcblend: error:")]


def _write_blends(d, ids, n_sources=2):
    os.makedirs(d, exist_ok=True)
    paths = []
    for i in ids:
        blend, _ = make_synthetic_blend(seed=int(i) % 1000, n_sources=n_sources, blend_id=int(i))
        paths.append(write_blend(os.path.join(d, f"{i}.npz"), blend))
    return paths


def _job(tmp_path, inputs, out="out.h5", **run):
    run_cfg = {"progress": False, "schedule": "file", **run}
    return job_from_dict({"input": {"paths": list(inputs), "bands": BANDS},
                          "output": {"path": str(tmp_path / out)}, "run": run_cfg}, base_dir=str(tmp_path))


def _demo_args(out, *extra):
    return ["run", "--output", str(out), "--set", "input.kind=demo", "--set", "run.progress=false", *extra]


# --------------------------------------------------------------------------- unusable output


def _unusable_outputs(tmp_path):
    directory = tmp_path / "a_directory.h5"
    directory.mkdir()
    a_file = tmp_path / "plain_file"
    a_file.write_text("x")
    return {"proc": "/proc/hpcblend_test/x.h5", "directory": str(directory), "under_a_file": str(a_file / "x.h5")}


@needs_mpirun
@pytest.mark.parametrize("case", ["proc", "directory", "under_a_file"])
def test_unusable_output_two_ranks_stops_fast_with_one_line_per_rank(tmp_path, case):
    out = _unusable_outputs(tmp_path)[case]
    t0 = time.monotonic()
    r = subprocess.run([WRAPPER, "-n", "2", *_demo_args(out)], env=_env(), capture_output=True, text=True,
                       timeout=120, cwd=str(tmp_path))
    elapsed = time.monotonic() - t0
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-2000:]
    assert elapsed < 30, f"took {elapsed:.0f} s"
    lines = _error_lines(text)
    assert len(lines) == 2, text[-3000:]  # one line per rank
    assert "output unusable" in lines[0] and out in lines[0], lines
    assert "Traceback" not in text


@pytest.mark.parametrize("case", ["proc", "directory", "under_a_file"])
def test_unusable_output_one_process_one_line_no_traceback(tmp_path, case):
    out = _unusable_outputs(tmp_path)[case]
    r = subprocess.run([HPCBLEND, *_demo_args(out)], env=_env(), capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(_error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]


# --------------------------------------------------------------------------- one writer per catalog


@needs_mpirun
def test_second_run_on_the_same_catalog_is_refused_on_every_rank(tmp_path, shared_data):
    files = sorted(glob.glob(os.path.join(shared_data, "hsc_blends", "set*", "*.npz")))[:40]
    job = tmp_path / "job.yaml"
    job.write_text("input:\n  kind: blends\n  paths:\n" + "".join(f"    - {f}\n" for f in files)
                   + "run:\n  progress: false\n")
    out = tmp_path / "shared.h5"
    slow = ("import sys, time, hpcblend.units.blends as p\n"
            "orig = p.BlendsSource.process\n"
            "def slow(*a, **kw):\n"
            "    time.sleep(0.4)  # the first run holds the catalog for >= 8 s\n"
            "    return orig(*a, **kw)\n"
            "p.BlendsSource.process = slow\n"
            "from hpcblend.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    first = subprocess.Popen(["mpirun", "--oversubscribe", "-q", "-n", "2", sys.executable, "-c", slow, "run",
                              str(job), "--output", str(out)], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = str(out) + ".log/writer.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(lock) and os.path.getsize(lock) > 0):
        assert first.poll() is None, first.communicate()[0][-2000:]
        time.sleep(0.05)
    second = subprocess.run([WRAPPER, "-n", "2", "run", str(job), "--output", str(out)], env=_env(),
                            capture_output=True, text=True, timeout=120)
    text, _ = first.communicate(timeout=300)
    assert first.returncode == 0, text[-3000:]
    assert second.returncode == 2, second.stdout + second.stderr
    lines = _error_lines(second.stderr)
    assert len(lines) == 2 and all("another run is writing this catalog" in line for line in lines), second.stderr
    blends = read_table(str(out), "blends")
    assert len(blends) == len(files) and len(np.unique(blends["id"])) == len(files)
    assert len(read_table(str(out), "sources")) == int(blends["n_peaks"].sum())


def test_writer_lock_is_released_when_the_run_ends(tmp_path):
    paths = _write_blends(str(tmp_path / "in"), [1, 2])
    job = _job(tmp_path, paths)
    run_job(job, progress=False)
    run_job(job, progress=False)  # the same output again: the lock of the first run is gone


# --------------------------------------------------------------------------- disk full


def _tmpfs(tmp_path, size="200k"):
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {r.stderr.decode()[:200]}")
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return d


def _umount(d):
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.mark.parametrize("ranks", [1, 2])
def test_disk_full_stops_with_one_line_no_segfault(tmp_path, ranks):
    if ranks == 2 and shutil.which("mpirun") is None:
        pytest.fail("mpirun missing")
    d = _tmpfs(tmp_path)
    try:
        cmd = [HPCBLEND] if ranks == 1 else [WRAPPER, "-n", "2"]
        r = subprocess.run(cmd + _demo_args(d / "full.h5"), env=_env(HPCBLEND_IO_AGREE_TIMEOUT="20"),
                           capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    finally:
        _umount(d)
    text = r.stdout + r.stderr
    assert r.returncode == 2, f"exit {r.returncode}:\n{text[-3000:]}"  # not 139 (segfault), not a hang
    lines = _error_lines(text)
    assert len(lines) == ranks, text[-3000:]
    assert "no space left on device" in lines[0].lower(), lines
    assert "Traceback" not in text and "Segmentation" not in text


# --------------------------------------------------------------------------- damaged catalogs


def _spec():
    return TableSpec("blends", np.dtype([("id", "<i8"), ("source_file", "S64"), ("flux", "<f8")]))


def _rows(ids, name="f"):
    rows = np.zeros(len(ids), dtype=_spec().dtype)
    rows["id"] = ids
    rows["flux"] = np.asarray(ids, dtype=float) * 1.5
    rows["source_file"] = [f"{name}{i}.npz".encode() for i in ids]
    return rows


def _flip_byte_in_rows(path, table="blends", row=1):
    with h5py.File(path, "r") as f:
        dset = f[table]
        offset = dset.id.get_chunk_info(0).byte_offset + row * dset.dtype.itemsize + 2
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_damaged_incomplete_catalog_is_refused_on_resume(tmp_path):
    path = str(tmp_path / "c.h5")
    w = CatalogWriter(path, None, [_spec()])
    w.write_round({"blends": _rows([3, 1, 2])}, ["a", "b"])
    w.write_round({"blends": _rows([5, 4])}, ["c"])
    w.close()
    CatalogWriter(path, None, [_spec()], resume=True).close()  # intact: resumes
    _flip_byte_in_rows(path, row=1)
    with pytest.raises(CatalogError, match="catalog damaged.*rows 0..2"):
        CatalogWriter(path, None, [_spec()], resume=True)
    with pytest.raises(CatalogError, match="catalog damaged"):
        read_table(path, "blends")


def test_damaged_complete_catalog_fails_every_reader_with_one_line(tmp_path):
    paths = _write_blends(str(tmp_path / "in"), [1, 2, 3])
    out = run_job(_job(tmp_path, paths), progress=False)
    assert verify_catalog(out)["blends"] == 3
    _flip_byte_in_rows(out, row=2)
    with pytest.raises(CatalogError, match="catalog damaged"):
        verify_catalog(out)
    r = subprocess.run([HPCBLEND, "summary", out], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(_error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr, r.stderr


def test_damaged_ledger_is_refused_on_resume(tmp_path):
    path = str(tmp_path / "c.h5")
    w = CatalogWriter(path, None, [_spec()])
    w.write_round({"blends": _rows([1])}, ["unit-a", "unit-b"])
    w.close()
    with h5py.File(path, "r+") as f:
        keys = f["ledger/units"][:2]
        keys[0] = b"unit-x"
        f["ledger/units"][:2] = keys
    with pytest.raises(CatalogError, match="catalog damaged.*ledger/units"):
        CatalogWriter(path, None, [_spec()], resume=True)


# --------------------------------------------------------------------------- ids


def test_duplicate_ids_are_refused_at_finalize_naming_both_sources(tmp_path):
    path = str(tmp_path / "c.h5")
    w = CatalogWriter(path, None, [_spec()])
    w.write_round({"blends": np.concatenate([_rows([1, 2], "a/"), _rows([2], "b/")])}, ["u"])
    with pytest.raises(CatalogError, match=r"id 2 occurs more than once.*a/2\.npz.*b/2\.npz"):
        w.finalize(unique=["blends"])


def test_ids_derive_from_the_file_not_the_running_number(tmp_path):
    d = tmp_path / "in"
    paths = _write_blends(str(d / "set1"), [4, 7]) + _write_blends(str(d / "set2"), [7])
    named = str(d / "set1" / "galaxy.npz")
    shutil.copy(paths[0], named)
    bad = str(d / "set1" / "12.npz")
    with open(bad, "wb") as fh:
        fh.write(b"truncated")
    inputs = sorted(paths + [named, bad])
    keys = [os.path.relpath(p, str(tmp_path)) for p in inputs]
    ids = dict(zip(inputs, blend_file_ids(inputs, keys)))
    assert ids[paths[0]] == 4 and ids[bad] == 12  # integer stems, even unreadable ones, keep their id
    assert ids[paths[1]] != 7 and ids[paths[2]] != 7 and ids[paths[1]] != ids[paths[2]]  # same stem, two folders
    assert ids[named] >= 1 << 61  # a name that is no id: a hash of the path, never a running number
    out = run_job(_job(tmp_path, [str(d / "set1"), str(d / "set2")]), progress=False)
    blends = read_table(out, "blends")
    assert sorted(blends["id"]) == sorted(ids.values())
    row = blends[blends["id"] == 12][0]
    assert row["flag_failed"] and b"12.npz" in row["error_message"]
    assert len(np.unique(read_table(out, "sources")["id"])) == len(read_table(out, "sources"))
    # the same file in another collection keeps its hashed id: it depends on the path alone
    assert blend_file_ids([named], [os.path.relpath(named, str(tmp_path))])[0] == ids[named]


def test_child_id_range_is_checked():
    assert child_id(0, MAX_CHILD_PEAKS) == (1 << 16) | (MAX_CHILD_PEAKS + 1)
    with pytest.raises(BlendDataError, match="16 bits"):
        child_id(0, MAX_CHILD_PEAKS + 1)
    with pytest.raises(BlendDataError):
        child_id(-1, 0)


# --------------------------------------------------------------------------- programming errors, failed units


def test_programming_error_is_never_a_row(tmp_path, monkeypatch):
    import hpcblend.units.blends as pipeline

    paths = _write_blends(str(tmp_path / "in"), [1, 2])

    def broken(blend, cfg, sampler=None):
        raise TypeError("injected bug")

    monkeypatch.setattr(pipeline, "deblend_blend", broken)
    job = _job(tmp_path, paths)
    with pytest.raises(TypeError, match="injected bug"):
        run_job(job, progress=False)
    out = str(tmp_path / "out.h5")
    with h5py.File(out, "r") as f:
        assert not f.attrs["complete"]
    assert any(rec.get("unit") for rec in inflight_units(out).values())  # the unit is left unfinished
    assert "TypeError: injected bug" in open(out + ".log/rank_0.error").read()


def test_data_error_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    import hpcblend.units.blends as pipeline

    paths = _write_blends(str(tmp_path / "in"), [1, 2])
    real = pipeline.deblend_blend

    def fails_on_2(blend, cfg, sampler=None):
        if blend.id == 2:
            raise BlendDataError(f"{blend.source}: key 'images': injected bad data")
        return real(blend, cfg, sampler=sampler)

    monkeypatch.setattr(pipeline, "deblend_blend", fails_on_2)
    out = run_job(_job(tmp_path, paths), progress=False)
    rows = {int(r["id"]): r for r in read_table(out, "blends")}
    assert not rows[1]["flag_failed"] and rows[2]["flag_failed"]
    assert rows[2]["error_type"] == b"BlendDataError" and b"2.npz" in rows[2]["error_message"]


class _StopAfter(StopOnSignal):
    """A stop signal that arrives after ``n`` looks at the flag (the work loop looks once per unit)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    @property
    def requested(self):
        self.n -= 1
        return self.n < 0

    @requested.setter
    def requested(self, value):
        pass


@pytest.mark.parametrize("retry", [True, False])
def test_failed_unit_is_retried_by_resume(tmp_path, retry):
    d = str(tmp_path / "in")
    paths = _write_blends(d, [1, 2, 3, 4])
    good = open(paths[0], "rb").read()
    with open(paths[0], "wb") as fh:  # a transient read error: the file is unreadable for the first run
        fh.write(good[:100])
    job = _job(tmp_path, paths, write_every_units=1)
    from hpcblend.parallel.driver import RunInterrupted

    with pytest.raises(RunInterrupted):
        run_job(job, progress=False, stop_signal=_StopAfter(2))
    first = read_table(str(tmp_path / "out.h5"), "blends")
    assert 1 in first["id"] and first[first["id"] == 1][0]["flag_failed"]
    with open(paths[0], "wb") as fh:
        fh.write(good)
    out = run_job(job, progress=False, resume=True, retry_failed=retry)
    blends = read_table(out, "blends")
    assert sorted(blends["id"]) == [1, 2, 3, 4]  # one row per blend: the failed attempt's row is gone
    assert bool(blends[blends["id"] == 1][0]["flag_failed"]) is (not retry)
    src = read_table(out, "sources")
    assert len(np.unique(src["id"])) == len(src) == int(blends["n_peaks"].sum())


# --------------------------------------------------------------------------- lost ranks, signals


_KILL_IN_WRITE = """
import os, signal, sys
from mpi4py import MPI
import hpcblend.io.catalog as c
victim, n = int(sys.argv[1]), {"rounds": 0}
orig = c.CatalogWriter._commit_ledger
def commit(self, *a, **kw):
    n["rounds"] += 1
    if n["rounds"] == 2 and MPI.COMM_WORLD.rank == victim:
        os.kill(os.getpid(), signal.SIGKILL)   # rows of round 2 written, its ledger entry not
    return orig(self, *a, **kw)
c.CatalogWriter._commit_ledger = commit
from hpcblend.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _compare(a_path, b_path):
    for table in ("blends", "sources"):
        a, b = read_table(a_path, table), read_table(b_path, table)
        assert len(a) == len(b) and len(np.unique(a["id"])) == len(a), table
        for name in a.dtype.names:
            if name.startswith("t_") or name == "rank":
                continue
            assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), f"{table}.{name}"


@needs_mpirun
@pytest.mark.parametrize("victim", [0, 1])
def test_rank_killed_mid_write_then_resume_gives_identical_catalog(tmp_path, victim):
    out = tmp_path / "killed.h5"
    args = _demo_args(out, "--set", "run.write_every_units=2", "--set", "input.n_demo_blends=8")
    r = subprocess.run(["mpirun", "--oversubscribe", "-q", "-n", "2", sys.executable, "-c", _KILL_IN_WRITE,
                        str(victim), *args], env=_env(), capture_output=True, text=True, timeout=240,
                       cwd=str(tmp_path))
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    with h5py.File(out, "r") as f:
        assert int(f["ledger"].attrs["rounds"]) == 1 and not f.attrs["complete"]
    r = subprocess.run([WRAPPER, "-n", "2", *args, "--resume"], env=_env(), capture_output=True, text=True,
                       timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ref = tmp_path / "ref.h5"
    r = subprocess.run([HPCBLEND, *_demo_args(ref, "--set", "input.n_demo_blends=8")], env=_env(),
                       capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    _compare(str(out), str(ref))


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    d = str(tmp_path / "in")
    _write_blends(d, range(1, 121), n_sources=3)
    # Ctrl-C as in a terminal: a shell without job control starts background jobs with SIGINT ignored,
    # and a process that inherits that rightly ignores Ctrl-C
    proc = subprocess.Popen([HPCBLEND, "run", "--input", d, "--output", str(tmp_path / "c.h5"), "--set",
                             "run.progress=false"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(tmp_path),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(str(tmp_path / "c.h5")):
        time.sleep(0.05)
    time.sleep(0.1)  # in the work loop (120 units take ~1 s); a Ctrl-C later still exits 130 (main's handler)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted (Ctrl-C)" in err and "--resume" in err and "Traceback" not in err, err[-2000:]


def test_command_line_paths_are_relative_to_the_current_directory(tmp_path):
    d = tmp_path / "here"
    _write_blends(str(d), [5])
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "job.yaml").write_text("input:\n  kind: blends\n  paths: [nowhere]\nrun:\n  progress: false\n")
    r = subprocess.run([HPCBLEND, "run", "jobs/job.yaml", "--input", "here/5.npz", "--output", "out/c.h5"],
                       env=_env(), capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(read_table(str(tmp_path / "out" / "c.h5"), "blends")["id"]) == [5]


def test_missing_input_is_one_line(tmp_path):
    r = subprocess.run([HPCBLEND, "run", "--input", "no_such_dir/*.npz", "--output", "c.h5"], env=_env(),
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 2 and len(_error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr, r.stderr


def test_stale_lock_file_of_a_killed_run_does_not_block_resume(tmp_path):
    paths = _write_blends(str(tmp_path / "in"), [1, 2])
    job = _job(tmp_path, paths)
    os.makedirs(str(tmp_path / "out.h5.log"))
    with open(str(tmp_path / "out.h5.log" / "writer.lock"), "w") as fh:
        fh.write("pid 99999 on host gone since yesterday\n")  # left by a kill -9: no process holds the lock
    out = run_job(job, progress=False)
    assert len(read_table(out, "blends")) == 2


def test_input_error_at_planning_is_agreed(tmp_path):
    job = _job(tmp_path, [str(tmp_path / "missing")])
    with pytest.raises(InputError):
        run_job(job, progress=False)
