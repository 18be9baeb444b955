"""A trained model must find things: a model trained briefly on the sample suburb (the
swimming-pool notebook's, which is weight for weight what `geodetect train` makes of the
same labels, seed and steps) detects over the held-out sample mosaic through the CLI with
the defaults, and the layer is scored.

Training counts seeded steps, not minutes, so a slow or busy machine trains the same
model. The margins are loose for a short run but far above what a broken pipeline gets:
swapped band order, a missing normalisation or mis-decoded boxes give recall and
precision near zero (boxes must overlap the truth by IoU 0.5 to count). Each pool on a
file seam must come out once and whole: one box matching it, no second box or piece."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geodetect.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
REAL = ROOT.parent / "shared" / "real" / "sao_paulo"


def _run(argv: list[str], capsys) -> str:
    capsys.readouterr()
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def _train_detect_score(tmp_path, capsys, *, images, labels, train_args, test_images, truth):
    model = tmp_path / "m.model"
    _run(
        ["train", *map(str, images), "--labels", str(labels), "--out", str(model)]
        + [*train_args, "-q"],
        capsys,
    )
    return _detect_score(tmp_path, capsys, model=model, test_images=test_images, truth=truth)


def _detect_score(tmp_path, capsys, *, model, test_images, truth):
    layer = tmp_path / "found.gpkg"
    _run(["detect", *map(str, test_images), "-m", str(model), "-o", str(layer), "-q"], capsys)
    scores = json.loads(_run(["evaluate", str(layer), "--truth", str(truth), "--json"], capsys))
    return scores, layer


def _seam_pools(images, truth: gpd.GeoDataFrame) -> np.ndarray:
    """Boxes of the truth objects that an inner edge of the files cuts."""
    edges = []
    for path in images:
        with rasterio.open(path) as ds:
            edges.append(shapely.box(*ds.bounds).exterior)
    outer = shapely.box(*shapely.union_all([shapely.Polygon(e) for e in edges]).bounds)
    inner = shapely.difference(shapely.union_all(edges), outer.exterior.buffer(1e-6))
    boxes = shapely.envelope(truth.geometry.values)
    return boxes[shapely.intersects(boxes, inner)]


@pytest.mark.slow
def test_a_briefly_trained_model_finds_the_pools_of_another_mosaic(sample_model, tmp_path, capsys):
    images = sorted((SAMPLE / "mosaic").glob("*.tif"))
    # sample_model: 300 seeded steps on sample_data/train from random weights
    scores, layer = _detect_score(
        tmp_path,
        capsys,
        model=sample_model,
        test_images=images,
        truth=SAMPLE / "mosaic" / "truth.gpkg",
    )
    assert scores["n_truth"] == 36
    assert scores["recall"] >= 0.6, scores
    assert scores["precision"] >= 0.6, scores
    assert scores["ap50"] >= 0.5, scores
    assert scores["duplicates"] == 0 and scores["extra_boxes"] == 0, scores

    truth = gpd.read_file(SAMPLE / "mosaic" / "truth.gpkg", layer="pools")
    found = gpd.read_file(layer).to_crs(truth.crs).geometry.values
    seam = _seam_pools(images, truth)
    assert len(seam) == 2
    for pool in seam:  # once, whole: one box matching it, nothing else on it
        touching = found[shapely.intersects(found, pool)]
        inter = shapely.area(shapely.intersection(touching, pool))
        iou = inter / (shapely.area(touching) + pool.area - inter)
        assert (iou >= 0.5).sum() == 1, iou
        assert (iou >= 0.1).sum() == 1, iou  # no half, no second box


@pytest.mark.slow
def test_real_orthophotos_train_on_two_sheets_and_detect_on_another(tmp_path, capsys):
    if not REAL.is_dir():
        pytest.skip("../shared/real is not present")
    # Two training sheets with many pools, one validation sheet (an area never trained on).
    images = [REAL / "train" / "sheet_3312-342.tif", REAL / "train" / "sheet_3315-423.tif"]
    truth = gpd.read_file(REAL / "val" / "pools.gpkg")
    truth = truth[truth["sheet"] == "3333-343"]  # the pools of the one sheet detected
    truth.to_file(tmp_path / "truth.gpkg")
    scores, _ = _train_detect_score(
        tmp_path,
        capsys,
        images=images,
        labels=REAL / "train" / "pools.gpkg",
        train_args=["--steps", "900", "--seed", "0"],
        test_images=[REAL / "val" / "sheet_3333-343.tif"],
        truth=tmp_path / "truth.gpkg",
    )
    assert scores["n_truth"] == len(truth) == 60
    assert scores["recall"] >= 0.4, scores
    assert scores["precision"] >= 0.4, scores
