"""What a work unit is and where units come from: :class:`WorkUnit`, the :class:`WorkSource` interface and its registry.

A work source is everything the MPI driver (:mod:`hpcblend.parallel.driver`) needs to know about one
kind of input (``input.kind`` of the job): how to list the units with their expected cost (rank 0),
the catalog's bands and tables, the input files recorded in the provenance, the kernels to compile
before timing, how one unit becomes catalog rows, and whether those rows say the unit failed. The
driver knows only this interface; ``hpcblend.units.blends`` implements it for npz blend collections,
``hpcblend.units.tract`` for coadd tracts cut into patches, and ``hpcblend.simulate.sources`` for the
kinds whose inputs are simulated first (a :meth:`WorkSource.prepare` step on rank 0).

Adding a kind (e.g. a patch list exported from an LSST Butler) is one new module with a subclass of
:class:`WorkSource`, one entry in :data:`SOURCES` (or a :func:`register_source` call) and the kind among
the choices of ``input.kind`` in :mod:`hpcblend.config`.
"""

from __future__ import annotations

import abc
import importlib
import os
from dataclasses import dataclass, field

from hpcblend.config import JobConfig
from hpcblend.errors import ConfigError, InputError
from hpcblend.units.costmodel import load_cost_model

__all__ = ["WorkUnit", "WorkSource", "SOURCES", "SIMULATED_SOURCES", "register_source", "source_class",
           "make_source", "plan_units"]


@dataclass(frozen=True)
class WorkUnit:
    """One schedulable piece of work.

    Attributes
    ----------
    index : int
        Position in the run's sorted unit list; ids of rows derive from it, so
        they do not depend on which rank ran the unit.
    key : str
        Ledger key (path relative to the job's base directory, or ``tract T patch Y,X``).
    path : str
        File (or directory) the unit reads.
    cost : float
        Expected cost (arbitrary units; the cost model's prediction in seconds
        for blend files, by default), used only for ordering.
    kind : str
        ``"blend"`` (an npz blend file) or ``"patch"`` (a patch of a tract;
        ``info["patch"]`` is its :class:`hpcblend.skymap.PatchInfo`).
    info : dict
        What the cheap look at the unit found (n_peaks, footprint_area, ...).
    """

    index: int
    key: str
    path: str
    cost: float
    kind: str = "blend"
    info: dict = field(default_factory=dict, compare=False)

    @property
    def where(self) -> str:
        """What a post-mortem names the unit by: the absolute path of a blend file, else the key."""
        return os.path.abspath(self.path) if self.kind == "blend" else self.key


class WorkSource(abc.ABC):
    """The units of one job and how each becomes catalog rows: the one interface the driver knows.

    Every rank makes the source from the job (cheap: no file is touched);
    rank 0 alone calls :meth:`prepare`, :meth:`plan`, :meth:`catalog_bands`
    and :meth:`input_files`, and broadcasts what they return; every rank calls
    :meth:`tables`, :meth:`warm_up`, :meth:`process` and :meth:`unit_failed`.

    Parameters
    ----------
    job : JobConfig

    Attributes
    ----------
    unique_id_tables : tuple of str
        Tables whose ``id`` must be unique in a finished catalog.
    unit_id_name : str
        What :meth:`unit_id` is, in the catalog's words (for messages).
    """

    unique_id_tables: tuple = ("blends", "sources")
    unit_id_name: str = "unit id"

    def __init__(self, job: JobConfig):
        self.job = job

    def prepare(self) -> None:
        """Rank 0, before :meth:`plan`: make the inputs the job describes but that do not exist yet.

        Nothing by default; the sources of :mod:`hpcblend.simulate.sources` simulate their inputs here.
        """

    @abc.abstractmethod
    def plan(self) -> list:
        """All work units of the job, in index order, with their expected cost (rank 0).

        Returns
        -------
        list of WorkUnit

        Raises
        ------
        InputError
            No inputs match, or an input cannot be looked at.
        """

    @abc.abstractmethod
    def catalog_bands(self, units) -> tuple:
        """The catalog's bands when the job does not list them (``input.bands`` is None; rank 0)."""

    @abc.abstractmethod
    def tables(self, bands) -> list:
        """The catalog's table specs (:class:`hpcblend.io.catalog.TableSpec`), in writing order."""

    @abc.abstractmethod
    def input_files(self, units) -> list:
        """Files whose checksums go into the provenance (and that :mod:`hpcblend.analysis.reproduce` checks)."""

    @abc.abstractmethod
    def warm_up(self, bands, units) -> float:
        """Compile or load the kernels the units will call, so the first unit's times are steady-state.

        Returns
        -------
        float
            Seconds taken (the rank's cold start).
        """

    @abc.abstractmethod
    def process(self, unit: WorkUnit, bands, rank: int = 0, sampler=None, gallery=None) -> dict:
        """Process one unit into catalog rows.

        Parameters
        ----------
        unit : WorkUnit
        bands : tuple of str
        rank : int
            MPI rank, recorded in the rows.
        sampler : hpcblend.diagnostics.sampler.StackSampler, optional
            Stage tags (load, detect, init, fit, measure) for the call-stack sampler.
        gallery : hpcblend.diagnostics.gallery.GalleryCollector, optional
            Offered every deblended blend (image records of failed, flagged, slow ones).

        Returns
        -------
        dict of str -> ndarray
            Rows per catalog table (names of :meth:`tables`).

        Raises
        ------
        Exception
            A programming error (:func:`hpcblend.errors.is_programming_error`)
            is never turned into rows; a data error is.
        """

    @abc.abstractmethod
    def unit_failed(self, rows: dict) -> bool:
        """Whether a unit's rows (:meth:`process`) say the unit failed as a whole (``--resume`` retries it)."""

    def unit_id(self, unit: WorkUnit) -> int:
        """The id the catalog knows the unit by (:attr:`unit_id_name`); default ``index + 1``."""
        return unit.index + 1

    def job_path(self, path: str) -> str:
        """``path`` taken relative to the job's base directory (the job file's directory) unless absolute."""
        return path if os.path.isabs(path) else os.path.join(self.job.base_dir, path)

    def cost_model(self):
        """The runtime model used to order units (``run.cost_model``, or the default model).

        Raises
        ------
        InputError
            The model file cannot be read.
        """
        path = self.job.run.cost_model
        if path:
            path = self.job_path(path)
        try:
            return load_cost_model(path or None)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: key 'run.cost_model': cannot read the cost model: {exc}") from None


#: ``input.kind`` -> ``"module:Class"`` of its :class:`WorkSource`. Classes are named by dotted path and
#: imported (:mod:`importlib`) only when a job asks for them, so that the run path (``hpcblend.parallel``,
#: ``hpcblend.units``) never imports ``hpcblend.simulate`` statically: a demo job reaches its simulated
#: inputs through the class named here, a real job never loads them.
SOURCES = {
    "blends": "hpcblend.units.blends:BlendsSource",
    "demo": "hpcblend.simulate.sources:DemoBlendsSource",
    "tract": "hpcblend.units.tract:TractSource",
}

#: ``input.kind`` -> the source used instead when ``input.simulate.enabled`` (simulates the inputs first).
SIMULATED_SOURCES = {
    "tract": "hpcblend.simulate.sources:SimulatedTractSource",
}


def register_source(kind: str, target, simulated: bool = False) -> None:
    """Register the :class:`WorkSource` of an ``input.kind``.

    Parameters
    ----------
    kind : str
    target : str or type
        ``"package.module:Class"`` (imported when a job of that kind runs) or the class itself.
    simulated : bool
        Register the source used when ``input.simulate.enabled`` (:data:`SIMULATED_SOURCES`).
    """
    (SIMULATED_SOURCES if simulated else SOURCES)[kind] = target


def _resolve(kind: str, target) -> type:
    """The class a registry entry names.

    Raises
    ------
    ConfigError
        The entry names a module that does not exist, or a name the module lacks. (An import error
        *inside* an existing module, e.g. a missing dependency, is not a configuration error: it propagates.)
    """
    if isinstance(target, type):
        return target
    module, _, name = str(target).partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
            raise
        raise ConfigError(f"key 'input.kind': the source of kind {kind!r} ({target}) cannot be loaded: "
                          f"no module {exc.name!r}") from None
    except AttributeError:
        raise ConfigError(f"key 'input.kind': the source of kind {kind!r} ({target}) cannot be loaded: "
                          f"{module} has no {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, WorkSource)):
        raise ConfigError(f"key 'input.kind': {target} (the source of kind {kind!r}) is not a WorkSource")
    return cls


def source_class(job: JobConfig) -> type:
    """The :class:`WorkSource` subclass of the job's ``input.kind`` (the simulating one if ``input.simulate.enabled``).

    Raises
    ------
    ConfigError
        No source is registered for ``input.kind``, or its class cannot be imported.
    """
    kind = job.input.kind
    if job.input.simulate.enabled and kind in SIMULATED_SOURCES:
        return _resolve(kind, SIMULATED_SOURCES[kind])
    if kind not in SOURCES:
        raise ConfigError(f"key 'input.kind': unknown input kind {kind!r} (known: {', '.join(sorted(SOURCES))})")
    return _resolve(kind, SOURCES[kind])


def make_source(job: JobConfig) -> WorkSource:
    """The work source of a job (see :func:`source_class`)."""
    return source_class(job)(job)


def plan_units(job: JobConfig) -> list:
    """All work units of a job, in index order: its source's :meth:`~WorkSource.prepare`, then :meth:`~WorkSource.plan`.

    Raises
    ------
    ConfigError
        Unknown ``input.kind``.
    InputError
        No inputs match, or an input cannot be looked at.
    """
    source = make_source(job)
    source.prepare()
    return source.plan()
