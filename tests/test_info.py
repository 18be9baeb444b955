"""`geodetect info`: a short summary for people, the complete metadata with --json."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from geodetect.cli import main
from geodetect.model import build_retinanet, save_model

IMAGES = [f"/data/pools/imagery/2023/tile_{i:04d}.tif" for i in range(580)]
HISTORY = [
    {"epoch": i, "steps": 10 * i, "loss": 1.0 / (i + 1), "lr": 1e-3, "map_50": 0.5}
    for i in range(1, 51)
]
TRAINING = {
    "source": {"labels": "/data/pools/labels.gpkg", "images": IMAGES},
    "objects": 4321,
    "train_chips": 900,
    "val_chips": 100,
    "epochs": 50,
    "steps": 500,
    "best_epoch": 37,
    "val_map_50": 0.8123,
    "val_map": 0.4567,
    "val_centre_error_px": 1.2,
    "score_threshold": 0.5,
    "stop_reason": "early stop",
    "lr": 3e-4,
    "batch_size": 16,
    "precision": "bf16",
    "device": "cuda",
    "seed": 0,
    "resumed_from": None,
    "minutes": 73.25,
    "history": HISTORY,
}


@pytest.fixture
def cli_logging():
    """Run ``main`` in-process without leaving its log handler (bound to this test's
    captured stderr) on the ``geodetect`` logger for later tests."""
    logger = logging.getLogger("geodetect")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers = []
    yield
    logger.handlers, logger.propagate, logger.level = saved


def _model(tmp_path, spec, training, name="m.model"):
    torch.manual_seed(0)
    spec = dataclasses.replace(spec, training=training)
    return save_model(build_retinanet(spec, pretrained="none"), spec, tmp_path / name)


def _info(capsys, *args):
    main(["info", *map(str, args)])
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_summary_counts_what_json_lists(tmp_path, tiny_spec, capsys, cli_logging):
    path = _model(tmp_path, tiny_spec, TRAINING)
    text = _info(capsys, path)
    lines = text.splitlines()
    assert len(lines) < 60 and max(map(len, lines)) <= 200
    assert "580" in text and IMAGES[0] in text and IMAGES[99] not in text
    assert "and 579 more" in text and "50 epochs" in text
    for needle in ("pool", "red, green, blue (uint8)", "0.3 m", "64 px", "resnet18", "giou_l1"):
        assert needle in text
    assert "AP50 0.8123, AP50:95 0.4567 at epoch 37" in text
    assert "900 training, 100 validation" in text and "cuda, bf16" in text

    meta = json.loads(_info(capsys, path, "--json"))
    assert meta["training"]["source"]["images"] == IMAGES
    assert meta["training"]["history"] == HISTORY
    assert len(meta["model_id"]) == 12 and meta["chip_size"] == 64


@pytest.mark.parametrize(
    "training",
    [
        {},
        {"source": {"voc": "/data/voc"}, "epochs": 3, "history": []},
        {"source": "old/file/list.txt", "val_map_50": None, "best_epoch": None},
        {"source": {"images": []}, "history": "?", "extra": {"k": list(range(500))}},
    ],
    ids=["none", "voc", "old", "odd"],
)
def test_partial_or_foreign_training_records_do_not_crash(
    tmp_path, tiny_spec, capsys, cli_logging, training
):
    text = _info(capsys, _model(tmp_path, tiny_spec, training))
    assert "training" in text and max(map(len, text.splitlines())) <= 200
    if training.get("source") == {"voc": "/data/voc"}:
        assert "VOC dataset" in text and "/data/voc" in text
    if "val_map_50" in training:
        assert "none (no validation area)" in text
