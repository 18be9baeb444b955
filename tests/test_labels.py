"""Label layers and chip folders become the right pixel boxes, or one clear LabelError."""

from __future__ import annotations

import json
import logging

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geodetect.errors import InputError, LabelError
from geodetect.io.labels import (
    LabelSource,
    chip_class_names,
    chips_on_grids,
    class_names,
    labels_on_grids,
    map_to_pixel_boxes,
    read_coco,
    read_labels,
    read_voc_folder,
)
from geodetect.io.raster import open_mosaics

from conftest import NORTH_UP, paint_boxes, write_geotiff


def pixel_box_to_map(x1, y1, x2, y2, transform=NORTH_UP):
    """Pixel-edge box -> map-coordinate polygon (north-up)."""
    (mx1, my1), (mx2, my2) = transform @ (x1, y1), transform @ (x2, y2)
    return shapely.box(min(mx1, mx2), min(my1, my2), max(mx1, mx2), max(my1, my2))


@pytest.fixture
def scene(tmp_path):
    return write_geotiff(
        tmp_path / "scene.tif", paint_boxes(100, 120, [(10, 20, 30, 35)]), transform=NORTH_UP
    )


def write_layer(path, geoms, crs="EPSG:32617", **columns):
    gpd.GeoDataFrame(columns, geometry=list(geoms), crs=crs).to_file(path)
    return path


def test_labels_in_another_crs_land_on_the_right_pixels(tmp_path, scene):
    boxes = [(10, 20, 30, 35), (50.5, 60, 70, 90)]
    utm = gpd.GeoSeries([pixel_box_to_map(*b) for b in boxes], crs="EPSG:32617")
    path = write_layer(tmp_path / "labels.geojson", utm.to_crs(4326), crs=4326)
    labels = read_labels(path)
    assert labels.crs.to_epsg() == 4326
    [on_grid] = labels_on_grids(labels, open_mosaics([scene]), class_names(labels))
    np.testing.assert_allclose(on_grid.boxes, np.array(boxes), atol=1e-3)
    assert on_grid.classes.tolist() == [0, 0]


def test_map_to_pixel_boxes_takes_the_envelope_in_pixel_space():
    triangle = shapely.Polygon([NORTH_UP @ (10, 10), NORTH_UP @ (20, 30), NORTH_UP @ (5, 25)])
    np.testing.assert_allclose(
        map_to_pixel_boxes(np.array([triangle]), NORTH_UP), [[5, 10, 20, 30]], atol=1e-6
    )


def test_invalid_polygon_is_repaired_and_kept(tmp_path, scene, caplog):
    x0, y0 = NORTH_UP @ (10, 10)
    x1, y1 = NORTH_UP @ (30, 30)
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    path = write_layer(tmp_path / "labels.gpkg", [bowtie, pixel_box_to_map(50, 50, 60, 60)])
    with caplog.at_level(logging.INFO, logger="geodetect"):
        labels = read_labels(path)
    assert len(labels) == 2 and labels.geometry.is_valid.all()
    assert "1 invalid label geometry repaired" in caplog.text
    [on_grid] = labels_on_grids(labels, open_mosaics([scene]), ["pool"])
    np.testing.assert_allclose(on_grid.boxes[0], [10, 10, 30, 30], atol=1e-6)


def test_labels_outside_the_raster_are_counted_in_a_warning(tmp_path, scene, caplog):
    inside = pixel_box_to_map(10, 10, 20, 20)
    outside = [pixel_box_to_map(500, 500, 510, 510), pixel_box_to_map(-50, 10, -40, 20)]
    path = write_layer(tmp_path / "labels.gpkg", [inside, *outside])
    labels = read_labels(path)
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        [on_grid] = labels_on_grids(labels, open_mosaics([scene]), ["pool"])
    assert len(on_grid) == 1
    assert "2 of 3 labels lie outside every input raster" in caplog.text


def test_no_label_on_any_raster_is_a_label_error(tmp_path, scene):
    path = write_layer(tmp_path / "labels.gpkg", [pixel_box_to_map(500, 500, 510, 510)])
    with pytest.raises(LabelError, match="none of its 1 labels overlaps"):
        labels_on_grids(read_labels(path), open_mosaics([scene]), ["pool"])


def test_empty_layer_is_a_label_error(tmp_path):
    path = write_layer(tmp_path / "labels.gpkg", [pixel_box_to_map(0, 0, 1, 1)])
    empty = gpd.read_file(path).iloc[:0]
    empty.to_file(tmp_path / "empty.gpkg")
    with pytest.raises(LabelError, match="holds no features"):
        read_labels(tmp_path / "empty.gpkg")


def test_missing_label_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_labels(tmp_path / "nope.gpkg")


def test_points_become_squares_of_their_size_in_metres(tmp_path, scene):
    centre = NORTH_UP @ (40, 50)  # 0.3 m pixels: 6 m = 20 px, 3 m = 10 px
    other = NORTH_UP @ (80, 50)
    path = write_layer(
        tmp_path / "points.gpkg",
        gpd.GeoSeries([shapely.Point(centre), shapely.Point(other)], crs="EPSG:32617").to_crs(4326),
        crs=4326,
        size=[6.0, None],
    )
    labels = read_labels(path, point_size=3.0)
    [on_grid] = labels_on_grids(labels, open_mosaics([scene]), ["pool"])
    np.testing.assert_allclose(on_grid.boxes, [[30, 40, 50, 60], [75, 45, 85, 55]], atol=0.05)


def test_points_without_a_size_are_a_label_error(tmp_path):
    path = write_layer(tmp_path / "points.gpkg", [shapely.Point(NORTH_UP @ (4, 5))])
    with pytest.raises(LabelError, match="--point-size"):
        read_labels(path)


def test_lines_are_a_label_error(tmp_path):
    path = write_layer(
        tmp_path / "lines.gpkg", [shapely.LineString([NORTH_UP @ (0, 0), NORTH_UP @ (5, 5)])]
    )
    with pytest.raises(LabelError, match="holds lines"):
        read_labels(path)


def test_classes_come_from_the_class_field_sorted(tmp_path, scene):
    geoms = [pixel_box_to_map(10, 10, 20, 20), pixel_box_to_map(30, 30, 40, 40)]
    path = write_layer(
        tmp_path / "labels.gpkg", geoms, kind=["tank", "pool"], **{"class": ["x", "y"]}
    )
    assert class_names(read_labels(path)) == ["x", "y"]
    labels = read_labels(path, class_field="kind")
    assert class_names(labels) == ["pool", "tank"]
    [on_grid] = labels_on_grids(labels, open_mosaics([scene]), class_names(labels))
    assert on_grid.classes.tolist() == [1, 0]
    with pytest.raises(LabelError, match="no attribute 'type'"):
        read_labels(path, class_field="type")


def test_default_class_is_pool(tmp_path):
    path = write_layer(tmp_path / "labels.gpkg", [pixel_box_to_map(10, 10, 20, 20)])
    assert class_names(read_labels(path)) == ["pool"]


def write_png(path, height=64, width=64):
    with rasterio.open(
        path, "w", driver="PNG", height=height, width=width, count=3, dtype="uint8"
    ) as dst:
        dst.write(paint_boxes(height, width, [(5, 6, 20, 30)]))
    return path


VOC_XML = """<annotation>
  <filename>{name}</filename>
  <size><width>64</width><height>64</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = (
    "<object><name>{cls}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
    "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
)


def test_voc_folder_reads_pixel_edge_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_png(tmp_path / "images" / "000000000.png")
    write_png(tmp_path / "images" / "000000001.png")
    objects = VOC_OBJECT.format(cls="pool", x1=5.0, y1=6.0, x2=20.0, y2=30.0) + VOC_OBJECT.format(
        cls="tank", x1=40, y1=40, x2=50.5, y2=52
    )
    (tmp_path / "labels" / "000000000.xml").write_text(
        VOC_XML.format(name="000000000.png", objects=objects)
    )
    chips = read_voc_folder(tmp_path)
    assert [c.image.name for c in chips] == ["000000000.png", "000000001.png"]
    np.testing.assert_allclose(chips[0].boxes, [[5, 6, 20, 30], [40, 40, 50.5, 52]])
    assert chips[0].classes == ("pool", "tank")
    assert len(chips[1].boxes) == 0  # an image without labels is a negative chip
    classes = chip_class_names(chips)
    grids = chips_on_grids(chips, classes)
    assert grids[0].grid.width == 64 and grids[0].classes.tolist() == [0, 1]


def test_voc_folder_with_broken_xml_is_a_label_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_png(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.xml").write_text("<annotation><object>")
    with pytest.raises(LabelError, match="a.xml"):
        read_voc_folder(tmp_path)


def test_voc_folder_needs_images_and_labels(tmp_path):
    with pytest.raises(InputError, match="images/ and labels/"):
        read_voc_folder(tmp_path)


def test_coco_json_reads_xywh_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    write_png(tmp_path / "images" / "a.png")
    write_png(tmp_path / "images" / "b.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 64},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 6, 15, 24]}],
        "categories": [{"id": 7, "name": "pool"}],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    chips = read_coco(path)
    np.testing.assert_allclose(chips[0].boxes, [[5, 6, 20, 30]])
    assert chips[0].classes == ("pool",) and len(chips[1].boxes) == 0


def test_coco_json_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(LabelError, match="not a COCO detection file"):
        read_coco(path)
    path.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "x.png"}], "annotations": [], "categories": []}
        )
    )
    with pytest.raises(InputError, match="'x.png' not found"):
        read_coco(path)


def test_a_label_source_is_one_of_four_kinds_checked_when_made(tmp_path, scene):
    labels = write_layer(tmp_path / "pools.gpkg", [pixel_box_to_map(10, 20, 30, 35)])
    source = LabelSource.of([scene], labels, class_field="kind", point_size=3.0)
    assert (source.kind, source.path, source.images) == ("layer", labels, (str(scene),))
    assert (source.class_field, source.point_size) == ("kind", 3.0)
    assert source.describe() == {"labels": str(labels)}
    assert LabelSource.of(voc=tmp_path).describe() == {"voc": str(tmp_path)}
    with pytest.raises(InputError, match="in one way"):
        LabelSource.of([scene])
    with pytest.raises(InputError, match="in one way"):
        LabelSource.of(voc=tmp_path, coco=tmp_path / "a.json")
    with pytest.raises(InputError, match="at least one IMAGE"):
        LabelSource.of([], labels)
    with pytest.raises(InputError, match="cannot be combined"):
        LabelSource.of([scene], yolo=tmp_path)
    with pytest.raises(InputError, match="unknown label source"):
        LabelSource("shapefile", labels, (str(scene),))


def test_the_notebook_guesses_the_source_from_one_path(tmp_path, scene):
    labels = write_layer(tmp_path / "pools.gpkg", [pixel_box_to_map(10, 20, 30, 35)])
    assert LabelSource.guess(scene, labels).kind == "layer"
    assert LabelSource.guess([scene, scene], labels).images == (str(scene), str(scene))
    voc = tmp_path / "export"
    (voc / "images").mkdir(parents=True)
    (voc / "labels").mkdir()
    assert LabelSource.guess(voc).kind == "voc"
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "data.yaml").write_text("names: [pool]\n")
    assert LabelSource.guess(yolo).kind == "yolo"
    with pytest.raises(InputError, match="in one way"):
        LabelSource.guess(scene)  # a raster without labels is no chip dataset
