"""The layers fixed models write, fingerprinted, so that a change meant to keep behaviour
(a refactor) can show it kept it: every feature, geometry and score the same.

Three runs of ``geodetect detect`` with every default, through the CLI:

- ``demo``: the synthetic 2x2 mosaic in ``sample_data/mosaic`` with ``--synth-model``;
- ``mixed``: that mosaic with one tile warped into Web Mercator and one resampled to a
  finer pixel, so the run reads a mix of grids through warps;
- ``real``: ``../shared/real/sao_paulo/val`` with ``--real-model`` (skipped when either
  is missing).

    python benchmarks/layers.py --synth-model pools.model --real-model sp.model --out /tmp/before
    python benchmarks/layers.py --synth-model pools.model --real-model sp.model \
        --out /tmp/after --compare /tmp/before

Each layer's fingerprint (a hash of its features sorted, geometries as WKB, scores to the
last bit) is printed and written to ``OUT/fingerprints.json``; ``--compare`` exits 1 when
any layer differs and says how.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject

REPO = Path(__file__).resolve().parents[1]
MOSAIC = REPO / "sample_data" / "mosaic"
REAL_VAL = REPO.parent / "shared" / "real" / "sao_paulo" / "val"


def mixed_mosaic(folder: Path) -> list[Path]:
    """``sample_data/mosaic`` with tile r0_c1 in EPSG:3857 and tile r1_c0 at 2/3 of its
    pixel size; the other tiles as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for src_path in sorted(MOSAIC.glob("scene_r*_c*.tif")):
        dst_path = folder / src_path.name
        with rasterio.open(src_path) as src:
            if src_path.stem.endswith("r0_c1"):
                crs = "EPSG:3857"
                transform, width, height = calculate_default_transform(
                    src.crs, crs, src.width, src.height, *src.bounds
                )
            elif src_path.stem.endswith("r1_c0"):
                crs = src.crs
                transform = src.transform * rasterio.Affine.scale(2 / 3)
                width, height = src.width * 3 // 2, src.height * 3 // 2
            else:
                shutil.copy(src_path, dst_path)
                paths.append(dst_path)
                continue
            profile = src.profile | {
                "crs": crs,
                "transform": transform,
                "width": width,
                "height": height,
                "compress": "deflate",
                "photometric": "rgb",
                "nodata": 0,
            }
            profile.pop("jpeg_quality", None)
            with rasterio.open(dst_path, "w", **profile) as dst:
                for band in range(1, src.count + 1):
                    out = np.zeros((height, width), dtype=src.dtypes[0])
                    reproject(
                        rasterio.band(src, band),
                        out,
                        dst_transform=transform,
                        dst_crs=crs,
                        resampling=Resampling.bilinear,
                        dst_nodata=0,
                    )
                    dst.write(out, band)
        paths.append(dst_path)
    return paths


def detect(images: list[Path], model: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "geodetect", "detect", *map(str, images)]
    cmd += ["--model", str(model), "--out", str(out), "--overwrite", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")


def features(path: Path) -> list[tuple]:
    """The layer's features as sortable tuples: every attribute, the geometry's WKB and
    the score's exact bits."""
    layer = gpd.read_file(path)
    columns = [c for c in layer.columns if c != "geometry"]
    wkb = shapely.to_wkb(layer.geometry.values, hex=True)
    rows = []
    for i in range(len(layer)):
        values = tuple(
            float(layer[c].iloc[i]).hex() if c == "score" else str(layer[c].iloc[i])
            for c in columns
        )
        rows.append((wkb[i], *values))
    return sorted(rows)


def fingerprint(rows: list[tuple]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth-model", type=Path, required=True)
    parser.add_argument("--real-model", type=Path)
    parser.add_argument("--real", type=Path, default=REAL_VAL, help="real rasters to detect over")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, help="an earlier --out to compare with")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {"demo": (sorted(MOSAIC.glob("scene_r*_c*.tif")), args.synth_model)}
    with tempfile.TemporaryDirectory() as tmp:
        runs["mixed"] = (mixed_mosaic(Path(tmp) / "mixed"), args.synth_model)
        if args.real_model and args.real.is_dir():
            runs["real"] = (sorted(args.real.glob("*.tif")), args.real_model)
        elif args.real_model:
            print(f"real: skipped ({args.real} is not a folder)")
        prints = {}
        for name, (images, model) in runs.items():
            layer = args.out / f"{name}.gpkg"
            detect(images, model, layer)
            rows = features(layer)
            prints[name] = {"features": len(rows), "fingerprint": fingerprint(rows)}
            print(f"{name}: {len(rows)} features, fingerprint {prints[name]['fingerprint']}")
    (args.out / "fingerprints.json").write_text(json.dumps(prints, indent=1))
    if args.compare is None:
        return
    differ = 0
    for name in prints:
        before_path = args.compare / f"{name}.gpkg"
        if not before_path.exists():
            print(f"{name}: not in {args.compare}")
            continue
        before, after = features(before_path), features(args.out / f"{name}.gpkg")
        if before == after:
            print(f"{name}: identical ({len(after)} features)")
            continue
        differ += 1
        gone, new = set(before) - set(after), set(after) - set(before)
        print(
            f"{name}: DIFFERENT: {len(before)} -> {len(after)} features, {len(gone)} gone, "
            f"{len(new)} new"
        )
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
