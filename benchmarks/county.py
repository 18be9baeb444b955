"""A synthetic county: planning time, chips/s, peak memory, 1 vs N workers, resume after kill.

Writes N tiled GeoTIFFs on one lattice (a county's mosaic in miniature) and a small
untrained RetinaNet (the figures here are about the pipeline, not the network), then runs
`geodetect detect` through the CLI as a user would:

- planning: describing the files, the target grid and the blocks, for N files;
- the default run (reader processes feed the model here) and the same run on a Dask
  LocalCluster of N workers (`--cluster local:N`): chips/s, peak RSS of the largest
  process, speed-up, and whether the two layers are identical;
- a run killed with SIGKILL when half its blocks are journalled, then rerun: the time
  the rerun takes against the uninterrupted run, and whether its layer is identical;
- with `--memory`: peak RSS of the default run over VRT mosaics of 4k, 16k and 32k px
  square (one tile repeated), to show memory does not grow with the scene.

    .venv/bin/python benchmarks/county.py                    # 300 files of 256 px
    .venv/bin/python benchmarks/county.py --files 3000 --plan-only
    .venv/bin/python benchmarks/county.py --memory
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from affine import Affine

from geodetect.detect import DetectOptions, prepare
from geodetect.model import ModelSpec, build_retinanet, save_model

ORIGIN = Affine(0.3, 0, 500000.0, 0, -0.3, 3300000.0)
CLI = [sys.executable, "-m", "geodetect"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "CPU"


def write_county(folder: Path, files: int, tile: int) -> None:
    """``files`` tiles of ``tile`` px on one 0.3 m lattice, as square as it goes."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = math.ceil(math.sqrt(files))
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, size=(3, tile // 8, tile // 8), dtype=np.uint8)
    base = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
    profile = dict(
        driver="GTiff", width=tile, height=tile, count=3, dtype="uint8", crs="EPSG:32617",
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    )  # fmt: skip
    for i in range(files):
        r, c = divmod(i, cols)
        data = np.roll(base, shift=(i * 37) % tile, axis=2)
        transform = ORIGIN @ Affine.translation(c * tile, r * tile)
        with rasterio.open(
            folder / f"t_{r:04d}_{c:04d}.tif", "w", transform=transform, **profile
        ) as dst:
            dst.write(data)


def write_model(path: Path) -> Path:
    spec = ModelSpec(
        classes=["pool"], band_mean=[120.0] * 3, band_std=[60.0] * 3, chip_size=512,
        fpn_channels=64, head_convs=1, gsd=0.3, typical_object_px=40, score_threshold=0.05,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_model(build_retinanet(spec, pretrained="none"), spec, path)


def plan_seconds(folder: Path, model: Path, block: int = 16) -> tuple[float, int, int]:
    """What ``detect`` prepares before reading a pixel (files described, target grid,
    model loaded, blocks planned): seconds, chips and blocks."""
    start = time.perf_counter()
    plan = prepare([folder], model, DetectOptions(block_size=block)).plan
    return time.perf_counter() - start, plan.chips_total, len(plan.blocks)


def run(args: list, *, timeout: float = 3600) -> tuple[float, float, str]:
    """Seconds, peak RSS (MiB) of the largest process, stderr of one CLI run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, proc.stderr


def peak_rss_of(args: list) -> tuple[float, float]:
    """Seconds and the peak RSS (MiB) of the run's largest process, measured in a fresh
    child so earlier runs do not count."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *CLI, *map(str, args)], capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(out.stderr)
    seconds, kib = out.stdout.split()
    return float(seconds), int(kib) / 1024


def identical(a: Path, b: Path) -> bool:
    la, lb = gpd.read_file(a), gpd.read_file(b)
    if len(la) != len(lb) or la["score"].tolist() != lb["score"].tolist():
        return False
    ca = [shapely.get_coordinates(g) for g in la.geometry]
    cb = [shapely.get_coordinates(g) for g in lb.geometry]
    return all(np.abs(x - y).max(initial=0) <= 1e-6 for x, y in zip(ca, cb, strict=True))


def write_vrt(path: Path, tile: Path, side: int, tile_px: int) -> None:
    """A VRT ``side`` px square made of one tile repeated."""
    n = side // tile_px
    sources = []
    for band in (1, 2, 3):
        parts = [
            f'<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{tile_px}" ySize="{tile_px}"/>'
            f'<DstRect xOff="{c * tile_px}" yOff="{r * tile_px}" xSize="{tile_px}" '
            f'ySize="{tile_px}"/></SimpleSource>'
            for r in range(n)
            for c in range(n)
        ]
        sources.append(
            f'<VRTRasterBand dataType="Byte" band="{band}">{"".join(parts)}</VRTRasterBand>'
        )
    gt = ", ".join(str(v) for v in (ORIGIN.c, ORIGIN.a, 0.0, ORIGIN.f, 0.0, ORIGIN.e))
    with rasterio.open(tile) as ds:
        wkt = ds.crs.to_wkt()
    path.write_text(
        f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{''.join(sources)}</VRTDataset>"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--tile", type=int, default=256, help="tile edge in pixels")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers to compare with")
    parser.add_argument("--plan-only", action="store_true", help="only time the planning")
    parser.add_argument("--memory", action="store_true", help="peak RSS at 4k/16k/32k px")
    parser.add_argument("--sizes", default="4096,16384,32768")
    args = parser.parse_args()
    print(f"device: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    tmp = Path(tempfile.mkdtemp(prefix="geodetect-county-"))
    try:
        county = tmp / "county"
        start = time.perf_counter()
        write_county(county, args.files, args.tile)
        print(f"wrote {args.files} files of {args.tile} px in {time.perf_counter() - start:.1f} s")
        model = write_model(tmp / "bench.model")
        seconds, chips, blocks = plan_seconds(county, model)
        print(f"planning: {seconds:.2f} s for {args.files} files ({chips} chips, {blocks} blocks)")
        if args.plan_only:
            return
        # 4-chip blocks, so even a small county has blocks for every worker.
        base = ["detect", county, "--model", model, "-q", "--block-size", "4"]
        one, rss_one = peak_rss_of([*base, "--out", tmp / "default.gpkg"])
        print(
            f"default (readers + model in this process): {one:.1f} s, "
            f"{chips / one:.2f} chips/s, peak RSS {rss_one:.0f} MiB"
        )
        many, rss_many = peak_rss_of(
            [*base, "--out", tmp / "dask.gpkg", "--cluster", f"local:{args.workers}"]
        )
        same = identical(tmp / "default.gpkg", tmp / "dask.gpkg")
        print(
            f"--cluster local:{args.workers}: {many:.1f} s, {chips / many:.2f} chips/s, "
            f"speed-up {one / many:.2f}x, peak RSS {rss_many:.0f} MiB (client), "
            f"identical layer: {same}"
        )
        # Kill at 50 %: SIGKILL once half the blocks are journalled, then rerun.
        out = tmp / "killed.gpkg"
        journal = tmp / ".killed.gpkg.geodetect"
        proc = subprocess.Popen([*CLI, *map(str, base), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _, _, blocks4 = plan_seconds(county, model, 4)
        while len(list(journal.glob("*.parquet"))) < blocks4 // 2:
            if proc.poll() is not None:
                sys.exit("the run ended before half its blocks were done")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        start = time.perf_counter()
        run([*base, "--out", out])
        rerun = time.perf_counter() - start
        uninterrupted = one  # the default run above, with the same blocks
        print(
            f"killed at 50 % ({blocks4 // 2} of {blocks4} blocks), rerun: {rerun:.1f} s against "
            f"{uninterrupted:.1f} s uninterrupted ({rerun / uninterrupted:.2f}), identical "
            f"layer: {identical(out, tmp / 'default.gpkg')}"
        )
        if args.memory:
            memory(tmp, model, [int(s) for s in args.sizes.split(",")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def memory(tmp: Path, model: Path, sizes: list[int]) -> None:
    tile = tmp / "tile.tif"
    write_county(tmp / "one", 1, 1024)
    shutil.copy(next((tmp / "one").glob("*.tif")), tile)
    for side in sizes:
        vrt = tmp / f"mosaic_{side}.vrt"
        write_vrt(vrt, tile, side, 1024)
        seconds, rss = peak_rss_of(
            ["detect", vrt, "--model", model, "--out", tmp / f"m{side}.gpkg", "-q"]
        )
        chips = (side / 464) ** 2
        print(
            f"{side} px square: {seconds:.0f} s (~{chips / seconds:.1f} chips/s), "
            f"peak RSS {rss:.0f} MiB"
        )


if __name__ == "__main__":
    main()
