"""Source detection on a patch: background, multi-band detection image, footprints and peaks.

The per-patch pipeline calls, on the pixels of a patch's *outer* box (inner
box plus overlap), one band-first cube each of images (counts), variance
(counts²) and mask bits (:data:`hpcblend.io.masks.MASK_PLANES`), one module per step:

1. :func:`~hpcblend.detect.background.estimate_background` — a smooth background per band
   (SExtractor's mesh-and-filter estimator through ``sep``; Bertin & Arnouts
   1996, A&AS 117, 393; Barbary 2016, JOSS 1, 58), subtracted;
2. :func:`~hpcblend.detect.image.detection_image` — one image from all bands (inverse-variance
   weighted mean, or a χ² image, Szalay, Connolly & Szokoly 1999, AJ 117, 68)
   with its per-pixel noise;
3. :func:`~hpcblend.detect.footprints.detect_footprints` — the detection
   image is correlated with a PSF-like kernel (the matched filter,
   :func:`~hpcblend.detect.image.significance_image`, giving a significance
   image in units of its own noise σ), thresholded and segmented
   (``sep.extract``), small regions dropped, regions grown (footprints that touch after growing become one),
   and peaks found in each footprint as prominent local maxima of the
   significance image;
4. :func:`~hpcblend.detect.cutout.footprint_to_blend` — one footprint cut out as the deblender's
   :class:`~hpcblend.io.blends.BlendData`.

Peaks are found once, on the multi-band detection image, so every band sees
the same sources at the same positions. The HSC pipeline detects in every band
separately and then merges footprints and peaks across bands
(``mergeCoaddDetections``; Bosch et al. 2018, PASJ 70, S5, Sect. 3.3 and 4.7);
with a single multi-band detection there is nothing to merge, so no per-band
peak merging is done here. A source detected in only one band still enters
the detection image (with that band's weight), and the χ² image detects
sources of any colour.

Conventions: arrays band-first ``(B, H, W)``; coordinates ``(y, x)`` in pixels
of the patch-outer frame (array indices of the input cube), pixel centres at
integer coordinates; images in counts, variance in counts², significance in
units of its noise σ (dimensionless).
"""

from hpcblend.detect.background import BackgroundResult, estimate_background
from hpcblend.detect.cutout import footprint_to_blend
from hpcblend.detect.footprints import DetectionError, Footprint, detect_footprints, is_isolated
from hpcblend.detect.image import DETECTION_METHODS, detection_image, gaussian_kernel, significance_image

__all__ = [
    "Footprint",
    "BackgroundResult",
    "DetectionError",
    "DETECTION_METHODS",
    "estimate_background",
    "detection_image",
    "gaussian_kernel",
    "significance_image",
    "detect_footprints",
    "footprint_to_blend",
    "is_isolated",
]
