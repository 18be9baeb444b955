"""Where a new model's weights start: a synthetic starting model built once per machine
from a fixed recipe (the default), ImageNet backbone weights, another model, or random
weights.

The synthetic start is a detector trained on a ``geodetect synth`` suburb for a fixed
number of seeded steps (:class:`StartRecipe`), so it does not depend on how fast or
busy the machine was, nor on what else is cached: ``train`` builds it the first time a
machine needs it (saying so and what it costs first; building it is itself a training
run, so it lives in :mod:`geodetect.train.run`), keeps it in torch's cache under a
name that spells the recipe, and reuses it from then on. This module holds the recipe
and its name only. Its file is written to a
temporary name and renamed, so an interrupted build leaves nothing to reuse and the next
run builds it again. Only floating point differs between machines (another CPU's or a
GPU's arithmetic, bf16 where the hardware has it): copying the file to another machine's
cache (``geodetect weights list`` shows where) gives it the very same start.

On real 0.2 m orthophotos a start is worth more than any other lever measured
(``benchmarks/start.py``, figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from geodetect.errors import InputError

log = logging.getLogger(__name__)

#: What a new model starts from: ``synthetic`` (the default), ``imagenet`` (torchvision's
#: backbone weights, which must be in torch's cache) or ``none`` (random weights).
STARTS = ("synthetic", "imagenet", "none")


@dataclass(frozen=True)
class StartRecipe:
    """How the synthetic starting model of one architecture is made.

    Attributes:
        backbone, preset: the architecture it starts (see :class:`ModelSpec`).
        steps: seeded training steps of ``batch_size`` chips (not minutes: the same
            start on any machine).
        seed: seed of the suburb and of training.
        size: the suburb's edge in pixels, at ``gsd`` metres.
        version: bumped when the recipe's code changes, so an old file is not reused.
    """

    backbone: str = "resnet18"
    preset: str = "lite"
    steps: int = 2000
    batch_size: int = 8
    seed: int = 11
    size: int = 3000
    gsd: float = 0.2
    version: int = 2

    @property
    def name(self) -> str:
        return (
            f"geodetect-start-v{self.version}-{self.backbone}-{self.preset}-"
            f"{self.steps}steps-seed{self.seed}"
        )

    @property
    def path(self) -> Path:
        """Its file in torch's cache: ``$TORCH_HOME/hub/checkpoints/<name>.model``."""
        return Path(torch.hub.get_dir()) / "checkpoints" / f"{self.name}.model"

    def cost(self) -> str:
        """What building it costs, in words: on the 2-core CPU of ``benchmarks/README.md``
        a recipe of 250 steps took 1.0 minute, suburb and all."""
        minutes = max(1, round(self.steps / 250))
        return f"about {minutes} minute{'s' if minutes > 1 else ''} on a 2-core CPU, less on a GPU"


#: The recipe of every synthetic start (for each backbone and preset).
START_RECIPE = StartRecipe()


def start_recipe(backbone: str = "resnet18", preset: str = "lite") -> StartRecipe:
    """The synthetic start's recipe for ``backbone``/``preset``."""
    return dataclasses.replace(START_RECIPE, backbone=backbone, preset=preset)


def synthetic_start_path(backbone: str = "resnet18", preset: str = "lite") -> Path:
    """Where the synthetic starting model of ``backbone``/``preset`` is kept."""
    return start_recipe(backbone, preset).path


def check_start(start: str) -> str:
    """``start`` as a name in :data:`STARTS` (``auto`` is ``synthetic``).

    Raises:
        InputError: an unknown name.
    """
    start = "synthetic" if start == "auto" else start
    if start not in STARTS:
        raise InputError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    return start
