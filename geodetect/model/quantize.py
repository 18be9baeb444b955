"""Static int8 quantisation of an exported network with ONNX Runtime (QDQ, per channel).

Convolution weights become int8 per output channel and activations uint8 with ranges
measured on calibration chips (MinMax), so ONNX Runtime runs the convolutions as
integer arithmetic on the CPU. The heads' last convolutions (the logits and box
offsets) and what joins their outputs stay fp32: those are the scores and boxes
themselves, and rounding them would move scores across the threshold (or clip them).
Dynamic quantisation (weights only, as some tools ship) turns convolutions into
ConvInteger, which is often slower than fp32 on CPUs; it is not offered.

The quantised file keeps the fp32 export's metadata (spec, model id, chip size) and adds
what it was calibrated on (:data:`CALIBRATION_KEY`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geodetect.model.onnx import _require, save_proto

log = logging.getLogger(__name__)

CALIBRATION_KEY = "geodetect_int8_calibration"
#: Chips the calibration reads by default: enough for stable MinMax ranges of a
#: ResNet's activations, few enough to calibrate in about a minute on two cores.
CALIBRATION_CHIPS = 32


def calibration_id(chips: Sequence[np.ndarray]) -> str:
    """A short hash of the calibration chips' bytes (names the quantised file)."""
    digest = hashlib.sha256()
    for chip in chips:
        digest.update(np.ascontiguousarray(chip, dtype=np.float32).tobytes())
    return digest.hexdigest()[:12]


def output_nodes(proto) -> list[str]:
    """Names of the nodes that make the outputs from the heads' last convolutions: each
    Conv whose output reaches a graph output through no other Conv, and every node on
    the way (reshapes, transposes, concatenations, decoding). Kept in fp32, they hand the
    outputs over unrounded: a logit range calibrated on chips that happen to hold no
    object would otherwise clip every score at the calibration's largest."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    names: dict[str, None] = {}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        # Every non-Conv node the conv's output flows into.
        after, tensors = [], list(conv.output)
        while tensors:
            for node in consumers.get(tensors.pop(), []):
                if node.op_type != "Conv" and node not in after:
                    after.append(node)
                    tensors.extend(node.output)
        made = set(conv.output).union(*(set(n.output) for n in after))
        if made & outputs:
            names.update(dict.fromkeys([conv.name, *(n.name for n in after)]))
    return list(names)


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    chips: Sequence[np.ndarray],
) -> Path:
    """Write the int8 version of the fp32 network at ``fp32_path`` to ``out_path``.

    Args:
        chips: calibration chips, each array [C, S, S] or [1, C, S, S], scaled as the
            network's input expects (normalised for geodetect's export, 0-1 for the
            Deepness/GeoDeep one), drawn from the imagery the network will meet.

    The file is written atomically (temp file, then rename).
    """
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not chips:
        raise ValueError("int8 calibration needs at least one chip")
    batches = [np.ascontiguousarray(c, dtype=np.float32).reshape(1, *c.shape[-3:]) for c in chips]

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = onnx.load(str(fp32_path))
    input_name = source.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch}

    metadata = {p.key: p.value for p in source.metadata_props}
    with tempfile.TemporaryDirectory(prefix="geodetect-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference and fp32 graph optimisation first, as ORT's guide advises.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=output_nodes(onnx.load(str(prepared))),
            # The convolutions and what lies between them; GroupNorm's per-channel scale
            # (a Mul) stays fp32, as quantising it gains nothing.
            op_types_to_quantize=["Conv", "Add", "Relu", "MaxPool", "Resize"],
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        proto = onnx.load(str(quantized))
    del proto.metadata_props[:]
    metadata[CALIBRATION_KEY] = calibration_id(batches)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return save_proto(proto, out_path)
