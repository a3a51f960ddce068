"""Run report: plots, failure gallery, flame graph and summary numbers from a run catalog.

Public API
----------
:func:`make_report`
    ``make_report(catalog, out_dir, compare=None) -> path of index.html``.
:func:`report_main`
    The ``hpcblend report`` command (argparse inside).
:func:`fit_power_law`
    ``t ≈ c · n_peaks^a · area^b`` in log space, with standard errors and R².
:func:`gallery_record`, :func:`gallery_record_from_result`, :func:`write_gallery`, :func:`read_gallery`
    Per-blend image records under ``/gallery/<id>`` (written by the driver).
:class:`GalleryCollector`
    Per-rank, bounded keeper of failed / flagged / slowest records during a run.
:func:`select_gallery_blends`, :func:`records_from_inputs`
    Which blends to keep (failed, flagged, slowest), and records rebuilt
    from a finished catalog's input files.

Figure builders (each returns a matplotlib Figure that holds the plotted
values) are in :mod:`hpcblend.report.figures`; the numbers in
:mod:`hpcblend.report.data`.
"""

from hpcblend.report.build import SECTION_IDS, make_report, report_main
from hpcblend.report.data import RunData, compare_numbers, load_run, run_numbers, scaling_mask
from hpcblend.report.fit import binned_medians, fit_power_law
from hpcblend.report.gallery import (GALLERY_VERSION, GalleryCollector, gallery_ids, gallery_record, gallery_record_from_result, read_gallery,
                      records_from_inputs, select_gallery_blends, write_gallery)

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
    "GALLERY_VERSION",
    "gallery_record",
    "gallery_record_from_result",
    "write_gallery",
    "read_gallery",
    "gallery_ids",
    "GalleryCollector",
    "select_gallery_blends",
    "records_from_inputs",
]
