"""Detection throughput: model-only vs end-to-end (read -> detect -> merge -> write).

Both figures come from one run, with the same model and the same chips, so their ratio
says how much the pipeline around the network costs. Prints the device, chips/s,
the ratio and peak RSS.

    python benchmarks/throughput.py                       # CPU-sized defaults
    python benchmarks/throughput.py --device cuda --backbone resnet50 --preset standard \
        --chip-size 512 --grid 12 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from geodetect.detect import (
    DIHEDRAL,
    FLIPS,
    Normaliser,
    default_overlap,
    detect,
    predict_with_flips,
)
from geodetect.io.export import write_layer
from geodetect.model import LoadedModel, ModelSpec, autocast_dtype, build_retinanet
from geodetect.model.spec import preset_widths


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def write_scene(path: Path, size: int, seed: int = 0) -> None:
    """A textured RGB scene (smooth noise, not flat) written as a tiled DEFLATE GeoTIFF."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, size=(3, size // 16 + 1, size // 16 + 1), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    image = (image // 2 + rng.integers(0, 128, size=image.shape, dtype=np.uint8)).astype(np.uint8)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32617",
        transform=Affine(0.3, 0, 500000, 0, -0.3, 3300000),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--grid", type=int, default=6, help="chips per side of the scene")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--tta",
        type=int,
        choices=(0, 4, 8),
        default=0,
        help="test-time augmentation views in both measurements (0: none)",
    )
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()

    dev = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    channels, convs = preset_widths(args.preset)
    spec = ModelSpec(
        classes=["pool"],
        band_mean=[120.0] * 3,
        band_std=[60.0] * 3,
        chip_size=args.chip_size,
        backbone=args.backbone,
        preset=args.preset,
        fpn_channels=channels,
        head_convs=convs,
        gsd=0.3,
        max_object_px=48,
    )
    torch.manual_seed(0)
    net = build_retinanet(spec, pretrained="none").eval().to(dev)
    net.score_thresh = spec.score_threshold
    loaded = LoadedModel(net, spec, "benchmark", Path("-"))
    overlap = default_overlap(spec, args.chip_size)
    size = args.chip_size + (args.grid - 1) * (args.chip_size - overlap)
    n_chips = args.grid**2

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        write_scene(scene, size)
        with rasterio.open(scene) as ds:
            chips = torch.from_numpy(ds.read(window=((0, args.chip_size), (0, args.chip_size))))
        batch = chips.unsqueeze(0).repeat(args.batch_size, 1, 1, 1)
        normalise = Normaliser(spec.band_mean, spec.band_std, dev)
        amp = autocast_dtype(dev, args.precision)
        views = FLIPS if args.tta == 4 else DIHEDRAL

        def model_only() -> float:
            n_batches = -(-n_chips // args.batch_size)
            start = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n_batches):
                    x = normalise(batch.to(dev, non_blocking=True))
                    run = (
                        (lambda b: predict_with_flips(net, b, min_score=0.5, views=views))
                        if args.tta
                        else net
                    )
                    if amp:
                        with torch.autocast(dev.type, dtype=amp):
                            out = run(x)
                    else:
                        out = run(x)
                    _ = [o["boxes"].cpu() for o in out]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return n_batches * args.batch_size / (time.perf_counter() - start)

        def end_to_end() -> float:
            out = Path(tmp) / "out.gpkg"
            start = time.perf_counter()
            layer = detect(
                [scene],
                loaded,
                chip_size=args.chip_size,
                overlap=overlap,
                batch_size=args.batch_size,
                device=str(dev),
                workers=args.workers,
                tta=bool(args.tta),
                tta_views=args.tta or 8,
                precision=args.precision,
                progress=False,
            )
            write_layer(layer, out, overwrite=True)
            return n_chips / (time.perf_counter() - start)

        model_only()  # warm-up (allocator, cuDNN autotune)
        best_model = max(model_only() for _ in range(args.repeats))
        best_e2e = max(end_to_end() for _ in range(args.repeats))

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"device          : {device_name(dev)}")
    print(
        f"model           : {args.backbone} {args.preset}, chip {args.chip_size}px, "
        f"batch {args.batch_size}, {'bf16 autocast' if amp else 'fp32'}, "
        f"{f'{args.tta}-view TTA' if args.tta else 'no TTA'}"
    )
    print(f"scene           : {size}x{size} px, {n_chips} chips, overlap {overlap}px")
    print(f"model-only      : {best_model:8.2f} chips/s")
    print(f"end-to-end      : {best_e2e:8.2f} chips/s  (read -> detect -> merge -> write)")
    print(f"ratio           : {best_e2e / best_model:8.3f}")
    print(f"peak RSS        : {peak_mib:8.0f} MiB (main process)")


if __name__ == "__main__":
    main()
