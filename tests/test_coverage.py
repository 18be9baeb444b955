"""Coverage: the ground a run read with valid imagery, written beside the detections, so
that "no pool here" can be told from "nobody looked here"."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from geodetect.detect import DetectionReport, detect
from geodetect.geometry import Grid
from geodetect.geometry.coverage import CELL, chip_cells, merge_runs, runs_to_polygons, to_runs
from geodetect.io.vectors import read_layer
from geodetect.model import build_retinanet, save_model

from conftest import NORTH_UP, assert_one_line_error, paint_boxes, run_cli, write_geotiff


def _covered_directly(valid: np.ndarray, cell: int) -> set[tuple[int, int]]:
    """Cells with at least half their pixels valid, counted over the whole grid at once."""
    out = set()
    for i in range(-(-valid.shape[0] // cell)):
        for j in range(-(-valid.shape[1] // cell)):
            part = valid[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
            if part.sum() >= 0.5 * part.size:
                out.add((i, j))
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(20, 160),
    st.integers(20, 160),
    st.sampled_from([(32, 8), (48, 16), (64, 24), (40, 30)]),
    st.integers(0, 2**31),
)
def test_chips_decide_each_cell_once_as_the_whole_grid_would(height, width, chip_args, seed):
    """Whatever the chip size and overlap, the cells the chips cover are the cells the
    whole grid's valid mask covers: each cell decided once, by the chip whose core holds
    its centre."""
    chip, overlap = chip_args
    cell = 4
    rng = np.random.default_rng(seed)
    valid = rng.random((height, width)) < rng.uniform(0.2, 0.9)
    valid[: height // 3, : width // 2] = False  # a nodata corner
    chips = Grid(height, width).chips(chip, overlap)
    parts, seen = [], []
    for c in chips:
        window = np.zeros((chip, chip), dtype=bool)  # padded beyond the grid: not valid
        part = valid[c.row_off : c.row_off + chip, c.col_off : c.col_off + chip]
        window[: part.shape[0], : part.shape[1]] = part
        rows, cols, covered = chip_cells(window, c, cell, height, width)
        seen.extend(zip(rows.tolist(), cols.tolist(), strict=True))
        parts.append(to_runs(rows[covered], cols[covered], np.zeros(covered.sum(), np.int64)))
    assert len(seen) == len(set(seen))  # no cell decided twice
    runs = merge_runs(parts)
    got = {(int(r), c) for r, c0, c1, _ in runs for c in range(c0, c1)}
    assert got == _covered_directly(valid, cell)


def test_runs_become_one_polygon_per_file_in_grid_pixels():
    runs = to_runs(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 5]), np.array([0, 0, 0, 0, 1]))
    assert runs.tolist() == [[0, 0, 2, 0], [1, 0, 2, 0], [1, 5, 6, 1]]
    polygons = runs_to_polygons(runs, 8)
    assert shapely.equals(polygons[0], shapely.box(0, 0, 16, 16))
    assert shapely.equals(polygons[1], shapely.box(40, 8, 48, 16))


@pytest.fixture
def model_file(tmp_path, tiny_spec):
    torch.manual_seed(0)
    return save_model(
        build_retinanet(tiny_spec, pretrained="none"), tiny_spec, tmp_path / "m.model"
    )


@pytest.fixture
def holey_mosaic(tmp_path):
    """Two files 200 x 200 px with a 40 px gap between them; the second has a nodata
    block of 80 x 96 px in its north-west corner."""
    a = paint_boxes(200, 200, [(20, 20, 40, 40)])
    b = paint_boxes(200, 200, [(150, 150, 170, 170)])
    b[:, :80, :96] = 0
    first = write_geotiff(tmp_path / "a.tif", a, transform=NORTH_UP, nodata=0)
    second = write_geotiff(
        tmp_path / "b.tif", b, transform=NORTH_UP @ Affine.translation(240, 0), nodata=0
    )
    a_valid = (a != 0).any(axis=0)
    return [first, second], {"a.tif": a_valid.sum(), "b.tif": (b != 0).any(axis=0).sum()}


def test_detect_writes_what_it_read_as_a_coverage_layer(tmp_path, model_file, holey_mosaic):
    paths, valid_pixels = holey_mosaic
    out = tmp_path / "pools.gpkg"
    run = run_cli("detect", *paths, "--model", model_file, "--out", out, "-q")
    assert run.returncode == 0, run.stderr
    layers = {str(name): kind for name, kind in pyogrio.list_layers(out)}
    # the two layers, and the table of their QGIS styles
    assert layers == {"detections": "Polygon", "coverage": "MultiPolygon", "layer_styles": None}
    coverage = gpd.read_file(out, layer="coverage").set_index("source")
    assert coverage.crs.to_epsg() == 32617
    pixel = 0.3 * 0.3
    for name, count in valid_pixels.items():
        # to the cell: valid pixels whose cells are at least half valid
        assert coverage.loc[name, "area_m2"] == pytest.approx(count * pixel, rel=0.02)
        assert coverage.loc[name].geometry.area == pytest.approx(coverage.loc[name, "area_m2"])
    # the gap between the files and the nodata corner are not covered
    x0, y0 = NORTH_UP @ (0, 0)
    gap = shapely.box(x0 + 200 * 0.3, y0 - 60, x0 + 240 * 0.3, y0)
    corner = shapely.box(x0 + 240 * 0.3, y0 - 80 * 0.3, x0 + (240 + 96) * 0.3, y0)
    union = shapely.union_all(coverage.geometry.values)
    assert union.intersection(gap).area == pytest.approx(0, abs=1e-6)
    assert union.intersection(corner).area <= CELL * 0.3 * 80 * 0.3  # at most a cell's edge
    # geodetect's own readers take the detections layer by default
    assert len(read_layer(out)) == len(gpd.read_file(out, layer="detections"))


def test_other_formats_get_a_coverage_file_beside_them_and_keep_it_unless_overwrite(
    tmp_path, model_file, holey_mosaic
):
    paths, _ = holey_mosaic
    out = tmp_path / "pools.geojson"
    side = tmp_path / "pools.coverage.geojson"
    side.write_text("mine")
    run = run_cli("detect", *paths, "--model", model_file, "--out", out, "-q")
    assert_one_line_error(run, str(side), "--overwrite")
    assert not out.exists() and side.read_text() == "mine"
    run = run_cli("detect", *paths, "--model", model_file, "--out", out, "-q", "--overwrite")
    assert run.returncode == 0, run.stderr
    coverage = gpd.read_file(side)
    assert sorted(coverage["source"]) == ["a.tif", "b.tif"] and coverage.crs.to_epsg() == 4326


def test_the_notebook_api_gets_the_coverage_in_the_report(oracle, tmp_path):
    image = paint_boxes(150, 150, [(30, 30, 50, 50)])
    path = write_geotiff(tmp_path / "s.tif", image, transform=NORTH_UP)
    report = DetectionReport()
    detect([path], oracle, chip_size=64, overlap=16, progress=False, report=report)
    (area,) = report.coverage["area_m2"]
    # 150 px is 18.75 cells: the last cells are covered, and cut at the file's edge
    assert area == pytest.approx((150 * 0.3) ** 2)
