"""Deblended models in the catalog ("deblendedModel"): pack each child's SED and morphology box, read and render.

Each child's model at the model PSF is ``sed ⊗ morph`` on its box. The
catalog stores one ``/models`` row per component of a child (box, SED) and the
morphology pixels, row-major, in ``/model_pixels`` rows of
:data:`hpcblend.io.schema.MODEL_CHUNK` float32 values (the last row zero-padded).
Both tables are sorted by child id when the run is finalised, so a child's
model is found by binary search without reading the whole file.

Versions (:data:`hpcblend.io.versions.FORMATS` ``["models"]``): the tables
carry the attribute ``format_version``; a table without it is of version 1 if
it lacks the ``component`` column (one row per child, before two-component
sources), else 2. Version-1 rows are migrated on reading
(:func:`migrate_models`); a newer version is refused with a message naming it.
"""

from __future__ import annotations

import numpy as np

from hpcblend.errors import CatalogError
from hpcblend.io.catalog_read import open_catalog
from hpcblend.io.schema import MODEL_CHUNK, model_pixel_spec, model_spec
from hpcblend.io.tables import TABLE_VERSION_ATTR
from hpcblend.io.versions import MODELS_VERSION, check_version

__all__ = ["pack_models", "read_model", "render_model_rgb", "ChildModel", "MODELS_V2_COLUMNS", "models_version",
           "migrate_models"]

#: Columns /models gained in version 2, with the value a version-1 row gets: its child's one
#: component (0), whose pixels start at the child's first chunk (0).
MODELS_V2_COLUMNS: dict = {"component": 0, "chunk0": 0}


class ChildModel:
    """One child's stored model: one or more components (a bright child has a halo and a core).

    Attributes
    ----------
    id, parent_id : int
    box : tuple of int
        (y0, x0, height, width) of the union of the components' boxes, in the
        parent frame (tract pixels for tract runs).
    components : list of (sed, morph, box)
        ``sed`` (B,) float32 counts at the morphology's peak, ``morph``
        (h, w) float32 peak-normalised at the model PSF, ``box`` (y0, x0, h, w).
    bands : tuple of str
    model_psf_sigma : float
        σ of the Gaussian model PSF, pixels.
    """

    def __init__(self, id, parent_id, components, bands, model_psf_sigma):
        self.id, self.parent_id = int(id), int(parent_id)
        self.components = list(components)
        self.bands = tuple(bands)
        self.model_psf_sigma = float(model_psf_sigma)
        y0 = min(c[2][0] for c in self.components)
        x0 = min(c[2][1] for c in self.components)
        y1 = max(c[2][0] + c[2][2] for c in self.components)
        x1 = max(c[2][1] + c[2][3] for c in self.components)
        self.box = (int(y0), int(x0), int(y1 - y0), int(x1 - x0))

    @property
    def sed(self) -> np.ndarray:
        """Total model flux per band divided by the summed morphology's peak (a display SED), shape (B,)."""
        return self.image().reshape(len(self.bands), -1).max(axis=1)

    def flux(self) -> np.ndarray:
        """Model flux per band (counts), shape (B,)."""
        return np.array([sum(float(c[0][b]) * float(c[1].sum()) for c in self.components)
                         for b in range(len(self.bands))])

    def image(self) -> np.ndarray:
        """The model cube ``Σ_c sed_c ⊗ morph_c`` on :attr:`box`, shape (B, height, width), counts."""
        y0, x0, h, w = self.box
        out = np.zeros((len(self.bands), h, w), dtype=np.float32)
        for sed, morph, (cy0, cx0, ch, cw) in self.components:
            out[:, cy0 - y0:cy0 - y0 + ch, cx0 - x0:cx0 - x0 + cw] += sed[:, None, None] * morph[None]
        return out


def pack_models(child_ids, parent_ids, sed, morphs, boxes, origin, bands, model_psf_sigma, component=None):
    """Rows of ``/models`` and ``/model_pixels`` for the given components.

    Parameters
    ----------
    child_ids, parent_ids : sequence of int, length C
        The child each component belongs to, and its parent.
    sed : ndarray, shape (C, B)
        Fitted SEDs (counts at the morphology peak).
    morphs : ndarray, shape (C, H, W)
        Full-frame morphologies of the blend (zero outside their boxes).
    boxes : ndarray, shape (C, 4), int
        Boxes (y0, y1, x0, x1), half-open, blend frame.
    origin : tuple of int
        (y0, x0) of the blend's pixel [0, 0] in the parent frame.
    bands : sequence of str
    model_psf_sigma : float
    component : sequence of int, optional
        Component number within its child (default 0 for all).

    Returns
    -------
    models : ndarray, dtype of :func:`hpcblend.io.schema.model_spec`
    pixels : ndarray, dtype of :func:`hpcblend.io.schema.model_pixel_spec`
    """
    mspec, pspec = model_spec(bands), model_pixel_spec()
    k = len(child_ids)
    component = np.zeros(k, dtype=np.int64) if component is None else np.asarray(component)
    rows = mspec.empty(k)
    chunks = []
    next_chunk: dict = {}
    for i in range(k):
        y0, y1, x0, x1 = (int(v) for v in boxes[i])
        cut = np.ascontiguousarray(morphs[i, y0:y1, x0:x1], dtype=np.float32).ravel()
        n = max(-(-cut.size // MODEL_CHUNK), 1)
        c0 = next_chunk.get(int(child_ids[i]), 0)
        next_chunk[int(child_ids[i])] = c0 + n
        rows[i] = (child_ids[i], parent_ids[i], component[i], origin[0] + y0, origin[1] + x0, y1 - y0, x1 - x0,
                   np.asarray(sed[i], dtype=np.float32), c0, n, model_psf_sigma)
        part = pspec.empty(n)
        part["id"] = child_ids[i]
        part["chunk"] = c0 + np.arange(n)
        flat = np.zeros(n * MODEL_CHUNK, dtype=np.float32)
        flat[: cut.size] = cut
        part["values"] = flat.reshape(n, MODEL_CHUNK)
        chunks.append(part)
    pixels = pspec.concatenate(chunks)
    return rows, pixels


def models_version(dset, path: str) -> int:
    """The format version of a ``/models`` (or ``/model_pixels``) dataset, checked against the registry.

    Parameters
    ----------
    dset : h5py.Dataset
        The table.
    path : str
        The catalog, for messages.

    Returns
    -------
    int
        Its ``format_version`` attribute; without one, 1 for a ``/models`` table lacking the ``component``
        column, else 2 (tables written before the attribute).

    Raises
    ------
    SchemaVersionError
        The version is newer (or older) than this hpcblend reads: the message names the file, the
        table and the version.
    """
    version = dset.attrs.get(TABLE_VERSION_ATTR)
    if version is None:
        names = dset.dtype.names or ()
        version = 1 if dset.name.lstrip("/") == "models" and "component" not in names else MODELS_VERSION
    return check_version("models", version, path, dset.name)


def migrate_models(rows: np.ndarray, version: int) -> np.ndarray:
    """``/models`` rows of ``version`` as rows of the current layout.

    Parameters
    ----------
    rows : ndarray, shape (n,)
        Rows as stored.
    version : int
        Their format version (:func:`models_version`).

    Returns
    -------
    ndarray, shape (n,)
        ``rows`` itself for the current version; for version 1 the same rows with the columns
        of :data:`MODELS_V2_COLUMNS` added (``component`` 0, ``chunk0`` 0: a version-1 row is
        its child's only component, and its pixels are the child's chunks from 0).
    """
    if version == MODELS_VERSION:
        return rows
    sed_shape = rows.dtype.fields["sed"][0].shape
    out = model_spec([""] * (sed_shape[0] if sed_shape else 1)).empty(len(rows))
    for name in out.dtype.names:
        if name in MODELS_V2_COLUMNS:
            out[name] = MODELS_V2_COLUMNS[name]
        else:
            out[name] = rows[name]
    return out


def _rows_with_id(dset, child_id: int) -> np.ndarray:
    """Rows of a finalised (id-sorted) table with this id, by binary search on the ``id`` column."""
    ids = dset.fields("id")[:]
    lo, hi = np.searchsorted(ids, child_id, "left"), np.searchsorted(ids, child_id, "right")
    return dset[lo:hi]


def read_model(path, child_id: int) -> ChildModel:
    """Read one child's model from a finished catalog.

    Raises
    ------
    CatalogError
        The catalog has no stored models, or none for this id.
    SchemaVersionError
        ``/models`` or ``/model_pixels`` is of a version this hpcblend does not
        read (version-1 ``/models`` is migrated: :func:`migrate_models`).
    """
    with open_catalog(path) as f:
        if "models" not in f or "model_pixels" not in f:
            raise CatalogError(f"{path}: no stored models (/models, /model_pixels); run with measure.store_models")
        version = models_version(f["models"], str(path))
        models_version(f["model_pixels"], str(path))
        bands = tuple(str(f.attrs.get("bands", "")).split(","))
        rows = migrate_models(_rows_with_id(f["models"], child_id), version)
        if len(rows) == 0:
            raise CatalogError(f"{path}: no model for id {child_id}")
        pix = _rows_with_id(f["model_pixels"], child_id)
    pix = pix[np.argsort(pix["chunk"])]
    values = pix["values"]
    components = []
    for row in rows[np.argsort(rows["component"])]:
        h, w = int(row["height"]), int(row["width"])
        c0, n = int(row["chunk0"]), int(row["n_chunks"])
        morph = values[c0:c0 + n].ravel()[: h * w].reshape(h, w)
        components.append((np.asarray(row["sed"]), morph, (int(row["y0"]), int(row["x0"]), h, w)))
    row = rows[0]
    return ChildModel(row["id"], row["parent_id"], components, bands, row["model_psf_sigma"])


def render_model_rgb(model: ChildModel, rgb_bands=None, stretch: float = None, q: float = 8.0) -> np.ndarray:
    """An asinh colour image (Lupton et al. 2004, PASP 116, 133) of a child's model.

    Parameters
    ----------
    model : ChildModel
    rgb_bands : tuple of 3 str, optional
        Bands for red, green, blue (default: the reddest, middle and bluest).
    stretch : float, optional
        Linear stretch in counts (default: 5 % of the model's peak).
    q : float
        asinh softening.

    Returns
    -------
    rgb : ndarray, shape (height, width, 3), uint8
    """
    from astropy.visualization import make_lupton_rgb

    cube = model.image()
    nb = cube.shape[0]
    if rgb_bands is None:
        idx = (nb - 1, nb // 2, 0) if nb >= 3 else (0, 0, 0)
    else:
        idx = tuple(model.bands.index(b) for b in rgb_bands)
    peak = float(cube.max()) if cube.size else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(cube[idx[0]], cube[idx[1]], cube[idx[2]], stretch=stretch or max(0.05 * peak, 1e-12),
                               Q=q)
