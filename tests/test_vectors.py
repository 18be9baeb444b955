"""Reading vector layers from real files, repairing polygons, checked reprojection."""

from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.errors import InputError, LabelError
from geodetect.io.vectors import read_layer, repair_geometries, to_crs_checked

UTM = "EPSG:32633"


def pools(n: int = 3, crs: str | None = UTM) -> gpd.GeoDataFrame:
    """``n`` 10 m squares 50 m apart near 500 km E, 5000 km N."""
    x0 = 500_000.0 + 50.0 * np.arange(n)
    geoms = shapely.box(x0, 5_000_000.0, x0 + 10.0, 5_000_010.0)
    return gpd.GeoDataFrame(
        {"class": ["pool"] * n, "score": np.linspace(0.9, 0.5, n)}, geometry=geoms, crs=crs
    )


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".fgb", ".parquet"])
def test_read_each_format(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    layer = pools()
    if suffix == ".parquet":
        layer.to_parquet(path)
    else:
        layer.to_file(path)

    read = read_layer(path)

    assert len(read) == 3
    assert read.crs.equals(layer.crs)
    assert read.attrs["source"] == str(path)
    assert set(read["class"]) == {"pool"}


def test_multi_layer_geopackage_needs_a_name(tmp_path):
    path = tmp_path / "two.gpkg"
    pools(2).to_file(path, layer="pools")
    pools(5).to_file(path, layer="tanks")

    with pytest.raises(LabelError, match="pools, tanks"):
        read_layer(path)
    assert len(read_layer(path, layer="tanks")) == 5
    assert len(read_layer(path, layer=0)) == 2
    with pytest.raises(LabelError, match="no layer 'roofs'.*pools, tanks"):
        read_layer(path, layer="roofs")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere.gpkg"
    with pytest.raises(InputError) as err:
        read_layer(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "no such file" in message
    assert "\n" not in message


def test_random_bytes_are_not_a_vector_file(tmp_path):
    path = tmp_path / "noise.gpkg"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a vector file"):
        read_layer(path)
    bad_parquet = tmp_path / "noise.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="not a Parquet file"):
        read_layer(bad_parquet)


def test_plain_table_has_no_geometries(tmp_path):
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(LabelError, match="no layer with geometries"):
        read_layer(csv)
    plain = tmp_path / "plain.parquet"
    pools().drop(columns="geometry").pipe(lambda df: df.to_parquet(plain))
    with pytest.raises(LabelError, match="GeoParquet"):
        read_layer(plain)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_layer_without_crs_is_an_error_unless_assumed(tmp_path):
    path = tmp_path / "nocrs.shp"
    pools(crs=None).to_file(path)
    assert not os.path.exists(tmp_path / "nocrs.prj")

    with pytest.raises(LabelError, match="no CRS"):
        read_layer(path)
    read = read_layer(path, assume_crs=UTM)
    assert read.crs.to_epsg() == 32633


def test_bbox_reads_only_intersecting_features(tmp_path):
    path = tmp_path / "labels.gpkg"
    pools(4).to_file(path)
    read = read_layer(path, bbox=(500_045.0, 4_999_990.0, 500_105.0, 5_000_020.0))
    assert len(read) == 2


def test_bow_tie_is_repaired_and_non_polygons_dropped():
    bow_tie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    collection = shapely.GeometryCollection(
        [shapely.box(5, 5, 6, 6), shapely.LineString([(0, 0), (9, 9)])]
    )
    layer = gpd.GeoDataFrame(
        {"id": [1, 2, 3, 4, 5]},
        geometry=[bow_tie, shapely.box(0, 0, 1, 1), shapely.Point(3, 3), None, collection],
        crs=UTM,
    )
    assert not layer.is_valid.iloc[0]

    fixed, report = repair_geometries(layer)

    assert report.repaired == 1 and report.dropped == 2
    assert fixed["id"].tolist() == [1, 2, 5]
    assert fixed.is_valid.all()
    assert set(fixed.geom_type) <= {"Polygon", "MultiPolygon"}
    assert fixed.geometry.iloc[0].area == pytest.approx(2.0)  # two unit triangles
    assert fixed.geometry.iloc[2].equals(shapely.box(5, 5, 6, 6))
    assert fixed.crs == layer.crs


def test_to_crs_checked_reprojects_and_refuses_to_guess():
    layer = pools()
    wgs84 = to_crs_checked(layer, "EPSG:4326")
    assert wgs84.crs.to_epsg() == 4326
    assert wgs84.total_bounds[0] == pytest.approx(15.0, abs=0.01)  # UTM 33 central meridian
    assert to_crs_checked(layer, UTM) is layer

    with pytest.raises(LabelError, match="no CRS"):
        to_crs_checked(pools(crs=None), "EPSG:4326")
    assumed = to_crs_checked(pools(crs=None), "EPSG:4326", assume_crs=UTM)
    np.testing.assert_allclose(assumed.total_bounds, wgs84.total_bounds)

    with pytest.raises(InputError, match="not a CRS"):
        to_crs_checked(layer, "EPSG:not-a-code")
