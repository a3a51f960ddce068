"""Proximal operators on morphologies (Numba, ``nogil``, cached).

All operators act in place on a full-frame morphology ``morph`` (H, W)
restricted to a box ``(y0, y1, x0, x1)`` (half-open, pixels) that contains the
source's peak ``(cy, cx)``; pixels outside the box are zero by construction.

Monotonicity follows scarlet's weighted radial monotonicity (Melchior et al.
2018, Sect. 2.3, "monotonicity"): pixels are visited outward from the peak in
Chebyshev rings, and each pixel is capped at the weighted mean of its
neighbours that lie nearer the peak within 45° of the direction to it, the
weights being the cosines of the angles between the neighbour's offset and
that direction. Along the eight principal rays (rows, columns, diagonals)
only the on-ray neighbour qualifies, so the profile is non-increasing along
them exactly; elsewhere the cap interpolates between the two neighbours that
bracket the ray. The ring pass maps into that set but not to its nearest point;
:func:`prox_threshold_monotonic_exact` finds the nearest point (the Euclidean projection).
"""

from __future__ import annotations

import math

from numba import njit

__all__ = [
    "prox_monotonic",
    "prox_threshold_monotonic",
    "prox_threshold_monotonic_exact",
    "monotonic_rings",
    "scale_nonzero_box",
    "prox_symmetric",
    "prox_threshold",
    "prox_positive",
    "nonzero_box",
    "monotonic_reference",
]

_COS45 = 0.7071067811865476 + 1e-9


@njit(nogil=True, cache=True)
def monotonic_reference(morph, y, x, cy, cx, y0, y1, x0, x1):
    """Weighted mean of the neighbours of pixel (y, x) nearer the peak (cy, cx).

    Parameters
    ----------
    morph : ndarray, shape (H, W)
    y, x : int
        Pixel, not the peak.
    cy, cx : int
        Peak pixel.
    y0, y1, x0, x1 : int
        Box bounds (half-open); neighbours outside it count as zero.

    Returns
    -------
    ref : float
        The cap for pixel (y, x); ``-1.0`` if no neighbour qualifies (not
        reachable for a pixel other than the peak).
    """
    dy = cy - y
    dx = cx - x
    r = math.sqrt(dy * dy + dx * dx)
    sy = 0 if dy == 0 else (1 if dy > 0 else -1)
    sx = 0 if dx == 0 else (1 if dx > 0 else -1)
    wsum = 0.0
    vsum = 0.0
    # candidate inward neighbours: (sy, 0), (0, sx), (sy, sx)
    for k in range(3):
        if k == 0:
            oy, ox = sy, 0
        elif k == 1:
            oy, ox = 0, sx
        else:
            oy, ox = sy, sx
        if oy == 0 and ox == 0:
            continue
        if k == 2 and (oy == 0 or ox == 0):
            continue
        norm = math.sqrt(oy * oy + ox * ox)
        cos = (oy * dy + ox * dx) / (norm * r)
        if cos > _COS45:
            ny = y + oy
            nx = x + ox
            v = 0.0
            if ny >= y0 and ny < y1 and nx >= x0 and nx < x1:
                v = morph[ny, nx]
            wsum += cos
            vsum += cos * v
    if wsum == 0.0:
        return -1.0
    return vsum / wsum


_INV_SQRT2 = 0.7071067811865476


@njit(nogil=True, cache=True)
def _inner_neighbours(y, x, cy, cx):
    """The inner neighbours of pixel (y, x) (not the peak) that :func:`monotonic_reference` averages.

    With ``ady = |y − cy|``, ``adx = |x − cx|``: on the axes and diagonals one neighbour qualifies;
    for ``ady > adx`` the vertical (cosine ``ady/r``) and the diagonal neighbour (cosine
    ``(ady + adx)/(√2 r)``) do, and the common ``1/r`` cancels in the weighted mean (symmetrically
    for ``adx > ady``). Returns ``(py, px, wp, qy, qx, wq)``: the cap is
    ``(wp · morph[py, px] + wq · morph[qy, qx]) / (wp + wq)`` (``wq = 0`` and ``(qy, qx) = (py, px)``
    when one neighbour qualifies). Inner neighbours of a box pixel lie in the box (it holds the peak).
    """
    ady = y - cy
    sy = -1
    if ady < 0:
        ady = -ady
        sy = 1
    adx = x - cx
    sx = -1
    if adx < 0:
        adx = -adx
        sx = 1
    if adx == 0:
        return y + sy, x, 1.0, y + sy, x, 0.0
    if ady == 0:
        return y, x + sx, 1.0, y, x + sx, 0.0
    if ady == adx:
        return y + sy, x + sx, 1.0, y + sy, x + sx, 0.0
    wd = (ady + adx) * _INV_SQRT2
    if ady > adx:
        return y + sy, x, float(ady), y + sy, x + sx, wd
    return y, x + sx, float(adx), y + sy, x + sx, wd


@njit(nogil=True, cache=True)
def _monotonic_cap(morph, y, x, cy, cx, y0, y1, x0, x1):
    """:func:`monotonic_reference` in closed form (no square roots; :func:`_inner_neighbours`)."""
    py, px, wp, qy, qx, wq = _inner_neighbours(y, x, cy, cx)
    vp = morph[py, px] if (py >= y0 and py < y1 and px >= x0 and px < x1) else 0.0
    if wq == 0.0:
        return vp
    vq = morph[qy, qx] if (qy >= y0 and qy < y1 and qx >= x0 and qx < x1) else 0.0
    return (wp * vp + wq * vq) / (wp + wq)


@njit(nogil=True, cache=True)
def _zero_outside_ring(morph, ring, cy, cx, y0, y1, x0, x1):
    """Zero the box pixels at Chebyshev distance > ``ring`` from the peak."""
    for y in range(y0, y1):
        if y < cy - ring or y > cy + ring:
            for x in range(x0, x1):
                morph[y, x] = 0.0
        else:
            for x in range(x0, min(cx - ring, x1)):
                morph[y, x] = 0.0
            for x in range(max(cx + ring + 1, x0), x1):
                morph[y, x] = 0.0


@njit(nogil=True, cache=True)
def monotonic_rings(source, out, threshold, symmetric, cy, cx, y0, y1, x0, x1):
    """Thresholded, weighted-monotonic copy of ``source`` into ``out``, ring by ring from the peak.

    Pixels are visited in Chebyshev rings of growing radius from the peak;
    each pixel's value is taken from ``source`` (with ``symmetric``, the
    smaller of it and its mirror through the peak, when the mirror is inside
    the box), becomes ``0`` if below ``threshold``, else
    ``max(min(value, ref), 0)`` with ``ref`` the weighted mean of its inner
    neighbours in ``out`` (:func:`monotonic_reference`, Melchior et al.
    2018, Sect. 2.3). A pixel's qualifying neighbours all lie in the
    previous ring, so one pass is exact; the pass stops at the first ring
    left empty, since every pixel beyond it would be zero too. ``source`` may
    be ``out`` (in place). The peak pixel is not visited.

    Parameters
    ----------
    source, out : ndarray, shape (H, W), float32 or float64
    threshold : float
    symmetric : bool
    cy, cx : int
        Peak pixel (y, x); must lie inside the box.
    y0, y1, x0, x1 : int
        Box (half-open, pixels).

    Returns
    -------
    ring : int
        Chebyshev radius of the outermost ring that kept a non-zero pixel;
        pixels of ``out`` beyond ring ``ring + 1`` were not written.
    """
    rmax = max(cy - y0, y1 - 1 - cy, cx - x0, x1 - 1 - cx)
    last = 0
    for ring in range(1, rmax + 1):
        ya = max(cy - ring, y0)
        yb = min(cy + ring, y1 - 1)
        xa = max(cx - ring, x0)
        xb = min(cx + ring, x1 - 1)
        alive = False
        for y in range(ya, yb + 1):
            if y == cy - ring or y == cy + ring:  # top and bottom rows of the ring: every pixel
                x = xa
                xstep = 1
            else:  # rows between: the two side pixels
                x = cx - ring
                xstep = 2 * ring
            while x <= xb:
                if x >= x0:
                    v = source[y, x]
                    if symmetric:
                        my = 2 * cy - y
                        mx = 2 * cx - x
                        if my >= y0 and my < y1 and mx >= x0 and mx < x1 and source[my, mx] < v:
                            v = source[my, mx]
                    if v < threshold or v <= 0.0:
                        v = 0.0
                    else:
                        ref = _monotonic_cap(out, y, x, cy, cx, y0, y1, x0, x1)
                        if v > ref:
                            v = ref if ref > 0.0 else 0.0
                    out[y, x] = v
                    if v > 0.0:
                        alive = True
                x += xstep
        if not alive:
            return last
        last = ring
    return last


@njit(nogil=True, cache=True)
def prox_threshold_monotonic(morph, threshold, cy, cx, y0, y1, x0, x1):
    """Threshold, positivity and weighted radial monotonicity in one pass, in place.

    :func:`monotonic_rings` of the morphology onto itself, then the box
    pixels beyond the first empty ring are cleared without computing caps.
    The peak pixel is left as it is. Equivalent to :func:`prox_threshold`
    followed by :func:`prox_monotonic` on non-negative images.

    Parameters
    ----------
    morph : ndarray, shape (H, W), float32 or float64
        Modified in place inside the box.
    threshold : float
        Morphology units; ``0`` (or less) keeps every non-negative pixel.
    cy, cx : int
        Peak pixel (y, x); must lie inside the box.
    y0, y1, x0, x1 : int
        Box (half-open, pixels).

    Returns
    -------
    ring : int
        Chebyshev radius of the outermost ring that kept a non-zero pixel.
    """
    last = monotonic_rings(morph, morph, threshold, False, cy, cx, y0, y1, x0, x1)
    _zero_outside_ring(morph, last + 1, cy, cx, y0, y1, x0, x1)
    return last


@njit(nogil=True, cache=True)
def prox_monotonic(morph, cy, cx, y0, y1, x0, x1):
    """Project a morphology onto weighted radial monotonicity about its peak, in place.

    Pixels are visited in Chebyshev rings of growing radius from the peak,
    and each is replaced by ``max(min(value, ref), 0)`` with ``ref`` from
    :func:`monotonic_reference`. A pixel's qualifying inner neighbours all
    lie in the previous ring, so one pass suffices and the operator is
    idempotent. The peak pixel is left as it is.

    Parameters
    ----------
    morph : ndarray, shape (H, W), float32 or float64
        Modified in place inside the box.
    cy, cx : int
        Peak pixel (y, x); must lie inside the box.
    y0, y1, x0, x1 : int
        Box (half-open, pixels).
    """
    prox_threshold_monotonic(morph, 0.0, cy, cx, y0, y1, x0, x1)


@njit(nogil=True, cache=True)
def prox_symmetric(morph, cy, cx, y0, y1, x0, x1):
    """Point-symmetrise a morphology about its peak, in place (scarlet's symmetry constraint).

    The Euclidean projection onto point-symmetric images: each pair of pixels
    mirrored through the peak is set to the mean of the two (Melchior et al.
    2018, Sect. 2.3). A pixel whose mirror falls outside the box pairs with
    zero, so the support becomes symmetric inside the box. (The SDSS-style
    minimum of the pair is not a projection: applied every iteration it
    ratchets the morphology down and the loss up.)

    Parameters
    ----------
    morph : ndarray, shape (H, W)
    cy, cx : int
        Peak pixel.
    y0, y1, x0, x1 : int
        Box (half-open).
    """
    for y in range(y0, y1):
        my = 2 * cy - y
        for x in range(x0, x1):
            mx = 2 * cx - x
            if my >= y0 and my < y1 and mx >= x0 and mx < x1:
                if (y, x) < (my, mx):
                    v = 0.5 * (morph[y, x] + morph[my, mx])
                    morph[y, x] = v
                    morph[my, mx] = v
            else:
                morph[y, x] = 0.0


@njit(nogil=True, cache=True)
def prox_threshold(morph, threshold, cy, cx, y0, y1, x0, x1):
    """Zero pixels below ``threshold`` inside the box (the peak pixel is kept), in place.

    Parameters
    ----------
    morph : ndarray, shape (H, W)
    threshold : float
        In morphology units (the noise level of the source's optimal
        band combination times ``bg_thresh``).
    cy, cx : int
        Peak pixel, never zeroed.
    y0, y1, x0, x1 : int
        Box (half-open).
    """
    for y in range(y0, y1):
        for x in range(x0, x1):
            if morph[y, x] < threshold and not (y == cy and x == cx):
                morph[y, x] = 0.0


@njit(nogil=True, cache=True)
def prox_positive(morph, y0, y1, x0, x1):
    """Clip negative pixels to zero inside the box, in place.

    Parameters
    ----------
    morph : ndarray, shape (H, W)
    y0, y1, x0, x1 : int
        Box (half-open).
    """
    for y in range(y0, y1):
        for x in range(x0, x1):
            if morph[y, x] < 0.0:
                morph[y, x] = 0.0


@njit(nogil=True, cache=True)
def scale_nonzero_box(morph, factor, cy, cx, y0, y1, x0, x1):
    """Multiply the positive pixels inside a box by ``factor`` (in place) and return their bounding box.

    Parameters
    ----------
    morph : ndarray, shape (H, W)
    factor : float
        1.0 leaves the pixels as they are.
    cy, cx : int
        Peak pixel: always inside the returned box.
    y0, y1, x0, x1 : int
        Box searched (half-open, pixels).

    Returns
    -------
    (ny0, ny1, nx0, nx1) : tuple of int
        Half-open bounds in pixels of the positive pixels and the peak.
    """
    ny0, ny1, nx0, nx1 = cy, cy + 1, cx, cx + 1
    for y in range(y0, y1):
        for x in range(x0, x1):
            v = morph[y, x]
            if v > 0.0:
                if factor != 1.0:
                    morph[y, x] = v * factor
                if y < ny0:
                    ny0 = y
                if y >= ny1:
                    ny1 = y + 1
                if x < nx0:
                    nx0 = x
                if x >= nx1:
                    nx1 = x + 1
    return ny0, ny1, nx0, nx1


@njit(nogil=True, cache=True)
def nonzero_box(morph, cy, cx, y0, y1, x0, x1):
    """Bounding box of the non-zero pixels inside a box, always holding the peak.

    Returns
    -------
    (ny0, ny1, nx0, nx1) : tuple of int
        Half-open bounds in pixels.
    """
    return scale_nonzero_box(morph, 1.0, cy, cx, y0, y1, x0, x1)


@njit(nogil=True, cache=True)
def _dual_step(morph, dual, y, x, cy, cx):
    """One coordinate step of Hildreth's method on pixel (y, x)'s monotonicity constraint.

    Returns the change of its dual variable (0 when the constraint is inactive and satisfied). The
    inner neighbours of a box pixel lie in the box (:func:`_inner_neighbours`).
    """
    py, px, wp, qy, qx, wq = _inner_neighbours(y, x, cy, cx)
    a = wp / (wp + wq)
    b = wq / (wp + wq)
    ref = a * morph[py, px]
    norm2 = 1.0 + a * a
    if b > 0.0:
        ref += b * morph[qy, qx]
        norm2 += b * b
    lam = dual[y, x]
    new = lam + (morph[y, x] - ref) / norm2
    if new < 0.0:
        new = 0.0
    d = new - lam
    if d != 0.0:
        dual[y, x] = new
        morph[y, x] -= d
        morph[py, px] += a * d
        if b > 0.0:
            morph[qy, qx] += b * d
    return d


@njit(nogil=True, cache=True)
def prox_threshold_monotonic_exact(morph, dual, threshold, cy, cx, y0, y1, x0, x1, max_sweeps, tol):
    """Euclidean projection onto weighted radial monotonicity (after a threshold), in place.

    The set is the one :func:`prox_threshold_monotonic` maps into, every pixel at most the weighted
    mean of its inner neighbours (:func:`monotonic_reference`, Melchior et al. 2018, Sect. 2.3), but
    the point returned is the nearest one in it: a pixel above the cap its inner neighbours set may
    raise them instead of being clipped (the ring pass only ever lowers pixels, which can take a
    fit's every step uphill, :func:`hpcblend.kernels.fit.fit_blend`, Notes). Pixels of the box below
    ``threshold`` or below 0 (not the peak) are zeroed first. Solved by Hildreth's dual coordinate
    ascent (Hildreth 1957, Naval Research Logistics Quarterly 4, 79): ``morph = y − Aᵀλ``, one
    multiplier ``λ_i ≥ 0`` per pixel for its constraint ``x_i − cap_i(x) ≤ 0``, each set in turn to
    satisfy its constraint or to 0, swept ring by ring out from the peak and back in, until no
    multiplier moves by more than ``tol`` times the peak's value or after ``max_sweeps`` sweeps.
    Started from the multipliers given (warm start: a fit's next step needs only a few sweeps).
    Negative pixels are clipped at the end. Pixels that are 0 with no multiplier are skipped.

    Parameters
    ----------
    morph : ndarray, shape (H, W), float32 or float64
        Modified in place inside the box.
    dual : ndarray, shape (H, W), float32 or float64
        The multipliers: read as the starting point (zeros for a cold start) and left holding the
        final ones; zero outside the box.
    threshold : float
        Morphology units; 0 keeps every non-negative pixel.
    cy, cx : int
        Peak pixel (y, x); must lie inside the box. It has no constraint of its own.
    y0, y1, x0, x1 : int
        Box (half-open, pixels); neighbours outside it count as zero.
    max_sweeps : int
    tol : float
        0 runs ``max_sweeps`` sweeps.

    Returns
    -------
    sweeps : int
        Sweeps done.
    """
    for y in range(y0, y1):
        for x in range(x0, x1):
            if (morph[y, x] < threshold or morph[y, x] < 0.0) and not (y == cy and x == cx):
                morph[y, x] = 0.0
    for y in range(y0, y1):  # warm start: morph = y − Aᵀλ
        for x in range(x0, x1):
            lam = dual[y, x]
            if lam > 0.0 and not (y == cy and x == cx):
                py, px, wp, qy, qx, wq = _inner_neighbours(y, x, cy, cx)
                morph[y, x] -= lam
                morph[py, px] += wp / (wp + wq) * lam
                if wq > 0.0:
                    morph[qy, qx] += wq / (wp + wq) * lam
    rmax = max(cy - y0, y1 - 1 - cy, cx - x0, x1 - 1 - cx)
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        dmax = 0.0
        for step in range(2 * rmax):
            ring = step + 1 if step < rmax else 2 * rmax - step
            ya = max(cy - ring, y0)
            yb = min(cy + ring, y1 - 1)
            for y in range(ya, yb + 1):
                if y == cy - ring or y == cy + ring:
                    x = max(cx - ring, x0)
                    xstep = 1
                else:
                    x = cx - ring
                    xstep = 2 * ring
                while x <= min(cx + ring, x1 - 1):
                    if x >= x0 and (morph[y, x] > 0.0 or dual[y, x] > 0.0):
                        d = abs(_dual_step(morph, dual, y, x, cy, cx))
                        if d > dmax:
                            dmax = d
                    x += xstep
        if dmax <= tol * abs(morph[cy, cx]):
            break
    for y in range(y0, y1):
        for x in range(x0, x1):
            if morph[y, x] < 0.0:
                morph[y, x] = 0.0
    return sweeps
