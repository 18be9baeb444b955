"""One GSD per model: training rasters of several GSDs are resampled to one, and
detection reads imagery at the model's GSD, so the same scene at 0.1 m and at 0.2 m
gives the same map boxes."""

from __future__ import annotations

import logging
import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

from geodetect.detect import detect
from geodetect.geometry import pixel_boxes_to_map
from geodetect.io.labels import LabelSource
from geodetect.io.raster import GridReader, open_mosaics, resample_to_gsd, scene_info
from geodetect.io.target import choose_target
from geodetect.train import load_labelled, prepare_training_data
from geodetect.train.augment import NO_AUGMENTATION
from geodetect.train.sizes import (
    COARSEN_FROM,
    MAX_COARSEN,
    MIN_SMALL_PX,
    TARGET_OBJECT_PX,
    object_scaled_gsd,
)

from conftest import make_oracle, paint_boxes, write_geotiff

ORIGIN = (500000.0, 3300000.0)


def _scene(path, gsd, map_boxes, *, size_m=60.0, origin=ORIGIN, nodata=None):
    """A scene of ``size_m`` metres at ``gsd`` with bright rectangles at ``map_boxes``
    (xmin, ymin, xmax, ymax in metres from the origin's corner, y down)."""
    n = round(size_m / gsd)
    pixel = [tuple(round(v / gsd) for v in b) for b in map_boxes]
    transform = Affine(gsd, 0, origin[0], 0, -gsd, origin[1])
    return write_geotiff(path, paint_boxes(n, n, pixel), transform=transform, nodata=nodata)


BOXES_M = [(4.0, 6.0, 10.0, 9.6), (30.2, 20.0, 36.0, 28.0), (44.0, 44.0, 47.6, 50.0)]


def _map_polys(origin=ORIGIN):
    return [
        shapely.box(origin[0] + x1, origin[1] - y2, origin[0] + x2, origin[1] - y1)
        for x1, y1, x2, y2 in BOXES_M
    ]


def test_resampled_grid_reads_the_same_scene_at_the_target_gsd(tmp_path):
    fine = _scene(tmp_path / "fine.tif", 0.1, BOXES_M)
    coarse = _scene(tmp_path / "coarse.tif", 0.2, BOXES_M)
    [fine_grid] = open_mosaics([fine])
    [read_at] = resample_to_gsd([fine_grid], 0.2, tolerance=0.15)
    [native] = open_mosaics([coarse])
    assert (read_at.width, read_at.height) == (native.width, native.height) == (300, 300)
    assert read_at.transform.almost_equals(native.transform)
    a, a_valid = GridReader(read_at).read(0, 0, 300, 300)
    b, _ = GridReader(native).read(0, 0, 300, 300)
    assert a_valid.all()
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    # beyond the file: padded and masked, not black data
    _, outside = GridReader(read_at).read(250, 250, 100, 100)
    assert outside[:50, :50].all() and not outside[50:, :].any() and not outside[:, 50:].any()
    # within the tolerance nothing is resampled
    assert resample_to_gsd([native], 0.21, tolerance=0.15)[0] is native


def test_training_on_two_gsds_gives_chips_at_one_gsd_with_boxes_to_match(tmp_path):
    fine = _scene(tmp_path / "fine.tif", 0.1, BOXES_M)
    far = (ORIGIN[0] + 1000.0, ORIGIN[1])
    coarse = _scene(tmp_path / "coarse.tif", 0.2, BOXES_M, origin=far)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=_map_polys() + _map_polys(far), crs=32617).to_file(labels)
    labelled = load_labelled(LabelSource.of([fine, coarse], labels))
    assert labelled.gsd() == pytest.approx(0.2)
    assert [g.grid.width for g in labelled.grids] == [300, 300]
    want = np.array([[x1 / 0.2, y1 / 0.2, x2 / 0.2, y2 / 0.2] for x1, y1, x2, y2 in BOXES_M])
    for gl in labelled.grids:
        np.testing.assert_allclose(gl.boxes, want, atol=1e-6)
    data = prepare_training_data(
        labelled, chip_size=64, val_fraction=0.0, augmentation=NO_AUGMENTATION
    )
    threshold = (150 - data.band_mean[0]) / data.band_std[0]
    seen = set()
    for i in range(len(data.train)):
        image, target = data.train[i]
        assert image.shape[-2:] == (64, 64)
        seen.add(data.train.items[i].grid_index)
        for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
            assert (image[0, y1:y2, x1:x2] > threshold).float().mean() > 0.9
    assert seen == {0, 1}


@pytest.mark.parametrize("gsd", [0.025, 0.1, 0.2, 0.4])
def test_a_scene_at_half_or_double_the_model_gsd_gives_the_same_map_boxes(tmp_path, gsd):
    # 0.025: eight times finer than the model (a model trained at a coarsened GSD, see
    # object_scaled_gsd, meeting imagery finer than its training rasters) is read at 0.2 m
    oracle = make_oracle(chip_size=128, gsd=0.2, typical_object_px=40)
    path = _scene(tmp_path / "s.tif", gsd, BOXES_M)
    layer = detect([path], oracle, chip_size=128, progress=False)  # default reader processes
    assert len(layer) == len(BOXES_M)
    # within half a 0.2 m pixel of the truth (bilinear at 0.4 m blurs edges by one more)
    tol = 0.1 if gsd <= 0.2 else 0.2
    for truth in _map_polys():
        dist = [shapely.hausdorff_distance(truth, g) for g in layer.geometry]
        assert min(dist) <= tol + 1e-9, (gsd, min(dist))
    if gsd >= 0.1:  # at its own 0.025 m pixels the scene's objects outgrow the chip
        native = detect([path], oracle, chip_size=128, progress=False, gsd="native")
        assert len(native) == len(BOXES_M)


@pytest.mark.parametrize(("gsd", "read_at"), [(0.025, 0.2), (0.01, 0.2), (0.6, 0.2), (1.0, 1.0)])
def test_imagery_finer_than_the_model_is_always_read_at_its_gsd(tmp_path, gsd, read_at):
    """However fine (a model trained at a coarsened GSD meets its flight's own pixels);
    imagery more than 4x coarser is read as it is, with a note."""
    path = _scene(tmp_path / "s.tif", gsd, BOXES_M[:1], size_m=12.0)
    choice = choose_target([scene_info(path)], model_gsd=0.2)
    assert choice.gsd_m == pytest.approx(read_at)
    assert bool(choice.warnings) == (gsd / 0.2 > 4)


LARGE_M = [(2.0, 2.0, 12.0, 10.0), (20.0, 4.0, 30.0, 14.0), (40.0, 30.0, 50.0, 39.0)]
LARGE_M += [(6.0, 40.0, 15.0, 50.0), (30.0, 46.0, 34.0, 50.0)]  # a 4 m one among 9-10 m ones


def test_objects_large_in_pixels_train_at_a_coarser_gsd_with_boxes_to_match(tmp_path, caplog):
    scene = _scene(tmp_path / "fine.tif", 0.05, LARGE_M)
    labels = tmp_path / "labels.gpkg"
    polys = [
        shapely.box(ORIGIN[0] + x1, ORIGIN[1] - y2, ORIGIN[0] + x2, ORIGIN[1] - y1)
        for x1, y1, x2, y2 in LARGE_M
    ]
    gpd.GeoDataFrame(geometry=polys, crs=32617).to_file(labels)
    sides = np.array([max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in LARGE_M])
    with caplog.at_level("INFO", logger="geodetect"):
        labelled = load_labelled(LabelSource.of([scene], labels))
    # 10 m objects are 200 px at 0.05 m: read at the GSD that makes them about 80 px
    want_gsd = 0.05 * np.percentile(sides / 0.05, 95) / TARGET_OBJECT_PX
    assert labelled.gsd() == pytest.approx(want_gsd, rel=0.02)
    assert labelled.typical_object_px == pytest.approx(TARGET_OBJECT_PX, rel=0.05)
    [gl] = labelled.grids
    assert gl.grid.width == round(60.0 / labelled.gsd())
    scale = 1 / labelled.gsd()  # metres to the coarser pixels
    want = np.array([[v * scale for v in b] for b in LARGE_M])
    np.testing.assert_allclose(gl.boxes, want, atol=0.6)
    assert "training at" in caplog.text and "--gsd 0.05" in caplog.text
    data = prepare_training_data(
        labelled, chip_size=128, val_fraction=0.0, augmentation=NO_AUGMENTATION
    )
    threshold = (150 - data.band_mean[0]) / data.band_std[0]
    for i in range(len(data.train)):
        image, target = data.train[i]
        for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
            assert (image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1] > threshold).float().mean() > 0.9
    # the user's --gsd is kept as given
    assert load_labelled(LabelSource.of([scene], labels), gsd=0.05).gsd() == pytest.approx(0.05)


def test_the_training_gsd_is_coarsened_only_where_objects_are_large_in_pixels():
    rng = np.random.default_rng(0)
    pools = rng.lognormal(np.log(7.5), 0.5, 600).clip(2.0, 30.0)  # metres, like real pools
    # at 0.2-0.3 m pools are already small in pixels: nothing changes
    assert object_scaled_gsd(pools, 0.3) == 0.3
    assert object_scaled_gsd(pools, 0.2) == 0.2
    # at 7.5 cm the typical pool drops to about TARGET_OBJECT_PX, small ones stay >= 12 px
    coarser = object_scaled_gsd(pools, 0.075)
    assert coarser > 0.075 * COARSEN_FROM
    typical, small = np.percentile(pools, [95, 5]) / coarser
    assert typical >= 0.99 * TARGET_OBJECT_PX and small >= 0.99 * MIN_SMALL_PX
    assert min(typical / TARGET_OBJECT_PX, small / MIN_SMALL_PX) < 1.01
    assert coarser == float(f"{coarser:.3g}")  # a GSD people can read
    # small objects set the limit: 0.3-8 m objects at 5 cm are large in pixels, but the
    # smallest 5 % (14 px) would fall under MIN_SMALL_PX: they stay at 5 cm
    mixed = np.linspace(0.3, 8.0, 300)
    assert np.percentile(mixed, 95) / 0.05 > 1.5 * TARGET_OBJECT_PX
    assert object_scaled_gsd(mixed, 0.05) == 0.05
    # never more than MAX_COARSEN times coarser
    lakes = rng.uniform(200.0, 400.0, 50)
    assert object_scaled_gsd(lakes, 0.1) == pytest.approx(0.1 * MAX_COARSEN)


def _in_degrees(src, dst):
    """``src`` warped into EPSG:4326 (bilinear), as imagery downloaded in degrees comes."""
    with rasterio.open(src) as ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rasterio's own Affine use
        transform, w, h = calculate_default_transform(
            ds.crs, "EPSG:4326", ds.width, ds.height, *ds.bounds
        )
        data = np.zeros((ds.count, h, w), np.uint8)
        reproject(
            ds.read(),
            data,
            src_transform=ds.transform,
            src_crs=ds.crs,
            dst_transform=transform,
            dst_crs="EPSG:4326",
            resampling=Resampling.bilinear,
        )
    return write_geotiff(dst, data, transform=transform, crs="EPSG:4326")


def test_imagery_in_degrees_is_detected_in_its_utm_zone(tmp_path, caplog):
    """Square metre pixels at the model's GSD, boxes back on the map where they were."""
    path = _in_degrees(_scene(tmp_path / "utm.tif", 0.2, BOXES_M), tmp_path / "wgs84.tif")
    oracle = make_oracle(chip_size=128, gsd=0.2, typical_object_px=40)
    with caplog.at_level(logging.INFO, logger="geodetect"):
        layer = detect([path], oracle, chip_size=128, progress=False)
    assert "detecting in WGS 84 / UTM zone 17N, EPSG:32617" in caplog.text
    assert layer.crs.to_epsg() == 32617
    assert len(layer) == len(BOXES_M)
    for truth in _map_polys():  # two warps, each blurring edges by up to a pixel
        assert min(shapely.hausdorff_distance(truth, g) for g in layer.geometry) <= 0.3
    # --gsd native reads the degrees as they are
    assert detect([path], oracle, chip_size=128, progress=False, gsd="native").crs.is_geographic


def test_training_rasters_in_degrees_are_read_in_their_utm_zone(tmp_path):
    path = _in_degrees(_scene(tmp_path / "utm.tif", 0.2, BOXES_M), tmp_path / "wgs84.tif")
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=_map_polys(), crs=32617).to_crs(4326).to_file(labels)
    labelled = load_labelled(LabelSource.of([path], labels))
    [gl] = labelled.grids
    assert gl.grid.crs.to_epsg() == 32617
    # square pixels of the degree pixel's longer side (0.215 m at 30 N)
    assert labelled.gsd() == pytest.approx(0.2, rel=0.1)
    assert gl.grid.transform.a == -gl.grid.transform.e == pytest.approx(labelled.gsd())
    placed = pixel_boxes_to_map(gl.boxes, gl.grid.transform)
    want = np.array([t.bounds for t in _map_polys()])
    np.testing.assert_allclose(np.array([g.bounds for g in placed]), want, atol=0.05)


@pytest.mark.parametrize(("model_gsd", "resampled"), [(0.21, False), (0.3, True)])
def test_web_mercator_imagery_meets_the_model_in_ground_metres(tmp_path, model_gsd, resampled):
    """0.3 map metres at 45 N are 0.21 m on the ground: read as it is by a 0.21 m model;
    a 0.3 m model reads it at 0.3 ground metres, 0.42 map metres."""
    transform = Affine(0.3, 0, 0.0, 0, -0.3, 5_621_521.0 + 30)
    path = write_geotiff(
        tmp_path / "m.tif", paint_boxes(200, 200, []), transform=transform, crs="EPSG:3857"
    )
    choice = choose_target([scene_info(path)], model_gsd=model_gsd)
    assert choice.lattice.a == pytest.approx(
        0.3 * model_gsd / 0.2121 if resampled else 0.3, rel=3e-3
    )
