"""The whole detection path with an oracle detector: every object once, exactly placed."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine

from geodetect.detect import detect
from geodetect.geometry import pixel_boxes_to_map
from geodetect.io.raster import open_mosaics

from conftest import NORTH_UP, paint_boxes, random_boxes, write_geotiff


def _match(layer, truth_polys, tol=1e-6):
    """Assert a one-to-one match between layer geometries and truth polygons."""
    got = np.array([shapely.get_coordinates(g)[:4] for g in layer.geometry])
    want = np.array([shapely.get_coordinates(g)[:4] for g in truth_polys])
    assert len(got) == len(want), f"{len(got)} detections for {len(want)} objects"
    used = set()
    for w in want:
        d = np.abs(got - w).reshape(len(got), -1).max(axis=1)
        i = int(np.argmin(d))
        assert d[i] <= tol, f"object {w.tolist()} missed (closest off by {d[i]})"
        assert i not in used
        used.add(i)


@pytest.mark.parametrize("chip,overlap", [(64, 32), (96, 40), (128, 48)])
@pytest.mark.parametrize("shift", [0, 7, 29])
def test_every_object_once_in_map_coordinates(tmp_path, oracle, chip, overlap, shift):
    rng = np.random.default_rng(chip + shift)
    height, width = 257 + shift, 301 - shift  # the grid falls differently for each case
    boxes = random_boxes(rng, height, width, 40, max_size=30)
    transform = NORTH_UP @ Affine.translation(-shift, shift)
    path = write_geotiff(
        tmp_path / "scene.tif", paint_boxes(height, width, boxes), transform=transform
    )
    layer = detect([path], oracle, chip_size=chip, overlap=overlap, workers=0, progress=False)
    _match(layer, pixel_boxes_to_map(boxes, transform))
    assert set(layer["class"]) == {"pool"}
    assert layer.crs.to_epsg() == 32617
    assert np.allclose(layer["area_m2"], shapely.area(layer.geometry.values))
    assert set(layer["source"]) == {"scene.tif"}


def test_objects_on_file_seams_of_a_2x2_mosaic_come_out_once_whole(tmp_path, oracle):
    height = width = 200
    # objects straddling the seams at row 100 / col 100, plus some elsewhere
    boxes = np.array(
        [
            [90, 10, 115, 30],
            [10, 92, 30, 109],
            [95, 95, 108, 110],
            [150, 150, 170, 160],
            [40, 40, 60, 60],
            [120, 85, 140, 118],
        ]
    )
    image = paint_boxes(height, width, boxes)
    paths = []
    for r in (0, 1):
        for c in (0, 1):
            tile = image[:, r * 100 : (r + 1) * 100, c * 100 : (c + 1) * 100]
            t = NORTH_UP @ Affine.translation(c * 100, r * 100)
            paths.append(write_geotiff(tmp_path / f"tile_{r}{c}.tif", tile, transform=t))
    grids = open_mosaics([tmp_path / "tile_*.tif"])
    assert len(grids) == 1 and grids[0].width == 200
    layer = detect(
        [str(tmp_path / "tile_*.tif")], oracle, chip_size=64, overlap=40, workers=0, progress=False
    )
    _match(layer, pixel_boxes_to_map(boxes, NORTH_UP))
    # provenance names the file under each object's centre
    centre_file = dict(zip(layer.geometry.centroid.x.round(3), layer["source"], strict=True))
    x_seam = (NORTH_UP @ (100, 0))[0]
    assert all(
        name.endswith(("00.tif", "10.tif")) == (x < x_seam) for x, name in centre_file.items()
    )


def test_rotated_transform_scene_gives_rotated_polygons(tmp_path, oracle):
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 150, 170, 15)
    transform = Affine.translation(500000, 3300000) @ Affine.rotation(20) @ Affine.scale(0.3, -0.3)
    path = write_geotiff(tmp_path / "rot.tif", paint_boxes(150, 170, boxes), transform=transform)
    layer = detect([path], oracle, chip_size=64, overlap=32, workers=0, progress=False)
    _match(layer, pixel_boxes_to_map(boxes, transform))
    assert all(g.area < g.envelope.area - 1e-6 for g in layer.geometry)


def test_scene_smaller_than_a_chip_is_padded_and_boxes_clipped(tmp_path, oracle):
    boxes = np.array([[3, 4, 20, 18], [25, 2, 40, 30]])
    path = write_geotiff(tmp_path / "small.tif", paint_boxes(33, 45, boxes), transform=NORTH_UP)
    layer = detect([path], oracle, chip_size=64, overlap=16, workers=0, progress=False)
    _match(layer, pixel_boxes_to_map(boxes, NORTH_UP))


def test_nodata_chips_are_skipped_and_workers_read(tmp_path, oracle):
    image = paint_boxes(128, 256, [(10, 10, 30, 30)])
    image[:, :, 128:] = 0  # right half is nodata
    path = write_geotiff(tmp_path / "half.tif", image, transform=NORTH_UP, nodata=0)
    from geodetect.detect import DetectionReport

    report = DetectionReport()
    layer = detect(
        [path], oracle, chip_size=64, overlap=0, workers=1, progress=False, report=report
    )
    assert len(layer) == 1
    assert report.chips_total == 8 and report.chips_empty == 4 and report.chips_read == 4


def test_alpha_band_is_mask_not_data(tmp_path, oracle):
    image = paint_boxes(64, 64, [(5, 5, 20, 20), (40, 40, 60, 60)])
    alpha = np.full((1, 64, 64), 255, np.uint8)
    alpha[:, 32:, 32:] = 0
    rgba = np.concatenate([image, alpha])
    path = write_geotiff(
        tmp_path / "rgba.tif", rgba, transform=NORTH_UP, photometric="RGB", alpha="YES"
    )
    layer = detect([path], oracle, chip_size=64, overlap=0, workers=0, progress=False)
    # the box under alpha 0 reads as zeros and is not found
    _match(layer, pixel_boxes_to_map(np.array([[5, 5, 20, 20]]), NORTH_UP))


def test_flip_fusion_matches_single_pass_and_unflips_exactly(tmp_path, oracle):
    import torch

    from geodetect.detect import DIHEDRAL, _unview_boxes, _view, predict_with_flips

    # Each of the eight views, run through the oracle and mapped back, gives the boxes
    # painted in the unviewed chip (asymmetric boxes, so swapped axes would show).
    boxes = np.array([[3, 5, 20, 9], [40, 0, 64, 30]])
    chip = torch.from_numpy(paint_boxes(64, 64, boxes)).float()[None]
    for view in DIHEDRAL:
        seen = oracle.model(_view(chip, view))[0]["boxes"]
        back = _unview_boxes(seen.double(), 64, view)
        order = back[:, 0].argsort()
        assert back[order].tolist() == boxes.tolist(), view
    rng = np.random.default_rng(5)
    truth = random_boxes(rng, 130, 150, 12)
    path = write_geotiff(tmp_path / "s.tif", paint_boxes(130, 150, truth), transform=NORTH_UP)
    kw = dict(chip_size=64, overlap=32, workers=0, progress=False)
    plain = detect([path], oracle, tta=False, **kw)
    fused = detect([path], oracle, tta=True, tta_views=4, **kw)
    _match(fused, plain.geometry.values)
    eight = detect([path], oracle, tta=True, **kw)  # the default: all 8 views
    _match(eight, plain.geometry.values)
    # an object seen in one flip only keeps a quarter of its score
    image = torch.from_numpy(paint_boxes(64, 64, [(0, 0, 10, 10)])).float()[None]

    class OnlyUnflipped(torch.nn.Module):
        def forward(self, batch):
            found = oracle.model(batch)
            return found if batch[0, 0, 0, 0] > 128 else [{k: v[:0] for k, v in found[0].items()}]

    out = predict_with_flips(OnlyUnflipped(), image)[0]
    assert out["scores"].tolist() == pytest.approx([0.9 / 4])


def test_fusion_keeps_chips_and_classes_apart_and_takes_every_box():
    import torch

    from geodetect.detect import _fuse

    box = [10.0, 10.0, 30.0, 30.0]
    near = [11.0, 10.0, 31.0, 30.0]
    boxes = torch.tensor([box, near, box, box, near], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.5], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1])
    image = torch.tensor([0, 0, 1, 1, 1])
    fused, score, label, chip = _fuse(boxes, scores, labels, image, fuse_iou=0.55, n_views=2)
    # (chip 0, class 0), (chip 1, class 0), (chip 1, class 1): three objects
    assert sorted(zip(chip.tolist(), label.tolist(), strict=True)) == [(0, 0), (1, 0), (1, 1)]
    assert float(score.sum()) == pytest.approx(float(scores.sum()) / 2)  # no box lost
    first = (chip == 0) & (label == 0)
    assert fused[first][0, 0].item() == pytest.approx((10 * 0.9 + 11 * 0.6) / 1.5)
