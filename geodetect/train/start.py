"""A starting model trained on ``geodetect synth`` suburbs: what geodetect offers where
no ImageNet weights are at hand. Built once per machine by a command (it is too large to
ship), kept in torch's cache beside the ImageNet files, and used by ``train`` to start
new models when no ImageNet weights are cached.

``geodetect demo`` leaves its own model here when none is cached
(:func:`keep_as_synthetic_start`). On real 0.2 m false-colour orthophotos
(``benchmarks/real.py``, 8-minute CPU budget, same code) models started from the demo's
model ranked the validation sheets' pools with AP50 0.875-0.888 (every detection),
against 0.858 from scratch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from geodetect.errors import OutputError

log = logging.getLogger(__name__)

# The synthetic suburb the start is trained on: pools at about the pixel size users have.
SYNTH_SIZE = 3000
SYNTH_GSD = 0.2
SYNTH_SEED = 11


def synthetic_start_path(backbone: str = "resnet18", preset: str = "lite") -> Path:
    """Where the synthetic starting model for ``backbone``/``preset`` is kept:
    ``$TORCH_HOME/hub/checkpoints/geodetect-synth-<backbone>-<preset>.model``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"geodetect-synth-{backbone}-{preset}.model"


def build_synthetic_start(
    *,
    backbone: str = "resnet18",
    preset: str = "lite",
    minutes: float = 8.0,
    size: int = SYNTH_SIZE,
    seed: int = SYNTH_SEED,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Draw a synthetic suburb, train a ``backbone``/``preset`` detector on it for
    ``minutes`` and put the model in the cache (see :func:`synthetic_start_path`).

    Raises:
        OutputError: a starting model is already cached (without ``overwrite``).
    """
    from geodetect.synth import synth_scene
    from geodetect.train.loop import train

    target = synthetic_start_path(backbone, preset)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:  # before minutes of drawing and training
        raise OutputError(
            f"{target}: a synthetic starting model is already there (`geodetect demo` "
            "leaves its model there too); pass --overwrite to build it again"
        )
    with tempfile.TemporaryDirectory(prefix="geodetect-synth-") as tmp:
        scene = synth_scene(
            Path(tmp) / "scene", seed=seed, size=(size, size), gsd=SYNTH_GSD, compress="jpeg"
        )
        # save_model writes the model file atomically (temporary file, then rename).
        train(
            scene.image_paths,
            scene.truth_path,
            target,
            backbone=backbone,
            preset=preset,
            max_minutes=minutes,
            device=device,
            pretrained="imagenet_if_cached",
            overwrite=overwrite,
            progress=progress,
        )
    log.info("synthetic starting model written to %s", target)
    return target


def keep_as_synthetic_start(model_path: str | os.PathLike) -> Path | None:
    """Put a model trained on a synthetic suburb (e.g. the demo's) in the cache as the
    synthetic starting model for its backbone and preset, unless one is already there.

    Returns:
        Where it was put, or None when a starting model was already cached (it is kept:
        ``geodetect weights synth --overwrite`` replaces it) or the cache is not writable.
    """
    from geodetect.model import load_model
    from geodetect.model.weights import copy_atomically

    spec = load_model(model_path).spec
    target = synthetic_start_path(spec.backbone, spec.preset)
    if target.exists():
        return None
    try:
        copy_atomically(Path(model_path), target)
    except OSError as exc:
        log.warning("could not keep %s as a starting model in %s: %s", model_path, target, exc)
        return None
    return target
