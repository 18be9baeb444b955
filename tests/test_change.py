"""`geodetect change`: two flights with a known offset and planted changes."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.county import compare_flights, read_detections
from geodetect.io.export import write_batches

from conftest import assert_one_line_error, run_cli

X0, Y0 = 500000.0, 3300000.0
SHIFT = (1.5, -0.7)


def _layer(boxes, scores, crs="EPSG:32617", dates=None):
    geoms = [shapely.box(X0 + x0, Y0 + y0, X0 + x1, Y0 + y1) for x0, y0, x1, y1 in boxes]
    frame = gpd.GeoDataFrame(
        {
            "class": "pool",
            "score": scores,
            "area_m2": [g.area for g in geoms],
            "source": "a.tif",
            "date": dates,
        },
        geometry=geoms,
        crs="EPSG:32617",
    )
    return frame.to_crs(crs)


def _coverage(x1, crs="EPSG:32617"):
    cover = gpd.GeoDataFrame(
        {"source": ["a.tif"], "area_m2": [0.0]},
        geometry=[shapely.box(X0, Y0, X0 + x1, Y0 + 300)],
        crs="EPSG:32617",
    )
    return cover.to_crs(crs)


@pytest.fixture
def flights(tmp_path):
    """An old flight over 300 x 300 m and a new one over its western 250 m, shifted by
    SHIFT with 0.1 m of noise per pool; 5 pools removed, 6 added, 4 grown by 30 %. The
    new layer is GeoJSON (EPSG:4326) with its coverage beside it."""
    rng = np.random.default_rng(3)
    centres = []
    while len(centres) < 70:
        c = rng.uniform(10, 290, 2)
        if abs(c[0] - 250) > 20 and all(np.hypot(*(c - d)) > 18 for d in centres):
            centres.append(c)
    centres = np.array(centres)
    sizes = rng.uniform([6, 4], [12, 8], (len(centres), 2))
    old_boxes = np.hstack([centres - sizes / 2, centres + sizes / 2])
    covered = centres[:, 0] < 250
    idx = np.flatnonzero(covered)
    removed, resized = idx[:5], idx[5:9]
    expected_old = {i: "kept" for i in idx}
    expected_old.update({i: "removed" for i in removed})
    expected_old.update({i: "resized" for i in resized})
    expected_old.update({i: "not_covered" for i in np.flatnonzero(~covered)})

    keep = np.setdiff1d(idx, removed)
    grow = np.where(np.isin(keep, resized), 1.3, rng.uniform(0.97, 1.03, len(keep)))
    c_new = centres[keep] + SHIFT + rng.normal(0, 0.1, (len(keep), 2))
    s_new = sizes[keep] * grow[:, None]
    added = []
    while len(added) < 6:
        c = rng.uniform(15, 235, 2)
        if all(np.hypot(*(c - d)) > 18 for d in centres) and all(
            np.hypot(*(c - d)) > 18 for d in added
        ):
            added.append(c)
    c_new = np.vstack([c_new, np.array(added) + SHIFT])
    s_new = np.vstack([s_new, np.full((6, 2), 8.0)])
    new_boxes = np.hstack([c_new - s_new / 2, c_new + s_new / 2])

    old_path, new_path = tmp_path / "2021.gpkg", tmp_path / "2024.geojson"
    old = _layer(old_boxes, rng.uniform(0.5, 1, len(old_boxes)), dates=["2021-05-03"] * 70)
    write_batches([old], old_path, extra={"coverage": _coverage(300)})
    new = _layer(
        new_boxes, rng.uniform(0.5, 1, len(new_boxes)), "EPSG:4326", ["2024-06-01"] * len(new_boxes)
    )
    write_batches([new], new_path, extra={"coverage": _coverage(250 + SHIFT[0], "EPSG:4326")})
    counts = {
        "new": 6,
        "removed": 5,
        "resized": 4,
        "kept": int(covered.sum()) - 9,
        "not_covered": int((~covered).sum()),
    }
    return old_path, new_path, counts


def test_the_offset_is_recovered_and_each_change_classified(flights):
    old_path, new_path, counts = flights
    result = compare_flights(read_detections(old_path), read_detections(new_path))
    assert result.shift == pytest.approx(SHIFT, abs=0.2)
    assert max(result.shift_se) < 0.1
    assert result.summary["status"] == counts
    layer = result.layer
    assert layer.crs.to_epsg() == 4326  # the new flight's CRS
    grown = layer[layer["status"] == "resized"]
    assert (grown["area_change"] > 1.5).all()
    kept = layer[layer["status"] == "kept"]
    assert set(kept["date_old"]) == {"2021-05-03"} and set(kept["date_new"]) == {"2024-06-01"}


def test_without_the_offset_estimate_the_same_pools_would_not_match(flights):
    """The offset matters: with --max-shift too small to find it, pools are still
    matched where they overlap, but the shift is not applied and is reported as 0."""
    old_path, new_path, counts = flights
    result = compare_flights(read_detections(old_path), read_detections(new_path), max_shift=0.3)
    assert result.shift == (0.0, 0.0) and result.summary["pools_for_shift"] == 0


def test_cli_writes_the_change_layer_with_parcels(flights, tmp_path):
    old_path, new_path, counts = flights
    parcels = gpd.GeoDataFrame(
        {"APN": ["west", "east"]},
        geometry=[
            shapely.box(X0, Y0, X0 + 150, Y0 + 300),
            shapely.box(X0 + 150, Y0, X0 + 300, Y0 + 300),
        ],
        crs="EPSG:32617",
    )
    parcels.to_file(tmp_path / "parcels.gpkg")
    out = tmp_path / "change.gpkg"
    run = run_cli("change", old_path, new_path, "--out", out, "--parcels",
                  tmp_path / "parcels.gpkg", "--id-field", "APN", "--json", "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == counts and summary["by_class"]["pool"] == counts
    back = gpd.read_file(out)
    assert set(back["parcel"]) == {"west", "east"}
    centre_x = back.to_crs("EPSG:32617").geometry.centroid.x - X0
    assert ((back["parcel"] == "west") == (centre_x < 150)).all()


def test_a_layer_without_coverage_is_refused_with_one_line(flights, tmp_path):
    old_path, _, _ = flights
    bare = tmp_path / "bare.gpkg"
    gpd.read_file(old_path, layer="detections").to_file(bare)
    out = tmp_path / "change.gpkg"
    run = run_cli("change", old_path, bare, "--out", out)
    assert_one_line_error(run, str(bare), "no coverage")
    assert not out.exists()


def test_edited_boxes_and_features_without_a_class_count_as_drawn(flights, tmp_path):
    """A box redrawn in QGIS keeps its old area_m2 field: change reads the geometry; a
    feature drawn without a class counts as "object" in the summary, not as a nan row."""
    old_path, new_path, counts = flights
    new = gpd.read_file(new_path)
    kept = read_detections(new_path)
    edited = new.to_crs("EPSG:32617")
    # the last kept pool (the 6 added ones follow it) grown by half along each side, its
    # area_m2 field left as it was
    first = edited.geometry.iloc[-7]
    edited.loc[edited.index[-7], "geometry"] = shapely.affinity.scale(first, 1.5, 1.5)
    edited.loc[edited.index[-8], "class"] = None
    path = tmp_path / "edited.gpkg"
    write_batches([edited], path, extra={"coverage": kept.coverage})
    result = compare_flights(read_detections(old_path), read_detections(path))
    layer = result.layer
    assert (layer["status"] == "resized").sum() == counts["resized"] + 1
    assert layer["area_new_m2"].max() == pytest.approx(first.area * 2.25, rel=1e-6)
    assert set(result.summary["by_class"]) == {"pool", "object"}
    assert sum(sum(c.values()) for c in result.summary["by_class"].values()) == len(layer)


def test_a_layer_without_coverage_is_refused_naming_the_option(flights, tmp_path):
    old_path, _, _ = flights
    bare = tmp_path / "bare.gpkg"
    gpd.read_file(old_path, layer="detections").to_file(bare)
    run = run_cli("change", bare, old_path, "--out", tmp_path / "change.gpkg")
    assert_one_line_error(run, str(bare), "--old-coverage")
