"""A self-contained ONNX detector for the tools QGIS and WebODM users already run:
Deepness (a QGIS plugin) and GeoDeep (``pip install geodeep``).

Both feed one RGB tile as float32 [1, 3, S, S] scaled 0-1 (8-bit values / 255) and read
one output in the "YOLO v5/v7" layout, [1, N, 5 + K]: for each candidate its box centre
x, centre y, width and height in the tile's pixels, its confidence, then one score per
class (the class is the largest); neither applies a sigmoid, and both run their own
class-agnostic NMS over the candidates above ``det_conf``. (GeoDeep also takes a
torchvision RetinaNet's three outputs, but then calls every object class 0, and Deepness
does not take it at all, so the YOLO layout is the one both read right.)

Inside the graph: the model's band scaling (0-1 back to 8-bit values, then its mean and
std), the network, the anchors of an S-pixel tile (constants), box decoding, sigmoid
scores, and the :data:`CANDIDATES` best-scoring boxes. The model's settings go into
the file's ``metadata_props`` as both tools read them (every value JSON):
``model_type`` "Detector", ``det_type`` "YOLO_v5_or_v7_default", ``class_names``
{"0": name, ...}, ``resolution`` (cm per pixel), ``tiles_size``, ``tiles_overlap``
(per cent), ``det_conf`` (the model's score threshold) and ``det_iou_thresh`` (its NMS
IoU).

What those tools do not do, and geodetect's ``detect`` does: seam ownership (an object
on a tile edge can come out twice or cut), box voting (edges placed by the mean of the
overlapping candidates), the second-box rule, test-time augmentation, mosaics of many
files read as one grid, nodata masks, resume after a crash, Dask. GeoDeep only ever
downsamples by whole factors, so imagery coarser than the model's GSD is read as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from geodetect.errors import InputError, OutputError
from geodetect.geometry.boxes import box_centres
from geodetect.model.file import LoadedModel
from geodetect.model.onnx import (
    DEFAULT_OPSET,
    MODEL_ID_KEY,
    _require,
    check_chip_size,
    save_proto,
)
from geodetect.model.runtime import HeadOutputs

INPUT_NAME = "images"
OUTPUT_NAME = "output0"
# Candidates per tile handed to the tool's NMS (torchvision's RetinaNet keeps 1000
# per level before its own).
CANDIDATES = 1000
DET_TYPE = "YOLO_v5_or_v7_default"


class PortableDetector(nn.Module):
    """Tile [1, 3, S, S] in 0-1 to candidates [1, N, 5 + K] (see the module)."""

    def __init__(self, loaded: LoadedModel, chip_size: int) -> None:
        super().__init__()
        spec = loaded.spec
        model = loaded.model.eval()
        self.net = HeadOutputs(model)
        self.box_coder = model.box_coder
        self.size = chip_size
        self.register_buffer(
            "mean", torch.tensor(spec.band_mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer(
            "std", torch.tensor(spec.band_std, dtype=torch.float32).view(1, -1, 1, 1)
        )
        with torch.no_grad():
            probe = torch.zeros(1, spec.num_bands, chip_size, chip_size)
            features = list(model.backbone(probe).values())
            anchors = model.anchor_generator(ImageList(probe, [(chip_size, chip_size)]), features)[
                0
            ]
        self.register_buffer("anchors", anchors.float())
        self.candidates = min(CANDIDATES, len(anchors))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chips = (images * 255.0 - self.mean) / self.std
        logits, offsets = self.net(chips)
        boxes = self.box_coder.decode_single(offsets[0], self.anchors).clamp(0, self.size)
        scores = torch.sigmoid(logits[0])
        best = scores.max(dim=1).values
        top = best.topk(self.candidates).indices
        boxes, scores, best = boxes[top], scores[top], best[top]
        size = boxes[:, 2:] - boxes[:, :2]
        return torch.cat([box_centres(boxes), size, best[:, None], scores], dim=1)[None]


def portable_metadata(loaded: LoadedModel, chip_size: int, overlap: int) -> dict[str, str]:
    """The ``metadata_props`` Deepness and GeoDeep read (see the module), JSON values."""
    spec = loaded.spec
    values = {
        "model_type": "Detector",
        "det_type": DET_TYPE,
        "class_names": {str(i): name for i, name in enumerate(spec.classes)},
        "resolution": round(spec.gsd * 100, 3),
        "tiles_size": chip_size,
        "tile_size": chip_size,
        "tiles_overlap": max(1, round(100 * overlap / chip_size)),
        "det_conf": round(float(spec.score_threshold), 4),
        "det_iou_thresh": round(float(spec.nms_iou), 4),
    }
    out = {key: json.dumps(value) for key, value in values.items()}
    out[MODEL_ID_KEY] = loaded.model_id
    return out


def check_portable(loaded: LoadedModel) -> None:
    """Refuse a model those tools cannot feed: not three 8-bit bands, or no GSD.

    Raises:
        InputError: naming the model file and why.
    """
    spec = loaded.spec
    if spec.num_bands != 3 or spec.input_dtype != "uint8":
        raise InputError(
            f"{loaded.path}: a model of {spec.num_bands} band(s) of {spec.input_dtype}; "
            "Deepness and GeoDeep feed three 8-bit bands, so only such a model runs there"
        )
    if not spec.gsd:
        raise InputError(
            f"{loaded.path}: the model has no GSD (trained without a CRS); Deepness and "
            "GeoDeep need the resolution to read imagery at"
        )


def export_portable(
    loaded: LoadedModel,
    path: str | os.PathLike,
    *,
    chip_size: int,
    overlap: int,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write ``loaded`` as one .onnx file Deepness and GeoDeep run (see the module),
    atomically.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is False.
        InputError: a model they cannot feed, or a chip size not a multiple of 32.
    """
    path = Path(path)
    check_chip_size(chip_size)
    check_portable(loaded)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    _require("onnx")
    _require("onnxscript")
    training = loaded.model.training
    try:
        net = PortableDetector(loaded, chip_size).eval()
        example = torch.rand(1, 3, chip_size, chip_size)
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    finally:
        loaded.model.train(training)
    proto = program.model_proto
    proto.doc_string = (
        f"geodetect detector {loaded.model_id} for Deepness and GeoDeep, {chip_size} px RGB tiles"
    )
    for key, value in portable_metadata(loaded, chip_size, overlap).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return save_proto(proto, path)
