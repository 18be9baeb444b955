"""The training loop and the `train` pipeline: AdamW under a one-cycle learning rate
that fits an epoch count or a wall-clock budget, validation mAP, the best weights kept,
early stopping, and one model file at the end.

The schedule has OneCycleLR's shape (cosine warm-up to ``lr``, cosine decay to
``lr / 1000``) but is driven by *progress*, the larger of steps done / steps planned
and time spent / time allowed, so a budgeted run always finishes its decay, validates
and saves before the deadline, whatever the machine's speed.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from geodetect.errors import GeodetectError, InputError, LabelError, OutputError
from geodetect.model import (
    ModelSpec,
    autocast_dtype,
    build_retinanet,
    load_model,
    preset_widths,
    resolve_device,
    save_model,
)
from geodetect.model.build import first_conv_for_bands
from geodetect.model.device import available_cpus
from geodetect.train.augment import Augmentation
from geodetect.train.data import (
    HARD,
    TRAIN,
    ChipItem,
    ChipSet,
    TrainingData,
    _offset_range,
    area_windows,
    collate_chips,
    label_nms_iou,
    label_second_box_iou,
    load_labelled,
    prepare_training_data,
)
from geodetect.train.start import check_start, synthetic_start

log = logging.getLogger(__name__)

DEFAULT_LR = 2e-3
# Box voting's IoU above the model's NMS IoU (see spec_for).
VOTE_OVER_NMS = 0.2
DEFAULT_EPOCHS = 60
WEIGHT_DECAY = 1e-4
PCT_START = 0.15
EVAL_FROM = 0.5  # validate only once this much of the schedule is done (and at the end)
EVAL_SHARE_INV = 9  # ... and after training for at least 9 times the last validation's time
_SAVE_RESERVE_S = 3.0
# Share of a time budget kept for choosing the score threshold over the validation area.
AREA_SHARE = 0.05
AREA_THRESHOLD_RANGE = (0.2, 0.8)
# F1 given up for recall: one standard error of the best F1, kept within these bounds
# (a validation area of 20 objects would otherwise allow 0.1).
AREA_F1_SLACK = (0.02, 0.05)
# ... and never more than this below the F1-best threshold: on a small validation area the
# F1 curve is flat far down (28 objects of two São Paulo sheets: within 0.05 of the best
# down to 0.35, where unseen sheets got precision 0.35-0.47), while 69 objects lean 0.05-0.1.
AREA_MAX_LEAN = 0.1
AREA_MIN_OBJECTS = 20  # fewer objects in the scored windows: keep the chips' threshold
AREA_MAX_WINDOWS = 2000  # windows scanned at most (without a time budget)
# Hard-example mining: when (share of the schedule; none by default), how many (per chip
# with objects), and the share of a time budget each scan may take. On real 0.2 m
# orthophotos, mining at 30 % and 60 % of an 8-minute CPU budget traded recall for
# precision (at threshold 0.6: P 0.87 / R 0.77 against 0.77 / 0.84) and cost 12 % of the
# steps; AP50 was lower (0.74 against 0.80), so it is opt-in (``--hard-examples``).
MINE_AT: tuple[float, ...] = ()
MINE_AT_OPTED_IN = (0.3, 0.6)
HARD_RATIO = 0.25
MINE_SHARE = 0.02


class TrainingError(GeodetectError):
    """Training cannot go on (the loss diverged)."""


@dataclass
class EpochStats:
    """One epoch of training: mean loss, learning rate at its end, validation metrics
    (None when validation did not run) and wall-clock seconds since training began."""

    epoch: int
    steps: int
    loss: float
    lr: float
    map_50: float | None = None
    map: float | None = None
    centre_error_px: float | None = None
    threshold: float | None = None
    seconds: float = 0.0


@dataclass
class FitResult:
    """What :func:`fit` did. ``model`` holds the best weights (by validation AP50 +
    AP50:95, see :func:`selection_score`; of epochs that score within one validation
    object's worth of the best, the latest), or the last ones without validation."""

    model: nn.Module
    history: list[EpochStats]
    best: EpochStats | None
    stop_reason: str  # "epochs", "steps", "budget" or "early stop"
    steps: int
    seconds: float


@dataclass
class TrainResult(FitResult):
    """:class:`FitResult` plus the spec written with the model and where it went."""

    spec: ModelSpec | None = None
    path: Path | None = None
    total_seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for people: best validation AP50, epochs, minutes, output path."""
        best = self.best
        ap = (
            "n/a (no validation area)"
            if best is None or best.map_50 is None
            else (
                f"{best.map_50:.3f} (epoch {best.epoch}, AP50:95 {best.map:.3f}"
                + (
                    f", centre error {best.centre_error_px:.2f} px"
                    if best.centre_error_px is not None
                    else ""
                )
                + ")"
            )
        )
        threshold = None if best is None else best.threshold
        lines = [
            f"best validation AP50: {ap}",
            f"epochs: {len(self.history)} ({self.steps} steps, stopped: {self.stop_reason})",
            f"minutes: {self.total_seconds / 60:.1f}",
        ]
        area = (self.spec.training.get("val_area") if self.spec else None) or {}
        if area.get("n_truth", 0) >= AREA_MIN_OBJECTS:
            lines.append(
                f"score threshold: {area['threshold']:.2f} (the lowest whose F1 over the "
                "validation area is within one standard error of the best, at most "
                f"{AREA_MAX_LEAN:g} below its threshold; at it: "
                f"F1 {area['f1']:.3f}, precision {area['precision']:.3f}, "
                f"recall {area['recall']:.3f})"
            )
        elif threshold is not None:
            lines.append(f"score threshold: {threshold:.2f} (best F1 on validation chips)")
        if self.path is not None:
            lines.append(f"model: {self.path}")
        return "\n".join(lines)


@dataclass
class LRFinderResult:
    """An exponential learning-rate sweep: the rates tried, the smoothed losses, and a
    suggestion (a tenth of the rate with the lowest smoothed loss)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggested: float = DEFAULT_LR


def one_cycle_lr(
    progress: float,
    *,
    max_lr: float,
    pct_start: float = PCT_START,
    div_factor: float = 25.0,
    final_div_factor: float = 40.0,
) -> float:
    """Learning rate at ``progress`` in [0, 1] of a one-cycle schedule (cosine up from
    ``max_lr / div_factor``, cosine down to ``max_lr / (div_factor * final_div_factor)``)."""
    progress = min(max(progress, 0.0), 1.0)
    start, end = max_lr / div_factor, max_lr / (div_factor * final_div_factor)
    if progress < pct_start:
        t = progress / pct_start
        return start + (max_lr - start) * (1 - math.cos(math.pi * t)) / 2
    t = (progress - pct_start) / (1 - pct_start)
    return end + (max_lr - end) * (1 + math.cos(math.pi * t)) / 2


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float = WEIGHT_DECAY
) -> torch.optim.AdamW:
    """AdamW without weight decay on norm layers and biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
    )


def _loader(
    chips: ChipSet, *, batch_size: int, shuffle: bool, workers: int, seed: int
) -> DataLoader:
    # Workers are not persistent: each epoch's workers get the chip set as it is then,
    # with its current epoch (a persistent worker's copy would replay epoch 1's windows).
    return DataLoader(
        chips,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_chips,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


EMA_DECAY = 0.998


def weight_average(model: nn.Module, *, decay: float = EMA_DECAY) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics.

    The decay warms up as ``(1 + n) / (10 + n)`` after ``n`` updates, capped at
    ``decay``, so short runs average over their own length. The averaged weights are
    validated and saved: on small, noisy batches they place boxes better and vary less
    from one validation to the next than the raw weights.
    """

    def ema(averaged: list[torch.Tensor], current: list[torch.Tensor], count) -> None:
        n = int(count)
        keep = min(decay, (1 + n) / (10 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - keep)
        else:  # integer buffers (BatchNorm's batch counters) follow the model
            torch._foreach_copy_(averaged, current)

    return AveragedModel(model, multi_avg_fn=ema, use_buffers=True)


def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, amp) -> list[dict]:
    """The model's detections for a batch of chips (eval mode), under autocast when
    ``amp`` is a dtype."""
    ctx = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    with ctx:
        return model(images.to(device))


def _to_device(images, targets, device):
    images = images.to(device, non_blocking=True)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, targets


def _train_step(model, optimizer, images, targets, amp) -> float:
    ctx = torch.autocast(images.device.type, dtype=amp) if amp else nullcontext()
    with ctx:
        losses = model(images, targets)
    loss = losses["classification"] + losses["bbox_regression"]
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return float("nan")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    if not torch.isfinite(norm):  # a finite loss can still give a NaN gradient
        optimizer.zero_grad(set_to_none=True)
        return float("nan")
    optimizer.step()
    return float(loss.detach())


def _match(
    pred: torch.Tensor, truth: torch.Tensor, iou: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO-style greedy matching of ``pred`` boxes (descending score order) to truth.

    Returns:
        ``matched`` BoolTensor[P] (True: a true positive) and ``errors`` FloatTensor[P],
        the centre distance in pixels of each true positive (NaN elsewhere).
    """
    matched = torch.zeros(len(pred), dtype=torch.bool)
    errors = torch.full((len(pred),), float("nan"))
    if len(pred) == 0 or len(truth) == 0:
        return matched, errors
    overlaps = box_iou(pred, truth)
    taken = torch.zeros(len(truth), dtype=torch.bool)
    for i in range(len(pred)):
        row = overlaps[i].masked_fill(taken, -1.0)
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            matched[i] = True
            errors[i] = ((pred[i, :2] + pred[i, 2:]) / 2 - (truth[j, :2] + truth[j, 2:]) / 2).norm()
    return matched, errors


def _hits(scores: np.ndarray, matched: np.ndarray, threshold: float) -> tuple[int, int]:
    """(true positives, detections) among the detections scoring ``threshold`` or more."""
    above = scores >= threshold
    return int((matched & above).sum()), int(above.sum())


def _f1_by_threshold(
    scores: np.ndarray, matched: np.ndarray, n_truth: int, *, low: float, high: float
) -> dict[float, float]:
    """F1 at IoU 0.5 for each threshold in [low, high], steps of 0.05."""
    f1 = {}
    for threshold in np.round(np.arange(low, high + 1e-9, 0.05), 2):
        tp, found = _hits(scores, matched, float(threshold))
        f1[float(threshold)] = 2 * tp / max(1, found + n_truth)
    return f1


def best_f1_threshold(
    scores: np.ndarray, matched: np.ndarray, n_truth: int, *, low: float = 0.2, high: float = 0.4
) -> float:
    """The score threshold in [low, high] (steps of 0.05) with the best F1 at IoU 0.5;
    ties go to the threshold nearest the middle of the range.

    The range is narrow on purpose. A validation set of a few dozen objects gives F1
    plateaus that a single object decides. On two held-out 0.3 m mosaics (four models),
    the output's AP50 was 0.95-0.999 at a threshold of 0.3, 0.93-0.97 at 0.4 and
    0.89-0.97 at 0.5; below 0.2 duplicates of found objects start to survive.
    """
    middle = (low + high) / 2
    f1 = _f1_by_threshold(scores, matched, n_truth, low=low, high=high)
    return max(f1, key=lambda t: (round(f1[t], 4), -abs(t - middle)))


def f1_standard_error(f1: float, found: int, n_truth: int) -> float:
    """Standard error of an F1 score measured on ``found`` detections and ``n_truth``
    objects. F1 = 2 TP / (found + truth) is a proportion of (found + truth) / 2 trials,
    so the binomial error applies: a validation area with 70 objects measures F1 to
    about +-0.05, one with 700 to +-0.017."""
    trials = max(1.0, (found + n_truth) / 2)
    return math.sqrt(max(0.0, f1 * (1 - f1)) / trials)


def recall_leaning_threshold(
    scores: np.ndarray,
    matched: np.ndarray,
    n_truth: int,
    *,
    low: float,
    high: float,
    slack: float | None = None,
    min_slack: float = 0.0,
    max_slack: float = 1.0,
    max_lean: float = 1.0,
) -> float:
    """The lowest threshold in [low, high] (steps of 0.05) whose F1 is within ``slack``
    of the best, and at most ``max_lean`` below the best's threshold; by default
    ``slack`` is one standard error of the best F1 (:func:`f1_standard_error`, within
    ``min_slack`` and ``max_slack``): thresholds whose F1 the validation set cannot
    tell from the best are equally good by F1, and the lowest of them keeps the most
    objects, which is what the layer's recall and AP50 depend on.

    On real 0.2 m orthophotos (three 8-minute models, 69 validation-area objects) the
    fixed slack of 0.02 took 0.55-0.60 and gave the val sheets AP50 0.78-0.80, F1
    0.80-0.85; one standard error (about 0.05) took 0.45-0.55 and gave AP50 0.81-0.84,
    F1 0.79-0.83."""
    f1 = _f1_by_threshold(scores, matched, n_truth, low=low, high=high)
    best_t = min(f1, key=lambda t: (-round(f1[t], 4), t))
    best = f1[best_t]
    if slack is None:
        _, found = _hits(scores, matched, best_t)
        slack = min(max_slack, max(min_slack, f1_standard_error(best, found, n_truth)))
    return min(
        t for t, v in f1.items() if v >= best - slack - 1e-9 and t >= best_t - max_lean - 1e-9
    )


@torch.no_grad()
def evaluate_chips(
    model: nn.Module,
    chips: ChipSet,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    workers: int = 0,
    per_class_iou: float | None = None,
    precision: str = "auto",
) -> dict:
    """COCO mAP of ``model`` on a (fixed) chip set, the F1-best score threshold, and
    the mean centre error in pixels of the detections above it matched at IoU 0.5.

    Returns:
        ``map_50``, ``map`` (AP50:95), ``threshold``, ``centre_error_px`` (None
        without matches) and ``n_truth`` (objects in the chips); with
        ``per_class_iou``, also ``per_class``: {class index: AP at that IoU} (computed
        in the same pass).
    """
    from torchmetrics.detection import MeanAveragePrecision  # heavy import, only here

    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    per_class = None
    if per_class_iou is not None:
        per_class = MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            backend="pycocotools",
            class_metrics=True,
            iou_thresholds=[float(per_class_iou)],
        )
    scores, matched, errors, n_truth = [], [], [], 0
    was_training = model.training
    model.eval()
    try:
        for images, targets in _loader(
            chips, batch_size=batch_size, shuffle=False, workers=workers, seed=0
        ):
            outputs = _predict(model, images, device, amp)
            preds = [
                {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in o.items()}
                for o in outputs
            ]
            metric.update(preds, targets)
            if per_class is not None:
                per_class.update(preds, targets)
            for pred, target in zip(preds, targets, strict=True):
                order = pred["scores"].argsort(descending=True)
                hit, error = _match(pred["boxes"][order], target["boxes"])
                scores.append(pred["scores"][order].numpy())
                matched.append(hit.numpy())
                errors.append(error.numpy())
                n_truth += len(target["boxes"])
        result = metric.compute()
    finally:
        model.train(was_training)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_matched = np.concatenate(matched) if matched else np.zeros(0, dtype=bool)
    all_errors = np.concatenate(errors) if errors else np.zeros(0)
    threshold = best_f1_threshold(all_scores, all_matched, n_truth)
    confident = all_matched & (all_scores >= threshold)
    out = {
        "map_50": max(0.0, float(result["map_50"])),
        "map": max(0.0, float(result["map"])),
        "threshold": threshold,
        "centre_error_px": float(all_errors[confident].mean()) if confident.any() else None,
        "n_truth": n_truth,
    }
    if per_class is not None:
        by_class = per_class.compute()
        out["per_class"] = {
            int(c): max(0.0, float(v))
            for c, v in zip(
                by_class["classes"].reshape(-1).tolist(),
                by_class["map_per_class"].reshape(-1).tolist(),
                strict=True,
            )
        }
    return out


@torch.no_grad()
def area_threshold(
    model: nn.Module,
    windows: ChipSet,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    workers: int = 0,
    deadline: float | None = None,
    low: float = AREA_THRESHOLD_RANGE[0],
    high: float = AREA_THRESHOLD_RANGE[1],
    edge: float = 2.0,
) -> dict:
    """The score threshold chosen by F1 (:func:`recall_leaning_threshold`) over the
    validation *area*, as detection meets it: windows tiling it (mostly background,
    where false alarms come from), not chips centred on objects. Objects and detections
    within ``edge`` pixels of a window's border are left out of the count (a window edge
    cuts them; detection's overlapping chips would not). Windows go in random order
    until ``deadline``.

    Returns:
        ``threshold``, and at it ``f1``, ``precision``, ``recall``; ``windows`` scored
        and ``n_truth`` objects in them.
    """
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    size = windows.chip_size
    scores, matched, n_truth, seen = [], [], 0, 0
    was_training = model.training
    model.eval()

    def inside(boxes: torch.Tensor) -> torch.Tensor:
        return ((boxes[:, :2] > edge) & (boxes[:, 2:] < size - edge)).all(dim=1)

    try:
        for images, targets in _loader(
            windows, batch_size=batch_size, shuffle=True, workers=workers, seed=1
        ):
            outputs = _predict(model, images, device, amp)
            for out, target in zip(outputs, targets, strict=True):
                boxes, score = out["boxes"].float().cpu(), out["scores"].float().cpu()
                keep = inside(boxes)
                boxes, score = boxes[keep], score[keep]
                order = score.argsort(descending=True)
                truth = target["boxes"][inside(target["boxes"])]
                hit, _ = _match(boxes[order], truth)
                scores.append(score[order].numpy())
                matched.append(hit.numpy())
                n_truth += len(truth)
            seen += len(outputs)
            if deadline is not None and time.monotonic() > deadline:
                break
    finally:
        model.train(was_training)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_matched = np.concatenate(matched) if matched else np.zeros(0, dtype=bool)
    threshold = recall_leaning_threshold(
        all_scores,
        all_matched,
        n_truth,
        low=low,
        high=high,
        min_slack=AREA_F1_SLACK[0],
        max_slack=AREA_F1_SLACK[1],
        max_lean=AREA_MAX_LEAN,
    )
    tp, found = _hits(all_scores, all_matched, threshold)
    return {
        "threshold": threshold,
        "f1": 2 * tp / max(1, found + n_truth),
        "precision": tp / max(1, found),
        "recall": tp / max(1, n_truth),
        "windows": seen,
        "n_truth": n_truth,
    }


@torch.no_grad()
def mine_hard_examples(
    model: nn.Module,
    data: TrainingData,
    *,
    count: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    seconds: float | None = None,
    min_score: float = 0.2,
    seed: int = 0,
) -> list[ChipItem]:
    """Windows around the model's most confident false alarms in the training area.

    The training area is tiled with windows (2 chips a side), scanned in random order
    (for at most ``seconds``); a detection scoring ``min_score`` or more that touches no
    labelled object is a false alarm: a blue roof, a tarp, a tennis court, dark water.
    The ``count`` best-scored ones each give a training chip centred on them, which
    teaches the model what it confuses in this imagery, not what random background is.
    """
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    chip = data.train.chip_size
    size = min(512, 2 * chip)
    items = area_windows(
        data.labelled.grids, data.splits, TRAIN, size, max_windows=AREA_MAX_WINDOWS, seed=seed
    )
    if not items or count <= 0:
        return []
    order = np.random.default_rng([seed, 9]).permutation(len(items))
    windows = ChipSet(
        data.labelled.grids,
        data.splits,
        TRAIN,
        chip_size=size,
        fixed=True,
        items=[items[i] for i in order],
        cache=False,
    )
    windows.set_normalisation(data.band_mean, data.band_std)
    started = time.monotonic()
    alarms = []  # (score, grid index, centre x, centre y)
    was_training = model.training
    model.eval()
    try:
        done = 0
        for images, _ in _loader(windows, batch_size=batch_size, shuffle=False, workers=0, seed=0):
            outputs = _predict(model, images, device, amp)
            for out in outputs:
                item = windows.items[done]
                done += 1
                keep = out["scores"] >= min_score
                if not keep.any():
                    continue
                offset = torch.tensor([item.col_off, item.row_off] * 2, dtype=torch.float32)
                boxes = out["boxes"][keep].float().cpu() + offset
                scores = out["scores"][keep].float().cpu()
                labelled = torch.as_tensor(data.labelled.grids[item.grid_index].boxes).float()
                if len(labelled):
                    lo = torch.maximum(boxes[:, None, :2], labelled[None, :, :2])
                    hi = torch.minimum(boxes[:, None, 2:], labelled[None, :, 2:])
                    touches = ((hi - lo) > 0).all(dim=2).any(dim=1)
                    boxes, scores = boxes[~touches], scores[~touches]
                centres = (boxes[:, :2] + boxes[:, 2:]) / 2
                alarms += [
                    (float(sc), item.grid_index, float(x), float(y))
                    for sc, (x, y) in zip(scores, centres.tolist(), strict=True)
                ]
            if seconds is not None and time.monotonic() - started > seconds:
                break
    finally:
        model.train(was_training)
    hard = []
    for _, gi, x, y in sorted(alarms, reverse=True):
        grid, split = data.labelled.grids[gi].grid, data.splits[gi]
        col = int(np.clip(round(x - chip / 2), *_offset_range(grid.width, chip)))
        row = int(np.clip(round(y - chip / 2), *_offset_range(grid.height, chip)))
        if split.part_of(row, col, chip) == TRAIN:
            hard.append(ChipItem(gi, HARD, row, col, chip))
        if len(hard) == count:
            break
    log.debug(
        "hard examples: %d false alarms in %d windows (%.1f s); training on the top %d",
        len(alarms),
        done,
        time.monotonic() - started,
        len(hard),
    )
    return hard


def lr_find(
    model: nn.Module,
    chips: ChipSet,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    steps: int = 60,
    workers: int = 0,
    precision: str = "auto",
) -> LRFinderResult:
    """Exponential learning-rate sweep (Smith's LR range test). The model's weights are
    restored afterwards; the sweep stops early once the loss explodes."""
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    saved = copy.deepcopy(model.state_dict())
    optimizer = make_optimizer(model, lr=start_lr)
    result = LRFinderResult()
    smooth, best = None, math.inf
    model.train()
    try:
        for step, (images, targets) in enumerate(_endless(chips, batch_size, workers)):
            lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _train_step(model, optimizer, *_to_device(images, targets, device), amp)
            if not math.isfinite(loss):
                break
            smooth = loss if smooth is None else 0.8 * smooth + 0.2 * loss
            result.lrs.append(lr)
            result.losses.append(smooth)
            best = min(best, smooth)
            if smooth > 4 * best or step + 1 >= steps:
                break
    finally:
        model.load_state_dict(saved)
    if result.losses:
        result.suggested = result.lrs[int(np.argmin(result.losses))] / 10
    log.info("learning-rate sweep suggests %.2g", result.suggested)
    return result


def _endless(chips: ChipSet, batch_size: int, workers: int):
    """Training batches, epoch after epoch."""
    epoch = 0
    while True:
        chips.set_epoch(epoch)
        yield from _loader(chips, batch_size=batch_size, shuffle=True, workers=workers, seed=epoch)
        epoch += 1


def selection_score(stats: EpochStats) -> float | None:
    """How a validated epoch ranks: AP50 + AP50:95.

    Finding objects and placing them both count. Ranking on AP50 alone picked
    mid-schedule weights whose validation AP50 was higher by noise (0.988 vs 0.974 on
    41 chips) but whose boxes were far worse placed (AP50:95 0.57 vs 0.66).
    """
    if stats.map_50 is None:
        return None
    return stats.map_50 + (stats.map or 0.0)


def _better(stats: EpochStats, peak: float | None, tolerance: float = 0.0) -> bool:
    """Whether a validated epoch replaces the kept weights: its score is within
    ``tolerance`` of the best score so far (``peak``; None: nothing validated yet).

    Later epochs have seen more data at a lower learning rate; a validation score that
    trails the peak by less than the validation set can resolve (``tolerance``, one
    object's worth of AP) is noise, not a reason to keep older weights.
    """
    score = selection_score(stats)
    if score is None:
        return False
    return peak is None or score >= peak - tolerance


def fit(
    model: nn.Module,
    data: TrainingData,
    *,
    epochs: int = DEFAULT_EPOCHS,
    steps: int | None = None,
    batch_size: int = 8,
    lr: float = DEFAULT_LR,
    weight_decay: float = WEIGHT_DECAY,
    device: torch.device | str = "cpu",
    deadline: float | None = None,
    patience: int | None = None,
    workers: int = 0,
    progress: bool = True,
    seed: int = 0,
    precision: str = "auto",
    ema: bool = True,
    mine_at: Sequence[float] = MINE_AT,
) -> FitResult:
    """Train ``model`` on ``data.train``, validating on ``data.val``.

    Args:
        epochs: planned epochs (one epoch = every training item once).
        steps: planned optimizer steps instead of ``epochs``: the schedule fits them
            whatever the machine's speed, so a seeded run gives the same model on a slow
            machine as on a fast one (with ``deadline``, whichever comes first ends it).
        deadline: ``time.monotonic()`` value by which this function returns, final
            validation included; the schedule is compressed to fit it.
        patience: stop after this many validated epochs without a better
            :func:`selection_score` (None: never).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :func:`autocast_dtype`).
        ema: validate and keep the moving average of the weights
            (:func:`weight_average`) instead of the raw weights.
        mine_at: points of the schedule (0-1) at which the training area is scanned
            for the model's false alarms, which become training chips from then on
            (:func:`mine_hard_examples`); empty for none.

    Returns:
        A :class:`FitResult`; ``model`` is left in eval mode holding the best weights.
    """
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    torch.manual_seed(seed)
    if data.val is not None:
        import torchmetrics.detection  # noqa: F401 - import now, not in the first validation's time
    model.to(device).train()
    optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    averaged = weight_average(model) if ema else None
    kept = model if averaged is None else averaged.module  # what is validated and kept
    loader = _loader(data.train, batch_size=batch_size, shuffle=True, workers=workers, seed=seed)
    steps_per_epoch = len(loader)
    if steps is not None:
        epochs = max(1, math.ceil(steps / max(1, steps_per_epoch)))
    planned = max(1, epochs * steps_per_epoch if steps is None else steps)
    started = time.monotonic()
    n_val = len(data.val) if data.val is not None else 0
    eval_seconds: float | None = None
    last_eval_end = started
    step_seconds = 0.0

    def reserve() -> float:
        if not n_val:
            return 0.0
        if eval_seconds is not None:
            return 1.5 * eval_seconds + 0.5
        # Before the first validation: inference costs about a third of a training step.
        return 1.3 * n_val * step_seconds / max(1, batch_size) / 3 + 1.0

    def schedule_progress(step: int) -> float:
        by_steps = step / planned
        if deadline is None:
            return by_steps
        allowed = deadline - reserve() - started
        by_time = (time.monotonic() - started) / allowed if allowed > 0 else 1.0
        return max(by_steps, by_time)

    history: list[EpochStats] = []
    best: EpochStats | None = None
    peak: float | None = None  # the best selection score so far
    tolerance = 0.0  # set from the validation set's size at the first validation
    best_state = None
    stale = 0
    step = 0
    stop_reason = "epochs"
    bad_steps = 0
    bar = tqdm(
        total=planned,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        desc="training",
        leave=False,
    )
    pending_mines = sorted(mine_at)
    try:
        for epoch in range(1, epochs + 1):
            if pending_mines and schedule_progress(step) >= pending_mines[0]:
                while pending_mines and schedule_progress(step) >= pending_mines[0]:
                    pending_mines.pop(0)
                budget = None if deadline is None else MINE_SHARE * (deadline - started)
                data.train.set_hard_examples(
                    mine_hard_examples(
                        kept,
                        data,
                        count=round(HARD_RATIO * data.train.num_positive),
                        batch_size=batch_size,
                        device=device,
                        precision=precision,
                        seconds=budget,
                        seed=seed + epoch,
                    )
                )
            data.train.set_epoch(epoch)
            losses = []
            done = False
            for images, targets in loader:
                p = schedule_progress(step)
                if p >= 1.0:
                    done = True
                    if step < planned:
                        stop_reason = "budget"
                    else:
                        stop_reason = "epochs" if steps is None else "steps"
                    break
                current_lr = one_cycle_lr(p, max_lr=lr)
                for group in optimizer.param_groups:
                    group["lr"] = current_lr
                t0 = time.monotonic()
                loss = _train_step(model, optimizer, *_to_device(images, targets, device), amp)
                step_seconds = (
                    time.monotonic() - t0
                    if step_seconds == 0
                    else (0.9 * step_seconds + 0.1 * (time.monotonic() - t0))
                )
                step += 1
                if math.isfinite(loss):
                    losses.append(loss)
                    bad_steps = 0
                    if averaged is not None:
                        averaged.update_parameters(model)
                else:
                    bad_steps += 1
                    if bad_steps >= 10:
                        raise TrainingError(
                            "training diverged (the loss is not finite); use a lower --lr"
                        )
                if deadline is not None and p > 0:
                    bar.total = max(step, round(step / p))
                bar.update(1)
                bar.set_postfix(
                    epoch=epoch,
                    loss=f"{np.mean(losses[-20:]):.3f}",
                    lr=f"{current_lr:.1e}",
                    refresh=False,
                )
            final = done or epoch == epochs or (steps is not None and step >= planned)
            if final and steps is not None and step >= planned:
                stop_reason = "steps"
            if done and not losses and history and history[-1].map_50 is not None:
                break  # the budget ran out right after a validated epoch: nothing new
            stats = EpochStats(
                epoch,
                step,
                float(np.mean(losses)) if losses else float("nan"),
                one_cycle_lr(schedule_progress(step), max_lr=lr),
            )
            # The final validation always runs: its time is reserved by the schedule.
            wants_eval = data.val is not None and (final or schedule_progress(step) >= EVAL_FROM)
            # Validation takes at most about a tenth of the training time.
            rested = eval_seconds is None or (
                time.monotonic() - last_eval_end >= EVAL_SHARE_INV * eval_seconds
            )
            time_left = math.inf if deadline is None else deadline - time.monotonic()
            if wants_eval and (final or (rested and time_left > reserve())):
                t0 = time.monotonic()
                metrics = evaluate_chips(
                    kept,
                    data.val,
                    batch_size=batch_size,
                    device=device,
                    workers=workers,
                    precision=precision,
                )
                last_eval_end = time.monotonic()
                eval_seconds = last_eval_end - t0
                stats.map_50, stats.map = metrics["map_50"], metrics["map"]
                stats.centre_error_px = metrics["centre_error_px"]
                stats.threshold = metrics["threshold"]
                tolerance = 1.0 / max(1, metrics["n_truth"])
            stats.seconds = time.monotonic() - started
            history.append(stats)
            _log_epoch(stats, bar)
            if _better(stats, peak, tolerance):
                best = stats
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in kept.state_dict().items()
                }
            score = selection_score(stats)
            if score is not None and (peak is None or score > peak):
                peak, stale = score, 0
            elif score is not None:
                stale += 1
            if final:
                break
            if patience is not None and stale >= patience:
                stop_reason = "early stop"
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    elif averaged is not None and averaged.n_averaged > 0:
        model.load_state_dict(averaged.module.state_dict())
    model.eval()
    return FitResult(model, history, best, stop_reason, step, time.monotonic() - started)


def _log_epoch(stats: EpochStats, bar) -> None:
    text = f"epoch {stats.epoch}: loss {stats.loss:.3f}, lr {stats.lr:.2e}"
    if stats.map_50 is not None:
        text += f", val AP50 {stats.map_50:.3f}, AP50:95 {stats.map:.3f}"
    if stats.centre_error_px is not None:
        text += f", centre error {stats.centre_error_px:.2f} px"
    if log.isEnabledFor(logging.INFO):
        with bar.external_write_mode():
            log.info("%s (%.0f s)", text, stats.seconds)


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


def train(
    images: Sequence[str | os.PathLike[str]] | None = None,
    labels: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    voc: str | os.PathLike[str] | None = None,
    coco: str | os.PathLike[str] | None = None,
    yolo: str | os.PathLike[str] | None = None,
    layer: str | int | None = None,
    class_field: str | None = None,
    point_size: float | None = None,
    backbone: str = "resnet18",
    preset: str = "lite",
    chip_size: int | None = None,
    gsd: float | None = None,
    box_loss: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    find_lr: bool = False,
    val_fraction: float = 0.2,
    patience: int | None = None,
    augmentation: Augmentation | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    resume: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    hard_examples: bool = False,
    seed: int = 0,
    pretrained: str = "synthetic",
    progress: bool = True,
) -> TrainResult:
    """Train a detector from labelled imagery and write one model file.

    Labels come from rasters + a label layer (``images``, ``labels``), a VOC chip folder
    (``voc``), a COCO JSON file (``coco``) or a YOLO folder from Ultralytics or Roboflow
    (``yolo``); see :func:`geodetect.train.data.load_labelled`.

    Args:
        out: model file to write (None: keep the model in memory only).
        preset: ``"lite"`` (128 channels, 2 convolutions per head branch) or
            ``"standard"`` (256, 4).
        chip_size: training chip edge in pixels (default: :func:`default_chip_size`;
            the stored model's when resuming).
        gsd: training pixel size in metres; the model detects at it (default: the
            rasters' upper median, coarser where the objects are large in pixels, see
            :func:`geodetect.train.data.object_scaled_gsd`; the stored model's when
            resuming).
        box_loss: RetinaNet box loss (default: the spec's).
        epochs: planned epochs; with ``max_minutes`` alone the budget sets the length.
        steps: planned optimizer steps (instead of ``epochs``): the same seeded run
            gives the same model on any machine, however slow or busy; with
            ``max_minutes`` too, whichever comes first ends it.
        max_minutes: wall-clock budget for the whole call (reading labels, sampling,
            training, validation and saving).
        lr: peak learning rate of the one-cycle schedule (default 2e-3).
        find_lr: run :func:`lr_find` first and use its suggestion (ignored with ``lr``).
        resume: a model file to continue from: its architecture, classes, chip size and
            band scaling are kept, the weights start where they were (optimizer state is
            not stored in model files, so the schedule starts afresh).
        init: a model file whose weights start a new model (e.g. one trained on
            ``geodetect synth`` imagery): every tensor of the same name and shape is
            copied; chip size, band scaling and GSD come from the new data. Takes the
            place of ImageNet weights.
        hard_examples: at 30 % and 60 % of the schedule, add chips around the model's
            most confident false alarms in the training area (see
            :func:`mine_hard_examples`).
        pretrained: what a new model starts from (see :func:`new_model`):
            ``"synthetic"`` (or ``"auto"``; the default), ``"imagenet"`` or ``"none"``.
        precision: ``"auto"`` (bf16 where the GPU or CPU computes it natively),
            ``"fp32"`` or ``"bf16"``.

    Raises:
        OutputError: ``out`` exists (without ``overwrite``) or its folder does not.
        InputError, LabelError, RasterError: unusable inputs; nothing is written.
    """
    started = time.monotonic()
    deadline = None if max_minutes is None else started + max_minutes * 60.0
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        if out_path.exists() and not overwrite:
            raise OutputError(f"{out_path}: already exists; pass --overwrite to replace it")
        if not (out_path.parent if str(out_path.parent) else Path(".")).is_dir():
            raise OutputError(f"{out_path}: folder {out_path.parent} does not exist; create it")
    dev = resolve_device(device)
    amp = autocast_dtype(dev, precision)  # refuses an impossible precision before any work
    torch.manual_seed(seed)

    if resume is not None and init is not None:
        raise InputError(
            "--resume continues a model and --init starts a new one from its weights; "
            "give one of them"
        )
    base = load_model(resume) if resume is not None else None
    if base is not None and chip_size is not None and chip_size != base.spec.chip_size:
        log.warning(
            "--chip-size %d ignored: the resumed model works on %d-pixel chips",
            chip_size,
            base.spec.chip_size,
        )
    if base is not None and gsd is not None and base.spec.gsd and gsd != base.spec.gsd:
        log.warning("--gsd %g ignored: the resumed model works at %g m", gsd, base.spec.gsd)
    if chip_size is not None and (chip_size % 32 or chip_size < 32):
        raise InputError(f"--chip-size {chip_size}: must be a multiple of 32 and at least 32")

    labelled = load_labelled(
        images,
        labels,
        voc=voc,
        coco=coco,
        yolo=yolo,
        layer=layer,
        class_field=class_field,
        point_size=point_size,
        gsd=gsd if base is None or not base.spec.gsd else base.spec.gsd,
    )
    if base is not None:
        size = base.spec.chip_size
    else:
        size = chip_size or default_chip_size(labelled.typical_object_px)
    _log_sizes(labelled, size, chosen=chip_size is None and base is None)
    if base is not None:
        _check_resumable(base.spec, labelled.classes, labelled.num_bands, resume)
    data = prepare_training_data(
        labelled,
        chip_size=size,
        val_fraction=val_fraction,
        augmentation=augmentation,
        seed=seed,
        band_stats=None if base is None else (base.spec.band_mean, base.spec.band_std),
    )

    if base is not None:
        spec = copy.deepcopy(base.spec)
        model = base.model
    else:
        extra = {"box_loss": box_loss} if box_loss else {}
        start_kind = "model" if init is not None else check_start(pretrained)
        built = time.monotonic()
        spec, model, init = new_model(
            data,
            backbone=backbone,
            preset=preset,
            chip_size=size,
            start=pretrained,
            init=init,
            device=device,
            seed=seed,
            progress=progress,
            **extra,
        )
        if deadline is not None:  # a one-time start build is not part of the budget
            deadline += time.monotonic() - built
    batch = batch_size or default_batch_size(dev)
    n_workers = default_workers(dev) if workers is None else workers
    if lr is None and find_lr:
        lr = lr_find(
            model.to(dev),
            data.train,
            batch_size=batch,
            device=dev,
            workers=n_workers,
            precision=precision,
        ).suggested
    lr = lr or DEFAULT_LR
    if steps is not None and epochs is not None:
        raise InputError("give --steps or --epochs, not both")
    if epochs is None:
        epochs = 10_000 if deadline is not None else DEFAULT_EPOCHS
    val_area = data.val_area(max_windows=AREA_MAX_WINDOWS)
    area_reserve = 0.0
    if deadline is not None and val_area is not None:
        area_reserve = max(5.0, AREA_SHARE * (deadline - time.monotonic()))
    fitted = fit(
        model,
        data,
        epochs=epochs,
        steps=steps,
        batch_size=batch,
        lr=lr,
        device=dev,
        deadline=None if deadline is None else deadline - _SAVE_RESERVE_S - area_reserve,
        patience=patience,
        workers=n_workers,
        progress=progress,
        seed=seed,
        precision=precision,
        mine_at=MINE_AT_OPTED_IN if hard_examples else MINE_AT,
    )

    area = finish_spec(
        fitted.model,
        spec,
        data,
        fitted.best,
        batch_size=batch,
        device=dev,
        precision=precision,
        workers=n_workers,
        deadline=None if deadline is None else deadline - _SAVE_RESERVE_S,
        val_area=val_area,
    )
    spec.training = {
        "source": labelled.source,
        "objects": labelled.num_objects,
        "train_chips": len(data.train),
        "val_chips": 0 if data.val is None else len(data.val),
        "epochs": len(fitted.history),
        "steps": fitted.steps,
        "best_epoch": None if fitted.best is None else fitted.best.epoch,
        "val_map_50": None if fitted.best is None else fitted.best.map_50,
        "val_map": None if fitted.best is None else fitted.best.map,
        "val_centre_error_px": None if fitted.best is None else fitted.best.centre_error_px,
        "score_threshold": spec.score_threshold,
        "val_area": area,
        "stop_reason": fitted.stop_reason,
        "lr": lr,
        "batch_size": batch,
        "precision": "fp32" if amp is None else "bf16",
        "device": str(dev),
        "seed": seed,
        "resumed_from": None if resume is None else str(resume),
        "initialised_from": None if init is None else str(init),
        "start": "resumed" if base is not None else start_kind,
        "hard_examples": hard_examples,
        "minutes": round((time.monotonic() - started) / 60, 2),
        "history": [asdict(h) for h in fitted.history],
    }
    saved = None
    if out_path is not None:
        saved = save_model(fitted.model, spec, out_path, overwrite=overwrite)
    result = TrainResult(
        **vars(fitted), spec=spec, path=saved, total_seconds=time.monotonic() - started
    )
    log.info("training done in %.1f min (%s)", result.total_seconds / 60, fitted.stop_reason)
    return result


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
) -> dict | None:
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
        What :func:`area_threshold` measured, or None without a validation area.
    """
    record_object_sizes(spec, data.labelled)
    if best is not None and best.threshold is not None:
        spec.score_threshold = best.threshold
    if val_area is None:
        val_area = data.val_area(max_windows=AREA_MAX_WINDOWS)
    if val_area is None:
        return None
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
        spec.score_threshold = area["threshold"]
        log.info(
            "score threshold %.2f: the lowest within one standard error of the best F1 "
            "(at most %g below its threshold) "
            "over %d validation-area windows (%d objects); at it: "
            "F1 %.3f, precision %.3f, recall %.3f",
            area["threshold"],
            AREA_MAX_LEAN,
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
    return area


def new_model(
    data: TrainingData,
    *,
    chip_size: int,
    backbone: str = "resnet18",
    preset: str = "lite",
    start: str = "synthetic",
    init: str | os.PathLike[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    **overrides,
) -> tuple[ModelSpec, nn.Module, Path | None]:
    """A new detector for ``data`` (:func:`spec_for`) and the weights it starts from,
    the same for ``train`` and the notebook API.

    Args:
        start: ``"synthetic"`` (or ``"auto"``): the synthetic starting model of the
            architecture, built once per machine when it is not cached yet (see
            :mod:`geodetect.train.start`); ``"imagenet"``: torchvision's backbone
            weights, which must be cached; ``"none"``: random weights.
        init: a model file whose weights start it instead (every tensor of the same
            name and shape).
        seed: seeds the random initialisation of what the start does not give.

    Returns:
        The spec, the network, and the model file its weights came from (None for
        ImageNet or random weights).

    Raises:
        InputError: an unknown ``start``, or ``init`` shares no weights with it.
        ModelFileError: ImageNet weights asked for but not cached.
    """
    start = check_start(start)
    if init is None and start == "synthetic":
        init = synthetic_start(backbone, preset, device=device, progress=progress)
    if init is None and start == "none":
        log.info("the model starts from random weights (--start none)")
    torch.manual_seed(seed)
    spec, model = spec_for(
        data,
        backbone=backbone,
        preset=preset,
        chip_size=chip_size,
        pretrained="imagenet" if init is None and start == "imagenet" else "none",
        **overrides,
    )
    if init is not None:
        copy_matching_weights(model, load_model(init).model, source=init)
    return spec, model, None if init is None else Path(init)


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


def record_object_sizes(spec: ModelSpec, labelled) -> None:
    """Store the training objects' sizes in ``spec`` (kept when a resumed model saw larger
    ones): detection plans its chip overlap from them."""
    spec.max_object_px = max(labelled.max_object_px, spec.max_object_px or 0.0)
    spec.typical_object_px = max(labelled.typical_object_px, spec.typical_object_px or 0.0)


def _log_sizes(labelled, chip_size: int, *, chosen: bool) -> None:
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


def _check_resumable(spec: ModelSpec, classes: list[str], bands: int, resume) -> None:
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
        # 0.49 and cut the centre error from 0.44 to 0.42 m (benchmarks/README.md).
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
