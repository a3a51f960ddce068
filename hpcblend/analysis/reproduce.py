"""Recreate one unit's rows from what a catalog recorded, and say whether they are identical.

``hpcblend reproduce CATALOG UNIT_ID [--allow-changes]`` reads the job as run (``/config``), the
inputs with their SHA-256 and the software versions (``/provenance``), plans the job's units again,
picks the unit — a blend file by its parent id (``/blends.id``) or a patch by its ``/patches.id`` —
checks that its input files and the software are those recorded, re-runs it on one process and
compares every row it makes with the catalog's rows of that unit (timings and ``rank`` aside).

A changed input file or a changed version (numpy, numba, hpcblend's source commit, ...) is named
and, without ``--allow-changes``, nothing is re-run: the rows would not be a reproduction. Exit code
0 identical, 1 different (or changed inputs/software), 2 the catalog or unit cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from hpcblend.config import job_from_dict
from hpcblend.diagnostics.provenance import sha256_file, software_versions
from hpcblend.errors import HpcblendError, InputError
from hpcblend.io.catalog import read_bands, read_json_group, read_table
from hpcblend.units.source import make_source

__all__ = ["ReproduceReport", "reproduce_unit", "table_differences", "reproduce_main"]

#: Columns that differ between runs by nature: timings and the rank that ran the unit.
_VOLATILE_PREFIXES = ("t_", "rank")


def table_differences(old: np.ndarray, new: np.ndarray, key: str = "id") -> list:
    """Differences between two sets of rows of one table, timings and rank aside.

    Parameters
    ----------
    old, new : ndarray, structured
        Rows; compared after sorting both by ``key`` (and by all bytes for ties).
    key : str

    Returns
    -------
    list of str
        Empty when identical; else one line per difference (row counts, ids, each differing column
        with how many rows differ). NaN equals NaN.
    """
    if len(old) != len(new):
        return [f"{len(old)} rows recorded, {len(new)} made"]

    def ordered(a):
        return a[np.lexsort((np.ascontiguousarray(a).view(f"V{a.dtype.itemsize}"), a[key]))] if len(a) else a

    old, new = ordered(old), ordered(new)
    if not np.array_equal(old[key], new[key]):
        return [f"{key}s differ: {len(np.setdiff1d(old[key], new[key]))} recorded only, "
                f"{len(np.setdiff1d(new[key], old[key]))} made only"]
    out = []
    for col in old.dtype.names:
        if col.startswith(_VOLATILE_PREFIXES) or col not in new.dtype.names:
            continue
        a, b = old[col], new[col]
        if not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            same = (a == b) | ((a != a) & (b != b)) if a.dtype.kind in "fc" else (a == b)
            n = int(np.count_nonzero(~same.reshape(len(a), -1).all(axis=1)))
            out.append(f"column {col!r}: {n} of {len(a)} rows differ")
    return out


@dataclass
class ReproduceReport:
    """What :func:`reproduce_unit` found.

    Attributes
    ----------
    unit : str
        The unit's key (a blend file's path relative to the job, or ``tract T patch Y,X``).
    changed_inputs : list of str
        Input files whose SHA-256 (or presence) differs from the recorded one.
    changed_software : list of str
        ``name: recorded -> now`` for each differing version.
    differences : dict of str -> list of str
        Per table, :func:`table_differences` (empty lists when identical).
    rerun : bool
        Whether the unit was run again (not when inputs or software changed, unless allowed).
    """

    unit: str
    changed_inputs: list = field(default_factory=list)
    changed_software: list = field(default_factory=list)
    differences: dict = field(default_factory=dict)
    rerun: bool = False

    @property
    def identical(self) -> bool:
        """True when the unit was re-run with the recorded inputs and software and every row matched."""
        return (self.rerun and not self.changed_inputs and not self.changed_software
                and not any(self.differences.values()))


def _recorded_job(catalog: str):
    config = read_json_group(catalog, "config")
    base_dir = config.pop("base_dir", None) or os.path.dirname(os.path.abspath(catalog))
    return job_from_dict(config, source=f"{catalog}:/config", base_dir=base_dir)


def _find_unit(catalog: str, source, unit_id: int):
    """The unit of the job (planned again by its work source) that the catalog knows by ``unit_id``."""
    source.prepare()
    units = source.plan()
    match = [u for u in units if source.unit_id(u) == unit_id]
    if not match:
        raise InputError(f"{catalog}: no unit with {source.unit_id_name} {unit_id} among the job's {len(units)} units")
    return match[0]


def _changed_inputs(prov: dict, files: list) -> list:
    recorded = {os.path.abspath(e["path"]): e.get("sha256") for e in prov.get("input_files", [])}
    out = []
    for path in files:
        want = recorded.get(os.path.abspath(path))
        if want is None:
            out.append(f"{path}: not among the recorded inputs")
            continue
        try:
            now = sha256_file(path)
        except OSError as exc:
            out.append(f"{path}: cannot be read now ({exc.strerror})")
            continue
        if now != want:
            out.append(f"{path}: SHA-256 {now[:12]}... differs from the recorded {str(want)[:12]}...")
    return out


def _changed_software(prov: dict) -> list:
    recorded = prov.get("versions", {})
    now = software_versions()
    return [f"{name}: {recorded.get(name, 'not recorded')} -> {now[name]}" for name in now
            if name != "mpi_library" and recorded.get(name) != now[name]]


def _recorded_rows(catalog: str, unit, made: dict) -> dict:
    """The catalog's rows of the tables ``made`` has, restricted to the unit."""
    if unit.kind == "patch":
        patch = unit.info["patch"]
        child_ids = made["sources"]["id"]

        def select(name, table):
            if name == "patches":
                return table["id"] == unit.index + 1
            if name in ("blends", "sources"):
                return (table["patch"] == patch.flat) & (table["tract"] == patch.tract)
            return np.isin(table["id"], child_ids)  # /models, /model_pixels: rows of the unit's children
    else:
        def select(name, table):
            return table["id" if name == "blends" else "parent_id"] == unit.info["blend_id"]
    out = {}
    for name in made:
        table = read_table(catalog, name)
        out[name] = table[select(name, table)]
    return out


def reproduce_unit(catalog: str, unit_id: int, allow_changes: bool = False) -> ReproduceReport:
    """Re-run one unit of a finished catalog and compare its rows with the recorded ones.

    Parameters
    ----------
    catalog : str
        A catalog written by ``hpcblend run`` (with ``/config`` and ``/provenance``).
    unit_id : int
        ``/blends.id`` of a blend file (blend-collection runs) or ``/patches.id`` (tract runs).
    allow_changes : bool
        Re-run even when an input file or the software changed (the report still names them).

    Returns
    -------
    ReproduceReport

    Raises
    ------
    hpcblend.errors.CatalogError
        The catalog cannot be read or lacks ``/config`` or ``/provenance``.
    hpcblend.errors.InputError
        No unit has that id, or the job's inputs cannot be planned.
    hpcblend.errors.ConfigError
        The recorded ``input.kind`` has no work source.
    """
    job = _recorded_job(catalog)
    source = make_source(job)
    prov = read_json_group(catalog, "provenance")
    unit = _find_unit(catalog, source, int(unit_id))
    report = ReproduceReport(unit=unit.key, changed_inputs=_changed_inputs(prov, source.input_files([unit])),
                             changed_software=_changed_software(prov))
    if (report.changed_inputs or report.changed_software) and not allow_changes:
        return report
    made = source.process(unit, read_bands(catalog), rank=0)
    recorded = _recorded_rows(catalog, unit, made)
    report.differences = {name: table_differences(recorded[name], made[name]) for name in recorded}
    report.rerun = True
    return report


def reproduce_main(argv=None) -> int:
    """``hpcblend reproduce CATALOG UNIT_ID [--allow-changes]``; see the module docstring for exit codes."""
    p = argparse.ArgumentParser(prog="hpcblend reproduce", description=__doc__.splitlines()[0])
    p.add_argument("catalog")
    p.add_argument("unit_id", type=int, help="/blends.id of a blend file, or /patches.id of a patch")
    p.add_argument("--allow-changes", action="store_true",
                   help="re-run even when an input file or the software differs from the recorded ones")
    args = p.parse_args(argv)
    try:
        report = reproduce_unit(args.catalog, args.unit_id, allow_changes=args.allow_changes)
    except HpcblendError as exc:
        print(f"hpcblend reproduce: error: {exc}", file=sys.stderr)
        return 2
    print(f"unit {report.unit} of {args.catalog}")
    for line in report.changed_inputs:
        print(f"  changed input: {line}")
    for line in report.changed_software:
        print(f"  changed software: {line}")
    if not report.rerun:
        print("not re-run: the inputs or the software differ from the recorded ones (--allow-changes to re-run)")
        return 1
    for name, diffs in report.differences.items():
        print(f"  {name}: " + ("identical" if not diffs else "; ".join(diffs)))
    print("IDENTICAL" if report.identical else "DIFFERENT")
    return 0 if report.identical else 1
