"""Training's options are one frozen value (TrainOptions) that the command line and the
notebook API build alike and that is checked before anything is read or built; the
ModelSpec is frozen, and running a notebook's model leaves it as it was."""

from __future__ import annotations

import dataclasses

import geopandas as gpd
import numpy as np
import pytest
import torch

from geodetect.errors import InputError, ModelFileError
from geodetect.geometry import pixel_boxes_to_map
from geodetect.train.options import Length, Start, TrainOptions

from conftest import (
    NORTH_UP,
    assert_one_line_error,
    paint_boxes,
    random_boxes,
    run_cli,
    write_geotiff,
)


@pytest.fixture
def painted(tmp_path):
    """A 256 px GeoTIFF with 14 painted boxes and their labels."""
    rng = np.random.default_rng(5)
    boxes = random_boxes(rng, 256, 256, 14, min_size=8, max_size=16, gap=4)
    tif = write_geotiff(tmp_path / "s.tif", paint_boxes(256, 256, boxes), transform=NORTH_UP)
    labels = tmp_path / "l.gpkg"
    gpd.GeoDataFrame(geometry=list(pixel_boxes_to_map(boxes, NORTH_UP)), crs=32617).to_file(labels)
    return tif, labels


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"chip_size": 48}, "--chip-size 48"),
        ({"lr": 0.0}, "--lr"),
        ({"gsd": -0.2}, "--gsd"),
        ({"val_fraction": 0.95}, "--val-fraction"),
        ({"batch_size": 0}, "--batch-size"),
        ({"backbone": "resnet19"}, "--backbone resnet19"),
        ({"precision": "fp8"}, "--precision fp8"),
        ({"anchor_scales": (1.0, -2.0)}, "scales"),
    ],
)
def test_an_option_no_run_could_use_is_refused_when_the_value_is_made(changes, needle):
    with pytest.raises(InputError, match=needle):
        TrainOptions.of(**changes)
    with pytest.raises(InputError, match=needle):  # and when one is changed
        TrainOptions().but(**changes)


def test_the_start_is_one_value_of_start_init_and_resume(tmp_path, untrained_model):
    assert Start.of() == Start("synthetic") and Start.of("auto").kind == "synthetic"
    assert Start.of("none", init=untrained_model) == Start("model", untrained_model)
    assert Start.of(resume=untrained_model).resumes
    with pytest.raises(InputError, match="give one of them"):
        Start.of(init=untrained_model, resume=untrained_model)
    with pytest.raises(InputError, match="unknown start 'cold'"):
        Start.of("cold")
    with pytest.raises(ModelFileError, match="nope.model"):
        Start.of(init=tmp_path / "nope.model")
    not_a_model = tmp_path / "labels.model"
    not_a_model.write_bytes(b"PK\x03\x04 a zip, perhaps a pickle")
    with pytest.raises(ModelFileError, match="labels.model"):
        Start.of(resume=not_a_model)
    # frozen: a run's options are never changed behind it
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainOptions().seed = 3  # type: ignore[misc]
    assert TrainOptions.of(steps=5).length == Length(steps=5)


@pytest.mark.slow
def test_the_command_line_refuses_bad_options_before_reading_the_labels(tmp_path):
    """Neither the imagery nor the labels exist: each answer is about the option."""
    base = ["train", tmp_path / "nope.tif", "--labels", tmp_path / "nope.gpkg"]
    out = tmp_path / "m.model"
    proc = run_cli(*base, "--out", out, "--init", tmp_path / "gone.model")
    assert_one_line_error(proc, "gone.model")
    proc = run_cli(*base, "--out", tmp_path / "no" / "m.model")
    assert_one_line_error(proc, "does not exist; create it")
    assert not out.exists()


def test_the_notebook_api_checks_each_call_as_the_command_line(painted, tmp_path):
    from geodetect import RetinaNet, prepare_data

    tif, labels = painted
    with pytest.raises(InputError, match="--chip-size 48"):  # before the missing file
        prepare_data(tmp_path / "nope.tif", labels=tmp_path / "nope.gpkg", chip_size=48)
    data = prepare_data(tif, labels=labels, chip_size=64, batch_size=4, seed=1)
    assert data.options.chip_size == 64 and data.options.seed == 1
    with pytest.raises(InputError, match="unknown start"):
        RetinaNet(data, start="cold")
    with pytest.raises(ModelFileError, match="nope.model"):
        RetinaNet(data, init=tmp_path / "nope.model")
    model = RetinaNet(data, start="none", device="cpu")
    assert model.options.start == Start("none") and model.options.chip_size == 64
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    with pytest.raises(InputError, match="--lr"):
        model.fit(steps=2, lr=-1.0, plot=False)
    with pytest.raises(InputError, match="--steps or --epochs"):
        model.fit(epochs=1, steps=2, plot=False)
    # nothing was trained by a refused call
    for name, tensor in model.model.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_detecting_with_a_notebooks_model_leaves_it_as_it_was(painted, untrained_model):
    """detect_objects runs the notebook's own network: its spec (frozen) and weights and
    its score threshold attribute are the same afterwards, whatever threshold the
    detection used."""
    from geodetect import RetinaNet, detect_objects

    tif, _ = painted
    model = RetinaNet.from_model(untrained_model, device="cpu")
    spec, thresh = model.spec, model.model.score_thresh
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    layer = detect_objects(model, tif, threshold=0.012, runtime="torch")
    assert len(layer) > 0  # the network ran and its boxes were kept
    assert model.spec is spec and model.spec.score_threshold == spec.score_threshold
    assert model.model.score_thresh == thresh
    for name, tensor in model.model.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.spec.score_threshold = 0.1  # type: ignore[misc]
