"""Every feature says where it came from: file, acquisition date, GSD read, model and
threshold; the date comes from the file's metadata or from --date."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine

from geodetect.detect import detect
from geodetect.errors import InputError
from geodetect.io.raster import parse_date, scene_info

from conftest import NORTH_UP, paint_boxes, write_geotiff


@pytest.mark.parametrize(
    "text,date",
    [
        ("2021-05-03", "2021-05-03"),
        ("2021:05:03 10:22:01", "2021-05-03"),
        ("20210503", "2021-05-03"),
        ("2021-05-03T10:22:01.5Z", "2021-05-03"),
        ("2021-13-03", None),
        ("May 3rd", None),
    ],
)
def test_dates_are_read_in_the_forms_metadata_uses(text, date):
    assert parse_date(text) == date


def _two_flights(tmp_path):
    """Two files side by side: one whose metadata gives its acquisition date, one
    without (and a creation date, which is not an acquisition date)."""
    image = paint_boxes(128, 128, [(40, 40, 70, 60)])
    dated = write_geotiff(tmp_path / "dated.tif", image, transform=NORTH_UP)
    with rasterio.open(dated, "r+") as ds:
        ds.update_tags(ACQUISITION_DATE="2021:05:03 10:22:01")
    plain = write_geotiff(
        tmp_path / "plain.tif", image, transform=NORTH_UP @ Affine.translation(128, 0)
    )
    with rasterio.open(plain, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2024:01:01 00:00:00")
    return [dated, plain]


def test_each_feature_records_its_file_date_gsd_model_and_threshold(tmp_path, oracle):
    paths = _two_flights(tmp_path)
    assert scene_info(paths[0]).date == "2021-05-03" and scene_info(paths[1]).date is None
    layer = detect(paths, oracle, chip_size=64, overlap=32, progress=False, threshold=0.3)
    by_source = layer.set_index("source")
    assert sorted(by_source.index) == ["dated.tif", "plain.tif"]
    assert by_source.loc["dated.tif", "date"] == "2021-05-03"
    assert pd.isna(by_source.loc["plain.tif", "date"])
    assert np.allclose(layer["gsd_m"], 0.3) and np.allclose(layer["threshold"], 0.3)
    assert set(layer["model_id"]) == {oracle.model_id}
    # --date says it for every file
    dated = detect(paths, oracle, chip_size=64, overlap=32, progress=False, date="2020-07-15")
    assert set(dated["date"]) == {"2020-07-15"}


def test_a_file_read_through_a_warp_keeps_its_date_and_says_the_gsd_read(tmp_path, oracle):
    paths = _two_flights(tmp_path)
    layer = detect(paths[:1], oracle, chip_size=64, overlap=32, progress=False, gsd=0.45)
    assert set(layer["date"]) == {"2021-05-03"} and np.allclose(layer["gsd_m"], 0.45)


@pytest.mark.parametrize("bad", ["2021-02-30", "03/05/2021", "yesterday"])
def test_a_date_that_is_not_iso_is_refused_before_anything_is_read(tmp_path, oracle, bad):
    with pytest.raises(InputError, match=f"--date {bad}: give the date as YYYY-MM-DD"):
        detect([tmp_path / "missing.tif"], oracle, progress=False, date=bad)


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp", ".parquet"])
def test_a_layer_with_dated_and_undated_files_is_written_with_nulls(tmp_path, oracle, suffix):
    paths = _two_flights(tmp_path)
    out = tmp_path / f"pools{suffix}"
    detect(paths, oracle, chip_size=64, overlap=32, progress=False, out=out)
    back = gpd.read_parquet(out) if suffix == ".parquet" else gpd.read_file(out)
    dates = dict(zip(back["source"], back["date"], strict=True))
    assert str(dates["dated.tif"]).startswith("2021-05-03") and pd.isna(dates["plain.tif"])
