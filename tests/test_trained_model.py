"""A trained model must find things: train briefly on the sample suburb through the CLI,
detect over the held-out sample mosaic with the defaults and score the layer.

The margins are loose for a short CPU budget but far above what a broken pipeline gets:
swapped band order, a missing normalisation or mis-decoded boxes give recall and
precision near zero (boxes must overlap the truth by IoU 0.5 to count)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def _train_detect_score(tmp_path, capsys, *, images, labels, minutes, test_images, truth):
    model = tmp_path / "m.model"
    _run(
        ["train", *map(str, images), "--labels", str(labels), "--out", str(model)]
        + ["--max-minutes", str(minutes), "-q"],
        capsys,
    )
    layer = tmp_path / "found.gpkg"
    _run(["detect", *map(str, test_images), "-m", str(model), "-o", str(layer), "-q"], capsys)
    return json.loads(_run(["evaluate", str(layer), "--truth", str(truth), "--json"], capsys))


def test_a_briefly_trained_model_finds_the_pools_of_another_mosaic(tmp_path, capsys):
    scores = _train_detect_score(
        tmp_path,
        capsys,
        images=[SAMPLE / "train" / "scene.tif"],
        labels=SAMPLE / "train" / "truth.gpkg",
        minutes=1.5,
        test_images=sorted((SAMPLE / "mosaic").glob("*.tif")),
        truth=SAMPLE / "mosaic" / "truth.gpkg",
    )
    assert scores["n_truth"] == 36
    assert scores["recall"] >= 0.6, scores
    assert scores["precision"] >= 0.6, scores
    assert scores["ap50"] >= 0.5, scores
    assert scores["duplicates"] <= 2, scores


@pytest.mark.slow
def test_real_orthophotos_train_on_two_sheets_and_detect_on_another(tmp_path, capsys):
    if not REAL.is_dir():
        pytest.skip("../shared/real is not present")
    # Two training sheets with many pools, one validation sheet (an area never trained on).
    import geopandas as gpd

    images = [REAL / "train" / "sheet_3312-342.tif", REAL / "train" / "sheet_3315-423.tif"]
    truth = gpd.read_file(REAL / "val" / "pools.gpkg")
    truth = truth[truth["sheet"] == "3333-343"]  # the pools of the one sheet detected
    truth.to_file(tmp_path / "truth.gpkg")
    scores = _train_detect_score(
        tmp_path,
        capsys,
        images=images,
        labels=REAL / "train" / "pools.gpkg",
        minutes=4,
        test_images=[REAL / "val" / "sheet_3333-343.tif"],
        truth=tmp_path / "truth.gpkg",
    )
    assert scores["n_truth"] == len(truth) == 60
    assert scores["recall"] >= 0.4, scores
    assert scores["precision"] >= 0.4, scores
