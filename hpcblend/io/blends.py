"""Pre-cut blends in npz files: the layouts read and written, and the names callers import.

The data type :class:`BlendData` (:mod:`hpcblend.io.blend_data`) is the
contract between the readers and the deblender; :func:`read_blend`
(:mod:`hpcblend.io.blend_read`) turns a file into it and validates it, so that
everything downstream may assume a well-formed blend. :func:`expand_inputs`,
:func:`peek_blend` and :func:`write_blend` are in :mod:`hpcblend.io.blend_files`,
the safe npz access in :mod:`hpcblend.io.npz`, the mask planes in
:mod:`hpcblend.io.masks`. This module re-exports them.

Supported npz layouts (all read with ``np.load(..., allow_pickle=False)``;
nothing is ever unpickled):

``hsc_blends`` (``data/hsc_blends/set*/<id>.npz``, also ``testdata_3_0.npz``,
and what :func:`write_blend` writes)
    ``images``, ``variance``, ``mask`` (B, H, W); ``footprint`` (H, W) bool,
    **True OUTSIDE** the parent footprint (it is inverted on reading:
    ``BlendData.footprint`` is True inside); ``psfs`` (B, Ph, Pw);
    ``centers`` (K, 2) integer peaks in (y, x) order. Optional: ``filters``
    (band names), ``origin`` (2,) (y0, x0). Other keys (``matched``) are
    ignored.
``scarlet catalog`` (``hsc_cosmos_35.npz``)
    ``images``, ``variance``, ``mask``, ``psfs``, ``filters``, and a
    structured ``catalog`` with float fields ``x`` and ``y``; peaks are the
    positions rounded half-up to the nearest pixel, in (y, x) order. There is
    no footprint, so every pixel of the box is taken as inside the footprint.

Only ``images``, ``variance``, ``psfs`` and one of ``centers`` / ``catalog``
are required; a missing ``mask`` reads as all zeros. A ``format_version``
member (0-d integer, written by :func:`write_blend`) names the layout's
version (:mod:`hpcblend.io.versions`); a file without it is version 1, a newer
one is refused with a message naming the version. A file without
``variance`` (``hsc_cosmos.npz``) is rejected: no variance is invented.

Pixel clean-up done by :func:`read_blend` (recorded in ``BlendData.meta``):

* pixels with variance <= 0 get the ``NO_DATA`` mask bit (a band whose every
  footprint pixel has variance <= 0 becomes a band without data: the
  deblender fits the other bands); their variance is left as it is, so the
  deblender must give them zero weight (see :meth:`BlendData.weights`);
* NaN/inf image or variance pixels are set to 0 and get the ``NO_DATA`` bit;
  inside the footprint that is an error unless the mask already marks the pixel
  bad (a coadd's empty ``NO_DATA`` or saturated pixels) or the band has no finite
  footprint pixel at all (then it is a band without data).

Bad peaks are flagged, not errors: ``BlendData.peak_flags`` (see
:func:`classify_peaks`) marks peaks outside the image or the footprint, on a
pixel bad in every band (:data:`~hpcblend.io.masks.DEFAULT_BAD_MASK_PLANES`, variance <= 0), and
the second and later peaks on one pixel; the deblender does not fit them.
"""

from __future__ import annotations

from hpcblend.io.blend_data import (PEAK_DROPPED, PEAK_DUPLICATE, PEAK_MASKED, PEAK_MERGED, PEAK_OUTSIDE_FOOTPRINT,
                                    PEAK_OUTSIDE_IMAGE, BlendData, classify_peaks)
from hpcblend.io.blend_files import blend_arrays, expand_inputs, id_from_stem, peek_blend, write_blend
from hpcblend.io.blend_read import DEFAULT_BANDS, read_blend
from hpcblend.io.masks import DEFAULT_BAD_MASK_PLANES, MASK_PLANES, mask_bits
from hpcblend.io.psf import PSF_SUM_TOLERANCE

__all__ = [
    "BlendData",
    "MASK_PLANES",
    "DEFAULT_BAD_MASK_PLANES",
    "DEFAULT_BANDS",
    "PSF_SUM_TOLERANCE",
    "PEAK_DUPLICATE",
    "PEAK_MASKED",
    "PEAK_OUTSIDE_FOOTPRINT",
    "PEAK_OUTSIDE_IMAGE",
    "PEAK_MERGED",
    "PEAK_DROPPED",
    "blend_arrays",
    "classify_peaks",
    "expand_inputs",
    "id_from_stem",
    "mask_bits",
    "peek_blend",
    "read_blend",
    "write_blend",
]
