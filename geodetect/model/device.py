"""Choosing where the model runs and at what precision."""

from __future__ import annotations

import os

import torch

from geodetect.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: unknown device; use auto, cpu or cuda") from None


def available_cpus() -> int:
    """The CPUs this process may run on (at least 1).

    Its affinity where the OS has one (``taskset``, cgroup cpusets, Slurm and container
    CPU pinning), not ``os.cpu_count()``, which counts every CPU of the machine: sizing
    reader pools by the machine oversubscribes a job given a few of its cores.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively here (AVX512-BF16 or AMX); on
    other CPUs bf16 is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain float32).

    ``auto`` picks bf16 where the hardware computes it natively (CUDA GPUs with bf16,
    CPUs with AVX512-BF16 or AMX: about twice the float32 speed) and float32 elsewhere.
    The detector's heads return float32 in any case, so boxes are decoded exactly.

    Raises:
        InputError: an unknown precision, or ``bf16`` where the device lacks it.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_has_native_bf16()
    else:
        supported = False
    if supported:
        return torch.bfloat16
    if precision == "bf16":
        raise InputError(
            f"--precision bf16: {device.type} here has no native bf16 support; use fp32 or auto"
        )
    return None
