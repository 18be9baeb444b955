"""Chip grid properties (hypothesis), ownership, georeferencing and polygon NMS."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from geodetect.geometry import (
    Grid,
    axis_offsets,
    chip_grid,
    lattice_offset,
    nms_polygons,
    owned_mask,
    pixel_boxes_to_map,
    pixel_boxes_to_map_coords,
)
from geodetect.geometry.grid import covering_window, data_crop


@st.composite
def grid_args(draw):
    chip = draw(st.integers(1, 300))
    overlap = draw(st.integers(0, chip - 1))
    length = draw(st.integers(1, 3000))
    return length, chip, overlap


@settings(max_examples=300, deadline=None)
@given(grid_args())
def test_axis_offsets_cover_every_pixel_in_bounds_with_overlap(args):
    length, chip, overlap = args
    offsets = axis_offsets(length, chip, overlap)
    assert offsets[0] == 0
    assert np.all(np.diff(offsets) > 0)
    if length >= chip:
        # every chip full size and inside the scene
        assert offsets[-1] + chip == length
        assert np.all(offsets + chip <= length)
        # consecutive chips overlap by at least `overlap` (so no gaps either)
        assert np.all(offsets[:-1] + chip - offsets[1:] >= overlap)
    else:
        assert list(offsets) == [0]  # one chip, padded by the reader
    covered = np.zeros(length, dtype=bool)
    for o in offsets:
        covered[o : o + chip] = True
    assert covered.all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 700), st.integers(1, 700), st.integers(32, 256), st.data())
def test_cores_partition_the_scene(height, width, chip, data):
    overlap = data.draw(st.integers(0, chip - 1))
    grid = chip_grid(height=height, width=width, chip_size=chip, overlap=overlap)
    rng = np.random.default_rng(height * 1000 + width)
    points = rng.uniform(0, [width, height], size=(50, 2))
    owners = np.zeros(len(points), dtype=int)
    for c in grid:
        local = points - [c.col_off, c.row_off]
        boxes = np.column_stack([local, local])  # zero-size boxes centred on the points
        owned = owned_mask(boxes, c.core)
        owners += owned
        # an owned centre is inside the chip itself
        assert np.all((local[owned] >= 0) & (local[owned] <= chip))
    assert np.all(owners == 1)


def test_chip_transform_is_scene_transform_times_offset():
    t = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    grid = chip_grid(height=300, width=500, chip_size=128, overlap=32, transform=t)
    chip = grid[len(grid) - 1]
    assert chip.transform == t @ Affine.translation(chip.col_off, chip.row_off)
    assert chip.col_off + 128 == 500 and chip.row_off + 128 == 300


def test_a_window_of_a_grid_is_a_grid_on_the_same_lattice():
    grid = Grid(400, 600, Affine(0.3, 0, 500000.0, 0, -0.3, 4000000.0), crs="EPSG:32617")
    window = grid.window(100, 250, 64, 32)
    assert (window.height, window.width, window.crs) == (64, 32, "EPSG:32617")
    assert window.transform @ (0, 0) == pytest.approx(grid.transform @ (250, 100))
    assert window.offset_on(grid.transform) == (100, 250)
    assert grid.bounds == pytest.approx((500000.0, 4000000.0 - 120.0, 500180.0, 4000000.0))
    # chips are windows of the grid they cut, CRS included
    chips = grid.chips(128, 32)
    last = chips[len(chips) - 1]
    assert (
        chips.grid is grid
        and last.transform == grid.window(last.row_off, last.col_off, 128, 128).transform
    )


def test_lattice_offset_needs_the_same_pixels_and_a_whole_shift():
    lattice = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    assert lattice_offset(lattice, lattice @ Affine.translation(-3, 7)) == pytest.approx((7, -3))
    assert lattice_offset(lattice, lattice @ Affine.translation(0.5, 0)) is None
    assert lattice_offset(lattice, Affine(0.25, 0, 1000, 0, -0.25, 2000)) is None
    assert lattice_offset(lattice, lattice @ Affine.rotation(10)) is None
    # within the tolerance of floating point: on the lattice
    assert Grid(5, 5, lattice @ Affine.translation(2 + 1e-9, 0)).offset_on(lattice) == (0, 2)


def test_covering_window_holds_the_points_in_whole_pixels():
    lattice = Affine(2.0, 0, 0, 0, -2.0, 0)
    window = covering_window(lattice, np.array([3.0, 10.0]), np.array([-1.0, -6.0]))
    assert (window.height, window.width) == (3, 4)  # rows 0..3, cols 1..5 of 2 m pixels
    assert window.offset_on(lattice) == (0, 1)
    # a point exactly on a pixel edge does not add a pixel
    edge = covering_window(lattice, np.array([2.0, 6.0]), np.array([-2.0, -4.0]))
    assert (edge.height, edge.width, edge.offset_on(lattice)) == (1, 2, (1, 1))


def test_invalid_grid_arguments():
    with pytest.raises(ValueError):
        axis_offsets(100, 64, 64)
    with pytest.raises(ValueError):
        chip_grid(height=0, width=10, chip_size=64, overlap=0)
    with pytest.raises(ValueError):
        Grid(-1, 10)


def test_pixel_boxes_become_exact_map_boxes_without_half_pixel_shift():
    t = Affine(0.1, 0, 404211.9, 0, -0.1, 3285142.9)
    poly = pixel_boxes_to_map(np.array([[10, 20, 30, 60]]), t)[0]
    assert shapely.bounds(poly) == pytest.approx([404212.9, 3285136.9, 404214.9, 3285140.9])
    assert poly.exterior.is_ccw


def test_rotated_transform_gives_rotated_quadrilateral():
    t = Affine.translation(100, 200) @ Affine.rotation(30) @ Affine.scale(2, -2)
    coords = pixel_boxes_to_map_coords(np.array([[0, 0, 10, 5]]), t)[0]
    expected = [t @ (0, 0), t @ (10, 0), t @ (10, 5), t @ (0, 5)]
    assert np.allclose(coords, expected, atol=1e-9)
    poly = pixel_boxes_to_map(np.array([[0, 0, 10, 5]]), t)[0]
    assert poly.area == pytest.approx(10 * 5 * 4)
    assert poly.area < shapely.envelope(poly).area  # not an envelope
    assert poly.exterior.is_ccw


def test_nms_is_classwise_and_keeps_best():
    boxes = shapely.box([0, 1, 0, 50], [0, 0, 0, 50], [10, 11, 10, 60], [10, 10, 10, 60])
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    labels = np.array([0, 0, 1, 0])
    keep = nms_polygons(boxes, scores, labels, threshold=0.5)
    assert list(keep) == [1, 2, 3]


def test_ios_merges_a_cut_box_into_the_whole_one():
    whole = shapely.box(0, 0, 10, 10)
    cut = shapely.box(0, 0, 3, 10)  # IoU 0.3, IoS 1.0
    polys = np.array([whole, cut])
    assert len(nms_polygons(polys, np.array([0.9, 0.95]), threshold=0.5, metric="iou")) == 2
    keep = nms_polygons(polys, np.array([0.9, 0.95]), threshold=0.5, metric="ios")
    assert list(keep) == [1]


def test_nms_empty():
    assert len(nms_polygons(np.array([], dtype=object), np.array([]))) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 511), st.integers(0, 511), st.integers(1, 512), st.integers(1, 512),
    st.sampled_from([32, 64, 128]),
)  # fmt: skip
def test_a_crop_holds_every_valid_pixel_on_the_step(r0, c0, h, w, step):
    valid = np.zeros((512, 512), dtype=bool)
    valid[r0 : r0 + h, c0 : c0 + w] = True
    crop = data_crop(valid, step)
    if crop is None:  # the whole chip is worth running
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        assert rows[0] < step and cols[0] < step
        assert rows[-1] >= 512 - step and cols[-1] >= 512 - step
        return
    top, left, height, width = crop
    assert valid[top : top + height, left : left + width].sum() == valid.sum()
    assert top % step == 0 and left % step == 0
    assert height % 32 == 0 and width % 32 == 0
    assert height <= step * (-(-h // step) + 1) and width <= step * (-(-w // step) + 1)
    assert (height, width) != (512, 512)


def test_nothing_valid_is_no_crop():
    assert data_crop(np.zeros((64, 64), dtype=bool), 32) is None
