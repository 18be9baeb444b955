"""How well a model finds the validation objects, and the score threshold that follows:
greedy matching of detections to objects on chips, F1 by threshold, and the threshold
chosen over windows tiling the validation area."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from geodetect.geometry.boxes import box_centres
from geodetect.geometry.match import greedy_match
from geodetect.model import (
    autocast_dtype,
)
from geodetect.model.build import centres_inside
from geodetect.train.chips import (
    ChipSet,
    chip_loader,
)

log = logging.getLogger(__name__)

# Share of a time budget kept for choosing the score threshold over the validation area:
# the threshold decides the layer's F1 more than the steps it costs (an 8-minute São
# Paulo model: layer F1 0.644 at the 0.3 that 404 windows left it with, 0.836 at the
# 0.55 that all 1,839 windows choose), and the rule needs about half the area's windows
# to land within 0.02 of the best F1 nine times in ten (benchmarks/README.md).
AREA_SHARE = 0.12
AREA_THRESHOLD_RANGE = (0.2, 0.8)
# The F1 a validation area cannot tell from the best: one standard error, within these.
AREA_F1_SLACK = (0.02, 0.05)
# Fewer objects in the scored windows: keep the validation chips' threshold. The chips
# hide most false alarms and choose low: a model trained on São Paulo's six val/ sheets
# (16 validation-area objects) kept the chips' 0.35 and gave the 20 unseen sheets F1
# 0.448 where 0.65 gave 0.656; the area's own curve, read by the middle-of-the-run rule,
# chose 0.55 (0.637). The rule's run widens with fewer objects, so it is trusted down
# to 10.
AREA_MIN_OBJECTS = 10
AREA_MAX_WINDOWS = 2000  # windows scanned at most (without a time budget)


def predict(model: nn.Module, images: torch.Tensor, device: torch.device, amp) -> list[dict]:
    """The model's detections for a batch of chips (eval mode), under autocast when
    ``amp`` is a dtype."""
    ctx = torch.autocast(device.type, dtype=amp) if amp else nullcontext()
    with ctx:
        return model(images.to(device))


def _match(
    pred: torch.Tensor, truth: torch.Tensor, iou: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """COCO-style greedy matching of ``pred`` boxes (descending score order) to truth
    (:func:`geodetect.geometry.match.greedy_match`).

    Returns:
        ``matched`` BoolTensor[P] (True: a true positive) and ``errors`` FloatTensor[P],
        the centre distance in pixels of each true positive (NaN elsewhere).
    """
    matched = torch.zeros(len(pred), dtype=torch.bool)
    errors = torch.full((len(pred),), float("nan"))
    if len(pred) == 0 or len(truth) == 0:
        return matched, errors
    overlaps = box_iou(pred, truth).numpy()
    det, ref = np.nonzero(overlaps > 0)
    rank = np.arange(len(pred))
    found = greedy_match(
        det, ref, overlaps[det, ref], rank=rank, n_ref=len(truth), thresholds=[iou]
    )[0]
    hits = torch.from_numpy(np.flatnonzero(found >= 0))
    if len(hits):
        pairs = torch.from_numpy(found[hits.numpy()])
        matched[hits] = True
        offsets = box_centres(pred[hits]) - box_centres(truth[pairs])
        errors[hits] = offsets.norm(dim=1)
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


def plateau_middle_threshold(
    scores: np.ndarray, matched: np.ndarray, n_truth: int, *, low: float, high: float
) -> float:
    """The middle of the thresholds in [low, high] (steps of 0.05) that the validation
    area cannot tell from the best F1: each threshold's F1 averaged with its two
    neighbours' (the range's ends count their own twice), then the unbroken run of
    thresholds around the best average whose averages lie within one standard error of
    it (:func:`f1_standard_error`, kept within 0.02-0.05), and that run's middle (the
    lower of two).

    The layer is what users count, join to parcels and visit, so its F1 is what the
    threshold serves. A validation area of a few dozen objects measures each point of
    the F1 curve to about +-0.05: one object can lift a single threshold above its
    neighbours, and the true peak may lie anywhere in the run the area cannot rank; its
    middle is the choice that is never far from it. On São Paulo's unseen sheets (two
    8-minute models, benchmarks/README.md) this rule chose within 0.01 of the best layer
    F1 for both; the maximum of the averaged curve was 0.025 off for one, and the rule
    before (the lowest threshold within one standard error of the best) fell 0.08 below
    the best on a model of issue 31."""
    f1 = _f1_by_threshold(scores, matched, n_truth, low=low, high=high)
    steps = sorted(f1)
    values = np.array([f1[t] for t in steps])
    smooth = np.round(np.convolve(np.r_[values[0], values, values[-1]], np.ones(3) / 3, "valid"), 4)
    best = int(np.argmax(smooth))
    _, found = _hits(scores, matched, steps[best])
    slack = min(
        AREA_F1_SLACK[1], max(AREA_F1_SLACK[0], f1_standard_error(smooth[best], found, n_truth))
    )
    first = last = best
    while first > 0 and smooth[first - 1] >= smooth[best] - slack:
        first -= 1
    while last < len(steps) - 1 and smooth[last + 1] >= smooth[best] - slack:
        last += 1
    return float(steps[(first + last) // 2])


def only_known(prediction: dict, target: dict) -> dict:
    """The detections of a chip whose centres lie where its labels are complete (the
    target's ``known`` boxes, see :class:`~geodetect.train.chips.ChipSet`): elsewhere
    nothing is known, so a detection is neither right nor wrong. All of them when the
    whole chip is known."""
    known = target.get("known")
    if known is None:
        return prediction
    keep = centres_inside(prediction["boxes"].float().cpu(), known)
    return {k: v[keep.to(v.device)] for k, v in prediction.items()}


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
        for images, targets in chip_loader(
            chips, batch_size=batch_size, shuffle=False, workers=workers, seed=0
        ):
            outputs = predict(model, images, device, amp)
            preds = [
                only_known(
                    {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in o.items()}, t
                )
                for o, t in zip(outputs, targets, strict=True)
            ]
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
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
def area_scores(
    model: nn.Module,
    windows: ChipSet,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    workers: int = 0,
    deadline: float | None = None,
    edge: float = 2.0,
) -> AreaScores:
    """The model's detections over windows tiling the validation *area*, as detection
    meets it (mostly background, where false alarms come from), matched to the truth at
    IoU 0.5. Objects and detections within ``edge`` pixels of a window's border are left
    out (a window edge cuts them; detection's overlapping chips would not). Windows go
    in random order until ``deadline``."""
    device = torch.device(device)
    amp = autocast_dtype(device, precision)
    size = windows.chip_size
    scores, matched, n_truth, seen = [], [], 0, 0
    was_training = model.training
    model.eval()

    def inside(boxes: torch.Tensor) -> torch.Tensor:
        return ((boxes[:, :2] > edge) & (boxes[:, 2:] < size - edge)).all(dim=1)

    try:
        for images, targets in chip_loader(
            windows, batch_size=batch_size, shuffle=True, workers=workers, seed=1
        ):
            outputs = predict(model, images, device, amp)
            for out, target in zip(outputs, targets, strict=True):
                out = only_known(out, target)
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
    return AreaScores(
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(matched) if matched else np.zeros(0, dtype=bool),
        n_truth,
        seen,
    )


@dataclass(frozen=True)
class AreaScores:
    """Detections over the validation area: their ``scores``, whether each ``matched``
    an object (IoU 0.5), the objects (``n_truth``) and ``windows`` scanned."""

    scores: np.ndarray
    matched: np.ndarray
    n_truth: int
    windows: int

    def threshold(
        self, *, low: float = AREA_THRESHOLD_RANGE[0], high: float = AREA_THRESHOLD_RANGE[1]
    ) -> dict:
        """The score threshold chosen by F1 (:func:`plateau_middle_threshold`) and, at
        it, ``f1``, ``precision``, ``recall``; with ``windows`` and ``n_truth``."""
        threshold = plateau_middle_threshold(
            self.scores, self.matched, self.n_truth, low=low, high=high
        )
        tp, found = _hits(self.scores, self.matched, threshold)
        curve = _f1_by_threshold(self.scores, self.matched, self.n_truth, low=low, high=high)
        return {
            "threshold": threshold,
            # The F1 curve the rule read, kept in the model file for a later look.
            "f1_by_threshold": {f"{t:.2f}": round(v, 4) for t, v in curve.items()},
            "f1": 2 * tp / max(1, found + self.n_truth),
            "precision": tp / max(1, found),
            "recall": tp / max(1, self.n_truth),
            "windows": self.windows,
            "n_truth": self.n_truth,
        }


def area_threshold(model: nn.Module, windows: ChipSet, **kwargs) -> dict:
    """The score threshold chosen over the validation area (:func:`area_scores`, then
    :meth:`AreaScores.threshold`)."""
    return area_scores(model, windows, **kwargs).threshold()
