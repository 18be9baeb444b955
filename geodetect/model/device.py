"""Choosing where the model runs and at what precision."""

from __future__ import annotations

import torch

from geodetect.errors import InputError


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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs that support it; full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
