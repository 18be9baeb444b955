"""Training a detector: labelled imagery -> chips split by area -> RetinaNet -> model file.

Rooms: :mod:`~geodetect.train.labelled` (labels on grids, a review added),
:mod:`~geodetect.train.sizes` (the training GSD, the IoUs read from the labels),
:mod:`~geodetect.train.split` (training and validation areas),
:mod:`~geodetect.train.chips` (chip sampling), :mod:`~geodetect.train.data` (labels to
chip sets), :mod:`~geodetect.train.augment`, :mod:`~geodetect.train.start` (the
synthetic start's recipe), :mod:`~geodetect.train.spec` (the spec a run begins and
finishes), :mod:`~geodetect.train.fit` (fitting), :mod:`~geodetect.train.score`
(matching, F1, the score threshold) and :mod:`~geodetect.train.run` (the training run
that joins them).
"""

from geodetect.train.augment import NO_AUGMENTATION, Augmentation
from geodetect.train.chips import ChipSet, band_statistics
from geodetect.train.data import TrainingData, prepare_training_data
from geodetect.train.fit import (
    EpochStats,
    FitResult,
    LRFinderResult,
    TrainingError,
    fit,
    lr_find,
    one_cycle_lr,
    selection_score,
)
from geodetect.train.labelled import LabelledData, load_labelled
from geodetect.train.run import TrainResult, train
from geodetect.train.score import evaluate_chips
from geodetect.train.spec import default_chip_size
from geodetect.train.split import SplitMap, plan_split

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
