"""The training run: labelled imagery -> chips -> a new (or resumed) model -> fitting ->
the finished spec -> one model file; and the synthetic start, which is itself a
training run of a fixed recipe, built the first time a machine needs it."""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from geodetect.errors import InputError, OutputError
from geodetect.io.labels import LabelSource
from geodetect.model import (
    ModelSpec,
    autocast_dtype,
    load_model,
    resolve_device,
    save_model,
)
from geodetect.train.augment import Augmentation
from geodetect.train.calibration import calibration_chips
from geodetect.train.data import (
    TrainingData,
    load_labelled,
    prepare_training_data,
)
from geodetect.train.fit import (
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_STEPS,
    MINE_AT,
    MINE_AT_OPTED_IN,
    FitResult,
    fit,
    lr_find,
)
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
from geodetect.train.start import StartRecipe, check_start, start_recipe

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
class Length:
    """How long a run trains, checked before anything is read or built: planned
    ``epochs`` or ``steps`` (not both) and a wall-clock budget ``max_minutes``, either or
    both. Given none, :data:`~geodetect.train.fit.DEFAULT_STEPS` steps (the same model on
    any machine). :meth:`of` is the one place this policy lives: ``geodetect train`` and
    the notebook API (:meth:`geodetect.RetinaNet.fit`) both go through it."""

    epochs: int | None = None
    steps: int | None = None
    max_minutes: float | None = None

    #: Planned epochs when the budget alone sets the length (it ends the run first).
    BUDGET_EPOCHS = 10_000

    @classmethod
    def of(
        cls,
        epochs: int | None = None,
        steps: int | None = None,
        max_minutes: float | None = None,
    ) -> Length:
        """The length asked for, with the default filled in.

        Raises:
            InputError: both ``epochs`` and ``steps``, or a value that is not positive.
        """
        if steps is not None and epochs is not None:
            raise InputError("give --steps or --epochs, not both")
        for name, value in (("--epochs", epochs), ("--steps", steps)):
            if value is not None and (int(value) != value or value < 1):
                raise InputError(f"{name} {value}: give a whole number of at least 1")
        if max_minutes is not None and not max_minutes > 0:
            raise InputError(f"--max-minutes {max_minutes}: give a number of minutes above 0")
        if epochs is None and steps is None and max_minutes is None:
            steps = DEFAULT_STEPS  # read now: tests and benchmarks set it
        return cls(epochs, steps, max_minutes)

    @property
    def planned_epochs(self) -> int:
        """The ``epochs`` :func:`~geodetect.train.fit.fit` plans with (it counts
        ``steps`` instead when they are given)."""
        if self.epochs is not None:
            return self.epochs
        return self.BUDGET_EPOCHS if self.max_minutes is not None else DEFAULT_EPOCHS


def train(
    source: LabelSource,
    out: str | os.PathLike[str] | None = None,
    *,
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

    Args:
        source: where the labels come from: rasters + a label layer, a VOC chip folder,
            a COCO JSON file or a YOLO folder (:class:`geodetect.io.labels.LabelSource`,
            e.g. ``LabelSource.of(["ortho/*.tif"], "pools.gpkg")``).
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
            Given none of ``epochs``, ``steps`` and ``max_minutes``, the run takes
            :data:`~geodetect.train.fit.DEFAULT_STEPS` steps (about 30 minutes on a
            2-core CPU).
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
    length = Length.of(epochs, steps, max_minutes)  # before anything is read or built
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
        source, gsd=gsd if base is None or not base.spec.gsd else base.spec.gsd
    )
    if base is not None:
        size = base.spec.chip_size
    else:
        size = chip_size or default_chip_size(labelled.typical_object_px)
    log_sizes(labelled, size, chosen=chip_size is None and base is None)
    if base is not None:
        check_resumable(base.spec, labelled.classes, labelled.num_bands, resume)
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
    val_area = data.val_area(max_windows=AREA_MAX_WINDOWS)
    area_reserve = 0.0
    if deadline is not None and val_area is not None:
        area_reserve = max(5.0, AREA_SHARE * (deadline - time.monotonic()))
    fitted = fit(
        model,
        data,
        epochs=length.planned_epochs,
        steps=length.steps,
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
        saved = save_model(
            fitted.model,
            spec,
            out_path,
            overwrite=overwrite,
            calibration=calibration_chips(data, val_area),
        )
    result = TrainResult(
        **vars(fitted), spec=spec, path=saved, total_seconds=time.monotonic() - started
    )
    log.info("training done in %.1f min (%s)", result.total_seconds / 60, fitted.stop_reason)
    return result


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
            target,
            backbone=recipe.backbone,
            preset=recipe.preset,
            steps=recipe.steps,
            batch_size=recipe.batch_size,
            hard_examples=recipe.hard_examples,
            seed=recipe.seed,
            device=device,
            pretrained="none",
            overwrite=overwrite,
            progress=progress,
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
