"""The command line as a user meets it: one-line errors, no tracebacks, no stray files."""

from __future__ import annotations

import json
import os
import re
import shutil

import geopandas as gpd
import numpy as np
import pytest
import torch

from geodetect.model import build_retinanet, save_model

from conftest import NORTH_UP, assert_one_line_error, paint_boxes, run_cli, write_geotiff

run = run_cli


@pytest.fixture
def model_file(tmp_path, tiny_spec):
    torch.manual_seed(0)
    model = build_retinanet(tiny_spec, pretrained="none")
    return save_model(model, tiny_spec, tmp_path / "tiny.model")


@pytest.fixture
def scene(tmp_path):
    image = paint_boxes(96, 96, [(10, 10, 30, 30)])
    image[1] += np.arange(96, dtype=np.uint8)[None, :]
    return write_geotiff(tmp_path / "scene.tif", image, transform=NORTH_UP)


def test_detect_writes_layer_and_keeps_existing_without_overwrite(tmp_path, model_file, scene):
    out = tmp_path / "out.gpkg"
    proc = run(
        "detect",
        scene,
        "--model",
        model_file,
        "--out",
        out,
        "--threshold",
        "0.001",
        "-q",
        "--workers",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: no progress bar, no log
    first = gpd.read_file(out)
    assert first.crs.to_epsg() == 32617 and len(first) > 0
    before = out.read_bytes()
    proc = run("detect", scene, "--model", model_file, "--out", out, "-q")
    assert_one_line_error(proc, str(out), "--overwrite")
    assert out.read_bytes() == before
    proc = run(
        "detect",
        scene,
        "--model",
        model_file,
        "--out",
        out,
        "--overwrite",
        "-q",
        "--threshold",
        "0.9",
        "--workers",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(gpd.read_file(out)) < len(first)


def test_detect_to_stdout_is_geojson(tmp_path, model_file, scene):
    proc = run(
        "detect",
        scene,
        "--model",
        model_file,
        "--out",
        "-",
        "--threshold",
        "0.001",
        "--workers",
        "0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) > 0
    lon, lat = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert -82 < lon < -80 and 29 < lat < 30  # UTM 17N near (500000, 3300000)
    # Progress goes to stderr, data to stdout: stderr is a pipe here, so progress comes
    # as plain lines (no bar), the last with the finished count of chips.
    assert re.search(r"^geodetect: detect: 100% \((\d+)/\1 chips", proc.stderr, re.M), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "tiny.model"]


def test_quiet_with_fewer_cpus_than_the_machine(tmp_path, model_file, scene):
    """A job pinned to some of the machine's CPUs (taskset, a cgroup cpuset, Slurm) with
    the default reader processes: -q prints nothing, and no more readers are started
    than the job has CPUs (torch would warn; geodetect says so at -vv)."""
    taskset = shutil.which("taskset")
    if taskset is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs taskset and CPU affinity")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: no smaller affinity to run with")
    one_cpu = (taskset, "-c", str(min(os.sched_getaffinity(0))))
    proc = run(
        "detect", scene, "--model", model_file, "--out", tmp_path / "q.gpkg", "-q", prefix=one_cpu
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    proc = run(
        "detect", scene, "--model", model_file, "--out", tmp_path / "v.gpkg", "-vv", prefix=one_cpu
    )
    assert proc.returncode == 0, proc.stderr
    assert "more than torch suggests" not in proc.stderr, proc.stderr
    assert "This DataLoader will create" not in proc.stderr, proc.stderr


def test_unknown_extension_and_missing_input(tmp_path, model_file, scene):
    assert_one_line_error(
        run("detect", scene, "--model", model_file, "--out", tmp_path / "x.kml"), "x.kml", ".gpkg"
    )
    assert_one_line_error(
        run("detect", tmp_path / "nope.tif", "--model", model_file, "--out", tmp_path / "x.gpkg"),
        "nope.tif",
        "no such file",
    )
    assert_one_line_error(
        run("detect", scene, "--model", tmp_path / "nope.model", "--out", tmp_path / "x.gpkg"),
        "nope.model",
    )
    assert not (tmp_path / "x.gpkg").exists()


def test_not_a_raster_and_usage_errors(tmp_path, model_file):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    assert_one_line_error(
        run("detect", junk, "--model", model_file, "--out", tmp_path / "x.gpkg"), "junk.tif"
    )
    assert_one_line_error(run("detect", junk, "--out", tmp_path / "x.gpkg"), "--model")
    assert_one_line_error(run("nonsense"))


def test_info_prints_metadata(model_file):
    proc = run("info", model_file, "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["classes"] == ["pool"] and meta["chip_size"] == 64
    assert meta["band_mean"] == [100.0] * 3 and len(meta["model_id"]) == 12
    assert "backbone" in run("info", model_file).stdout
