"""Runtimes: what turns a batch of normalised chips into detections, behind one interface.

A runtime computes the network's head outputs (torch in fp32 or bf16, eager or compiled;
ONNX Runtime in fp32; ONNX Runtime with a statically quantised int8 network), and one
:class:`Decoder` turns head outputs into boxes with the model's own anchors and box
coder, under a :class:`Decoding` value (threshold, NMS IoU, second boxes, voting) given
at each call. Nothing here changes the loaded model: the torch runtime works on its own
copy, and thresholds are never written into a network.

Which runtime a run uses is a :class:`RuntimeChoice` value, small and picklable, that
travels with the run's configuration to reader processes and Dask workers, where
:meth:`RuntimeChoice.build` makes the runtime once per process.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.image_list import ImageList

from geodetect.model.build import MAX_VOTERS
from geodetect.model.device import autocast_dtype
from geodetect.model.file import LoadedModel
from geodetect.model.postprocess import batched_detections
from geodetect.model.spec import ModelSpec

log = logging.getLogger(__name__)

# Strides of the FPN levels P3-P7 the heads read.
LEVEL_STRIDES = (8, 16, 32, 64, 128)
#: The runtimes by name: torch (fp32, or bf16 where the hardware has it), ONNX Runtime
#: fp32 and ONNX Runtime int8 (static QDQ quantisation, CPU only).
RUNTIME_KINDS = ("torch", "onnxruntime", "int8")


def level_sizes(height: int, width: int | None = None) -> list[tuple[int, int]]:
    """(rows, cols) in cells of each FPN level P3-P7 of a ``height`` x ``width`` chip.

    P6 and P7 are stride-2 convolutions of the level below, so their edges round up:
    a 96 px chip has P5 3 cells wide, P6 2 and P7 1.
    """
    width = height if width is None else width
    return [(-(-height // s), -(-width // s)) for s in LEVEL_STRIDES]


@dataclass(frozen=True)
class Decoding:
    """How head outputs become detections.

    Attributes:
        score_thresh: candidates scoring at or below this are dropped.
        nms_iou: same-class boxes overlapping more are one object (class-wise NMS).
        second_box_iou: see :func:`geodetect.model.postprocess.second_boxes`; None: off.
        box_vote_iou: box voting before NMS; None or >= 1: off.
        topk_candidates: candidates kept per FPN level and chip before NMS (None: the
            model's ``topk_candidates``, torchvision's 1000).
        detections_per_img: detections kept per chip (None: the model's, 300).
    """

    score_thresh: float
    nms_iou: float
    second_box_iou: float | None = None
    box_vote_iou: float | None = None
    topk_candidates: int | None = None
    detections_per_img: int | None = None

    @classmethod
    def of(
        cls, spec: ModelSpec, *, threshold: float | None = None, nms_iou: float | None = None
    ) -> Decoding:
        """The model's own decoding, with ``threshold`` and ``nms_iou`` where given."""
        return cls(
            score_thresh=spec.score_threshold if threshold is None else threshold,
            nms_iou=spec.nms_iou if nms_iou is None else nms_iou,
            second_box_iou=spec.second_box_iou,
            box_vote_iou=spec.box_vote_iou,
        )


class Decoder:
    """Head outputs to detections with a model's anchor generator and box coder (read,
    never changed). Anchors are made once per chip shape."""

    def __init__(self, model: nn.Module) -> None:
        self.anchor_generator = model.anchor_generator
        self.box_coder = model.box_coder
        self.topk_candidates = int(getattr(model, "topk_candidates", 1000))
        self.detections_per_img = int(getattr(model, "detections_per_img", 300))
        self._anchors: dict[tuple[int, int, str], list[torch.Tensor]] = {}

    def anchors(self, height: int, width: int, device: torch.device) -> list[torch.Tensor]:
        """One chip's anchors per level, [A_l, 4] each (the same for every chip)."""
        key = (height, width, str(device))
        if key not in self._anchors:
            probe = torch.empty((1, 1, height, width), device=device)
            # The anchor generator reads only the feature maps' shapes.
            shapes = [probe.new_empty((0, 0, h, w)) for h, w in level_sizes(height, width)]
            (anchors,) = self.anchor_generator(ImageList(probe, [(height, width)]), shapes)
            per_level = [h * w for h, w in level_sizes(height, width)]
            per_cell = anchors.shape[0] // sum(per_level)
            self._anchors[key] = list(anchors.split([n * per_cell for n in per_level]))
        return self._anchors[key]

    def __call__(
        self,
        cls_logits: torch.Tensor,
        bbox_regression: torch.Tensor,
        height: int,
        width: int,
        decoding: Decoding,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections of each chip from ``cls_logits`` [N, A, K] and ``bbox_regression``
        [N, A, 4] (P3-P7 concatenated, as RetinaNet's heads give them) of ``height`` x
        ``width`` chips: per chip ``boxes`` FloatTensor[D, 4] (xyxy chip pixels),
        ``scores`` FloatTensor[D] and ``labels`` Int64Tensor[D], by descending score."""
        n = cls_logits.shape[0]
        if n == 0:
            return []
        levels = self.anchors(height, width, cls_logits.device)
        split = [len(a) for a in levels]
        return batched_detections(
            list(cls_logits.float().split(split, dim=1)),
            list(bbox_regression.float().split(split, dim=1)),
            [levels] * n,
            [(height, width)] * n,
            box_coder=self.box_coder,
            score_thresh=decoding.score_thresh,
            nms_thresh=decoding.nms_iou,
            topk_candidates=decoding.topk_candidates or self.topk_candidates,
            detections_per_img=decoding.detections_per_img or self.detections_per_img,
            vote_iou=decoding.box_vote_iou,
            max_voters=MAX_VOTERS,
            second_iou=decoding.second_box_iou,
        )


class HeadOutputs(nn.Module):
    """The dense part of a torchvision RetinaNet: chips to head outputs.

    Input: FloatTensor[N, C, H, W], normalised chips (H, W multiples of 32). Output:
    ``cls_logits`` FloatTensor[N, A, K] and ``bbox_regression`` FloatTensor[N, A, 4],
    concatenated over P3-P7 in that order (A anchors in all, K classes): exactly the
    ``head_outputs`` RetinaNet.forward builds before splitting them per level. The
    model's ``transform`` (geodetect's ChipTransform) only batches, so it is left out.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = list(self.backbone(chips).values())
        outputs = self.head(features)
        return outputs["cls_logits"], outputs["bbox_regression"]


class Runtime:
    """Chips in, detections out. Subclasses compute :meth:`head_outputs`."""

    #: What computes the boxes, as a journal records it (runs never mix them).
    compute: tuple[str, ...] = ()

    def __init__(self, loaded: LoadedModel) -> None:
        self.spec = loaded.spec
        self.decoder = Decoder(loaded.model)

    def head_outputs(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls_logits`` [N, A, K] and ``bbox_regression`` [N, A, 4] of normalised
        ``chips`` [N, C, H, W], on the device of ``chips``."""
        raise NotImplementedError

    def detect(self, chips: torch.Tensor, decoding: Decoding) -> list[dict[str, torch.Tensor]]:
        """Detections of each of ``chips`` [N, C, H, W] (normalised), see :class:`Decoder`."""
        if len(chips) == 0:
            return []
        with torch.inference_mode():
            cls_logits, bbox_regression = self.head_outputs(chips)
            return self.decoder(cls_logits, bbox_regression, *chips.shape[-2:], decoding)


class TorchRuntime(Runtime):
    """The network in torch on ``device``: channels-last, bf16 autocast where
    ``precision`` asks for it and the hardware computes it, optionally compiled."""

    def __init__(
        self,
        loaded: LoadedModel,
        device: torch.device,
        *,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(loaded)
        self.device = device
        # A copy: the caller's model keeps its device, mode and memory format.
        net = HeadOutputs(copy.deepcopy(loaded.model)).to(device).eval()
        # Channels-last: oneDNN's and cuDNN's fast layouts (on the 2-core EPYC dev VM,
        # 1.5x the bf16 and 1.25x the fp32 speed of the default layout).
        self.net = net.to(memory_format=torch.channels_last)
        self.amp = autocast_dtype(device, precision)
        if compile:
            # Shapes are fixed per chip size; post-processing stays eager.
            self.net = torch.compile(self.net, dynamic=False)
        self.compute = tuple(
            RuntimeChoice("torch", precision=precision, compile=compile).compute(device)
        )

    def head_outputs(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chips = chips.to(self.device).contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()
        with ctx:
            cls_logits, bbox_regression = self.net(chips)
        return cls_logits.float(), bbox_regression.float()


class ModuleRuntime(Runtime):
    """Any other detector module that maps normalised chips [N, C, H, W] to one dict
    of ``boxes``, ``scores`` and ``labels`` per chip (as torchvision's detectors do in
    eval mode), run as it is on its own copy; detections at or below the decoding's
    score threshold are dropped, the rest of the decoding is the module's own."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.spec = loaded.spec
        self.device = device
        self.net = copy.deepcopy(loaded.model).to(device).eval()
        self.compute = (device.type, "module")

    def detect(self, chips: torch.Tensor, decoding: Decoding) -> list[dict[str, torch.Tensor]]:
        if len(chips) == 0:
            return []
        with torch.inference_mode():
            outputs = self.net(chips.to(self.device))
        return [{k: v[o["scores"] > decoding.score_thresh] for k, v in o.items()} for o in outputs]


class OnnxRuntime(Runtime):
    """The network in ONNX Runtime on the CPU, from an .onnx file written by
    :func:`geodetect.model.onnx.export_onnx` (fp32) or
    :func:`geodetect.model.quantize.quantize_int8` (int8) from the same model."""

    def __init__(
        self, path: str | Path, loaded: LoadedModel, *, kind: str, threads: int | None = None
    ) -> None:
        from geodetect.model.onnx import open_session

        super().__init__(loaded)
        self.path = Path(path)
        self.session, self.chip_size = open_session(self.path, loaded, threads=threads)
        self.compute = tuple(RuntimeChoice(kind, onnx_path=str(path)).compute(torch.device("cpu")))

    def detect(self, chips: torch.Tensor, decoding: Decoding) -> list[dict[str, torch.Tensor]]:
        """As :meth:`Runtime.detect`; chips smaller than a network of fixed size (crops
        of chips over the edge of the data) are padded to it on the far sides, so their
        boxes keep their coordinates."""
        sides = self.session.get_inputs()[0].shape[2:]
        if all(isinstance(n, int) for n in sides):
            pad_h, pad_w = sides[0] - chips.shape[-2], sides[1] - chips.shape[-1]
            if pad_h > 0 or pad_w > 0:
                chips = torch.nn.functional.pad(chips, (0, max(0, pad_w), 0, max(0, pad_h)))
        return super().detect(chips, decoding)

    def head_outputs(self, chips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from geodetect.model.onnx import INPUT_NAME, OUTPUT_NAMES

        # Fixed sides (older exports) or names of dynamic ones.
        sides = self.session.get_inputs()[0].shape[2:]
        fixed = [s if isinstance(s, int) else None for s in sides]
        shape = tuple(chips.shape)
        if (
            len(shape) != 4
            or shape[1] != self.spec.num_bands
            or any(f is not None and f != n for f, n in zip(fixed, shape[2:], strict=True))
            or any(n % 32 for n in shape[2:])
        ):
            expected = [str(f) if f else "32k" for f in fixed]
            raise ValueError(
                f"chips must be [N, {self.spec.num_bands}, {', '.join(expected)}] for "
                f"{self.path}, got {list(shape)}"
            )
        feed = chips.detach().to("cpu", torch.float32).contiguous().numpy()
        cls_logits, bbox_regression = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: feed})
        return (
            torch.from_numpy(cls_logits).to(chips.device),
            torch.from_numpy(bbox_regression).to(chips.device),
        )


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime a run uses, as a small value that any process can build from.

    Attributes:
        kind: one of :data:`RUNTIME_KINDS`.
        precision: torch's precision (``auto``, ``fp32``, ``bf16``); ORT computes fp32
            or int8 whatever it says.
        compile: torch.compile the torch network.
        onnx_path: the .onnx file for ``onnxruntime`` and ``int8`` (made by the main
            process before the run; None: export into the cache where first needed).
    """

    kind: str = "torch"
    precision: str = "auto"
    compile: bool = False
    onnx_path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in RUNTIME_KINDS:
            raise ValueError(f"unknown runtime {self.kind!r}; choose {', '.join(RUNTIME_KINDS)}")

    def build(self, loaded: LoadedModel, device: torch.device, chip_size: int) -> Runtime:
        """The runtime, for ``chip_size`` px chips (the ONNX network's fixed size)."""
        if self.kind == "torch":
            if not isinstance(loaded.model, RetinaNet):
                return ModuleRuntime(loaded, device)
            return TorchRuntime(loaded, device, precision=self.precision, compile=self.compile)
        path = self.onnx_path
        if path is None:
            if self.kind == "int8":
                raise ValueError("an int8 runtime needs its quantised network (onnx_path)")
            from geodetect.model.onnx import cached_export

            path = str(cached_export(loaded))
        return OnnxRuntime(path, loaded, kind=self.kind)

    def compute(self, device: torch.device) -> list[str]:
        """What computes the boxes, as the journal's manifest records it, without
        building the runtime."""
        if self.kind == "torch":
            precision = str(autocast_dtype(device, self.precision))  # "None": fp32
            return [device.type, precision, "torch", "compiled" if self.compile else "eager"]
        if self.kind == "int8":
            # Each quantised network has its own calibration: its file names it.
            return ["cpu", "int8", "onnxruntime", Path(self.onnx_path or "").name]
        return ["cpu", "fp32", "onnxruntime"]

    def describe(self) -> str:
        if self.kind == "torch":
            return "torch" + (" (compiled)" if self.compile else "")
        return "ONNX Runtime int8" if self.kind == "int8" else "ONNX Runtime fp32"
