"""The notebook API: arcgis.learn's few verbs over the same functions the CLI uses.

>>> from geodetect import prepare_data, RetinaNet, detect_objects
>>> data = prepare_data("sample_data/train/scene.tif", labels="sample_data/train/truth.gpkg",
...                     chip_size=256, batch_size=8)              # doctest: +SKIP
>>> model = RetinaNet(data, backbone="resnet18")                  # doctest: +SKIP
>>> model.fit(epochs=10, lr=1e-3)                                 # doctest: +SKIP
>>> gdf = detect_objects(model, "sample_data/mosaic/*.tif")       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import torch
from matplotlib.figure import Figure

from geodetect.detect import detect
from geodetect.io.labels import LabelSource
from geodetect.model import LoadedModel, load_model, resolve_device, save_model
from geodetect.plots import plot_detections, plot_history, plot_lr_find, show_chips
from geodetect.train import EpochStats, LRFinderResult, TrainingData, evaluate_chips, lr_find
from geodetect.train.options import Length, Start, TrainOptions
from geodetect.train.run import Budget, Prepared, finish, fit_model, new_model
from geodetect.train.run import prepare_data as cut_chips
from geodetect.train.spec import default_batch_size, with_object_sizes

__all__ = ["DetectionData", "RetinaNet", "detect_objects", "plot_detections", "prepare_data"]


@dataclass
class DetectionData:
    """Training and validation chips, ready for :class:`RetinaNet`.

    Made by :func:`prepare_data`. ``train`` and ``val`` are torch Datasets of
    ``(image, target)`` pairs; ``classes`` lists the class names.
    """

    training: TrainingData
    chip_size: int
    batch_size: int
    seed: int = 0
    #: The training options asked so far (:class:`RetinaNet` and its ``fit`` add theirs).
    options: TrainOptions = dataclasses.field(default_factory=TrainOptions)

    @property
    def classes(self) -> list[str]:
        return list(self.training.classes)

    @property
    def train(self):
        return self.training.train

    @property
    def val(self):
        return self.training.val

    def __repr__(self) -> str:
        val = 0 if self.val is None else len(self.val)
        return (
            f"DetectionData(classes={self.classes}, chip_size={self.chip_size}, "
            f"train_chips={len(self.train)}, val_chips={val}, "
            f"objects={self.training.labelled.num_objects})"
        )

    def show_batch(
        self, rows: int = 2, *, ncols: int = 4, split: str = "train", seed: int | None = None
    ) -> Figure:
        """A grid of ``rows × ncols`` random chips with their labelled boxes.

        ``split="val"`` shows validation chips (never augmented).
        """
        chips = self.val if split == "val" else self.train
        if chips is None or len(chips) == 0:
            raise ValueError(f"there are no {split} chips to show")
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(chips), size=min(rows * ncols, len(chips)), replace=False)
        items = [chips[int(i)] for i in picks]
        names = self.classes
        return show_chips(
            [img for img, _ in items],
            [t["boxes"] for _, t in items],
            labels=[[names[int(c)] for c in t["labels"]] for _, t in items]
            if len(names) > 1
            else None,
            ncols=ncols,
        )


def prepare_data(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | None = None,
    *,
    chip_size: int | None = None,
    batch_size: int | None = None,
    val_fraction: float = 0.2,
    class_field: str | None = None,
    gsd: float | None = None,
    review: str | os.PathLike | None = None,
    seed: int = 0,
) -> DetectionData:
    """Cut labelled imagery into training and validation chips (split by area).

    Args:
        path: raster file(s), a glob or a folder of GeoTIFFs — or a folder exported by
            ArcGIS "Export Training Data For Deep Learning" (``images/`` +
            ``labels/*.xml``, PASCAL VOC) or a YOLO folder (Ultralytics or Roboflow, see
            :func:`geodetect.io.labels.read_yolo`), in which case ``labels`` is not
            needed.
        labels: polygons, boxes or points in any vector format and CRS.
        chip_size: chip edge in pixels, a multiple of 32 (default: as ``geodetect train``
            chooses it, 128 or 1.5 times the typical object).
        batch_size: chips per training step (default: as ``geodetect train``, 8 on a
            CPU and 32 on a GPU).
        val_fraction: share of the area held out for validation.
        class_field: attribute holding the class (default ``class`` if present).
        gsd: training pixel size in metres (default: as ``geodetect train``).
        review: a review filled in QGIS (``geodetect sample``) over ``path``, with or
            without ``labels``, as ``geodetect train --review`` takes it.
        seed: seed of the chip sampling (and, passed on, of training).

    With the defaults, the data, and what :class:`RetinaNet` trains from it, are those
    of ``geodetect train`` with the same labels and seed.

    Example:
        >>> data = prepare_data("ortho/*.tif", labels="pools.gpkg", chip_size=256)  # doctest: +SKIP
        >>> data.show_batch()                                                       # doctest: +SKIP
    """
    options = TrainOptions.of(  # checked before anything is read, as the command line's
        chip_size=chip_size, batch_size=batch_size, val_fraction=val_fraction, gsd=gsd, seed=seed
    )
    source = LabelSource.guess(path, labels, class_field=class_field, review=review)
    training, chip_size = cut_chips(source, options)
    batch_size = batch_size or default_batch_size(resolve_device(options.device))
    return DetectionData(training, chip_size, batch_size, seed, options)


class RetinaNet:
    """A RetinaNet pool detector you can train, inspect, save and run.

    ResNet backbone + feature pyramid network (FPN) + two small heads: one scores each
    anchor box for each class (trained with focal loss, which keeps the many easy
    background anchors from drowning out the few pools), one refines the anchor into a
    box. Anchors come in ``scales`` × ``ratios`` shapes at every pyramid level.

    Args:
        data: what :func:`prepare_data` returned (or None with :meth:`from_model`).
        backbone: ``resnet18`` (default, fast on a laptop), ``resnet34``, ``resnet50``,
            ``resnet101`` or ``resnet152``.
        preset: ``lite`` (128-channel FPN and heads: for CPUs) or ``standard`` (256).
        scales: anchor scales per level (default ``[1, 2**(1/3), 2**(2/3)]``).
        ratios: anchor aspect ratios (default ``[0.5, 1, 2]``).
        start: what the weights start from, as ``geodetect train --start``:
            ``synthetic`` (the default: the synthetic starting model, built once per
            machine when it is not cached yet), ``imagenet`` (cached ImageNet backbone
            weights) or ``none`` (random weights).
        init: a model file whose weights start it instead.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Example:
        >>> model = RetinaNet(data, backbone="resnet18")    # doctest: +SKIP
        >>> model.lr_find()                                 # doctest: +SKIP
        >>> model.fit(epochs=10, lr=1e-3)                   # doctest: +SKIP
        >>> model.show_results()                            # doctest: +SKIP
        >>> model.average_precision_score()                 # doctest: +SKIP
        {'pool': 0.97}
        >>> model.save("pools.model")                       # doctest: +SKIP
    """

    def __init__(
        self,
        data: DetectionData | None,
        *,
        backbone: str = "resnet18",
        preset: str = "lite",
        scales: Sequence[float] | None = None,
        ratios: Sequence[float] | None = None,
        start: str = "synthetic",
        init: str | os.PathLike | None = None,
        device: str = "auto",
        _loaded: LoadedModel | None = None,
    ) -> None:
        self.data = data
        self.device = resolve_device(device)
        self.history: list[EpochStats] = []
        self.lr_finder: LRFinderResult | None = None
        self._origin: Path | None = None
        if _loaded is not None:
            self.spec, self.model = _loaded.spec, _loaded.model
            self.options = (data.options if data is not None else TrainOptions()).but(
                backbone=self.spec.backbone,
                preset=self.spec.preset,
                start=Start("resume", _loaded.path),
                device=device,
            )
        else:
            if data is None:
                raise ValueError(
                    "RetinaNet needs data (from prepare_data) or use RetinaNet.from_model(path)"
                )
            self.options = data.options.but(
                backbone=backbone,
                preset=preset,
                anchor_scales=scales,
                anchor_ratios=ratios,
                start=Start.of(start, init=init),
                device=device,
            )
            spec, self.model, self._origin = new_model(
                data.training, self.options, chip_size=data.chip_size
            )
            origin = None if self._origin is None else str(self._origin)
            self.spec = dataclasses.replace(
                with_object_sizes(spec, data.training.labelled),
                training={"initialised_from": origin, "start": self.options.start.kind},
            )
        self.model.to(self.device).eval()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"RetinaNet(backbone={s.backbone!r}, preset={s.preset!r}, classes={s.classes}, "
            f"chip_size={s.chip_size}, bands={s.num_bands}, trained_epochs={len(self.history)})"
        )

    @classmethod
    def from_model(
        cls, path: str | os.PathLike, data: DetectionData | None = None, *, device: str = "auto"
    ) -> RetinaNet:
        """Load a model file written by :meth:`save` or ``geodetect train``."""
        loaded = load_model(path, device=resolve_device(device))
        return cls(data, device=device, _loaded=loaded)

    def _need_data(self) -> DetectionData:
        if self.data is None:
            raise ValueError("this needs training data: RetinaNet.from_model(path, data)")
        return self.data

    def lr_find(self, *, steps: int = 60, plot: bool = True) -> float:
        """Sweep the learning rate on a copy of the model; returns the suggested rate and
        (with ``plot``) shows loss against learning rate."""
        data = self._need_data()
        trial = copy.deepcopy(self.model)
        self.lr_finder = lr_find(
            trial, data.train, batch_size=data.batch_size, device=self.device, steps=steps
        )
        if plot:
            _show(plot_lr_find(self.lr_finder.lrs, self.lr_finder.losses, self.lr_finder.suggested))
        return self.lr_finder.suggested

    def fit(
        self,
        epochs: int | None = None,
        lr: float | None = None,
        *,
        steps: int | None = None,
        max_minutes: float | None = None,
        patience: int | None = None,
        seed: int | None = None,
        plot: bool = True,
    ) -> list[EpochStats]:
        """Train (AdamW, one-cycle schedule), then choose the score threshold as
        ``geodetect train`` does (:func:`geodetect.train.spec.finish_spec`): the same
        labels, seed and steps give the same model as the command line.

        Args:
            epochs: planned epochs. Given none of ``epochs``, ``steps`` and
                ``max_minutes``: :data:`~geodetect.train.options.DEFAULT_STEPS` steps, as
                ``geodetect train``.
            lr: peak learning rate (default: :meth:`lr_find`'s suggestion when it ran,
                else ``geodetect train``'s 2e-3).
            steps: planned steps instead of ``epochs`` (the same model on any machine).
            max_minutes: wall-clock budget for training and choosing the threshold.
            seed: training seed (default: the one given to :func:`prepare_data`).

        Returns:
            The per-epoch history; with ``plot``, the loss and AP curves are shown.
        """
        data = self._need_data()
        if lr is None and self.lr_finder:
            lr = self.lr_finder.suggested
        options = self.options.but(  # checked before any step, as the command line's
            length=Length.of(epochs, steps, max_minutes),
            lr=lr,
            patience=patience,
            seed=data.seed if seed is None else seed,
            batch_size=data.batch_size,
            device=str(self.device),
        )
        budget = Budget.of(options.length)
        fitted = fit_model(self.model, data.training, options, budget)
        self.model = fitted.result.model
        offset = self.history[-1].epoch if self.history else 0
        for h in fitted.result.history:  # epochs count on from earlier fits (best too)
            h.epoch += offset
        self.history.extend(fitted.result.history)
        prepared = Prepared(data.training, self.spec, self.model, options.start, self._origin)
        spec = finish(prepared, fitted, options, budget)
        before = self.spec.training.get("steps", 0)
        record = {**spec.training, "steps": before + fitted.result.steps}
        record["epochs"] = len(self.history)
        record["history"] = [dataclasses.asdict(h) for h in self.history]
        for kept in ("start", "initialised_from"):  # how the model first started
            if kept in self.spec.training:
                record[kept] = self.spec.training[kept]
        self.spec = dataclasses.replace(spec, training=record)
        if plot and self.history:
            _show(plot_history(self.history))
        return fitted.result.history

    def plot_losses(self) -> Figure:
        """Training loss and validation AP50 per epoch."""
        return plot_history(self.history)

    def _predict_chips(self, images: torch.Tensor, threshold: float) -> list[dict]:
        self.model.eval()
        self.model.score_thresh = threshold
        with torch.inference_mode():
            return [{k: v.cpu() for k, v in o.items()} for o in self.model(images.to(self.device))]

    def show_results(
        self, rows: int = 4, *, threshold: float | None = None, seed: int | None = 0
    ) -> Figure:
        """Validation chips: labelled boxes (pale, thick) under predictions (blue)."""
        data = self._need_data()
        chips = data.val if data.val is not None and len(data.val) else data.train
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(chips), size=min(rows * 2, len(chips)), replace=False)
        items = [chips[int(i)] for i in picks]
        images = torch.stack([img for img, _ in items])
        preds = self._predict_chips(images, threshold or self.spec.score_threshold)
        return show_chips(
            list(images),
            [p["boxes"] for p in preds],
            other_boxes=[t["boxes"] for _, t in items],
            titles=[
                f"{len(t['boxes'])} labelled, {len(p['boxes'])} found"
                for (_, t), p in zip(items, preds, strict=True)
            ],
            ncols=min(4, len(items)),
        )

    def average_precision_score(self, iou: float = 0.5) -> dict[str, float]:
        """AP per class on the validation chips at IoU ``iou`` (COCO 101-point)."""
        data = self._need_data()
        chips = data.val if data.val is not None and len(data.val) else data.train
        metrics = evaluate_chips(
            self.model,
            chips,
            batch_size=data.batch_size,
            device=self.device,
            per_class_iou=iou,
        )
        return {name: metrics["per_class"].get(i, 0.0) for i, name in enumerate(self.spec.classes)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the one model file ``geodetect detect`` reads (safetensors + metadata)."""
        return save_model(self.model, self.spec, path, overwrite=overwrite)

    def loaded(self) -> LoadedModel:
        """This model as the detection pipeline takes it."""
        return LoadedModel(self.model, self.spec, "unsaved", Path("-"))


def detect_objects(
    model: RetinaNet | LoadedModel | str | os.PathLike,
    rasters: Any,
    *,
    threshold: float | None = None,
    **options: Any,
) -> gpd.GeoDataFrame:
    """Detect objects over rasters/mosaics; returns the same layer ``geodetect detect``
    writes, as a GeoDataFrame (try ``gdf.explore()`` for a web map).

    Args:
        model: a :class:`RetinaNet`, a model file path, or a loaded model.
        rasters: path, glob, folder, or a list of them.
        threshold: minimum score (default: the model's).
        **options: anything :func:`geodetect.detect.detect` takes (``chip_size``,
            ``overlap``, ``nms_iou``, ``bands``, ``device``, ``batch_size``...).

    Example:
        >>> gdf = detect_objects(model, "mosaic/*.tif", threshold=0.5)  # doctest: +SKIP
        >>> gdf.to_file("pools.gpkg")                                   # doctest: +SKIP
    """
    if isinstance(model, RetinaNet):
        options.setdefault("device", str(model.device))
        model = model.loaded()
    inputs = [rasters] if isinstance(rasters, str | os.PathLike) else list(rasters)
    return detect(inputs, model, threshold=threshold, **options)


def _show(fig: Figure) -> None:
    """Display a figure in Jupyter (no-op elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(fig)
