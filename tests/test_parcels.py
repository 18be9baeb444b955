"""`geodetect parcels`: pools per parcel against a tax roll, on layers with known answers."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from geodetect.county import join_parcels, parse_roll, read_detections
from geodetect.errors import LabelError
from geodetect.io.export import write_batches

from conftest import assert_one_line_error, run_cli

CRS = "EPSG:32617"
X0, Y0 = 500000.0, 3300000.0


def _parcel(col: int, row: int) -> shapely.Polygon:
    """Parcel (col, row) of a 30 m grid of parcels."""
    return shapely.box(X0 + 30 * col, Y0 + 30 * row, X0 + 30 * (col + 1), Y0 + 30 * (row + 1))


def _pool(x: float, y: float, w: float = 8.0, h: float = 5.0) -> shapely.Polygon:
    return shapely.box(X0 + x, Y0 + y, X0 + x + w, Y0 + y + h)


@pytest.fixture
def county(tmp_path):
    """Twelve parcels (4 x 3) of which the imagery covers the western three columns;
    pools with known owners; a roll with planted errors. Returns the detections file,
    the parcels and the expected status of each parcel."""
    pools = [
        (_pool(5, 5), 0.9),  # P0_0 (col 0, row 0)
        (_pool(35, 10), 0.8),  # P1_0
        (_pool(26, 40, 8, 5), 0.7),  # straddles P0_1 / P1_1: 4 m in P0_1, 4 m ... see below
        (_pool(65, 65, 2, 2), 0.95),  # P2_2: 4 m2, under --min-area 10
        (_pool(95, 5), 0.6),  # P3_0: outside the coverage, still seen (new)
    ]
    # The straddling pool: 5 m in col 0 (x 25..30), 3 m in col 1 (x 30..33): P0_1 holds most.
    pools[2] = (_pool(25, 40, 8, 5), 0.7)
    detections = gpd.GeoDataFrame(
        {
            "class": ["pool"] * len(pools),
            "score": [s for _, s in pools],
            "area_m2": [p.area for p, _ in pools],
        },
        geometry=[p for p, _ in pools],
        crs=CRS,
    )
    coverage = gpd.GeoDataFrame(
        {"source": ["a.tif"], "area_m2": [90.0 * 90.0]},
        geometry=[shapely.box(X0, Y0, X0 + 90, Y0 + 90)],
        crs=CRS,
    )
    path = tmp_path / "pools.gpkg"
    write_batches([detections], path, extra={"coverage": coverage})
    ids, shapes = [], []
    for row in range(3):
        for col in range(4):
            ids.append(f"P{col}_{row}")
            shapes.append(_parcel(col, row))
    on_roll = {"P0_0": 1, "P0_1": 0, "P1_1": 1, "P2_0": 1, "P3_1": 1, "P1_0": 2}
    parcels = gpd.GeoDataFrame(
        {"APN": ids, "POOLS": [on_roll.get(i, 0) for i in ids]}, geometry=shapes, crs=CRS
    )
    expected = {i: "agrees" for i in ids}
    expected.update(
        {
            "P0_1": "new",  # straddling pool, not on the roll
            "P1_1": "missing",  # on the roll; its neighbour holds the straddling pool
            "P2_0": "missing",  # on the roll, covered, nothing there
            "P1_0": "missing",  # roll counts 2, one found
            "P3_0": "new",  # outside the coverage but a pool was seen
            "P3_1": "not_covered",  # on the roll, outside the coverage: never missing
            "P3_2": "not_covered",
        }
    )
    return path, parcels, expected


def _statuses(result) -> dict[str, str]:
    return dict(zip(result.parcels["APN"], result.parcels["status"], strict=True))


def test_counts_and_statuses_against_a_roll_with_planted_errors(county):
    path, parcels, expected = county
    result = join_parcels(
        read_detections(path), parcels, id_field="APN", roll_field="POOLS", min_area=10
    )
    assert _statuses(result) == expected
    table = result.parcels.set_index("APN")
    assert table.loc["P0_1", "pools"] == 1 and table.loc["P1_1", "pools"] == 0  # once
    assert table.loc["P0_1", "water_m2"] == pytest.approx(40.0)
    assert table.loc["P2_2", "pools"] == 0  # the 4 m2 pool is under --min-area
    assert table.loc["P3_1", "covered"] == 0 and table.loc["P0_0", "covered"] == 1
    assert result.summary["pools"] == 4 and result.summary["pools_below_min_area"] == 1
    # the review list comes first, best score first
    assert list(result.parcels["status"][:2]) == ["new", "new"]
    assert result.summary["new"] == ["P0_1", "P3_0"]


def test_parcels_in_another_crs_give_the_same_answer_in_their_own_crs(county, tmp_path):
    path, parcels, expected = county
    other = parcels.to_crs("EPSG:4326")
    result = join_parcels(read_detections(path), other, roll_field="POOLS", min_area=10)
    assert result.parcels.crs.to_epsg() == 4326
    assert _statuses(result) == expected


@pytest.mark.parametrize(
    "values,counts,is_count",
    [
        (["yes", "No", " y ", "n", None], [1, 0, 1, 0, 0], False),
        (["TRUE", "false", "t", "F", ""], [1, 0, 1, 0, 0], False),
        ([1, 0, 1, 0, None], [1, 0, 1, 0, 0], False),
        ([True, False, True, False, False], [1, 0, 1, 0, 0], False),
        ([2, 0, 1, 3, 0], [2, 0, 1, 3, 0], True),
        (["2", "0", "1", "yes", "no"], [2, 0, 1, 1, 0], True),
    ],
)
def test_each_roll_form_is_understood(values, counts, is_count):
    got, count = parse_roll(pd.Series(values), source="roll.gpkg", field_name="POOL")
    assert got.tolist() == counts and count == is_count


def test_a_value_that_is_no_roll_entry_is_named(county):
    with pytest.raises(LabelError, match=r"roll.gpkg: field 'POOL' holds 2 value.*'maybe'"):
        parse_roll(pd.Series(["yes", "maybe", "1.5"]), source="roll.gpkg", field_name="POOL")


def test_a_yes_no_roll_compares_presence_not_counts(county):
    path, parcels, _ = county
    parcels["HAS"] = np.where(parcels["POOLS"] > 0, "yes", "no")
    result = join_parcels(read_detections(path), parcels, roll_field="HAS", min_area=10)
    assert _statuses(result)["P1_0"] == "agrees"  # one found, the roll says yes


def test_cli_writes_the_parcels_and_prints_the_summary(county, tmp_path):
    path, parcels, expected = county
    src = tmp_path / "parcels.geojson"
    parcels.to_crs("EPSG:4326").to_file(src)
    out = tmp_path / "review.gpkg"
    run = run_cli("parcels", path, "--parcels", src, "--roll-field", "POOLS", "--id-field",
                  "APN", "--min-area", "10", "--out", out, "--json", "-q")  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == {"new": 2, "missing": 3, "agrees": 5, "not_covered": 2}
    back = gpd.read_file(out)
    assert dict(zip(back["APN"], back["status"], strict=True)) == expected
    assert back.crs.to_epsg() == 4326 and {"pools", "water_m2", "best_score"} <= set(back)
    # the roll's own POOLS field is kept beside geodetect's pools, renamed
    assert (back["POOLS_parcel"] == back["roll_pools"]).all()


def test_bad_inputs_get_one_line_and_no_output(county, tmp_path):
    path, parcels, _ = county
    out = tmp_path / "review.gpkg"
    no_crs = tmp_path / "no_crs.shp"
    parcels.set_crs(None, allow_override=True).to_file(no_crs)
    run = run_cli("parcels", path, "--parcels", no_crs, "--out", out)
    assert_one_line_error(run, str(no_crs), "no CRS")
    good = tmp_path / "parcels.gpkg"
    parcels.to_file(good)
    run = run_cli("parcels", path, "--parcels", good, "--roll-field", "ROLL", "--out", out)
    assert_one_line_error(run, str(good), "'ROLL'", "POOLS")
    bare = tmp_path / "bare.geojson"
    gpd.read_file(path, layer="detections").to_file(bare)  # no coverage beside it
    run = run_cli("parcels", bare, "--parcels", good, "--out", out)
    assert_one_line_error(run, str(bare), "no coverage", "--coverage")
    assert not out.exists()
