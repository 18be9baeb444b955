"""Chip sizes and overlaps come from the typical object, not the largest; objects larger
than that are still learnt whole and found once, whole."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from test_detect import _match

from geodetect.detect import default_overlap, detect
from geodetect.geometry import cut_mask, merge_pieces, pixel_boxes_to_map
from geodetect.io.labels import LabelSource
from geodetect.model import ModelSpec
from geodetect.train import default_chip_size, load_labelled, prepare_training_data
from geodetect.train.augment import Augmentation

from conftest import NORTH_UP, make_oracle, paint_boxes, random_boxes, write_geotiff


def _label_scene(tmp_path, boxes, *, size=600):
    tif = write_geotiff(tmp_path / "scene.tif", paint_boxes(size, size, boxes), transform=NORTH_UP)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=list(pixel_boxes_to_map(boxes, NORTH_UP)), crs=32617).to_file(labels)
    return tif, labels


def test_an_outlier_object_changes_neither_chip_size_nor_overlap(tmp_path):
    rng = np.random.default_rng(3)
    small = random_boxes(rng, 600, 600, 40, min_size=10, max_size=24, gap=4)
    small = small[(small[:, 0] > 260) | (small[:, 1] > 260)]  # room for the outlier
    outlier = np.array([[10, 10, 230, 200]])
    typical = []
    for boxes in (small, np.concatenate([small, outlier])):
        tif, labels = _label_scene(tmp_path, boxes)
        labelled = load_labelled(LabelSource.of([tif], labels))
        typical.append(labelled.typical_object_px)
        assert labelled.max_object_px == pytest.approx(np.max(boxes[:, 2:] - boxes[:, :2]))
    assert typical[0] <= 24 and typical[1] <= 25  # one object in 30-40 moves nothing
    assert default_chip_size(typical[0]) == default_chip_size(typical[1]) == 128
    spec = ModelSpec(
        classes=["pool"], band_mean=[0.0], band_std=[1.0], band_names=["b"], chip_size=128
    )
    overlaps = {
        default_overlap(
            ModelSpec(**{**spec.__dict__, "typical_object_px": t, "max_object_px": 220}), 512
        )
        for t in typical
    }
    assert overlaps == {32}


def test_an_object_larger_than_the_chip_is_learnt_whole_from_a_shrunk_window(tmp_path):
    boxes = np.array([[300, 300, 330, 320], [100, 120, 300, 260], [420, 40, 450, 62]])
    tif, labels = _label_scene(tmp_path, boxes)
    aug = Augmentation(brightness=0.0, contrast=0.0, colour=0.0, noise=0.0, scale=0.1)
    # at the raster's own GSD (by default, objects this large in pixels train coarser)
    labelled = load_labelled(LabelSource.of([tif], labels), gsd=NORTH_UP.a)
    data = prepare_training_data(labelled, chip_size=64, val_fraction=0.0, augmentation=aug)
    big = [i for i, item in enumerate(data.train.items) if item.anchor == 1]
    assert big and data.train.items[big[0]].size >= 1.25 * 200
    threshold = (150 - data.band_mean[0]) / data.band_std[0]
    for epoch in range(3):
        data.train.set_epoch(epoch)
        image, target = data.train[big[0]]
        assert image.shape[-1] == 64
        sides = (target["boxes"][:, 2:] - target["boxes"][:, :2]).max(dim=1).values
        # the 200-px object is whole, shrunk by about 64 / (1.25 * 200)
        assert sides.max() == pytest.approx(200 * 64 / data.train.window(big[0])[3], rel=0.2)
        whole = target["boxes"][sides.argmax()].round().int().tolist()
        x1, y1, x2, y2 = whole
        assert x1 > 0 and y1 > 0 and x2 < 64 and y2 < 64
        assert (image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] > threshold).float().mean() > 0.95


def test_cut_mask_flags_boxes_at_interior_edges_only():
    boxes = np.array([[0, 10, 20, 30], [10, 10, 20, 20], [50, 50, 64, 60], [30, 61, 40, 64]])
    inner = (16.0, 16.0, 48.0, 48.0)
    assert cut_mask(boxes, inner, size=64).tolist() == [True, False, True, True]
    # the scene's own edges (infinite core sides) never cut
    corner = (-np.inf, -np.inf, 48.0, 48.0)
    assert cut_mask(boxes, corner, size=64).tolist() == [False, False, True, True]


def test_merge_pieces_joins_pieces_and_drops_those_inside_a_whole_box():
    # chips of 64 px at a stride of 40 (overlap 24): chip k covers x in [40 k, 40 k + 64)
    def window(col, row):
        return [40 * col, 40 * row, 40 * col + 64, 40 * row + 64]

    boxes = np.array(
        [
            [50, 45, 104, 60],  # object A (50-130 wide), cut by chip (1, 1)'s right edge
            [80, 46, 130, 59],  # ... and by chip (2, 1)'s left edge
            [85, 44, 104, 52],  # another object in chip (1, 1), cut there too
            [170, 170, 190, 185],  # object B whole in chip (4, 4)
            [170, 170, 184, 185],  # ... and cut by chip (3, 4)'s right edge
            [300, 300, 320, 320],  # a lone piece: kept as it is
        ],
        dtype=float,
    )
    windows = np.array(
        [window(1, 1), window(2, 1), window(1, 1), window(4, 4), window(3, 4), window(7, 7)],
        dtype=float,
    )
    keep, merged = merge_pieces(
        boxes,
        np.array([0.9, 0.8, 0.6, 0.7, 0.95, 0.5]),
        np.zeros(6, dtype=int),
        np.array([True, True, True, False, True, True]),
        windows,
    )
    assert keep.tolist() == [0, 2, 3, 5]
    assert merged.tolist() == [
        [50, 45, 130, 60],
        [85, 44, 104, 52],
        [170, 170, 190, 185],
        [300, 300, 320, 320],
    ]


@pytest.mark.parametrize("shift", [0, 13, 41])
def test_objects_larger_than_the_overlap_are_found_once_whole(tmp_path, shift):
    """With the default overlap for a typical 20 px object, 40-90 px objects straddle
    seams wherever the grid falls: each must come out once, with its whole box."""
    oracle = make_oracle(chip_size=128, typical_object_px=20, max_object_px=90)
    assert default_overlap(oracle.spec, 128) == 32
    rng = np.random.default_rng(shift)
    small = random_boxes(rng, 400, 400, 25, min_size=8, max_size=20, gap=6)
    big = np.array([[90 + shift, 20, 180 + shift, 70], [20, 100 + shift, 70, 160 + shift]])
    big = np.concatenate([big, [[200, 200, 250, 290], [230, 330, 320, 380]]])
    clear = ~np.array(
        [
            any(
                min(s[2], b[2]) + 6 > max(s[0], b[0]) and min(s[3], b[3]) + 6 > max(s[1], b[1])
                for b in big
            )
            for s in small
        ]
    )
    boxes = np.concatenate([small[clear], big])
    transform = NORTH_UP @ Affine.translation(shift, -shift)
    path = write_geotiff(tmp_path / "s.tif", paint_boxes(400, 400, boxes), transform=transform)
    layer = detect([path], oracle, chip_size=128, progress=False)  # default reader processes
    _match(layer, pixel_boxes_to_map(boxes, transform))


def test_default_overlap_of_older_model_files_uses_the_largest_object():
    spec = ModelSpec(classes=["pool"], band_mean=[0.0], band_std=[1.0], band_names=["b"])
    old = ModelSpec(**{**spec.__dict__, "max_object_px": 100})
    assert default_overlap(old, 512) == 120
