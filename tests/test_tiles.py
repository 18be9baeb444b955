"""Tile services as inputs: a scene cut into the PNG tiles of a Web Mercator XYZ (or TMS)
service and served over HTTP gives, read over its area at a stated GSD, the objects the
scene holds where they are on the map; a rerun fetches no tile twice; a service without
an area, a wrong template or a zoom level the service lacks get one line."""

from __future__ import annotations

import math
import re

import geopandas as gpd
import numpy as np
import pytest
from servers import file_server, matrix_tiles, wmts_capabilities, xyz_tiles

from geodetect.detect import detect
from geodetect.errors import InputError
from geodetect.evaluate import evaluate
from geodetect.io.raster import expand_inputs
from geodetect.io.tiles import TileService, is_tile_service, with_area

from conftest import (
    NORTH_UP,
    assert_one_line_error,
    make_oracle,
    paint_boxes,
    random_boxes,
    run_cli,
    write_geotiff,
)

ZOOM = 19  # 0.26 m ground pixels at NORTH_UP's latitude (29.8 N)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A 640 x 480 px scene at 0.3 m with 30 painted objects (EPSG:32617), its XYZ tiles
    at zoom 19 and its TMS tiles, served; yields (scene, area, URL, behaviour)."""
    root = tmp_path_factory.mktemp("tiles")
    boxes = random_boxes(np.random.default_rng(5), 480, 640, 30, max_size=28)
    scene = write_geotiff(root / "scene.tif", paint_boxes(480, 640, boxes), transform=NORTH_UP)
    area = xyz_tiles(scene, root / "xyz", ZOOM)
    xyz_tiles(scene, root / "tms", ZOOM, tms=True)
    with file_server(root) as (url, behaviour):
        yield scene, area, url, behaviour


def test_templates_are_tile_services_and_the_zoom_follows_the_pixel_size():
    assert is_tile_service("https://h/t/{z}/{x}/{y}.png")
    assert is_tile_service("xyz:https://h/t/{z}/{x}/{-y}.jpg")
    assert not is_tile_service("https://h/ortho.tif")
    (found,) = expand_inputs(["https://h/t/{z}/{x}/{y}.png?key=abc"])
    assert isinstance(found, TileService) and found.area is None
    equator = TileService("https://h/{z}/{x}/{y}.png", (10.0, -0.01, 10.01, 0.01))
    # 156,543 m / 2^z at the equator: zoom 19 is 0.30 m, zoom 20 0.15 m
    assert equator.zoom_for(0.3) == 19 and equator.zoom_for(0.2) == 20
    assert equator.zoom_for(0.33) == 19  # within 15 % coarser: the coarser level
    north = TileService("https://h/{z}/{x}/{y}.png", (10.0, 59.99, 10.01, 60.01))
    assert north.zoom_for(0.3) == 18  # half the ground pixel at 60 N
    with pytest.raises(InputError, match=r"needs \{z\}"):
        TileService("https://h/{z}/{x}.png")
    with pytest.raises(InputError, match="--bbox"):
        TileService("https://h/{z}/{x}/{y}.png", (10.0, 5.0, 9.0, 6.0))


@pytest.mark.parametrize("kind", ["xyz", "tms"])
def test_a_tile_service_read_at_a_gsd_finds_the_scenes_objects_where_they_are(
    service, oracle, kind, monkeypatch, tmp_path
):
    """The oracle over the served tiles (read at 0.3 m) finds every object it finds in
    the scene itself, in the same place (boxes matched at IoU >= 0.75, centres within
    half a pixel on average); the layer is in Web Mercator, its areas in ground square
    metres; a second run fetches no tile (GDAL's disk cache of the service)."""
    monkeypatch.setenv("GEODETECT_CACHE", str(tmp_path / "cache"))
    scene, area, url, behaviour = service
    row = "{-y}" if kind == "tms" else "{y}"
    tiles = TileService(f"{url}/{kind}/{{z}}/{{x}}/{row}.png", area)
    kwargs = dict(chip_size=96, overlap=48, progress=False)
    local = detect([scene], oracle, **kwargs)
    behaviour.requests.clear()
    layer = detect([tiles], oracle, gsd=0.3, **kwargs)
    assert layer.crs.to_epsg() == 3857 and len(local) >= 28
    found = evaluate(layer, local.to_crs(layer.crs), iou=0.75)
    assert found.recall == 1.0 and found.precision == 1.0
    assert found.centre_error_mean_m < 0.15
    ratio = layer["area_m2"].sum() / local["area_m2"].sum()
    assert 0.9 < ratio < 1.1  # ground square metres, not Web Mercator's (x 1.32 here)
    fetched = {r[1] for r in behaviour.requests if r[0] == "GET"}
    assert fetched and all(p.startswith(f"{kind}/{ZOOM}/") for p in fetched)
    behaviour.requests.clear()
    again = detect([tiles], oracle, gsd=0.3, **kwargs)
    assert len(again) == len(layer)
    tiles_fetched = [r for r in behaviour.requests if r[0] == "GET"]
    assert len(tiles_fetched) <= 1  # the probe of the area's centre, nothing else


@pytest.mark.slow
def test_the_command_line_reads_a_tile_service_over_its_bbox(service, untrained_model, tmp_path):
    scene, area, url, _ = service
    template = f"{url}/xyz/{{z}}/{{x}}/{{y}}.png"
    bbox = ",".join(f"{v:.6f}" for v in area)
    out = tmp_path / "pools.gpkg"
    env = {"GEODETECT_CACHE": str(tmp_path / "cache")}
    common = ["--model", untrained_model, "--chip-size", "96", "--gsd", "0.3", "--runtime", "torch"]
    done = run_cli("detect", template, "--bbox", bbox, *common, "--out", out, env=env)
    assert done.returncode == 0, done.stderr
    coverage = gpd.read_file(out, layer="coverage")
    assert coverage.crs.to_epsg() == 3857
    assert coverage["source"].str.startswith(f"127.0.0.1-z{ZOOM}-").all()
    covered = coverage.to_crs(32617).union_all()
    assert covered.buffer(1.0).contains(gpd.read_file(scene_outline(scene)).union_all())
    # no area: the world is too much
    proc = run_cli("detect", template, *common, "--out", tmp_path / "a.gpkg", env=env)
    assert_one_line_error(proc, "covers the world", "--bbox")
    # a template the server does not have
    wrong = f"{url}/nothing/{{z}}/{{x}}/{{y}}.png"
    proc = run_cli("detect", wrong, "--bbox", bbox, *common, "--out", tmp_path / "b.gpkg", env=env)
    assert_one_line_error(proc, "HTTP 404", f"zoom {ZOOM}")
    # --bbox with neither a tile service nor --stac
    proc = run_cli("detect", scene, "--bbox", bbox, *common, "--out", tmp_path / "c.gpkg", env=env)
    assert proc.returncode != 0 and "--bbox" in proc.stderr
    assert not any((tmp_path / n).exists() for n in ("a.gpkg", "b.gpkg", "c.gpkg"))


def scene_outline(scene):
    """The scene's footprint as a GeoJSON file beside it (EPSG:32617)."""
    import rasterio
    from shapely.geometry import box

    with rasterio.open(scene) as ds:
        outline = gpd.GeoDataFrame(geometry=[box(*ds.bounds).buffer(-1.0)], crs=ds.crs)
    path = scene.with_suffix(".outline.geojson")
    outline.to_file(path)
    return path


def test_zoom_levels_at_the_pixel_size_asked_match_web_mercators_pixels():
    """The pixel of the zoom chosen is never more than 15 % coarser than asked, and the
    next level up would be finer than needed (the coarsest that serves)."""
    for lat in (0.0, 29.8, 45.0, 60.0):
        for gsd in (0.075, 0.15, 0.3, 0.6):
            tiles = TileService("https://h/{z}/{x}/{y}.png", (0.0, lat - 0.01, 0.01, lat + 0.01))
            z = tiles.zoom_for(gsd)
            ground = 156543.03392804097 * math.cos(math.radians(lat)) / 2**z
            assert ground <= gsd * 1.15 + 1e-9
            assert 2 * ground > gsd * 1.15


def test_training_reads_a_tile_service_at_the_gsd_asked(service, tmp_path, monkeypatch):
    """Labels over a tile service's area become training objects on its pixels read at
    --gsd; without a GSD the run is refused in one line before anything is read."""
    from geodetect.io.labels import LabelSource
    from geodetect.train import load_labelled

    monkeypatch.setenv("GEODETECT_CACHE", str(tmp_path / "cache"))
    scene, area, url, _ = service
    tiles = TileService(f"{url}/xyz/{{z}}/{{x}}/{{y}}.png", area)
    truth = tmp_path / "truth.gpkg"
    found = detect([scene], make_oracle(), chip_size=96, overlap=48, progress=False)
    found[["geometry"]].to_file(truth)
    labelled = load_labelled(LabelSource.of([tiles], truth), gsd=0.3)
    assert labelled.num_objects == len(found)
    assert labelled.gsd() == pytest.approx(0.3, rel=0.02)  # ground metres
    with pytest.raises(InputError, match="give --gsd"):
        load_labelled(LabelSource.of([tiles], truth))


# The UTM tile matrix set's upper left corner: whole 0.3 m pixels from the scene's.
UTM_ORIGIN = (500000.0 - 0.3 * 3000, 3300000.0 + 0.3 * 2000)


@pytest.fixture(scope="module")
def wmts(service):
    """The scene's tiles behind a WMTS: layer ``ortho`` in Web Mercator (``xyz``, the
    XYZ tiles) and in the scene's own UTM zone at its own pixels (``utm``), beside a
    second layer; yields the capabilities URL."""
    scene, area, url, _ = service
    root = scene.parent
    matrix_tiles(scene, root / "utm" / "b", "EPSG:32617", UTM_ORIGIN, 0.3)
    merc = [(str(z), 2 * 20037508.342789244 / 256 / 2**z, 2**z) for z in range(21)]
    utm = [("a", 0.6, 64), ("b", 0.3, 128), ("c", 0.15, 256)]
    half = 20037508.342789244
    sets = {
        "xyz": ("urn:ogc:def:crs:EPSG::3857", (-half, half), merc),
        "utm": ("urn:ogc:def:crs:EPSG::32617", UTM_ORIGIN, utm),
    }
    template = "{TileMatrixSet}/{TileMatrix}/{TileCol}/{TileRow}.png"
    # the layer's extent, a little more than the scene's: GDAL's raster starts there
    extent = (area[0] - 0.001, area[1] - 0.001, area[2] + 0.001, area[3] + 0.001)
    capabilities = wmts_capabilities(url, template, sets, bbox=extent)
    (root / "WMTSCapabilities.xml").write_text(capabilities, encoding="utf-8")
    return f"{url}/WMTSCapabilities.xml"


def test_a_wmts_layer_is_read_in_its_tile_matrix_sets_crs_at_the_gsd(
    service, wmts, oracle, monkeypatch, tmp_path
):
    """A WMTS layer in the scene's own UTM zone at its pixels gives the scene's layer
    exactly; in Web Mercator, every object in its place. Several layers without
    layer=, an unknown layer or matrix set, and no area are one line each."""
    monkeypatch.setenv("GEODETECT_CACHE", str(tmp_path / "cache"))
    scene, area, _, behaviour = service
    kwargs = dict(chip_size=96, overlap=48, progress=False)
    local = detect([scene], oracle, **kwargs)
    (utm,) = with_area([f"WMTS:{wmts},layer=ortho,tilematrixset=utm"], area)
    behaviour.requests.clear()
    same = detect([utm], oracle, gsd=0.3, **kwargs)
    # the capabilities were fetched once; GDAL's opens in every process read the copy
    asked = [r for r in behaviour.requests if r[1] == "WMTSCapabilities.xml"]
    assert len(asked) == 1
    assert same.crs.to_epsg() == 32617
    assert len(same) == len(local) >= 28
    found = evaluate(same, local, iou=0.99)
    assert found.recall == 1.0 and found.precision == 1.0
    (merc,) = with_area([f"WMTS:{wmts},tilematrixset=xyz,layer=ortho"], area)
    placed = evaluate(detect([merc], oracle, gsd=0.3, **kwargs), local, iou=0.75)
    assert placed.recall == 1.0 and placed.precision == 1.0
    for text, needle in [
        (f"WMTS:{wmts}", "2 layers; choose one with WMTS:URL,layer=NAME (ortho, other)"),
        (f"WMTS:{wmts},layer=roads", "no layer 'roads'"),
        (f"WMTS:{wmts},layer=other,tilematrixset=utm", "no tile matrix set 'utm' (xyz)"),
    ]:
        (named,) = with_area([text], area)
        with pytest.raises(InputError, match=re.escape(needle)):
            named.window(0.3)
    with pytest.raises(InputError, match="give the area"):
        detect([f"WMTS:{wmts},layer=ortho"], oracle, gsd=0.3, **kwargs)


def test_a_tile_service_behind_basic_authentication(service, tmp_path, monkeypatch):
    """user:password@ in the template reaches the probe and GDAL's tile requests alike
    (as for any URL input); without them the probe's refusal is one line."""
    import rasterio

    monkeypatch.setenv("GEODETECT_CACHE", str(tmp_path / "cache"))
    _, area, url, behaviour = service
    behaviour.userpwd = "reader:s3cret"
    try:
        signed = url.replace("http://", "http://reader:s3cret@")
        vrt = TileService(f"{signed}/xyz/{{z}}/{{x}}/{{y}}.png", area).window(0.3)
        with rasterio.open(vrt) as ds:
            assert (ds.read(4) > 0).mean() > 0.3  # the scene's tiles came through
        assert "s3cret" not in vrt.name
        with pytest.raises(InputError, match="refused \\(HTTP 401\\)"):
            TileService(f"{url}/xyz/{{z}}/{{x}}/{{y}}.png", area).window(0.3)
    finally:
        behaviour.userpwd = None
