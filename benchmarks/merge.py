"""The final merge at county scale: streamed (what `detect` runs) against merging every
block at once, on the same journal, in separate processes.

Writes one sparse GeoTIFF (a county-sized grid that costs no disk), plans it as `detect`
would (512 px chips, blocks of 16×16 chips), and journals synthetic owned detections for
every block: `--per-chip` boxes per chip, a third of them in near-duplicate clusters, and
a few pieces of large objects cut by chip edges. Then, each in a fresh process, merges
the journal and writes a GeoPackage:

- `streamed`: :func:`geodetect.detect.merge.merged_batches` + ``write_batches``;
- `at once`: :func:`geodetect.detect.merge.merge_tables` + ``write_layer``.

Prints seconds and peak RSS of each and whether the two layers hold the same features.

    .venv/bin/python benchmarks/merge.py                    # 48k px square, 30 per chip
    .venv/bin/python benchmarks/merge.py --size 96000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

CHIP, OVERLAP = 512, 96


def _journal(folder: Path, size: int, per_chip: int) -> tuple[Path, Path]:
    from geodetect.detect.journal import Journal
    from geodetect.detect.merge import concat_tables
    from geodetect.detect.plan import RunConfig, make_plan
    from geodetect.geometry import cut_mask
    from geodetect.io.raster import open_mosaics

    tif = folder / "county.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
        crs="EPSG:32617", transform=Affine(0.15, 0, 500_000, 0, -0.15, 4_000_000),
        tiled=True, blockxsize=512, blockysize=512, SPARSE_OK="TRUE", nodata=0,
    ):  # fmt: skip
        pass
    (grid,) = open_mosaics([tif])
    config = RunConfig(chip_size=CHIP, overlap=OVERLAP, threshold=0.3)
    plan = make_plan([grid], config)
    journal = Journal(folder / "journal", {"benchmark": "merge"})
    rng = np.random.default_rng(0)
    for block in plan.blocks:
        parts = []
        for chip in block.chips(plan.chip_grids[0]):
            n = rng.poisson(per_chip)
            centre = rng.uniform(0, CHIP, (n, 2))
            dup = rng.random(n) < 0.33
            centre[dup] = centre[np.flatnonzero(dup) - 1 if n else dup] + rng.normal(
                0, 2, (dup.sum(), 2)
            )
            half = rng.uniform(4, 30, (n, 2))
            boxes = np.clip(np.hstack([centre - half, centre + half]), 0, CHIP)
            piece = cut_mask(boxes, chip.core, size=CHIP) & (rng.random(n) < 0.2)
            x0, y0 = chip.col_off, chip.row_off
            parts.append(
                {
                    "grid": np.zeros(n, np.int32),
                    "chip": np.full(n, chip.index, np.int64),
                    "x0": boxes[:, 0] + x0, "y0": boxes[:, 1] + y0,
                    "x1": boxes[:, 2] + x0, "y1": boxes[:, 3] + y0,
                    "score": rng.uniform(0.3, 1, n), "label": np.zeros(n, np.int64),
                    "piece": piece,
                    "wx0": np.full(n, float(x0)), "wy0": np.full(n, float(y0)),
                    "wx1": np.full(n, float(x0 + CHIP)), "wy1": np.full(n, float(y0 + CHIP)),
                    "source": np.full(n, "county.tif", dtype=object),
                }
            )  # fmt: skip
        journal.commit(block.key, concat_tables(parts))
    return tif, folder / "journal"


def _merge(mode: str, tif: str, journal_dir: str, out: str) -> None:
    """Run in a child process: merge the journal one way and write ``out``."""
    from geodetect.detect.journal import Journal
    from geodetect.detect.merge import Provenance, merge_tables, merged_batches, to_layer
    from geodetect.detect.plan import RunConfig, make_plan
    from geodetect.io.export import write_batches, write_layer
    from geodetect.io.raster import open_mosaics
    from geodetect.model import ModelSpec

    (grid,) = open_mosaics([tif])
    plan = make_plan([grid], RunConfig(chip_size=CHIP, overlap=OVERLAP, threshold=0.3))
    journal = Journal(Path(journal_dir), {"benchmark": "merge"})
    spec = ModelSpec(classes=["pool"], band_mean=[0.0] * 3, band_std=[1.0] * 3)
    start = time.perf_counter()
    if mode == "streamed":
        batches = merged_batches(plan, journal.read, crs=grid.crs, nms_iou=0.5, metric="iou")
        write_batches((to_layer(b, spec, Provenance("m", 0.5)) for b in batches), out)
    else:
        tables = (journal.read(b.key) for b in plan.blocks)
        merged = merge_tables(tables, plan.grids, crs=grid.crs, nms_iou=0.5, metric="iou")
        write_layer(to_layer(merged, spec, Provenance("m", 0.5)), out)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48_000, help="grid side in pixels")
    parser.add_argument("--per-chip", type=float, default=30.0, help="detections per chip")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _merge(*args.child)
        return
    import geopandas as gpd
    import shapely

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        tif, journal = _journal(folder, args.size, args.per_chip)
        km = (args.size * 0.15 / 1000) ** 2
        print(
            f"machine: {platform.processor() or platform.machine()}, "
            f"python {sys.version.split()[0]}"
        )
        print(
            f"grid {args.size}² px at 0.15 m ({km:.0f} km²); "
            f"journal written in {time.perf_counter() - start:.0f} s"
        )
        results, layers = {}, {}
        for mode in ("streamed", "at once"):
            out = folder / f"{mode.replace(' ', '_')}.gpkg"
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(tif), str(journal), str(out)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            layers[mode] = gpd.read_file(out)
        for mode, r in results.items():
            print(f"{mode:>9}: {r['seconds']:7.1f} s, peak RSS {r['peak_mib']:7.0f} MiB")
        a, b = layers["streamed"], layers["at once"]
        key = [shapely.to_wkb(shapely.normalize(x.geometry.values), hex=True) for x in (a, b)]
        same = len(a) == len(b) and sorted(zip(key[0], a.score, strict=True)) == sorted(
            zip(key[1], b.score, strict=True)
        )
        print(f"features: {len(a)} streamed, {len(b)} at once; same features: {same}")
        ratio = results["at once"]["peak_mib"] / results["streamed"]["peak_mib"]
        print(f"peak RSS at once / streamed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
