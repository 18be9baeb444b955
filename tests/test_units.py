"""Pixel sizes in metres from metre, US-foot and degree CRSs; the GSD check uses them."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pyproj
import pytest
import rasterio
from affine import Affine

from geodetect.detect import detect
from geodetect.errors import InputError
from geodetect.io.units import gsd_metres, layer_utm, local_utm
from geodetect.model import LoadedModel

from conftest import OracleDetector, make_tiny_spec, paint_boxes, write_geotiff

US_FOOT = 1200 / 3937  # metres
# Metres per degree near 40 N on WGS84: of latitude, and of longitude.
LAT_DEGREE_M, LON_DEGREE_M = 111_035.0, 85_394.0

PIXEL_0_3_M = {
    "EPSG:32617": Affine(0.3, 0, 500_000.0, 0, -0.3, 4_400_000.0),
    "EPSG:2236": Affine(0.3 / US_FOOT, 0, 700_000.0, 0, -0.3 / US_FOOT, 800_000.0),
    "EPSG:4326": Affine(0.3 / LON_DEGREE_M, 0, -80.0, 0, -0.3 / LAT_DEGREE_M, 40.0),
}


def _scene(path, crs, transform):
    image = paint_boxes(64, 64, [(10, 10, 30, 30)])
    return write_geotiff(path, image, transform=transform, crs=crs)


@pytest.mark.parametrize("crs", sorted(PIXEL_0_3_M))
def test_0_3_m_pixels_measure_0_3_m_in_any_crs_unit(tmp_path, crs):
    path = _scene(tmp_path / "scene.tif", crs, PIXEL_0_3_M[crs])
    with rasterio.open(path) as ds:
        gsd = gsd_metres(ds.crs, ds.transform, ds.width, ds.height)
    assert gsd == pytest.approx(0.3, rel=0.01)


def test_degrees_are_measured_at_the_raster_centre():
    # 1e-5 degree pixels: ~1.11 m square at the equator, ~0.85 m across at 60 N
    # (the longer side, north-south, stays ~1.11 m).
    at_equator = gsd_metres("EPSG:4326", Affine(1e-5, 0, 10, 0, -1e-5, 0.005), 1000, 1000)
    assert at_equator == pytest.approx(1.11, rel=0.01)
    wide = Affine(2e-5, 0, 10, 0, -1e-5, 60.005)
    assert gsd_metres("EPSG:4326", wide, 1000, 1000) == pytest.approx(
        2 * 111_320 * math.cos(math.radians(60)) * 1e-5, rel=0.01
    )


def test_no_crs_or_no_length_unit_gives_none():
    assert gsd_metres(None, Affine(0.3, 0, 0, 0, -0.3, 0), 10, 10) is None
    # Latitudes off the globe: a degree CRS given metre coordinates.
    assert gsd_metres("EPSG:4326", Affine(0.3, 0, 500_000, 0, -0.3, 4e6), 10, 10) is None


def _oracle(gsd):
    spec = dataclasses.replace(make_tiny_spec(), gsd=gsd)
    return LoadedModel(model=OracleDetector(), spec=spec, model_id="oracle", path=Path("-"))


@pytest.mark.parametrize("crs", ["EPSG:2236", "EPSG:4326"])
def test_gsd_check_compares_metres_with_metres(tmp_path, caplog, crs):
    path = _scene(tmp_path / "scene.tif", crs, PIXEL_0_3_M[crs])
    warning = "pixels but the model was trained"
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        detect([path], _oracle(0.3), progress=False)
    assert warning not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        # "native": read as it is, not resampled to the model's GSD first.
        detect([path], _oracle(0.6), progress=False, gsd="native")
    assert "scene.tif has 0.3 m pixels but the model was trained at 0.6 m" in caplog.text


@pytest.mark.parametrize(
    ("crs", "lon", "lat", "want"),
    [
        ("EPSG:4326", -46.6, -23.5, "EPSG:32723"),  # São Paulo, WGS 84
        ("EPSG:4674", -46.6, -23.5, "EPSG:31983"),  # the same on SIRGAS 2000
        ("EPSG:4269", -80.0, 35.0, "EPSG:26917"),  # North Carolina, NAD83
        ("EPSG:4258", 2.35, 48.85, "EPSG:25831"),  # Paris, ETRS89
    ],
)
def test_degrees_go_to_their_utm_zone_on_their_own_datum(crs, lon, lat, want):
    utm = local_utm(crs, (lon - 0.01, lat - 0.01, lon + 0.01, lat + 0.01))
    assert utm == pyproj.CRS(want)


def test_no_utm_zone_for_the_globe_the_poles_or_projected_crss():
    assert local_utm("EPSG:4326", (-180, -90, 180, 90)) is None
    assert local_utm("EPSG:4326", (10.0, 84.5, 10.1, 84.6)) is None
    assert local_utm("EPSG:32617", (500_000, 4e6, 501_000, 4.001e6)) is None


def test_layers_are_measured_in_the_zone_rasters_are_read_in():
    # On their own datum, as rasters are.
    assert layer_utm("EPSG:4674", (-46.61, -23.51, -46.59, -23.49)) == pyproj.CRS("EPSG:31983")
    # A centre on the line between zones 10 and 11 takes the eastern one, for both.
    on_the_line = (-120.5, 35.0, -119.5, 35.1)
    assert local_utm("EPSG:4326", on_the_line) == pyproj.CRS("EPSG:32611")
    assert layer_utm("EPSG:4326", on_the_line) == pyproj.CRS("EPSG:32611")
    # A layer wider than a zone is still measured in the zone of its centre (-92.5).
    assert local_utm("EPSG:4326", (-100, 30, -85, 40)) is None
    assert layer_utm("EPSG:4326", (-100, 30, -85, 40)) == pyproj.CRS("EPSG:32615")
    with pytest.raises(InputError, match="beyond UTM's latitudes"):
        layer_utm("EPSG:4326", (10.0, 84.5, 10.1, 84.6))


def test_a_projected_layer_is_measured_in_the_zone_of_its_own_datum():
    # Florida East in US feet (NAD83): UTM 17N on NAD83.
    to_feet = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:2236", always_xy=True)
    bounds = to_feet.transform_bounds(-80.51, 26.99, -80.49, 27.01)
    assert layer_utm("EPSG:2236", bounds) == pyproj.CRS("EPSG:26917")
    # Fiji across the antimeridian (179.5 E to 178 W: centre 179.25 W, zone 1 south).
    to_pdc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3832", always_xy=True)
    west, south = to_pdc.transform(179.5, -17.1)
    east, north = to_pdc.transform(-178.0, -16.9)
    assert layer_utm("EPSG:3832", (west, south, east, north)) == pyproj.CRS("EPSG:32701")


def test_web_mercator_pixels_are_measured_on_the_ground():
    # 0.3 map metres at 45 N (y = 5,621,521 m) are 0.3 * cos(45) = 0.212 ground metres
    at_45 = Affine(0.3, 0, 0.0, 0, -0.3, 5_621_521.0 + 150)
    assert gsd_metres("EPSG:3857", at_45, 1000, 1000) == pytest.approx(0.2121, rel=2e-3)
