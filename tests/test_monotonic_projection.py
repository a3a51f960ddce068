"""The exact weighted-monotonicity projection (``kernels.operators.prox_threshold_monotonic_exact``).

Checked against what makes a point the Euclidean projection onto a polyhedron, the KKT conditions,
computed here in plain NumPy from the plain-Python cap of ``fit_reference`` (not from the kernel's
own neighbour weights), and against a general-purpose solver (SLSQP) on a small box.
"""

import numpy as np
import pytest
from scipy.optimize import minimize

from hpcblend.kernels import operators
from fit_reference import monotonic_cap


def _cap_matrix(shape, cy, cx, box):
    """Rows ``C[i]`` with ``cap_i(x) = C[i] · x.ravel()`` for every box pixel but the peak, and their pixels."""
    h, w = shape
    y0, y1, x0, x1 = box
    pixels = [(y, x) for y in range(y0, y1) for x in range(x0, x1) if (y, x) != (cy, cx)]
    rows = np.zeros((len(pixels), h * w))
    for j in range(h * w):  # the cap is linear in the image: its value on each unit image is one column
        unit = np.zeros(shape)
        unit.flat[j] = 1.0
        for i, (y, x) in enumerate(pixels):
            rows[i, j] = monotonic_cap(unit, y, x, cy, cx, y0, y1, x0, x1)
    return rows, pixels


def _galaxy_with_knot(shape, cy, cx, seed, noise=0.03):
    """An exponential profile about (cy, cx), a bright knot off the peak and noise: far from monotonic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.exp(-np.hypot(yy - cy, xx - cx) / 2.5)
    ky, kx = cy + rng.integers(2, 4), cx - rng.integers(1, 4)
    img += 0.6 * np.exp(-((yy - ky) ** 2 + (xx - kx) ** 2) / 2.0)
    img += noise * rng.normal(size=shape)
    img[cy, cx] = img.max() + 0.1
    return img


def _project(img, threshold, cy, cx, box, dual=None, sweeps=20000, tol=1e-13):
    out = img.copy()
    dual = np.zeros(img.shape) if dual is None else dual
    n = operators.prox_threshold_monotonic_exact(out, dual, threshold, cy, cx, *box, sweeps, tol)
    return out, dual, n


@pytest.mark.parametrize("threshold", [0.0, 0.05])
@pytest.mark.parametrize("seed", range(3))
def test_exact_projection_meets_kkt_conditions(seed, threshold):
    shape, (cy, cx), box = (15, 14), (7, 6), (1, 14, 0, 13)
    img = _galaxy_with_knot(shape, cy, cx, seed)
    out, dual, n = _project(img, threshold, cy, cx, box)
    assert n < 20000  # converged
    # the point projected: the box below the threshold (or negative) zeroed, the peak kept
    target = img.copy()
    y0, y1, x0, x1 = box
    inside = np.zeros(shape, bool)
    inside[y0:y1, x0:x1] = True
    low = inside & ((img < threshold) | (img < 0))
    low[cy, cx] = False
    target[low] = 0.0
    caps, pixels = _cap_matrix(shape, cy, cx, box)
    rows = -caps
    for i, (y, x) in enumerate(pixels):
        rows[i, y * shape[1] + x] += 1.0  # constraint i: x_i − cap_i(x) <= 0
    lam = np.array([dual[y, x] for y, x in pixels])
    slack = rows @ out.ravel()
    scale = out[cy, cx]
    assert np.all(lam >= 0)
    assert slack.max() < 1e-9 * scale  # feasible
    assert np.abs(lam * slack).max() < 1e-9 * scale ** 2  # complementary slackness
    np.testing.assert_allclose(out.ravel(), target.ravel() - rows.T @ lam, atol=1e-9 * scale)  # stationarity
    assert np.all(out[~inside] == img[~inside])  # nothing outside the box changes
    # the ring pass maps into the same set, but not to its nearest point
    ring = img.copy()
    operators.prox_threshold_monotonic(ring, threshold, cy, cx, *box)
    assert np.sum((out - target) ** 2) < 0.9 * np.sum((ring - target) ** 2)


def test_exact_projection_matches_slsqp():
    shape, (cy, cx), box = (7, 7), (3, 3), (0, 7, 0, 7)
    img = _galaxy_with_knot(shape, cy, cx, seed=4, noise=0.1)
    out, _, _ = _project(img, 0.0, cy, cx, box)
    target = np.maximum(img, 0.0)  # negative pixels are zeroed before the projection
    caps, pixels = _cap_matrix(shape, cy, cx, box)
    index = np.array([y * shape[1] + x for y, x in pixels])
    constraints = [{"type": "ineq", "fun": lambda v: caps @ v - v[index]}, {"type": "ineq", "fun": lambda v: v}]
    solved = minimize(lambda v: np.sum((v - target.ravel()) ** 2), target.ravel(), method="SLSQP",
                      jac=lambda v: 2 * (v - target.ravel()), constraints=constraints,
                      options={"maxiter": 1000, "ftol": 1e-15})
    assert solved.success, solved.message
    np.testing.assert_allclose(out.ravel(), solved.x, atol=1e-6)


def test_exact_projection_warm_start_reaches_the_same_point():
    """The fit keeps the multipliers from one step to the next: started from another image's, the
    sweeps still end at this image's projection."""
    shape, (cy, cx), box = (15, 14), (7, 6), (0, 15, 0, 14)
    first = _galaxy_with_knot(shape, cy, cx, seed=7)
    second = first + 0.005 * np.random.default_rng(8).normal(size=shape)
    _, dual, _ = _project(first, 0.0, cy, cx, box)
    warm, _, n_warm = _project(second, 0.0, cy, cx, box, dual=dual.copy())
    cold, _, n_cold = _project(second, 0.0, cy, cx, box)
    np.testing.assert_allclose(warm, cold, atol=1e-9)
    assert n_warm < n_cold
