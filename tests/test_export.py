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


def test_web_mercator_areas_are_ground_areas_and_utm_areas_planar():
    """Web Mercator at 45 N doubles areas: taken out, so they match the geodesic ones
    (its sphere against the ellipsoid: within 0.1 %). UTM's scale (0.9996-1.001) is
    left in: areas equal the planar ones a GIS computes."""
    at_45 = gpd.GeoSeries([shapely.box(0, 5_621_521, 20, 5_621_531)], crs="EPSG:3857")
    geodesic = area_m2(at_45.to_crs("EPSG:4326").values, "EPSG:4326")
    assert area_m2(at_45.values, "EPSG:3857") == pytest.approx(geodesic, rel=1e-3)
    assert geodesic[0] == pytest.approx(100, rel=0.01)  # half the 200 map square metres
    utm = [shapely.box(800_000, 4e6, 800_020, 4e6 + 10)]  # a zone's edge: scale 1.0008
    assert area_m2(utm, "EPSG:32617")[0] == pytest.approx(200, abs=1e-9)
