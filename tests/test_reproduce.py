"""hpcblend reproduce: one unit re-run from a catalog's recorded config and inputs gives identical rows."""

import os
import shutil

import numpy as np
import pytest

from hpcblend.io.catalog import read_table
from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job
from hpcblend.io.blends import write_blend
from hpcblend.analysis.reproduce import reproduce_main, reproduce_unit, table_differences
from hpcblend.simulate.synthetic import make_synthetic_blend


def _blend_run(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in (11, 12, 13):
        blend, _ = make_synthetic_blend(seed=i, n_sources=3, blend_id=i)
        write_blend(str(d / f"{i}.npz"), blend)
    job = job_from_dict({"input": {"paths": [str(d)], "bands": ["g", "r", "i", "z", "y"]},
                         "output": {"path": str(tmp_path / "run.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    return run_job(job, progress=False), d


def test_blend_unit_is_reproduced_identically(tmp_path, capsys):
    out, _ = _blend_run(tmp_path)
    report = reproduce_unit(out, 12)
    assert report.identical, report
    assert set(report.differences) == {"blends", "sources"} and report.unit.endswith("12.npz")
    assert reproduce_main([out, "12"]) == 0
    assert capsys.readouterr().out.strip().endswith("IDENTICAL")


def test_changed_input_is_named_not_used(tmp_path, capsys):
    out, d = _blend_run(tmp_path)
    blend, _ = make_synthetic_blend(seed=99, n_sources=3, blend_id=13)  # same name, other pixels
    write_blend(str(d / "13.npz"), blend)
    assert reproduce_main([out, "13"]) == 1
    text = capsys.readouterr().out
    assert "changed input" in text and "13.npz" in text and "not re-run" in text
    report = reproduce_unit(out, 13, allow_changes=True)  # run anyway: the rows differ, and say where
    assert report.rerun and not report.identical
    assert any("flux" in line for line in report.differences["sources"])
    assert reproduce_unit(out, 12).identical  # the other files are untouched


def test_altered_row_in_the_catalog_is_found(tmp_path):
    out, _ = _blend_run(tmp_path)
    rows = read_table(out, "sources")
    changed = rows.copy()
    changed["flux_r"][0] *= 1.01
    assert table_differences(rows, rows) == []
    assert table_differences(rows, changed) == ["column 'flux_r': 1 of %d rows differ" % len(rows)]
    assert table_differences(rows, rows[:-1])[0].endswith("made")


def test_unknown_unit_is_exit_2(tmp_path, capsys):
    out, _ = _blend_run(tmp_path)
    assert reproduce_main([out, "999"]) == 2
    assert "no unit with /blends.id" in capsys.readouterr().err


def test_patch_unit_is_reproduced_identically(tmp_path_factory, capsys):
    from hpcblend.simulate.tract import simulate_tract

    tmp = tmp_path_factory.mktemp("reproduce")
    tract = tmp / "tract"
    simulate_tract(tract, shape=(500, 500), bands=("g", "r", "i"), density=60.0, star_density=1.0, seed=5)
    job = job_from_dict({"input": {"kind": "tract", "tract_dir": str(tract), "patch_inner_size": 250,
                                   "patch_overlap": 40},
                         "run": {"progress": False, "warmup": False}, "output": {"path": str(tmp / "t.h5")}},
                        base_dir=str(tmp))
    out = run_job(job, progress=False)
    patches = read_table(out, "patches")
    pid = int(patches["id"][np.argmax(patches["n_blends"])])
    report = reproduce_unit(out, pid)
    assert report.identical, report
    assert {"patches", "blends", "sources", "models", "model_pixels"} <= set(report.differences)
    # a changed coadd is named
    coadd = tract / "coadd_r.fits"
    shutil.copy(coadd, tmp / "backup.fits")
    with open(coadd, "ab") as fh:
        fh.write(b"\0" * 2880)
    assert reproduce_main([out, str(pid)]) == 1
    assert "coadd_r.fits" in capsys.readouterr().out
    os.replace(tmp / "backup.fits", coadd)
