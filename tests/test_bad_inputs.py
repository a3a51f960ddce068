"""Bad blend files become flagged rows naming the file; every other blend still lands."""

import os

import numpy as np

from hpcblend.io.catalog import read_table
from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job
from hpcblend.io.blends import write_blend
from hpcblend.simulate.synthetic import make_synthetic_blend


def _write_good(d, i):
    blend, _ = make_synthetic_blend(seed=i, n_sources=2, blend_id=i)
    return write_blend(os.path.join(d, f"{i}.npz"), blend), blend


def test_bad_blends_are_flagged_and_others_land(tmp_path):
    d = str(tmp_path / "in")
    os.makedirs(d)
    for i in (1, 2):
        _write_good(d, i)
    # 3: missing key (no variance)
    _, b = _write_good(d, 3)
    arrs = dict(np.load(os.path.join(d, "3.npz")))
    arrs.pop("variance")
    np.savez(os.path.join(d, "3.npz"), **arrs)
    # 4: NaN image inside the footprint
    _, b = _write_good(d, 4)
    b.images[2, b.peaks[0, 0], b.peaks[0, 1]] = np.nan
    write_blend(os.path.join(d, "4.npz"), b)
    # 5: band-count mismatch (4 bands)
    _, b = _write_good(d, 5)
    arrs = dict(np.load(os.path.join(d, "5.npz")))
    for k in ("images", "variance", "mask", "psfs"):
        arrs[k] = arrs[k][:4]
    arrs["filters"] = arrs["filters"][:4]
    np.savez(os.path.join(d, "5.npz"), **arrs)
    # 6: zero variance in every band (one zero-variance band is fitted on the others: test_faults_blends.py)
    _, b = _write_good(d, 6)
    b.variance[:] = 0
    write_blend(os.path.join(d, "6.npz"), b)
    # 7: truncated file
    p, _ = _write_good(d, 7)
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[: len(raw) // 2])
    job = job_from_dict({"input": {"paths": [d], "bands": ["g", "r", "i", "z", "y"]},
                         "output": {"path": str(tmp_path / "out.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    out = run_job(job, progress=False)
    rows = read_table(out, "blends")
    assert len(rows) == 7
    by_id = {int(r["id"]): r for r in rows}
    for i in (1, 2):
        assert not by_id[i]["flag_failed"], by_id[i]["error_message"]
        assert np.isfinite(by_id[i]["chi2_per_pixel"])
    for i in (3, 4, 5, 6, 7):
        r = by_id[i]
        assert r["flag_failed"], i
        msg = r["error_message"].decode()
        assert f"{i}.npz" in msg, msg
        assert r["error_type"].decode().endswith("Error")
    assert "variance" in by_id[3]["error_message"].decode()
    src = read_table(out, "sources")
    good = np.isin(src["parent_id"], [1, 2])
    assert good.sum() == 4 and np.all(np.isfinite(src["flux_r"][good]))
