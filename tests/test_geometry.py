"""Chip grid properties (hypothesis), ownership, box maths, georeferencing and polygon
NMS."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from geodetect.geometry import (
    Grid,
    axis_offsets,
    box_area,
    box_centres,
    box_has_area,
    box_intersection,
    boxes_overlap,
    chip_grid,
    clip_boxes,
    either_centre_inside,
    intersecting_pairs,
    lattice_offset,
    nms_polygons,
    owned_mask,
    pixel_boxes_to_map,
    pixel_boxes_to_map_coords,
    points_in_boxes,
    window_box,
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


# --- box maths -------------------------------------------------------------------------

SQUARE = np.array([0.0, 0.0, 10.0, 10.0])
# Inside, on the left, right, top and bottom edges, a corner, and outside.
POINTS = np.array([[5, 5], [0, 5], [10, 5], [5, 0], [5, 10], [0, 0], [-1, 5]], dtype=float)


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ("open", [True, False, False, False, False, False, False]),
        ("closed", [True, True, True, True, True, True, False]),
        ("half-open", [True, True, False, True, False, True, False]),
    ],
)
def test_points_in_a_box_by_how_its_edges_count(edges, expected):
    assert points_in_boxes(POINTS, SQUARE, edges=edges).tolist() == expected
    tensor = points_in_boxes(torch.tensor(POINTS), torch.tensor(SQUARE), edges=edges)
    assert tensor.tolist() == expected


def test_points_and_boxes_broadcast_and_edges_may_be_infinite():
    boxes = np.array([[-np.inf, 0, 5, np.inf], [5, 0, np.inf, np.inf]])
    points = np.array([[4.9, 1e9], [5, 3], [1e9, 0]])
    inside = points_in_boxes(points[:, None], boxes[None], edges="half-open")
    assert inside.tolist() == [[True, False], [False, True], [False, True]]
    with pytest.raises(ValueError, match="edges"):
        points_in_boxes(points, SQUARE, edges="inside")


def test_box_centres_and_areas_by_hand():
    boxes = np.array([[0, 0, 4, 2], [1, 1, 3, 5], [3, 3, 1, 5]], dtype=float)
    np.testing.assert_array_equal(box_centres(boxes), [[2, 1], [2, 3], [2, 4]])
    np.testing.assert_array_equal(box_area(boxes), [8, 8, 0])  # an inverted box has none
    assert box_has_area(boxes).tolist() == [True, True, False]
    assert box_centres(torch.tensor(boxes)).tolist() == [[2, 1], [2, 3], [2, 4]]
    assert box_area(torch.tensor(boxes)).tolist() == [8, 8, 0]


def test_intersection_overlap_and_clipping_by_hand():
    a = np.array([0.0, 0.0, 4.0, 4.0])
    np.testing.assert_array_equal(box_intersection(a, [2, 1, 6, 3]), [2, 1, 4, 3])
    assert boxes_overlap(a, [2, 1, 6, 3])
    assert not boxes_overlap(a, [4, 0, 6, 4])  # touching along an edge
    assert not boxes_overlap(a, [2, 1, 2, 3])  # a box of no area inside
    assert not boxes_overlap(a, [5, 5, 6, 6])
    pairs = boxes_overlap(np.array([a, [5, 5, 6, 6]])[:, None], np.array([[3, 3, 8, 8]])[None])
    assert pairs.tolist() == [[True], [True]]
    window = (0, 0, 4, 10)
    np.testing.assert_array_equal(clip_boxes(np.array([-2, 3, 5, 12.0]), window), [0, 3, 4, 10])
    outside = clip_boxes(np.array([6, 1, 8, 2.0]), window)
    np.testing.assert_array_equal(outside, [4, 1, 4, 2])
    assert not box_has_area(outside)


def test_a_centre_inside_the_other_box():
    pool = np.array([0.0, 0.0, 10.0, 10.0])
    # A second box around the centre, a spa at the corner, a neighbour beside it, and
    # a box whose centre lies on the pool's edge (strictly inside only counts).
    others = np.array([[4, 4, 6, 6], [-2, -2, 4, 4], [8, 0, 18, 10], [5, 0, 15, 10]], dtype=float)
    expected = [True, True, False, False]
    assert either_centre_inside(pool, others).tolist() == expected
    assert either_centre_inside(others, pool).tolist() == expected
    assert either_centre_inside(torch.tensor(pool), torch.tensor(others)).tolist() == expected


def test_intersecting_pairs_include_touching_boxes():
    a = np.array([[0, 0, 1, 1], [5, 5, 6, 6]], dtype=float)
    b = np.array([[1, 0, 2, 1], [10, 10, 11, 11], [5.5, 5.5, 7, 7]], dtype=float)
    i, j = intersecting_pairs(a, b)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 0), (1, 2)]
    assert [len(x) for x in intersecting_pairs(a, np.zeros((0, 4)))] == [0, 0]


def test_window_box():
    assert window_box(2, 3, 4, 5) == (3, 2, 8, 6)


def _pixels(box) -> np.ndarray:
    """The pixels of a 12 x 12 grid an integer box covers."""
    mask = np.zeros((12, 12), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


integer_box = st.tuples(*[st.integers(0, 12)] * 4).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
)


@settings(max_examples=300, deadline=None)
@given(integer_box, integer_box)
def test_integer_boxes_overlap_and_areas_as_their_pixels_do(a, b):
    shared = _pixels(a) & _pixels(b)
    assert bool(boxes_overlap(a, b)) == shared.any()
    assert box_area(box_intersection(a, b)) == shared.sum()
    assert box_area(np.array(a, dtype=float)) == _pixels(a).sum()
