"""The RetinaNet builder: boxes keep full precision under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from geodetect.errors import InputError
from geodetect.model import build_retinanet
from geodetect.model.device import autocast_dtype, cpu_has_native_bf16

from conftest import make_tiny_spec


def _boxes(model, x, amp):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return model(x)[0]["boxes"]


def test_bf16_autocast_does_not_round_box_coordinates():
    # bf16 holds 8 significant bits: anchors or offsets in bf16 put every coordinate
    # between 256 and 512 on a multiple of 2 px.
    torch.manual_seed(0)
    model = build_retinanet(make_tiny_spec(chip_size=512), pretrained="none").eval()
    model.score_thresh = 0.0
    x = torch.randn(1, 3, 512, 512)
    boxes = _boxes(model, x, amp=True)
    assert boxes.dtype == torch.float32
    inner = boxes[(boxes > 300) & (boxes < 500)]
    assert len(inner) > 50
    assert ((inner % 2) == 0).float().mean() < 0.2
    # and the bf16 boxes stay close to the float32 ones (same network, same input)
    reference = _boxes(model, x, amp=False)
    n = min(len(boxes), len(reference), 20)
    assert torch.cdist(boxes[:n], reference).min(dim=1).values.median() < 1.0


def test_precision_choice():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, "auto") is expected
    with pytest.raises(InputError, match="--precision"):
        autocast_dtype(cpu, "fp8")
