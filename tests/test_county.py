"""County-scale runs: one target grid, blocks, the journal, Dask, bounded open files.

Real GeoTIFFs, real worker processes, a real Dask LocalCluster, real signals.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from affine import Affine
from pyproj import Transformer
from rasterio.warp import Resampling, reproject

from geodetect.detect import default_overlap, detect
from geodetect.geometry import pixel_boxes_to_map

from conftest import NORTH_UP, paint_boxes, random_boxes, sigint_as_in_a_terminal, write_geotiff

GEODETECT = [sys.executable, "-m", "geodetect"]


def _tiles(folder, image, transform, tile, *, name="t"):
    """Cut ``image`` into ``tile``-px GeoTIFFs on one lattice; returns their paths."""
    folder.mkdir(exist_ok=True)
    paths = []
    _, height, width = image.shape
    for r in range(0, height, tile):
        for c in range(0, width, tile):
            t = transform @ Affine.translation(c, r)
            part = image[:, r : r + tile, c : c + tile]
            paths.append(write_geotiff(folder / f"{name}_{r:05d}_{c:05d}.tif", part, transform=t))
    return paths


def _same_layer(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    assert list(a.columns) == list(b.columns)
    ca = np.array([shapely.get_coordinates(g) for g in a.geometry])
    cb = np.array([shapely.get_coordinates(g) for g in b.geometry])
    assert np.abs(ca - cb).max(initial=0) <= tol
    for column in ("class", "source", "model_id"):
        assert a[column].tolist() == b[column].tolist(), column
    if tol <= 1e-6:
        assert a["score"].tolist() == b["score"].tolist()
        assert a["area_m2"].tolist() == b["area_m2"].tolist()
    else:  # rounded to 4 and 3 decimals: noise may cross a rounding boundary
        assert np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max(initial=0) <= 1.5e-4
        assert np.abs(a["area_m2"].to_numpy() - b["area_m2"].to_numpy()).max(initial=0) <= 1.5e-3


def _identical(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame) -> None:
    """The same features: geometries byte for byte, every attribute (class, score, area,
    source, model) equal, in the same order."""
    assert len(a) == len(b) > 0, (len(a), len(b))
    assert list(a.columns) == list(b.columns) and a.crs == b.crs
    assert a.geometry.to_wkb().tolist() == b.geometry.to_wkb().tolist()
    attributes = [c for c in a.columns if c != a.geometry.name]
    pd.testing.assert_frame_equal(a[attributes], b[attributes], check_exact=True)


@pytest.fixture(scope="module")
def tiny_model(untrained_model):
    """An untrained tiny RetinaNet (the suite's): arbitrary but reproducible boxes."""
    return untrained_model


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 3x4 mosaic of 100 px tiles with objects on the seams; its truth boxes."""
    root = tmp_path_factory.mktemp("mosaic")
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 300, 400, 45, max_size=28)
    image = paint_boxes(300, 400, boxes)
    image[1] += (np.arange(400, dtype=np.uint8)[None, :] // 4).astype(np.uint8)
    _tiles(root / "tiles", image, NORTH_UP, 100)
    return root / "tiles", boxes


@pytest.mark.parametrize("shift", [0, 23])
def test_oracle_layer_is_the_same_for_any_block_size_and_reader_count(
    tmp_path, oracle, mosaic, shift
):
    """Blocks of 1 and 3 chips and the default, 0 and 2 reader processes, two grid
    offsets, the default overlap: every object once, whole, and the same layer every
    time."""
    assert default_overlap(oracle.spec, 96) == 40
    folder, boxes = mosaic
    if shift:  # another grid offset: the same ground, the mosaic starts elsewhere
        folder = tmp_path / "shifted"
        image = np.zeros((3, 300 + shift, 400 + shift), dtype=np.uint8) + 20
        image[:, shift:, shift:] = paint_boxes(300, 400, boxes)
        transform = NORTH_UP @ Affine.translation(-shift, -shift)
        _tiles(folder, image, transform, 100)
        boxes = boxes + shift
    else:
        transform = NORTH_UP
    layers = [
        detect(
            [folder],
            oracle,
            chip_size=96,  # and the default overlap: 1.2x the oracle's 30 px objects
            block_size=block,
            workers=workers,
            progress=False,
        )
        for block, workers in [(1, 0), (3, 2), (16, None)]
    ]
    truth = pixel_boxes_to_map(boxes, transform)
    assert len(layers[0]) == len(truth)
    got = np.array([shapely.get_coordinates(g)[:4] for g in layers[0].geometry])
    for w in (np.array(shapely.get_coordinates(p)[:4]) for p in truth):
        assert np.abs(got - w).reshape(len(got), -1).max(axis=1).min() <= 1e-6
    for other in layers[1:]:
        _same_layer(layers[0], other)


@pytest.mark.slow
def test_real_model_layer_is_the_same_on_a_dask_local_cluster(tmp_path, tiny_model, mosaic):
    """A real network, loaded once per Dask worker from the model file: the layer of a
    2-worker LocalCluster with 2-chip blocks equals the in-process run's."""
    folder, _ = mosaic
    here = detect([folder], tiny_model, chip_size=64, overlap=16, progress=False)
    assert len(here) > 10  # an untrained net at threshold 0 finds plenty
    environ = dict(os.environ)
    dask = detect(
        [folder],
        tiny_model,
        chip_size=64,
        overlap=16,
        block_size=2,
        cluster="local:2",
        progress=False,
    )
    # Each LocalCluster worker runs torch on half the cores: where the CPU computes the
    # network in fp32, oneDNN's convolutions then round differently (~1e-5 px); same
    # detections, boxes within 1e-4 px (the same thread count gives 1e-6 m, above).
    _same_layer(here, dask, tol=1e-4 * 0.3)
    # Dask's nanny sets OMP_NUM_THREADS=1 (and more) in this process to start its
    # workers; it is given back, or everything started later runs on one thread.
    # (Importing distributed marks this process as a parent: __DASK_PARENT_PID.)
    after = {k: v for k, v in os.environ.items() if not k.startswith("__DASK")}
    assert after == {k: v for k, v in environ.items() if not k.startswith("__DASK")}


@pytest.mark.slow
def test_cli_on_a_dask_local_cluster_gives_the_in_process_layer(tmp_path, tiny_model, mosaic):
    """`geodetect detect --cluster local:2`, as a user runs it (a real LocalCluster of two
    worker processes, 2x2-chip blocks spread over both), writes the layer the
    in-process run writes: the same features, byte for byte."""
    folder, _ = mosaic
    options = ["--chip-size", "64", "--overlap", "16", "--block-size", "2"]
    out = tmp_path / "dask.gpkg"
    proc = _run("detect", folder, "--model", tiny_model, "--out", out, *options,
                "--cluster", "local:2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / ".dask.gpkg.geodetect").exists()
    # local:N gives each worker one thread, and torch runs on that one; so it does
    # this process here, since oneDNN's fp32 convolutions round by thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detect([folder], tiny_model, chip_size=64, overlap=16, block_size=2, progress=False,
               out=tmp_path / "here.gpkg")  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    here, dask = gpd.read_file(tmp_path / "here.gpkg"), gpd.read_file(out)
    assert len(here) > 10  # an untrained net at threshold 0 finds plenty
    _identical(here, dask)
    # and the same coverage: every file of the mosaic, whole
    here, dask = (gpd.read_file(p, layer="coverage") for p in (tmp_path / "here.gpkg", out))
    assert len(here) == len(list(folder.glob("*.tif"))) and here.equals(dask)


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GEODETECT, *map(str, args)], capture_output=True, text=True, timeout=300, **kw
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model):
    """A 900 px scene (64 chips of 128 px in 16 blocks, seconds of CPU), the `detect`
    arguments for it, and the layer and chip count of its uninterrupted run."""
    root = tmp_path_factory.mktemp("uninterrupted")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 255, size=(3, 900, 900), dtype=np.uint8)
    scene = write_geotiff(root / "big.tif", image, transform=NORTH_UP, blockxsize=256,
                          blockysize=256)  # fmt: skip
    args = ["detect", scene, "--model", tiny_model, "--chip-size", "128", "--overlap", "16",
            "--block-size", "2"]  # fmt: skip
    whole = _run(*args, "--out", root / "whole.gpkg")
    assert whole.returncode == 0, whole.stderr
    total = int(re.search(r"from (\d+) chip", whole.stderr).group(1))
    return args, gpd.read_file(root / "whole.gpkg", layer="detections"), total


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_stopped_run_resumes_and_gives_the_uninterrupted_layer(tmp_path, uninterrupted, sig):
    """Killed (kill -9) or interrupted (Ctrl-C: SIGINT, exit 130 and one line) once the
    journal holds finished blocks: no output, no reader process left, the journal kept;
    the same command then reads only the blocks not done and writes the layer of a run
    that was never stopped, feature for feature."""
    args, whole, total = uninterrupted
    out = tmp_path / "resumed.gpkg"
    journal = tmp_path / ".resumed.gpkg.geodetect"
    proc = subprocess.Popen(
        [*GEODETECT, *map(str, args), "--out", str(out), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=sigint_as_in_a_terminal,
    )
    deadline = time.monotonic() + 120
    while len(list(journal.glob("*.parquet"))) < (3 if sig == signal.SIGKILL else 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no block was committed"
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("geodetect: error: interrupted"), err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [journal.name]  # no temp output
    # Its reader processes do not outlive it (a batch may be stuck in their pipe).
    deadline = time.monotonic() + 15
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "reader processes outlived the stopped run"
        time.sleep(0.2)
    done = len(list(journal.glob("*.parquet")))
    assert done >= 1
    rerun = _run(*args, "--out", out)
    assert rerun.returncode == 0, rerun.stderr
    resumed = re.search(r"resuming: (\d+) of (\d+) block", rerun.stderr)
    assert resumed and int(resumed.group(1)) == done < int(resumed.group(2)), rerun.stderr
    read = re.search(r"from (\d+) chip\(s\) \(\d+ empty, (\d+) more from the journal", rerun.stderr)
    assert read, rerun.stderr
    assert int(read.group(1)) < total  # the rerun read fewer chips
    assert int(read.group(1)) + int(read.group(2)) == total
    assert not journal.exists()  # removed once the layer is written
    _identical(whole, gpd.read_file(out, layer="detections"))
    # the blocks read before the stop still count as looked at: the whole scene
    (covered,) = gpd.read_file(out, layer="coverage").geometry
    assert covered.area == pytest.approx(900 * 900 * 0.3 * 0.3)


def test_other_run_in_the_journal_is_refused_unless_restart(tmp_path, tiny_model, mosaic):
    folder, _ = mosaic
    out = tmp_path / "pools.gpkg"
    first = _run("detect", folder, "--model", tiny_model, "--out", out, "--keep-journal", "-q")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / ".pools.gpkg.geodetect").is_dir()
    out.unlink()
    other = _run("detect", folder, "--model", tiny_model, "--out", out, "--overlap", "8", "-q")
    assert other.returncode != 0
    assert "Traceback" not in other.stderr
    [line] = other.stderr.strip().splitlines()
    assert line.startswith("geodetect: error:") and "--restart" in line, line
    again = _run(
        "detect", folder, "--model", tiny_model, "--out", out, "--overlap", "8", "--restart", "-q"
    )
    assert again.returncode == 0, again.stderr
    assert out.exists() and not (tmp_path / ".pools.gpkg.geodetect").exists()


def _utm(zone: int) -> str:
    return f"EPSG:{32600 + zone}"


def test_files_in_two_utm_zones_and_another_gsd_give_each_pool_once_whole(tmp_path, oracle):
    """The ground is drawn in UTM 17 at 0.3 m; the right half is delivered in UTM 18, the
    bottom strip at 0.6 m. Pools straddle both seams: each comes out once, whole, in the
    first file's CRS."""
    to17 = Transformer.from_crs("EPSG:4326", _utm(17), always_xy=True)
    x0, y0 = to17.transform(-78.0012, 30.001)  # just west of the zone boundary
    ground_t = Affine(0.3, 0, round(x0), 0, -0.3, round(y0))
    boxes = np.array(
        [
            [185, 40, 215, 62],
            [190, 150, 212, 175],
            [60, 185, 85, 215],
            [300, 188, 326, 212],
            [40, 40, 60, 60],
            [320, 60, 345, 80],
            [100, 250, 125, 270],
        ]
    )
    ground = paint_boxes(300, 400, boxes)
    left = ground[:, :200, :200]
    write_geotiff(tmp_path / "a_left.tif", left, transform=ground_t, crs=_utm(17))
    # Right half: the same ground resampled into UTM 18 (nearest, so edges stay sharp).
    right_t17 = ground_t @ Affine.translation(200, 0)
    xs, ys = right_t17 @ (0, 0), right_t17 @ (200, 200)
    to18 = Transformer.from_crs(_utm(17), _utm(18), always_xy=True)
    corners = [to18.transform(x, y) for x in (xs[0], ys[0]) for y in (xs[1], ys[1])]
    e0, n1 = min(c[0] for c in corners), max(c[1] for c in corners)
    e1, n0 = max(c[0] for c in corners), min(c[1] for c in corners)
    t18 = Affine(0.3, 0, e0, 0, -0.3, n1)
    shape18 = (int(np.ceil((n1 - n0) / 0.3)), int(np.ceil((e1 - e0) / 0.3)))
    right = np.zeros((3, *shape18), dtype=np.uint8)
    reproject(
        ground[:, :200, 200:],
        right,
        src_transform=right_t17,
        src_crs=_utm(17),
        dst_transform=t18,
        dst_crs=_utm(18),
        resampling=Resampling.nearest,
        src_nodata=None,
        dst_nodata=0,
    )
    write_geotiff(tmp_path / "b_right.tif", right, transform=t18, crs=_utm(18), nodata=0)
    # Bottom strip at 0.6 m (2x2 block means), same CRS, same origin lattice shifted.
    bottom = ground[:, 200:300, :].reshape(3, 50, 2, 200, 2).mean(axis=(2, 4)).astype(np.uint8)
    bottom_t = ground_t @ Affine.translation(0, 200) @ Affine.scale(2)
    write_geotiff(tmp_path / "c_bottom.tif", bottom, transform=bottom_t, crs=_utm(17))
    layer = detect([tmp_path / "*.tif"], oracle, chip_size=96, overlap=48, progress=False)
    assert layer.crs.to_epsg() == 32617
    truth = pixel_boxes_to_map(boxes, ground_t)
    assert len(layer) == len(truth), layer.geometry.bounds
    for poly in truth:
        iou = [poly.intersection(g).area / poly.union(g).area for g in layer.geometry]
        assert max(iou) > 0.8, (poly.bounds, max(iou))


def _detect_argv(images, model, out, *extra, chip: int = 64) -> list[str]:
    """`detect` arguments over ``chip`` px chips, quiet."""
    return ["detect", str(images), "--model", str(model), "--out", str(out), "--chip-size",
            str(chip), *extra, "-q"]  # fmt: skip


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from geodetect.cli import main
main(sys.argv[1:])
"""


def test_200_files_under_ulimit_64_complete(tmp_path, tiny_model):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, size=(3, 400, 500), dtype=np.uint8)
    paths = _tiles(tmp_path / "tiles", image, NORTH_UP, 25)
    assert len(paths) == 320
    out = tmp_path / "pools.gpkg"
    # 128 px chips: each window spans 36-49 of the 25 px files; 30 chips, not 180
    argv = _detect_argv(tmp_path / "tiles", tiny_model, out, chip=128)
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # The same command without the limit writes the same layer: the bounded cache of
    # open files closes and reopens files, and reads the same pixels.
    free = tmp_path / "unlimited.gpkg"
    plain = _run(*_detect_argv(tmp_path / "tiles", tiny_model, free, chip=128))
    assert plain.returncode == 0, plain.stderr
    _identical(gpd.read_file(free), gpd.read_file(out))


def test_a_dead_reader_process_ends_the_run_with_one_line(tmp_path, tiny_model):
    """A reader process killed mid-run (as the OOM killer would): one line naming the
    cause within seconds, not a hang and not "interrupted"; the blocks done are kept."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, size=(3, 1500, 1500), dtype=np.uint8)
    scene = write_geotiff(tmp_path / "big.tif", image, transform=NORTH_UP)
    out = tmp_path / "pools.gpkg"
    proc = subprocess.Popen(
        # torch: `auto` would first time three runtimes (tested in test_onnx.py)
        [
            *GEODETECT,
            *_detect_argv(
                scene, tiny_model, out, "--block-size", "2", "--workers", "1", "--runtime", "torch"
            ),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    journal = tmp_path / ".pools.gpkg.geodetect"
    deadline = time.monotonic() + 120
    while not list(journal.glob("*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    assert pids, "no reader process"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 30
    assert proc.returncode not in (0, 130), err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geodetect: error:"), err
    assert "reader process died" in lines[0] and "interrupted" not in lines[0]
    assert not out.exists() and list(journal.glob("*.parquet"))


@pytest.mark.slow
def test_a_running_cluster_by_address_or_client_gives_the_same_layer(tiny_model, mosaic):
    """`--cluster tcp://HOST:PORT` and the notebook API's Client reach an existing
    cluster; each gives the in-process layer."""
    from dask.distributed import Client, LocalCluster

    folder, _ = mosaic
    options = dict(chip_size=64, overlap=16, block_size=3, progress=False)
    here = detect([folder], tiny_model, **options)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster:
        by_address = detect([folder], tiny_model, cluster=cluster.scheduler_address, **options)
        with Client(cluster) as client:
            by_client = detect([folder], tiny_model, cluster=client, **options)
    _same_layer(here, by_address)
    _same_layer(here, by_client)
