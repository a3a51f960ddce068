"""Serial tests of hpcblend.io.catalog and hpcblend.diagnostics.provenance (one process, COMM_SELF)."""

from __future__ import annotations

import hashlib
import json
import warnings

import h5py
import numpy as np
import pytest
from mpi4py import MPI

import hpcblend.io.catalog as catalog
from hpcblend.io.catalog import (
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    CatalogWriter,
    TableSpec,
    open_catalog,
    read_json_group,
    read_ledger,
    read_table,
)
from hpcblend.errors import CatalogError, SchemaVersionError
from hpcblend.diagnostics.provenance import collect_provenance

COMM = MPI.COMM_SELF

PARENT_DTYPE = np.dtype(
    [
        ("id", "<i8"),
        ("n_peaks", "<i4"),
        ("bbox", "<i8", (4,)),
        ("runtime", "<f8"),
        ("converged", "?"),
        ("error_type", "S64"),
        ("error_message", "S256"),
    ]
)
CHILD_DTYPE = np.dtype([("id", "<i8"), ("parent_id", "<i8"), ("x", "<f8"), ("y", "<f8"), ("flux_r", "<f4")])
PARENT_UNITS = {"runtime": "s", "bbox": "pix"}
CHILD_UNITS = {"x": "pix", "y": "pix", "flux_r": "nJy"}


def specs() -> list[TableSpec]:
    return [
        TableSpec("sources", PARENT_DTYPE, PARENT_UNITS),
        TableSpec("children", CHILD_DTYPE, CHILD_UNITS, sort_key="id"),
    ]


def parents(ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    a = np.zeros(len(ids), PARENT_DTYPE)
    a["id"] = ids
    a["n_peaks"] = ids % 7 + 1
    a["bbox"] = np.stack([ids, ids + 1, ids + 10, ids + 20], axis=1)
    a["runtime"] = ids * 0.25
    a["converged"] = ids % 2 == 0
    a["error_type"] = [b"" if i % 3 else b"NumericalFailure" for i in ids]
    a["error_message"] = [f"blend {i}: message \u00e9".encode() for i in ids]
    return a


def children(parent_ids) -> np.ndarray:
    rows = []
    for p in parent_ids:
        for k in range(2):
            rows.append((p * 10 + k, p, p + 0.5 * k, p - 0.5 * k, np.float32(p * 1.5 + k)))
    return np.array(rows, dtype=CHILD_DTYPE)


def expected(ids, maker) -> np.ndarray:
    a = maker(ids)
    return a[np.argsort(a["id"], kind="stable")]


# ------------------------------------------------------------------ round trip


def test_round_trip_two_tables(tmp_path):
    path = tmp_path / "cat.h5"
    cfg = {"deblend": {"max_iter": 200, "e_rel": 1e-3}, "name": "job", "bands": ["g", "r"]}
    with CatalogWriter(
        path, COMM, specs(), attrs={"run_name": "test"}, json_groups={"config": cfg}
    ) as w:
        assert w.writer_kind == "serial"
        w.write_round({"sources": parents([5, 2]), "children": children([5, 2])}, ["unit-a"])
        w.write_round({"sources": parents([9])}, ["unit-b", "unit-c"])
        assert w.finished_units() == {"unit-a", "unit-b", "unit-c"}
        assert w.committed_rows() == {"sources": 3, "children": 4}
    # closed without finalize: rows in write order, incomplete
    got = read_table(path, "sources")
    np.testing.assert_array_equal(got, parents([5, 2, 9]))
    assert got.dtype == PARENT_DTYPE
    np.testing.assert_array_equal(read_table(path, "children"), children([5, 2]))
    with open_catalog(path) as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION
        assert not f.attrs["complete"]
        assert f.attrs["run_name"] == "test"
        assert "created" in f.attrs
        assert f["sources"].maxshape == (None,)
        assert f["sources"].chunks is not None
        assert f["sources"].compression is None
        assert json.loads(f.attrs["tables"]) == ["sources", "children"]
        assert f["config"].attrs["name"] == "job"
        assert f["config"].attrs["deblend.max_iter"] == 200
    assert read_json_group(path, "config") == cfg
    units, counts = read_ledger(path)
    assert units == {"unit-a", "unit-b", "unit-c"}
    assert counts == {"sources": 3, "children": 4}


def test_units_attributes(tmp_path):
    path = tmp_path / "cat.h5"
    CatalogWriter(path, COMM, specs()).finalize()
    with h5py.File(path, "r") as f:
        d = f["sources"]
        units = json.loads(d.attrs["units"])
        assert units == {c: PARENT_UNITS.get(c, "") for c in PARENT_DTYPE.names}
        assert d.attrs["unit_runtime"] == "s"
        assert d.attrs["unit_bbox"] == "pix"
        assert d.attrs["unit_id"] == ""
        assert d.attrs["sort_key"] == "id"
        assert json.loads(f["children"].attrs["units"])["flux_r"] == "nJy"


def test_rounds_then_finalize_sorted(tmp_path):
    path = tmp_path / "cat.h5"
    w = CatalogWriter(path, COMM, specs())
    w.write_round({"sources": parents([30, 10]), "children": children([30, 10])}, ["u1"])
    w.write_round({"sources": parents([]), "children": children([])}, [])  # empty round
    w.write_round({"sources": parents([20, 5, 40])}, ["u2"])
    w.write_round({"children": children([40, 5, 20])}, ["u3"])
    w.finalize()
    np.testing.assert_array_equal(read_table(path, "sources"), expected([30, 10, 20, 5, 40], parents))
    np.testing.assert_array_equal(read_table(path, "children"), expected([30, 10, 40, 5, 20], children))
    with open_catalog(path) as f:
        assert f.attrs["complete"]
        assert "finished" in f.attrs
        assert f[catalog._LEDGER].attrs["rounds"] == 4
        assert f["sources"].shape == (5,)
    with pytest.raises(CatalogError, match="closed"):
        w.write_round({}, [])


def test_finalize_ties_deterministic(tmp_path):
    """Duplicate sort keys: the result does not depend on the order rows were written."""
    rows = parents([3, 1, 3, 2, 1])
    rows["runtime"] = [5.0, 4.0, 3.0, 2.0, 1.0]
    outs = []
    for i, order in enumerate(([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3])):
        path = tmp_path / f"c{i}.h5"
        w = CatalogWriter(path, COMM, specs()[:1])
        w.write_round({"sources": rows[order[:2]]}, [])
        w.write_round({"sources": rows[order[2:]]}, [])
        w.finalize()
        outs.append(read_table(path, "sources"))
    assert list(outs[0]["id"]) == [1, 1, 2, 3, 3]
    for o in outs[1:]:
        assert o.tobytes() == outs[0].tobytes()


def test_aligned_and_castable_rows_are_repacked(tmp_path):
    path = tmp_path / "cat.h5"
    aligned = np.dtype([("id", "<i8"), ("flag", "?"), ("x", "<f8")], align=True)
    spec = TableSpec("t", aligned)
    assert spec.dtype.itemsize == 17  # packed
    rows = np.zeros(2, aligned)
    rows["id"] = [2, 1]
    rows["x"] = [0.5, 1.5]
    small = np.zeros(1, [("id", "<i4"), ("flag", "?"), ("x", "<f4")])
    small["id"] = 3
    with CatalogWriter(path, COMM, [spec]) as w:
        w.write_round({"t": rows}, [])
        w.write_round({"t": small}, [])
        w.finalize()
    got = read_table(path, "t")
    assert list(got["id"]) == [1, 2, 3]
    assert list(got["x"]) == [1.5, 0.5, 0.0]


def test_invalid_rows_rejected(tmp_path):
    path = tmp_path / "cat.h5"
    with CatalogWriter(path, COMM, specs()) as w:
        with pytest.raises(CatalogError, match="undeclared"):
            w.write_round({"nope": parents([1])}, [])
        bad = np.zeros(1, [("id", "<f8")])
        with pytest.raises(CatalogError, match="columns"):
            w.write_round({"sources": bad}, [])
        with pytest.raises(CatalogError, match="256 bytes"):
            w.write_round({}, ["x" * 300])
        # nothing was committed by the failed rounds
        assert w.rounds == 0
        w.write_round({"sources": parents([1])}, ["ok"])
    assert read_ledger(path) == ({"ok"}, {"sources": 1, "children": 0})


def test_tablespec_validation():
    with pytest.raises(CatalogError, match="sort_key"):
        TableSpec("t", np.dtype([("a", "i8")]))
    with pytest.raises(CatalogError, match="not allowed"):
        TableSpec("t", np.dtype([("id", "i8"), ("o", "O")]))
    with pytest.raises(CatalogError, match="not allowed"):
        TableSpec("t", np.dtype([("id", "i8"), ("u", "U8")]))
    with pytest.raises(CatalogError, match="unknown column"):
        TableSpec("t", np.dtype([("id", "i8")]), {"x": "pix"})
    with pytest.raises(CatalogError, match="not allowed"):
        TableSpec("ledger", np.dtype([("id", "i8")]))
    with pytest.raises(CatalogError, match="writer"):
        CatalogWriter("/tmp/never.h5", COMM, specs(), writer="fast")


def test_tablespec_concatenate_matches_numpy():
    spec = TableSpec("t", np.dtype([("id", "i8"), ("flux", "f8", (3,)), ("name", "S5"), ("ok", "?")]))
    rng = np.random.default_rng(0)
    parts = []
    for n in (3, 0, 1, 5, 2):
        p = spec.empty(n)
        p["id"] = rng.integers(0, 1000, n)
        p["flux"] = rng.normal(size=(n, 3))
        p["name"] = [b"ab%d" % i for i in range(n)]
        p["ok"] = rng.random(n) > 0.5
        parts.append(p)
    parts.append(parts[3][::2])  # a strided view
    got = spec.concatenate(parts)
    assert got.dtype == spec.dtype and got.tobytes() == np.concatenate(parts).tobytes()
    assert spec.concatenate([]).shape == (0,) and spec.concatenate([]).dtype == spec.dtype
    # rows of another (castable) dtype still come out as the table's
    other = np.zeros(2, dtype=[("id", "i4"), ("flux", "f4", (3,)), ("name", "S5"), ("ok", "?")])
    other["id"] = [7, 8]
    mixed = spec.concatenate([parts[0], other])
    assert mixed.dtype == spec.dtype and list(mixed["id"][-2:]) == [7, 8]


# ------------------------------------------------------------------ astropy


def test_astropy_reads_table(tmp_path):
    from astropy.table import Table

    path = tmp_path / "cat.h5"
    w = CatalogWriter(path, COMM, specs())
    w.write_round({"sources": parents([4, 1, 3]), "children": children([4, 1, 3])}, [])
    w.finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = Table.read(str(path), path="sources")
    assert t.colnames == list(PARENT_DTYPE.names)
    exp = expected([4, 1, 3], parents)
    np.testing.assert_array_equal(t["id"], exp["id"])
    np.testing.assert_array_equal(t["bbox"], exp["bbox"])
    assert t["bbox"].shape == (3, 4)
    np.testing.assert_array_equal(t["error_message"], exp["error_message"])
    assert str(t["runtime"].unit) == "s"
    assert str(t["bbox"].unit) == "pix"
    assert t["id"].unit is None
    c = Table.read(str(path), path="children")
    assert str(c["flux_r"].unit) == "nJy"
    assert c.colnames == list(CHILD_DTYPE.names)


# ------------------------------------------------------------------ bad files


def test_schema_version_too_new_and_too_old(tmp_path):
    path = tmp_path / "cat.h5"
    CatalogWriter(path, COMM, specs()).close()
    for version, word in ((SCHEMA_VERSION + 1, "newer"), (min(READABLE_SCHEMA_VERSIONS) - 1, "older")):
        with h5py.File(path, "r+") as f:
            f.attrs["schema_version"] = version
        with pytest.raises(SchemaVersionError) as err:
            open_catalog(path)
        msg = str(err.value)
        assert str(path) in msg and word in msg
        assert f"schema_version is {version}" in msg and f"schema_version {READABLE_SCHEMA_VERSIONS[0]}" in msg
        with pytest.raises(SchemaVersionError):
            read_table(path, "sources")
        with pytest.raises(SchemaVersionError):
            CatalogWriter(path, COMM, specs(), resume=True)


def test_version_1_catalog_is_read_but_not_resumed(tmp_path):
    """A catalog of the layout before the ledger's attempts and checksums: readable, refused by --resume."""
    path = tmp_path / "v1.h5"
    w = CatalogWriter(path, COMM, specs())
    w.write_round({"sources": parents([2, 1])}, ["a"])
    w.close()
    with h5py.File(path, "r+") as f:  # make it look like a version-1 file
        f.attrs["schema_version"] = 1
        for name in ("attempts", "checksums"):
            del f["ledger"][name]
    assert sorted(read_table(path, "sources")["id"]) == [1, 2]
    with pytest.raises(SchemaVersionError, match="cannot resume: the catalog has schema_version 1"):
        CatalogWriter(path, COMM, specs(), resume=True)


def test_garbage_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(CatalogError, match=str(garbage)):
        open_catalog(garbage)
    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog(tmp_path / "missing.h5")

    good = tmp_path / "good.h5"
    w = CatalogWriter(good, COMM, specs())
    w.write_round({"sources": parents(np.arange(2000))}, [])
    w.finalize()
    data = good.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CatalogError, match=str(truncated)) as err:
        read_table(truncated, "sources")
    assert not isinstance(err.value, SchemaVersionError)

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CatalogError, match="not an hpcblend catalog"):
        open_catalog(plain)
    with pytest.raises(CatalogError, match="no table 'nope'"):
        read_table(good, "nope")


# ------------------------------------------------------------------ resume


def test_resume_after_half_written_round(tmp_path):
    path = tmp_path / "cat.h5"
    w = CatalogWriter(path, COMM, specs(), json_groups={"config": {"a": 1}})
    w.write_round({"sources": parents([7, 3]), "children": children([7])}, ["u7", "u3"])
    w.close()

    # simulate a crash in the middle of the next round: rows and a unit key
    # written beyond the committed counts, ledger counts not updated
    with h5py.File(path, "r+") as f:
        d = f["sources"]
        d.resize((5,))
        d[2:5] = parents([100, 101, 102])
        u = f["ledger/units"]
        u.resize((3,))
        u[2] = b"u100"
    np.testing.assert_array_equal(read_table(path, "sources"), parents([7, 3]))
    assert read_ledger(path)[0] == {"u7", "u3"}

    w = CatalogWriter(path, COMM, specs(), resume=True)
    assert w.finished_units() == {"u7", "u3"}
    assert w.committed_rows() == {"sources": 2, "children": 2}
    f = w._file  # the open file (serial writer, rank 0): the datasets were truncated
    assert f["sources"].shape == (2,)
    assert f["ledger/units"].shape == (2,)
    w.write_round({"sources": parents([1]), "children": children([3, 1])}, ["u1"])
    w.finalize()
    np.testing.assert_array_equal(read_table(path, "sources"), expected([7, 3, 1], parents))
    np.testing.assert_array_equal(read_table(path, "children"), expected([7, 3, 1], children))
    units, counts = read_ledger(path)
    assert units == {"u7", "u3", "u1"}
    assert counts == {"sources": 3, "children": 6}
    with open_catalog(path) as f:
        assert f.attrs["n_resumes"] == 1
        assert f["ledger"].attrs["rounds"] == 2
    assert read_json_group(path, "config") == {"a": 1}


def test_resume_refuses_complete_or_mismatched(tmp_path):
    done = tmp_path / "done.h5"
    w = CatalogWriter(done, COMM, specs())
    w.write_round({"sources": parents([1])}, ["u"])
    w.finalize()
    with pytest.raises(CatalogError, match=f"{done}.*complete"):
        CatalogWriter(done, COMM, specs(), resume=True)

    part = tmp_path / "part.h5"
    CatalogWriter(part, COMM, specs()).close()
    other = [TableSpec("sources", np.dtype([("id", "<i8"), ("x", "<f4")])), specs()[1]]
    with pytest.raises(CatalogError, match=f"{part}.*dtype"):
        CatalogWriter(part, COMM, other, resume=True)
    with pytest.raises(CatalogError, match="tables differ"):
        CatalogWriter(part, COMM, specs()[:1], resume=True)
    with pytest.raises(CatalogError, match="does not exist"):
        CatalogWriter(tmp_path / "missing.h5", COMM, specs(), resume=True)


def test_large_json_group(tmp_path):
    path = tmp_path / "cat.h5"
    big = {"input_files": [{"path": f"/data/file_{i:06d}.fits", "sha256": "0" * 64} for i in range(2000)]}
    CatalogWriter(path, COMM, specs(), json_groups={"provenance": big}).close()
    assert read_json_group(path, "provenance") == big


def test_comm_world_size_one(tmp_path):
    if MPI.COMM_WORLD.Get_size() != 1:
        pytest.skip("needs a one-rank COMM_WORLD")
    path = tmp_path / "cat.h5"
    w = CatalogWriter(path, MPI.COMM_WORLD, specs())
    assert w.writer_kind == "serial"
    w.write_round({"sources": parents([2, 1])}, ["a"])
    w.finalize()
    np.testing.assert_array_equal(read_table(path, "sources"), expected([2, 1], parents))


@pytest.mark.skipif(not h5py.get_config().mpi, reason="h5py built without MPI")
def test_mpio_writer_one_rank(tmp_path):
    path = tmp_path / "mpio.h5"
    w = CatalogWriter(path, COMM, specs(), writer="mpio")
    assert w.writer_kind == "mpio"
    w.write_round({"sources": parents([8, 6]), "children": children([6])}, ["x"])
    w.write_round({"sources": parents([])}, [])
    w.write_round({"sources": parents([7])}, ["y"])
    w.finalize()
    np.testing.assert_array_equal(read_table(path, "sources"), expected([8, 6, 7], parents))
    np.testing.assert_array_equal(read_table(path, "children"), expected([6], children))
    assert read_ledger(path)[0] == {"x", "y"}


# ------------------------------------------------------------------ provenance


def test_provenance(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"hello world")
    b = tmp_path / "b.bin"
    b.write_bytes(np.arange(100000).tobytes())
    missing = tmp_path / "missing.fits"
    prov = collect_provenance(COMM, [str(a), b, str(missing), str(tmp_path)])
    json.dumps(prov)  # JSON-serialisable
    files = prov["input_files"]
    assert [f["path"] for f in files] == [str(a), str(b), str(missing), str(tmp_path)]
    assert files[0]["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert files[0]["size_bytes"] == 11
    assert files[1]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert files[2]["sha256"].startswith("unreadable: ")
    assert files[3]["sha256"].startswith("unreadable: ")
    v = prov["versions"]
    for key in ("hpcblend", "python", "numpy", "numba", "scipy", "mpi4py", "h5py", "hdf5", "mpi_library"):
        assert isinstance(v[key], str) and v[key]
    assert v["h5py"] == h5py.__version__
    assert v["hdf5"] == h5py.version.hdf5_version
    assert v["numpy"] == np.__version__
    assert prov["h5py_mpi"] == bool(h5py.get_config().mpi)
    assert prov["n_ranks"] == 1
    assert len(prov["hosts"]) == 1 and prov["ranks_per_host"] == {prov["hosts"][0]: 1}
    assert "T" in prov["start_time_utc"]

    path = tmp_path / "cat.h5"
    CatalogWriter(path, COMM, specs(), json_groups={"provenance": prov}).close()
    assert read_json_group(path, "provenance") == prov
    with open_catalog(path) as f:
        assert f["provenance"].attrs["n_ranks"] == 1
        assert f["provenance"].attrs["versions.h5py"] == h5py.__version__
