"""`geodetect synth --county`: two flights, parcels and a roll with planted errors, whose
answers the county commands must give back when the detections are perfect."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.county import DetectionLayer, compare_flights, join_parcels
from geodetect.synth.county import synth_county

from conftest import run_cli


@pytest.fixture(scope="module")
def county(tmp_path_factory):
    return synth_county(tmp_path_factory.mktemp("county"), seed=3, size=(1000, 1000))


def _perfect(scene) -> DetectionLayer:
    """The flight's truth as a detection layer, its footprint as the coverage."""
    truth = gpd.read_file(scene.truth_path)
    truth["score"] = 1.0
    x0, y1 = scene.transform @ (0, 0)
    x1, y0 = scene.transform @ (scene.width, scene.height)
    coverage = gpd.GeoDataFrame(geometry=[shapely.box(x0, y0, x1, y1)], crs=truth.crs)
    return DetectionLayer(str(scene.truth_path), truth, coverage)


def test_the_flights_differ_by_the_planted_changes(county):
    old, new = (gpd.read_file(s.truth_path) for s in (county.old, county.new))
    assert set(new["pool_id"]) - set(old["pool_id"]) == county.added
    assert set(old["pool_id"]) - set(new["pool_id"]) == county.removed
    both = old.merge(new[["pool_id", "area_m2"]], on="pool_id", suffixes=("_old", "_new"))
    ratio = (both["area_m2_new"] / both["area_m2_old"]).to_numpy()
    shrunk = both["pool_id"].isin(county.shrunk).to_numpy()
    assert np.allclose(ratio[shrunk], 0.49, atol=0.02) and np.allclose(ratio[~shrunk], 1)


def test_parcels_with_perfect_detections_give_the_planted_statuses(county):
    parcels = gpd.read_file(county.parcels_path, layer="parcels")
    truth = gpd.read_file(county.parcels_path, layer="truth")
    result = join_parcels(_perfect(county.old), parcels, id_field="APN", roll_field="HAS_POOL")
    got = dict(zip(result.parcels["APN"], result.parcels["status"], strict=True))
    assert got == dict(zip(truth["APN"], truth["expected"], strict=True))
    planted = dict(zip(truth["APN"], truth["planted"], strict=True))
    assert {got[a] for a, p in planted.items() if p == "undeclared"} == {"new"}
    assert {got[a] for a, p in planted.items() if p == "demolished"} == {"missing"}
    assert {got[a] for a, p in planted.items() if p == "outside"} == {"not_covered"}


def test_change_with_perfect_detections_recovers_the_shift_and_the_changes(county):
    result = compare_flights(_perfect(county.old), _perfect(county.new))
    assert result.shift == pytest.approx(county.shift, abs=0.05)
    status = result.summary["status"]
    assert status["new"] == len(county.added) and status["removed"] == len(county.removed)
    assert status["resized"] == len(county.shrunk)


def test_synth_county_from_the_cli(tmp_path):
    run = run_cli("synth", tmp_path / "c", "--county", "--seed", "5", "--size", "600")
    assert run.returncode == 0, run.stderr
    facts = json.loads((tmp_path / "c" / "county.json").read_text())
    assert facts["shift_m"] == [1.5, -0.7]
    assert (tmp_path / "c" / "old" / "scene.tif").exists()
    assert (tmp_path / "c" / "new" / "scene.tif").exists()
