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

The int8 network is calibrated on the chips its model file keeps from training (windows
of the validation area, see :mod:`geodetect.train.calibration`), so it is a function of
the model alone; a model file without them (older, or saved from the notebook) is
calibrated on chips of the run's own imagery, spread evenly over its plan
(:func:`sample_chips`). The network is kept in the cache under a name that says which
chips calibrated it, and the same chips are what the candidates are timed on.
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
from geodetect.model.device import autocast_dtype, cpu_has_native_bf16
from geodetect.model.runtime import Decoding, RuntimeChoice

log = logging.getLogger(__name__)

# The smallest run for which ``auto`` times the runtimes when nothing has timed them for
# this model here yet: exporting, quantising and timing must pay off. (``train`` times
# them for the model it writes.)
ONNX_MIN_CHIPS = 256
#: Chips that calibrate an int8 network, and on which candidates are timed.
CALIBRATION_CHIPS = 16
#: Share of the fp32 network's detections on the sample chips that the int8 one must
#: find too (IoU >= 0.5, same class, score within MAX_SCORE_GAP), and the other way
#: round, for ``auto`` to use it; compared at AGREEMENT_SCORE, low enough that every
#: sample holds boxes to compare.
MIN_AGREEMENT = 0.9
MAX_SCORE_GAP = 0.1
AGREEMENT_SCORE = 0.05
# The runtimes ``auto`` times on a CPU, by their names in runtimes.json.
RATE_KEYS = ("torch", "onnxruntime", "int8")
# Bumped when what is measured changes, so older figures are measured again.
MEASURE_VERSION = 2


@dataclass(frozen=True)
class Sample:
    """Normalised chips of the run's imagery: FloatTensor[N, C, S, S]."""

    chips: torch.Tensor

    @property
    def id(self) -> str:
        digest = hashlib.sha256(self.chips.numpy().tobytes()).hexdigest()
        return digest[:12]


def model_sample(loaded: LoadedModel, chip_size: int) -> Sample | None:
    """The model's own calibration chips (see the module) as ``chip_size`` chips,
    normalised: each tiled from as many kept chips as it takes to cover it (kept chips
    are smaller than detection's); None where the model file keeps none."""
    kept = loaded.calibration
    if kept is None or not len(kept):
        return None
    side = kept.shape[-1]
    per = -(-chip_size // side)
    inputs = []
    # CALIBRATION_CHIPS inputs, each of the next per x per kept chips in turn (so each
    # is used about as often, in other places), enough to time a few batches on.
    for n in range(CALIBRATION_CHIPS):
        tiles = [kept[(n * per * per + i + n // len(kept)) % len(kept)] for i in range(per * per)]
        rows = [torch.cat(tiles[r * per : (r + 1) * per], dim=-1) for r in range(per)]
        inputs.append(torch.cat(rows, dim=-2)[..., :chip_size, :chip_size])
    spec = loaded.spec
    normalise = Normaliser(spec.band_mean, spec.band_std, torch.device("cpu"))
    return Sample(normalise(torch.stack(inputs)))


def sample_chips(plan: Plan, scaling, n: int = CALIBRATION_CHIPS) -> Sample:
    """Up to ``n`` chips holding data, spread evenly over the plan's blocks (a few
    chips from each of up to ``n`` blocks; the same chips for the same inputs and
    settings), normalised as the network reads them. Only the chosen blocks' chips are
    listed, so a county's plan costs no more than a scene's."""
    reader = ChipReader(plan.grids)
    picked: list[torch.Tensor] = []
    blocks = [plan.blocks[int(i)] for i in np.linspace(0, len(plan.blocks) - 1, n).round()]
    try:
        for round_ in range(n):  # the round-th chip of each block, then the next
            for block in dict.fromkeys(blocks):
                chips = plan.chips(block)
                if round_ >= len(chips) or len(picked) == n:
                    continue
                # A walk over the block from its middle that visits each chip once.
                item = reader.read(
                    block.grid, chips[(len(chips) // 2 + round_ * 7919) % len(chips)]
                )
                if item.data is None:
                    continue
                mean, std = scaling[block.grid]
                raw = torch.from_numpy(np.ascontiguousarray(item.data))[None]
                picked.append(Normaliser(mean, std, torch.device("cpu"))(raw)[0])
            if len(picked) == n:
                break
    finally:
        reader.close()
    if not picked:
        raise InputError("no chip of the inputs holds data to calibrate or time a runtime")
    return Sample(torch.stack(picked))


class LazySample:
    """What an int8 network is calibrated on and runtimes are timed on, read when first
    needed: the model's own chips, else chips of the run (see the module)."""

    def __init__(self, loaded: LoadedModel, chip_size: int, plan: Plan | None, scaling) -> None:
        self.loaded, self.chip_size, self.plan, self.scaling = loaded, chip_size, plan, scaling
        self._sample: Sample | None = None

    def get(self) -> Sample:
        if self._sample is None:
            self._sample = model_sample(self.loaded, self.chip_size)
        if self._sample is None:
            if self.plan is None:
                raise InputError(
                    f"{self.loaded.path}: the model file keeps no calibration chips; "
                    "detect over imagery to calibrate and time its runtimes"
                )
            self._sample = sample_chips(self.plan, self.scaling)
        return self._sample


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
    sample = LazySample(loaded, config.chip_size, plan, scaling)
    if asked in ("onnxruntime", "int8"):
        _check_onnx(asked, device, loaded)
        return _prepared(asked, loaded, config.chip_size, sample)
    if not _onnx_worthwhile(loaded, device, compile):
        return torch_choice
    # A small run is not worth timing for, but uses what an earlier run or `train` timed.
    small = plan.chips_total < ONNX_MIN_CHIPS
    figures = measured(loaded, device, config, sample, torch_choice, only_known=small)
    if figures is None:
        return torch_choice
    best = fastest(figures)
    log.info("runtime: %s", explain(best, figures, torch_choice, config.chip_size))
    if best == "torch":
        return torch_choice
    return _prepared(best, loaded, config.chip_size, sample)


def fastest(figures: dict) -> str:
    """The fastest runtime of measured ``figures``; int8 only where it agrees with fp32."""
    speeds = {k: figures[k] for k in RATE_KEYS if k in figures}
    if figures.get("agreement", 0.0) < MIN_AGREEMENT:
        speeds.pop("int8", None)
    return max(speeds, key=speeds.get)


def explain(best: str, figures: dict, torch_choice: RuntimeChoice, chip_size: int) -> str:
    """What was picked and why, in one line for the log."""
    names = {"torch": torch_choice.describe(), "onnxruntime": "ONNX Runtime fp32"}
    rates = ", ".join(f"{k} {figures[k]:.1f}" for k in RATE_KEYS if k in figures)
    agreement = (
        f"; int8 finds {figures['agreement']:.0%} of fp32's boxes on the sample and fp32 "
        "as many of its"
        if "int8" in figures
        else ""
    )
    return (
        f"{names.get(best, 'ONNX Runtime int8')}, the fastest here for this model ({rates} "
        f"chips/s of {chip_size} px, measured {figures['measured']} on {figures['cpu']}"
        f"{agreement})"
    )


def warm_up(model_path, *, device: str = "auto") -> str | None:
    """Prepare detection with ``model_path`` on this machine as ``detect``'s defaults
    will run it: export and quantise the network into the cache and time the runtimes,
    so that the first ``detect`` pays for none of it. Returns what ``auto`` will pick and
    why, or None where it would pick torch without measuring (a GPU, no onnx extra, a
    model file without calibration chips)."""
    from geodetect.detect.options import DetectOptions
    from geodetect.detect.prepare import run_config
    from geodetect.model import load_model, resolve_device

    where = resolve_device(device)
    loaded = load_model(model_path, device=where)
    if loaded.calibration is None or not _onnx_worthwhile(loaded, where, False):
        return None
    config = run_config(DetectOptions(), loaded.spec, where)
    torch_choice = RuntimeChoice("torch", precision=config.precision)
    sample = LazySample(loaded, config.chip_size, None, None)
    figures = measured(loaded, where, config, sample, torch_choice)
    best = fastest(figures)
    if best != "torch":
        _prepared(best, loaded, config.chip_size, sample)
    return explain(best, figures, torch_choice, config.chip_size)


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


def _onnx_worthwhile(loaded: LoadedModel, device: torch.device, compile: bool) -> bool:
    from torchvision.models.detection import RetinaNet

    from geodetect.model.onnx import onnx_available

    return (
        device.type == "cpu"
        and not compile
        and isinstance(loaded.model, RetinaNet)
        and onnx_available()
    )


def _prepared(kind: str, loaded: LoadedModel, chip_size: int, sample: LazySample):
    """The ONNX Runtime choice of ``kind`` with its network in the cache."""
    from geodetect.model.onnx import cached_export

    if kind == "onnxruntime":
        return RuntimeChoice("onnxruntime", onnx_path=str(cached_export(loaded)))
    return RuntimeChoice("int8", onnx_path=str(cached_int8(loaded, sample.get())))


def cached_int8(loaded: LoadedModel, sample: Sample) -> Path:
    """The int8 network of ``loaded`` calibrated on ``sample``, quantised into the cache
    the first time."""
    from geodetect.model.onnx import cache_dir, cached_export, make_cache_dir
    from geodetect.model.quantize import quantize_int8

    folder = cache_dir()
    path = folder / f"{loaded.model_id}-any-int8-{sample.id}.onnx"
    if path.is_file():
        return path
    make_cache_dir(folder)
    started = time.monotonic()
    fp32 = cached_export(loaded)
    quantize_int8(fp32, path, list(sample.chips.numpy()))
    log.info(
        "quantised the network to int8 on %d chips of %s in %.0f s: %s",
        len(sample.chips),
        "its training imagery" if loaded.calibration is not None else "the inputs",
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
    sample: LazySample,
    torch_choice: RuntimeChoice,
    *,
    only_known: bool = False,
) -> dict | None:
    """The candidates' chips/s here (remembered in ``runtimes.json``; measured the first
    time, on ``sample``; None then when ``only_known``)."""
    import onnxruntime

    from geodetect.model.onnx import cache_dir

    machine = _machine()
    key_parts = {
        **machine,
        "model": loaded.model_id,
        "chip": config.chip_size,
        "batch": config.batch_size,
        "precision": str(autocast_dtype(device, config.precision)),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "version": MEASURE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    store = cache_dir().parent / "runtimes.json"
    known = _read_store(store)
    if key in known or only_known:
        return known.get(key)
    log.info(
        "timing torch, ONNX Runtime fp32 and int8 on this CPU for this model (once per "
        "machine and model)"
    )
    started = time.monotonic()
    chips = sample.get().chips
    figures: dict = {"cpu": cpu_description(), "measured": time.strftime("%Y-%m-%d")}
    decoding = Decoding.of(loaded.spec, threshold=AGREEMENT_SCORE, nms_iou=config.nms_iou)
    chip = config.chip_size
    answers = {}
    for kind in RATE_KEYS:
        choice = torch_choice if kind == "torch" else _prepared(kind, loaded, chip, sample)
        runtime = choice.build(loaded, device, chip)
        figures[kind], answers[kind] = _rate(runtime, chips, config.batch_size, decoding)
    figures["agreement"] = _agreement(answers["onnxruntime"], answers["int8"])
    figures["seconds"] = round(time.monotonic() - started, 1)
    log.info("timed the runtimes in %.0f s (exports and quantisation included)", figures["seconds"])
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
    same class, score within :data:`MAX_SCORE_GAP`), over all chips; 1 when neither
    finds anything."""
    from torchvision.ops import box_iou

    found = [0, 0]
    total = [0, 0]
    for a, b in zip(reference, other, strict=True):
        for side, (x, y) in enumerate(((a, b), (b, a))):
            total[side] += len(x["boxes"])
            if len(x["boxes"]) and len(y["boxes"]):
                iou = box_iou(x["boxes"], y["boxes"])
                same = x["labels"][:, None] == y["labels"][None, :]
                close = (x["scores"][:, None] - y["scores"][None, :]).abs() <= MAX_SCORE_GAP
                found[side] += int(((iou >= 0.5) & same & close).any(dim=1).sum())
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
