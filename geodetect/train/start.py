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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartRecipe:
    """How the synthetic starting model of one architecture is made.

    Attributes:
        backbone, preset: the architecture it starts (see :class:`ModelSpec`).
        steps: seeded training steps of ``batch_size`` chips (not minutes: the same
            start on any machine).
        seed: seed of the suburb and of training.
        size: the suburb's edge in pixels, at ``gsd`` metres.
        hard_examples: mine the suburb for the model's false alarms and train on them.
        confusers: draw the suburb's sports courts and solar panels.
        version: bumped when the recipe's code changes, so an old file is not reused.

    Version 3 draws the suburb with the confusers of real pool layers (tennis and
    basketball courts, solar panels; ``synth --confusers``) and is otherwise version 2's
    recipe. On São Paulo's ``val/``, 800 real steps from it (``benchmarks/README.md``,
    EPYC-AVX2, 2026-12-08, one run each) gave 31 false alarms on background against 42
    from version 2's start, precision 0.850 against 0.819, AP50 0.756 against 0.749 and
    F1 0.814 against 0.807 (AP75 0.565 against 0.580, recall 0.780 against 0.796).

    A cheaper recipe was measured and not kept (``benchmarks/README.md``, EPYC-AVX2,
    2026-12-07): 1,200 steps of 4 chips with the confusers and mining built in 7.2
    minutes against about 17, but 800 real steps from it scored AP50 0.641, AP75 0.310,
    F1 0.731 against 0.749, 0.580, 0.807 from version 2's start: the start's worth is its
    length.
    """

    backbone: str = "resnet18"
    preset: str = "lite"
    steps: int = 2000
    batch_size: int = 8
    seed: int = 11
    size: int = 3000
    gsd: float = 0.2
    hard_examples: bool = False
    confusers: bool = True
    version: int = 3

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

    def cost(self, device: str = "auto") -> str:
        """What building it costs here, in words: the recipe's steps at this machine's
        own rate, measured now on a few training steps of the recipe's network (see
        :func:`step_seconds`), plus drawing the suburb."""
        seconds = step_seconds(self, device=device)
        minutes = max(1, round(self.steps * seconds / 60 + DRAW_MINUTES))
        return (
            f"about {minutes} minute{'s' if minutes > 1 else ''} here: {seconds:.2f} s a "
            "step, measured now"
        )


#: The recipe of every synthetic start (for each backbone and preset).
START_RECIPE = StartRecipe()
# Drawing the recipe's suburb and reading it, beside the steps (about half a minute on
# the 2-core CPUs of benchmarks/README.md: small against the steps, so not measured).
DRAW_MINUTES = 0.5
# The recipe's training chips: the suburb's pools are small, so the smallest chip.
_START_CHIP = 128


def step_seconds(recipe: StartRecipe, *, device: str = "auto", steps: int = 3) -> float:
    """Seconds one training step of the recipe's network takes on ``device``: a few
    steps of a fresh network on random chips, after one to warm up (a few seconds)."""
    import time

    from geodetect.model import ModelSpec, build_retinanet, resolve_device
    from geodetect.model.spec import preset_widths

    where = resolve_device(device)
    channels, depth = preset_widths(recipe.preset)
    spec = ModelSpec(
        classes=["pool"],
        band_mean=[0.0] * 3,
        band_std=[1.0] * 3,
        chip_size=_START_CHIP,
        backbone=recipe.backbone,
        preset=recipe.preset,
        fpn_channels=channels,
        head_convs=depth,
    )
    generator = torch.Generator().manual_seed(0)
    model = build_retinanet(spec, pretrained="none").to(where).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn((recipe.batch_size, 3, _START_CHIP, _START_CHIP), generator=generator).to(
        where
    )
    box = torch.tensor([[20.0, 20.0, 60.0, 52.0]], device=where)
    targets = [{"boxes": box, "labels": torch.zeros(1, dtype=torch.int64, device=where)}]
    targets = targets * recipe.batch_size
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        losses = model(list(images), targets)
        optimiser.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimiser.step()
        if where.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up allocators and kernels
            elapsed += time.perf_counter() - started
    return elapsed / steps


def start_recipe(backbone: str = "resnet18", preset: str = "lite") -> StartRecipe:
    """The synthetic start's recipe for ``backbone``/``preset``."""
    return dataclasses.replace(START_RECIPE, backbone=backbone, preset=preset)


def synthetic_start_path(backbone: str = "resnet18", preset: str = "lite") -> Path:
    """Where the synthetic starting model of ``backbone``/``preset`` is kept."""
    return start_recipe(backbone, preset).path
