"""The model spec a training run begins with (classes, bands, GSD, NMS, second-box and
voting IoUs from the labels) and finishes (object sizes, the score threshold), the same
for ``geodetect train``, :func:`geodetect.train.train` and the notebook API."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch
from torch import nn

from geodetect.errors import InputError, LabelError
from geodetect.model import (
    ModelSpec,
    build_retinanet,
    preset_widths,
)
from geodetect.model.build import first_conv_for_bands
from geodetect.model.device import available_cpus
from geodetect.train.chips import ChipSet
from geodetect.train.data import TrainingData
from geodetect.train.fit import EpochStats
from geodetect.train.score import AREA_MAX_WINDOWS, AREA_MIN_OBJECTS, area_threshold
from geodetect.train.sizes import label_nms_iou, label_second_box_iou

log = logging.getLogger(__name__)

# Box voting's IoU above the model's NMS IoU (see spec_for).
VOTE_OVER_NMS = 0.2


def default_batch_size(device: torch.device) -> int:
    """Training chips per step: 32 on CUDA; 8 on a CPU, where the budget buys few steps
    and more, smaller steps place boxes better for the same compute (on 0.3 m synthetic
    pools, the same 134 epochs gave AP50:95 0.64 and a held-out centre error of 0.20 m
    at batch 8 against 0.56 and 0.21 m at batch 16)."""
    return 32 if device.type == "cuda" else 8


def default_chip_size(typical_object_px: float) -> int:
    """Training chip edge: 128 px, or 1.5 times the typical object (the 95th percentile
    of label sizes, see ``LabelledData.typical_object_px``) when that is larger, at most
    512. Never the largest object: one outlier must not make every step slower; objects
    too large for the chip are read from larger windows, shrunk to it.

    Small chips centred on objects spend a step's pixels on objects rather than on
    background: a CPU budget buys several times the steps of 384-512 px chips (on real
    0.2 m imagery, 384 px chips set by one 149 px pool gave 4 epochs in 8 minutes).
    Detection runs on larger chips anyway.
    """
    return int(min(512, max(128, math.ceil(1.5 * typical_object_px / 32) * 32)))


def default_workers(device: torch.device) -> int:
    # On CPU the model uses every core; reading in the main process costs little.
    if device.type != "cuda":
        return 0
    return max(0, min(8, available_cpus() - 1))


def finish_spec(
    model: nn.Module,
    spec: ModelSpec,
    data: TrainingData,
    best: EpochStats | None,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    workers: int = 0,
    deadline: float | None = None,
    val_area: ChipSet | None = None,
) -> tuple[ModelSpec, dict | None]:
    """Everything training decides after fitting, shared by ``geodetect train``,
    :func:`train` and the notebook API so that the same labels give the same model file:
    the training objects' sizes (detection plans its chip overlap from them) and the
    saved score threshold.

    The threshold is the best-F1 one of the validation chips of the kept epoch
    (``best``), replaced by the one chosen over windows tiling the validation area
    (:func:`area_threshold`) when those hold at least :data:`AREA_MIN_OBJECTS` objects.

    Args:
        val_area: the validation-area windows (default: ``data.val_area()``).
        deadline: ``time.monotonic()`` value by which the area scan stops.

    Returns:
        The finished spec (``spec`` is not changed), and what :func:`area_threshold`
        measured, or None without a validation area.
    """
    spec = with_object_sizes(spec, data.labelled)
    if best is not None and best.threshold is not None:
        spec = dataclasses.replace(spec, score_threshold=best.threshold)
    if val_area is None:
        val_area = data.val_area(max_windows=AREA_MAX_WINDOWS)
    if val_area is None:
        return spec, None
    area = area_threshold(
        model,
        val_area,
        batch_size=max(1, batch_size // 2),
        device=device,
        precision=precision,
        workers=workers,
        deadline=deadline,
    )
    if area["n_truth"] >= AREA_MIN_OBJECTS:
        spec = dataclasses.replace(spec, score_threshold=area["threshold"])
        log.info(
            "score threshold %.2f: the middle of the thresholds whose F1 (averaged with "
            "the neighbours') is within one standard error of the best over %d "
            "validation-area windows (%d objects); at it: "
            "F1 %.3f, precision %.3f, recall %.3f",
            area["threshold"],
            area["windows"],
            area["n_truth"],
            area["f1"],
            area["precision"],
            area["recall"],
        )
    else:
        log.info(
            "score threshold %.2f (best F1 on validation chips): the %d validation-area "
            "windows scored hold %d whole objects, too few (< %d) to choose it",
            spec.score_threshold,
            area["windows"],
            area["n_truth"],
            AREA_MIN_OBJECTS,
        )
    return spec, area


def copy_matching_weights(model: nn.Module, source_model: nn.Module, *, source) -> int:
    """Copy every tensor of ``source_model`` whose name and shape ``model`` shares (the
    stem's filters adapted when the band counts differ, see ``first_conv_for_bands``);
    returns how many. Refuses a source with nothing in common."""
    target = model.state_dict()
    stem = "backbone.body.conv1.weight"
    same = {}
    for k, v in source_model.state_dict().items():
        if k == stem and k in target and target[k].shape[1] != v.shape[1]:
            v = first_conv_for_bands(v, target[k].shape[1])
        if k in target and target[k].shape == v.shape:
            same[k] = v
    if not same:
        raise InputError(
            f"{source}: no weights fit this model (another backbone or preset?); "
            "use a model with the same --backbone and --preset"
        )
    model.load_state_dict(same, strict=False)
    log.info("%d of %d weight tensors start from %s", len(same), len(target), source)
    return len(same)


def with_object_sizes(spec: ModelSpec, labelled) -> ModelSpec:
    """``spec`` with the training objects' sizes (kept when a resumed model saw larger
    ones): detection plans its chip overlap from them."""
    return dataclasses.replace(
        spec,
        max_object_px=max(labelled.max_object_px, spec.max_object_px or 0.0),
        typical_object_px=max(labelled.typical_object_px, spec.typical_object_px or 0.0),
    )


def log_sizes(labelled, chip_size: int, *, chosen: bool) -> None:
    sides = labelled.object_sides_px()
    if not len(sides):
        return
    gsd = labelled.gsd()
    at = f" at {gsd:.3g} m" if gsd else ""
    log.info(
        "objects%s: median %.0f px, 95th percentile %.0f px, largest %.0f px; training "
        "chips %d px%s",
        at,
        float(np.median(sides)),
        labelled.typical_object_px,
        float(sides.max()),
        chip_size,
        " (1.5x the 95th percentile, at least 128)" if chosen else "",
    )


def check_resumable(spec: ModelSpec, classes: list[str], bands: int, resume) -> None:
    if list(spec.classes) != list(classes):
        raise LabelError(
            f"{resume}: the model knows classes {', '.join(spec.classes)} but the labels have "
            f"{', '.join(classes)}; resume only with labels of the same classes"
        )
    if spec.num_bands != bands:
        raise InputError(
            f"{resume}: the model takes {spec.num_bands} band(s) but the "
            f"training imagery has {bands}; resume with imagery of that layout"
        )


def spec_for(
    data: TrainingData,
    *,
    chip_size: int,
    backbone: str = "resnet18",
    preset: str = "lite",
    pretrained: str = "auto",
    **overrides,
) -> tuple[ModelSpec, nn.Module]:
    """A fresh detector for ``data``: its ModelSpec (classes, bands, band statistics,
    GSD, chip size, preset widths; ``overrides`` set any other spec field, such as
    ``anchor_scales`` or ``box_loss``) and the untrained network it describes."""
    labelled = data.labelled
    channels, convs = preset_widths(preset)
    if "nms_iou" not in overrides:
        overrides["nms_iou"] = label_nms_iou(labelled)
        log.info(
            "detections overlapping by IoU above %.2g are taken as one object (from how "
            "much the labelled objects overlap)",
            overrides["nms_iou"],
        )
    if "box_vote_iou" not in overrides:
        # Voters overlap the box by more than NMS allows two objects to: on real 0.2 m
        # orthophotos (NMS 0.4) voting at 0.6 instead of 0.7 raised AP75 from 0.46 to
        # 0.49 and cut the centre error from 0.44 to 0.42 m (benchmarks/history.md).
        overrides["box_vote_iou"] = round(min(0.7, overrides["nms_iou"] + VOTE_OVER_NMS), 2)
    if "second_box_iou" not in overrides:
        overrides["second_box_iou"] = label_second_box_iou(labelled, overrides["nms_iou"])
        log.info(
            "a detection overlapping a better one by IoU above %.2g, with the centre of "
            "one inside the other, is a second box of one object (from how the labelled "
            "objects nest)",
            overrides["second_box_iou"],
        )
    spec = ModelSpec(
        classes=list(labelled.classes),
        band_mean=data.band_mean,
        band_std=data.band_std,
        band_names=labelled.band_names(),
        input_dtype=labelled.input_dtype,
        gsd=labelled.gsd(),
        chip_size=chip_size,
        backbone=backbone,
        preset=preset,
        fpn_channels=channels,
        head_convs=convs,
        **overrides,
    )
    return spec, build_retinanet(spec, pretrained=pretrained)
