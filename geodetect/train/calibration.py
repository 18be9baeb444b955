"""The chips a model file keeps to calibrate an int8 version of its network: windows of
the validation area (what detection meets: mostly background, some objects), else
validation or training chips, as read (in the imagery's dtype)."""

from __future__ import annotations

import numpy as np
import torch

from geodetect.train.data import ChipSet, TrainingData

#: Windows kept: enough for stable MinMax ranges of the activations, few enough to
#: weigh a few MB in the model file (16 x 3 x 256 x 256 bytes = 3 MB).
CALIBRATION_WINDOWS = 16


def calibration_chips(
    data: TrainingData, area: ChipSet | None = None, *, count: int = CALIBRATION_WINDOWS
) -> torch.Tensor | None:
    """Up to ``count`` chips spread evenly over the validation ``area``'s windows (see
    :meth:`TrainingData.val_area`; else, where those are fewer, the validation chips,
    else the training chips),
    un-normalised back to the imagery's values and dtype: Tensor[N, C, S, S]; None
    without any."""
    sources = [c for c in (area, data.val, data.train) if c is not None and len(c)]
    if not sources:
        return None
    # The first that holds enough (a small validation area has few windows), else the
    # largest.
    chips = next((c for c in sources if len(c) >= count), max(sources, key=len))
    picks = np.linspace(0, len(chips) - 1, min(count, len(chips))).round().astype(int)
    mean = torch.tensor(data.band_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data.band_std, dtype=torch.float32).view(-1, 1, 1)
    raw = torch.stack([chips[int(i)][0] * std + mean for i in dict.fromkeys(picks)])
    dtype = np.dtype(data.labelled.input_dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        raw = raw.round().clamp(info.min, info.max)
    return torch.from_numpy(raw.numpy().astype(dtype))
