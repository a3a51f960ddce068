"""hpcblend: MPI-parallel batch deblending with a scarlet-style model in Numba.

The notebook user's entry points (each imports what it needs when called, so ``import hpcblend`` stays
cheap and leaves the thread settings of ``NUMBA_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` to the caller)::

    import hpcblend
    job = hpcblend.load_job("jobs/hsc_blends.yaml", ["deblend.max_iter=100"])
    path = hpcblend.run(job, output="output/mine.h5")         # one process (mpirun for more)
    sources = hpcblend.read_catalog(path, "sources")            # astropy Table with units
    result = hpcblend.deblend_one("../shared/data/hsc_blends/set1/43160590213972252.npz")
    result.children["flux_model"]                               # (K, B) counts
"""

__all__ = ["__version__", "load_job", "run", "read_catalog", "deblend_one"]
from hpcblend.version import __version__


def load_job(path=None, overrides=()):
    """A job from a YAML file (``None``: the built-in job), with ``section.key=value`` overrides.

    Returns
    -------
    hpcblend.config.JobConfig

    Raises
    ------
    hpcblend.errors.ConfigError
        The file or an override is invalid (the message names the key).
    """
    from hpcblend.config import default_job
    from hpcblend.config import load_job as _load

    return _load(path, tuple(overrides)) if path else default_job(tuple(overrides))


def run(job=None, output=None, resume=False):
    """Run a job (a :class:`~hpcblend.config.JobConfig`, a job file, or ``None`` for the built-in job).

    Under ``mpirun`` every rank calls this; alone it runs on one process.

    Returns
    -------
    str
        Path of the finished catalog.

    Raises
    ------
    hpcblend.errors.HpcblendError
        Bad job or inputs, an unusable output, a damaged catalog on resume (see README "Failure policy").
    """
    from hpcblend.parallel.driver import run_job

    if job is None or isinstance(job, str):
        job = load_job(job)
    return run_job(job, output=output, resume=resume)


def read_catalog(path, table="sources"):
    """One table of a catalog as an :class:`astropy.table.Table` with the columns' units.

    Parameters
    ----------
    path : str
        Catalog file.
    table : str
        ``"sources"``, ``"blends"``, ``"patches"``, ``"models"``, ...

    Raises
    ------
    hpcblend.errors.CatalogError
        The file is not a readable catalog, lacks the table, or is damaged (checksums).
    """
    from astropy.table import Table

    from hpcblend.io.catalog import open_catalog, read_table

    rows = read_table(path, table)
    out = Table(rows)
    with open_catalog(path) as f:
        for col in out.colnames:
            unit = f[table].attrs.get(f"unit_{col}", "")
            unit = unit.decode() if isinstance(unit, bytes) else str(unit)
            if unit:
                out[col].unit = unit
    return out


def deblend_one(blend, config=None):
    """Deblend one blend: a :class:`~hpcblend.io.blends.BlendData` or the path of an npz blend file.

    (Not named ``deblend``: that is the name of the :mod:`hpcblend.deblend.deblender` module.)

    Parameters
    ----------
    blend : BlendData or str
        Arrays in (images and variance (B, H, W), PSFs, peaks (K, 2) in (y, x)), or a file.
    config : hpcblend.config.DeblendConfig, optional
        Default settings when omitted.

    Returns
    -------
    hpcblend.deblend.deblender.DeblendResult
        ``children`` (per peak: ``flux_model``, ``flux``, ``flux_err`` (K, B) in counts, centroids,
        blendedness), ``sed``/``morphs``/``boxes`` of the components, χ²/pixel, iterations, flags.

    Raises
    ------
    hpcblend.errors.HpcblendError
        The blend cannot be read or deblended (a data error).
    """
    from hpcblend.config import DeblendConfig
    from hpcblend.deblend.deblender import deblend_blend
    from hpcblend.io.blends import read_blend

    if isinstance(blend, str):
        blend = read_blend(blend)
    return deblend_blend(blend, config or DeblendConfig())
