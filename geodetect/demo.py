"""The end-to-end demo: synthesise a suburb, train, detect over a separate mosaic,
evaluate, and write the layers, metrics and a quick-look picture."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd

from geodetect.detect import detect
from geodetect.evaluate import EvaluationResult, evaluate
from geodetect.io.export import write_layer
from geodetect.io.labels import LabelSource
from geodetect.plots import plot_detections
from geodetect.synth import synth_scene
from geodetect.train import train

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """Paths the demo wrote and the held-out scores."""

    out_dir: Path
    model_path: Path
    layers: list[Path]
    quicklook: Path
    metrics: EvaluationResult
    minutes: float


def run_demo(
    out_dir: str | os.PathLike = "demo_output",
    *,
    train_minutes: float = 4.0,
    train_size: int = 2500,
    test_size: int = 2000,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = True,
    progress: bool = True,
) -> DemoResult:
    """Run the whole workflow on synthetic data (no download, a 2-core laptop is enough).

    The training scene and the 2×2-file test mosaic come from different seeds and
    places, so the scores are on imagery the model never saw. Training starts as
    ``geodetect train`` does, from the synthetic starting model, which a machine's first
    run builds and caches (:mod:`geodetect.train.start`): after the demo, training on
    your own imagery starts from it at once.
    """
    with _steps_only():
        return _run(
            out_dir, train_minutes, train_size, test_size, seed, device, overwrite, progress
        )


@contextmanager
def _steps_only():
    """At the default verbosity the demo says its five steps and warnings, not every
    module's lines (``-v`` shows them all)."""
    package = logging.getLogger("geodetect")
    level = package.getEffectiveLevel()
    if level < logging.INFO:
        yield
        return
    before = package.level, log.level
    log.setLevel(level)
    package.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        package.setLevel(before[0])
        log.setLevel(before[1])


def _run(out_dir, train_minutes, train_size, test_size, seed, device, overwrite, progress):
    start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("1/5 synthesising a training scene and a separate 2x2-file test mosaic")
    train_scene = synth_scene(
        out / "train",
        seed=seed + 101,
        size=(train_size, train_size),
        overwrite=overwrite,
        compress="deflate",
    )
    test_scene = synth_scene(
        out / "mosaic",
        seed=seed + 202,
        size=(test_size, test_size),
        tiles=2,
        origin=(420000.0, 3100000.0),
        overwrite=overwrite,
        compress="jpeg",
    )
    log.info("2/5 training for at most %.1f minutes", train_minutes)
    model_path = out / "pools.model"
    trained = train(
        LabelSource.of(train_scene.image_paths, train_scene.truth_path),
        model_path,
        max_minutes=train_minutes,
        device=device,
        overwrite=True,
        seed=seed,
        progress=progress,
    )
    log.info("%s", trained.summary())
    log.info("3/5 detecting over the test mosaic")
    layer = detect(test_scene.image_paths, model_path, device=device, progress=progress)
    layers = []
    for name in ("pools.gpkg", "pools.geojson"):
        layers.append(write_layer(layer, out / name, overwrite=True))
    log.info("4/5 evaluating against the mosaic's ground truth")
    truth = gpd.read_file(test_scene.truth_path, layer="pools")
    metrics = evaluate(layer, truth)
    (out / "metrics.json").write_text(json.dumps(metrics.to_dict(), indent=2) + "\n")
    log.info("5/5 drawing the quick look")
    quicklook = out / "quicklook.png"
    plot_detections(
        test_scene.image_paths,
        layer,
        truth=truth,
        result=metrics,
        title=f"AP50 {metrics.ap50:.3f} - green: found, red: false alarm, orange: missed",
        path=quicklook,
    )
    return DemoResult(out, model_path, layers, quicklook, metrics, (time.monotonic() - start) / 60)
