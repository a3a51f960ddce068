"""Deblended models in the catalog ("deblendedModel"): pack each child's SED and morphology box, read and render.

Each child's model at the model PSF is ``sed ⊗ morph`` on its box. The
catalog stores one ``/models`` row per child (box, SED) and the morphology
pixels, row-major, in ``/model_pixels`` rows of
:data:`hpcblend.schema.MODEL_CHUNK` float32 values (the last row zero-padded).
Both tables are sorted by child id when the run is finalised, so a child's
model is found by binary search without reading the whole file.
"""

from __future__ import annotations

import numpy as np

from .errors import CatalogError
from .schema import MODEL_CHUNK, model_pixel_spec, model_spec

__all__ = ["pack_models", "read_model", "render_model_rgb", "ChildModel"]


class ChildModel:
    """One child's stored model.

    Attributes
    ----------
    id, parent_id : int
    box : tuple of int
        (y0, x0, height, width) in the parent frame (tract pixels for tract runs).
    sed : ndarray, shape (B,), float32
        Counts at the morphology's peak, per band.
    morph : ndarray, shape (height, width), float32
        Peak-normalised morphology at the model PSF.
    bands : tuple of str
    model_psf_sigma : float
        σ of the Gaussian model PSF, pixels.
    """

    def __init__(self, id, parent_id, box, sed, morph, bands, model_psf_sigma):
        self.id, self.parent_id, self.box = int(id), int(parent_id), tuple(int(v) for v in box)
        self.sed, self.morph, self.bands = sed, morph, tuple(bands)
        self.model_psf_sigma = float(model_psf_sigma)

    def image(self) -> np.ndarray:
        """The model cube ``sed[:, None, None] * morph``, shape (B, height, width), counts."""
        return self.sed[:, None, None] * self.morph[None]


def pack_models(child_ids, parent_ids, sed, morphs, boxes, origin, bands, model_psf_sigma):
    """Rows of ``/models`` and ``/model_pixels`` for the given children.

    Parameters
    ----------
    child_ids, parent_ids : sequence of int, length K
    sed : ndarray, shape (K, B)
        Fitted SEDs (counts at the morphology peak).
    morphs : ndarray, shape (K, H, W)
        Full-frame morphologies of the blend (zero outside their boxes).
    boxes : ndarray, shape (K, 4), int
        Boxes (y0, y1, x0, x1), half-open, blend frame.
    origin : tuple of int
        (y0, x0) of the blend's pixel [0, 0] in the parent frame.
    bands : sequence of str
    model_psf_sigma : float

    Returns
    -------
    models : ndarray, dtype of :func:`hpcblend.schema.model_spec`
    pixels : ndarray, dtype of :func:`hpcblend.schema.model_pixel_spec`
    """
    mspec, pspec = model_spec(bands), model_pixel_spec()
    k = len(child_ids)
    rows = mspec.empty(k)
    chunks = []
    for i in range(k):
        y0, y1, x0, x1 = (int(v) for v in boxes[i])
        cut = np.ascontiguousarray(morphs[i, y0:y1, x0:x1], dtype=np.float32).ravel()
        n = max(-(-cut.size // MODEL_CHUNK), 1)
        rows[i] = (child_ids[i], parent_ids[i], origin[0] + y0, origin[1] + x0, y1 - y0, x1 - x0,
                   np.asarray(sed[i], dtype=np.float32), n, model_psf_sigma)
        part = pspec.empty(n)
        part["id"] = child_ids[i]
        part["chunk"] = np.arange(n)
        flat = np.zeros(n * MODEL_CHUNK, dtype=np.float32)
        flat[: cut.size] = cut
        part["values"] = flat.reshape(n, MODEL_CHUNK)
        chunks.append(part)
    pixels = np.concatenate(chunks) if chunks else pspec.empty(0)
    return rows, pixels


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
    """
    from .catalog import open_catalog

    with open_catalog(path) as f:
        if "models" not in f or "model_pixels" not in f:
            raise CatalogError(f"{path}: no stored models (/models, /model_pixels); run with measure.store_models")
        bands = tuple(str(f.attrs.get("bands", "")).split(","))
        rows = _rows_with_id(f["models"], child_id)
        if len(rows) == 0:
            raise CatalogError(f"{path}: no model for id {child_id}")
        row = rows[0]
        pix = _rows_with_id(f["model_pixels"], child_id)
    pix = pix[np.argsort(pix["chunk"])]
    h, w = int(row["height"]), int(row["width"])
    morph = pix["values"].ravel()[: h * w].reshape(h, w)
    return ChildModel(row["id"], row["parent_id"], (row["y0"], row["x0"], h, w), np.asarray(row["sed"]), morph,
                      bands, row["model_psf_sigma"])


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
