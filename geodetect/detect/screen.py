"""The screen: a cheap look at each chip before the detector, so that land where the
network finds nothing (fields, forest, water) costs a fraction of a full pass.

A chip is shrunk by :attr:`Screen.factor` (area mean) and run through the same network
and runtime; where no candidate scores above :attr:`Screen.threshold` there, the chip is
skipped, otherwise it goes through the full pass as it would without a screen. The
screen never changes a detection of a chip it lets through, so what it can cost is the
objects of skipped chips, and that is measured (``benchmarks/county_like.py``), not
assumed.

At factor 2 the screen reads a quarter of the pixels, so it pays where fewer than three
chips in four hold a candidate; dense suburbs (most chips hold one) would pay a quarter
more for nothing. ``--screen auto`` therefore looks at a sample of the run's own chips
(:func:`choose_screen`) and screens only where that sample says enough of them would be
skipped; the decision is a function of the inputs and the model, so a resumed run makes
the same one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from geodetect.model.runtime import Decoding, Runtime

log = logging.getLogger(__name__)

#: The screen's threshold as a share of the layer's: a candidate at half resolution
#: scoring above it sends the chip to the full pass (see benchmarks/README.md for the
#: recall this costs at each share).
SCREEN_SHARE = 0.15
SCREEN_FACTOR = 2
#: ``auto`` screens when at most this share of the sampled chips would pass: a screen at
#: factor 2 costs about a quarter of a full pass, so this saves at least 15 %.
SCREEN_MAX_PASS = 0.6
#: Chips ``auto`` samples, and the fewest a run needs before ``auto`` samples at all.
SCREEN_SAMPLE = 32
SCREEN_MIN_CHIPS = 128


@dataclass(frozen=True)
class Screen:
    """Skip chips whose ``1/factor`` shrunk view holds no candidate above ``threshold``."""

    factor: int = SCREEN_FACTOR
    threshold: float = 0.05

    def __post_init__(self) -> None:
        if self.factor < 2:
            raise ValueError(f"screen factor {self.factor}: at least 2")

    def shrink(self, normed: torch.Tensor) -> torch.Tensor:
        """Normalised chips [N, C, H, W] at 1/factor, padded (with the bands' mean) to
        sides the network takes (multiples of 32)."""
        small = F.avg_pool2d(normed, self.factor, ceil_mode=True)
        h, w = small.shape[-2:]
        return F.pad(small, (0, (-w) % 32, 0, (-h) % 32))

    def passes(self, runtime: Runtime, normed: torch.Tensor) -> torch.Tensor:
        """BoolTensor[N] (on the host): which chips go on to the full pass."""
        if len(normed) == 0:
            return torch.zeros(0, dtype=torch.bool)
        decoding = Decoding(score_thresh=self.threshold, nms_iou=0.5, detections_per_img=1)
        found = runtime.detect(self.shrink(normed), decoding)
        return torch.tensor([len(f["scores"]) > 0 for f in found], dtype=torch.bool)


def screen_for(threshold: float) -> Screen:
    """The screen of a layer cut at ``threshold``."""
    return Screen(threshold=round(SCREEN_SHARE * threshold, 4))


def choose_screen(
    mode: str, runtime, layer_threshold: float, chips_total: int, sample
) -> Screen | None:
    """The run's screen: ``on`` always, ``off`` never, ``auto`` where a sample of the
    run's chips (``sample()``: normalised chips [N, C, S, S]) through the run's runtime
    (``runtime()``; both made only when needed) says at most :data:`SCREEN_MAX_PASS`
    of them would pass, and the run has at least :data:`SCREEN_MIN_CHIPS` chips."""
    screen = screen_for(layer_threshold)
    if mode == "off":
        return None
    if mode == "on":
        log.info(
            "screen: on (asked): chips with nothing scoring %.3g at 1/%d resolution are skipped",
            screen.threshold,
            screen.factor,
        )
        return screen
    if chips_total < SCREEN_MIN_CHIPS:
        log.debug("screen: off for a run of %d chips", chips_total)
        return None
    chips = sample()
    with torch.inference_mode():
        share = float(np.mean(screen.passes(runtime(), chips).numpy()))
    if share > SCREEN_MAX_PASS:
        log.info(
            "screen: off (%.0f%% of %d sampled chips hold a candidate at 1/%d resolution; "
            "it pays below %.0f%%)",
            100 * share,
            len(chips),
            screen.factor,
            100 * SCREEN_MAX_PASS,
        )
        return None
    log.info(
        "screen: on (%.0f%% of %d sampled chips hold a candidate at 1/%d resolution): chips "
        "with nothing scoring %.3g there are skipped (--screen off runs every chip)",
        100 * share,
        len(chips),
        screen.factor,
        screen.threshold,
    )
    return screen
