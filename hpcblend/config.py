"""Job configuration: a frozen dataclass tree loaded from YAML and validated once.

Every default lives here, documented next to its field; a job file only
overrides. Unknown or mistyped keys are errors that name the key (with a
suggestion), so a typo never silently falls back to a default.

Example job file::

    input:
      paths: ["../shared/data/hsc_blends/set*/*.npz"]
    deblend:
      max_iter: 300
    output:
      path: output/hsc_blends.h5
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

import yaml

from .errors import ConfigError

__all__ = [
    "InputConfig",
    "DeblendConfig",
    "OutputConfig",
    "RunConfig",
    "JobConfig",
    "load_job",
    "job_from_dict",
    "apply_overrides",
    "job_to_dict",
    "default_job",
]


@dataclass(frozen=True)
class InputConfig:
    """What to deblend.

    Attributes
    ----------
    kind : str
        ``"blends"``: a collection of pre-cut npz blends (one work unit each);
        ``"demo"``: synthetic blends written on the fly into ``cache_dir``
        (needs no external data).
    paths : tuple of str
        Files, directories or globs of npz blends; relative paths are taken
        from the job file's directory (or the current directory for
        ``--input`` and the built-in job).
    bands : tuple of str or None
        Band names expected in every blend (e.g. ``[g, r, i, z, y]``); a blend
        with another band count becomes a flagged row. None: taken from the
        first readable blend.
    cache_dir : str
        Where ``kind: demo`` writes its synthetic blends.
    n_demo_blends : int
        Number of synthetic blends for ``kind: demo``.
    """

    kind: str = "blends"
    paths: Tuple[str, ...] = ()
    bands: Optional[Tuple[str, ...]] = None
    cache_dir: str = ".hpcblend_cache/demo_blends"
    n_demo_blends: int = 8


@dataclass(frozen=True)
class DeblendConfig:
    """Settings of the scarlet-style deblender (see DESIGN.md, "Deblender model").

    Attributes
    ----------
    model_psf_sigma : float
        σ of the circular Gaussian model PSF, pixels (scarlet: 0.8).
    psf_regularization : float
        Tikhonov λ of the Fourier-space difference-kernel solution, relative
        to the model PSF's peak power.
    kernel_tolerance : float
        Difference-kernel pixels below this fraction of the kernel's peak
        outside the central square are dropped (sets the FFT padding).
    optimizer : str
        ``"adaprox"`` (proximal AMSGrad, scarlet's default) or ``"fista"``.
    e_rel : float
        Relative loss change that ends the fit.
    min_iter, max_iter : int
        Iteration bounds.
    bg_thresh : float
        Morphologies are thresholded at ``bg_thresh × σ`` of each source's
        optimal band combination (0 disables).
    monotonic, symmetric : bool
        Morphology constraints.
    init_symmetric : bool
        Symmetrise the initial morphologies (scarlet does).
    init_deconvolve : float
        Tikhonov λ of the deconvolution of the detection image by the
        band-weighted difference kernel before the morphologies are cut from it
        (model frame vs observed frame); 0 disables.
    sed_step_factor : float
        Adaprox SED step ``max(sed_step_factor · mean(a_k), σ_b)``.
    morph_step : float
        Adaprox morphology step (peak-normalised units).
    step_scale : float
        FISTA step as a fraction of 1/L, L the Gershgorin row-sum bound of the Hessian (per pixel for
        morphologies, per band for SEDs). The bound is loose, so steps of 2/L still descend: on the 164
        HSC blends 2.0 took 23 % fewer iterations than 1.0 and gave a lower median chi2.
    box_margin : int
        Zero pixels kept around each source's support so its box can grow.
    sed_ridge : float
        Relative Tikhonov term of the initial SED least squares.
    bad_mask_planes : tuple of str
        Mask planes whose pixels get zero weight.
    max_n_peaks : int
        Blends with more peaks are skipped (``flag_skipped_too_many_peaks``).
    max_footprint_area : int
        Blends with a larger footprint (pixels) are skipped (``flag_skipped_too_large``).
    max_area_times_peaks : float
        Blends with ``footprint_area × n_peaks`` above this are skipped
        (``flag_skipped_too_large``).
    """

    model_psf_sigma: float = 0.8
    psf_regularization: float = 1e-5
    kernel_tolerance: float = 1e-4
    optimizer: str = "fista"
    e_rel: float = 1e-3
    min_iter: int = 5
    max_iter: int = 300
    bg_thresh: float = 1.0
    monotonic: bool = True
    symmetric: bool = False
    init_symmetric: bool = True
    init_deconvolve: float = 0.03
    sed_step_factor: float = 1e-2
    morph_step: float = 1e-2
    step_scale: float = 2.0
    box_margin: int = 2
    sed_ridge: float = 1e-6
    bad_mask_planes: Tuple[str, ...] = ("BAD", "SAT", "EDGE", "SUSPECT", "NO_DATA")
    max_n_peaks: int = 600
    max_footprint_area: int = 2_000_000
    max_area_times_peaks: float = 1e9


@dataclass(frozen=True)
class OutputConfig:
    """Where results go.

    Attributes
    ----------
    path : str
        The run's HDF5 catalog (relative to the current directory).
    overwrite : bool
        Replace an existing catalog (otherwise an existing file is an error,
        unless resuming).
    writer : str
        ``"auto"`` (parallel ``mpio`` under MPI when h5py has it, else serial),
        ``"mpio"`` or ``"serial"``.
    """

    path: str = "output/catalog.h5"
    overwrite: bool = True
    writer: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    """How the run is executed (never changes the catalog's rows).

    Attributes
    ----------
    write_every_units : int
        A collective write round starts when any rank holds this many finished units …
    write_every_seconds : float
        … or this many seconds after the previous round.
    schedule : str
        ``"cost"``: largest expected cost (n_peaks × footprint area) first;
        ``"file"``: input order.
    numba_threads : int
        Numba threads per rank (``NUMBA_NUM_THREADS``).
    progress : bool
        Progress bar on rank 0.
    log_level : str
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    warmup : bool
        Compile/load the Numba kernels on every rank before timing blends, so
        per-blend times are steady-state (the cold start is logged apart).
    """

    write_every_units: int = 64
    write_every_seconds: float = 30.0
    schedule: str = "cost"
    numba_threads: int = 1
    progress: bool = True
    log_level: str = "INFO"
    warmup: bool = True


@dataclass(frozen=True)
class JobConfig:
    """A whole job: input → deblend → output, plus run options.

    Attributes
    ----------
    name : str
        Free-form job name stored in the catalog.
    input, deblend, output, run : sections
        See their classes.
    base_dir : str
        Directory relative input paths are resolved against (the job file's
        directory); not a YAML key.
    """

    name: str = "hpcblend"
    input: InputConfig = field(default_factory=InputConfig)
    deblend: DeblendConfig = field(default_factory=DeblendConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    base_dir: str = field(default=".", metadata={"yaml": False})


_CHOICES = {
    ("input", "kind"): ("blends", "demo"),
    ("deblend", "optimizer"): ("adaprox", "fista"),
    ("output", "writer"): ("auto", "mpio", "serial"),
    ("run", "schedule"): ("cost", "file"),
    ("run", "log_level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
}
_POSITIVE = {
    ("deblend", "model_psf_sigma"), ("deblend", "e_rel"), ("deblend", "max_iter"),
    ("deblend", "sed_step_factor"), ("deblend", "morph_step"), ("deblend", "max_n_peaks"),
    ("deblend", "max_footprint_area"), ("deblend", "max_area_times_peaks"),
    ("deblend", "kernel_tolerance"), ("deblend", "step_scale"), ("run", "write_every_units"), ("run", "write_every_seconds"),
    ("run", "numba_threads"), ("input", "n_demo_blends"),
}
_NON_NEGATIVE = {("deblend", "min_iter"), ("deblend", "bg_thresh"), ("deblend", "box_margin"),
                 ("deblend", "sed_ridge"), ("deblend", "init_deconvolve"), ("deblend", "psf_regularization")}


def _convert(value, tp, where: str, source: str):
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, where, source)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{where}': expected a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: key '{where}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{source}: key '{where}': expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{where}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: key '{where}': expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{source}: key '{where}': unsupported type {tp}")


def _build(cls, data, prefix: str, source: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{prefix or '<top>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{source}: unknown key '{where}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, where, source)
        else:
            kwargs[key] = _convert(value, tp, where, source)
    return cls(**kwargs)


def _validate(job: JobConfig, source: str) -> JobConfig:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(job, section), key)
        if value not in choices:
            raise ConfigError(f"{source}: key '{section}.{key}': {value!r} is not one of {list(choices)}")
    for section, key in _POSITIVE:
        value = getattr(getattr(job, section), key)
        if not value > 0:
            raise ConfigError(f"{source}: key '{section}.{key}': must be > 0, got {value!r}")
    for section, key in _NON_NEGATIVE:
        value = getattr(getattr(job, section), key)
        if value < 0:
            raise ConfigError(f"{source}: key '{section}.{key}': must be >= 0, got {value!r}")
    d = job.deblend
    if d.min_iter > d.max_iter:
        raise ConfigError(f"{source}: key 'deblend.min_iter': {d.min_iter} exceeds deblend.max_iter = {d.max_iter}")
    from .inputs import MASK_PLANES  # local: inputs imports nothing from config

    for plane in d.bad_mask_planes:
        if plane.upper() not in MASK_PLANES:
            raise ConfigError(f"{source}: key 'deblend.bad_mask_planes': unknown mask plane {plane!r} "
                              f"(known: {', '.join(MASK_PLANES)})")
    if job.input.kind == "blends" and not job.input.paths:
        raise ConfigError(f"{source}: key 'input.paths': no input given (a file, directory or glob of npz blends)")
    if not job.output.path:
        raise ConfigError(f"{source}: key 'output.path': empty")
    return job


def job_from_dict(data: dict, source: str = "<job>", base_dir: str = ".") -> JobConfig:
    """Build and validate a :class:`JobConfig` from a parsed YAML mapping.

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names ``source`` and the key.
    """
    job = _build(JobConfig, data, "", source)
    job = dataclasses.replace(job, base_dir=os.path.abspath(base_dir))
    return _validate(job, source)


def load_job(path: str, overrides: Tuple[str, ...] = ()) -> JobConfig:
    """Read a YAML job file (``yaml.safe_load`` only), apply ``section.key=value`` overrides, validate.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or fails validation.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        data = {}
    data = apply_overrides(data, overrides, source=path)
    return job_from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def apply_overrides(data: dict, overrides, source: str = "--set") -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a job mapping (copied).

    Raises
    ------
    ConfigError
        An override without ``=`` or with an empty key.
    """
    import copy

    out = copy.deepcopy(data) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def job_to_dict(job: JobConfig) -> dict:
    """The job as a plain mapping (tuples as lists), for the catalog's ``/config`` and for YAML."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(job)


def default_job(overrides: Tuple[str, ...] = ()) -> JobConfig:
    """The built-in demo job: synthetic blends, no external data needed.

    Writes ``output/demo.h5`` in the current directory.
    """
    data = {"name": "demo", "input": {"kind": "demo"}, "output": {"path": "output/demo.h5"}}
    data = apply_overrides(data, overrides, source="--set")
    return job_from_dict(data, source="<built-in demo job>", base_dir=os.getcwd())
