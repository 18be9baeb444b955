"""Fixtures that write small real GeoTIFFs, and an oracle detector that finds painted
rectangles in whatever chip it is given (so seams and georeferencing are tested
without a trained network)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from hypothesis import settings
from rasterio.features import shapes

from geodetect.model import LoadedModel, ModelSpec

SHARED_RASTERS = Path(__file__).resolve().parents[2] / "shared" / "rasters"

# Hypothesis draws the same examples on every run (`make test`, which CI runs, included):
# a failure is reproducible and the suite never fails on one run and passes on the next.
# Tests' own @settings still set their example counts; `--hypothesis-profile` or
# HYPOTHESIS_PROFILE=random-search (a random search, e.g. when fuzzing harder) override it.
settings.register_profile("geodetect", derandomize=True, print_blob=True)
settings.register_profile("random-search", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "geodetect"))


@pytest.fixture(autouse=True)
def _environment_given_back():
    """Each test leaves os.environ as it found it (a LocalCluster a test starts itself
    sets OMP_NUM_THREADS=1 here, and every CLI run after it would use one thread)."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """The suite never reads or fills the user's caches: ImageNet weights or a synthetic
    starting model in torch's cache would change what `train` starts from, and exported
    ONNX networks would pile up in ~/.cache/geodetect. Child processes inherit both."""
    root = tmp_path_factory.mktemp("caches")
    patch = pytest.MonkeyPatch()
    patch.setenv("TORCH_HOME", str(root / "torch"))
    patch.setenv("GEODETECT_CACHE", str(root / "geodetect"))
    # `train` would export, quantise and time each toy model for `detect` (tested on
    # its own in test_onnx.py).
    patch.setenv("GEODETECT_PREPARE_DETECT", "0")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(root / "torch" / "hub"))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)
        patch.undo()


@pytest.fixture
def shared_rasters() -> Path:
    if not SHARED_RASTERS.is_dir():
        pytest.skip("../shared/rasters is not present")
    return SHARED_RASTERS


def write_geotiff(path, data, *, transform, crs="EPSG:32617", nodata=None, **profile):
    """Write a [C, H, W] array as a tiled GeoTIFF."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    meta = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if data.shape[1] >= 16 and data.shape[2] >= 16:
        meta.update(tiled=True, blockxsize=16, blockysize=16)
    meta.update(profile)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return Path(path)


def paint_boxes(height, width, boxes, *, value=255, bands=3, dtype=np.uint8):
    """An image of zeros with filled rectangles; boxes are pixel-edge xyxy integers."""
    img = np.full((bands, height, width), 20, dtype=dtype)
    for x1, y1, x2, y2 in boxes:
        img[:, y1:y2, x1:x2] = value
    return img


def random_boxes(rng, height, width, n, *, min_size=6, max_size=30, gap=3):
    """Non-touching integer boxes inside the scene."""
    boxes, taken = [], np.zeros((height, width), dtype=bool)
    for _ in range(n * 20):
        if len(boxes) == n:
            break
        w, h = rng.integers(min_size, max_size + 1, size=2)
        x1 = int(rng.integers(0, width - w + 1))
        y1 = int(rng.integers(0, height - h + 1))
        y0, y3 = max(0, y1 - gap), min(height, y1 + h + gap)
        x0, x3 = max(0, x1 - gap), min(width, x1 + w + gap)
        if taken[y0:y3, x0:x3].any():
            continue
        taken[y1 : y1 + h, x1 : x1 + w] = True
        boxes.append((x1, y1, x1 + w, y1 + h))
    return np.array(boxes, dtype=np.int64)


class OracleDetector(torch.nn.Module):
    """Returns the bounding box of every bright blob in each chip (score 0.9).

    Blobs cut by the chip edge come back cut, exactly as a real detector would see them.
    """

    score_thresh = 0.5
    nms_thresh = 0.5

    def forward(self, batch):
        results = []
        for chip in batch:
            mask = (chip[0] > 128).cpu().numpy().astype(np.uint8)
            boxes = []
            for geom, _value in shapes(mask, mask=mask.astype(bool), connectivity=4):
                xs = [p[0] for ring in geom["coordinates"] for p in ring]
                ys = [p[1] for ring in geom["coordinates"] for p in ring]
                boxes.append((min(xs), min(ys), max(xs), max(ys)))
            t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            results.append(
                {
                    "boxes": t,
                    "scores": torch.full((len(t),), 0.9),
                    "labels": torch.zeros(len(t), dtype=torch.int64),
                }
            )
        return results


def make_oracle(**spec_fields) -> LoadedModel:
    """The oracle detector as a loaded model; ``spec_fields`` change its spec (unit
    scaling, 64 px chips, largest object 30 px by default)."""
    fields = dict(
        classes=["pool"], band_mean=[0.0] * 3, band_std=[1.0] * 3, chip_size=64, max_object_px=30
    )
    spec = ModelSpec(**(fields | spec_fields))
    return LoadedModel(model=OracleDetector(), spec=spec, model_id="oracle", path=Path("-"))


@pytest.fixture
def oracle() -> LoadedModel:
    return make_oracle()


def make_tiny_spec(**changes) -> ModelSpec:
    """The smallest useful RetinaNet description (64 px chips, 32-channel FPN)."""
    fields = dict(
        classes=["pool"],
        band_mean=[100.0] * 3,
        band_std=[50.0] * 3,
        chip_size=64,
        fpn_channels=32,
        head_convs=1,
        gsd=0.3,
    )
    return ModelSpec(**(fields | changes))


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return make_tiny_spec()


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """An untrained tiny RetinaNet's model file: its boxes are arbitrary but exactly
    reproducible, for tests of everything but accuracy. Its scores sit near the head's
    prior, 0.01-0.017; its threshold keeps the top of them (with every candidate kept,
    box voting's pairwise work would be most of a test's time)."""
    from geodetect.model import build_retinanet, save_model

    torch.manual_seed(0)
    spec = make_tiny_spec(score_threshold=0.015)
    path = tmp_path_factory.mktemp("untrained") / "tiny.model"
    return save_model(build_retinanet(spec, pretrained="none"), spec, path)


NORTH_UP = Affine(0.3, 0, 500000.0, 0, -0.3, 3300000.0)


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    """torch's cache moved to tmp_path; yields its checkpoints folder (not yet created)."""
    hub = tmp_path / "torch" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(hub.parent))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    if torch.hub.get_dir() == str(hub):
        yield hub / "checkpoints"
        return
    previous = torch.hub.get_dir()  # torch.hub.set_dir() was called in this process
    torch.hub.set_dir(str(hub))
    try:
        yield hub / "checkpoints"
    finally:
        torch.hub.set_dir(previous)


SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
NOTEBOOKS = SAMPLE_DATA.parent / "notebooks"


class ExecutedNotebook(NamedTuple):
    work: Path  # the folder it ran in (its outputs are written below it)
    images: list  # its outputs' images


def run_notebook(path: Path, tmp_path: Path, *, demo_model: Path | None = None):
    """Execute a copy of the notebook in a kernel of this environment, in
    ``tmp_path/notebooks`` beside the sample data (and ``demo_model`` where `make demo`
    leaves its model); asserts no cell raised."""
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(path, work / path.name)
    (tmp_path / "sample_data").symlink_to(SAMPLE_DATA)
    if demo_model is not None:
        (tmp_path / "demo_output").mkdir()
        (tmp_path / "demo_output" / "pools.model").symlink_to(demo_model)
    nb = nbformat.read(work / path.name, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert errors == [], errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    return ExecutedNotebook(work, images)


@pytest.fixture(scope="session")
def swimming_notebook(tmp_path_factory) -> ExecutedNotebook:
    """notebooks/swimming_pools.ipynb executed once per session."""
    return run_notebook(NOTEBOOKS / "swimming_pools.ipynb", tmp_path_factory.mktemp("swimming"))


@pytest.fixture(scope="session")
def sample_model(swimming_notebook) -> Path:
    """The model the swimming-pool notebook trains: 300 seeded steps on sample_data/train
    from random weights, which is, weight for weight, what `geodetect train scene.tif
    --labels truth.gpkg --steps 300 --seed 0 --start none` makes (the synthetic start
    would cost CI minutes to build; test_training_real builds and uses a small one).
    Shared: test_trained_model scores it, the county notebook detects with it."""
    return swimming_notebook.work / "outputs" / "pools.model"


def events_of(stderr: str) -> tuple[list[dict], list[str]]:
    """A ``--progress json`` run's stderr: its JSON events, and its other lines."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines if ln.startswith("{")]
    return events, [ln for ln in lines if not ln.startswith("{")]


def run_cli(*args, cwd=None, prefix=(), env=None) -> subprocess.CompletedProcess:
    """``python -m geodetect ARGS`` as a user runs it (``prefix``: e.g. ``taskset``)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "geodetect", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def sigint_as_in_a_terminal() -> None:
    """A child's Ctrl-C as in a terminal (``preexec_fn``), wherever the suite runs: a
    shell starts background jobs with SIGINT ignored, and children inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# A progress line where stderr is not a terminal: "geodetect: detect: 30% (144/480 chips"
PROGRESS_LINE = re.compile(r"^geodetect: [\w ]+: (\d+% )?\(\d+(/\d+)? \w+s, ")


def assert_one_line_error(proc, *needles):
    """A non-zero exit with one ``geodetect: error:`` line holding ``needles`` (beside
    the progress lines of work done before it failed)."""
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not PROGRESS_LINE.match(ln)]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("geodetect: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


# Where every test must run (CI sets GEODETECT_CI=1 in .ci/run): a test that would skip
# (QGIS, GeoDeep or ../shared missing, one CPU) fails instead, so a broken install step
# cannot turn CI green by skipping what it was meant to check.
EVERY_TEST_RUNS = os.environ.get("GEODETECT_CI") == "1"


def _skip_fails(report) -> None:
    if EVERY_TEST_RUNS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where every test must run (GEODETECT_CI=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_fails(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped (``pytest.importorskip`` at its top) fails as well."""
    outcome = yield
    _skip_fails(outcome.get_result())
