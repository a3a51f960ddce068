"""The main job on the 164 real HSC COSMOS blends (one rank): the sprint's acceptance numbers."""

import numpy as np

from hpcblend.io.catalog import read_table
from hpcblend.config import job_from_dict
from hpcblend.parallel.driver import run_job


def test_all_real_hsc_blends(shared_data, tmp_path):
    job = job_from_dict({"input": {"paths": [str(shared_data / "hsc_blends" / "set*" / "*.npz")],
                                   "bands": ["g", "r", "i", "z", "y"]},
                         "output": {"path": str(tmp_path / "hsc.h5")}, "run": {"progress": False}},
                        base_dir=str(tmp_path))
    out = run_job(job, progress=False)
    b = read_table(out, "blends")
    s = read_table(out, "sources")
    assert len(b) == 164
    assert len(s) == 853 == int(b["n_peaks"].sum())
    assert not b["flag_failed"].any(), b["error_message"][b["flag_failed"]]
    assert np.median(b["chi2_per_pixel"]) <= 1.01
    assert np.all(b["converged"] | b["flag_not_converged"])
    for band in "grizy":
        assert np.all(np.isfinite(s[f"flux_{band}"]))
        assert np.all(s[f"flux_model_{band}"] >= 0)
