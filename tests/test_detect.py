"""The whole detection path with an oracle detector: every object once, exactly placed."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine

from geodetect.detect import DetectionReport, detect
from geodetect.geometry import pixel_boxes_to_map
from geodetect.io.raster import open_mosaics

from conftest import NORTH_UP, make_oracle, paint_boxes, random_boxes, write_geotiff


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

    from geodetect.detect.tta import DIHEDRAL, _unview_boxes, _view, predict_with_flips

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

    from geodetect.detect.tta import _fuse

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


def _place(taken: np.ndarray, box, gap: int = 3) -> bool:
    """Claim ``box`` (xyxy) on ``taken`` unless it comes within ``gap`` px of a claimed
    one (touching boxes would paint as one blob)."""
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > taken.shape[1] or y2 > taken.shape[0]:
        return False
    if taken[max(0, y1 - gap) : y2 + gap, max(0, x1 - gap) : x2 + gap].any():
        return False
    taken[y1:y2, x1:x2] = True
    return True


def test_every_default_over_a_2x2_mosaic_gives_each_seam_object_once_whole(tmp_path):
    """No chip size, overlap, block size or reader count given: the model's defaults
    (512 px chips, 40 px overlap for its 30 px typical object, the default reader
    processes) over a 1600 px mosaic of four files. Objects straddle the file seams, the
    chip edges, the middles of the overlap strips (where ownership changes hands) and
    the crossings of those lines: each comes out exactly once, whole, and nothing else."""
    from geodetect.detect import DetectionReport, default_chip_size, default_overlap
    from geodetect.geometry import chip_grid

    oracle = make_oracle(typical_object_px=30)  # what training measured; the largest too
    size, half = 1600, 800
    chip = default_chip_size(oracle.spec)
    overlap = default_overlap(oracle.spec, chip)
    assert (chip, overlap) == (512, 40)  # 1.2 x 30 px, rounded up to 8
    grid = chip_grid(height=size, width=size, chip_size=chip, overlap=overlap)
    offsets = grid.col_offsets
    assert offsets.tolist() == [0, 472, 944, 1088]  # the last chip is shifted in
    edges = sorted({*offsets[1:].tolist(), *(offsets[:-1] + chip).tolist()})
    middles = ((offsets[1:] + offsets[:-1] + chip) / 2).astype(int).tolist()
    assert middles == [492, 964, 1272]  # core boundaries: the owner changes here
    lines = sorted({*edges, *middles, half})

    # Boxes across each line (a quarter, half or three quarters of them before it), along
    # both axes, at every size up to the typical object; boxes wider than the overlap
    # strip (no chip sees them whole: joined from their pieces); then line crossings.
    taken = np.zeros((size, size), dtype=bool)
    boxes, sizes, along = [], [30, 23, 14, 7, 27, 18], 40

    def across(line, axis, w, h, before):
        nonlocal along
        cut = line - round(before * (w if axis == 0 else h))
        for _ in range(20):
            along = (along + 61) % (size - 70)
            x1, y1 = (cut, along) if axis == 0 else (along, cut)
            if _place(taken, (x1, y1, x1 + w, y1 + h)):
                boxes.append((x1, y1, x1 + w, y1 + h))
                return

    for axis in (0, 1):
        for i, line in enumerate(lines):
            for j, before in enumerate((0.5, 0.25, 0.75)):
                w, h = sizes[(i + j) % len(sizes)], sizes[(i + 2 * j + 1) % len(sizes)]
                across(line, axis, w, h, before)
        for line, wide in [(492, 48), (964, 60)]:  # across 40 px strips, both edges
            across(line, axis, *((wide, 20) if axis == 0 else (20, wide)), 0.5)
    n_wide = 4
    crossings = [(492, 492), (half, half), (512, 964), (1272, half), (half, 472), (1456, 1088)]
    for k, (cx, cy) in enumerate(crossings):
        w, h = sizes[k % len(sizes)], sizes[(k + 3) % len(sizes)]
        box = (cx - w // 2, cy - h // 3, cx - w // 2 + w, cy - h // 3 + h)
        if _place(taken, box):
            boxes.append(box)
    boxes = np.array(boxes, dtype=np.int64)

    def crosses(at, lo, hi):  # which boxes a line at ``at`` (x: 0, 2; y: 1, 3) cuts
        at = np.asarray(at)[None]
        return ((boxes[:, lo, None] < at) & (boxes[:, hi, None] > at)).any(axis=1)

    cut_by_chip = crosses(edges, 0, 2) | crosses(edges, 1, 3)
    on_file_seam = crosses([half], 0, 2) | crosses([half], 1, 3)
    assert len(boxes) >= 65 and cut_by_chip.sum() >= 40 and on_file_seam.sum() >= 8
    longest = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
    assert (longest > overlap).sum() == n_wide
    edges_cut = sum(crosses([e], 0, 2).astype(int) + crosses([e], 1, 3) for e in edges)
    assert edges_cut[longest > overlap].min() >= 2  # both edges of a strip: no whole view
    assert (crosses([half], 0, 2) & crosses([half], 1, 3)).any()  # on all four files

    transform = NORTH_UP @ Affine.translation(-37, 53)  # an origin off round numbers
    image = paint_boxes(size, size, boxes)
    for r in (0, 1):
        for c in (0, 1):
            tile = image[:, r * half : (r + 1) * half, c * half : (c + 1) * half]
            t = transform @ Affine.translation(c * half, r * half)
            write_geotiff(tmp_path / f"tile_{r}{c}.tif", tile, transform=t)
    report = DetectionReport()
    layer = detect([str(tmp_path / "tile_*.tif")], oracle, progress=False, report=report)
    assert report.chips_total == len(grid) == 16  # the default chips, over the mosaic
    _match(layer, pixel_boxes_to_map(boxes, transform))
    assert set(layer["class"]) == {"pool"} and layer.crs.to_epsg() == 32617


def test_chips_over_the_edge_of_the_data_are_cropped_and_find_the_same(tmp_path, oracle):
    """Scattered tiles (a patchy hold-out, tiles of a county with gaps): chips that lie
    over the edge of the data run on the part holding imagery only, fewer pixels go
    through the network, and the layer is the one whole chips give."""
    rng = np.random.default_rng(4)
    size, tile = 900, 150
    boxes = random_boxes(rng, size, size, 90, max_size=24)
    image = paint_boxes(size, size, boxes)
    kept = []
    for r in range(0, size, tile):
        for c in range(0, size, tile):
            if rng.random() < 0.4:  # about 40 % of the tiles exist
                part = image[:, r : r + tile, c : c + tile]
                t = NORTH_UP @ Affine.translation(c, r)
                write_geotiff(tmp_path / f"t_{r:03d}_{c:03d}.tif", part, transform=t)
                kept.append((r, c))
    # The objects as the kept tiles show them (cut where a tile is missing), from the
    # oracle on whole chips; cropping must give exactly those.
    assert len(kept) >= 8
    layers, pixels = {}, {}
    for crop in (True, False):
        report = DetectionReport()
        layers[crop] = detect(
            [str(tmp_path / "t_*.tif")],
            oracle,
            chip_size=256,
            overlap=64,
            crop=crop,
            report=report,
            progress=False,
        )
        pixels[crop] = report.pixels_run
    assert pixels[True] < 0.8 * pixels[False]
    assert pixels[False] == report.chips_read * 256 * 256
    assert len(layers[False]) > 20
    _match(layers[True], layers[False].geometry)


def _land_and_suburb(path, *, suburb_share: float, seed: int = 5, size: int = 640):
    """A scene whose left ``suburb_share`` holds blobs and the rest plain land; returns
    the blobs (pixel xyxy)."""
    rng = np.random.default_rng(seed)
    width = max(40, int(size * suburb_share))
    # About one blob per 40 x 40 px of suburb: most 64 px chips there hold one.
    boxes = random_boxes(rng, size, width, int(size * width / 1600), max_size=20)
    write_geotiff(path, paint_boxes(size, size, boxes), transform=NORTH_UP)
    return boxes


def test_the_screen_skips_only_chips_without_objects_and_keeps_the_layer(tmp_path, oracle):
    """With a screen, chips where the half-resolution look finds nothing are skipped:
    every chip over plain land is, and the layer is the one every chip gives."""
    from geodetect.detect import DetectOptions, prepare

    path = tmp_path / "scene.tif"
    boxes = _land_and_suburb(path, suburb_share=0.3)
    options = dict(chip_size=64, overlap=16)
    layers, reports = {}, {}
    for screen in ("on", "off"):
        reports[screen] = DetectionReport()
        layers[screen] = detect(
            [path], oracle, screen=screen, report=reports[screen], progress=False, **options
        )
    run = prepare([path], oracle, DetectOptions(screen="on", **options))
    assert run.config.screen is not None
    chips = [c for block in run.plan.blocks for c in run.plan.chips(block)]
    bare = sum(
        not any(
            x0 < c.col_off + c.width
            and c.col_off < x1
            and y0 < c.row_off + c.height
            and c.row_off < y1
            for x0, y0, x1, y1 in boxes
        )
        for c in chips
    )
    assert bare > len(chips) / 2
    assert reports["on"].chips_screened >= bare  # every chip over plain land skipped
    assert reports["on"].chips_screened < len(chips)
    assert reports["off"].chips_screened == 0
    assert reports["on"].pixels_run < reports["off"].pixels_run
    assert len(layers["off"]) == len(boxes)
    _match(layers["on"], layers["off"].geometry)


@pytest.mark.parametrize("share,screened", [(0.15, True), (1.0, False)])
def test_auto_screens_where_a_sample_says_most_chips_hold_nothing(
    tmp_path, oracle, share, screened
):
    """``screen="auto"`` looks at a sample of the run's chips: a scene of mostly plain
    land is screened, one with objects everywhere is not (the screen would cost a
    quarter more there for nothing)."""
    from geodetect.detect import DetectOptions, prepare
    from geodetect.detect.screen import SCREEN_MIN_CHIPS

    path = tmp_path / "scene.tif"
    _land_and_suburb(path, suburb_share=share, size=800)
    run = prepare([path], oracle, DetectOptions(chip_size=64, overlap=16, screen="auto"))
    assert run.plan.chips_total >= SCREEN_MIN_CHIPS
    assert (run.config.screen is not None) == screened
    # The decision is part of what a journal records: a resumed run makes the same one.
    assert run.manifest["options"]["screen"] == (
        {"factor": 2, "threshold": run.config.screen.threshold} if screened else None
    )
