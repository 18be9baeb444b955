"""Detection throughput, in one run on the same chips: reader alone, model alone,
end-to-end (read -> detect -> merge -> write), their ratios, peak RSS, the device, and
km² per hour at 0.15 m and 0.3 m.

- **reader alone**: this process reads every chip of the plan (one core), as a reader
  process does; chips/s per core.
- **model alone**: the chips, already read and batched in memory, through what the
  device does per batch (copy, normalise, network with its post-processing, boxes back
  to the host); chips/s.
- **end-to-end**: `geodetect.detect.detect(..., out=FILE)` with the default options
  (reader processes, blocks, journal in memory, streamed merge and write); chips/s over
  the plan's chips, start-up included.

    .venv/bin/python benchmarks/throughput.py --model sp.model \
        --images ../shared/real/sao_paulo/val/*.tif            # the figures in README
    .venv/bin/python benchmarks/throughput.py                 # untrained lite R18, synthetic
                                          # (16k² px: ~1,600 chips, ~6 min on 2 cores)
    .venv/bin/python benchmarks/throughput.py --device cuda --backbone resnet50 \
        --preset standard --batch-size 64 --size 12000         # a GPU, R50, 512 px chips

Without ``--model`` the network is an untrained one (random heads find almost nothing,
so post-processing costs less than with a trained model) over a textured synthetic scene.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from geodetect.detect import DetectOptions, detect, prepare
from geodetect.detect.runner import ChipReader, Detector, stack
from geodetect.model import (
    LoadedModel,
    ModelSpec,
    autocast_dtype,
    build_retinanet,
    load_model,
    resolve_device,
)
from geodetect.model.device import PRECISIONS
from geodetect.model.runtime import RuntimeChoice
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores, {torch.get_num_threads()} torch threads)"


def write_scene(path: Path, size: int, gsd: float, seed: int = 0) -> None:
    """A textured RGB scene (blocky noise, not flat) as a tiled DEFLATE GeoTIFF."""
    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32617",
        transform=Affine(gsd, 0, 500000, 0, -gsd, 3300000), tiled=True, blockxsize=256,
        blockysize=256, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            coarse = rng.integers(0, 255, size=(3, h // 16 + 1, size // 16 + 1), dtype=np.uint8)
            image = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :h, :size]
            noise = rng.integers(0, 128, size=image.shape, dtype=np.uint8)
            dst.write(image // 2 + noise, window=((row, row + h), (0, size)))


def untrained(args) -> LoadedModel:
    channels, convs = preset_widths(args.preset)
    spec = ModelSpec(
        classes=["pool"], band_mean=[120.0] * 3, band_std=[60.0] * 3, chip_size=512,
        backbone=args.backbone, preset=args.preset, fpn_channels=channels, head_convs=convs,
        gsd=0.3, max_object_px=48, typical_object_px=40,
    )  # fmt: skip
    torch.manual_seed(0)
    net = build_retinanet(spec, pretrained="none").eval()
    return LoadedModel(net, spec, "untrained", Path("-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file (default: an untrained network)")
    parser.add_argument("--images", nargs="+", help="rasters (default: a synthetic scene)")
    parser.add_argument("--size", type=int, default=16384, help="synthetic scene side, px")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=None, help="default: detect's")
    parser.add_argument("--workers", type=int, default=None, help="default: detect's")
    parser.add_argument("--compile", action="store_true", help="detect(..., compile=True)")
    parser.add_argument("--repeats", type=int, default=2, help="model and e2e: best of N")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also model alone in fp32, compiled, and in ONNX Runtime fp32 and int8 (same "
        "chips; boxes compared)",
    )
    args = parser.parse_args()

    dev = resolve_device(args.device)
    loaded = load_model(args.model, device=dev) if args.model else untrained(args)
    spec = loaded.spec
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            inputs = [str(p) for p in args.images]
        else:
            scene = Path(tmp) / "scene.tif"
            write_scene(scene, args.size, spec.gsd or 0.3)
            inputs = [str(scene)]
        options = DetectOptions(
            batch_size=args.batch_size,
            device=str(dev),
            precision=args.precision,
            workers=args.workers,
            compile=args.compile,
        )
        prepared = prepare(inputs, loaded, options)  # the plan detect() runs
        plan, config, scaling = prepared.plan, prepared.config, prepared.scaling
        chip, batch_size = config.chip_size, config.batch_size
        chips = [(b.grid, c) for b in plan.blocks for c in plan.chips(b)]

        # End-to-end with the defaults, written to a GeoPackage; first, so that its peak
        # memory is its own (the measurements below hold every chip in memory).
        e2e_s = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            detect(
                inputs, loaded, options, progress=False, out=Path(tmp) / "out.gpkg", overwrite=True
            )
            e2e_s.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        # Reader alone: one process, every chip of the plan in block order.
        reader = ChipReader(plan.grids)
        start = time.perf_counter()
        read = [reader.read(g, c) for g, c in chips]
        reader_s = time.perf_counter() - start
        reader.close()
        full = [c for c in read if c.data is not None]

        # Model alone: the same chips from memory through the device side of a batch.
        batches = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
        tensors = [stack(b) for b in batches]

        def model_alone(detector: Detector) -> tuple[float, list[dict]]:
            """Best-of-N seconds over every batch, and the detections of the last pass."""
            detector.network(batches[0], tensors[0])  # warm-up: allocator, cuDNN, compiling
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs = [detector.network(b, t) for b, t in zip(batches, tensors, strict=True)]
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
            return min(seconds), [o for batch in outputs for o in batch]

        def build(**changes) -> Detector:
            return Detector.build(loaded, plan.grids, replace(config, **changes), dev, scaling)

        model_s, default_out = model_alone(build(runtime=config.runtime))
        variants = []
        if args.compare:
            variants = compare(
                args, loaded, build, model_alone, default_out, Path(tmp), chip, plan, scaling
            )

    n = len(chips)
    stride = config.chip_size - config.overlap
    reader_rate, model_rate, e2e_rate = n / reader_s, len(full) / model_s, n / min(e2e_s)
    amp = autocast_dtype(dev, args.precision)
    print(f"device        : {device_name(dev)}")
    print(
        f"model         : {spec.backbone} {spec.preset} ({loaded.model_id}), chips "
        f"{config.chip_size} px, overlap {config.overlap} px, batch {batch_size}, "
        f"{'bf16 autocast' if amp else 'fp32'}{', compiled' if args.compile else ''}"
    )
    print(f"chips         : {n} ({len(full)} with data) over {len(plan.grids)} grid(s)")
    print(f"reader alone  : {reader_rate:8.2f} chips/s per core")
    print(f"model alone   : {model_rate:8.2f} chips/s (best of {args.repeats})")
    print(f"end-to-end    : {e2e_rate:8.2f} chips/s (read -> detect -> merge -> write; best)")
    print(f"e2e / model   : {e2e_rate / model_rate:8.3f}")
    print(f"reader / model: {reader_rate / model_rate:8.3f} (one reader core per model)")
    for gsd in (0.15, 0.3):
        km2_h = e2e_rate * 3600 * (stride * gsd) ** 2 / 1e6
        print(f"at {gsd:4.2f} m     : {km2_h:8.1f} km²/h end-to-end")
    print(f"peak RSS, e2e : {peak:8.0f} MiB main, {peak_children:.0f} MiB largest reader")
    for name, seconds, difference in variants:
        rate = len(full) / seconds
        ratio = rate / model_rate
        print(f"model alone, {name:<26}: {rate:7.2f} chips/s ({ratio:5.2f}x), {difference}")


def differences(a: list[dict], b: list[dict]) -> str:
    """How far two runs' detections of the same chips lie apart."""
    counts = [len(x["boxes"]) for x in a], [len(x["boxes"]) for x in b]
    if counts[0] != counts[1]:
        return f"different detections ({sum(counts[0])} vs {sum(counts[1])})"
    worst = 0.0
    for x, y in zip(a, b, strict=True):  # each chip's boxes in one order (scores may tie)
        bx, by = (d["boxes"][np.lexsort(d["boxes"].T[::-1])] for d in (x, y))
        worst = max(worst, float(np.abs(bx - by).max(initial=0)))
    return f"same detections, boxes within {worst:.2g} px"


def compare(
    args, loaded, build, model_alone, default_out, tmp: Path, chip: int, plan, scaling
) -> list:
    """Model alone in other ways on the same chips: (name, seconds, boxes against the
    reference)."""

    rows = []
    fp32 = RuntimeChoice("torch", precision="fp32")
    fp32_s, fp32_out = model_alone(build(precision="fp32", runtime=fp32))
    rows.append(("fp32 (reference for ONNX)", fp32_s, differences(fp32_out, default_out)))
    start = time.perf_counter()
    compiled = RuntimeChoice("torch", precision=args.precision, compile=True)
    seconds, out = model_alone(build(runtime=compiled))
    print(f"(torch.compile took {time.perf_counter() - start - seconds * args.repeats:.0f} s)")
    rows.append(("torch.compile", seconds, differences(out, default_out)))
    try:
        from geodetect.detect.choose import LazySample, cached_int8
        from geodetect.model.onnx import export_onnx
    except ImportError as exc:
        rows.append(("ONNX Runtime", float("nan"), f"not measured ({exc})"))
        return rows
    path = tmp / "model.onnx"
    export_onnx(loaded, path, chip_size=chip)
    ort = RuntimeChoice("onnxruntime", onnx_path=str(path))
    seconds, out = model_alone(build(precision="fp32", runtime=ort))
    rows.append(("ONNX Runtime fp32", seconds, differences(out, fp32_out) + " of torch fp32"))
    sample = LazySample(loaded, chip, plan, scaling).get()
    int8 = RuntimeChoice("int8", onnx_path=str(cached_int8(loaded, sample)))
    seconds, out = model_alone(build(precision="fp32", runtime=int8))
    rows.append(("ONNX Runtime int8", seconds, differences(out, fp32_out) + " of torch fp32"))
    return rows


if __name__ == "__main__":
    main()
