"""Export round trips for every format; GeoJSON is RFC 7946; CRSs survive."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.detect import detect
from geodetect.errors import OutputError
from geodetect.io.export import FORMATS, area_m2, write_layer

from conftest import NORTH_UP, paint_boxes, random_boxes, write_geotiff


@pytest.fixture
def layer(tmp_path, oracle):
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 120, 140, 8)
    path = write_geotiff(tmp_path / "s.tif", paint_boxes(120, 140, boxes), transform=NORTH_UP)
    out = detect([path], oracle, chip_size=64, overlap=32, workers=0, progress=False)
    assert len(out) == 8
    return out


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_round_trip(tmp_path, layer, suffix):
    out = tmp_path / f"pools{suffix}"
    write_layer(layer, out)
    back = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    assert len(back) == len(layer)
    assert {"class", "score", "area_m2", "source", "model_id"} <= set(back.columns)
    assert sorted(back["score"]) == pytest.approx(sorted(layer["score"]))
    if suffix == ".geojson":
        assert back.crs.to_epsg() == 4326
        expected = layer.to_crs(4326).geometry
        assert np.allclose(sorted(back.geometry.centroid.x), sorted(expected.centroid.x), atol=1e-7)
    else:
        assert back.crs.equals(layer.crs)
        assert np.allclose(
            sorted(shapely.area(back.geometry.values)), sorted(shapely.area(layer.geometry.values))
        )
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_geojson_is_rfc7946(tmp_path, layer):
    out = tmp_path / "pools.geojson"
    write_layer(layer, out)
    doc = json.loads(out.read_text())
    assert "crs" not in doc  # RFC 7946: WGS84 implied
    for feature in doc["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring[:, 0].min() >= -180 and ring[:, 0].max() <= 180
        assert shapely.Polygon(ring).exterior.is_ccw


def test_shapefile_has_esri_prj(tmp_path, layer):
    out = tmp_path / "pools.shp"
    write_layer(layer, out)
    prj = out.with_suffix(".prj").read_text()
    assert prj.startswith("PROJCS[") and "UTM" in prj


def test_existing_output_kept_unless_overwrite(tmp_path, layer):
    out = tmp_path / "pools.gpkg"
    out.write_text("precious")
    with pytest.raises(OutputError, match="already exists"):
        write_layer(layer, out)
    assert out.read_text() == "precious"
    write_layer(layer, out, overwrite=True)
    assert len(gpd.read_file(out)) == len(layer)


def test_unknown_extension_refused(tmp_path, layer):
    with pytest.raises(OutputError, match="unknown output format"):
        write_layer(layer, tmp_path / "pools.kml")
    assert list(tmp_path.iterdir()) == [tmp_path / "s.tif"]


def test_empty_layer_is_valid(tmp_path, layer):
    out = tmp_path / "empty.gpkg"
    write_layer(layer.iloc[:0], out)
    back = gpd.read_file(out)
    assert len(back) == 0 and back.crs.equals(layer.crs)


def test_area_in_square_metres_for_geographic_crs():
    # a 0.001° x 0.001° box at the equator is ~111.3 m x 110.6 m
    box = shapely.box(0, 0, 0.001, 0.001)
    assert area_m2([box], "EPSG:4326")[0] == pytest.approx(111.32 * 110.57, rel=2e-3)
    # US survey feet are converted too (the state plane's scale at its grid origin,
    # far from the zone, is 1.0009)
    assert area_m2([shapely.box(0, 0, 10, 10)], "EPSG:2236")[0] == pytest.approx(
        100 * 0.3048006096**2, rel=1e-3
    )


@pytest.mark.parametrize(
    ("crs", "x", "y"), [("EPSG:3857", 0, 5_621_521), ("EPSG:32617", 800_000, 4e6)]
)
def test_projected_areas_are_ground_areas(crs, x, y):
    """Web Mercator at 45 N doubles areas; a UTM zone's edge adds 0.08 %: both are
    taken out, so the area matches the geodesic one (Web Mercator's sphere against the
    ellipsoid: within 0.1 %)."""
    boxes = gpd.GeoSeries(
        [shapely.box(x, y, x + 20, y + 10), shapely.box(x, y - 1e5, x + 8, y - 1e5 + 4)], crs=crs
    )
    geodesic = area_m2(boxes.to_crs("EPSG:4326").values, "EPSG:4326")
    assert area_m2(boxes.values, crs) == pytest.approx(geodesic, rel=1e-3)
    if crs == "EPSG:3857":  # about half the planar area at 45 N
        assert area_m2(boxes.values, crs)[0] == pytest.approx(100, rel=0.01)
