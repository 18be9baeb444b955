"""The county commands (`parcels`, `change`, `sample`, `estimate`) given awkward input,
through the command line as a user runs them: an empty layer, a sample larger than the
layer, a review typed by hand, flights of different ground, parcels sharing an id, an
existing output, and `--progress json`. Each ends in a valid answer or in one line that
names the file and the fix, with no output written (README: "When the input is wrong")."""

from __future__ import annotations

import json
import shutil

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner

from geodetect.cli import cli
from geodetect.cli.change import _table as change_table
from geodetect.county import compare_flights, read_detections
from geodetect.county.estimate import estimate
from geodetect.county.review import draw_review
from geodetect.errors import InputError
from geodetect.io.export import write_batches
from geodetect.io.review import read_review, review_labels

from conftest import assert_one_line_error, events_of, run_cli

CRS = "EPSG:32617"
X0, Y0, SIDE = 500000.0, 3300000.0, 90.0
# Seven detections, one at the centre of each 30 m parcel but P2_0 and P1_1 (col_row);
# the two lowest scores are false alarms. Four score strata of 2, 2, 2 and 1.
CENTRES = [(0, 0), (1, 0), (0, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
SCORES = [0.95, 0.9, 0.85, 0.8, 0.6, 0.4, 0.2]
IS_POOL = [True, True, True, True, True, False, False]
ROLL = {"P0_0": "yes", "P1_0": "yes", "P2_0": "yes"}  # the rest "no"
OLD_ANSWER = b"an answer from an earlier run\n"


def _parcel(col: int, row: int) -> shapely.Polygon:
    return shapely.box(X0 + 30 * col, Y0 + 30 * row, X0 + 30 * (col + 1), Y0 + 30 * (row + 1))


def _coverage(dx: float = 0.0) -> gpd.GeoDataFrame:
    ground = shapely.box(X0 + dx, Y0, X0 + dx + SIDE, Y0 + SIDE)
    return gpd.GeoDataFrame(
        {"source": ["a.tif"], "area_m2": [SIDE * SIDE]}, geometry=[ground], crs=CRS
    )


def _detections(dx: float = 0.0) -> gpd.GeoDataFrame:
    geoms = [
        shapely.box(
            X0 + dx + 30 * c + 12, Y0 + 30 * r + 13, X0 + dx + 30 * c + 18, Y0 + 30 * r + 17
        )
        for c, r in CENTRES
    ]
    return gpd.GeoDataFrame(
        {"class": "pool", "score": SCORES, "area_m2": shapely.area(geoms)},
        geometry=geoms,
        crs=CRS,
    )


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    """The county's files: ``pools`` (the seven detections and their coverage),
    ``empty`` (a GeoPackage of none, as `detect` writes over ground without pools) and
    ``empty_geojson`` (the same as GeoJSON, which keeps no field names), ``far`` (the
    same pools flown 10 km east), ``parcels`` (3 x 3 of 30 m with a yes/no roll
    ``HAS``), ``split_parcels`` (the same with P0_0 in two features both named P0_0)."""
    folder = tmp_path_factory.mktemp("county")
    files = {}
    files["pools"] = write_batches(
        [_detections()], folder / "pools.gpkg", extra={"coverage": _coverage()}
    )
    files["far"] = write_batches(
        [_detections(10_000)], folder / "far.gpkg", extra={"coverage": _coverage(10_000)}
    )
    for name, ext in (("empty", "gpkg"), ("empty_geojson", "geojson")):
        files[name] = write_batches(
            [_detections().iloc[:0]], folder / f"empty.{ext}", extra={"coverage": _coverage()}
        )
    ids = [f"P{c}_{r}" for r in range(3) for c in range(3)]
    shapes = [_parcel(c, r) for r in range(3) for c in range(3)]
    parcels = gpd.GeoDataFrame(
        {"APN": ids, "HAS": [ROLL.get(i, "no") for i in ids]}, geometry=shapes, crs=CRS
    )
    files["parcels"] = folder / "parcels.gpkg"
    parcels.to_file(files["parcels"])
    halves = gpd.GeoDataFrame(
        {"APN": ["P0_0", "P0_0"], "HAS": ["yes", "yes"]},
        geometry=[
            shapely.box(X0, Y0, X0 + 15, Y0 + 30),
            shapely.box(X0 + 15, Y0, X0 + 30, Y0 + 30),
        ],
        crs=CRS,
    )
    files["split_parcels"] = folder / "split_parcels.gpkg"
    pd.concat([halves, parcels.iloc[1:]], ignore_index=True).to_file(files["split_parcels"])
    return files


def _strict_json(text: str):
    """JSON as any parser reads it: NaN and Infinity are Python's extension, not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _json_lines_or_log(stderr: str) -> tuple[list[dict], list[str]]:
    """A `--progress json` run's stderr as geodetect/progress.py promises it: lines that
    start with `{` are JSON objects with an event, the others geodetect's text lines."""
    events, other = events_of(stderr)  # json.loads fails on a line that is not JSON
    assert all(isinstance(e, dict) and "event" in e for e in events), stderr
    assert all(line.startswith("geodetect: ") for line in other), stderr
    return events, other


def _one_line_and_no_events(proc, *needles) -> None:
    assert_one_line_error(proc, *needles)
    events, other = _json_lines_or_log(proc.stderr)
    assert events == [] and other[-1].startswith("geodetect: error: ")


def _older_answer(path):
    path.write_bytes(OLD_ANSWER)
    return path


# 1. An empty detection layer


def test_parcels_of_an_empty_layer_are_a_valid_answer(county, tmp_path):
    """No pool found is an answer: each parcel the roll lists is missing one (the
    ground was looked at), the others agree. An empty GeoJSON, which keeps no field
    names, is read as the empty layer it is; an older output is replaced with
    --overwrite."""
    out = _older_answer(tmp_path / "parcels_out.gpkg")
    proc = run_cli("parcels", county["empty_geojson"], "--parcels", county["parcels"],
                   "--roll-field", "HAS", "--id-field", "APN", "--out", out, "--json",
                   "--overwrite", "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = _strict_json(proc.stdout)
    assert summary["status"] == {"new": 0, "missing": 3, "agrees": 6, "not_covered": 0}
    assert summary["pools"] == 0 and summary["new"] == []
    back = gpd.read_file(out, layer="parcels")
    assert len(back) == 9 and (back["pools"] == 0).all() and (back["covered"] == 1).all()
    assert set(back.loc[back["status"] == "missing", "APN"]) == set(ROLL)
    _json_lines_or_log(proc.stderr)


def test_change_against_an_empty_flight_is_a_valid_answer(county, tmp_path):
    """Every pool of the old flight is removed where the new one looked; no pair gives
    an offset, said as null in the JSON (NaN is no JSON) and in words in the table."""
    out = _older_answer(tmp_path / "change.gpkg")
    proc = run_cli("change", county["pools"], county["empty_geojson"], "--out", out, "--json",
                   "--overwrite", "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = _strict_json(proc.stdout)
    assert summary["status"]["removed"] == len(SCORES) and summary["pools_new"] == 0
    assert summary["pools_for_shift"] == 0 and summary["shift_se_m"] == [None, None]
    back = gpd.read_file(out, layer="change")
    assert len(back) == len(SCORES) and set(back["status"]) == {"removed"}
    _json_lines_or_log(proc.stderr)
    # two empty flights: an empty change layer, every count 0, and the table says so
    both = compare_flights(read_detections(county["empty"]), read_detections(county["empty"]))
    assert len(both.layer) == 0 and set(both.summary["status"].values()) == {0}
    assert "offset NEW - OLD: none found" in change_table(both.summary)


def test_sample_of_an_empty_layer_is_one_line(county, tmp_path):
    """Nothing to review: one line (and no JSON events), nothing written."""
    out = tmp_path / "review.gpkg"
    proc = run_cli("sample", county["empty"], "--out", out, "--progress", "json")
    _one_line_and_no_events(proc, str(county["empty"]), "no detections", "geodetect detect")
    assert not out.exists()
    # none inside the AOI: the AOI is named, not the layer blamed
    far = gpd.GeoDataFrame(geometry=[_coverage(10_000).geometry[0]], crs=CRS)
    with pytest.raises(InputError, match=r"no detections inside the AOI.*--aoi that overlaps"):
        draw_review(read_detections(county["pools"]), aoi=far)


# 2. A sample larger than the layer; 3. verdicts typed by hand


@pytest.fixture(scope="module")
def small_review(county, tmp_path_factory):
    """`sample --n 50` of the seven detections (over an older file, with --overwrite),
    with `--progress json`: the run and the review it wrote."""
    out = _older_answer(tmp_path_factory.mktemp("review") / "review.gpkg")
    proc = run_cli("sample", county["pools"], "--n", "50", "--squares", "2",
                   "--square-size", "40", "--seed", "1", "--out", out, "--overwrite",
                   "--progress", "json")  # fmt: skip
    return proc, out


def test_sample_larger_than_the_layer_reviews_every_detection(small_review):
    proc, out = small_review
    assert proc.returncode == 0, proc.stderr
    items, squares, _, strata = read_review(out)
    assert len(items) == len(SCORES) and items["in_sample"].all()
    assert sorted(items["score"]) == sorted(SCORES)  # each detection once
    assert list(strata["drawn"]) == list(strata["size"]) == [2, 2, 2, 1]
    assert len(squares) == 2
    _, log = _json_lines_or_log(proc.stderr)
    assert any(f"{len(SCORES)} drawn from 4 score strata" in line for line in log)


def _filled(review, tmp_path, verdicts, name):
    """A copy of the review with ``verdicts`` typed in (by score, highest first), every
    square done and a pool drawn as missed in each."""
    path = tmp_path / name
    shutil.copy(review, path)
    items, squares, missed, _ = read_review(path)
    by_score = np.argsort(-items["score"].to_numpy())
    items["verdict"] = pd.Series(verdicts, index=items.index[by_score])
    items["reason"] = np.where(items["verdict"].str.contains("no", case=False), "tarp", "")
    squares["done"] = "Yes"
    corners = squares.geometry.bounds[["minx", "miny"]].to_numpy()
    drawn = [shapely.box(x + 2, y + 2, x + 7, y + 6) for x, y in corners]
    missed = gpd.GeoDataFrame({"note": [""] * len(drawn)}, geometry=drawn, crs=squares.crs)
    items.to_file(path, layer="review")
    squares.to_file(path, layer="squares")
    missed.to_file(path, layer="missed")
    return path


def test_estimate_reads_verdicts_as_typed_and_a_whole_layer_judged(small_review, county, tmp_path):
    """'Pool', 'yes', 'not pool', 'No'... are the two verdicts, whatever the case and
    spaces: the estimate is the one from the verdicts spelt out. A stratum of one
    detection, judged whole, is known without error."""
    _, review = small_review
    typed = ["Pool", " yes ", "POOL", "pool", "Y", "not pool", "No"]
    path = _filled(review, tmp_path, typed, "typed.gpkg")
    proc = run_cli("estimate", county["pools"], "--reviewed", path, "--json")
    assert proc.returncode == 0, proc.stderr
    got = _strict_json(proc.stdout)
    spelt = _filled(review, tmp_path, np.where(IS_POOL, "pool", "not_pool"), "spelt.gpkg")
    expected = estimate(*read_review(spelt))
    assert got == json.loads(json.dumps(expected.to_dict()))
    assert got["detections"] == len(SCORES)
    assert got["precision"] == pytest.approx(sum(IS_POOL) / len(SCORES), abs=1e-4)
    assert [s["judged"] for s in got["strata"]] == [2, 2, 2, 1]
    assert 0 < got["pools_low"] <= got["pools"] <= got["pools_high"]


def test_verdicts_that_are_neither_are_refused_by_estimate_and_train(
    small_review, county, tmp_path
):
    """A typo is never counted as either verdict: both commands name the file, the
    values and what to type."""
    _, review = small_review
    typos = ["pool", "pol", "Pool", "not a pool", "maybe", "not_pool", "no"]
    path = _filled(review, tmp_path, typos, "typos.gpkg")
    proc = run_cli("estimate", county["pools"], "--reviewed", path)
    _one_line_and_no_events(proc, str(path), "3 verdict(s)", "'pol'", "pool or not_pool")
    # `train --review` reads the review through the same check (its one line: test_train_review)
    with pytest.raises(InputError, match=r"typos.gpkg: 3 verdict\(s\) .*'pol'"):
        review_labels(path)


def test_a_recall_of_nothing_is_refused_not_divided_by(small_review, tmp_path):
    """Squares done with no pool the layer found in them give no share of pools found:
    refused with what to do, not a NaN total."""
    _, review = small_review
    path = _filled(review, tmp_path, np.where(IS_POOL, "pool", "not_pool"), "empty_sq.gpkg")
    items, squares, missed, strata = read_review(path)
    items["square"] = -1  # as if no detection lay in a square
    with pytest.raises(InputError, match=r"none of the 2 done search square.*--squares"):
        estimate(items, squares, missed, strata, source=str(path))


# 4. Flights of different ground


def test_change_of_flights_that_never_overlap_is_one_line(county, tmp_path):
    out = tmp_path / "change.gpkg"
    proc = run_cli("change", county["pools"], county["far"], "--out", out, "--json")
    assert_one_line_error(proc, str(county["pools"]), str(county["far"]), "not overlap", "CRS")
    assert not out.exists() and proc.stdout == ""
    nothing = read_detections(county["pools"])
    nothing = type(nothing)(nothing.path, nothing.detections, nothing.coverage.iloc[:0])
    with pytest.raises(InputError, match="coverage is empty"):
        compare_flights(read_detections(county["pools"]), nothing)


# 5. Parcels that share an id


def test_parcels_sharing_an_id_are_one_line(county, tmp_path):
    """P0_0 in two features: its pool-less half would be reported missing the other
    half's pool, and the review list would name P0_0 for either."""
    out = tmp_path / "parcels_out.gpkg"
    proc = run_cli("parcels", county["pools"], "--parcels", county["split_parcels"],
                   "--id-field", "APN", "--roll-field", "HAS", "--out", out,
                   "--progress", "json")  # fmt: skip
    _one_line_and_no_events(proc, str(county["split_parcels"]), "'APN'", "'P0_0'", "Dissolve")
    assert not out.exists()


# 6. An existing output


@pytest.mark.parametrize("command", ["parcels", "change", "sample"])
def test_an_existing_output_is_kept_without_overwrite(command, county, tmp_path):
    """Refused before any work, the file byte for byte as it was and nothing left beside
    it (each success above replaces one with --overwrite)."""
    out = _older_answer(tmp_path / "answer.gpkg")
    inputs = {
        "parcels": [county["pools"], "--parcels", county["parcels"]],
        "change": [county["pools"], county["pools"]],
        "sample": [county["pools"]],
    }[command]
    proc = run_cli(command, *inputs, "--out", out)
    assert_one_line_error(proc, str(out), "already exists", "--overwrite")
    assert out.read_bytes() == OLD_ANSWER
    assert [p.name for p in tmp_path.iterdir()] == ["answer.gpkg"]


# 7. --progress json, as promised


@pytest.mark.parametrize("command", ["parcels", "change", "sample", "estimate"])
def test_each_county_command_offers_json_progress(command):
    """The promise the runs above check, as each county command's --help makes it."""
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--progress [bar|json|none]" in text and "one JSON object per line on stderr" in text
