"""ONNX export of a detector's network and an ONNX Runtime runner that answers like it.

Only the convolutional part is exported: backbone + FPN + classification and box heads,
from normalised chips to the head outputs. Anchors, box decoding, score threshold, box
voting and NMS stay in torch and are the torch model's own code, so the runner's
detections are the model's detections whatever postprocessing it is set up with.

The .onnx file says what it is: its ``metadata_props`` hold the model's ModelSpec JSON
(under the model file's key), the id of the model file it was exported from and the chip
size. Nothing is ever unpickled; the .onnx file is protobuf.

Needs the ``onnx`` extra (``pip install 'geodetect[onnx]'``): onnx, onnxruntime and
onnxscript (torch's ONNX exporter).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList

from geodetect.errors import GeodetectError, InputError, ModelFileError, OutputError
from geodetect.model.file import METADATA_KEY, LoadedModel
from geodetect.model.spec import ModelSpec

log = logging.getLogger(__name__)

# torch's own default for its exporter, which translates at opset 18 or later.
DEFAULT_OPSET = 20
INPUT_NAME = "chips"
OUTPUT_NAMES = ("cls_logits", "bbox_regression")
MODEL_ID_KEY = "geodetect_model_id"
CHIP_SIZE_KEY = "geodetect_chip_size"
# Strides of the FPN levels P3-P7 the heads read.
LEVEL_STRIDES = (8, 16, 32, 64, 128)


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0]:
            raise
        raise GeodetectError(
            f"ONNX support needs the {name} package; install it with pip install 'geodetect[onnx]'"
        ) from None


class HeadOutputs(nn.Module):
    """The part of a torchvision RetinaNet that is exported: chips to head outputs.

    Input: FloatTensor[N, C, S, S], normalised chips (S a multiple of 32). Output:
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


def level_sizes(chip_size: int) -> list[int]:
    """Edge in cells of each FPN level P3-P7 of a ``chip_size`` chip.

    P6 and P7 are stride-2 convolutions of the level below, so their edges round up:
    a 96 px chip has P5 3 cells wide, P6 2 and P7 1.
    """
    return [-(-chip_size // stride) for stride in LEVEL_STRIDES]


def check_chip_size(chip_size: int) -> None:
    """Raise InputError unless ``chip_size`` is a multiple of 32 (at least 32)."""
    if chip_size < 32 or chip_size % 32:
        raise InputError(f"--chip-size {chip_size}: must be a multiple of 32 and at least 32")


def export_onnx(
    loaded: LoadedModel,
    path: str | os.PathLike,
    *,
    chip_size: int,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write the network of ``loaded`` up to its head outputs as one .onnx file.

    The graph takes ``chips`` FloatTensor[N, C, S, S] (N dynamic, S = ``chip_size``,
    already normalised) and gives ``cls_logits`` [N, A, K] and ``bbox_regression``
    [N, A, 4] (see :class:`HeadOutputs`). The file is written atomically (temp file,
    then rename), weights inside it.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is False.
        InputError: ``chip_size`` is not a multiple of 32.
    """
    path = Path(path)
    check_chip_size(chip_size)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    _require("onnx")
    _require("onnxscript")

    model = loaded.model
    parameter = next(model.parameters())
    example = torch.zeros(
        # A batch of 2: torch.export specialises a dimension whose example is 1.
        (2, loaded.spec.num_bands, chip_size, chip_size),
        dtype=torch.float32,
        device=parameter.device,
    )
    training = model.training
    net = HeadOutputs(model).eval()
    try:
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    finally:
        model.train(training)
    proto = program.model_proto
    proto.doc_string = (
        f"geodetect detector {loaded.model_id} up to its head outputs, {chip_size} px chips"
    )
    metadata = {
        METADATA_KEY: loaded.spec.to_json(),
        MODEL_ID_KEY: loaded.model_id,
        CHIP_SIZE_KEY: str(chip_size),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value

    return save_proto(proto, path)


def save_proto(proto, path: Path) -> Path:
    """Write an ONNX model proto to ``path`` atomically (temp file, then rename)."""
    onnx = _require("onnx")
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_onnx_metadata(metadata: dict[str, str], path: Path) -> tuple[ModelSpec, str, int]:
    """(spec, model id, chip size) from an exported file's ``metadata_props``."""
    try:
        spec = ModelSpec.from_json(metadata[METADATA_KEY])
        return spec, metadata[MODEL_ID_KEY], int(metadata[CHIP_SIZE_KEY])
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError, RecursionError):
        raise ModelFileError(
            f"{path}: an ONNX file without geodetect metadata; write one with "
            "`geodetect export-onnx`"
        ) from None


class OnnxRetinaNet:
    """Runs an exported network in ONNX Runtime (CPU) and the rest in the torch model.

    Called like geodetect's torch detector in eval mode::

        runner = OnnxRetinaNet("pools.onnx", load_model("pools.model"))
        detections = runner(chips)  # chips: FloatTensor[N, C, S, S], normalised

    Each detection is a dict of ``boxes`` (FloatTensor[K, 4], xyxy chip pixels),
    ``scores`` (FloatTensor[K]) and ``labels`` (Int64Tensor[K], indices into
    ``spec.classes``), on the device of ``chips``. Anchors come from the torch model's
    ``anchor_generator`` and detections from its ``postprocess_detections``, read at
    each call: its ``score_thresh``, ``nms_thresh``, ``detections_per_img`` and box
    voting apply (``score_thresh``/``nms_thresh`` set on the runner are set on it).

    Args:
        path: .onnx file written by :func:`export_onnx` from the same model file.
        loaded: the model it was exported from (checked by model id).
        threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).

    Raises:
        ModelFileError: ``path`` is missing, not ONNX, lacks geodetect metadata or was
            exported from another model file.
    """

    def __init__(
        self, path: str | os.PathLike, loaded: LoadedModel, *, threads: int | None = None
    ) -> None:
        ort = _require("onnxruntime")
        self.path = Path(path)
        self.model = loaded.model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: ONNX file not found")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own unrelated classes
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFileError(f"{self.path}: not a usable ONNX file ({first})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.spec, model_id, self.chip_size = read_onnx_metadata(metadata, self.path)
        if model_id != loaded.model_id:
            raise ModelFileError(
                f"{self.path}: exported from model {model_id}, not from {loaded.path} "
                f"({loaded.model_id}); export that model again"
            )
        cells = sum(size * size for size in level_sizes(self.chip_size))
        per_cell = self.model.anchor_generator.num_anchors_per_location()[0]
        anchors = self.session.get_outputs()[0].shape[1]
        if anchors != cells * per_cell:
            raise ModelFileError(
                f"{self.path}: its heads give {anchors} anchors per chip, the model's "
                f"{cells * per_cell}; export the model again"
            )

    @property
    def score_thresh(self) -> float:
        return self.model.score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.model.score_thresh = value

    @property
    def nms_thresh(self) -> float:
        return self.model.nms_thresh

    @nms_thresh.setter
    def nms_thresh(self, value: float) -> None:
        self.model.nms_thresh = value

    def head_outputs(self, chips: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cls_logits`` [N, A, K] and ``bbox_regression`` [N, A, 4] from ONNX Runtime,
        on the device of ``chips`` [N, C, S, S]."""
        expected = (self.spec.num_bands, self.chip_size, self.chip_size)
        if chips.ndim != 4 or tuple(chips.shape[1:]) != expected:
            raise ValueError(
                f"chips must be [N, {', '.join(map(str, expected))}] for {self.path}, "
                f"got {list(chips.shape)}"
            )
        feed = chips.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: feed})
        return {
            name: torch.from_numpy(array).to(chips.device)
            for name, array in zip(OUTPUT_NAMES, outputs, strict=True)
        }

    def __call__(self, chips: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        if len(chips) == 0:
            return []
        with torch.no_grad():
            head_outputs = self.head_outputs(chips)
            sizes = level_sizes(self.chip_size)
            image_sizes = [(self.chip_size, self.chip_size)] * len(chips)
            # The anchor generator reads only the feature maps' shapes.
            shapes = [chips.new_empty((0, 0, size, size)) for size in sizes]
            anchors = self.model.anchor_generator(ImageList(chips, image_sizes), shapes)
            # Split per level as RetinaNet.forward does.
            total = sum(size * size for size in sizes)
            per_cell = head_outputs["cls_logits"].size(1) // total
            per_level = [size * size * per_cell for size in sizes]
            split_outputs: dict[str, list[torch.Tensor]] = {
                name: list(value.split(per_level, dim=1)) for name, value in head_outputs.items()
            }
            split_anchors = [list(a.split(per_level)) for a in anchors]
            return self.model.postprocess_detections(split_outputs, split_anchors, image_sizes)


def onnx_available() -> bool:
    """Whether ONNX Runtime and torch's exporter (onnx, onnxscript) are installed."""
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "onnxscript"))


def cache_dir() -> Path:
    """Where exported networks are kept: ``$GEODETECT_CACHE/onnx``, else
    ``$XDG_CACHE_HOME/geodetect/onnx`` (default ``~/.cache/geodetect/onnx``)."""
    root = os.environ.get("GEODETECT_CACHE")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "geodetect" / "onnx"


def cached_runner(loaded: LoadedModel, chip_size: int) -> OnnxRetinaNet:
    """An ONNX Runtime runner for ``loaded`` at ``chip_size``, exporting the network
    into :func:`cache_dir` the first time (keyed by model id and chip size)."""
    folder = cache_dir()
    path = folder / f"{loaded.model_id}-{chip_size}px.onnx"
    if path.is_file():
        try:
            return OnnxRetinaNet(path, loaded)
        except ModelFileError:
            log.warning("%s is not usable; exporting the network again", path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot create the ONNX cache ({exc.strerror}); set GEODETECT_CACHE "
            "to a writable folder or pass --runtime torch"
        ) from None
    log.info("exporting the network to ONNX for %d px chips (once per model): %s", chip_size, path)
    export_onnx(loaded, path, chip_size=chip_size, overwrite=True)
    return OnnxRetinaNet(path, loaded)
