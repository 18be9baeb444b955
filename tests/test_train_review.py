"""`geodetect train --review`: a review filled in QGIS becomes training labels.

Confirmed detections and pools drawn in search squares are objects, rejections hard
negatives, and only where the reviewer looked is known: a pool nobody reviewed must never
be taught as background."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch

from geodetect.county.review import Review, write_review
from geodetect.io.labels import LabelSource
from geodetect.model import build_retinanet
from geodetect.model.build import centres_inside
from geodetect.train import Augmentation, load_labelled, prepare_training_data
from geodetect.train.chips import REJECTED, ChipSet
from geodetect.train.split import TRAIN, plan_split

from conftest import (
    NORTH_UP,
    assert_one_line_error,
    events_of,
    make_tiny_spec,
    paint_boxes,
    run_cli,
    write_geotiff,
)

CRS = "EPSG:32617"


def _map_box(x1, y1, x2, y2):
    (mx1, my1), (mx2, my2) = NORTH_UP @ (x1, y1), NORTH_UP @ (x2, y2)
    return shapely.box(min(mx1, mx2), min(my1, my2), max(mx1, mx2), max(my1, my2))


# A 512 px scene: pools on a 8 x 8 lattice (centres every 64 px), tarps between some.
POOLS = [(32 + 64 * i, 32 + 64 * j) for i in range(8) for j in range(8)]
TARPS = [(64 * i, 64 * j) for i in range(1, 8, 2) for j in range(1, 8, 2)]
SQUARE = (256, 256, 384, 384)  # pixel box of the one done search square


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """The scene, a review of it as a careful reviewer filled it, and what it says:
    pools 0-9 confirmed, tarps 0-5 rejected, one detection left unjudged, and in the
    done square every pool the layer missed drawn."""
    folder = tmp_path_factory.mktemp("review")
    pools = np.array([(x - 8, y - 8, x + 8, y + 8) for x, y in POOLS], dtype=float)
    tarps = np.array([(x - 6, y - 6, x + 6, y + 6) for x, y in TARPS], dtype=float)
    image = paint_boxes(512, 512, pools.astype(int), value=200)
    image[2] = np.maximum(image[2], paint_boxes(512, 512, tarps.astype(int), value=180)[2])
    tif = write_geotiff(folder / "scene.tif", image, transform=NORTH_UP)

    x1, y1, x2, y2 = SQUARE
    centres = np.array(POOLS, dtype=float)
    in_square = (centres[:, 0] > x1) & (centres[:, 0] < x2) & (centres[:, 1] > y1)
    in_square &= centres[:, 1] < y2
    square_pools = np.flatnonzero(in_square)
    confirmed = list(range(10)) + [int(square_pools[0])]  # one found in the square
    drawn = [int(i) for i in square_pools[1:]]  # the layer missed the others there
    geoms = [_map_box(*pools[i]) for i in confirmed] + [_map_box(*t) for t in tarps[:6]]
    geoms.append(_map_box(*pools[40]))  # unjudged
    n = len(geoms)
    items = gpd.GeoDataFrame(
        {
            "review_id": np.arange(n),
            "stratum": np.zeros(n, dtype=np.int64),
            "in_sample": np.ones(n, dtype=bool),
            "square": np.full(n, -1),
            "class": "pool",
            "score": np.linspace(0.3, 0.9, n),
            "area_m2": shapely.area(geoms),
            "verdict": ["pool"] * len(confirmed) + ["not_pool"] * 6 + [""],
            "reason": [""] * len(confirmed) + ["tarp"] * 4 + ["solar", ""] + [""],
        },
        geometry=geoms,
        crs=CRS,
    )
    squares = gpd.GeoDataFrame(
        {"square": [0, 1], "area_m2": [1474.6, 1474.6], "done": ["yes", ""]},
        geometry=[_map_box(*SQUARE), _map_box(0, 400, 100, 500)],
        crs=CRS,
    )
    missed = gpd.GeoDataFrame(
        {"note": [""] * len(drawn)}, geometry=[_map_box(*pools[i]) for i in drawn], crs=CRS
    )
    strata = pd.DataFrame({"stratum": [0], "lower": [0.3], "upper": [0.9], "size": [n]})
    path = write_review(Review(items, squares, missed, strata), folder / "review.gpkg")
    known = set(confirmed) | set(drawn)
    return tif, path, pools, tarps, confirmed, drawn, known


def test_a_review_becomes_objects_hard_negatives_and_known_ground(reviewed):
    tif, path, pools, _, confirmed, drawn, _ = reviewed
    labelled = load_labelled(LabelSource.of([tif], review=path))
    (gl,) = labelled.grids
    assert labelled.classes == ["pool"]
    assert len(gl.boxes) == len(confirmed) + len(drawn)
    np.testing.assert_allclose(np.sort(gl.boxes, axis=0), np.sort(pools[confirmed + drawn], axis=0))
    assert len(gl.rejected) == 6
    # known: the 11 confirmed, 6 rejected, 1 unjudged left out, the drawn, one done square
    assert len(gl.known) == len(confirmed) + 6 + len(drawn) + 1
    np.testing.assert_allclose(gl.known[-1], SQUARE)
    counts = labelled.source["review_counts"]
    assert counts == {
        "confirmed": len(confirmed),
        "rejected": 6,
        "missed": len(drawn),
        "squares": 1,
        "unjudged": 1,
        "reasons": {"solar": 1, "tarp": 4, "unstated": 1},
    }


def test_unreviewed_pools_are_never_taught_as_background(reviewed):
    """Over many training chips: a pool nobody reviewed may show in a chip, but never
    inside the chip's known boxes; every rejected tarp gets chips of its own."""
    tif, path, pools, _, _, _, known = reviewed
    labelled = load_labelled(LabelSource.of([tif], review=path))
    splits = plan_split(labelled.grids, val_fraction=0.0, chip_size=64)
    scale_only = Augmentation(dihedral=False, brightness=0, contrast=0, colour=0, noise=0)
    chips = ChipSet(labelled.grids, splits, TRAIN, chip_size=64, augmentation=scale_only)
    assert sum(item.anchor == REJECTED for item in chips.items) == 6
    unreviewed = np.array([b for i, b in enumerate(pools) if i not in known])
    shown = 0
    for epoch in range(3):
        chips.set_epoch(epoch)
        for index in range(len(chips)):
            item = chips.item(index)
            rng = np.random.default_rng([chips.seed, epoch, index, 3])
            _, row, col, size = chips.window(index, rng)  # the window the chip reads
            if item.anchor == REJECTED:
                x1, y1, x2, y2 = labelled.grids[0].rejected[item.box]
                assert col <= x1 and x2 <= col + size and row <= y1 and y2 <= row + size
            _, target = chips[index]
            local = (unreviewed - np.array([col, row, col, row], float)) * (64 / size)
            centres = (local[:, :2] + local[:, 2:]) / 2
            visible = ((centres > 0) & (centres < 64)).all(axis=1)
            if item.anchor == -1:  # a random negative may be redrawn: not this window
                continue
            shown += int(visible.sum())
            boxes = torch.as_tensor(local[visible], dtype=torch.float32)
            assert not centres_inside(boxes, target["known"]).any()
            assert len(target["boxes"]) >= (item.anchor >= 0)
    assert shown > 0  # the chips do show pools nobody looked at


def test_anchors_on_unknown_ground_are_ignored_by_the_loss():
    torch.manual_seed(0)
    model = build_retinanet(make_tiny_spec(), pretrained="none").train()
    images = torch.randn(1, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    everything = model(images, [empty])["classification"].detach()
    whole = model(images, [{**empty, "known": torch.tensor([[0.0, 0, 64, 64]])}])
    nothing = model(images, [{**empty, "known": torch.zeros(0, 4)}])
    corner = model(images, [{**empty, "known": torch.tensor([[0.0, 0, 20, 20]])}])
    whole, nothing, corner = (float(x["classification"].detach()) for x in (whole, nothing, corner))
    assert whole == pytest.approx(float(everything))
    assert nothing == 0.0
    assert 0.0 < corner < float(everything)
    # an object is learnt where it is known, whatever ground around it is not
    pool = {"boxes": torch.tensor([[20.0, 20, 40, 40]]), "labels": torch.tensor([0])}
    losses = model(images, [{**pool, "known": torch.tensor([[20.0, 20, 40, 40]])}])
    assert all(float(v.detach()) > 0 for v in losses.values())


def test_training_data_from_a_review_with_labels_elsewhere(reviewed, tmp_path):
    """--labels on one file and --review on another of the same mosaic: the labelled
    file stays wholly known, the reviewed one only where the review looked."""
    tif, path, *_ = reviewed
    other = write_geotiff(
        tmp_path / "other.tif",
        paint_boxes(256, 256, [(40, 40, 60, 60)], value=200),
        transform=NORTH_UP @ NORTH_UP.translation(0, 600),
    )
    labels = tmp_path / "labels.gpkg"
    box = _map_box(40, 640, 60, 660)
    gpd.GeoDataFrame({"class": ["pool"]}, geometry=[box], crs=CRS).to_file(labels)
    labelled = load_labelled(LabelSource.of([tif, other], labels, review=path))
    (gl,) = labelled.grids  # one mosaic of both files
    assert len(gl.grid.members) == 2 and len(gl.boxes) == 1 + 11 + 3
    files = [np.round(k, 3).tolist() for k in gl.known]
    assert [0, 600, 256, 856] in files and [0, 0, 512, 512] not in files
    data = prepare_training_data(labelled, chip_size=64, val_fraction=0.0)
    assert data.train.num_positive == len(gl.boxes)


def test_train_from_a_review_through_the_cli_and_info_says_what_it_learnt(reviewed, tmp_path):
    tif, path, _, _, confirmed, drawn, _ = reviewed
    out = tmp_path / "reviewed.model"
    proc = run_cli("train", tif, "--review", path, "--out", out, "--chip-size", "64",
                   "--steps", "6", "--batch-size", "4", "--start", "none",
                   "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # the steps as JSON lines for front ends (see test_progress)
    steps = [e for e in events_of(proc.stderr)[0] if e["stage"] == "training"]
    assert steps[-1]["event"] == "end" and steps[-1]["done"] == steps[-1]["total"] == 6
    info = run_cli("info", out, "--json")
    assert info.returncode == 0, info.stderr
    source = json.loads(info.stdout)["training"]["source"]
    assert source["review"] == str(path)
    assert source["review_counts"]["confirmed"] == len(confirmed)
    assert source["review_counts"]["missed"] == len(drawn)
    text = run_cli("info", out).stdout
    assert f"{len(confirmed)} confirmed detections" in text and "tarp 4" in text


def test_an_unfilled_review_is_a_one_line_error(reviewed, tmp_path):
    tif, path, *_ = reviewed
    items = gpd.read_file(path, layer="review")
    items["verdict"] = ""
    blank = tmp_path / "blank.gpkg"
    squares = gpd.read_file(path, layer="squares").assign(done="")
    missed = gpd.read_file(path, layer="missed").iloc[:0]
    strata = pd.DataFrame({"stratum": [0], "lower": [0.3], "upper": [0.9], "size": [1]})
    write_review(Review(items, squares, missed, strata), blank)
    out = tmp_path / "m.model"
    proc = run_cli("train", tif, "--review", blank, "--out", out, "--start", "none")
    assert_one_line_error(proc, str(blank), "no detection judged", "QGIS")
    assert not out.exists()
    proc = run_cli("train", "--voc", tmp_path, "--review", path, "--out", out)
    assert_one_line_error(proc, "--review")
