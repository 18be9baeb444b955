"""The batched post-processing gives what torchvision's per-image path (plus per-image
box voting) gives: same detections, same order, boxes within float rounding."""

from __future__ import annotations

import pytest
import torch

from geodetect.model import build_retinanet

from conftest import make_tiny_spec


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
            reference = net.postprocess_per_image(heads, anchors, sizes)
            batched = net.postprocess_detections(heads, anchors, sizes)
            _same(batched, reference)
            if score_thresh < 0.5:
                assert sum(len(r["boxes"]) for r in reference) >= batch * min(limit, 7)
        # The whole forward pass runs the batched path.
        net.score_thresh, net.detections_per_img, net.topk_candidates = 0.05, 300, 1000
        _same(net(x), net.postprocess_per_image(heads, anchors, sizes))


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
