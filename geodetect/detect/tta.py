"""Test-time augmentation: run turned and flipped views of each chip, fuse the answers.

The fusion is batched tensor work on the batch's device (no Python loop over boxes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import batched_nms, box_iou


def _flip_boxes(boxes: torch.Tensor, size: int, dims: tuple[int, ...]) -> torch.Tensor:
    """Map xyxy boxes found in a chip flipped along ``dims`` (2 = rows, 3 = columns)
    back to the unflipped chip (flipping is its own inverse)."""
    out = boxes.clone()
    if 3 in dims:
        out[:, [0, 2]] = size - boxes[:, [2, 0]]
    if 2 in dims:
        out[:, [1, 3]] = size - boxes[:, [3, 1]]
    return out


View = tuple[bool, tuple[int, ...]]
"""A view of a square chip for test-time augmentation: (transpose rows and columns
first?, dims then flipped: 2 = rows, 3 = columns)."""

FLIPS: tuple[View, ...] = ((False, ()), (False, (3,)), (False, (2,)), (False, (2, 3)))
DIHEDRAL: tuple[View, ...] = FLIPS + tuple((True, dims) for _, dims in FLIPS)


def _view(batch: torch.Tensor, view: View) -> torch.Tensor:
    transpose, dims = view
    out = batch.transpose(-2, -1) if transpose else batch
    return torch.flip(out, dims) if dims else out


def _unview_boxes(boxes: torch.Tensor, size: int, view: View) -> torch.Tensor:
    """Map xyxy boxes found in ``_view(chip, view)`` back to the chip itself."""
    transpose, dims = view
    out = _flip_boxes(boxes, size, dims)
    return out[:, [1, 0, 3, 2]] if transpose else out


def predict_with_flips(
    net,
    batch: torch.Tensor,
    *,
    min_score: float = 0.0,
    fuse_iou: float = 0.55,
    views: Sequence[View] = FLIPS,
) -> list[dict]:
    """Test-time augmentation: run several views of each chip (the four flips by
    default; :data:`DIHEDRAL` adds the four transposed ones) and fuse the answers.

    Boxes of one class that overlap (IoU > ``fuse_iou``) across views are one object:
    its box is the score-weighted mean of theirs and its score the mean over all
    passes (an object seen in one of four passes only keeps a quarter of its score);
    fused objects scoring below ``min_score`` are dropped. Chips must be square.

    The fusion is batched tensor work on the batch's device: the object leaders are the
    boxes class-wise NMS keeps (at ``fuse_iou``, per chip), every box joins the best-
    scored leader it overlaps, and the weighted means are scatter-adds.
    """
    size = batch.shape[-1]
    if batch.shape[-2] != size:
        raise ValueError(f"test-time augmentation needs square chips, got {tuple(batch.shape)}")
    passes = [net(_view(batch, view)) for view in views]
    # float64 where it is cheap (CPU) so fused edges are not rounded; float32 on a GPU.
    dtype = torch.float64 if batch.device.type == "cpu" else torch.float32
    boxes = torch.cat(
        [
            _unview_boxes(torch.cat([d["boxes"] for d in p]).to(dtype), size, view)
            for p, view in zip(passes, views, strict=True)
        ]
    )
    scores = torch.cat([d["scores"].to(dtype) for p in passes for d in p])
    labels = torch.cat([d["labels"] for p in passes for d in p])
    counts = torch.tensor([len(d["boxes"]) for p in passes for d in p], device=boxes.device)
    n_images = batch.shape[0]
    image = torch.arange(n_images, device=boxes.device).repeat(len(views))
    image = image.repeat_interleave(counts)
    fused_boxes, fused_scores, fused_labels, fused_image = _fuse(
        boxes, scores, labels, image, fuse_iou=fuse_iou, n_views=len(views)
    )
    keep = fused_scores >= min_score
    fused_boxes, fused_scores = fused_boxes[keep], fused_scores[keep]
    fused_labels, fused_image = fused_labels[keep], fused_image[keep]
    by_score = torch.argsort(fused_scores, descending=True, stable=True)
    order = by_score[torch.argsort(fused_image[by_score], stable=True)]
    per_image = torch.bincount(fused_image, minlength=n_images).tolist()
    return [
        {"boxes": b, "scores": sc, "labels": lb}
        for b, sc, lb in zip(
            fused_boxes[order].split(per_image),
            fused_scores[order].split(per_image),
            fused_labels[order].split(per_image),
            strict=True,
        )
    ]


_FUSE_PAIRS = 4_000_000  # box-leader IoUs computed at once in test-time fusion


def _fuse(boxes, scores, labels, image, *, fuse_iou: float, n_views: int):
    """Score-weighted fusion of boxes from several views (see :func:`predict_with_flips`).

    Args:
        boxes: [N, 4] xyxy; scores [N]; labels [N] int; image [N] int, the chip of each.

    Returns:
        fused boxes [L, 4], scores [L] (summed weights / ``n_views``), labels [L] and
        image [L], one per leader.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0), labels[:0], image[:0]
    group = image * (int(labels.max()) + 1) + labels
    # In the boxes' own precision (float64 on a CPU): batched NMS offsets each chip's
    # boxes far apart, and float32 would round them there.
    leaders = batched_nms(boxes, scores, group, fuse_iou)  # by score, desc
    # The first (best-scored) leader of its chip and class that a box overlaps takes it,
    # as a greedy pass would; a box NMS suppressed by a hair that float rounding puts
    # back under the threshold goes to the leader it overlaps most. Rows go in chunks
    # so the IoU matrix stays small whatever the candidate count.
    rows = max(1, _FUSE_PAIRS // len(leaders))
    owners = []
    for part, part_group in zip(boxes.split(rows), group.split(rows), strict=True):
        iou = box_iou(part, boxes[leaders])
        iou = iou.masked_fill(part_group[:, None] != group[leaders][None, :], -1.0)
        above = iou > fuse_iou
        first = torch.argmax(above.to(torch.uint8), dim=1)
        owners.append(torch.where(above.any(dim=1), first, torch.argmax(iou, dim=1)))
    owner = torch.cat(owners)
    owner[leaders] = torch.arange(len(leaders), device=boxes.device)
    weight_sum = scores.new_zeros(len(leaders)).index_add_(0, owner, scores)
    box_sum = boxes.new_zeros((len(leaders), 4)).index_add_(0, owner, boxes * scores[:, None])
    return (
        box_sum / weight_sum[:, None],
        weight_sum / n_views,
        labels[leaders],
        image[leaders],
    )
