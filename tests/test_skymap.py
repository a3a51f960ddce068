"""Tests of hpcblend.skymap: boxes, patch grid, peak ownership, ids."""

import numpy as np
import pytest

from hpcblend.errors import ConfigError, HpcblendError, InputError
from hpcblend.geometry import Box
from hpcblend.skymap import (MAX_PATCH, MAX_RUNNING, MAX_TRACT, PatchInfo, decode_id, encode_id,
                             make_patches, owner_index, owning_patch, patch_grid_shape, pixel_index)


# -- Box ------------------------------------------------------------------------


def test_box_basics():
    b = Box((10, 20), (5, 8))
    assert b.stop == (15, 28)
    assert b.area == 40
    assert b.slices == (slice(10, 15), slice(20, 28))
    assert b.contains(10, 20) and b.contains(14, 27)
    assert not b.contains(15, 20) and not b.contains(10, 28)  # half-open
    assert not b.contains(9, 20) and not b.contains(10, 19)
    # fractional positions: pixel floor(v + 0.5)
    assert b.contains(9.5, 19.5) and not b.contains(9.49, 20)
    assert b.contains(14.49, 27.49) and not b.contains(14.5, 20)
    ys = np.array([10, 15, 12.2])
    xs = np.array([20, 21, 27.6])
    np.testing.assert_array_equal(b.contains(ys, xs), [True, False, False])


def test_box_intersection_grow_slices_in():
    a = Box((0, 0), (10, 10))
    b = Box((5, -3), (10, 6))
    c = a & b
    assert c == Box((5, 0), (5, 3))
    assert a.intersection(Box((20, 20), (3, 3))).is_empty
    assert a.intersection(Box((10, 0), (3, 3))).area == 0  # touching edges do not overlap
    assert a.grow(2) == Box((-2, -2), (14, 14))
    assert a.grow((1, 0)) == Box((-1, 0), (12, 10))
    assert a.contains_box(c) and not c.contains_box(a)
    arr = np.arange(100).reshape(10, 10)
    inner = Box((3, 4), (2, 2))
    outer = Box((2, 2), (6, 6))
    sub = arr[outer.slices]
    np.testing.assert_array_equal(sub[inner.slices_in(outer)], arr[inner.slices])
    with pytest.raises(ValueError):
        a.slices_in(inner)


def test_box_bad_values():
    with pytest.raises(ConfigError):
        Box((0, 0), (-1, 3))
    with pytest.raises(ConfigError):
        Box((0.5, 0), (1, 3))
    with pytest.raises(ConfigError):
        Box((0, 0, 0), (1, 3))


# -- patches ----------------------------------------------------------------------


@pytest.mark.parametrize("shape,inner,overlap", [((250, 310), 100, 10), ((200, 200), 100, 0),
                                                 ((57, 1000), (20, 300), 7), ((50, 60), 4000, 100)])
def test_inner_boxes_tile_tract(shape, inner, overlap):
    patches = make_patches(shape, inner, overlap, tract=7)
    ny, nx = patch_grid_shape(shape, inner)
    assert len(patches) == ny * nx
    cover = np.zeros(shape, dtype=np.int32)
    tract_box = Box((0, 0), shape)
    for p, patch in enumerate(patches):
        assert isinstance(patch, PatchInfo)
        assert patch.flat == p and patch.tract == 7 and patch.grid_shape == (ny, nx)
        assert patch.index == (p // nx, p % nx)
        cover[patch.inner.slices] += 1
        assert patch.outer.contains_box(patch.inner)
        assert tract_box.contains_box(patch.outer)
        # outer = inner grown by overlap, clipped
        assert patch.outer == patch.inner.grow(overlap) & tract_box
    # union == tract, no overlap between inner boxes
    assert (cover == 1).all()
    # last row / column may be smaller, the others are full size
    ih, iw = (inner, inner) if isinstance(inner, int) else inner
    for patch in patches:
        iy, ix = patch.index
        if iy < ny - 1:
            assert patch.inner.height == ih
        if ix < nx - 1:
            assert patch.inner.width == iw


def test_ownership_borders_corners_overlaps():
    shape, inner, overlap = (250, 310), 100, 10
    patches = make_patches(shape, inner, overlap)
    # every pixel centre, inner border, corner, half-pixel edge, and overlap positions
    ys = [0, 99, 100, 199, 200, 249, 99.5, 99.49, 100.5, 199.5, -0.5, 249.49, 95.0, 105.0]
    xs = [0, 99, 100, 199, 200, 299, 300, 309, 99.5, 199.5, 299.5, -0.5, 309.49, 93.0, 107.0]
    yy, xx = np.meshgrid(np.asarray(ys, float), np.asarray(xs, float), indexing="ij")
    counts = np.zeros(yy.shape, dtype=int)
    for patch in patches:
        counts += patch.owns(yy, xx)
    assert (counts == 1).all()
    flat = owner_index(shape, inner, yy, xx)
    for y, x, f in zip(yy.ravel(), xx.ravel(), flat.ravel()):
        owner = owning_patch(patches, y, x)
        assert owner.flat == f
        assert owner.inner.contains(y, x)
        # a position in the overlap of several outer boxes still has one owner
        in_outer = [p for p in patches if p.outer.contains(y, x)]
        assert owner in in_outer
    # exact checks on a border and a corner
    assert owner_index(shape, inner, 99.5, 0) == 4  # floor(100.0) = 100 -> second row (nx = 4)
    assert owner_index(shape, inner, 99.4999, 0) == 0
    assert owner_index(shape, inner, 100, 100) == 5  # corner of four patches
    assert owner_index(shape, inner, 99, 99) == 0
    assert owning_patch(patches, 100, 100).index == (1, 1)


def test_ownership_every_pixel_vectorised():
    shape, inner = (123, 77), 30
    patches = make_patches(shape, inner, 5)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    flat = owner_index(shape, inner, yy, xx)
    for patch in patches:
        np.testing.assert_array_equal(flat == patch.flat, patch.owns(yy, xx))
        # local-frame ownership of positions inside the outer box
        ly, lx = np.mgrid[0:patch.outer.height, 0:patch.outer.width]
        own_local = patch.owns_local(ly, lx)
        np.testing.assert_array_equal(own_local, flat[patch.outer.slices] == patch.flat)
    # random fractional positions: exactly one owner each
    rng = np.random.default_rng(3)
    y = rng.uniform(-0.5, shape[0] - 0.5 - 1e-9, 5000)
    x = rng.uniform(-0.5, shape[1] - 0.5 - 1e-9, 5000)
    n_owners = sum(p.owns(y, x).astype(int) for p in patches)
    assert (n_owners == 1).all()
    assert (owner_index(shape, inner, y, x) >= 0).all()


def test_outside_and_nonfinite_positions():
    shape, inner = (100, 100), 40
    patches = make_patches(shape, inner, 5)
    np.testing.assert_array_equal(owner_index(shape, inner, [-0.51, 99.5, 50, np.nan], [0, 0, 100, 0]),
                                  [-1, -1, -1, -1])
    assert owner_index(shape, inner, -0.5, -0.5) == 0
    with pytest.raises(InputError, match="no patch"):
        owning_patch(patches, 100, 3)
    with pytest.raises(InputError):
        owning_patch(patches, np.nan, 3)
    with pytest.raises(InputError):
        owning_patch(patches, [1, 2], [3, 4])


@pytest.mark.parametrize("kwargs", [
    dict(tract_shape=(0, 100)), dict(tract_shape=(100, -5)), dict(tract_shape=100),
    dict(tract_shape=(10.5, 100)), dict(inner_size=0), dict(inner_size=-3), dict(inner_size=2.5),
    dict(inner_size=(10, 0)), dict(overlap=-1), dict(overlap=1.5), dict(tract=-1),
    dict(tract=MAX_TRACT + 1), dict(tract_shape=(100000, 100000), inner_size=100)])
def test_bad_sizes(kwargs):
    args = dict(tract_shape=(100, 100), inner_size=40, overlap=5)
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        make_patches(**args)
    assert isinstance(info.value, HpcblendError)
    # bad geometry is rejected by the other entry points too (too many patches is only an id limit)
    if ("tract_shape" in kwargs or "inner_size" in kwargs) and "overlap" not in kwargs \
            and kwargs.get("tract_shape") != (100000, 100000):
        with pytest.raises(ConfigError):
            owner_index(args["tract_shape"], args["inner_size"], 0, 0)
        with pytest.raises(ConfigError):
            patch_grid_shape(args["tract_shape"], args["inner_size"])


def test_pixel_index():
    assert pixel_index(0.49) == 0 and pixel_index(0.5) == 1 and pixel_index(-0.5) == 0
    assert pixel_index(-0.51) == -1 and pixel_index(3) == 3
    np.testing.assert_array_equal(pixel_index(np.array([1.5, 2.4999])), [2, 2])


# -- ids ------------------------------------------------------------------------------


def test_id_round_trip():
    assert encode_id(0, 0, 0) == 0
    assert encode_id(1, 0, 0) == 1 << 48
    assert encode_id(0, 1, 0) == 1 << 32
    top = encode_id(MAX_TRACT, MAX_PATCH, MAX_RUNNING)
    assert top == np.iinfo(np.int64).max
    assert decode_id(top) == (MAX_TRACT, MAX_PATCH, MAX_RUNNING)
    rng = np.random.default_rng(0)
    t = rng.integers(0, MAX_TRACT + 1, 1000)
    p = rng.integers(0, MAX_PATCH + 1, 1000)
    r = rng.integers(0, MAX_RUNNING + 1, 1000, dtype=np.int64)
    ids = encode_id(t, p, r)
    assert ids.dtype == np.int64 and (ids >= 0).all()
    t2, p2, r2 = decode_id(ids)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_array_equal(r2, r)
    # order: tract, then patch, then running
    order = np.lexsort((r, p, t))
    np.testing.assert_array_equal(np.argsort(ids, kind="stable"), order)
    patch = make_patches((300, 300), 100, 10, tract=12)[5]
    assert decode_id(patch.id_base + 17) == (12, 5, 17)


@pytest.mark.parametrize("args", [(MAX_TRACT + 1, 0, 0), (0, MAX_PATCH + 1, 0), (0, 0, MAX_RUNNING + 1),
                                  (-1, 0, 0), (0, 0, 1.5), (0, [0, -2], 0)])
def test_id_out_of_range(args):
    with pytest.raises(InputError):
        encode_id(*args)


def test_decode_negative():
    with pytest.raises(InputError):
        decode_id(-5)
