"""Training a detector: labelled imagery -> chips split by area -> RetinaNet -> model file."""

from geodetect.train.augment import NO_AUGMENTATION, Augmentation
from geodetect.train.data import (
    ChipSet,
    LabelledData,
    SplitMap,
    TrainingData,
    band_statistics,
    load_labelled,
    plan_split,
    prepare_training_data,
)
from geodetect.train.loop import (
    EpochStats,
    FitResult,
    LRFinderResult,
    TrainingError,
    TrainResult,
    default_chip_size,
    evaluate_chips,
    fit,
    lr_find,
    one_cycle_lr,
    selection_score,
    train,
)

__all__ = [
    "NO_AUGMENTATION",
    "Augmentation",
    "ChipSet",
    "EpochStats",
    "FitResult",
    "LRFinderResult",
    "LabelledData",
    "SplitMap",
    "TrainResult",
    "TrainingData",
    "TrainingError",
    "band_statistics",
    "default_chip_size",
    "evaluate_chips",
    "fit",
    "load_labelled",
    "lr_find",
    "one_cycle_lr",
    "plan_split",
    "prepare_training_data",
    "selection_score",
    "train",
]
