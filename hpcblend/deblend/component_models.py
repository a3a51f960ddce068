"""Every component's morphology convolved to every band, each stored over its own grown box only.

Why
---
A component's observed-frame model ``D_b * S_c`` is zero beyond its morphology box grown by the
PSF-difference kernel radius ``r``. Held as a dense ``(C, B, H, W)`` array over the blend's frame, a
large parent paid memory and first-touch page faults for ``C × B × H × W`` pixels that are almost all
zero: a simulated 202-peak parent on 536 × 589 px needed 1.3 GB for it, twice (the initial SEDs, the
measurements), and spent 8.8 s of its 14.1 s there (initialisation 4.9 s, measurement 4.4 s; now
0.44 s and 0.09 s, the same values). :class:`ComponentModels` keeps component ``c`` as a
``(B, gh_c, gw_c)`` block over its grown box, all blocks in one flat float32 buffer, so the cost is
``B × Σ_c gh_c gw_c``: what the sources really occupy.

The compiled consumers (:func:`hpcblend.kernels.initialization.fit_seds`,
:func:`hpcblend.kernels.measurement.measure_children_kernel`) read the buffer directly: pixel
``(y, x)`` of band ``b`` of component ``c`` is
``flat[offsets[c] + (b · gh_c + y − gy0_c) · gw_c + x − gx0_c]`` for ``(y, x)`` inside
``grown[c] = (gy0, gy1, gx0, gx1)`` (:func:`hpcblend.kernels.convolution.block_row`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from hpcblend.geometry import grow_boxes

__all__ = ["ComponentModels", "grown_boxes"]


def grown_boxes(boxes: np.ndarray, radius: int, shape: Tuple[int, int]) -> np.ndarray:
    """Boxes (C, 4) (y0, y1, x0, x1) grown by ``radius`` pixels and clipped to the frame ``shape`` (H, W)
    (:func:`hpcblend.geometry.grow_boxes`); an empty box (``y0 == y1`` or ``x0 == x1``: a placeholder
    component) stays empty (all zeros), so it holds no block."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    out = grow_boxes(boxes, radius, shape)
    out[(boxes[:, 1] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 2])] = 0
    return out


@dataclass
class ComponentModels:
    """Components convolved to every band, ``D_b * S_c``, over their grown boxes (float32, counts per unit SED).

    Attributes
    ----------
    frame_shape : (int, int)
        The blend's frame (H, W), pixels.
    n_bands : int
        B.
    grown : ndarray, shape (C, 4), int64
        Each component's block: (gy0, gy1, gx0, gx1), half-open, in the frame (its morphology box grown
        by the kernel radius and clipped); the model is zero outside it.
    offsets : ndarray, shape (C + 1,), int64
        Component ``c``'s block is ``flat[offsets[c]:offsets[c + 1]]``, a C-ordered (B, gh, gw) array.
    flat : ndarray, shape (offsets[-1],), float32
    """

    frame_shape: Tuple[int, int]
    n_bands: int
    grown: np.ndarray
    offsets: np.ndarray
    flat: np.ndarray

    @classmethod
    def zeros(cls, grown: np.ndarray, n_bands: int, frame_shape: Tuple[int, int]) -> "ComponentModels":
        """Zero blocks over ``grown`` (C, 4)."""
        grown = np.ascontiguousarray(grown, dtype=np.int64)
        sizes = int(n_bands) * np.maximum(grown[:, 1] - grown[:, 0], 0) * np.maximum(grown[:, 3] - grown[:, 2], 0)
        offsets = np.zeros(len(grown) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(tuple(int(v) for v in frame_shape), int(n_bands), grown, offsets,
                   np.zeros(int(offsets[-1]), dtype=np.float32))

    @classmethod
    def from_dense(cls, conv: np.ndarray, grown: np.ndarray) -> "ComponentModels":
        """Blocks cut from a dense (C, B, H, W) array (zero outside ``grown``, which is not checked)."""
        out = cls.zeros(grown, conv.shape[1], conv.shape[2:])
        for c in range(out.n_components):
            y0, y1, x0, x1 = out.grown[c]
            out.component(c)[...] = conv[c, :, y0:y1, x0:x1]
        return out

    @property
    def n_components(self) -> int:
        return len(self.grown)

    def component(self, c: int) -> np.ndarray:
        """Component ``c``'s block, a writable (B, gh, gw) view of :attr:`flat`."""
        y0, y1, x0, x1 = (int(v) for v in self.grown[c])
        return self.flat[self.offsets[c]:self.offsets[c + 1]].reshape(self.n_bands, max(y1 - y0, 0), max(x1 - x0, 0))

    def dense(self) -> np.ndarray:
        """The (C, B, H, W) float32 array (for references and tests: C × B × H × W pixels)."""
        out = np.zeros((self.n_components, self.n_bands) + self.frame_shape, dtype=np.float32)
        for c in range(self.n_components):
            y0, y1, x0, x1 = self.grown[c]
            out[c, :, y0:y1, x0:x1] = self.component(c)
        return out

    def render(self, sed: np.ndarray, components: Optional[np.ndarray] = None,
               out: Optional[np.ndarray] = None) -> np.ndarray:
        """``Σ_c sed[c, b] · (D_b * S_c)`` over ``components`` (default all), (B, H, W) float32 (counts).

        Parameters
        ----------
        sed : ndarray, shape (C, B)
        components : ndarray of int, optional
        out : ndarray, shape (B, H, W), float32, optional
            Added to (default: a new zero array).
        """
        if out is None:
            out = np.zeros((self.n_bands,) + self.frame_shape, dtype=np.float32)
        sed = np.asarray(sed, dtype=np.float32)
        for c in (range(self.n_components) if components is None else components):
            y0, y1, x0, x1 = self.grown[c]
            if y1 > y0 and x1 > x0:
                out[:, y0:y1, x0:x1] += self.component(c) * sed[c][:, None, None]
        return out

    def child_models(self, sed: np.ndarray, owner: np.ndarray, n_children: int) -> np.ndarray:
        """Observed-frame model of each child (the sum of its components ``owner == k``), (K, B, H, W) float32.

        K × B × H × W pixels: for a large parent, render children one at a time (:meth:`render` with
        ``np.flatnonzero(owner == k)``) instead.
        """
        out = np.zeros((int(n_children), self.n_bands) + self.frame_shape, dtype=np.float32)
        for c in range(self.n_components):
            self.render(sed, [c], out=out[owner[c]])
        return out

    def with_bands(self, band_ok: np.ndarray) -> "ComponentModels":
        """The same blocks over all ``len(band_ok)`` bands: zero in the bands where ``band_ok`` is False."""
        out = ComponentModels.zeros(self.grown, len(band_ok), self.frame_shape)
        for c in range(self.n_components):
            out.component(c)[np.asarray(band_ok, dtype=bool)] = self.component(c)
        return out

    def scattered(self, dest: np.ndarray, total: int) -> "ComponentModels":
        """``total`` components: component ``i`` becomes ``dest[i]``; the others are empty placeholders."""
        grown = np.zeros((int(total), 4), dtype=np.int64)
        grown[dest] = self.grown
        out = ComponentModels.zeros(grown, self.n_bands, self.frame_shape)
        for i, d in enumerate(dest):
            out.component(int(d))[...] = self.component(i)
        return out
