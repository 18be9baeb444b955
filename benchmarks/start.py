"""What a synthetic start is worth against what it costs, on real imagery.

For each recipe length (seeded steps on the synthetic suburb), builds the start in a
private torch cache, timing it, then runs ``benchmarks/real.py``'s workflow from it:
train on São Paulo's ``train/`` sheets, detect over ``val/`` with the defaults, score.
A row with 0 steps is the cold start (``--start none``).

    python benchmarks/start.py --start-steps 0,400,800,1600,3200 --steps 2800
    python benchmarks/start.py --start-steps 2000 --confusers --steps 800 --sets val

``--steps`` trains the real run for a fixed number of steps (what an 8-minute budget
buys on the machine in ``benchmarks/README.md``), so the rows differ only by their
start; ``--minutes 8`` uses a time budget instead, as a user would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real  # noqa: E402


def main() -> None:
    parser = real.parser()
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--start-steps", default="0,400,800,1600,3200")
    parser.add_argument(
        "--confusers",
        action="store_true",
        help="draw the suburb with sports courts and solar panels (synth --confusers)",
    )
    parser.add_argument(
        "--hard-examples", action="store_true", help="mine the suburb for false alarms"
    )
    args = parser.parse_args()
    keep = args.keep
    rows = []
    for steps in [int(s) for s in args.start_steps.split(",")]:
        with tempfile.TemporaryDirectory(prefix="geodetect-start-bench-") as cache:
            os.environ["TORCH_HOME"] = cache  # the CLI runs in child processes
            import torch

            torch.hub.set_dir(str(Path(cache) / "hub"))
            build_minutes = 0.0
            run = argparse.Namespace(**vars(args))
            if steps:
                from geodetect.train.run import build_synthetic_start
                from geodetect.train.start import StartRecipe

                began = time.monotonic()
                path = build_synthetic_start(
                    StartRecipe(
                        steps=steps,
                        confusers=args.confusers,
                        hard_examples=args.hard_examples,
                    ),
                    progress=False,
                )
                build_minutes = (time.monotonic() - began) / 60
                run.train_args = f"{args.train_args} --init {path}"
            else:
                run.train_args = f"{args.train_args} --start none"
            run.keep = None if keep is None else keep / f"start{steps}"
            figures, _ = real.measure(run)
        val = figures["val"]
        rows.append((steps, build_minutes, figures["model"]["steps"], val))
        print(
            f"start {steps:>5} steps ({build_minutes:4.1f} min): "
            f"AP50 {val['ap50']:.3f} AP75 {val['ap75']:.3f} F1 {val['f1']:.3f} "
            f"P {val['precision']:.3f} R {val['recall']:.3f} dup {val['duplicates']} "
            f"extra {val['extra_boxes']} loose {val['loose']} bg {val['background']} "
            f"IoU {val['matched_iou_median']:.3f}",
            flush=True,
        )
    print(f"device: {figures['device']}")
    print(
        "| start steps | build min | real steps | AP50 | AP75 | F1 | P | R | dup | extra "
        "| loose | background | matched IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for steps, minutes, trained, v in rows:
        print(
            f"| {steps} | {minutes:.1f} | {trained} | {v['ap50']:.3f} | {v['ap75']:.3f} | "
            f"{v['f1']:.3f} | {v['precision']:.3f} | {v['recall']:.3f} | {v['duplicates']} | "
            f"{v['extra_boxes']} | {v['loose']} | {v['background']} | "
            f"{v['matched_iou_median']:.3f} |"
        )


if __name__ == "__main__":
    main()
