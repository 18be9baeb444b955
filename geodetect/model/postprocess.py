"""RetinaNet post-processing for a whole batch at once: top-k per level, box decoding,
box voting, class-wise NMS and the removal of second boxes over every chip of the batch
in a few tensor operations.

torchvision's ``RetinaNet.postprocess_detections`` walks the images and, in each, the
FPN levels in Python; on a GPU that is dozens of small kernel launches and host syncs
per chip. Here the loop is over the five levels only; chips are told apart by an image
index, so NMS and voting never mix chips. The result equals the per-image path (same
boxes within float rounding, same order: each chip's detections by descending score;
`tests/test_postprocess.py` holds that reference).
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_iou

from geodetect.geometry.boxes import box_area, either_centre_inside

# Pairs of candidate boxes compared at once in box voting: bounds the IoU matrix.
VOTE_PAIRS = 4_000_000


def batched_detections(
    cls_logits: list[torch.Tensor],
    bbox_regression: list[torch.Tensor],
    anchors: list[list[torch.Tensor]],
    image_shapes: list[tuple[int, int]],
    *,
    box_coder,
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    detections_per_img: int,
    vote_iou: float | None = None,
    max_voters: int = 1000,
    second_iou: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Detections of every chip in the batch.

    Args:
        cls_logits: per FPN level, [N, A_l, C] logits.
        bbox_regression: per FPN level, [N, A_l, 4] box offsets.
        anchors: per image, per level [A_l, 4] anchors (as torchvision splits them).
        image_shapes: per image (height, width); boxes are clipped to it.
        vote_iou: box voting (see :class:`geodetect.model.build.VotingRetinaNet`):
            each of a chip's best ``max_voters`` candidates becomes the score-weighted
            mean of the same-class candidates overlapping it by at least this IoU,
            before NMS. None or >= 1: no voting.
        second_iou: after NMS, drop the second boxes of one object (see
            :func:`second_boxes`); None: keep them.

    Returns:
        One dict per image: ``boxes`` [K, 4], ``scores`` [K], ``labels`` [K], by
        descending score.
    """
    n = len(image_shapes)
    boxes, scores, labels, image = [], [], [], []
    for level, (logits, offsets) in enumerate(zip(cls_logits, bbox_regression, strict=True)):
        classes = logits.shape[-1]
        flat = torch.sigmoid(logits).reshape(n, -1)
        # The best k of all equal the best k of those above the threshold, once filtered.
        top, index = flat.topk(min(topk_candidates, flat.shape[1]), dim=1)
        img, pos = torch.nonzero(top > score_thresh, as_tuple=True)
        index = index[img, pos]
        anchor = torch.div(index, classes, rounding_mode="floor")
        level_anchors = torch.stack([a[level] for a in anchors])  # [N, A_l, 4]
        decoded = box_coder.decode_single(offsets[img, anchor], level_anchors[img, anchor])
        boxes.append(decoded)
        scores.append(top[img, pos])
        labels.append(index % classes)
        image.append(img)
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    labels, image = torch.cat(labels), torch.cat(image)
    sizes = torch.as_tensor(image_shapes, dtype=boxes.dtype, device=boxes.device)  # (h, w)
    limit = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)[image]
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    group = image * (int(labels.max()) + 1 if len(labels) else 1) + labels
    if vote_iou is not None and vote_iou < 1:
        keep = _first_per_image(_by_score(scores), image, max_voters)
        boxes, scores, labels, image, group = (
            t[keep] for t in (boxes, scores, labels, image, group)
        )
        boxes = _vote(boxes, scores, group, vote_iou)
    keep = batched_nms(boxes, scores, group, nms_thresh)
    if second_iou is not None:
        keep = keep[~second_boxes(boxes[keep], scores[keep], group[keep], second_iou)]
    keep = _first_per_image(keep, image, detections_per_img)
    return _split(boxes[keep], scores[keep], labels[keep], image[keep], n)


def _by_score(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)


def _first_per_image(order: torch.Tensor, image: torch.Tensor, limit: int) -> torch.Tensor:
    """The first ``limit`` indices of each image in ``order``, grouped by image, each
    image's in ``order``'s order."""
    grouped = order[torch.argsort(image[order], stable=True)]
    img = image[grouped]
    counts = torch.bincount(img, minlength=1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(grouped), device=order.device) - starts[img]
    return grouped[rank < limit]


def _group_blocks(group: torch.Tensor):
    """``group`` sorted; yields row ranges ``(r0, r1)`` and the column range ``(c0, c1)``
    spanning their groups, so pairwise work touches each group's square only and at
    most about :data:`VOTE_PAIRS` pairs at once."""
    first = torch.searchsorted(group, group, right=False)  # each row's group start
    last = torch.searchsorted(group, group, right=True)  # and end
    rows = max(1, VOTE_PAIRS // len(group))
    for r0 in range(0, len(group), rows):
        r1 = min(len(group), r0 + rows)
        yield r0, r1, int(first[r0]), int(last[r1 - 1])


def _vote(boxes: torch.Tensor, scores: torch.Tensor, group: torch.Tensor, vote_iou: float):
    """Each box -> the score-weighted mean of its group's boxes that overlap it by at
    least ``vote_iou`` (itself included)."""
    if not len(boxes):
        return boxes
    order = torch.argsort(group, stable=True)
    b, s, g = boxes[order], scores[order], group[order]
    voted = torch.empty_like(b)
    # Autocast would run the weighted sums in bf16 and round coordinates to 1-2 px.
    with torch.autocast(b.device.type, enabled=False):
        for r0, r1, c0, c1 in _group_blocks(g):
            voters = box_iou(b[r0:r1], b[c0:c1]) >= vote_iou
            voters &= g[r0:r1, None] == g[None, c0:c1]
            # A box clipped to no area has IoU 0/0 with itself: it still votes for itself.
            rows_here = torch.arange(r1 - r0, device=b.device)
            voters[rows_here, rows_here + (r0 - c0)] = True
            # In float64 on a CPU: the product's rounding then cannot depend on how the
            # BLAS splits it over threads (a Dask worker's one thread or this process's
            # several), so every mode gives the same boxes.
            wide = torch.float64 if b.device.type == "cpu" else b.dtype
            weights = voters.to(wide) * s.to(wide)[None, c0:c1]
            sums = (weights @ b[c0:c1].to(wide)) / weights.sum(dim=1, keepdim=True)
            voted[r0:r1] = sums.to(b.dtype)
    out = torch.empty_like(voted)
    out[order] = voted
    return out


def second_boxes(
    boxes: torch.Tensor, scores: torch.Tensor, group: torch.Tensor, iou: float
) -> torch.Tensor:
    """Which boxes (bool [K]) are a second box of one object: a better box of their
    group overlaps them by IoU above ``iou`` and the centre of one of the two lies
    inside the other (:func:`geodetect.geometry.boxes.either_centre_inside`;
    :func:`geodetect.geometry.merge.second_box_pairs` is the same rule on map
    polygons).

    A detector that sees an object twice puts a part, or a shifted copy, of its box
    inside or around the first one; two objects side by side (neighbouring pools, a
    spa beside a pool) keep each other's centres out, or overlap little. "Better" is
    the higher score (on a tie, the larger box), so the result does not depend on the
    boxes' order. A box goes when any better box takes it, kept or not (no sequential
    pass)."""
    drop = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if len(boxes) < 2:
        return drop
    order = torch.argsort(group, stable=True)
    b, s, g = boxes[order].float(), scores[order], group[order]
    area = box_area(b)
    second = torch.zeros_like(drop)
    for r0, r1, c0, c1 in _group_blocks(g):
        overlap = box_iou(b[r0:r1], b[c0:c1]) > iou
        nested = either_centre_inside(b[r0:r1, None], b[None, c0:c1])
        a_row, a_col = area[r0:r1, None], area[None, c0:c1]
        better = (s[None, c0:c1] > s[r0:r1, None]) | (
            (s[None, c0:c1] == s[r0:r1, None]) & (a_col > a_row)
        )
        same = g[r0:r1, None] == g[None, c0:c1]
        second[r0:r1] = (overlap & nested & better & same).any(dim=1)
    drop[order] = second
    return drop


def _split(boxes, scores, labels, image, n: int) -> list[dict[str, torch.Tensor]]:
    """Per-image dicts from the kept detections (grouped by image, by score within)."""
    counts = torch.bincount(image, minlength=n).tolist()
    return [
        {"boxes": b, "scores": s, "labels": lb}
        for b, s, lb in zip(
            boxes.split(counts), scores.split(counts), labels.split(counts), strict=True
        )
    ]
