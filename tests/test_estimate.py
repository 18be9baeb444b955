"""`geodetect sample` and `geodetect estimate`: a reviewed sample to a count with a 95 %
confidence interval, checked against a synthetic county whose pools are all known."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.county import DetectionLayer
from geodetect.county.estimate import estimate
from geodetect.county.review import draw_review
from geodetect.errors import InputError
from geodetect.io.export import write_batches
from geodetect.io.review import read_review

from conftest import assert_one_line_error, run_cli

CRS = "EPSG:32617"
X0, Y0, SIDE = 500000.0, 3300000.0, 3000.0
TRUE_POOLS = 1500


def _county(seed: int = 0):
    """Pools clustered in neighbourhoods over 9 km2; a layer that finds 85 % of them,
    better the larger they are, plus 300 false alarms with lower scores."""
    rng = np.random.default_rng(seed)
    hoods = rng.uniform(300, SIDE - 300, (30, 2))
    centres = hoods[rng.integers(0, 30, TRUE_POOLS)] + rng.normal(0, 180, (TRUE_POOLS, 2))
    centres = np.clip(centres, 10, SIDE - 10)
    sizes = rng.uniform([5, 3], [14, 9], (TRUE_POOLS, 2))
    truth = shapely.box(
        X0 + centres[:, 0] - sizes[:, 0] / 2,
        Y0 + centres[:, 1] - sizes[:, 1] / 2,
        X0 + centres[:, 0] + sizes[:, 0] / 2,
        Y0 + centres[:, 1] + sizes[:, 1] / 2,
    )
    found = rng.random(TRUE_POOLS) < 0.6 + 0.3 * (sizes[:, 0] > 8)
    n_false = 300
    false_centres = rng.uniform(10, SIDE - 10, (n_false, 2))
    false = shapely.box(
        X0 + false_centres[:, 0] - 3, Y0 + false_centres[:, 1] - 3,
        X0 + false_centres[:, 0] + 3, Y0 + false_centres[:, 1] + 3,
    )  # fmt: skip
    geoms = np.concatenate([truth[found], false])
    truth_id = np.concatenate([np.flatnonzero(found), np.full(n_false, -1)])
    scores = np.concatenate([rng.beta(5, 2, int(found.sum())), rng.beta(2, 4, n_false)])
    detections = gpd.GeoDataFrame(
        {
            "class": "pool",
            "score": scores,
            "area_m2": shapely.area(geoms),
            "truth_id": truth_id,
        },
        geometry=geoms,
        crs=CRS,
    )
    coverage = gpd.GeoDataFrame(
        {"source": ["a.tif"], "area_m2": [SIDE * SIDE]},
        geometry=[shapely.box(X0, Y0, X0 + SIDE, Y0 + SIDE)],
        crs=CRS,
    )
    return DetectionLayer("county.gpkg", detections, coverage), truth, found


def _fill(review, truth, found, rng):
    """A careful reviewer: the truth's verdicts, a reason for each rejection, and every
    missed pool of each square drawn."""
    items = review.items.copy()
    is_pool = items["truth_id"].to_numpy() >= 0
    items["verdict"] = np.where(is_pool, "pool", "not_pool")
    items["reason"] = np.where(is_pool, "", rng.choice(["tarp", "solar", "other"], len(items)))
    squares = review.squares.copy()
    squares["done"] = "yes"
    centres = shapely.centroid(truth[~found])
    inside = shapely.STRtree(squares.geometry.values).query(centres, predicate="within")[0]
    drawn = truth[~found][inside]
    missed = gpd.GeoDataFrame({"note": [""] * len(drawn)}, geometry=drawn, crs=CRS)
    return items, squares, missed


def test_the_interval_covers_the_true_count_in_nine_of_ten_reviews(capsys):
    layer, truth, found = _county()
    rng = np.random.default_rng(1)
    covered, widths, estimates = 0, [], []
    runs = 200
    for seed in range(runs):
        review = draw_review(layer, n=200, squares=30, square_size=150, seed=seed)
        result = estimate(*_fill(review, truth, found, rng), review.strata)
        covered += result.pools_low <= TRUE_POOLS <= result.pools_high
        widths.append(result.pools_high - result.pools_low)
        estimates.append(result.pools)
    with capsys.disabled():
        print(
            f"\n{runs} simulated reviews of {TRUE_POOLS} pools: the 95 % interval covered "
            f"the true count in {covered} ({covered / runs:.0%}); mean width "
            f"{np.mean(widths):.0f} pools ({np.mean(widths) / TRUE_POOLS:.0%}); mean "
            f"estimate {np.mean(estimates):.0f}"
        )
    assert covered >= 0.9 * runs
    assert abs(np.mean(estimates) / TRUE_POOLS - 1) < 0.05  # no bias worth the name


def test_water_area_and_rejection_reasons(tmp_path):
    layer, truth, found = _county()
    review = draw_review(layer, n=200, squares=30, square_size=150, seed=3)
    result = estimate(*_fill(review, truth, found, np.random.default_rng(0)), review.strata)
    true_water = shapely.area(truth).sum()
    assert result.water_low <= true_water <= result.water_high
    assert set(result.reasons) == {"tarp", "solar", "above_ground", "other", "unstated"}
    assert sum(result.reasons.values()) == pytest.approx(1.0, abs=1e-3)
    assert result.reasons["above_ground"] == 0


def test_an_unfinished_review_is_reported_not_used(tmp_path):
    layer, truth, found = _county()
    review = draw_review(layer, n=200, squares=30, square_size=150, seed=0)
    items, squares, missed = _fill(review, truth, found, np.random.default_rng(0))
    items.loc[items.index[:7], "verdict"] = ""
    squares.loc[squares.index[:2], "done"] = ""
    with pytest.raises(InputError, match="7 of .* no verdict and 2 of 30 square"):
        estimate(items, squares, missed, review.strata, source="review.gpkg")
    partial = estimate(items, squares, missed, review.strata, partial=True)
    assert partial.squares == 28


def test_sample_then_estimate_through_the_cli(tmp_path):
    layer, truth, found = _county()
    pools = tmp_path / "pools.gpkg"
    write_batches([layer.detections], pools, extra={"coverage": layer.coverage})
    out = tmp_path / "review.gpkg"
    run = run_cli("sample", pools, "--n", "120", "--squares", "12", "--square-size", "150",
                  "--seed", "4", "--out", out)  # fmt: skip
    assert run.returncode == 0, run.stderr
    items, squares, missed, strata = read_review(out)
    assert int(items["in_sample"].sum()) == 120 and len(squares) == 12
    assert list(strata["drawn"]) == [30, 30, 30, 30]
    # unfilled: refused with one line
    run = run_cli("estimate", pools, "--reviewed", out)
    assert_one_line_error(run, str(out), "not finished", "--partial")
    # filled as a reviewer would in QGIS, then estimated
    review = type("R", (), {"items": items, "squares": squares})
    items, squares, drawn = _fill(review, truth, found, np.random.default_rng(0))
    items.to_file(out, layer="review")
    squares.to_file(out, layer="squares")
    drawn.to_file(out, layer="missed")
    run = run_cli("estimate", pools, "--reviewed", out, "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["pools_low"] < result["pools"] < result["pools_high"]
    assert result["squares"] == 12
