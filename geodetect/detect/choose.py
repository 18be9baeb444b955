"""Choosing a detection run's runtime: the one asked for, or on ``auto`` the fastest on
this machine for this model, measured once and remembered.

The candidates on a CPU are torch (fp32, or bf16 where the CPU computes it natively),
ONNX Runtime fp32 and ONNX Runtime int8. Which is fastest depends on the CPU's
instructions (AVX2, AVX-512, VNNI, AMX) more than on anything a rule could read off
it, so ``auto`` times each on a few real chips of the run the first time a machine
meets a model at a chip size and batch size, and writes the figures to
``runtimes.json`` in geodetect's cache; later runs read them. The int8 network must
also agree with the fp32 one on those chips (:data:`MIN_AGREEMENT`) before ``auto``
takes it. On a GPU, ``auto`` is torch.

The int8 network is calibrated on chips of the run's own imagery, spread evenly over
its plan (:func:`sample_chips`), and kept in the cache under a name that says which
chips calibrated it, so a rerun of the same inputs gets the very same network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geodetect.detect.plan import Plan, RunConfig
from geodetect.detect.runner import ChipReader, Normaliser
from geodetect.errors import InputError
from geodetect.model import LoadedModel
from geodetect.model.device import cpu_has_native_bf16
from geodetect.model.runtime import Decoding, RuntimeChoice

log = logging.getLogger(__name__)

# The smallest run for which ``auto`` leaves torch: exporting (about 10 s once per
# model) and, the first time, measuring the candidates (about a minute) must pay off.
ONNX_MIN_CHIPS = 256
#: Chips that calibrate an int8 network, and on which candidates are timed.
CALIBRATION_CHIPS = 16
#: Share of the fp32 network's detections on the sample chips that the int8 one must
#: find too (IoU >= 0.5, same class), and the other way round, for ``auto`` to use it.
MIN_AGREEMENT = 0.9
# Bumped when what is measured changes, so older figures are measured again.
MEASURE_VERSION = 1


@dataclass(frozen=True)
class Sample:
    """Normalised chips of the run's imagery: FloatTensor[N, C, S, S]."""

    chips: torch.Tensor

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.chips.numpy().tobytes()).hexdigest()
        return digest[:12]


def sample_chips(plan: Plan, scaling, n: int = CALIBRATION_CHIPS) -> Sample:
    """Up to ``n`` chips holding data, spread evenly over the plan in its order (the same
    chips for the same inputs and settings), normalised as the network reads them."""
    reader = ChipReader(plan.grids)
    picked: list[torch.Tensor] = []
    try:
        everything = [(b.grid, c) for b in plan.blocks for c in plan.chips(b)]
        # Every k-th chip first, then the ones between, until n hold data.
        stride = max(1, len(everything) // n)
        order = [i for offset in range(stride) for i in range(offset, len(everything), stride)]
        for i in order:
            grid, chip = everything[i]
            item = reader.read(grid, chip)
            if item.data is None:
                continue
            mean, std = scaling[grid]
            raw = torch.from_numpy(np.ascontiguousarray(item.data))[None]
            picked.append(Normaliser(mean, std, torch.device("cpu"))(raw)[0])
            if len(picked) == n:
                break
    finally:
        reader.close()
    if not picked:
        raise InputError("no chip of the inputs holds data to calibrate or time a runtime")
    return Sample(torch.stack(picked))


def choose_runtime(
    asked: str,
    loaded: LoadedModel,
    device: torch.device,
    config: RunConfig,
    plan: Plan,
    scaling,
    *,
    compile: bool = False,
) -> RuntimeChoice:
    """The runtime for this run: ``asked`` (``torch``, ``onnxruntime`` or ``int8``) with
    its network prepared, or on ``auto`` the fastest measured here (see the module).

    Raises:
        InputError: ONNX Runtime asked for where it cannot run.
    """
    torch_choice = RuntimeChoice("torch", precision=config.precision, compile=compile)
    if asked == "torch":
        return torch_choice
    if asked in ("onnxruntime", "int8"):
        _check_onnx(asked, device, loaded)
        return _prepared(asked, loaded, config, plan, scaling)
    if not _onnx_worthwhile(loaded, device, plan, compile):
        return torch_choice
    figures = measured(loaded, device, config, plan, scaling, torch_choice)
    speeds = {k: figures[k] for k in ("torch", "onnxruntime", "int8") if k in figures}
    if figures.get("agreement", 0.0) < MIN_AGREEMENT:
        speeds.pop("int8", None)
    best = max(speeds, key=speeds.get)
    log.info(
        "runtime: %s, the fastest here for this model (%s chips/s of %d px; measured %s on %s%s)",
        {"torch": torch_choice.describe(), "onnxruntime": "ONNX Runtime fp32"}.get(
            best, "ONNX Runtime int8"
        ),
        ", ".join(f"{k} {v:.1f}" for k, v in figures.items() if k in RATE_KEYS),
        config.chip_size,
        figures["measured"],
        figures["cpu"],
        ""
        if "int8" not in figures
        else f"; int8 agrees with fp32 on {figures['agreement']:.0%} of the sample's boxes",
    )
    if best == "torch":
        return torch_choice
    return _prepared(best, loaded, config, plan, scaling)


RATE_KEYS = ("torch", "onnxruntime", "int8")


def _check_onnx(kind: str, device: torch.device, loaded: LoadedModel) -> None:
    from torchvision.models.detection import RetinaNet

    from geodetect.model.onnx import onnx_available

    if device.type != "cpu":
        raise InputError(f"--runtime {kind} runs on the CPU; pass --device cpu")
    if not onnx_available():
        raise InputError(
            f"--runtime {kind} needs onnx, onnxruntime and onnxscript: "
            "pip install 'geodetect[onnx]'"
        )
    if not isinstance(loaded.model, RetinaNet):
        raise InputError(f"--runtime {kind}: this network cannot be exported to ONNX")


def _onnx_worthwhile(loaded: LoadedModel, device: torch.device, plan: Plan, compile: bool):
    from torchvision.models.detection import RetinaNet

    from geodetect.model.onnx import onnx_available

    return (
        device.type == "cpu"
        and not compile
        and isinstance(loaded.model, RetinaNet)
        and plan.chips_total >= ONNX_MIN_CHIPS
        and onnx_available()
    )


def _prepared(kind: str, loaded: LoadedModel, config: RunConfig, plan: Plan, scaling):
    """The ONNX Runtime choice of ``kind`` with its network in the cache."""
    from geodetect.model.onnx import cached_export

    fp32 = cached_export(loaded, config.chip_size)
    if kind == "onnxruntime":
        return RuntimeChoice("onnxruntime", onnx_path=str(fp32))
    return RuntimeChoice("int8", onnx_path=str(cached_int8(loaded, config, plan, scaling)))


def cached_int8(loaded: LoadedModel, config: RunConfig, plan: Plan, scaling) -> Path:
    """The int8 network of ``loaded`` calibrated on :func:`sample_chips` of the run,
    quantised into the cache the first time."""
    from geodetect.model.onnx import cache_dir, cached_export, make_cache_dir
    from geodetect.model.quantize import quantize_int8

    sample = sample_chips(plan, scaling)
    folder = cache_dir()
    path = folder / f"{loaded.model_id}-{config.chip_size}px-int8-{sample.id}.onnx"
    if path.is_file():
        return path
    make_cache_dir(folder)
    started = time.monotonic()
    fp32 = cached_export(loaded, config.chip_size)
    quantize_int8(fp32, path, list(sample.chips.numpy()))
    log.info(
        "quantised the network to int8 on %d chips of the inputs in %.0f s: %s",
        len(sample.chips),
        time.monotonic() - started,
        path,
    )
    return path


def _machine() -> dict:
    """What decides which runtime is fastest here: the CPU, its instruction sets and
    the threads the network gets."""
    flags = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    return {
        "cpu": name,
        "flags": [f for f in wanted if f in flags],
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
    }


def cpu_description() -> str:
    """The CPU's name and the instruction sets that decide the runtimes' speeds."""
    machine = _machine()
    return f"{machine['cpu']} ({', '.join(machine['flags']) or 'no AVX2'})"


def measured(
    loaded: LoadedModel,
    device: torch.device,
    config: RunConfig,
    plan: Plan,
    scaling,
    torch_choice: RuntimeChoice,
) -> dict:
    """The candidates' chips/s here (remembered in ``runtimes.json``; measured the first
    time, on :func:`sample_chips` of the run)."""
    import onnxruntime

    from geodetect.model.onnx import cache_dir

    machine = _machine()
    key_parts = {
        **machine,
        "model": loaded.model_id,
        "chip": config.chip_size,
        "batch": config.batch_size,
        "precision": config.precision,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "version": MEASURE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    store = cache_dir().parent / "runtimes.json"
    known = _read_store(store)
    if key in known:
        return known[key]
    log.info(
        "timing torch, ONNX Runtime fp32 and int8 on this CPU for this model (once per "
        "machine and model; about a minute)"
    )
    sample = sample_chips(plan, scaling)
    figures: dict = {"cpu": cpu_description(), "measured": time.strftime("%Y-%m-%d")}
    decoding = Decoding.of(loaded.spec, threshold=config.threshold, nms_iou=config.nms_iou)
    answers = {}
    for kind in RATE_KEYS:
        choice = torch_choice if kind == "torch" else _prepared(kind, loaded, config, plan, scaling)
        runtime = choice.build(loaded, device, config.chip_size)
        figures[kind], answers[kind] = _rate(runtime, sample.chips, config.batch_size, decoding)
    figures["agreement"] = _agreement(answers["onnxruntime"], answers["int8"])
    known[key] = figures
    _write_store(store, known)
    return figures


def _rate(runtime, chips: torch.Tensor, batch_size: int, decoding: Decoding):
    """Chips/s of ``runtime`` over ``chips`` in batches (after one warm-up batch), and
    its detections."""
    batches = list(chips.split(batch_size))
    runtime.detect(batches[0], decoding)  # warm-up: first-call allocations, kernels
    started = time.perf_counter()
    answers = [d for batch in batches for d in runtime.detect(batch, decoding)]
    return len(chips) / (time.perf_counter() - started), answers


def _agreement(reference: list[dict], other: list[dict]) -> float:
    """The smaller of the shares of each side's boxes that the other finds (IoU >= 0.5,
    same class), over all chips; 1 when neither finds anything."""
    from torchvision.ops import box_iou

    found = [0, 0]
    total = [0, 0]
    for a, b in zip(reference, other, strict=True):
        for side, (x, y) in enumerate(((a, b), (b, a))):
            total[side] += len(x["boxes"])
            if len(x["boxes"]) and len(y["boxes"]):
                iou = box_iou(x["boxes"], y["boxes"])
                same = x["labels"][:, None] == y["labels"][None, :]
                found[side] += int(((iou >= 0.5) & same).any(dim=1).sum())
    shares = [f / t for f, t in zip(found, total, strict=True) if t]
    return min(shares, default=1.0)


def _read_store(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_store(path: Path, data: dict) -> None:
    """Write the figures atomically; a cache that cannot be written only costs a
    measurement next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".runtimes.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not remember the runtime timings in %s (%s)", path, exc.strerror)
