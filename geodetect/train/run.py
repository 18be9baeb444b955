"""The training run: labelled imagery -> chips -> a new (or resumed) model -> fitting ->
the finished spec -> one model file; and the synthetic start, which is itself a
training run of a fixed recipe, built the first time a machine needs it."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geodetect.errors import OutputError
from geodetect.io.labels import LabelSource
from geodetect.model import (
    ModelSpec,
    autocast_dtype,
    load_model,
    resolve_device,
    save_model,
)
from geodetect.train.calibration import calibration_chips
from geodetect.train.chips import ChipSet
from geodetect.train.data import TrainingData, prepare_training_data
from geodetect.train.fit import (
    MINE_AT,
    MINE_AT_OPTED_IN,
    FitResult,
    fit,
    lr_find,
)
from geodetect.train.labelled import load_labelled
from geodetect.train.options import DEFAULT_LR, Length, Start, TrainOptions
from geodetect.train.score import AREA_MAX_WINDOWS, AREA_MIN_OBJECTS, AREA_SHARE
from geodetect.train.spec import (
    check_resumable,
    copy_matching_weights,
    default_batch_size,
    default_chip_size,
    default_workers,
    finish_spec,
    log_sizes,
    spec_for,
)
from geodetect.train.start import StartRecipe, start_recipe

log = logging.getLogger(__name__)

_SAVE_RESERVE_S = 3.0


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
                f"score threshold: {area['threshold']:.2f} (the middle of the thresholds "
                "whose F1 over the validation area is within one standard error of the "
                "best; at it: "
                f"F1 {area['f1']:.3f}, precision {area['precision']:.3f}, "
                f"recall {area['recall']:.3f})"
            )
        elif threshold is not None:
            lines.append(f"score threshold: {threshold:.2f} (best F1 on validation chips)")
        if self.path is not None:
            lines.append(f"model: {self.path}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Budget:
    """A run's wall clock: when it began and the ``time.monotonic()`` by which it must
    end (None: no budget). Immutable: :meth:`extended` gives the budget after a pause
    that does not count, such as a one-time build of the synthetic start."""

    began: float
    deadline: float | None = None

    @classmethod
    def of(cls, length: Length) -> Budget:
        now = time.monotonic()
        return cls(now, None if length.max_minutes is None else now + 60.0 * length.max_minutes)

    def extended(self, seconds: float) -> Budget:
        return self if self.deadline is None else Budget(self.began, self.deadline + seconds)

    def less(self, seconds: float) -> float | None:
        """The deadline ``seconds`` earlier (None without one)."""
        return None if self.deadline is None else self.deadline - seconds

    def area_reserve(self, val_area: ChipSet | None) -> float:
        """Seconds kept at the end for choosing the threshold over the validation area:
        :data:`AREA_SHARE` of what is left, at least 5 s (0 without a budget or area)."""
        if self.deadline is None or val_area is None:
            return 0.0
        return max(5.0, AREA_SHARE * (self.deadline - time.monotonic()))

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.began) / 60


@dataclass(frozen=True)
class Prepared:
    """What preparing gives fitting: the labelled imagery cut into chips, the spec and
    network to train and where their weights came from (``origin``: the model file, None
    for ImageNet or random weights)."""

    data: TrainingData
    spec: ModelSpec
    model: nn.Module
    start: Start
    origin: Path | None


@dataclass(frozen=True)
class Fitted:
    """What fitting gives finishing: the fit itself and the settings it ran with."""

    result: FitResult
    lr: float
    batch_size: int
    workers: int
    val_area: ChipSet | None


def train(
    source: LabelSource,
    options: TrainOptions | str | os.PathLike[str] | None = None,
    /,
    **asked: Any,
) -> TrainResult:
    """Train a detector from labelled imagery and write one model file: prepare
    (:func:`prepare`: labels, sizes, GSD, chips, start), fit (:func:`fit_model`), finish
    (:func:`finish`: sizes, threshold, the training record) and write.

    Args:
        source: where the labels come from: rasters + a label layer, a VOC chip folder,
            a COCO JSON file or a YOLO folder (:class:`geodetect.io.labels.LabelSource`,
            e.g. ``LabelSource.of(["ortho/*.tif"], "pools.gpkg")``).
        options: the run's :class:`~geodetect.train.options.TrainOptions`; or, instead,
            the model file to write (or None) with the other options by ``geodetect
            train``'s names as keywords (:meth:`TrainOptions.of`), e.g.
            ``train(source, "m.model", steps=800)``.

    What the options do:
        out: model file to write (None: keep the model in memory only).
        preset: ``"lite"`` (128 channels, 2 convolutions per head branch) or
            ``"standard"`` (256, 4).
        chip_size: training chip edge in pixels (default: :func:`default_chip_size`;
            the stored model's when resuming).
        gsd: training pixel size in metres; the model detects at it (default: the
            rasters' upper median, coarser where the objects are large in pixels, see
            :func:`geodetect.train.sizes.object_scaled_gsd`; the stored model's when
            resuming).
        epochs, steps, max_minutes: the run's :class:`Length`. ``steps``: the same
            seeded run gives the same model on any machine, however slow or busy; with
            ``max_minutes`` too, whichever comes first ends it. Given none,
            :data:`~geodetect.train.options.DEFAULT_STEPS` steps (about 30 minutes on a
            2-core CPU). ``max_minutes`` covers the whole call (reading labels,
            sampling, training, validation and saving), not a first build of the
            synthetic start.
        lr: peak learning rate of the one-cycle schedule (default 2e-3).
        find_lr: run :func:`lr_find` first and use its suggestion (ignored with ``lr``).
        start, init, resume: the run's :class:`Start`: ``start`` ``"synthetic"`` (or
            ``"auto"``; the default), ``"imagenet"`` or ``"none"``; ``init`` a model file
            whose weights start a new model (every tensor of the same name and shape;
            chip size, band scaling and GSD come from the new data); ``resume`` a model
            file to continue (its architecture, classes, chip size and band scaling are
            kept; optimizer state is not stored in model files, so the schedule starts
            afresh).
        hard_examples: at 30 % and 60 % of the schedule, add chips around the model's
            most confident false alarms in the training area (see
            :func:`mine_hard_examples`).
        precision: ``"auto"`` (bf16 where the GPU or CPU computes it natively),
            ``"fp32"`` or ``"bf16"``.

    Raises:
        OutputError: ``out`` exists (without ``overwrite``) or its folder does not.
        InputError, LabelError, RasterError: unusable inputs; nothing is written.
    """
    if not isinstance(options, TrainOptions):  # the model file, positional or out=
        if options is not None and "out" in asked:
            raise TypeError("train() got the model file twice (positional and out=)")
        options = TrainOptions.of(**{"out": options, **asked})
    elif asked:
        raise TypeError("give train() a TrainOptions or its fields as keywords, not both")
    budget = Budget.of(options.length)  # options were checked before anything below
    device = resolve_device(options.device)
    autocast_dtype(device, options.precision)  # refuses an impossible precision first
    torch.manual_seed(options.seed)
    prepared, budget = prepare(source, options, budget)
    fitted = fit_model(prepared.model, prepared.data, options, budget)
    spec = finish(prepared, fitted, options, budget)
    saved = None
    if options.out is not None:
        saved = save_model(
            fitted.result.model,
            spec,
            options.out,
            overwrite=options.overwrite,
            calibration=calibration_chips(prepared.data, fitted.val_area),
        )
    result = TrainResult(
        **vars(fitted.result),
        spec=spec,
        path=saved,
        total_seconds=time.monotonic() - budget.began,
    )
    log.info("training done in %.1f min (%s)", result.total_seconds / 60, fitted.result.stop_reason)
    return result


def prepare_data(
    source: LabelSource, options: TrainOptions, base: ModelSpec | None = None
) -> tuple[TrainingData, int]:
    """The labelled imagery read at the training GSD and cut into chips split by area,
    and the chip size: the options' or ``base``'s (a resumed model's), else chosen from
    the objects' sizes (:func:`default_chip_size`)."""
    gsd = options.gsd if base is None or not base.gsd else base.gsd
    labelled = load_labelled(source, gsd=gsd)
    size = base.chip_size if base is not None else options.chip_size
    size = size or default_chip_size(labelled.typical_object_px)
    log_sizes(labelled, size, chosen=options.chip_size is None and base is None)
    if base is not None:
        check_resumable(base, labelled.classes, labelled.num_bands, options.start.path)
    data = prepare_training_data(
        labelled,
        chip_size=size,
        val_fraction=options.val_fraction,
        augmentation=options.augmentation,
        seed=options.seed,
        band_stats=None if base is None else (base.band_mean, base.band_std),
    )
    return data, size


def prepare(source: LabelSource, options: TrainOptions, budget: Budget) -> tuple[Prepared, Budget]:
    """Labels, sizes, GSD, chips and the network to train (a resumed model, or a new one
    from its start); the budget comes back extended by a one-time build of the
    synthetic start, which it does not count."""
    base = load_model(options.start.path) if options.start.resumes else None
    if base is not None:
        for name, unit in (("chip_size", " px"), ("gsd", " m")):
            asked, kept = getattr(options, name), getattr(base.spec, name)
            if asked is not None and kept and asked != kept:
                log.warning(
                    "--%s %g ignored: the resumed model works at %g%s",
                    name.replace("_", "-"),
                    asked,
                    kept,
                    unit,
                )
    data, size = prepare_data(source, options, None if base is None else base.spec)
    if base is not None:
        prepared = Prepared(data, base.spec, base.model, options.start, None)
        return prepared, budget
    built = time.monotonic()
    spec, model, origin = new_model(data, options, chip_size=size)
    budget = budget.extended(time.monotonic() - built)  # a start build is not the budget's
    return Prepared(data, spec, model, options.start, origin), budget


def fit_model(
    model: nn.Module, data: TrainingData, options: TrainOptions, budget: Budget
) -> Fitted:
    """Fit ``model`` to ``data`` within the budget, keeping a share of it for choosing
    the threshold over the validation area and a few seconds for saving; the learning
    rate is the options', else a sweep's when ``find_lr``, else :data:`DEFAULT_LR`."""
    device = resolve_device(options.device)
    batch = options.batch_size or default_batch_size(device)
    workers = default_workers(device) if options.workers is None else options.workers
    lr = options.lr
    if lr is None and options.find_lr:
        lr = lr_find(
            model.to(device),
            data.train,
            batch_size=batch,
            device=device,
            workers=workers,
            precision=options.precision,
        ).suggested
    lr = lr or DEFAULT_LR
    val_area = data.val_area(max_windows=AREA_MAX_WINDOWS)
    result = fit(
        model,
        data,
        epochs=options.length.planned_epochs,
        steps=options.length.steps,
        batch_size=batch,
        lr=lr,
        device=device,
        deadline=budget.less(_SAVE_RESERVE_S + budget.area_reserve(val_area)),
        patience=options.patience,
        workers=workers,
        progress=options.progress,
        seed=options.seed,
        precision=options.precision,
        mine_at=MINE_AT_OPTED_IN if options.hard_examples else MINE_AT,
    )
    return Fitted(result, lr, batch, workers, val_area)


def finish(prepared: Prepared, fitted: Fitted, options: TrainOptions, budget: Budget) -> ModelSpec:
    """The spec to write: the objects' sizes and the score threshold
    (:func:`finish_spec`) and the training record."""
    result, data = fitted.result, prepared.data
    spec, area = finish_spec(
        result.model,
        prepared.spec,
        data,
        result.best,
        batch_size=fitted.batch_size,
        device=resolve_device(options.device),
        precision=options.precision,
        workers=fitted.workers,
        deadline=budget.less(_SAVE_RESERVE_S),
        val_area=fitted.val_area,
    )
    best = result.best
    amp = autocast_dtype(resolve_device(options.device), options.precision)
    start = options.start
    record = {
        "source": data.labelled.source,
        "objects": data.labelled.num_objects,
        "train_chips": len(data.train),
        "val_chips": 0 if data.val is None else len(data.val),
        "epochs": len(result.history),
        "steps": result.steps,
        "best_epoch": None if best is None else best.epoch,
        "val_map_50": None if best is None else best.map_50,
        "val_map": None if best is None else best.map,
        "val_centre_error_px": None if best is None else best.centre_error_px,
        "score_threshold": spec.score_threshold,
        "val_area": area,
        "stop_reason": result.stop_reason,
        "lr": fitted.lr,
        "batch_size": fitted.batch_size,
        "precision": "fp32" if amp is None else "bf16",
        "device": str(resolve_device(options.device)),
        "seed": options.seed,
        "resumed_from": str(start.path) if start.resumes else None,
        "initialised_from": None if prepared.origin is None else str(prepared.origin),
        "start": "resumed" if start.resumes else start.kind,
        "hard_examples": options.hard_examples,
        "minutes": round(budget.minutes, 2),
        "history": [asdict(h) for h in result.history],
    }
    return dataclasses.replace(spec, training=record)


def new_model(
    data: TrainingData, options: TrainOptions, *, chip_size: int
) -> tuple[ModelSpec, nn.Module, Path | None]:
    """A new detector for ``data`` (:func:`spec_for`) and the weights it starts from,
    the same for ``train`` and the notebook API: the synthetic starting model of the
    architecture (built once per machine when it is not cached yet, see
    :mod:`geodetect.train.start`), torchvision's ImageNet backbone weights (which must
    be cached), random weights, or the weights of a model file (every tensor of the same
    name and shape). The options' seed seeds what the start does not give.

    Returns:
        The spec, the network, and the model file its weights came from (None for
        ImageNet or random weights).

    Raises:
        InputError: the start file shares no weights with it.
        ModelFileError: ImageNet weights asked for but not cached.
    """
    start = options.start
    init = start.path if start.kind == "model" else None
    if start.kind == "synthetic":
        init = synthetic_start(
            options.backbone, options.preset, device=options.device, progress=options.progress
        )
    if start.kind == "none":
        log.info("the model starts from random weights (--start none)")
    overrides = {}
    if options.box_loss:
        overrides["box_loss"] = options.box_loss
    if options.anchor_scales is not None:
        overrides["anchor_scales"] = list(options.anchor_scales)
    if options.anchor_ratios is not None:
        overrides["anchor_ratios"] = list(options.anchor_ratios)
    torch.manual_seed(options.seed)
    spec, model = spec_for(
        data,
        backbone=options.backbone,
        preset=options.preset,
        chip_size=chip_size,
        pretrained="imagenet" if start.kind == "imagenet" else "none",
        **overrides,
    )
    if init is not None:
        copy_matching_weights(model, load_model(init).model, source=init)
    return spec, model, None if init is None else Path(init)


def build_synthetic_start(
    recipe: StartRecipe | None = None,
    *,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Draw the recipe's suburb, train its detector and put the model in the cache.

    Raises:
        OutputError: the start is already cached (without ``overwrite``).
    """
    from geodetect.synth import synth_scene  # the synthetic suburb only when needed

    recipe = recipe or start_recipe()
    target = recipe.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:  # before minutes of drawing and training
        raise OutputError(
            f"{target}: the synthetic starting model is already there; pass --overwrite "
            "to build it again"
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="geodetect-start-") as tmp:
        scene = synth_scene(
            Path(tmp) / "scene",
            seed=recipe.seed,
            size=(recipe.size, recipe.size),
            gsd=recipe.gsd,
            compress="jpeg",
            confusers=recipe.confusers,
        )
        # save_model writes the model file atomically (temporary file, then rename).
        train(
            LabelSource.of(scene.image_paths, scene.truth_path),
            TrainOptions.of(
                out=target,
                backbone=recipe.backbone,
                preset=recipe.preset,
                steps=recipe.steps,
                batch_size=recipe.batch_size,
                hard_examples=recipe.hard_examples,
                seed=recipe.seed,
                device=device,
                start="none",
                overwrite=overwrite,
                progress=progress,
            ),
        )
    log.info(
        "synthetic starting model built in %.1f min: %s",
        (time.monotonic() - started) / 60,
        target,
    )
    return target


def synthetic_start(
    backbone: str, preset: str, *, device: str = "auto", progress: bool = True
) -> Path:
    """The synthetic starting model of ``backbone``/``preset``: the cached one, or one
    built now (said first, with its cost)."""
    recipe = start_recipe(backbone, preset)
    if recipe.path.is_file():
        log.info("starting from the synthetic model %s", recipe.path)
        return recipe.path
    log.warning(
        "building the synthetic starting model once for this machine (%d steps on a "
        "synthetic suburb, %s; not counted in --max-minutes), kept in %s for every later "
        "run; --start none trains from random weights instead",
        recipe.steps,
        recipe.cost(device),
        recipe.path.parent,
    )
    try:
        return build_synthetic_start(recipe, device=device, progress=progress)
    except OutputError:  # another process built it meanwhile
        return recipe.path
