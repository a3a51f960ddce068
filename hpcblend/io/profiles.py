"""The ``/profile`` groups of a catalog (per-rank call-stack samples and stage timers) and collapsed-stack text files.

:func:`write_profiles` appends the dicts of
:meth:`hpcblend.diagnostics.sampler.StackSampler.results` (one per rank) to a
closed catalog, :func:`read_profiles` reads them back (refusing a ``/profile``
of a version this hpcblend does not read), :func:`write_collapsed` and
:func:`read_collapsed` write and read the classic collapsed-stack text format
(``frame;frame;frame count``, read by ``flamegraph.pl`` and speedscope).

HDF5 layout written by :func:`write_profiles` (``PROFILE_VERSION`` 1, :mod:`hpcblend.io.versions`)::

    /profile                     group, attrs: profile_version, n_ranks
    /profile/rank_<r>            group, attrs: rank, host, pid, rate_hz,
                                 n_samples, n_missed, elapsed_s,
                                 achieved_rate_hz, overhead_cpu_s,
                                 overhead_fraction, lines (str), json (all of the
                                 dict but the stacks, as JSON)
    /profile/rank_<r>/stacks     vlen UTF-8 str (n_stacks,): collapsed stacks
    /profile/rank_<r>/counts     int64 (n_stacks,): samples per stack
    /profile/rank_<r>/stages     compound (n_stages,): name S32, seconds f8,
                                 samples i8, calls i8
    /profile/rank_<r>/blends     compound (n,): id i8, samples i8, seconds f8
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from hpcblend.diagnostics.stages import OTHER_STAGE, STAGES
from hpcblend.errors import CatalogError
from hpcblend.io.catalog_read import append_group
from hpcblend.io.json_values import json_default
from hpcblend.io.versions import PROFILE_VERSION, check_version

__all__ = [
    "PROFILE_VERSION",
    "write_profiles",
    "read_profiles",
    "write_collapsed",
    "read_collapsed",
]

_STAGE_DTYPE = np.dtype([("name", "S32"), ("seconds", "f8"), ("samples", "i8"), ("calls", "i8")])
_BLEND_DTYPE = np.dtype([("id", "i8"), ("samples", "i8"), ("seconds", "f8")])


def _profile_rank(profile: Mapping[str, Any], position: int) -> int:
    r = profile.get("rank")
    return int(position if r is None else r)


def write_profiles(path: str | os.PathLike, profiles: Sequence[Mapping[str, Any]]) -> list:
    """Append per-rank profiles to an existing, closed HDF5 catalog as ``/profile/rank_<r>``.

    Serial (call on one rank, after the catalog is finalised and closed).

    Parameters
    ----------
    path : str or os.PathLike
        The catalog (any HDF5 file with a ``schema_version`` root attribute).
    profiles : list of dict
        :meth:`StackSampler.results` dicts, e.g. ``comm.gather(...)`` on rank
        0. ``None`` entries (a rank without a sampler) are skipped. A
        profile's ``rank`` key names its group; when it is ``None`` the
        position in the list is used. An existing group of that rank is
        replaced.

    Returns
    -------
    list of str
        HDF5 paths of the groups written.

    Raises
    ------
    hpcblend.errors.CatalogError
        If the file does not exist, is not an hpcblend catalog, two profiles
        name the same rank, or it cannot be written.
    """
    path = os.fspath(path)
    items = [(_profile_rank(p, i), p) for i, p in enumerate(profiles) if p is not None]
    ranks = [r for r, _ in items]
    if len(set(ranks)) != len(ranks):
        raise CatalogError(f"{path}: profiles name the same rank twice: {sorted(ranks)}")
    written = []
    with append_group(path, "profile", "profile_version", PROFILE_VERSION) as grp:
        for r, p in items:
            name = f"rank_{r}"
            if name in grp:
                del grp[name]
            g = grp.create_group(name)
            _write_one(g, r, p)
            written.append(g.name)
        grp.attrs["n_ranks"] = np.int64(sum(1 for k in grp if k.startswith("rank_")))
    return written


def _write_one(g: Any, rank: int, p: Mapping[str, Any]) -> None:
    """One rank's profile into its group ``g`` (layout in the module docstring)."""
    stacks = dict(p.get("stacks") or {})
    lines = sorted(stacks)
    str_dt = h5py.string_dtype("utf-8")
    g.create_dataset("stacks", data=np.array(lines, dtype=object), dtype=str_dt,
                     compression="gzip" if lines else None)
    g.create_dataset("counts", data=np.array([stacks[k] for k in lines], dtype=np.int64))
    secs = p.get("stage_seconds") or {}
    samples = p.get("stage_samples") or {}
    calls = p.get("stage_calls") or {}
    names = sorted(set(secs) | set(samples) | set(calls), key=_stage_order)
    st = np.zeros(len(names), dtype=_STAGE_DTYPE)
    for i, n in enumerate(names):
        st[i] = (n.encode()[:32], float(secs.get(n, 0.0)), int(samples.get(n, 0)), int(calls.get(n, 0)))
    g.create_dataset("stages", data=st)
    bsam = {int(k): int(v) for k, v in (p.get("blend_samples") or {}).items()}
    bsec = {int(k): float(v) for k, v in (p.get("blend_seconds") or {}).items()}
    ids = sorted(set(bsam) | set(bsec))
    bl = np.zeros(len(ids), dtype=_BLEND_DTYPE)
    for i, b in enumerate(ids):
        bl[i] = (b, bsam.get(b, -1), bsec.get(b, np.nan))
    g.create_dataset("blends", data=bl)
    meta = {k: v for k, v in p.items() if k not in ("stacks", "blend_samples", "blend_seconds")}
    meta["rank"] = rank
    for key in ("rate_hz", "elapsed_s", "achieved_rate_hz", "overhead_cpu_s", "overhead_fraction"):
        g.attrs[key] = float(meta.get(key) or 0.0)
    for key in ("n_samples", "n_missed", "pid"):
        g.attrs[key] = np.int64(meta.get(key) or 0)
    g.attrs["rank"] = np.int64(rank)
    g.attrs["host"] = str(meta.get("host") or "")
    g.attrs["lines"] = str(meta.get("lines") or "none")
    g.attrs["json"] = json.dumps(meta, sort_keys=True, default=json_default)


def _stage_order(name: str) -> tuple:
    order = STAGES + (OTHER_STAGE,)
    return (order.index(name) if name in order else len(order), name)


def read_profiles(path: str | os.PathLike) -> list:
    """Read the per-rank profiles of a catalog, sorted by rank.

    Parameters
    ----------
    path : str or os.PathLike
        Catalog written by :func:`write_profiles` (or an open ``h5py.File``).

    Returns
    -------
    list of dict
        The dicts :meth:`StackSampler.results` made (``stacks``,
        ``stage_seconds``, ``stage_samples``, ``stage_calls``,
        ``blend_samples``, ``blend_seconds``, ``rank``, ``rate_hz``,
        ``n_samples``, ``elapsed_s``, ``overhead_cpu_s``, ...); ``[]`` when
        the file has no ``/profile``.

    Raises
    ------
    hpcblend.errors.CatalogError
        If the file cannot be read or ``/profile`` is of a newer version
        (:class:`~hpcblend.errors.SchemaVersionError`, naming the version).
    """
    if isinstance(path, (h5py.File, h5py.Group)):
        return _read_profiles_file(path.file)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CatalogError(f"{path}: no such catalog")
    try:
        with h5py.File(path, "r") as f:
            return _read_profiles_file(f)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read /profile: {exc}") from exc


def _read_profiles_file(f: Any) -> list:
    """The profiles of an open file (see :func:`read_profiles`)."""
    if "profile" not in f:
        return []
    grp = f["profile"]
    check_version("profile", grp.attrs.get("profile_version"), f.filename, "/profile")
    out = []
    for name in grp:
        if not name.startswith("rank_"):
            continue
        g = grp[name]
        p = json.loads(_to_str(g.attrs["json"])) if "json" in g.attrs else {}
        lines = [_to_str(s) for s in g["stacks"][()]]
        counts = g["counts"][()]
        p["stacks"] = {s: int(c) for s, c in zip(lines, counts)}
        st = g["stages"][()]
        p["stage_seconds"] = {_to_str(r["name"]): float(r["seconds"]) for r in st}
        p["stage_samples"] = {_to_str(r["name"]): int(r["samples"]) for r in st if r["samples"]}
        p["stage_calls"] = {_to_str(r["name"]): int(r["calls"]) for r in st if r["calls"]}
        bl = g["blends"][()]
        p["blend_samples"] = {int(r["id"]): int(r["samples"]) for r in bl if r["samples"] >= 0}
        p["blend_seconds"] = {int(r["id"]): float(r["seconds"]) for r in bl if np.isfinite(r["seconds"])}
        p["rank"] = int(g.attrs.get("rank", p.get("rank") or 0))
        out.append(p)
    out.sort(key=lambda p: p["rank"])
    return out


def _to_str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def write_collapsed(path_txt: str | os.PathLike, stacks: Mapping[str, int]) -> str:
    """Write collapsed stacks as text: one ``frame;frame;frame count`` line per stack, sorted.

    Parameters
    ----------
    path_txt : str or os.PathLike
    stacks : dict of str -> int

    Returns
    -------
    str
        The path written.
    """
    path_txt = os.fspath(path_txt)
    with open(path_txt, "w", encoding="utf-8") as fh:
        for line in sorted(stacks):
            n = int(stacks[line])
            if n > 0:
                fh.write(f"{line} {n}\n")
    return path_txt


def read_collapsed(path_txt: str | os.PathLike) -> dict:
    """Read a collapsed-stack text file (``frame;...;frame count`` lines; repeated stacks add up).

    Parameters
    ----------
    path_txt : str or os.PathLike

    Returns
    -------
    dict of str -> int

    Raises
    ------
    ValueError
        On a line whose last field is not an integer count.
    """
    out: dict = {}
    with open(path_txt, encoding="utf-8") as fh:
        for i, raw in enumerate(fh, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                raise ValueError(f"{path_txt}:{i}: expected 'stack count', got {line[:80]!r}") from None
            out[stack] = out.get(stack, 0) + n
    return out

