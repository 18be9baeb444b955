"""The batched post-processing gives what torchvision's per-image path (plus per-image
box voting) gives: same detections, same order, boxes within float rounding.

The per-image reference is written here, plainly and apart from the library's batched
code, so that the two can only agree by both being right."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from torchvision.models.detection import RetinaNet
from torchvision.ops import batched_nms, box_iou

from geodetect.detect import detect
from geodetect.geometry import nms_polygons
from geodetect.model import build_retinanet
from geodetect.model.build import MAX_VOTERS
from geodetect.model.postprocess import second_boxes

from conftest import NORTH_UP, make_oracle, make_tiny_spec, write_geotiff


def _heads(net, x):
    """What RetinaNet.forward hands to post-processing, split per level."""
    images, _ = net.transform(x)
    features = list(net.backbone(images.tensors).values())
    outputs = net.head(features)
    anchors = net.anchor_generator(images, features)
    per_level = [f.shape[2] * f.shape[3] for f in features]
    per_location = outputs["cls_logits"].shape[1] // sum(per_level)
    per_level = [n * per_location for n in per_level]
    split = {k: list(v.split(per_level, dim=1)) for k, v in outputs.items()}
    return split, [list(a.split(per_level)) for a in anchors], images.image_sizes


def _per_image(net, heads, anchors, sizes):
    """The reference: torchvision's own per-image post-processing (all candidates,
    score-sorted, when voting: NMS at IoU 1 suppresses nothing), then box voting,
    class-wise NMS, second boxes and the per-chip limit, chip by chip."""
    vote = net.box_vote_iou
    voting = vote is not None and vote < 1
    nms_thresh, limit = net.nms_thresh, net.detections_per_img
    net.nms_thresh = 1.0 if voting else nms_thresh
    net.detections_per_img = MAX_VOTERS if voting else 1 << 30
    try:
        candidates = RetinaNet.postprocess_detections(net, heads, anchors, sizes)
    finally:
        net.nms_thresh, net.detections_per_img = nms_thresh, limit
    out = []
    for c in candidates:
        boxes, scores, labels = c["boxes"], c["scores"], c["labels"]
        if len(boxes) and voting:
            voters = (box_iou(boxes, boxes) >= vote) & (labels[:, None] == labels[None, :])
            voters.fill_diagonal_(True)  # a box clipped to no area (IoU 0/0) still votes
            weights = voters.to(boxes.dtype) * scores.to(boxes.dtype)[None, :]
            boxes = (weights @ boxes) / weights.sum(dim=1, keepdim=True)
        keep = batched_nms(boxes, scores, labels, nms_thresh)
        if net.second_box_iou is not None:
            second = second_boxes(boxes[keep], scores[keep], labels[keep], net.second_box_iou)
            keep = keep[~second]
        keep = keep[:limit]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


def _same(batched, reference):
    assert len(batched) == len(reference)
    for got, want in zip(batched, reference, strict=True):
        assert got["boxes"].shape == want["boxes"].shape
        torch.testing.assert_close(got["scores"], want["scores"])
        torch.testing.assert_close(got["labels"], want["labels"])
        torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("vote", [0.7, None])
@pytest.mark.parametrize("batch", [1, 5])
def test_batched_postprocessing_equals_the_per_image_path(vote, batch):
    torch.manual_seed(1)
    net = build_retinanet(
        make_tiny_spec(classes=["pool", "tank", "roof"], box_vote_iou=vote), pretrained="none"
    ).eval()
    # Sharper, varied logits than a fresh head gives, so scores spread over (0, 1) and
    # many candidates pass: top-k per level, voting and the per-chip limit all bite.
    with torch.no_grad():
        net.head.classification_head.cls_logits.weight.normal_(0, 0.15)
        net.head.classification_head.cls_logits.bias.fill_(-1.0)
        net.head.regression_head.bbox_reg.weight.normal_(0, 0.05)
    x = torch.randn(batch, 3, 64, 64)
    with torch.inference_mode():
        heads, anchors, sizes = _heads(net, x)
        for score_thresh, limit, topk in [(0.05, 300, 1000), (0.3, 7, 40), (0.999, 300, 1000)]:
            net.score_thresh, net.detections_per_img, net.topk_candidates = (
                score_thresh,
                limit,
                topk,
            )
            reference = _per_image(net, heads, anchors, sizes)
            batched = net.postprocess_detections(heads, anchors, sizes)
            _same(batched, reference)
            if score_thresh < 0.5:
                assert sum(len(r["boxes"]) for r in reference) >= batch * min(limit, 7)
        # The whole forward pass runs the batched path.
        net.score_thresh, net.detections_per_img, net.topk_candidates = 0.05, 300, 1000
        _same(net(x), _per_image(net, heads, anchors, sizes))


def test_one_chip_never_votes_or_suppresses_with_another():
    """Two chips holding the same boxes keep the same detections as each alone."""
    torch.manual_seed(2)
    net = build_retinanet(make_tiny_spec(), pretrained="none").eval()
    with torch.no_grad():
        net.head.classification_head.cls_logits.weight.normal_(0, 0.15)
    net.score_thresh = 0.05
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        alone = net(x)[0]
        pair = net(torch.cat([x, x]))
    for out in pair:
        torch.testing.assert_close(out["boxes"], alone["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(out["scores"], alone["scores"])


# A pool and what a detector, or a neighbourhood, puts around it (chip pixels).
POOL = [10.0, 10.0, 50.0, 40.0]
AROUND = {  # box, whether it is a second box of the pool; IoU with the pool
    "part": ([12.0, 11.0, 28.0, 39.0], True),  # a part around its middle: 0.37
    "shifted": ([24.0, 18.0, 62.0, 48.0], True),  # a shifted copy: 0.32
    "half": ([32.0, 14.0, 50.0, 38.0], True),  # its east half: 0.36
    "big": ([0.0, 0.0, 62.0, 52.0], True),  # a loose box around it: 0.37
    "touching": ([50.0, 10.0, 82.0, 40.0], False),  # next garden, boxes touching: 0
    "neighbour": ([46.0, 12.0, 78.0, 38.0], False),  # next garden, a little over: 0.05
    "close": ([36.0, 10.0, 76.0, 40.0], False),  # next garden, boxes overlapping: 0.21
    "spa": ([11.0, 11.0, 20.0, 20.0], False),  # a spa in its corner, inside its box: 0.07
    "plunge": ([40.0, 30.0, 56.0, 46.0], False),  # a small pool at its corner: 0.07
}
SECOND_IOU = 0.2


@pytest.mark.parametrize("name", list(AROUND))
def test_second_boxes_go_and_neighbouring_pools_stay(name):
    other, second = AROUND[name]
    boxes = torch.tensor([POOL, other])
    # whichever scores higher: the other box, if a second box, goes
    for scores, loser in ((torch.tensor([0.9, 0.6]), 1), (torch.tensor([0.6, 0.9]), 0)):
        dropped = second_boxes(boxes, scores, torch.tensor([0, 0]), SECOND_IOU)
        assert dropped.tolist() == [second and loser == 0, second and loser == 1], name
        # another class or another chip (group) never takes it
        assert not second_boxes(boxes, scores, torch.tensor([0, 1]), SECOND_IOU).any()
    # the map merge applies the same rule to polygons
    polygons = shapely.box(*np.array([POOL, other]).T)
    kept = nms_polygons(polygons, np.array([0.9, 0.6]), threshold=0.5, second_iou=SECOND_IOU)
    assert kept.tolist() == ([0] if second else [0, 1]), name


def test_second_boxes_tie_break_and_order():
    boxes = torch.tensor([POOL, AROUND["part"][0], AROUND["neighbour"][0], AROUND["spa"][0]])
    group = torch.tensor([0, 0, 0, 0])
    # a tie keeps the larger box, whatever the order
    tie = torch.tensor([0.7, 0.7, 0.8, 0.5])
    for perm in (torch.arange(4), torch.tensor([3, 1, 0, 2])):
        dropped = second_boxes(boxes[perm], tie[perm], group[perm], SECOND_IOU)
        assert perm[dropped].tolist() == [1]
    assert not second_boxes(boxes[:0], tie[:0], group[:0], SECOND_IOU).any()


def test_the_detector_reports_no_second_box():
    torch.manual_seed(3)
    net = build_retinanet(make_tiny_spec(second_box_iou=SECOND_IOU), pretrained="none").eval()
    assert net.second_box_iou == SECOND_IOU
    with torch.no_grad():
        net.head.classification_head.cls_logits.weight.normal_(0, 0.15)
        net.head.regression_head.bbox_reg.weight.normal_(0, 0.05)
    net.score_thresh, net.detections_per_img = 0.05, 300
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        heads, anchors, sizes = _heads(net, x)
        net.detections_per_img = 1 << 30
        net.second_box_iou = None
        plain = net.postprocess_detections(heads, anchors, sizes)
        net.second_box_iou = SECOND_IOU
        out = net.postprocess_detections(heads, anchors, sizes)
        reference = _per_image(net, heads, anchors, sizes)
    _same(out, reference)
    removed = 0
    for got, before in zip(out, plain, strict=True):
        labels = got["labels"]
        assert not second_boxes(got["boxes"], got["scores"], labels, SECOND_IOU).any()
        removed += len(before["boxes"]) - len(got["boxes"])
    assert removed > 0  # the untrained head does report second boxes


def test_detection_merges_at_the_models_nms_iou(tmp_path):
    """Two objects whose boxes overlap by IoU 0.42 (an L and a square in its corner):
    one object for a model whose labels never overlap (0.4), two for one with 0.5 (whose
    labels nest like this, so its second-box IoU is 0.5 too: see
    ``test_second_box_iou_follows_how_the_labels_nest``)."""
    image = np.zeros((3, 128, 128), np.uint8)
    image[:, 40:60, 40:45] = 255  # the L's upright
    image[:, 55:60, 40:60] = 255  # and its foot
    image[:, 40:53, 47:60] = 255  # the square, 2 px away
    path = write_geotiff(tmp_path / "s.tif", image, transform=NORTH_UP)
    found = {
        nms: len(
            detect(
                [path],
                make_oracle(chip_size=128, nms_iou=nms, second_box_iou=nms),
                progress=False,
            )
        )
        for nms in (0.4, 0.5)
    }
    assert found == {0.4: 1, 0.5: 2}
    # build_retinanet takes it from the spec too
    assert build_retinanet(make_tiny_spec(nms_iou=0.4)).nms_thresh == 0.4
