"""Library warnings reach the user as geodetect log lines, each once, never as
`file.py:123: UserWarning:` lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
import torch

from geodetect.cli import _warnings_to_log
from geodetect.model import build_retinanet, save_model

from conftest import paint_boxes

RAW = ("UserWarning", "NotGeoreferencedWarning", "warnings.warn", ".py:")


@pytest.fixture
def warnings_log(caplog):
    """Records of ``geodetect.warnings`` whatever an in-process CLI run did to the
    ``geodetect`` logger (it stops propagation to the root, where caplog listens)."""
    logger = logging.getLogger("geodetect.warnings")
    logger.addHandler(caplog.handler)
    logger.propagate = False  # caplog.handler also listens at the root
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _library_code(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=1)


def test_unknown_warning_said_once_expected_ones_at_debug(warnings_log):
    logging.getLogger("geodetect.warnings").setLevel(logging.INFO)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # Python itself would show each once per line
        with _warnings_to_log():
            for _ in range(3):
                _library_code("something odd happened\nsecond line")
            _library_code("Encountered more than 100 detections in a single image. Fine.")
    assert warnings.showwarning is before
    said = [(r.levelno, r.getMessage()) for r in warnings_log.records]
    assert said == [(logging.WARNING, "something odd happened (from test_cli_warnings)")]


def test_debug_shows_every_warning_with_its_origin(warnings_log):
    logging.getLogger("geodetect.warnings").setLevel(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with _warnings_to_log():
            for _ in range(2):
                _library_code("something odd happened")
            _library_code("This DataLoader will create 16 worker processes in total. ...")
    said = [(r.levelno, r.getMessage()) for r in warnings_log.records]
    assert [level for level, _ in said] == [logging.WARNING] * 2 + [logging.DEBUG]
    assert "UserWarning from " in said[0][1] and "test_cli_warnings.py" in said[0][1]
    assert said[2][1].startswith("16 reader processes, more than torch suggests")


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "geodetect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_real_rasterio_and_pyogrio_warnings_in_geodetect_words(tmp_path, tiny_spec):
    # No transform and no CRS: rasterio warns NotGeoreferencedWarning on open, pyogrio
    # "'crs' was not provided" on write.
    with rasterio.open(
        tmp_path / "plain.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8"
    ) as dst:
        dst.write(paint_boxes(64, 64, [(10, 10, 30, 30)]).astype(np.uint8))
    torch.manual_seed(0)
    model = save_model(build_retinanet(tiny_spec, pretrained="none"), tiny_spec, tmp_path / "m")
    args = ["detect", tmp_path / "plain.tif", "--model", model, "--allow-no-crs"]
    args += ["--chip-size", "64", "--overwrite"]  # default reader processes
    args += ["--out", tmp_path / "pools.gpkg"]

    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    assert not any(raw in proc.stderr for raw in RAW), proc.stderr
    assert proc.stderr.count("geodetect: WARNING: the layer is written without a CRS") == 1

    quiet = _run(*args, "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
