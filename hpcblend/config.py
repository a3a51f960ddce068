"""Job configuration: a frozen dataclass tree loaded from YAML and validated once.

Every default lives here, documented next to its field; a job file only overrides. Unknown or mistyped
keys are errors that name the key (with a suggestion), so a typo never silently falls back to a default.

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
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

from hpcblend.errors import ConfigError
from hpcblend.io.blends import DEFAULT_BANDS
from hpcblend.io.masks import MASK_PLANES
from hpcblend.io.schema import DEFAULT_APERTURE_RADII
from hpcblend.io.yaml_files import (apply_overrides, dataclass_to_mapping, mapping_to_dataclass, quote_value,
                                    read_yaml_file)

__all__ = [
    "InputConfig", "SimulateConfig", "DetectConfig", "MeasureConfig", "ProfileConfig", "DeblendConfig",
    "OutputConfig", "RunConfig", "JobConfig", "INPUT_KINDS", "write_round_units",
    "load_job", "job_from_dict", "apply_overrides", "job_to_dict", "default_job",
]


@dataclass(frozen=True)
class InputConfig:
    """What to deblend.

    Attributes
    ----------
    kind : str
        ``"blends"``: a collection of pre-cut npz blends (one work unit each); ``"demo"``: synthetic blends
        written on the fly into ``cache_dir`` (needs no external data); ``"tract"``: a multi-band coadd tract
        (one FITS file per band, :mod:`hpcblend.io.coadd`) cut into patches (one work unit each) that are
        detected, deblended and measured.
    paths : tuple of str
        Files, directories or globs of npz blends; relative paths are taken from the job file's directory (or
        the current directory for ``--input`` and the built-in job).
    bands : tuple of str or None
        Band names expected in every blend (e.g. ``[g, r, i, z, y]``); a blend with another band count becomes a
        flagged row. None: taken from the first readable blend.
    cache_dir, n_demo_blends : str, int
        Where ``kind: demo`` writes its synthetic blends, and how many.
    tract_dir : str
        ``kind: tract``: directory holding ``coadd_<band>.fits`` and ``psf_<band>.fits`` (relative to the job
        file's directory).
    tract : int
        Tract number, encoded in every id.
    patch_inner_size : int
        Side of a patch's inner box in pixels (HSC: 4000).
    patch_overlap : int
        Border added around each inner box to make the outer box, pixels (HSC: 100). A source belongs to the
        patch whose inner box holds its peak.
    simulate : SimulateConfig
        ``kind: tract``: simulate the tract into ``tract_dir`` first when it has no coadds (the built-in job does this).
    """

    kind: str = "blends"
    paths: Tuple[str, ...] = ()
    bands: Optional[Tuple[str, ...]] = None
    cache_dir: str = ".hpcblend_cache/demo_blends"
    n_demo_blends: int = 8
    tract_dir: str = ""
    tract: int = 0
    patch_inner_size: int = 4000
    patch_overlap: int = 100
    simulate: "SimulateConfig" = field(default_factory=lambda: SimulateConfig())


@dataclass(frozen=True)
class SimulateConfig:
    """A simulated tract (:func:`hpcblend.simulate.tract.simulate_tract`, GalSim) made when ``tract_dir`` is empty.

    Attributes
    ----------
    enabled : bool
        Simulate when ``input.tract_dir`` has no coadds.
    shape : tuple of int
        (H, W) in pixels.
    bands : tuple of str
    density : float
        Galaxies per arcmin².
    star_density : float
        Stars per arcmin².
    seed : int
    psf : str
        ``"moffat"`` or ``"kolmogorov"``.
    cosmos_dir : str
        RealGalaxyCatalog directory for real HST COSMOS morphologies (e.g. ``../shared/data/cosmos``); empty:
        parametric bulge + disk galaxies.
    galaxy_mag_range : tuple of float
        i-band AB magnitudes of galaxies.
    """

    enabled: bool = False
    shape: Tuple[int, ...] = (2000, 2000)
    bands: Tuple[str, ...] = DEFAULT_BANDS
    density: float = 10.0
    star_density: float = 1.0
    seed: int = 0
    psf: str = "moffat"
    cosmos_dir: str = ""
    galaxy_mag_range: Tuple[float, ...] = (20.0, 26.0)


@dataclass(frozen=True)
class DetectConfig:
    """Detection on a patch (:mod:`hpcblend.detect`).

    Attributes
    ----------
    subtract_background : bool
        Estimate and subtract a smooth background per band (sep). Off by default: coadds come
        background-subtracted, and a second, local (128 px) subtraction in a dense field eats galaxy wings (on
        the simulated tract it biased isolated-source fluxes by about -4 %).
    background_box : int
        Background mesh size, pixels.
    method : str
        Detection image: ``"weighted"`` (inverse-variance weighted mean of the bands) or ``"chi2"``.
    threshold : float
        Footprint threshold in σ of the matched-filtered detection image.
    min_area : int
        Minimum footprint area, pixels.
    grow : int
        Footprints are grown by this many pixels (touching ones merge). The flux-conserving fluxes sum over the
        footprint, so it must hold the wings: with 2 px, isolated galaxies lost about 4 % of their flux on the
        simulated tract; 6 px brings the median error to 2-4 %.
    min_peak_separation : float
        Pixels between kept peaks.
    min_prominence : float
        A peak must rise this many σ above the saddle to a brighter one.
    pad : int
        Pixels of data kept around each footprint's box in its blend cut-out.
    fit_isolated : bool
        Fit single-peak footprints with the deblender too (otherwise they are measured directly on the data: the
        child is the whole footprint; a patch measures all of them together in one compiled call,
        :mod:`hpcblend.measure.isolated`, ~2x faster than one by one, same values).
    """

    subtract_background: bool = False
    background_box: int = 128
    method: str = "weighted"
    threshold: float = 5.0
    min_area: int = 5
    grow: int = 6
    min_peak_separation: float = 2.0
    min_prominence: float = 3.0
    pad: int = 5
    fit_isolated: bool = False


@dataclass(frozen=True)
class MeasureConfig:
    """Forced photometry of the children (:mod:`hpcblend.measure.forced`).

    Attributes
    ----------
    aperture_radii : tuple of float
        Circular aperture radii in pixels.
    forced_pad : int
        Extra pixels of data around each blend's box for forced photometry, so the largest aperture fits.
    store_models : bool
        Store every child's deblended model (SED and morphology box) in the catalog (``/models``,
        ``/model_pixels``), renderable by ``hpcblend model``.
    """

    aperture_radii: Tuple[float, ...] = DEFAULT_APERTURE_RADII
    forced_pad: int = 14
    store_models: bool = True


@dataclass(frozen=True)
class DeblendConfig:
    """Settings of the scarlet-style deblender (see DESIGN.md, "Deblender model").

    Attributes
    ----------
    model_psf_sigma : float
        σ of the circular Gaussian model PSF, pixels (scarlet: 0.8).
    psf_regularization : float
        Tikhonov λ of the Fourier-space difference-kernel solution, relative to the model PSF's peak power.
    kernel_tolerance : float
        Difference-kernel pixels below this fraction of its peak outside the central square are dropped (FFT padding).
    optimizer : str
        ``"adaprox"`` (proximal AMSGrad, scarlet's default) or ``"fista"``.
    e_rel : float
        Relative loss change that ends the fit, times FISTA's step multiplier (``kernels.fit.FitSettings``).
    min_iter, max_iter : int
        Iteration bounds.
    bg_thresh : float
        Morphologies are thresholded at ``bg_thresh × σ`` of each source's optimal band combination during the
        fit (0 disables). 0.5, not scarlet's 1: at 1σ per pixel a galaxy's faint wings were cut (profiling/README).
    init_bg_thresh : float
        The initial morphologies' threshold, × σ of the detection image (scarlet_lite's ``initial_bg_thresh``).
    monotonic, symmetric : bool
        Morphology constraints. ``symmetric`` is point symmetry about the peak *pixel* (the Euclidean
        projection, Melchior et al. 2018, Sect. 2.3), without scarlet's sub-pixel centring: a bright source
        whose centre is off its pixel's centre cannot be fitted (hsc_cosmos_35: χ²/px 34.7 with it, 1.27
        without), so it is off by default, as in scarlet_lite.
    max_components : int
        1, or 2: a bright source (peak S/N ≥ ``multi_component_snr`` in the detection image) is a core plus a
        halo, each with its own SED (scarlet's bulge and disk); its child is their sum.
    multi_component_snr : float
        Detection-image S/N at the peak from which a source gets two components. 300 (measured on the 164 HSC
        blends; profiling/README.md, "Two components as scarlet splits them"): a colour gradient needs them.
    core_fraction : float
        ``t`` in (0, 1) of scarlet's split of the initial morphology S (peak 1): core ``max(S − t, 0)``, halo
        ``min(S, t)`` (:func:`hpcblend.deblend.initialization.initialize_sources`).
    init_symmetric : bool
        Symmetrise the initial morphologies (scarlet does).
    init_deconvolve : float
        Tikhonov λ deconvolving the detection image by the band-weighted difference kernel (to the model frame)
        before the morphologies are cut from it; 0 disables.
    sed_step_factor : float
        Adaprox SED step ``max(sed_step_factor · mean(a_k), σ_b)``.
    morph_step : float
        Adaprox morphology step (peak-normalised units).
    step_scale : float
        FISTA step as a fraction of 1/L, L the Gershgorin row-sum bound of the Hessian (per pixel for morphologies,
        per band for SEDs). The bound is usually loose, so steps of 2/L descend: on the 164 HSC blends 2.0 took 23 %
        fewer iterations than 1.0 and gave a lower median chi2. For a bright, extended source under near-uniform
        (sky-only) weights it is tight and 2/L overshoots; the divergence guard (a large rise, or rise-fall-rise)
        then returns to the best state and halves the step (``kernels.fit``).
    morph_row_gamma : float
        FISTA: γ > 0 steps each morphology pixel by the longer of its Gershgorin row and a whole step of the row
        weighted by ``(ā_k/ā_l)^γ`` (``kernels.fit_steps.fista_update``): a faint source beside a bright one steps by
        its own curvature; better fits of crowded parents, at a cost in speed (profiling/README.md); 0: off.
    box_margin : int
        Zero pixels kept around each source's support so its box can grow.
    sed_ridge : float
        Relative Tikhonov term of the initial SED least squares.
    max_chi2_per_pixel : float
        χ²/pixel of the final model above which a fitted blend gets ``flag_bad_fit`` (also when χ² is not
        finite). A good fit is ~1 (the 164 HSC blends: 0.9–2.0); 1e3 means the model misses the data by ~30σ per
        pixel on average: a diverged fit, or data no non-negative model can describe.
    bad_mask_planes : tuple of str
        Mask planes whose pixels get zero weight.
    max_n_peaks : int
        Blends with more peaks are skipped (``flag_skipped_too_many_peaks``).
    max_footprint_area : int
        Blends with a larger footprint (pixels) are skipped (``flag_skipped_too_large``).
    max_area_times_peaks : float
        Blends with ``footprint_area × n_peaks`` above this are skipped (``flag_skipped_too_large``).
    max_model_memory_mb : float
        Blends whose (components, H, W) float32 model arrays need more MB are skipped (``flag_skipped_too_large``;
        ``deblend.result.model_memory_bytes``: ~250 MB for 94 peaks on 295 × 324 px): a flagged row, not a killed
        rank that ``--resume`` would meet again. Size it to the memory per rank less the patch's own arrays.
    sub_blends : bool
        Fit groups of sources whose models cannot meet (boxes farther apart than the PSF-difference kernel
        reaches) as independent sub-blends, each on its own crop and to its own convergence
        (:mod:`hpcblend.deblend.subblends`); ``/blends.n_sub_blends`` says how many a parent had. False: every
        parent in one piece.
    slope_peak_ratio, slope_peak_box, slope_peak_resolved_snr : float, int, float
        A peak on a brighter source's slope (``slope_peak_ratio`` of its detection value explained by that
        source's monotonic profile) keeps its box within ``slope_peak_box`` px of its peak, so it cannot take
        its outskirts; within the model PSF's 2 px below detection S/N ``slope_peak_resolved_snr`` or rising
        < 10σ above it, then from 20 % explained (:func:`hpcblend.deblend.initialization.slope_peak_caps`); 0: off.
    """

    model_psf_sigma: float = 0.8
    psf_regularization: float = 1e-5
    kernel_tolerance: float = 1e-4
    optimizer: str = "fista"
    e_rel: float = 1e-3
    min_iter: int = 5
    max_iter: int = 300
    bg_thresh: float = 0.5
    init_bg_thresh: float = 1.0
    monotonic: bool = True
    symmetric: bool = False
    max_components: int = 2
    multi_component_snr: float = 300.0
    core_fraction: float = 0.1
    init_symmetric: bool = True
    init_deconvolve: float = 0.03
    sed_step_factor: float = 1e-2
    morph_step: float = 1e-2
    step_scale: float = 2.0
    morph_row_gamma: float = 0.0
    box_margin: int = 2
    sed_ridge: float = 1e-6
    max_chi2_per_pixel: float = 1e3
    bad_mask_planes: Tuple[str, ...] = ("BAD", "SAT", "EDGE", "SUSPECT", "NO_DATA")
    max_n_peaks: int = 600
    max_footprint_area: int = 2_000_000
    max_area_times_peaks: float = 1e9
    max_model_memory_mb: float = 3000.0
    sub_blends: bool = True
    slope_peak_ratio: float = 0.4
    slope_peak_box: int = 4
    slope_peak_resolved_snr: float = 30.0


@dataclass(frozen=True)
class OutputConfig:
    """Where results go.

    Attributes
    ----------
    path : str
        The run's HDF5 catalog (relative to the current directory).
    overwrite : bool
        Replace an existing catalog (otherwise an existing file is an error, unless resuming).
    writer : str
        ``"auto"`` (parallel ``mpio`` under MPI when h5py has it, else serial), ``"mpio"`` or ``"serial"``.
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
        A collective write round starts when this many units finished since the last round … (0:
        ``max(64, 8 × ranks)`` — a fixed small number would make many ranks move in lockstep, every round
        waiting for the slowest unit in flight)
    write_every_seconds : float
        … or this many seconds after the previous round.
    schedule : str
        ``"cost"``: largest expected cost first (the cost model's prediction); ``"file"``: input order.
    cost_model : str
        JSON file of a runtime model fitted on earlier runs
        (``hpcblend costmodel fit RUN.h5 ... --out model.json``); empty: the documented default
        (:func:`hpcblend.units.costmodel.load_cost_model`), ``t ≈ c · n_peaks^a · area^b`` fitted on the 164
        HSC blends. Patches are ordered by a patch model when one is given, else by area.
    numba_threads : int
        Numba threads per rank (``NUMBA_NUM_THREADS``); 0: keep the environment's value (the launchers set 1 per
        rank, Slurm scripts ``SLURM_CPUS_PER_TASK``).
    progress : bool
        Progress bar on rank 0.
    log_level : str
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``.
    warmup : bool
        Compile/load the Numba kernels on every rank before timing blends, so per-blend times are steady-state
        (the cold start is logged apart).
    numba_cache_dir : str
        Where compiled kernels are cached (``NUMBA_CACHE_DIR``), one sub-directory per host; empty: Numba's
        default (beside the installed package — set this for read-only or shared installs).
    keep_freed_memory : bool
        Keep each rank's freed memory for its next unit (glibc ``mallopt``: no mmap, 1 GB trim threshold;
        :mod:`hpcblend.parallel.allocator`) instead of faulting fresh pages in for every patch's arrays;
        the rank's resident size stays at its high-water mark.
    """

    write_every_units: int = 0
    write_every_seconds: float = 30.0
    schedule: str = "cost"
    cost_model: str = ""
    numba_threads: int = 0
    progress: bool = True
    log_level: str = "INFO"
    warmup: bool = True
    numba_cache_dir: str = ""
    keep_freed_memory: bool = True


def write_round_units(write_every_units: int, n_ranks: int) -> int:
    """Finished units that raise a collective write round (``run.write_every_units``).

    Parameters
    ----------
    write_every_units : int
        The configured value; 0 selects the default ``max(64, 8 × n_ranks)``.
    n_ranks : int

    Returns
    -------
    int
        Used by the driver and by the replay model (:mod:`hpcblend.analysis.scaling`).
    """
    return int(write_every_units) or max(64, 8 * int(n_ranks))


@dataclass(frozen=True)
class ProfileConfig:
    """Where the time goes: call-stack sampling per rank and the failure gallery (:mod:`hpcblend.diagnostics.sampler`).

    Attributes
    ----------
    sample_hz : float
        Call-stack samples per second of each rank's working thread (0: sampler off; stage timers still run).
    lines : str
        Line numbers in frame labels: ``"none"``, ``"leaf"`` (innermost frame) or ``"all"``.
    write_collapsed : bool
        Also write each rank's collapsed stacks to ``<catalog>.log/rank_<r>.collapsed``.
    gallery_flagged : int
        Per rank, at most this many failed or flagged blends get an image record in ``/gallery`` (for the
        report's failure gallery).
    gallery_slowest : int
        Per rank, the slowest this-many blends get an image record.
    """

    sample_hz: float = 100.0
    lines: str = "leaf"
    write_collapsed: bool = True
    gallery_flagged: int = 20
    gallery_slowest: int = 5


@dataclass(frozen=True)
class JobConfig:
    """A whole job: input → deblend → output, plus run options.

    Attributes
    ----------
    name : str
        Free-form job name stored in the catalog.
    input, detect, deblend, measure, output, run, profile : sections
        See their classes.
    base_dir : str
        Directory relative input paths are resolved against (the job file's directory); not a YAML key.
    """

    name: str = "hpcblend"
    input: InputConfig = field(default_factory=InputConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    deblend: DeblendConfig = field(default_factory=DeblendConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    base_dir: str = field(default=".", metadata={"yaml": False})


#: Values of ``input.kind``: one per work source in :data:`hpcblend.units.source.SOURCES` (a test checks).
INPUT_KINDS = ("blends", "demo", "tract")

_CHOICES = {
    ("input", "kind"): INPUT_KINDS,
    ("detect", "method"): ("weighted", "chi2"),
    ("profile", "lines"): ("none", "leaf", "all"),
    ("deblend", "optimizer"): ("adaprox", "fista"),
    ("output", "writer"): ("auto", "mpio", "serial"),
    ("run", "schedule"): ("cost", "file"),
    ("run", "log_level"): ("DEBUG", "INFO", "WARNING", "ERROR"),
}
_POSITIVE = {
    ("deblend", "model_psf_sigma"), ("deblend", "e_rel"), ("deblend", "max_iter"),
    ("deblend", "sed_step_factor"), ("deblend", "morph_step"), ("deblend", "max_n_peaks"),
    ("deblend", "max_footprint_area"), ("deblend", "max_area_times_peaks"), ("deblend", "max_model_memory_mb"),
    ("deblend", "kernel_tolerance"), ("deblend", "step_scale"), ("run", "write_every_seconds"),
    ("input", "n_demo_blends"), ("input", "patch_inner_size"), ("deblend", "max_components"),
    ("deblend", "multi_component_snr"), ("deblend", "core_fraction"),
    ("detect", "background_box"), ("detect", "threshold"), ("detect", "min_area"),
}
_NON_NEGATIVE = {("run", "numba_threads"), ("run", "write_every_units"), ("profile", "sample_hz"),
                 ("profile", "gallery_flagged"), ("profile", "gallery_slowest"),
                 ("input", "patch_overlap"), ("input", "tract"), ("detect", "grow"), ("detect", "pad"),
                 ("detect", "min_peak_separation"), ("detect", "min_prominence"), ("measure", "forced_pad"),
                 ("deblend", "min_iter"), ("deblend", "bg_thresh"), ("deblend", "init_bg_thresh"),
                 ("deblend", "box_margin"), ("deblend", "sed_ridge"), ("deblend", "init_deconvolve"),
                 ("deblend", "psf_regularization"), ("deblend", "slope_peak_ratio"), ("deblend", "slope_peak_box"),
                 ("deblend", "slope_peak_resolved_snr"), ("deblend", "morph_row_gamma")}


def _validate(job: JobConfig, source: str) -> JobConfig:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(job, section), key)
        if value not in choices:
            raise ConfigError(f"{source}: key '{section}.{key}': {quote_value(value)} is not one of {list(choices)}")
    for section, key in _POSITIVE:
        value = getattr(getattr(job, section), key)
        if not value > 0:
            raise ConfigError(f"{source}: key '{section}.{key}': must be > 0, got {quote_value(value)}")
    for section, key in _NON_NEGATIVE:
        value = getattr(getattr(job, section), key)
        if value < 0:
            raise ConfigError(f"{source}: key '{section}.{key}': must be >= 0, got {quote_value(value)}")
    d = job.deblend
    if d.max_components not in (1, 2):
        raise ConfigError(f"{source}: key 'deblend.max_components': must be 1 or 2, "
                          f"got {quote_value(d.max_components)}")
    if not d.core_fraction < 1:
        raise ConfigError(f"{source}: key 'deblend.core_fraction': must be < 1, got {quote_value(d.core_fraction)}")
    if d.min_iter > d.max_iter:
        raise ConfigError(f"{source}: key 'deblend.min_iter': {quote_value(d.min_iter)} exceeds "
                          f"deblend.max_iter = {quote_value(d.max_iter)}")
    for plane in d.bad_mask_planes:
        if plane.upper() not in MASK_PLANES:
            raise ConfigError(f"{source}: key 'deblend.bad_mask_planes': unknown mask plane {quote_value(plane)} "
                              f"(known: {', '.join(MASK_PLANES)})")
    if job.input.kind == "blends" and not job.input.paths:
        raise ConfigError(f"{source}: key 'input.paths': no input given (a file, directory or glob of npz blends)")
    if job.input.kind == "tract" and not job.input.tract_dir:
        raise ConfigError(f"{source}: key 'input.tract_dir': no tract directory given")
    sim = job.input.simulate
    if len(sim.shape) != 2 or min(sim.shape) <= 0:
        raise ConfigError(f"{source}: key 'input.simulate.shape': expected [H, W] > 0, "
                          f"got {quote_value(list(sim.shape))}")
    if sim.psf not in ("moffat", "kolmogorov"):
        raise ConfigError(f"{source}: key 'input.simulate.psf': {quote_value(sim.psf)} "
                          f"is not one of ['moffat', 'kolmogorov']")
    if not job.measure.aperture_radii or min(job.measure.aperture_radii) <= 0:
        raise ConfigError(f"{source}: key 'measure.aperture_radii': expected positive radii, "
                          f"got {quote_value(list(job.measure.aperture_radii))}")
    if not job.output.path:
        raise ConfigError(f"{source}: key 'output.path': empty")
    return job


def job_from_dict(data: dict, source: str = "<job>", base_dir: str = ".") -> JobConfig:
    """Build and validate a :class:`JobConfig` from a parsed YAML mapping.

    Parameters
    ----------
    data : dict
        Sections and keys (missing ones take their defaults).
    source : str
        Names the job in error messages (the job file's path).
    base_dir : str
        Directory relative input paths are resolved against.

    Returns
    -------
    JobConfig

    Raises
    ------
    ConfigError
        ``data`` or a section is not a mapping; unknown key, wrong type or
        invalid value. The message names ``source`` and the key, and quotes
        at most about 200 characters of the value.
    """
    job = mapping_to_dataclass(JobConfig, data, source)
    job = dataclasses.replace(job, base_dir=os.path.abspath(base_dir))
    return _validate(job, source)


def load_job(path: str, overrides: Tuple[str, ...] = ()) -> JobConfig:
    """Read a YAML job file (safe YAML only), apply ``section.key=value`` overrides, validate.

    The file is parsed by :func:`hpcblend.io.yaml_files.load_yaml`, a
    ``yaml.SafeLoader`` that also refuses anchors and aliases, merge keys,
    duplicate or non-string keys and unsafe tags (``!!python/...``). Every
    error is one line naming the file (and the line, or the key).

    Parameters
    ----------
    path : str
        The job file.
    overrides : tuple of str
        ``section.key=value`` strings (``--set``), see :func:`apply_overrides`.

    Returns
    -------
    JobConfig

    Raises
    ------
    ConfigError
        The file is missing or unreadable; it is not YAML; it has a YAML
        anchor or alias, a merge key, a duplicate key, a non-string key or a
        refused tag (``path: line N: ...``); its top level is not a mapping;
        an override is invalid; or the job fails validation.
    """
    data = read_yaml_file(path, what="job file")
    data = apply_overrides(data, overrides, source=path)
    return job_from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def job_to_dict(job: JobConfig) -> dict:
    """The job as a plain mapping (tuples as lists), for the catalog's ``/config`` and for YAML."""
    return dataclass_to_mapping(job)


DEFAULT_JOB = {
    "name": "demo-tract",
    "input": {"kind": "tract", "tract_dir": ".hpcblend_cache/demo_tract", "patch_inner_size": 1000,
              "patch_overlap": 100, "simulate": {"enabled": True, "shape": [2000, 2000], "density": 30.0, "seed": 1}},
    "output": {"path": "output/demo.h5"},
}


def default_job(overrides: Tuple[str, ...] = ()) -> JobConfig:
    """The built-in job (``hpcblend run`` without a job file): needs no external data.

    Simulates (GalSim, once, into ``.hpcblend_cache/demo_tract`` of the current directory) a 2000 × 2000 px
    grizy tract with a few hundred galaxies and stars, cuts it into 2 × 2 patches of 1000 px with 100 px
    overlap, detects, deblends and measures it, and writes ``output/demo.h5``. The same job is ``jobs/demo.yaml``.
    """
    data = apply_overrides(DEFAULT_JOB, overrides, source="--set")
    return job_from_dict(data, source="<built-in demo job>", base_dir=os.getcwd())
