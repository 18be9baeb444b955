"""Real imagery: the user's workflow through the CLI on hand-labelled São Paulo orthophotos.

Trains on ``train/`` with the defaults and a time budget, detects over ``val/`` (0.2 m,
other sheets than training) and over ``native/`` (two of those sheets at the survey's
0.1 m), and scores each layer against its folder's ``pools.gpkg``: AP50, AP50:95,
precision, recall and F1 at the model's saved threshold, the false alarms by kind
(duplicates, extra boxes on found pools, loose boxes, background), AP75 and the matched
pairs' median IoU, centre error,
detection speed in km² per hour, and the training steps the budget bought.

    python benchmarks/real.py                          # 8-minute budget, defaults
    python benchmarks/real.py --model sp.model         # reuse a model, detect only
    python benchmarks/real.py --model sp.model --sets val --detect-args="--tta-views 4"
    python benchmarks/real.py --train-args="--chip-size 256" --keep runs/chip256

The data lives outside the repository (``../shared/real/sao_paulo`` by default; see its
README). Nothing else should run on the machine meanwhile: the budget buys steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from pyproj import Geod
from rasterio.warp import transform

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "real" / "sao_paulo"


def geodetect(*args: str) -> tuple[str, float]:
    """Run the CLI as a user would; returns stdout and wall seconds (raises on failure)."""
    cmd = [sys.executable, "-m", "geodetect", *args]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}")
    return done.stdout, seconds


def area_km2(folder: Path) -> float:
    """Ground area of the folder's rasters (geodesic, so degrees and Web Mercator count
    true square kilometres)."""
    geod = Geod(ellps="WGS84")
    total = 0.0
    for path in sorted(folder.glob("*.tif")):
        with rasterio.open(path) as ds:
            corners = [
                ds.transform * xy
                for xy in ((0, 0), (ds.width, 0), (ds.width, ds.height), (0, ds.height))
            ]
            lons, lats = transform(ds.crs, "EPSG:4326", *zip(*corners, strict=True))
        total += abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
    return total


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(detect_args: list[str]) -> str:
    import torch

    if "cpu" not in detect_args and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train this many seeded steps instead of a time budget (a busy machine "
        "then gives the same model, only slower)",
    )
    parser.add_argument("--model", type=Path, default=None, help="skip training; use this")
    parser.add_argument("--train-args", default="", help="extra `geodetect train` options")
    parser.add_argument("--detect-args", default="", help="extra `geodetect detect` options")
    parser.add_argument("--sets", default="val,native", help="folders to detect over")
    parser.add_argument("--keep", type=Path, default=None, help="keep model and layers here")
    parser.add_argument("--json", action="store_true", help="also print all figures as JSON")
    return parser


def measure(args: argparse.Namespace) -> tuple[dict, Path]:
    """Train (unless ``args.model``), detect over each set and score; returns the
    figures and the folder holding the model and layers."""
    if args.model is None and not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: no train/ folder; see ../shared/real/README.md")
    detect_args = shlex.split(args.detect_args)
    out = args.keep or Path(tempfile.mkdtemp(prefix="geodetect-real-"))
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"device": device_name(detect_args)}

    model = args.model
    if model is None:
        model = out / "sp.model"
        stdout, seconds = geodetect(
            "train",
            *map(str, sorted((args.data / "train").glob("*.tif"))),
            "--labels",
            str(args.data / "train" / "pools.gpkg"),
            "--out",
            str(model),
            *(
                ("--max-minutes", f"{args.minutes:g}")
                if args.steps is None
                else ("--steps", str(args.steps))
            ),
            "--overwrite",
            "-q",
            *shlex.split(args.train_args),
        )
        figures["train_minutes"] = round(seconds / 60, 2)
    info = json.loads(geodetect("info", str(model), "--json")[0])
    training = info.get("training", {})
    figures["model"] = {
        "chip_size": info.get("chip_size"),
        "gsd": info.get("gsd"),
        "typical_object_px": info.get("typical_object_px"),
        "score_threshold": info.get("score_threshold"),
        "steps": training.get("steps"),
        "epochs": training.get("epochs"),
        "val_chip_ap50": training.get("val_map_50"),
        "backbone": f"{info.get('backbone')}/{info.get('preset')}",
        "start": training.get("start"),
    }

    for name in args.sets.split(","):
        folder = args.data / name
        layer = out / f"{name}.gpkg"
        _, seconds = geodetect(
            "detect",
            *map(str, sorted(folder.glob("*.tif"))),
            "--model",
            str(model),
            "--out",
            str(layer),
            "--overwrite",
            "-q",
            *detect_args,
        )
        scores = json.loads(
            geodetect("evaluate", str(layer), "--truth", str(folder / "pools.gpkg"), "--json")[0]
        )
        km2 = area_km2(folder)
        figures[name] = {
            "ap50": scores["ap50"],
            "ap50_95": scores["ap50_95"],
            "ap75": scores["ap75"],
            "matched_iou_median": scores["matched_iou_median"],
            "precision": scores["precision"],
            "recall": scores["recall"],
            "f1": scores["f1"],
            "duplicates": scores["duplicates"],
            "extra_boxes": scores["extra_boxes"],
            "loose": scores["loose"],
            "background": scores["background"],
            "n_truth": scores["n_truth"],
            "n_detections": scores["n_detections"],
            "centre_error_m": scores["centre_error_mean_m"],
            "detect_seconds": round(seconds, 1),
            "km2": round(km2, 3),
            "km2_per_hour": round(km2 / seconds * 3600, 1),
        }
    return figures, out


def main() -> None:
    args = parser().parse_args()
    figures, out = measure(args)

    m = figures["model"]
    print(f"device           : {figures['device']}")
    print(f"detect options   : {args.detect_args or '(defaults)'}")
    if "train_minutes" in figures:
        budget = f"{args.minutes:g} min budget" if args.steps is None else f"{args.steps} steps"
        print(
            f"training         : {budget} {args.train_args or '(defaults)'}"
            f" -> {figures['train_minutes']} min wall"
        )
    typical = m["typical_object_px"]
    print(
        f"model            : {m['backbone']}, {m['chip_size']} px chips at {m['gsd']} m, "
        f"typical object {'n/a' if typical is None else f'{typical:.0f}'} px, "
        f"{m['steps']} steps / {m['epochs']} epochs, threshold {m['score_threshold']}"
    )
    for name in args.sets.split(","):
        f = figures[name]
        centre = "n/a" if f["centre_error_m"] is None else f"{f['centre_error_m']:.2f} m"
        iou = f["matched_iou_median"]
        print(
            f"{name:<17}: AP50 {f['ap50']:.3f}  AP75 {f['ap75']:.3f}  "
            f"AP50:95 {f['ap50_95']:.3f}  P {f['precision']:.3f}  R {f['recall']:.3f}  "
            f"F1 {f['f1']:.3f}  ({f['n_detections']} found / {f['n_truth']} pools)"
        )
        print(
            f"{'':<17}  false alarms: dup {f['duplicates']}  extra {f['extra_boxes']}  "
            f"loose {f['loose']}  background {f['background']}; matched IoU median "
            f"{'n/a' if iou is None else f'{iou:.3f}'}, centre {centre}"
        )
        print(
            f"{'':<17}  detect {f['detect_seconds']:.0f} s for {f['km2']:.2f} km2 = "
            f"{f['km2_per_hour']:.0f} km2/h ({f['km2_per_hour'] / 60:.2f} km2/min)"
        )
    if args.json:
        print(json.dumps(figures, indent=2))
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
