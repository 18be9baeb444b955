"""What real imagery needed from training: the score threshold chosen over the
validation *area* (mostly background), mined hard examples around false alarms, and a
start from another model's weights."""

from __future__ import annotations

import logging
import math

import geopandas as gpd
import numpy as np
import pytest
import torch

from geodetect.errors import InputError
from geodetect.geometry import pixel_boxes_to_map
from geodetect.io.labels import LabelSource
from geodetect.model import load_model
from geodetect.train import load_labelled, prepare_training_data, train
from geodetect.train.chips import HARD
from geodetect.train.fit import mine_hard_examples
from geodetect.train.score import area_threshold, f1_standard_error, plateau_middle_threshold
from geodetect.train.split import TRAIN, VAL, SplitMap

from conftest import NORTH_UP, OracleDetector, paint_boxes, random_boxes, write_geotiff


class ScoredOracle(OracleDetector):
    """The oracle, in eval/train mode like a network; every bright blob scores 0.7."""

    def forward(self, batch):
        out = super().forward(batch)
        for o in out:
            o["scores"] = torch.full_like(o["scores"], 0.7)
        return out


@pytest.fixture
def half_labelled(tmp_path):
    """600 x 600 px scene of bright squares; only every other one is labelled, so the
    others are what a detector would call false alarms."""
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 600, 600, 60, min_size=10, max_size=20, gap=12)
    tif = write_geotiff(tmp_path / "s.tif", paint_boxes(600, 600, boxes), transform=NORTH_UP)
    labels = tmp_path / "labels.gpkg"
    labelled_boxes = boxes[::2]
    gpd.GeoDataFrame(
        geometry=list(pixel_boxes_to_map(labelled_boxes, NORTH_UP)), crs=32617
    ).to_file(labels)
    # Unit scaling, so the oracle sees raw brightness as it does in detection.
    data = prepare_training_data(
        load_labelled(LabelSource.of([tif], labels)),
        chip_size=64,
        val_fraction=0.0,
        band_stats=([0.0] * 3, [1.0] * 3),
    )
    return data, boxes, labelled_boxes


def test_mined_hard_examples_are_centred_on_unlabelled_look_alikes(half_labelled):
    data, boxes, labelled_boxes = half_labelled
    items = mine_hard_examples(ScoredOracle(), data, count=10, min_score=0.5)
    assert len(items) == 10 and all(item.anchor == HARD for item in items)
    unlabelled = boxes[1::2]
    for item in items:
        centre = np.array([item.col_off + 32, item.row_off + 32])
        alarm_centres = (unlabelled[:, :2] + unlabelled[:, 2:]) / 2
        # the chip is centred on a false alarm (up to the clipping at the scene edge)
        assert np.abs(alarm_centres - centre).max(axis=1).min() <= 32
        assert data.splits[item.grid_index].part_of(item.row_off, item.col_off, 64) == TRAIN
    data.train.set_hard_examples(items)
    before = len(data.train.items)
    assert len(data.train) == before + 10
    image, target = data.train[before]  # a hard chip reads where it was found
    assert image.shape[-1] == 64


def test_threshold_over_the_validation_area_counts_background_false_alarms(half_labelled):
    data, boxes, _ = half_labelled
    # The whole scene is validation area.
    data.splits[0] = SplitMap(data.splits[0].block, np.full_like(data.splits[0].parts, VAL))
    data.val = data.train
    windows = data.val_area()
    assert windows is not None and windows.chip_size == 128 and len(windows) == 16
    result = area_threshold(ScoredOracle(), windows)
    # Half of what is found is unlabelled: precision about 0.5 and recall about 1.
    assert result["windows"] == 16
    assert 0.35 <= result["precision"] <= 0.65 and result["recall"] >= 0.9
    # Every score is 0.7: F1 is the same up to 0.7 and 0 above, so the run the area
    # cannot rank is 0.2-0.65 and its middle is taken.
    assert result["threshold"] == 0.4


def test_f1_standard_error_shrinks_with_the_validation_set():
    # F1 = 2 TP / (found + truth) as a proportion of (found + truth) / 2 trials.
    assert f1_standard_error(0.8, 192, 208) == pytest.approx(math.sqrt(0.16 / 200))
    assert f1_standard_error(0.8, 48, 52) == pytest.approx(2 * f1_standard_error(0.8, 192, 208))


def test_the_threshold_is_the_middle_of_what_the_validation_area_cannot_rank():
    """200 objects: 160 found at 0.95 and 30 at 0.62, 60 false alarms at 0.37. F1 is
    380/450 up to 0.35, 380/390 from 0.4 to 0.6, 320/360 above. Averaged with their
    neighbours, 0.45-0.55 are the best (0.974) and the others more than one standard
    error (0.011, kept at 0.02) below: the middle, 0.5."""
    scores = np.r_[np.full(160, 0.95), np.full(30, 0.62), np.full(60, 0.37)]
    matched = np.r_[np.ones(190, bool), np.zeros(60, bool)]
    assert plateau_middle_threshold(scores, matched, 200, low=0.2, high=0.8) == 0.5
    # One object lifting one threshold does not move it: a 191st found at 0.72.
    spiked = plateau_middle_threshold(
        np.r_[scores, 0.72], np.r_[matched, True], 201, low=0.2, high=0.8
    )
    assert spiked == 0.5
    # A handful of objects cannot rank anything: the whole range is one run.
    few = plateau_middle_threshold(
        np.r_[np.full(6, 0.9), 0.57, 0.53, 0.53], np.r_[np.ones(7, bool), False, False], 10,
        low=0.2, high=0.8,
    )  # fmt: skip
    assert few == 0.5
    # A curve rising to the range's end ends there (the ends count their own F1 twice).
    rising = plateau_middle_threshold(
        np.r_[np.full(5, 0.9), np.linspace(0.21, 0.79, 12)],
        np.r_[np.ones(5, bool), np.zeros(12, bool)],
        5,
        low=0.2,
        high=0.8,
    )
    assert rising == 0.8


def _painted_scene(tmp_path, *, seed):
    """A 200 px GeoTIFF with 12 painted boxes and their labels (GeoPackage)."""
    boxes = random_boxes(np.random.default_rng(seed), 200, 200, 12, min_size=8, max_size=16, gap=4)
    tif = write_geotiff(tmp_path / "s.tif", paint_boxes(200, 200, boxes), transform=NORTH_UP)
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame(geometry=list(pixel_boxes_to_map(boxes, NORTH_UP)), crs=32617).to_file(labels)
    return tif, labels


def test_init_starts_a_new_model_from_another_ones_weights(tmp_path):
    tif, labels = _painted_scene(tmp_path, seed=2)
    tiny = dict(chip_size=64, batch_size=4, start="none", progress=False, val_fraction=0)
    first = train(LabelSource.of([tif], labels), tmp_path / "a.model", epochs=1, **tiny)
    source = load_model(first.path).model.state_dict()
    second = train(LabelSource.of([tif], labels), None, epochs=1, init=first.path, lr=1e-12, **tiny)
    started = second.model.state_dict()
    # a learning rate of ~0 leaves the copied weights where they started
    same = [k for k, v in source.items() if v.is_floating_point() and "running" not in k]
    assert all(torch.allclose(started[k], source[k], atol=1e-5) for k in same)
    assert second.spec.training["initialised_from"] == str(first.path)
    with pytest.raises(InputError, match="give one of them"):
        train(
            LabelSource.of([tif], labels),
            None,
            epochs=1,
            init=first.path,
            resume=first.path,
            **tiny,
        )


@pytest.fixture
def tiny_start(monkeypatch, torch_cache):
    """A synthetic-start recipe of a few steps on a small suburb (the real one takes
    minutes), in a private torch cache."""
    from geodetect.train import start

    recipe = start.StartRecipe(steps=6, size=600, batch_size=4)
    monkeypatch.setattr(start, "START_RECIPE", recipe)
    return recipe


def test_train_builds_the_synthetic_start_once_and_starts_from_it(
    tmp_path, tiny_start, torch_cache, caplog
):
    from geodetect.cli import main

    tif, labels = _painted_scene(tmp_path, seed=3)
    tiny = dict(chip_size=64, batch_size=4, progress=False, val_fraction=0, epochs=1)
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        first = train(LabelSource.of([tif], labels), None, **tiny)  # the default start
    said = [r.getMessage() for r in caplog.records if "building the synthetic" in r.getMessage()]
    assert len(said) == 1 and "6 steps" in said[0] and "minutes" in said[0]
    path = tiny_start.path
    assert path.parent == torch_cache and path.is_file()
    assert sorted(p.name for p in torch_cache.iterdir()) == [path.name]  # no temp files
    assert first.spec.training["start"] == "synthetic"
    assert first.spec.training["initialised_from"] == str(path)
    built = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geodetect"):
        again = train(LabelSource.of([tif], labels), None, **tiny)
    assert not [r for r in caplog.records if "building" in r.getMessage()]
    assert path.stat().st_mtime_ns == built  # reused, not rebuilt
    assert again.spec.training["initialised_from"] == str(path)
    with pytest.raises(SystemExit) as exc:
        main(["weights", "synth", "-q"])  # already there
    assert exc.value.code == 1
    cold = train(LabelSource.of([tif], labels), None, start="none", **tiny)
    assert cold.spec.training["initialised_from"] is None
    assert cold.spec.training["start"] == "none"


def test_the_synthetic_start_is_the_same_wherever_it_is_built(tmp_path, tiny_start):
    """The recipe counts seeded steps: building it again (another machine, an empty
    cache) gives the same weights, so what a machine has cached cannot change a model."""
    from geodetect.model import load_model
    from geodetect.train.run import build_synthetic_start

    first = build_synthetic_start(progress=False)
    kept = first.rename(tmp_path / "first.model")
    second = build_synthetic_start(progress=False)
    a, b = load_model(kept), load_model(second)
    assert a.spec.training["steps"] == b.spec.training["steps"] == 6
    for name, tensor in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], tensor, rtol=0, atol=0)


def test_a_start_with_other_bands_adapts_the_stem_instead_of_dropping_it():
    from geodetect.model import build_retinanet
    from geodetect.train.spec import copy_matching_weights

    from conftest import make_tiny_spec

    rgb = build_retinanet(make_tiny_spec(), pretrained="none")
    four = make_tiny_spec(band_mean=[100.0] * 4, band_std=[50.0] * 4, band_names=list("rgbn"))
    rgbn = build_retinanet(four, pretrained="none")
    assert copy_matching_weights(rgbn, rgb, source="rgb.model") == len(rgbn.state_dict())
    stem = rgb.state_dict()["backbone.body.conv1.weight"]
    adapted = rgbn.state_dict()["backbone.body.conv1.weight"]
    assert torch.allclose(adapted[:, :3], stem * 3 / 4)
    assert torch.allclose(adapted[:, 3], stem.mean(dim=1) * 3 / 4)


def test_calibration_chips_hold_objects_as_well_as_background(tmp_path):
    """The int8 calibration windows: half of them hold an object even where objects are
    rare in the validation area (background alone would clip the activations that
    answer an object), the rest are background."""
    from geodetect.train.calibration import calibration_chips

    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 200, 200, 6, min_size=10, max_size=16, gap=20)  # one corner
    tif = write_geotiff(tmp_path / "s.tif", paint_boxes(1280, 1280, boxes), transform=NORTH_UP)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=list(pixel_boxes_to_map(boxes, NORTH_UP)), crs=32617).to_file(labels)
    data = prepare_training_data(
        load_labelled(LabelSource.of([tif], labels)), chip_size=64, val_fraction=0.0
    )
    data.splits[0] = SplitMap(data.splits[0].block, np.full_like(data.splits[0].parts, VAL))
    data.val = data.train
    area = data.val_area()
    with_objects = sum(bool(len(area[i][1]["boxes"])) for i in range(len(area)))
    assert len(area) >= 80 and 0 < with_objects <= len(area) / 10
    chips = calibration_chips(data, area, count=8)
    assert chips.shape == (8, 3, 128, 128) and chips.dtype == torch.uint8
    bright = (chips == 255).flatten(1).any(dim=1)
    assert int(bright.sum()) == 4  # four windows with objects, four of background
