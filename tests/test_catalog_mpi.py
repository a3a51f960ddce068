"""MPI tests of hpcblend.io.catalog; run with

    mpirun --oversubscribe -n 2 .venv/bin/python -m pytest --with-mpi tests/test_catalog_mpi.py

Without ``--with-mpi`` pytest-mpi skips them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest

from hpcblend.io.catalog import CatalogWriter, TableSpec, open_catalog, read_ledger, read_table
from hpcblend.errors import CatalogError

DTYPE = np.dtype(
    [
        ("id", "<i8"),
        ("bbox", "<i8", (4,)),
        ("flux", "<f8", (3,)),
        ("converged", "?"),
        ("error_message", "S256"),
    ]
)
CHILD = np.dtype([("id", "<i8"), ("parent_id", "<i8"), ("x", "<f8")])


def specs() -> list[TableSpec]:
    return [
        TableSpec("sources", DTYPE, {"bbox": "pix", "flux": "nJy"}),
        TableSpec("children", CHILD, {"x": "pix"}),
    ]


def rows(ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    a = np.zeros(len(ids), DTYPE)
    a["id"] = ids
    a["bbox"] = ids[:, None] + np.arange(4)
    a["flux"] = ids[:, None] * np.array([1.0, 2.0, 3.0])
    a["converged"] = ids % 2 == 1
    a["error_message"] = [f"row {i}".encode() for i in ids]
    return a


def child_rows(parent_ids) -> np.ndarray:
    return np.array([(p * 100 + k, p, p + k / 4) for p in parent_ids for k in range(3)], dtype=CHILD)


def sort(a):
    return a[np.argsort(a["id"], kind="stable")]


# per round, per rank: parent ids (rank 1 writes nothing in round 1; uneven sizes)
PLAN = [
    {0: [50, 3, 17], 1: []},
    {0: [8], 1: [99, 1, 42, 7, 23]},
    {0: [], 1: [2]},
    {0: [60, 61], 1: [0, 12, 13]},
]
ALL_IDS = [i for rnd in PLAN for r in (0, 1) for i in rnd[r]]


@pytest.fixture
def shared_dir():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    d = tempfile.mkdtemp(prefix="hpcblend_mpi_") if comm.rank == 0 else None
    d = comm.bcast(d, root=0)
    yield d
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def write_plan(path, comm, writer, plan=PLAN, rank_map=None):
    """Write PLAN; ``rank_map`` maps a plan rank to the rank that really writes its rows."""
    rank_map = rank_map or {0: 0, 1: 1}
    inv = {v: k for k, v in rank_map.items()}
    w = CatalogWriter(path, comm, specs(), writer=writer, json_groups={"config": {"n": 1}})
    for i, rnd in enumerate(plan):
        mine = rnd.get(inv.get(comm.rank), [])
        units = [f"unit-{i}-{j}" for j in mine]
        w.write_round({"sources": rows(mine), "children": child_rows(mine)}, units)
    kind = w.writer_kind
    w.finalize()
    return kind


@pytest.mark.mpi(min_size=2)
def test_uneven_rounds_sorted_on_every_rank(shared_dir):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = os.path.join(shared_dir, "cat.h5")
    write_plan(path, comm, "auto")
    got = read_table(path, "sources")
    np.testing.assert_array_equal(got, sort(rows(ALL_IDS)))
    np.testing.assert_array_equal(read_table(path, "children"), sort(child_rows(ALL_IDS)))
    units, counts = read_ledger(path)
    assert units == {f"unit-{i}-{j}" for i, rnd in enumerate(PLAN) for r in (0, 1) for j in rnd[r]}
    assert counts == {"sources": len(ALL_IDS), "children": 3 * len(ALL_IDS)}
    with open_catalog(path) as f:
        assert f.attrs["complete"]
        assert f["ledger"].attrs["rounds"] == len(PLAN)
    # every rank sees the same bytes
    views = comm.allgather(got.tobytes())
    assert all(v == views[0] for v in views)


@pytest.mark.mpi(min_size=2)
def test_auto_picks_mpio():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    d = comm.bcast(tempfile.mkdtemp(prefix="hpcblend_mpi_") if comm.rank == 0 else None)
    w = CatalogWriter(os.path.join(d, "a.h5"), comm, specs())
    expected = "mpio" if h5py.get_config().mpi else "serial"
    assert w.writer_kind == expected
    w.close()
    if comm.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.mpi(min_size=2)
def test_serial_and_mpio_identical(shared_dir):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if not h5py.get_config().mpi:
        pytest.skip("h5py built without MPI")
    p_mpio = os.path.join(shared_dir, "mpio.h5")
    p_serial = os.path.join(shared_dir, "serial.h5")
    p_swapped = os.path.join(shared_dir, "swapped.h5")
    assert write_plan(p_mpio, comm, "mpio") == "mpio"
    assert write_plan(p_serial, comm, "serial") == "serial"
    # same rows, but written by the other rank: data must not change
    assert write_plan(p_swapped, comm, "mpio", rank_map={0: 1, 1: 0}) == "mpio"
    # one rank alone (the serial reference of a one-process run)
    p_one = os.path.join(shared_dir, "one.h5")
    if comm.rank == 0:
        flat = [{0: [i for r in (0, 1) for i in rnd[r]]} for rnd in PLAN]
        write_plan(p_one, MPI.COMM_SELF, "auto", plan=flat)
    comm.Barrier()
    for table in ("sources", "children"):
        ref = read_table(p_one, table)
        for p in (p_mpio, p_serial, p_swapped):
            got = read_table(p, table)
            assert got.dtype == ref.dtype
            assert got.tobytes() == ref.tobytes(), (p, table)
    with h5py.File(p_mpio, "r") as a, h5py.File(p_serial, "r") as b:
        assert a["sources"].chunks == b["sources"].chunks
        assert dict(a["sources"].attrs).keys() == dict(b["sources"].attrs).keys()
        assert a.attrs["writer"] == "mpio" and b.attrs["writer"] == "serial"


@pytest.mark.mpi(min_size=2)
def test_resume_under_mpi(shared_dir):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = os.path.join(shared_dir, "resume.h5")
    w = CatalogWriter(path, comm, specs())
    mine = [10, 11] if comm.rank == 0 else [12]
    w.write_round({"sources": rows(mine)}, [f"u{i}" for i in mine])
    w.close()
    if comm.rank == 0:  # a half-written round
        with h5py.File(path, "r+") as f:
            f["sources"].resize((6,))
            f["sources"][3:6] = rows([900, 901, 902])
    comm.Barrier()
    w = CatalogWriter(path, comm, specs(), resume=True)
    assert w.finished_units() == {"u10", "u11", "u12"}
    assert w.committed_rows()["sources"] == 3
    w.write_round({"sources": rows([5] if comm.rank == 1 else [])}, ["u5"] if comm.rank == 1 else [])
    w.finalize()
    np.testing.assert_array_equal(read_table(path, "sources"), sort(rows([10, 11, 12, 5])))
    with pytest.raises(CatalogError, match="complete"):
        CatalogWriter(path, comm, specs(), resume=True)


@pytest.mark.mpi(min_size=2)
def test_bad_rows_on_one_rank_raise_everywhere(shared_dir):
    """An error on one rank is raised on all ranks (no deadlock), nothing is written."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = os.path.join(shared_dir, "bad.h5")
    with CatalogWriter(path, comm, specs()) as w:
        bad = np.zeros(1, [("nope", "i8")]) if comm.rank == 1 else rows([1])
        with pytest.raises(CatalogError, match="rank"):
            w.write_round({"sources": bad}, [])
        assert w.rounds == 0
        w.write_round({"sources": rows([comm.rank])}, [])
    assert read_ledger(path)[1]["sources"] == comm.size


@pytest.mark.mpi(min_size=2)
def test_provenance_split_hashing(shared_dir):
    import hashlib
    import json

    from mpi4py import MPI

    from hpcblend.diagnostics.provenance import collect_provenance

    comm = MPI.COMM_WORLD
    paths = [os.path.join(shared_dir, f"in{i}.bin") for i in range(5)]
    if comm.rank == 0:
        for i, p in enumerate(paths[:4]):
            with open(p, "wb") as fh:
                fh.write(bytes([i]) * (1000 * (i + 1)))
    comm.Barrier()
    prov = collect_provenance(comm, paths)
    assert prov["n_ranks"] == comm.size
    assert sum(prov["ranks_per_host"].values()) == comm.size
    for i, entry in enumerate(prov["input_files"][:4]):
        assert entry["sha256"] == hashlib.sha256(bytes([i]) * (1000 * (i + 1))).hexdigest()
    assert prov["input_files"][4]["sha256"].startswith("unreadable: ")
    texts = comm.allgather(json.dumps(prov, sort_keys=True))
    assert all(t == texts[0] for t in texts)
