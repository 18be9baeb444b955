"""Each raster of ../shared/rasters behaves as that folder's README says."""

from __future__ import annotations

import subprocess
import sys

import geopandas as gpd
import pyproj
import pytest
import rasterio
import shapely
import torch

from geodetect.detect import DetectionReport, detect
from geodetect.errors import RasterError
from geodetect.model import LoadedModel, build_retinanet, save_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from geodetect.model import ModelSpec

    spec = ModelSpec(
        classes=["pool"],
        band_mean=[100.0] * 3,
        band_std=[50.0] * 3,
        chip_size=128,
        fpn_channels=32,
        head_convs=1,
        gsd=0.3,
    )
    torch.manual_seed(0)
    net = build_retinanet(spec, pretrained="none").eval()
    net.detections_per_img = 5  # an untrained net scores everything ~0.01: keep it small
    path = save_model(net, spec, tmp_path_factory.mktemp("m") / "tiny.model")
    return LoadedModel(net, spec, "tiny", path)


def run_detect(path, model, **kw):
    kw.setdefault("threshold", 0.05)
    # These tests are about the rasters: torch, not `auto` (which would time three
    # runtimes for each run of 256 chips or more; tested in test_onnx.py).
    kw.setdefault("runtime", "torch")
    return detect([path], model, workers=0, progress=False, **kw)


def cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "geodetect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def assert_clean_error(proc, *needles):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("geodetect: error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_rgb_byte_collar_chips_skipped(shared_rasters, tiny_model):
    report = DetectionReport()
    layer = run_detect(
        shared_rasters / "RGB.byte.tif", tiny_model, chip_size=64, overlap=0, report=report
    )
    assert report.chips_empty > 0 and report.chips_read > 0
    assert report.chips_empty + report.chips_read == report.chips_total
    assert layer.crs.to_epsg() == 32618


def test_cogeo_geojson_lands_in_footprint(shared_rasters, tiny_model, tmp_path):
    from geodetect.io.export import write_layer

    layer = run_detect(shared_rasters / "cogeo.tif", tiny_model, threshold=0.0, chip_size=512)
    assert len(layer) > 0
    out = write_layer(layer, tmp_path / "cogeo.geojson")
    back = gpd.read_file(out)
    with rasterio.open(shared_rasters / "cogeo.tif") as ds:
        footprint = gpd.GeoSeries([shapely.box(*ds.bounds)], crs=ds.crs).to_crs(4326)[0]
    assert back.crs.to_epsg() == 4326
    assert footprint.buffer(1e-6).contains(shapely.union_all(back.geometry.values))


def test_alpha_zero_is_nodata(shared_rasters, tiny_model):
    report = DetectionReport()
    run_detect(shared_rasters / "alpha.tif", tiny_model, chip_size=64, overlap=0, report=report)
    assert report.chips_empty > 0  # chips under alpha 0 are skipped


def test_uint16_is_scaled_by_statistics_and_alpha_dropped(shared_rasters, tiny_model, caplog):
    layer = run_detect(shared_rasters / "RGBA.uint16.tif", tiny_model, chip_size=256)
    assert "scaling bands by their own statistics" in caplog.text
    assert layer.crs.to_epsg() == 32612


def test_single_band_needs_explicit_bands(shared_rasters, tiny_model):
    path = shared_rasters / "rgb1_fake_nir_epsg3857.tif"
    with pytest.raises(RasterError, match=r"1 data band\(s\) but the model expects 3.*--bands"):
        run_detect(path, tiny_model)
    assert_clean_error(cli("detect", path, "--model", tiny_model.path, "--out", "-"), "--bands")


def test_all_nodata_gives_valid_empty_layer(shared_rasters, tiny_model, tmp_path):
    out = tmp_path / "empty.gpkg"
    proc = cli(
        "detect", shared_rasters / "all-nodata.tif", "--model", tiny_model.path, "--out", out, "-q"
    )
    assert proc.returncode == 0, proc.stderr
    back = gpd.read_file(out)
    assert len(back) == 0 and back.crs.to_epsg() == 32628


def test_world_areas_in_square_metres(shared_rasters, tiny_model):
    # The untrained net's five best boxes lie in the chip's padding below this 512 x 256
    # world; its turned and flipped views put some on the map.
    layer = run_detect(shared_rasters / "world.rgb.tif", tiny_model, threshold=0.0, tta=True)
    assert len(layer) > 0 and layer.crs.is_geographic
    # boxes hundreds of km wide: geodesic edges differ from an equal-area projection's by
    # a few per cent, while square degrees would be off by ten orders of magnitude
    equal_area = layer.to_crs("+proj=cea +ellps=WGS84")
    assert layer["area_m2"].to_numpy() == pytest.approx(equal_area.area.to_numpy(), rel=0.05)
    assert layer["area_m2"].min() > 1e6  # degrees squared would be tiny


def test_esri_crs_padded_scene(shared_rasters, tiny_model, tmp_path):
    from geodetect.io.export import write_layer
    from geodetect.io.raster import GridReader, open_mosaics

    path = shared_rasters / "test_esri_wkt.tif"
    with pytest.raises(RasterError, match="--bands"):
        run_detect(path, tiny_model)
    layer = run_detect(path, tiny_model, bands=[1, 1, 1], threshold=0.0)
    assert layer.crs.equals(pyproj.CRS("ESRI:102039"))
    out = write_layer(layer, tmp_path / "esri.shp")
    assert "Albers" in out.with_suffix(".prj").read_text()
    # the 2x2 scene is read as a padded chip: data in the corner, invalid elsewhere
    (grid,) = open_mosaics([path])
    data, valid = GridReader(grid).read(0, 0, 128, 128)
    assert data.shape == (1, 128, 128) and valid.sum() == 4 and valid[:2, :2].all()


def test_gcp_only_raster_is_warped_or_refused(shared_rasters, tiny_model, tmp_path):
    # the shared file's GCPs lie far outside its pixels: a clear refusal, no wrong layer
    with pytest.raises(RasterError, match="ground control points do not lie on the image"):
        run_detect(shared_rasters / "RGB.byte.gcp.vrt", tiny_model)
    # proper GCPs: detections come out through the warp, in the GCPs' CRS
    from rasterio.control import GroundControlPoint as GCP

    from geodetect.io.raster import open_mosaics

    gcps = [
        GCP(row=r, col=c, x=500000 + 0.3 * c, y=3300000 - 0.3 * r)
        for r, c in [(0, 0), (0, 200), (100, 0), (100, 200)]
    ]
    path = tmp_path / "gcp.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=200,
        height=100,
        count=3,
        dtype="uint8",
        gcps=gcps,
        crs="EPSG:32617",
    ) as dst:
        dst.write(torch.randint(0, 255, (3, 100, 200), dtype=torch.uint8).numpy())
    (grid,) = open_mosaics([path])
    assert grid.transform.a == pytest.approx(0.3) and grid.crs.to_epsg() == 32617
    layer = run_detect(path, tiny_model, threshold=0.0)
    assert len(layer) > 0 and layer.crs.to_epsg() == 32617
    footprint = shapely.box(500000, 3300000 - 30, 500060, 3300000).buffer(0.31)
    assert footprint.contains(layer.geometry.union_all())


def test_rotated_without_crs_refused_unless_opted_in(shared_rasters, tiny_model):
    path = shared_rasters / "rotated.tif"
    with pytest.raises(RasterError, match="no CRS"):
        run_detect(path, tiny_model, bands=[1, 1, 1])
    layer = run_detect(path, tiny_model, bands=[1, 1, 1], allow_no_crs=True, threshold=0.0)
    assert layer.crs is None


def test_float_without_crs_is_an_error(shared_rasters, tiny_model):
    assert_clean_error(
        cli("detect", shared_rasters / "float.tif", "--model", tiny_model.path, "--out", "-"),
        "float.tif",
        "no CRS",
    )


def test_corrupt_names_file_and_window_or_is_skipped(shared_rasters, tiny_model, tmp_path):
    path = shared_rasters / "corrupt.tif"
    out = tmp_path / "c.gpkg"
    proc = cli(
        "detect",
        path,
        "--model",
        tiny_model.path,
        "--out",
        out,
        "--chip-size",
        "512",
        "-q",
    )  # default reader processes: the error crosses from one
    assert_clean_error(proc, "corrupt.tif", "window")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    report = DetectionReport()
    run_detect(path, tiny_model, skip_bad_chips=True, report=report, chip_size=256)
    assert report.skipped_windows and all("corrupt.tif" in m for m in report.skipped_windows)
    assert report.chips_read > 0


@pytest.mark.slow
def test_corrupt_file_on_a_dask_worker_is_one_line(shared_rasters, tiny_model, tmp_path):
    """The damaged window from a Dask worker: its own log and the error's GDAL chain
    stay out of the one line."""
    out = tmp_path / "c.gpkg"
    on_dask = cli(
        "detect", shared_rasters / "corrupt.tif", "--model", tiny_model.path, "--out", out,
        "--chip-size", "512", "--cluster", "local:1", "-q",
    )  # fmt: skip
    assert_clean_error(on_dask, "corrupt.tif", "window")
    assert not out.exists() and list(tmp_path.iterdir()) == []
