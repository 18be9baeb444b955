"""Fitting a detector: AdamW under a one-cycle learning rate that fits an epoch count,
a step count or a wall-clock budget, validation mAP per epoch, weight averaging, the best
weights kept, early stopping, the learning-rate finder and hard-example mining.

The schedule has OneCycleLR's shape (cosine warm-up to ``lr``, cosine decay to
``lr / 1000``) but is driven by *progress*, the larger of steps done / steps planned
and time spent / time allowed, so a budgeted run always finishes its decay, validates
and saves before the deadline, whatever the machine's speed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from geodetect.errors import GeodetectError
from geodetect.geometry.grid import offset_range
from geodetect.model import (
    autocast_dtype,
)
from geodetect.model.build import centres_inside
from geodetect.progress import progress_bar
from geodetect.train.chips import HARD, ChipItem, ChipSet, area_windows, chip_loader
from geodetect.train.data import TrainingData
from geodetect.train.options import DEFAULT_EPOCHS, DEFAULT_LR
from geodetect.train.score import AREA_MAX_WINDOWS, evaluate_chips, predict
from geodetect.train.split import TRAIN

log = logging.getLogger(__name__)

WEIGHT_DECAY = 1e-4
PCT_START = 0.15
EVAL_FROM = 0.5  # validate only once this much of the schedule is done (and at the end)
EVAL_SHARE_INV = 9  # ... and after training for at least 9 times the last validation's time
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
    # The fused kernel (one pass over each tensor for the whole update, on CPU as on a
    # GPU) against the per-tensor loop: 0.028 -> 0.008 s of a 0.5 s step on 2 AVX2 cores.
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        fused=fused or None,
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
        for images, _ in chip_loader(
            windows, batch_size=batch_size, shuffle=False, workers=0, seed=0
        ):
            outputs = predict(model, images, device, amp)
            for out in outputs:
                item = windows.items[done]
                done += 1
                keep = out["scores"] >= min_score
                if not keep.any():
                    continue
                offset = torch.tensor([item.col_off, item.row_off] * 2, dtype=torch.float32)
                boxes = out["boxes"][keep].float().cpu() + offset
                scores = out["scores"][keep].float().cpu()
                gl = data.labelled.grids[item.grid_index]
                if gl.known is not None:  # an alarm where nothing is known is no alarm
                    inside = centres_inside(boxes, torch.as_tensor(gl.known).float())
                    boxes, scores = boxes[inside], scores[inside]
                labelled = torch.as_tensor(gl.boxes).float()
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
        col = int(np.clip(round(x - chip / 2), *offset_range(grid.width, chip)))
        row = int(np.clip(round(y - chip / 2), *offset_range(grid.height, chip)))
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
        yield from chip_loader(
            chips, batch_size=batch_size, shuffle=True, workers=workers, seed=epoch
        )
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
    loader = chip_loader(
        data.train, batch_size=batch_size, shuffle=True, workers=workers, seed=seed
    )
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
    bar = progress_bar(
        # on a time budget the length is known after the first step, not before
        total=None if deadline is not None and steps is None else planned,
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
            score = selection_score(stats)
            gain = score is not None and (peak is None or score > peak)
            _log_epoch(stats, bar, shown=final or gain)  # the bar shows the rest
            if _better(stats, peak, tolerance):
                best = stats
                best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in kept.state_dict().items()
                }
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


def _log_epoch(stats: EpochStats, bar, *, shown: bool) -> None:
    """The epoch's line: at INFO when ``shown``, at DEBUG (``-v``) otherwise."""
    level = logging.INFO if shown else logging.DEBUG
    text = f"epoch {stats.epoch}: loss {stats.loss:.3f}, lr {stats.lr:.2e}"
    if stats.map_50 is not None:
        text += f", val AP50 {stats.map_50:.3f}, AP50:95 {stats.map:.3f}"
    if stats.centre_error_px is not None:
        text += f", centre error {stats.centre_error_px:.2f} px"
    if log.isEnabledFor(level):
        with bar.external_write_mode():
            log.log(level, "%s (%.0f s)", text, stats.seconds)
