"""Building the detector: torchvision's RetinaNet on a ResNet + FPN, configured by a ModelSpec."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import (
    boxes as box_ops,
)
from torchvision.ops import (
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import Conv2dNormActivation

from geodetect.geometry.boxes import box_centres, points_in_boxes
from geodetect.model.postprocess import batched_detections
from geodetect.model.spec import ModelSpec

log = logging.getLogger(__name__)

_RESNET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": models.ResNet101_Weights.IMAGENET1K_V2,
    "resnet152": models.ResNet152_Weights.IMAGENET1K_V2,
}


class ChipTransform(GeneralizedRCNNTransform):
    """Batches already-normalised, equal-size chips without resizing or re-normalising.

    torchvision's default transform resizes every image to 800 px and normalises with
    ImageNet statistics; geodetect chips are already at the model's size and
    normalised with the model's own band statistics, so both steps are skipped.
    """

    def __init__(self, chip_size: int) -> None:
        super().__init__(chip_size, chip_size, [0.0], [1.0], size_divisible=32)

    def forward(self, images, targets=None):
        batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        height, width = batch.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"chip height and width must be multiples of 32, got {height}x{width}")
        return ImageList(batch, [(int(height), int(width))] * batch.shape[0]), targets

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result


def _conv_stack(channels: int, depth: int) -> nn.Sequential:
    # GroupNorm trains well from scratch with the small batches a laptop affords.
    norm = partial(nn.GroupNorm, min(32, channels // 4))
    stack = nn.Sequential(
        *[Conv2dNormActivation(channels, channels, norm_layer=norm) for _ in range(depth)]
    )
    for layer in stack.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=0.01)
    return stack


class ClassificationHead(RetinaNetClassificationHead):
    """RetinaNet classification branch with a configurable depth and focal-loss α/γ."""

    def __init__(self, channels, num_anchors, num_classes, *, depth, alpha, gamma):
        super().__init__(channels, num_anchors, num_classes)
        self.conv = _conv_stack(channels, depth)
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, x):
        # Logits leave the head in float32 even under bf16 autocast, so losses and score
        # ranking are computed at full precision.
        return super().forward(x).float()

    def compute_loss(self, targets, head_outputs, matched_idxs):
        total = head_outputs["cls_logits"].new_zeros(())
        for target, logits, matched in zip(
            targets, head_outputs["cls_logits"], matched_idxs, strict=True
        ):
            foreground = matched >= 0
            wanted = torch.zeros_like(logits)
            wanted[foreground, target["labels"][matched[foreground]]] = 1.0
            considered = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(
                logits[considered], wanted[considered], self.alpha, self.gamma, "sum"
            )
            total = total + loss / max(1, int(foreground.sum()))
        return total / max(1, len(targets))


# The pixel term of the "giou_l1" box loss: smooth-L1 on box edges in pixels, divided by
# this many pixels (an edge off by one P3 stride costs as much as a GIoU loss of 1).
PIXEL_LOSS_SCALE = 8.0


class RegressionHead(RetinaNetRegressionHead):
    """RetinaNet box branch with a configurable depth and box loss.

    Besides torchvision's losses, ``"giou_l1"``: GIoU plus smooth-L1 on the decoded
    edges in pixels (/ :data:`PIXEL_LOSS_SCALE`). GIoU is scale-free, so a large
    object's box pays little for an edge one pixel off; the pixel term makes every pixel
    of error cost the same, which is what a centre error in metres measures.
    """

    def __init__(self, channels, num_anchors, *, depth, loss):
        super().__init__(channels, num_anchors)
        self.conv = _conv_stack(channels, depth)
        self._loss_type = loss

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self._loss_type != "giou_l1":
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        total = head_outputs["bbox_regression"].new_zeros(())
        for target, offsets, image_anchors, matched in zip(
            targets, head_outputs["bbox_regression"], anchors, matched_idxs, strict=True
        ):
            foreground = torch.where(matched >= 0)[0]
            wanted = target["boxes"][matched[foreground]].float()
            boxes = self.box_coder.decode_single(
                offsets[foreground].float(), image_anchors[foreground].float()
            )
            loss = generalized_box_iou_loss(boxes, wanted, reduction="sum")
            pixels = nn.functional.smooth_l1_loss(boxes, wanted, beta=1.0, reduction="sum")
            total = total + (loss + pixels / PIXEL_LOSS_SCALE) / max(1, foreground.numel())
        return total / max(1, len(targets))

    def forward(self, x):
        # torchvision's box decoder casts the anchors to the dtype of these offsets: in
        # bf16 a coordinate near 300 px would be rounded to a multiple of 2 px. Offsets
        # in float32 keep decoded boxes (and the box loss) exact under autocast.
        return super().forward(x).float()


class VotingRetinaNet(RetinaNet):
    """torchvision's RetinaNet with box voting before its class-wise NMS, and
    post-processing batched over the chips (:mod:`geodetect.model.postprocess`).

    Every candidate box (score above ``score_thresh``; each chip's best ``MAX_VOTERS``)
    is replaced by the score-weighted mean of the same-class candidates that overlap it
    by at least ``box_vote_iou``, itself included; NMS at ``nms_thresh`` then runs on the
    voted boxes with the original scores. Neighbouring anchors regress the same object
    independently, and their mean places its edges better than the best-scoring box
    alone. ``box_vote_iou`` None (or >= 1) gives plain RetinaNet output.
    """

    def __init__(
        self,
        *args,
        box_vote_iou: float | None = 0.7,
        second_box_iou: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.box_vote_iou = box_vote_iou
        self.second_box_iou = second_box_iou

    def compute_loss(self, targets, head_outputs, anchors):
        """torchvision's matching of anchors to targets, then: an anchor whose centre lies
        in no box of a target's ``known`` (FloatTensor[K, 4], where the labels are
        complete) and that matches no object is ignored, as anchors between the IoU
        thresholds are. Without ``known`` the whole chip is known."""
        matched_idxs = []
        for image_anchors, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel() == 0:
                matched = torch.full(
                    (image_anchors.size(0),), -1, dtype=torch.int64, device=image_anchors.device
                )
            else:
                matched = self.proposal_matcher(box_ops.box_iou(target["boxes"], image_anchors))
            known = target.get("known")
            if known is not None:
                unknown = ~centres_inside(image_anchors, known) & (matched < 0)
                matched = torch.where(unknown, self.proposal_matcher.BETWEEN_THRESHOLDS, matched)
            matched_idxs.append(matched)
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        return batched_detections(
            head_outputs["cls_logits"],
            head_outputs["bbox_regression"],
            anchors,
            image_shapes,
            box_coder=self.box_coder,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            topk_candidates=self.topk_candidates,
            detections_per_img=self.detections_per_img,
            vote_iou=self.box_vote_iou,
            max_voters=MAX_VOTERS,
            second_iou=self.second_box_iou,
        )


def centres_inside(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Whether each box's centre (``xyxy`` [N, 4]) lies in at least one of ``regions``
    (``xyxy`` [K, 4], edges included, compared in the boxes' dtype); all False when
    there are none."""
    if not len(regions) or not len(boxes):
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    centres = box_centres(boxes)
    regions = regions.to(centres.dtype)
    return points_in_boxes(centres[:, None], regions[None], edges="closed").any(dim=1)


# Candidates per chip that vote (each chip's best), as torchvision's detections_per_img.
MAX_VOTERS = 1000


def imagenet_url(backbone: str) -> str:
    """Where torchvision publishes the ImageNet weights of ``backbone`` (a ResNet name)."""
    return _RESNET_WEIGHTS[backbone].url


def imagenet_cache_path(backbone: str) -> Path:
    """Where torch's cache keeps the ImageNet weights of ``backbone``, under the file name
    torchvision downloads them to: ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_url(backbone)).name


def _imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from torch's local cache, or None; never downloads."""
    cached = imagenet_cache_path(backbone)
    if not cached.is_file():
        return None
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged cache must not stop training from scratch
        log.warning("ignoring unreadable ImageNet weights at %s: %s", cached, exc)
        return None


def first_conv_for_bands(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem filters [out, C, k, k] made to take ``in_channels`` bands: the first bands keep
    their filters, extra bands get the mean filter, and all are scaled by C /
    ``in_channels`` so the response to an image of equal bands stays the same."""
    have = weight.shape[1]
    mean_filter = weight.mean(dim=1, keepdim=True)
    bands = [weight[:, b : b + 1] if b < have else mean_filter for b in range(in_channels)]
    return torch.cat(bands, dim=1) * (have / in_channels)


def _adapt_first_conv(resnet: nn.Module, in_channels: int) -> None:
    """Give the stem ``in_channels`` inputs, reusing RGB filters where they exist."""
    old = resnet.conv1
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        new.weight.copy_(first_conv_for_bands(old.weight, in_channels))
    resnet.conv1 = new


def build_backbone(spec: ModelSpec, *, pretrained: str = "auto") -> BackboneWithFPN:
    """ResNet body + FPN (P3-P7) with trainable BatchNorm.

    Args:
        pretrained: ``"auto"`` uses ImageNet weights found in torch's local cache,
            ``"imagenet"`` requires them, ``"none"`` starts from scratch.
    """
    resnet = getattr(models, spec.backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    if pretrained != "none":
        state = _imagenet_state_dict(spec.backbone)
        if state is None and pretrained == "imagenet":
            raise FileNotFoundError(
                f"ImageNet weights for {spec.backbone} are not in torch's cache "
                f"({torch.hub.get_dir()}/checkpoints); place them with 'geodetect weights "
                f"fetch {spec.backbone}' or run with pretrained='none'"
            )
        if state is not None:
            resnet.load_state_dict(state)
            log.info("backbone %s starts from cached ImageNet weights", spec.backbone)
    _adapt_first_conv(resnet, spec.num_bands)
    wide = spec.backbone in ("resnet50", "resnet101", "resnet152")
    stage_channels = [512, 1024, 2048] if wide else [128, 256, 512]
    return BackboneWithFPN(
        resnet,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=stage_channels,
        out_channels=spec.fpn_channels,
        extra_blocks=Float32P6P7(spec.fpn_channels, spec.fpn_channels),
    )


class Float32Anchors(AnchorGenerator):
    """torchvision's anchor generator, but anchors are always float32.

    The stock generator makes anchors in the feature maps' dtype: under bf16 autocast a
    coordinate near 300 px is rounded to a multiple of 2 px, and every decoded box moves
    with its anchor. Only the maps' shapes matter, so empty float32 stand-ins are passed.
    """

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]):
        shapes = [f.new_empty((0, 0, *f.shape[-2:]), dtype=torch.float32) for f in feature_maps]
        return super().forward(image_list, shapes)


class Float32P6P7(LastLevelP6P7):
    """The FPN's P6 and P7 levels, computed in float32 even under autocast.

    They are a few pixels across (1 x 1 on small chips), where oneDNN's bf16 weight
    gradient of the stride-2 convolution comes out NaN on some CPUs; in float32 they
    cost next to nothing.
    """

    def forward(self, p, c, names):
        with torch.autocast(p[-1].device.type, enabled=False):
            return super().forward([x.float() for x in p], [x.float() for x in c], names)


def build_anchor_generator(spec: ModelSpec) -> AnchorGenerator:
    sizes = tuple(tuple(base * s for s in spec.anchor_scales) for base in spec.anchor_base_sizes)
    ratios = (tuple(spec.anchor_ratios),) * len(sizes)
    return Float32Anchors(sizes, ratios)


def build_retinanet(spec: ModelSpec, *, pretrained: str = "auto") -> RetinaNet:
    """A torchvision RetinaNet configured entirely by ``spec``.

    Input contract: a float tensor [N, C, S, S] (S = ``spec.chip_size``, C = bands),
    already normalised; no internal resize. Output in eval mode: one dict per chip with
    ``boxes`` (FloatTensor[K, 4], xyxy chip pixels, 0 <= x1 < x2 <= S), ``scores`` and
    ``labels`` (indices into ``spec.classes``).
    """
    backbone = build_backbone(spec, pretrained=pretrained)
    anchors = build_anchor_generator(spec)
    num_anchors = anchors.num_anchors_per_location()[0]
    head = RetinaNetHead(spec.fpn_channels, num_anchors, len(spec.classes))
    head.classification_head = ClassificationHead(
        spec.fpn_channels,
        num_anchors,
        len(spec.classes),
        depth=spec.head_convs,
        alpha=spec.focal_alpha,
        gamma=spec.focal_gamma,
    )
    head.regression_head = RegressionHead(
        spec.fpn_channels, num_anchors, depth=spec.head_convs, loss=spec.box_loss
    )
    # Start the classifier at the focal-loss prior (p = 0.01 for every anchor).
    nn.init.constant_(head.classification_head.cls_logits.bias, -math.log((1 - 0.01) / 0.01))
    model = VotingRetinaNet(
        backbone,
        num_classes=len(spec.classes),
        anchor_generator=anchors,
        head=head,
        min_size=spec.chip_size,
        max_size=spec.chip_size,
        score_thresh=0.05,
        nms_thresh=spec.nms_iou,
        detections_per_img=300,
        box_vote_iou=spec.box_vote_iou,
        second_box_iou=spec.second_box_iou,
    )
    model.transform = ChipTransform(spec.chip_size)
    return model
