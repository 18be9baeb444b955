"""A finer copy of a labelled set, to measure training on imagery whose objects are large
in pixels: every ``train/`` GeoTIFF upsampled ``--factor`` times (bilinear), JPEG-YCbCr
tiles, the label file copied; ``val/`` and ``native/`` linked as they are. Then run
``benchmarks/real.py --data OUT``.

    .venv/bin/python benchmarks/finer_copy.py --out /tmp/up10    # 0.2 m -> 0.1 m
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

ROWS = 1024  # output rows written at a time


def upsample(src: Path, dst: Path, factor: int) -> None:
    with rasterio.open(src) as ds:
        height, width = ds.height * factor, ds.width * factor
        profile = ds.profile | {
            "height": height,
            "width": width,
            "transform": ds.transform * Affine.scale(1 / factor),
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "jpeg",
            "photometric": "ycbcr",
            "jpeg_quality": 92,
            "interleave": "pixel",
        }
        tmp = dst.with_name(dst.name + ".tmp.tif")
        with rasterio.open(tmp, "w", **profile) as out:
            for r0 in range(0, height, ROWS):
                rows = min(ROWS, height - r0)
                window = Window(0, r0 / factor, ds.width, rows / factor)
                data = ds.read(
                    window=window,
                    out_shape=(ds.count, rows, width),
                    resampling=Resampling.bilinear,
                )
                out.write(data, window=Window(0, r0, width, rows))
    os.replace(tmp, dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--data", default=here.parent.parent / "shared/real/sao_paulo")
    parser.add_argument("--out", required=True)
    parser.add_argument("--factor", type=int, default=2)
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    for tif in sorted((data / "train").glob("*.tif")):
        target = out / "train" / tif.name
        if not target.exists():
            upsample(tif, target, args.factor)
            print(target, flush=True)
    for labels in (data / "train").glob("*.gpkg"):
        shutil.copy(labels, out / "train" / labels.name)
    for name in ("val", "native"):
        link = out / name
        if (data / name).is_dir() and not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)


if __name__ == "__main__":
    main()
