"""Training data: labelled grids split by area into a training and a validation chip
set, with the band statistics that normalise them (:class:`TrainingData`,
:func:`prepare_training_data`). It joins the rooms below it: the labelled imagery
(:mod:`~geodetect.train.labelled`), its pixel sizes (:mod:`~geodetect.train.sizes`),
the area split (:mod:`~geodetect.train.split`) and the chips
(:mod:`~geodetect.train.chips`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from geodetect.errors import LabelError
from geodetect.train.augment import Augmentation
from geodetect.train.chips import _FIT, ChipSet, area_windows, band_statistics
from geodetect.train.labelled import LabelledData
from geodetect.train.split import TRAIN, VAL, SplitMap, plan_split

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Everything the training loop needs: the two chip sets and the input contract."""

    train: ChipSet
    val: ChipSet | None
    labelled: LabelledData
    band_mean: list[float]
    band_std: list[float]
    splits: list[SplitMap] = field(default_factory=list)

    def val_area(self, *, max_windows: int | None = None) -> ChipSet | None:
        """Windows tiling the validation area (see :func:`area_windows`), twice the
        training chip a side but at most 512 px, for choosing the score threshold on what detection
        meets: mostly background. None without a validation area or for chip folders."""
        if self.val is None or self.labelled.ordered:
            return None
        size = min(512, 2 * self.train.chip_size)
        items = area_windows(self.labelled.grids, self.splits, VAL, size, max_windows=max_windows)
        if not items:
            return None
        windows = ChipSet(
            self.labelled.grids,
            self.splits,
            VAL,
            chip_size=size,
            min_visible=self.train.min_visible,
            fixed=True,
            items=items,
            cache=False,
        )
        windows.set_normalisation(self.band_mean, self.band_std)
        return windows

    @property
    def classes(self) -> list[str]:
        return self.labelled.classes


def prepare_training_data(
    labelled: LabelledData,
    *,
    chip_size: int,
    val_fraction: float = 0.2,
    augmentation: Augmentation | None = None,
    negative_ratio: float = 1 / 3,
    min_visible: float = 0.5,
    max_val_chips: int = 400,
    band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    seed: int = 0,
) -> TrainingData:
    """Split by area, plan the chip sets and measure band statistics.

    Args:
        band_stats: (mean, std) to use instead of measuring them (e.g. when resuming a
            model, whose inputs must keep their scaling).

    Raises:
        LabelError: no object can be placed in a training chip.
    """
    augmentation = Augmentation() if augmentation is None else augmentation
    splits = plan_split(
        labelled.grids,
        val_fraction=val_fraction,
        chip_size=chip_size,
        seed=seed,
        ordered=labelled.ordered,
    )
    common = dict(
        chip_size=chip_size, negative_ratio=negative_ratio, min_visible=min_visible, seed=seed
    )
    train = ChipSet(labelled.grids, splits, TRAIN, augmentation=augmentation, **common)
    if train.num_positive == 0:
        raise LabelError(
            "no labelled object fits in a training chip; use a larger "
            "--chip-size or a smaller --val-fraction"
        )
    has_val = any((s.parts == VAL).any() for s in splits)
    val = (
        ChipSet(labelled.grids, splits, VAL, fixed=True, max_items=max_val_chips, **common)
        if has_val
        else None
    )
    if val is not None and val.num_positive == 0:
        log.warning("no validation chip holds an object; training without validation")
        val = None
    if band_stats is None:
        band_mean, band_std = band_statistics(train)
    else:
        band_mean, band_std = [float(v) for v in band_stats[0]], [float(v) for v in band_stats[1]]
    for chips in (train, val):
        if chips is not None:
            chips.set_normalisation(band_mean, band_std)
    sides = labelled.object_sides_px()
    larger = int((_FIT * sides > chip_size).sum())
    if larger:
        log.info(
            "%d of %d objects are too large for a %d-pixel chip; they are learnt whole "
            "from larger windows shrunk to the chip",
            larger,
            len(sides),
            chip_size,
        )
    log.info(
        "training chips: %d with objects + %d without; validation chips: %s "
        "(%d objects, classes: %s)",
        train.num_positive,
        len(train) - train.num_positive,
        "none" if val is None else f"{val.num_positive} + {len(val) - val.num_positive}",
        labelled.num_objects,
        ", ".join(labelled.classes),
    )
    return TrainingData(train, val, labelled, band_mean, band_std, splits)
