"""The chips a model file keeps to calibrate an int8 version of its network: windows of
the validation area (what detection meets), half of them holding objects, else
validation or training chips, as read (in the imagery's dtype).

The objects matter: int8 activations are clipped to the ranges the calibration chips
show, and windows of background alone never show how strongly the last layers answer an
object. On an 8-minute São Paulo model calibrated that way, int8 scored boxes that fp32
scored 0.8-0.9 about 0.08 lower, and the layer cut at the model's threshold of 0.6 had
recall 0.63 against fp32's 0.73; calibrated on chips holding pools, 0.72.
"""

from __future__ import annotations

import numpy as np
import torch

from geodetect.train.chips import ChipSet
from geodetect.train.data import TrainingData

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
    images = _with_objects(chips, count) if chips is area else None
    if images is None:
        picks = np.linspace(0, len(chips) - 1, min(count, len(chips))).round().astype(int)
        images = [chips[int(i)][0] for i in dict.fromkeys(picks)]
    mean = torch.tensor(data.band_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data.band_std, dtype=torch.float32).view(-1, 1, 1)
    raw = torch.stack([image * std + mean for image in images])
    dtype = np.dtype(data.labelled.input_dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        raw = raw.round().clamp(info.min, info.max)
    return torch.from_numpy(raw.numpy().astype(dtype))


def _with_objects(windows: ChipSet, count: int, *, reads: int = 25) -> list | None:
    """``count`` windows, half of them holding an object where that many are found in
    ``reads`` x ``count`` windows visited evenly over the area, the rest without; None
    where the area holds too few windows."""
    n = len(windows)
    if n < count:
        return None
    step = max(1, n // (reads * count))
    # Every step-th window from each of `step` starting points: spread over the area.
    order = [i for start in range(step) for i in range(start, n, step)][: reads * count]
    held, empty = [], []
    for i in order:
        image, target = windows[i]
        (held if len(target["boxes"]) else empty).append(image)
        if len(held) >= count // 2 and len(held) + len(empty) >= count:
            break
    held = held[: count // 2]
    return held + empty[: count - len(held)]
