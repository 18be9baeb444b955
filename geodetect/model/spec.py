"""ModelSpec: everything needed to rebuild a detector and feed it, stored in the model file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from geodetect._version import __version__

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
PRESETS = {
    # name: (FPN / head channels, convolutions per head branch)
    "standard": (256, 4),
    "lite": (128, 2),
}
# torchvision's RetinaNet box losses, and geodetect's GIoU + pixel smooth-L1 (see
# geodetect.model.build.RegressionHead).
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou", "giou_l1")
DEFAULT_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
DEFAULT_RATIOS = (0.5, 1.0, 2.0)
# Anchor base sizes for P3..P7 (strides 8..128). Smaller than torchvision's 32..512
# because pools at 7.5-60 cm are 5-200 px across.
DEFAULT_BASE_SIZES = (16, 32, 64, 128, 256)
FORMAT = "geodetect-model"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, input contract and provenance of a geodetect detector: a frozen
    value (change one with :func:`dataclasses.replace`), so that a model handed to
    detection or kept by a notebook is never altered behind its owner's back.

    Band statistics are in the raw units of the imagery the model was trained on
    (e.g. 0-255 for uint8, reflectance counts for uint16): inputs are normalised as
    ``(x - band_mean) / band_std`` per band, never with a hard-coded ``/255``.
    """

    classes: list[str]
    band_mean: list[float]
    band_std: list[float]
    band_names: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    input_dtype: str = "uint8"
    gsd: float | None = None
    chip_size: int = 512
    backbone: str = "resnet18"
    preset: str = "standard"
    fpn_channels: int = 256
    head_convs: int = 4
    anchor_base_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BASE_SIZES))
    anchor_scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    anchor_ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "giou_l1"
    max_object_px: float | None = None
    # 95th percentile of the training objects' longest sides, in pixels at ``gsd``:
    # what detection overlaps are planned for (None in older model files).
    typical_object_px: float | None = None
    score_threshold: float = 0.5
    # Same-class detections overlapping more than this IoU are one object (NMS, and the
    # merge of chip overlaps): set in training from how much the labels overlap (see
    # geodetect.train.sizes.label_nms_iou); 0.5 in older model files.
    nms_iou: float = 0.5
    # A box overlapping a better one of its class by more than this IoU, with the centre
    # of one of the two inside the other, is a second box of one object and goes (in the
    # chip and in the map merge); set in training from the labels (see
    # geodetect.train.sizes.label_second_box_iou); 0.3 in older model files. None: off.
    second_box_iou: float | None = 0.3
    # Kept boxes become the score-weighted mean of same-class candidates overlapping
    # them by at least this IoU (box voting); None or 1 turns it off.
    box_vote_iou: float | None = 0.7
    training: dict[str, Any] = field(default_factory=dict)
    geodetect_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_bands(self) -> int:
        return len(self.band_mean)

    def problems(self) -> list[str]:
        """What is inconsistent in this spec (empty when it is usable)."""
        out = []
        if not self.classes:
            out.append("no classes")
        if self.backbone not in BACKBONES:
            out.append(f"unknown backbone {self.backbone!r} (choose from {', '.join(BACKBONES)})")
        if len(self.band_mean) != len(self.band_std) or not self.band_mean:
            out.append("band_mean and band_std must be non-empty and of equal length")
        if any(s <= 0 for s in self.band_std):
            out.append("band_std must be positive")
        if len(self.band_names) != len(self.band_mean):
            out.append("band_names must have one name per band")
        if self.chip_size < 32 or self.chip_size % 32:
            out.append(f"chip_size must be a multiple of 32 and >= 32, got {self.chip_size}")
        if len(self.anchor_base_sizes) != 5:
            out.append("anchor_base_sizes needs one size per pyramid level P3-P7 (5 values)")
        if not self.anchor_scales or not self.anchor_ratios:
            out.append("anchor_scales and anchor_ratios must not be empty")
        if not 0 < self.nms_iou <= 1:
            out.append(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.second_box_iou is not None and not 0 < self.second_box_iou <= 1:
            out.append(f"second_box_iou must be in (0, 1], got {self.second_box_iou}")
        if self.box_vote_iou is not None and not 0 < self.box_vote_iou <= 1:
            out.append(f"box_vote_iou must be in (0, 1] or None, got {self.box_vote_iou}")
        if self.box_loss not in BOX_LOSSES:
            out.append(f"unknown box_loss {self.box_loss!r}")
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Parse stored metadata; raises ValueError on anything unexpected."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("metadata is not a geodetect model description")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"model file format {data.get('format_version')} is newer than this "
                f"geodetect ({__version__}) reads; upgrade geodetect"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def preset_widths(preset: str) -> tuple[int, int]:
    """(FPN/head channels, head convolutions) of a named preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
