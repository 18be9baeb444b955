"""The RetinaNet builder: boxes keep full precision under bf16 autocast; box losses; the
precisions offered."""

from __future__ import annotations

import click
import pytest
import torch

from geodetect.cli import options
from geodetect.detect import DetectOptions
from geodetect.errors import InputError
from geodetect.model import build_retinanet
from geodetect.model.device import PRECISIONS, autocast_dtype, cpu_has_native_bf16

from conftest import make_tiny_spec


def _boxes(model, x, amp):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        return model(x)[0]["boxes"]


@pytest.mark.slow
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


def test_one_list_of_precisions():
    # The CLI writes the list out (importing it would load torch for --help).
    command = options.precision(click.Command("run", callback=lambda **kw: None))
    [option] = [p for p in command.params if p.name == "precision"]
    assert tuple(option.type.choices) == PRECISIONS
    for precision in PRECISIONS:
        DetectOptions(precision=precision)
    with pytest.raises(InputError, match="--precision fp8: choose one of auto, fp32, bf16"):
        DetectOptions(precision="fp8")


def _box_loss(kind: str, size: float, shift: float) -> float:
    """The regression head's loss for one anchor on a ``size`` px square whose
    prediction is ``shift`` px to the right."""
    head = build_retinanet(make_tiny_spec(box_loss=kind), pretrained="none").head
    reg = head.regression_head
    truth = torch.tensor([[10.0, 10.0, 10.0 + size, 10.0 + size]])
    predicted = truth + torch.tensor([shift, 0.0, shift, 0.0])
    offsets = reg.box_coder.encode_single(predicted, truth)
    loss = reg.compute_loss(
        [{"boxes": truth, "labels": torch.tensor([0])}],
        {"bbox_regression": offsets[None]},
        [truth],
        [torch.tensor([0])],
    )
    return float(loss)


def test_pixel_box_loss_makes_large_boxes_pay_for_each_pixel():
    assert _box_loss("giou_l1", 40.0, 0.0) == pytest.approx(0.0, abs=1e-5)
    # GIoU alone is scale-free: one pixel off costs an 80 px box a seventh of what it
    # costs a 10 px box, so big objects are placed loosely in metres.
    assert _box_loss("giou", 80.0, 1.0) < 0.2 * _box_loss("giou", 10.0, 1.0)
    # The pixel term charges every pixel of error alike.
    assert _box_loss("giou_l1", 80.0, 1.0) > 0.4 * _box_loss("giou_l1", 10.0, 1.0)
    assert _box_loss("giou_l1", 80.0, 2.0) > _box_loss("giou_l1", 80.0, 1.0)
