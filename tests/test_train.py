"""Training data, augmentation, the loop's budget and the `train` command, on tiny models."""

from __future__ import annotations

import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch

from geodetect.errors import InputError, LabelError, OutputError
from geodetect.geometry import Grid
from geodetect.io.labels import GridLabels, LabelSource
from geodetect.model import load_model
from geodetect.train import (
    NO_AUGMENTATION,
    Augmentation,
    ChipSet,
    default_chip_size,
    load_labelled,
    one_cycle_lr,
    plan_split,
    prepare_training_data,
    train,
)
from geodetect.train.augment import dihedral, resize
from geodetect.train.chips import chip_targets
from geodetect.train.labelled import LabelledData
from geodetect.train.sizes import label_nms_iou, label_second_box_iou
from geodetect.train.split import TRAIN, VAL, SplitMap

from conftest import NORTH_UP, paint_boxes, random_boxes, write_geotiff


def map_box(x1, y1, x2, y2):
    (mx1, my1), (mx2, my2) = NORTH_UP @ (x1, y1), NORTH_UP @ (x2, y2)
    return shapely.box(min(mx1, mx2), min(my1, my2), max(mx1, mx2), max(my1, my2))


@pytest.fixture(scope="module")
def labelled_scene(tmp_path_factory):
    """A 256 x 256 scene with bright squares and their labels (EPSG:4326 GeoJSON)."""
    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 256, 256, 24, min_size=8, max_size=20, gap=4)
    image = paint_boxes(256, 256, boxes, value=200)
    image = (image + rng.integers(0, 30, image.shape)).astype(np.uint8)
    tif = write_geotiff(folder / "scene.tif", image, transform=NORTH_UP)
    labels = gpd.GeoDataFrame(
        {"class": ["pool"] * len(boxes)}, geometry=[map_box(*b) for b in boxes], crs="EPSG:32617"
    )
    labels.to_crs(4326).to_file(folder / "labels.geojson")
    return tif, folder / "labels.geojson", boxes


def test_chip_targets_keep_mostly_visible_objects_clipped():
    gl = GridLabels(
        _fake_grid(100, 100),
        np.array([[10.0, 10, 20, 20], [55, 10, 75, 20], [58, 30, 70, 40]]),
        np.array([0, 0, 0]),
    )
    boxes, labels = chip_targets(gl, 0, 0, 64, min_visible=0.5)
    # [55, 75] has 9/20 inside (dropped); [58, 70] has 6/12 inside (kept, clipped).
    np.testing.assert_allclose(boxes, [[10, 10, 20, 20], [58, 30, 64, 40]])
    assert labels.tolist() == [0, 0]


def _fake_grid(height, width):
    from affine import Affine

    from geodetect.io.raster import MosaicGrid

    return MosaicGrid(Grid(height, width, Affine.identity()), (), bands=(1, 2, 3))


def test_split_map_parts():
    split = SplitMap(100, np.array([[TRAIN, VAL], [TRAIN, TRAIN]], dtype=np.int8))
    assert split.part_of(0, 0, 64) == TRAIN
    assert split.part_of(0, 120, 64) == VAL
    assert split.part_of(0, 60, 64) is None  # straddles
    assert split.part_of(-10, -10, 64) == TRAIN  # padded windows clip to the edge blocks
    assert split.area(VAL, 150, 180) == 100 * 80


def test_split_by_area_has_no_train_val_overlap(labelled_scene):
    tif, labels, _ = labelled_scene
    labelled = load_labelled(LabelSource.of([tif], labels))
    chip = 64
    splits = plan_split(labelled.grids, val_fraction=0.25, chip_size=chip, seed=3)
    assert (splits[0].parts == VAL).any() and (splits[0].parts == TRAIN).any()
    aug = Augmentation(scale=0.1)
    train_set = ChipSet(labelled.grids, splits, TRAIN, chip_size=chip, augmentation=aug)
    val_set = ChipSet(labelled.grids, splits, VAL, chip_size=chip, fixed=True)
    assert train_set.num_positive > 0 and val_set.num_positive > 0
    val_mask = np.zeros((256, 256), dtype=bool)
    for i in range(len(val_set)):
        _, row, col, size = val_set.window(i)
        val_mask[max(row, 0) : row + size, max(col, 0) : col + size] = True
    for epoch in range(3):
        train_set.set_epoch(epoch)
        for i in range(len(train_set)):
            rng = np.random.default_rng([epoch, i])
            _, row, col, size = train_set.window(i, rng)
            assert not val_mask[max(row, 0) : row + size, max(col, 0) : col + size].any()


def test_positive_chips_hold_their_object_at_varied_positions(labelled_scene):
    tif, labels, boxes = labelled_scene
    data = prepare_training_data(
        load_labelled(LabelSource.of([tif], labels)),
        chip_size=64,
        val_fraction=0.0,
        augmentation=NO_AUGMENTATION,
    )
    assert data.val is None
    chips = data.train
    item = next(i for i, it in enumerate(chips.items) if it.anchor >= 0)
    anchor = chips.labelled[0].boxes[chips.items[item].anchor]
    offsets = set()
    for epoch in range(6):
        chips.set_epoch(epoch)
        _, target = chips[item]
        offsets.add(tuple(target["boxes"][0].tolist()))
        _, row, col, _ = chips.window(item, np.random.default_rng([0, epoch, item, 3]))
        assert col <= anchor[0] and anchor[2] <= col + 64
        assert row <= anchor[1] and anchor[3] <= row + 64
    assert len(offsets) > 1
    negatives = [i for i, it in enumerate(chips.items) if it.anchor < 0]
    assert negatives and len(chips[negatives[0]][1]["boxes"]) == 0
    # Band statistics are the raw-unit statistics of the chips.
    assert 20 < data.band_mean[0] < 150 and data.band_std[0] > 10


@pytest.mark.parametrize("index", range(8))
def test_dihedral_keeps_the_box_on_the_object(index):
    image = torch.zeros(3, 64, 48)
    image[:, 10:20, 5:30] = 1.0  # rows 10-20, columns 5-30
    box = torch.tensor([[5.0, 10.0, 30.0, 20.0]])
    out, out_box = dihedral(image, box, index)
    rows = torch.nonzero(out[0].sum(dim=1)).flatten()
    cols = torch.nonzero(out[0].sum(dim=0)).flatten()
    bright = [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
    assert out_box[0].tolist() == bright


def test_resize_scales_pixel_edge_boxes():
    image = torch.zeros(1, 40, 40)
    image[:, 8:16, 20:32] = 1.0
    out, box = resize(image, torch.tensor([[20.0, 8.0, 32.0, 16.0]]), 80)
    assert box[0].tolist() == [40.0, 16.0, 64.0, 32.0]
    assert out[0, 17:31, 41:63].min() > 0.99 and out[0, :14].max() < 0.01


def test_augmented_chip_boxes_cover_their_bright_square(labelled_scene):
    tif, labels, _ = labelled_scene
    aug = Augmentation(brightness=0.0, contrast=0.0, colour=0.0, noise=0.0, scale=0.0)
    data = prepare_training_data(
        load_labelled(LabelSource.of([tif], labels)),
        chip_size=64,
        val_fraction=0.0,
        augmentation=aug,
    )
    threshold = (150 - data.band_mean[0]) / data.band_std[0]
    for epoch in range(2):
        data.train.set_epoch(epoch)
        for i in range(min(10, len(data.train))):
            image, target = data.train[i]
            for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
                assert (image[0, y1:y2, x1:x2] > threshold).float().mean() > 0.95


def test_default_chip_size_follows_the_typical_object():
    assert default_chip_size(47) == 128
    assert default_chip_size(84) == 128  # 1.5 x 84 = 126
    assert default_chip_size(100) == 160
    assert default_chip_size(1000) == 512


def test_one_cycle_lr_shape():
    assert one_cycle_lr(0.0, max_lr=1.0) == pytest.approx(1 / 25)
    assert one_cycle_lr(0.15, max_lr=1.0) == pytest.approx(1.0)
    assert one_cycle_lr(1.0, max_lr=1.0) == pytest.approx(1 / 1000)


TINY = dict(chip_size=64, batch_size=4, start="none", progress=False, patience=None)


def test_one_epoch_writes_a_model_file_detection_can_read(labelled_scene, tmp_path):
    tif, labels, _ = labelled_scene
    out = tmp_path / "pools.model"
    result = train(LabelSource.of([tif], labels), out, epochs=1, **TINY)
    assert result.path == out and out.is_file()
    loaded = load_model(out)
    spec = loaded.spec
    assert spec.classes == ["pool"] and spec.chip_size == 64
    assert spec.band_mean == pytest.approx(result.spec.band_mean)
    assert 20 < spec.band_mean[0] < 150 and spec.band_std[0] > 10
    assert spec.gsd == pytest.approx(0.3) and spec.input_dtype == "uint8"
    assert 8 <= spec.max_object_px <= 20 + 1e-6
    assert spec.training["epochs"] == 1 and len(spec.training["history"]) == 1
    assert result.history[0].map_50 is not None  # the final epoch is validated
    with pytest.raises(OutputError, match="already exists"):
        train(LabelSource.of([tif], labels), out, epochs=1, **TINY)
    # Resuming keeps the model's scaling; other classes are refused.
    again = train(
        LabelSource.of([tif], labels), tmp_path / "again.model", epochs=1, resume=out, **TINY
    )
    assert again.spec.band_mean == spec.band_mean
    other = tmp_path / "other.geojson"
    gpd.read_file(labels).assign(**{"class": "tank"}).to_file(other)
    with pytest.raises(LabelError, match="classes"):
        train(LabelSource.of([tif], other), tmp_path / "x.model", epochs=1, resume=out, **TINY)


def test_max_minutes_budget_is_respected(labelled_scene, tmp_path, capfd):
    tif, labels, _ = labelled_scene
    started = time.monotonic()
    result = train(
        LabelSource.of([tif], labels),
        tmp_path / "m.model",
        epochs=1000,
        max_minutes=0.1,
        **{**TINY, "progress": True},
    )
    elapsed = time.monotonic() - started
    assert result.stop_reason == "budget"
    # 1000 epochs would take hours; the budget (6 s) plus one step and saving must not,
    # even on a busy machine where a step takes seconds (a generous deadline)
    assert elapsed < 6.0 + 60.0
    assert (tmp_path / "m.model").is_file()
    # stderr is not a terminal here: no bar redraws, and the totals progress lines state
    # (if a busy machine got far enough for one) are the budget's, not 1000 epochs'
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("geodetect: training: ")]
    assert all(int(ln.split("/")[1].split(" ")[0]) <= 3 * result.steps + 3 for ln in lines)


def test_no_budget_trains_the_default_steps(labelled_scene, monkeypatch):
    """Given no epochs, steps or minutes, a run takes DEFAULT_STEPS steps: the same model
    on any machine (the value is measured in benchmarks/README.md; a small one here)."""
    import geodetect.train.options as options

    tif, labels, _ = labelled_scene
    monkeypatch.setattr(options, "DEFAULT_STEPS", 3)
    result = train(LabelSource.of([tif], labels), None, **TINY)
    assert (result.steps, result.stop_reason) == (3, "steps")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "geodetect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_train_missing_labels_is_a_one_line_error(labelled_scene, tmp_path):
    tif, _, _ = labelled_scene
    out = tmp_path / "m.model"
    proc = run_cli("train", tif, "--labels", tmp_path / "nope.gpkg", "--out", out)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("geodetect: error: ")
    assert "nope.gpkg" in lines[0]
    assert not out.exists()


def test_cli_train_writes_model_and_summary(labelled_scene, tmp_path):
    tif, labels, _ = labelled_scene
    out = tmp_path / "m.model"
    proc = run_cli(
        "train",
        tif,
        "--labels",
        labels,
        "--out",
        out,
        "--chip-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--start",  # building the synthetic start takes minutes: test_training_real
        "none",
    )
    assert proc.returncode == 0, proc.stderr
    assert "best validation AP50" in proc.stdout and str(out) in proc.stdout
    # stderr into a pipe: the log and a plain line per tenth of the steps, no redraws
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("geodetect: training: ")]
    shares = [int(ln.split(": ")[2].split("%")[0]) for ln in lines]
    assert 1 <= len(lines) <= 10 and shares == sorted(set(shares)) and shares[-1] == 100
    assert load_model(out).spec.classes == ["pool"]


def test_lr_find_sweeps_upwards_and_restores_the_weights(labelled_scene):
    from geodetect.model import ModelSpec, build_retinanet
    from geodetect.train import lr_find

    tif, labels, _ = labelled_scene
    data = prepare_training_data(
        load_labelled(LabelSource.of([tif], labels)), chip_size=64, val_fraction=0.0
    )
    spec = ModelSpec(
        classes=["pool"],
        band_mean=data.band_mean,
        band_std=data.band_std,
        chip_size=64,
        fpn_channels=32,
        head_convs=1,
    )
    model = build_retinanet(spec, pretrained="none")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(model, data.train, batch_size=4, steps=4, start_lr=1e-5, end_lr=1e-2)
    assert len(result.lrs) == 4 and result.lrs == sorted(result.lrs)
    assert 1e-6 <= result.suggested <= 1e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_average_follows_the_model_with_a_warm_up():
    from geodetect.train.fit import weight_average

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    averaged = weight_average(net, decay=0.99)
    averaged.update_parameters(net)  # the first update copies
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked.fill_(7)
    averaged.update_parameters(net)  # n = 1: keeps (1 + 1) / (10 + 1) of the average
    keep = 2 / 11
    assert torch.allclose(averaged.module[0].weight, keep * start + (1 - keep) * (start + 1))
    assert int(averaged.module[1].num_batches_tracked) == 7
    for _ in range(2000):
        averaged.update_parameters(net)
    # late updates keep at most `decay`: the average has caught up with the model
    assert torch.allclose(averaged.module[0].weight, net[0].weight, atol=1e-4)


def test_later_epochs_within_validation_noise_replace_the_kept_weights():
    from geodetect.train.fit import EpochStats, _better

    def epoch(ap50, ap):
        return EpochStats(epoch=1, steps=1, loss=0.1, lr=1e-3, map_50=ap50, map=ap)

    assert _better(epoch(0.9, 0.6), None)  # the first validation is always kept
    assert _better(epoch(0.89, 0.6), 1.5, tolerance=1 / 40)  # 0.01 below: noise
    assert not _better(epoch(0.85, 0.6), 1.5, tolerance=1 / 40)  # 0.05 below: worse
    assert not _better(epoch(0.89, 0.6), 1.5)  # no tolerance: strictly not worse
    assert not _better(EpochStats(epoch=2, steps=2, loss=0.1, lr=1e-3), 1.5, tolerance=1.0)


def test_score_threshold_from_validation():
    from geodetect.train.score import best_f1_threshold

    # Ten objects all found with scores 0.7-0.9, one false positive at 0.1: F1 is the
    # same for every threshold in range, so the middle one is kept.
    scores = np.array([0.9, 0.85, 0.8, 0.8, 0.75, 0.75, 0.7, 0.7, 0.7, 0.7, 0.1])
    matched = np.array([True] * 10 + [False])
    assert best_f1_threshold(scores, matched, 10) == pytest.approx(0.3)
    # Two objects found at 0.22-0.24 only: a higher threshold loses them.
    low_scores = np.concatenate([scores, [0.24, 0.22]])
    low_matched = np.concatenate([matched, [True, True]])
    assert best_f1_threshold(low_scores, low_matched, 12) == pytest.approx(0.2)
    # False positives at 0.3-0.38 push it up, but never past the top of the range.
    fp_scores = np.concatenate([scores, [0.38, 0.36, 0.33, 0.3]])
    fp_matched = np.concatenate([matched, [False] * 4])
    assert best_f1_threshold(fp_scores, fp_matched, 10) == pytest.approx(0.4)


def _labelled(boxes, classes=None):
    boxes = np.asarray(boxes, dtype=np.float64)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes)
    return LabelledData([GridLabels(_fake_grid(1000, 1000), boxes, classes)], ["pool", "spa"])


def test_nms_iou_follows_how_much_the_labels_overlap():
    apart = random_boxes(np.random.default_rng(0), 1000, 1000, 200, min_size=8, max_size=20)
    assert label_nms_iou(_labelled(apart)) == 0.4
    # one odd pair (IoU 0.52) among two hundred does not move it
    odd = np.vstack([np.asarray(apart, float)[:198], [[900, 900, 950, 940], [912, 904, 962, 944]]])
    assert label_nms_iou(_labelled(odd)) == 0.4
    # rows of parked cars, each overlapping the next by IoU 0.43: NMS keeps 0.5
    cars = [[x, y, x + 10, y + 20] for x in range(0, 800, 4) for y in (0, 100, 200)]
    assert label_nms_iou(_labelled(cars)) == 0.5
    # objects of another class overlapping do not count
    pairs = [[x, 0, x + 10, 20] for x in range(0, 800, 40)] * 2
    assert label_nms_iou(_labelled(pairs, [0] * 20 + [1] * 20)) == 0.4
    assert label_nms_iou(_labelled(pairs)) == 0.5


def test_second_box_iou_follows_how_the_labels_nest():
    apart = np.asarray(
        random_boxes(np.random.default_rng(0), 1000, 1000, 200, min_size=8, max_size=20), float
    )
    assert label_second_box_iou(_labelled(apart), 0.4) == 0.15  # the floor
    # a spa in the corner of a pool's box (IoU 0.06, its centre inside) now and then
    spas = np.vstack(
        [
            apart[:190],
            *[[[x, 1010, x + 40, 1050], [x + 1, 1011, x + 11, 1021]] for x in range(0, 200, 45)],
        ]
    )
    assert label_second_box_iou(_labelled(spas), 0.4) == 0.16  # 0.06 + the 0.1 margin
    # side by side overlapping by IoU 0.33, centres apart: not nesting, no change
    side = np.vstack(
        [
            apart[:190],
            *[[[x, 1010, x + 20, 1030], [x + 10, 1010, x + 30, 1030]] for x in range(0, 400, 40)],
        ]
    )
    assert label_second_box_iou(_labelled(side), 0.4) == 0.15
    # objects that nest often (a car under each carport's box): the rule steps aside
    carports = [[[x, 0, x + 20, 20], [x + 2, 2, x + 18, 18]] for x in range(0, 800, 25)]
    assert label_second_box_iou(_labelled(np.vstack(carports)), 0.5) == 0.5


def test_a_length_asked_twice_is_refused_before_anything_is_read(tmp_path):
    """--steps with --epochs, or a length that is not positive, is refused before the
    labels are read (the label file here does not exist) or a model is built, by the
    command line's train() and by the notebook API alike."""
    from geodetect.train.options import Length

    missing = LabelSource.of([tmp_path / "nope.tif"], tmp_path / "nope.gpkg")
    with pytest.raises(InputError, match="--steps or --epochs"):
        train(missing, tmp_path / "m.model", epochs=2, steps=10)
    with pytest.raises(InputError, match="--steps 0"):
        train(missing, tmp_path / "m.model", steps=0)
    with pytest.raises(InputError, match="--max-minutes"):
        Length.of(max_minutes=0)
    assert Length.of(max_minutes=1.0).planned_epochs == Length.BUDGET_EPOCHS
    assert Length.of(epochs=3).steps is None and Length.of().steps is not None
    assert not (tmp_path / "m.model").exists()
