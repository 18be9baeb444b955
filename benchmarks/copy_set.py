"""Copies of a labelled set as other imagery comes, for ``benchmarks/real.py --data OUT``:
finer (``--factor``: ``train/`` upsampled, bilinear), cut into a multi-file mosaic of
tiles with objects on the seams (``--tile``), or warped into another CRS (``--crs``,
e.g. Web Mercator, with a mask outside the warped sheet), or kept only over a ragged
held-out area (``--hold-out SHARE``: blobs of about 150-400 m covering that share of
each sheet, masked outside, tiles wholly outside not written, labels whose centre is
outside dropped; what an area split's hold-out or a county's patchy coverage looks
like). Tiles are JPEG-YCbCr GeoTIFFs like the source's; label files are copied
(``--labels-crs``: reprojected). Folders no option changes are linked as they are.

    .venv/bin/python benchmarks/copy_set.py --out /tmp/up10 --factor 2   # 0.2 m -> 0.1 m train
    .venv/bin/python benchmarks/copy_set.py --out /tmp/tiles --tile 600  # 600 px tiles
    .venv/bin/python benchmarks/copy_set.py --out /tmp/merc --tile 600 --crs EPSG:3857 \
        --labels-crs EPSG:4326
    .venv/bin/python benchmarks/copy_set.py --out /tmp/ragged --sets val --tile 500 \
        --hold-out 0.45                                                 # patchy coverage
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

SETS = ("train", "val", "native")


def read_sheet(src: Path, factor: int) -> tuple[np.ndarray, Affine, object]:
    """The whole sheet (bands, rows, cols), upsampled ``factor`` times, its transform, CRS."""
    with rasterio.open(src) as ds:
        shape = (ds.count, ds.height * factor, ds.width * factor)
        data = ds.read(out_shape=shape, resampling=Resampling.bilinear)
        return data, ds.transform * Affine.scale(1 / factor), ds.crs


def warp(
    data: np.ndarray, transform: Affine, crs, dst_crs
) -> tuple[np.ndarray, np.ndarray, Affine]:
    """``data`` reprojected into ``dst_crs`` (bilinear) and its validity mask (uint8)."""
    height, width = data.shape[1:]
    left, top = transform * (0, 0)
    right, bottom = transform * (width, height)
    dst_transform, dst_w, dst_h = calculate_default_transform(
        crs, dst_crs, width, height, left=left, bottom=bottom, right=right, top=top
    )
    out = np.zeros((data.shape[0], dst_h, dst_w), dtype=data.dtype)
    mask = np.zeros((dst_h, dst_w), dtype=np.uint8)
    common = dict(
        src_transform=transform, src_crs=crs, dst_transform=dst_transform, dst_crs=dst_crs
    )
    reproject(data, out, resampling=Resampling.bilinear, **common)
    reproject(
        np.full((height, width), 255, np.uint8), mask, resampling=Resampling.nearest, **common
    )
    return out, mask, dst_transform


def hold_out_mask(shape: tuple[int, int], share: float, seed: int) -> np.ndarray:
    """uint8 mask (255 inside) of blobs covering about ``share`` of a ``shape`` array:
    a coarse random field (cells of 768 px) smoothed by bilinear upsampling, cut at its
    (1 - share) quantile."""
    height, width = shape
    rng = np.random.default_rng(seed)
    cell = 768
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    rows = np.arange(height) / cell
    cols = np.arange(width) / cell
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    field = (
        coarse[r0][:, c0] * (1 - fr) * (1 - fc)
        + coarse[r0 + 1][:, c0] * fr * (1 - fc)
        + coarse[r0][:, c0 + 1] * (1 - fr) * fc
        + coarse[r0 + 1][:, c0 + 1] * fr * fc
    )
    return np.where(field >= np.quantile(field, 1 - share), 255, 0).astype(np.uint8)


def write_tiles(
    data: np.ndarray, mask: np.ndarray | None, transform: Affine, crs, dst: Path, tile: int
) -> int:
    """``data`` as tiles of ``tile`` px (the whole array when 0) named after ``dst``;
    tiles with no valid pixel are skipped. Returns how many were written."""
    height, width = data.shape[1:]
    step_r, step_c = (tile or height), (tile or width)
    written = 0
    for r0 in range(0, height, step_r):
        for c0 in range(0, width, step_c):
            rows, cols = min(step_r, height - r0), min(step_c, width - c0)
            part_mask = None if mask is None else mask[r0 : r0 + rows, c0 : c0 + cols]
            if part_mask is not None and not part_mask.any():
                continue
            name = dst.name if not tile else f"{dst.stem}_r{r0 // tile:02d}_c{c0 // tile:02d}.tif"
            path = dst.with_name(name)
            profile = {
                "driver": "GTiff",
                "width": cols,
                "height": rows,
                "count": data.shape[0],
                "dtype": data.dtype,
                "crs": crs,
                "transform": transform * Affine.translation(c0, r0),
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
                "compress": "jpeg",
                "photometric": "ycbcr",
                "jpeg_quality": 92,
                "interleave": "pixel",
            }
            tmp = path.with_name(path.name + ".tmp.tif")
            with (
                rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
                rasterio.open(tmp, "w", **profile) as out,
            ):
                out.write(data[:, r0 : r0 + rows, c0 : c0 + cols])
                if part_mask is not None:
                    out.write_mask(part_mask)
            os.replace(tmp, path)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--data", type=Path, default=here.parent.parent / "shared/real/sao_paulo")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=1, help="upsample train/ this many times")
    parser.add_argument("--tile", type=int, default=0, help="cut every sheet into tiles of N px")
    parser.add_argument("--crs", default=None, help="warp every sheet into this CRS")
    parser.add_argument("--labels-crs", default=None, help="write the labels in this CRS")
    parser.add_argument("--sets", default=",".join(SETS), help="folders to copy or link")
    parser.add_argument(
        "--hold-out", type=float, default=0.0, help="keep only blobs covering this share"
    )
    args = parser.parse_args()
    for name in args.sets.split(","):
        src_dir, dst_dir = args.data / name, args.out / name
        if not src_dir.is_dir():
            continue
        factor = args.factor if name == "train" else 1
        if factor == 1 and not (args.tile or args.crs or args.labels_crs or args.hold_out):
            if not dst_dir.exists():
                dst_dir.parent.mkdir(parents=True, exist_ok=True)
                dst_dir.symlink_to(src_dir.resolve(), target_is_directory=True)
            continue
        dst_dir.mkdir(parents=True, exist_ok=True)
        kept = []  # (mask, transform) of held-out sheets
        for number, tif in enumerate(sorted(src_dir.glob("*.tif"))):
            data, transform, crs = read_sheet(tif, factor)
            mask = None
            if args.crs:
                data, mask, transform = warp(data, transform, crs, args.crs)
                crs = args.crs
            if args.hold_out:
                held = hold_out_mask(data.shape[1:], args.hold_out, seed=number)
                mask = held if mask is None else np.minimum(mask, held)
                kept.append((mask, transform))
            n = write_tiles(data, mask, transform, crs, dst_dir / tif.name, args.tile)
            print(f"{dst_dir / tif.name}: {n} file(s)", flush=True)
        for labels in src_dir.glob("*.gpkg"):
            frame = gpd.read_file(labels)
            if kept:
                frame = frame[[_inside(g.centroid, kept) for g in frame.geometry]]
            if args.labels_crs:
                frame = frame.to_crs(args.labels_crs)
            frame.to_file(dst_dir / labels.name, driver="GPKG")


def _inside(point, masks) -> bool:
    """Whether ``point`` (map coordinates) falls on a kept pixel of a held-out sheet."""
    for mask, transform in masks:
        col, row = ~transform * (point.x, point.y)
        r, c = int(row), int(col)
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
            return bool(mask[r, c])
    return False


if __name__ == "__main__":
    main()
