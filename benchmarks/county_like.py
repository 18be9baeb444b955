"""Detection speed where users run it: a county-like mosaic and real orthophotos, through
the CLI with its defaults, on this machine's CPU (or GPU), with accuracy beside speed.

Sets (``--sets``, comma-separated):

- ``county``: a synthetic county (``geodetect.synth.landscape``: 4 x 5 tiles of 1 km² at
  0.2 m by default, a quarter suburbs with pools, the rest fields, forest, water, roads
  and dense roofs), written once into ``--work`` and reused;
- ``real``: ``../shared/real/sao_paulo/val`` (six 0.2 m sheets, 2.02 km², 255 pools);
- ``ragged``: the same sheets as 500 px tiles kept only over a patchy hold-out area
  (``copy_set.py --tile 500 --hold-out 0.5``): chips over the edge of the data.

Each line: km² of imagery (from the layer's coverage), seconds, km²/min, chips (and how
many the screen skipped, see ``geodetect.detect.screen``), chips/s,
Mpx of imagery per second and Mpx through the network, the runtime ``auto`` chose and
why, AP50, precision, recall and F1 against the set's truth, and the CPU's name and
instruction sets. ``--avx2`` runs as a CPU without AVX-512, bf16 or AMX would
(``ONEDNN_MAX_CPU_ISA=AVX2``, ``--precision fp32``); ``--cold`` empties geodetect's
cache first (the ONNX exports and timings a first run pays for); ``--served`` reads the
same files as URLs from a local HTTP server with range requests (``tests/servers.py``),
as imagery published as Cloud-Optimized GeoTIFFs is read (the network's latency and
bandwidth left out: what reading by HTTP costs in itself).

    python benchmarks/county_like.py --model sp.model --county-model start.model
    python benchmarks/county_like.py --model sp.model --sets real,ragged --avx2 --cold
    python benchmarks/county_like.py --model sp.model --detect-args "--runtime torch"
    python benchmarks/county_like.py --model sp.model --sets real --served

Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "real" / "sao_paulo"
sys.path.insert(0, str(REPO / "benchmarks"))


def cpu() -> dict:
    """The CPU's name, cores and the instruction sets that decide the network's speed."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    sets = {
        "AVX2": "avx2",
        "AVX-512": "avx512f",
        "AVX512-BF16": "avx512_bf16",
        "AVX512-VNNI": "avx512_vnni",
        "AVX-VNNI": "avx_vnni",
        "AMX": "amx_tile",
    }
    return {
        "name": name,
        "cores": len(os.sched_getaffinity(0)),
        "has": [label for label, flag in sets.items() if flag in flags],
        "lacks": [label for label, flag in sets.items() if flag not in flags],
    }


def county_set(work: Path, tiles: str, seed: int) -> tuple[list[Path], Path]:
    """The synthetic county's tiles and truth, written once into ``work``."""
    from geodetect.synth.landscape import synth_landscape

    nx, ny = (int(v) for v in tiles.split("x"))
    folder = work / f"county-{tiles}-seed{seed}"
    truth = folder / "truth.gpkg"
    if not truth.is_file():
        started = time.monotonic()
        synth_landscape(folder, seed=seed, tiles_x=nx, tiles_y=ny, workers=2, overwrite=True)
        print(f"county {tiles} written in {time.monotonic() - started:.0f} s: {folder}")
    return sorted(folder.glob("*.tif")), truth


def ragged_set(work: Path) -> tuple[list[Path], Path]:
    """``val/`` as 500 px tiles over a patchy hold-out area, written once into ``work``."""
    folder = work / "ragged"
    if not (folder / "val" / "pools.gpkg").is_file():
        subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "copy_set.py"), "--out", str(folder),
             "--sets", "val", "--tile", "500", "--hold-out", "0.5", "--data", str(REAL)],
            check=True, capture_output=True,
        )  # fmt: skip
    return sorted((folder / "val").glob("*.tif")), folder / "val" / "pools.gpkg"


def run_detect(images, model: Path, out: Path, args: list[str], env: dict) -> dict:
    """One `geodetect detect` as a user runs it; its wall time and what its log says."""
    cmd = [sys.executable, "-m", "geodetect", "detect", *map(str, images), "--model",
           str(model), "--out", str(out), "--overwrite", "-v", *args]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"failed: {shlex.join(cmd)}")
    log = done.stderr
    chips = re.search(r"from (\d+) chip\(s\) \((\d+) empty(?:.*?([\d.]+) Mpx through)?", log)
    runtime = re.search(r"runtime: (.*)", log)
    screened = re.search(r"(\d+) skipped by the screen", log)
    screen = re.search(r"screen: (\w+)", log)
    coverage = re.search(r"coverage: ([\d.]+) km2", log)
    return {
        "seconds": round(seconds, 1),
        "chips": int(chips.group(1)) if chips else None,
        "chips_empty": int(chips.group(2)) if chips else None,
        "chips_screened": int(screened.group(1)) if screened else 0,
        "screen": screen.group(1) if screen else "off (small run or asked)",
        "network_mpx": float(chips.group(3)) if chips and chips.group(3) else 0.0,
        "km2": float(coverage.group(1)) if coverage else None,
        "runtime": runtime.group(1).strip() if runtime else "torch (small run or asked)",
    }


def score(layer: Path, truth: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "geodetect", "evaluate", str(layer), "--truth", str(truth),
           "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout)
    return {k: result[k] for k in ("ap50", "precision", "recall", "f1", "n_truth")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model for the real sets")
    parser.add_argument(
        "--county-model", type=Path, default=None, help="model for the county (default --model)"
    )
    parser.add_argument("--sets", default="county,real,ragged")
    parser.add_argument("--tiles", default="4x5", help="county tiles, e.g. 4x5 (1 km² each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "geodetect-bench"
    )
    parser.add_argument("--detect-args", default="", help="extra `geodetect detect` options")
    parser.add_argument("--avx2", action="store_true", help="run as a CPU without bf16 would")
    parser.add_argument("--cold", action="store_true", help="empty geodetect's cache first")
    parser.add_argument("--json", action="store_true", help="also print every figure as JSON")
    parser.add_argument("--served", action="store_true", help="read the files over HTTP")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        serve = None
        if args.served:
            sys.path.insert(0, str(REPO / "tests"))
            from servers import file_server

            base, _ = stack.enter_context(file_server(Path("/")))
            serve = lambda paths: [f"{base}{p.resolve()}" for p in paths]  # noqa: E731
        measure(args, serve)


def measure(args, serve) -> None:

    env = dict(os.environ)
    detect_args = shlex.split(args.detect_args)
    if args.avx2:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        detect_args += ["--precision", "fp32"]
    cache = Path(env.setdefault("GEODETECT_CACHE", str(args.work / "cache")))
    if args.cold and cache.exists():
        shutil.rmtree(cache)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = cpu()
    print(
        f"CPU: {machine['name']}, {machine['cores']} cores; has {', '.join(machine['has'])}; "
        f"lacks {', '.join(machine['lacks']) or 'nothing'}"
        + ("; run as AVX2 fp32 (ONEDNN_MAX_CPU_ISA=AVX2)" if args.avx2 else "")
        + ("; files read over HTTP from a local server" if serve else "")
    )
    print(f"detect options: {shlex.join(detect_args) or '(defaults)'}; cache: {cache}")
    figures = {"cpu": machine, "avx2": args.avx2, "detect_args": detect_args, "sets": {}}
    for name in args.sets.split(","):
        model = args.model
        if name == "county":
            images, truth = county_set(args.work, args.tiles, args.seed)
            model = args.county_model or args.model
        elif name == "real":
            images, truth = sorted((REAL / "val").glob("*.tif")), REAL / "val" / "pools.gpkg"
        elif name == "ragged":
            images, truth = ragged_set(args.work)
        else:
            raise SystemExit(f"unknown set {name!r}")
        layer = args.work / f"{name}.gpkg"
        if serve is not None:
            images = serve(images)
        got = run_detect(images, model, layer, detect_args, env)
        got.update(score(layer, truth, env))
        seconds, km2 = got["seconds"], got["km2"] or 0.0
        got["km2_per_min"] = round(km2 / seconds * 60, 2)
        got["chips_per_s"] = round((got["chips"] or 0) / seconds, 2)
        # Imagery read at 0.2 m: 25 Mpx per km².
        got["imagery_mpx_per_s"] = round(km2 * 25 / seconds, 2)
        got["network_mpx_per_s"] = round((got["network_mpx"] or 0) / seconds, 2)
        figures["sets"][name] = got
        print(
            f"{name:7s} {km2:6.2f} km² in {seconds:6.1f} s = {got['km2_per_min']:5.2f} km²/min | "
            f"{got['chips']} chips ({got['chips_empty']} empty, {got['chips_screened']} skipped: "
            f"screen {got['screen']}), {got['chips_per_s']:.2f} chips/s, "
            f"{got['imagery_mpx_per_s']:.2f} Mpx/s of imagery, {got['network_mpx']:.0f} Mpx "
            f"through the network | AP50 {got['ap50']:.3f} P {got['precision']:.3f} "
            f"R {got['recall']:.3f} F1 {got['f1']:.3f} ({got['n_truth']} pools) | "
            f"runtime: {got['runtime']}",
            flush=True,
        )
    if args.json:
        print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
