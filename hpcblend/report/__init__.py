"""Run report: plots, failure gallery, flame graph and summary numbers from a run catalog.

Public API
----------
:func:`make_report`
    ``make_report(catalog, out_dir, compare=None) -> path of index.html``.
:func:`report_main`
    The ``hpcblend report`` command (argparse inside).
:func:`fit_power_law`
    ``t ≈ c · n_peaks^a · area^b`` in log space, with standard errors and R².
:func:`select_gallery_blends`
    Which stored gallery records to show (worst failed, flagged, slowest).

Gallery records are made during a run (:mod:`hpcblend.diagnostics.gallery`)
and stored in the catalog (:mod:`hpcblend.io.gallery`); the report never
re-runs the deblender, and says so when a catalog has no ``/gallery``.

Figure builders (each returns a matplotlib Figure that holds the plotted
values) are in :mod:`hpcblend.report.figures`; the numbers in
:mod:`hpcblend.report.data`.
"""

from hpcblend.report.build import SECTION_IDS, make_report, report_main
from hpcblend.report.data import RunData, compare_numbers, load_run, run_numbers, scaling_mask
from hpcblend.report.fit import binned_medians, fit_power_law
from hpcblend.report.gallery import select_gallery_blends

__all__ = [
    "SECTION_IDS",
    "make_report",
    "report_main",
    "RunData",
    "load_run",
    "run_numbers",
    "compare_numbers",
    "scaling_mask",
    "fit_power_law",
    "binned_medians",
    "select_gallery_blends",
]
