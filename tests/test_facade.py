"""The package facade a notebook user starts from: load a job, run it, read a catalog, deblend one blend."""

import os
import subprocess
import sys

import numpy as np

import hpcblend
from hpcblend.io.blends import write_blend
from hpcblend.simulate.synthetic import make_synthetic_blend


def test_import_is_cheap():
    """``import hpcblend`` loads neither numpy nor Numba (the CLI sets thread counts before they load)."""
    code = "import sys, hpcblend; print('numpy' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_load_run_read_deblend(tmp_path):
    blend, truth = make_synthetic_blend(seed=4, n_sources=2, blend_id=4)
    path = write_blend(str(tmp_path / "4.npz"), blend)
    job = hpcblend.load_job(None, [f"input.kind=blends", f"input.paths=[{str(tmp_path)!r}]", "run.progress=false"])
    out = hpcblend.run(job, output=str(tmp_path / "c.h5"))
    sources = hpcblend.read_catalog(out, "sources")
    assert len(sources) == 2 and str(sources["x"].unit) == "pix" and str(sources["flux_r"].unit) == "ct"
    result = hpcblend.deblend_one(path, job.deblend)  # the run's settings: the same fluxes
    assert result.children["flux_model"].shape == (2, 5)
    np.testing.assert_allclose(np.sort(result.children["flux_model"][:, 1]), np.sort(sources["flux_model_r"]),
                               rtol=1e-6)
    assert os.path.exists(out)
