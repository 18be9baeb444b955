"""Accuracy with fixed seeds and a fixed training budget, on a held-out synthetic mosaic.

Trains on one synthetic suburb, detects over another (a 2x2-file mosaic from another
seed and place), and prints AP50, F1 and the box-centre error. Same workflow as
`geodetect demo`, so the figures describe what a newcomer sees.

    python benchmarks/accuracy.py                    # 8-minute CPU budget, seed 0
    python benchmarks/accuracy.py --minutes 4 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import torch

from geodetect.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=2500, help="training scene, px")
    parser.add_argument("--test-size", type=int, default=2000, help="test mosaic, px")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(
            tmp,
            train_minutes=args.minutes,
            train_size=args.train_size,
            test_size=args.test_size,
            seed=args.seed,
            device=args.device,
            progress=False,
        )
    m = result.metrics
    device = (
        torch.cuda.get_device_name()
        if args.device != "cpu" and torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device            : {device}")
    print(f"budget            : {args.minutes} min training, seed {args.seed}")
    print(f"held-out truth    : {m.n_truth} pools; detections {m.n_detections}")
    print(f"AP50              : {m.ap50:.3f}")
    print(f"AP50:95           : {m.ap50_95:.3f}")
    print(f"precision/recall  : {m.precision:.3f} / {m.recall:.3f}   F1 {m.f1:.3f}")
    print(f"AP75              : {m.ap75:.3f}")
    print(
        f"false alarms      : {m.duplicates} duplicates, {m.extra_boxes} extra boxes, "
        f"{m.loose} loose, {m.background} background"
    )
    centre = "n/a" if m.centre_error_mean_m is None else f"{m.centre_error_mean_m:.3f} m"
    print(
        f"centre error      : {centre} (mean), "
        f"{m.centre_error_median_m or float('nan'):.3f} m (median)"
    )
    print(f"wall time         : {(time.monotonic() - start) / 60:.1f} min")
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))


if __name__ == "__main__":
    main()
