"""ONNX export of a detector's network and an ONNX Runtime runner that answers like it.

Only the convolutional part is exported: backbone + FPN + classification and box heads,
from normalised chips to the head outputs. Anchors, box decoding, score threshold, box
voting and NMS stay in torch and are the torch model's own code, so the runner's
detections are the model's detections whatever postprocessing it is set up with.

The .onnx file says what it is: its ``metadata_props`` hold the model's ModelSpec JSON
(under the model file's key), the id of the model file it was exported from and the chip
size. Nothing is ever unpickled; the .onnx file is protobuf. The runtime that runs such
a file is :class:`geodetect.model.runtime.OnnxRuntime`.

Needs the ``onnx`` extra (``pip install 'geodetect[onnx]'``): onnx, onnxruntime and
onnxscript (torch's ONNX exporter).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

from geodetect.cache import cache_folder, cache_root
from geodetect.errors import GeodetectError, InputError, ModelFileError, OutputError
from geodetect.model.file import METADATA_KEY, LoadedModel
from geodetect.model.runtime import HeadOutputs, level_sizes
from geodetect.model.spec import ModelSpec

log = logging.getLogger(__name__)

# torch's own default for its exporter, which translates at opset 18 or later.
DEFAULT_OPSET = 20
INPUT_NAME = "chips"
OUTPUT_NAMES = ("cls_logits", "bbox_regression")
MODEL_ID_KEY = "geodetect_model_id"
CHIP_SIZE_KEY = "geodetect_chip_size"


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0]:
            raise
        raise GeodetectError(
            f"ONNX support needs the {name} package; install it with pip install 'geodetect[onnx]'"
        ) from None


def check_chip_size(chip_size: int) -> None:
    """Raise InputError unless ``chip_size`` is a multiple of 32 (at least 32)."""
    if chip_size < 32 or chip_size % 32:
        raise InputError(f"--chip-size {chip_size}: must be a multiple of 32 and at least 32")


def export_onnx(
    loaded: LoadedModel,
    path: str | os.PathLike,
    *,
    chip_size: int,
    any_size: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write the network of ``loaded`` up to its head outputs as one .onnx file.

    The graph takes ``chips`` FloatTensor[N, C, S, S] (N dynamic, S = ``chip_size``,
    already normalised) and gives ``cls_logits`` [N, A, K] and ``bbox_regression``
    [N, A, 4] (see :class:`HeadOutputs`). ``any_size``: chips of any height and width
    that are multiples of 32 instead (what geodetect's own runtimes use: crops of chips
    over the edge of the data, any chip size; as fast as a fixed size in ONNX Runtime,
    but about four times as long to export). The file is written atomically (temp
    file, then rename), weights inside it.

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
    dims = {0: torch.export.Dim("batch")}
    if any_size:  # sides of 32 k px, up to 8192 px
        dims |= {2: 32 * torch.export.Dim("h", max=256), 3: 32 * torch.export.Dim("w", max=256)}
    try:
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={INPUT_NAME: dims},
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    finally:
        model.train(training)
    proto = program.model_proto
    sides = "chips of any size" if any_size else f"{chip_size} px chips"
    proto.doc_string = f"geodetect detector {loaded.model_id} up to its head outputs, {sides}"
    metadata = {
        METADATA_KEY: loaded.spec.to_json(),
        MODEL_ID_KEY: loaded.model_id,
        CHIP_SIZE_KEY: "any" if any_size else str(chip_size),
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


def read_onnx_metadata(metadata: dict[str, str], path: Path) -> tuple[ModelSpec, str, int | None]:
    """(spec, model id, chip size or None for any) from an exported file's
    ``metadata_props``."""
    try:
        spec = ModelSpec.from_json(metadata[METADATA_KEY])
        size = metadata[CHIP_SIZE_KEY]
        return spec, metadata[MODEL_ID_KEY], None if size == "any" else int(size)
    except (KeyError, ValueError, TypeError, AttributeError, ArithmeticError, RecursionError):
        raise ModelFileError(
            f"{path}: an ONNX file without geodetect metadata; write one with "
            "`geodetect export-onnx`"
        ) from None


def open_session(path: Path, loaded: LoadedModel, *, threads: int | None = None):
    """An ONNX Runtime session (CPU) of the .onnx file at ``path``, exported (fp32) or
    quantised (int8) from ``loaded``, and its chip size (None: any).

    Args:
        threads: ONNX Runtime's intra-op threads (default ``torch.get_num_threads()``).

    Raises:
        ModelFileError: ``path`` is missing, not ONNX, lacks geodetect metadata or was
            made from another model file.
    """
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX file not found")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - ORT raises its own unrelated classes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(f"{path}: not a usable ONNX file ({first})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    _, model_id, chip_size = read_onnx_metadata(metadata, path)
    if model_id != loaded.model_id:
        raise ModelFileError(
            f"{path}: exported from model {model_id}, not from {loaded.path} "
            f"({loaded.model_id}); export that model again"
        )
    per_cell = loaded.model.anchor_generator.num_anchors_per_location()[0]
    anchors = session.get_outputs()[0].shape[1]
    cells = None if chip_size is None else sum(h * w for h, w in level_sizes(chip_size))
    if cells is not None and anchors != cells * per_cell:
        raise ModelFileError(
            f"{path}: its heads give {anchors} anchors per chip, the model's "
            f"{cells * per_cell}; export the model again"
        )
    return session, chip_size


def onnx_available() -> bool:
    """Whether ONNX Runtime and torch's exporter (onnx, onnxscript) are installed."""
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "onnxscript"))


def cache_dir() -> Path:
    """Where exported networks are kept: the ``onnx`` folder of geodetect's cache
    (:func:`geodetect.cache.cache_root`)."""
    return cache_root() / "onnx"


def cached_export(loaded: LoadedModel) -> Path:
    """The fp32 .onnx file of ``loaded`` for chips of any size, exported into
    :func:`cache_dir` the first time (keyed by model id)."""
    folder = cache_dir()
    path = folder / f"{loaded.model_id}-any.onnx"
    if path.is_file():
        try:
            open_session(path, loaded, threads=1)
            return path
        except ModelFileError:
            log.warning("%s is not usable; exporting the network again", path)
    make_cache_dir(folder)
    started = time.monotonic()
    export_onnx(loaded, path, chip_size=512, any_size=True, overwrite=True)
    log.info(
        "exported the network to ONNX (once per model) in %.0f s: %s",
        time.monotonic() - started,
        path,
    )
    return path


def make_cache_dir(folder: Path | None = None) -> None:
    """Create the ONNX cache folder (:func:`cache_dir`), or say how to choose another."""
    cache_folder("onnx", what="ONNX cache", instead=" or pass --runtime torch")
