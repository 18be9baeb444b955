"""The streamed merge holds a band of the scene, yet gives exactly the layer of merging
every block at once, whatever the block size, in north-to-south order."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from geodetect.detect.merge import concat_tables, merge_tables, merged_batches
from geodetect.detect.plan import RunConfig, make_plan
from geodetect.geometry import cut_mask
from geodetect.io.raster import open_mosaics

from conftest import write_geotiff

CHIP, OVERLAP = 128, 32


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Three lattices: north-up UTM 17, the same rotated by 20°, and UTM 18."""
    folder = tmp_path_factory.mktemp("stream")
    image = np.full((3, 520, 600), 90, dtype=np.uint8)
    write_geotiff(folder / "a.tif", image, transform=Affine(0.3, 0, 500_000, 0, -0.3, 4_000_150))
    rotated = Affine.translation(500_090, 4_000_100) @ Affine.rotation(20) @ Affine.scale(0.3, -0.3)
    write_geotiff(folder / "b.tif", image, transform=rotated)
    write_geotiff(
        folder / "c.tif",
        image,
        transform=Affine(0.3, 0, 225_000, 0, -0.3, 4_000_100),
        crs="EPSG:32618",
    )
    found = open_mosaics([folder / "a.tif", folder / "b.tif", folder / "c.tif"])
    assert len(found) == 3
    return found


def _chip_table(grid_id, chip, rng, objects):
    """A chip's owned detections: clusters of near-duplicates, and the parts of large
    objects the chip sees (pieces where its interior edges cut them)."""
    x0, y0 = chip.col_off, chip.row_off
    boxes = []
    for _ in range(rng.integers(0, 5)):
        cx, cy = rng.uniform(10, chip.width - 10), rng.uniform(10, chip.height - 10)
        for _ in range(rng.integers(1, 4)):  # the detector's own duplicates
            w, h = rng.uniform(6, 40, 2)
            jx, jy = rng.normal(0, 2, 2)
            boxes.append([cx + jx - w / 2, cy + jy - h / 2, cx + jx + w / 2, cy + jy + h / 2])
    for ox0, oy0, ox1, oy1 in objects:  # large objects: each chip reports its part
        part = [
            max(ox0 - x0, 0),
            max(oy0 - y0, 0),
            min(ox1 - x0, chip.width),
            min(oy1 - y0, chip.height),
        ]
        if part[2] - part[0] > 4 and part[3] - part[1] > 4:
            boxes.append(part)
    boxes = np.clip(
        np.array(boxes, dtype=np.float64).reshape(-1, 4), 0, [chip.width, chip.height] * 2
    )
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    n = len(boxes)
    piece = cut_mask(boxes, chip.core, size=chip.width)
    table = {
        "grid": np.full(n, grid_id, dtype=np.int32),
        "chip": np.full(n, chip.index, dtype=np.int64),
        "x0": boxes[:, 0] + x0,
        "y0": boxes[:, 1] + y0,
        "x1": boxes[:, 2] + x0,
        "y1": boxes[:, 3] + y0,
        "score": np.round(rng.uniform(0.3, 1.0, n), 2),  # rounded: ties happen
        "label": rng.integers(0, 2, n),
        "piece": piece,
        "wx0": np.full(n, float(x0)),
        "wy0": np.full(n, float(y0)),
        "wx1": np.full(n, float(x0 + chip.width)),
        "wy1": np.full(n, float(y0 + chip.height)),
        "source": np.array([f"f{grid_id}.tif"] * n, dtype=object),
    }
    return table


def _tables(plan, seed=0):
    """Block key -> table, built chip by chip so that every block size sees the same
    detections."""
    rng = np.random.default_rng(seed)
    objects = {gi: [[150, 100, 330, 200], [60, 300, 120, 470]] for gi in range(len(plan.grids))}
    tables = {}
    for block in plan.blocks:
        chips = plan.chip_grids[block.grid]
        parts = []
        for chip in block.chips(chips):
            chip_rng = np.random.default_rng([seed, block.grid, chip.index])
            parts.append(_chip_table(block.grid, chip, chip_rng, objects[block.grid]))
        tables[block.key] = concat_tables(parts)
    del rng
    return tables


def _plan(grids, block_chips):
    config = RunConfig(chip_size=CHIP, overlap=OVERLAP, threshold=0.3, block_chips=block_chips)
    return make_plan(grids, config)


def _streamed(plan, tables, batch_rows, second_iou=None):
    frames = list(
        merged_batches(
            plan,
            tables.__getitem__,
            crs=plan.grids[0].crs,
            nms_iou=0.5,
            metric="iou",
            second_iou=second_iou,
            batch_rows=batch_rows,
        )
    )
    return frames, gpd.GeoDataFrame(gpd.pd.concat(frames, ignore_index=True), crs=frames[0].crs)


def _canonical(gdf):
    wkb = shapely.to_wkb(shapely.normalize(gdf.geometry.values), hex=True)
    frame = gdf.drop(columns="geometry").assign(wkb=wkb)
    return frame.sort_values(["wkb", "score", "label"]).reset_index(drop=True)


@pytest.mark.parametrize("second_iou", [None, 0.2])
@pytest.mark.parametrize("block_chips", [1, 2, 4])
def test_streamed_merge_equals_the_whole_merge_for_any_block_size(grids, block_chips, second_iou):
    plan = _plan(grids, block_chips)
    tables = _tables(plan)
    whole = merge_tables(
        tables.values(),
        plan.grids,
        crs=plan.grids[0].crs,
        nms_iou=0.5,
        metric="iou",
        second_iou=second_iou,
    )
    assert len(whole) > 100
    assert concat_tables(tables.values())["piece"].sum() > 10  # joining is exercised
    if second_iou is not None:  # second boxes of the near-duplicate clusters go
        nms_only = merge_tables(
            tables.values(), plan.grids, crs=plan.grids[0].crs, nms_iou=0.5, metric="iou"
        )
        assert len(whole) < 0.9 * len(nms_only)
    frames, streamed = _streamed(plan, tables, batch_rows=1, second_iou=second_iou)
    assert len(frames) > 3  # settled in several bands, not all at the end
    pd = gpd.pd
    pd.testing.assert_frame_equal(_canonical(streamed), _canonical(whole))
    # North to south (by groups of overlapping boxes, so not strictly), across bands.
    top = shapely.bounds(streamed.geometry.values)[:, 3]
    assert np.corrcoef(top, np.arange(len(top)))[0, 1] < -0.8
    # The same rows in the same order whatever the block size and batch size.
    reference_plan = _plan(grids, 3)
    _, reference = _streamed(
        reference_plan, _tables(reference_plan), batch_rows=10**6, second_iou=second_iou
    )
    pd.testing.assert_frame_equal(streamed, reference)


def test_no_blocks_gives_one_empty_frame(grids):
    plan = _plan(grids, 2)
    empty = type(plan)(plan.grids, plan.chip_grids, (), ())
    frames = list(
        merged_batches(empty, {}.__getitem__, crs=plan.grids[0].crs, nms_iou=0.5, metric="iou")
    )
    assert len(frames) == 1 and len(frames[0]) == 0
    assert frames[0].crs == plan.grids[0].crs
