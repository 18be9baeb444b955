"""The model file: one safetensors file holding the weights and a JSON ModelSpec.

Loading parses a length-prefixed JSON header and raw tensor bytes; nothing in the file
is ever unpickled or executed. Besides the weights, a file written by training holds a
few of its training chips as they were read (``calibration.chips``, the imagery's own
dtype): what an int8 version of the network is calibrated on, so that it depends on the
model alone (see :mod:`geodetect.model.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from geodetect.errors import ModelFileError, OutputError
from geodetect.model.build import build_retinanet
from geodetect.model.spec import ModelSpec

METADATA_KEY = "geodetect"
_MAX_HEADER = 100 * 1024 * 1024
#: The tensor holding the calibration chips: [N, C, S, S] in the training imagery's dtype.
CALIBRATION_KEY = "calibration.chips"


@dataclass
class LoadedModel:
    """A detector ready to run, with its spec and a short content hash as its id."""

    model: nn.Module
    spec: ModelSpec
    model_id: str
    path: Path
    # Training chips as read (Tensor[N, C, S, S], the imagery's dtype); None in files
    # written before they were kept, or by hand.
    calibration: torch.Tensor | None = None


def file_id(path: str | os.PathLike) -> str:
    """First 12 hex digits of the file's SHA-256: a stable id for provenance columns."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _sniff(path: Path) -> None:
    """Refuse files that are plainly not safetensors, naming what they look like."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found; check the --model path") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read model file ({exc.strerror})") from None
    if size >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= min(size - 8, _MAX_HEADER) and head[8:9] == b"{":
            return
    if head[:2] == b"PK" and not _is_torch_zip(path):
        raise ModelFileError(
            f"{path}: is a zip archive, not a model file; unzip it and pass the .model "
            "file inside with --model"
        )
    if head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        raise ModelFileError(
            f"{path}: looks like a pickled PyTorch checkpoint; geodetect never unpickles "
            "model files (they can run code). Use a geodetect .model file (safetensors)"
        )
    raise ModelFileError(
        f"{path}: not a geodetect model file (no valid safetensors header; truncated or "
        "another format); re-copy it or write a new one with `geodetect train`"
    )


def _is_torch_zip(path: Path) -> bool:
    """Whether a zip archive is a `torch.save` checkpoint (a pickle inside); never unpickles."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # a damaged zip: describe it as the checkpoint it most likely is


def _check_tensors(path: Path, header: dict, spec: ModelSpec, data_size: int) -> None:
    """The tensors the header lists must lie inside the file and be exactly those of the
    network the metadata describes (built on the meta device: no memory, no weights)."""
    try:
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        calibration = tensors.pop(CALIBRATION_KEY, None)
        if calibration is not None:
            _check_calibration(path, calibration, spec)
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in tensors.items()}
    except (TypeError, KeyError, IndexError, ValueError, OverflowError):
        raise ModelFileError(
            f"{path}: damaged model file (unreadable tensor index); re-copy it"
        ) from None
    if end > data_size:
        raise ModelFileError(
            f"{path}: model file is truncated ({data_size} of {end} bytes of weights); re-copy it"
        )
    try:
        with torch.device("meta"):
            expected = build_retinanet(spec, pretrained="none").state_dict()
    except (ValueError, RuntimeError, TypeError, ArithmeticError) as exc:
        raise ModelFileError(
            f"{path}: unusable geodetect metadata ({_one_line(exc)}); the file was altered "
            "or written by an incompatible tool"
        ) from None
    wanted = {k: tuple(v.shape) for k, v in expected.items()}
    if shapes != wanted:
        wrong = sorted(k for k in set(wanted) & set(shapes) if wanted[k] != shapes[k])
        missing, extra = sorted(set(wanted) - set(shapes)), sorted(set(shapes) - set(wanted))
        if wrong:
            what = f"{wrong[0]} is {list(shapes[wrong[0]])}, expected {list(wanted[wrong[0]])}"
        else:
            what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ModelFileError(
            f"{path}: the weights do not match the architecture its metadata describes "
            f"({what}); the file was altered or written by an incompatible tool"
        )


def _check_calibration(path: Path, entry: dict, spec: ModelSpec) -> None:
    shape = [int(n) for n in entry.get("shape", [])]
    if len(shape) != 4 or shape[1] != spec.num_bands or shape[2] != shape[3]:
        raise ModelFileError(
            f"{path}: its calibration chips are {shape}, not [N, {spec.num_bands}, S, S]; "
            "the file was altered or written by an incompatible tool"
        )


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """The ModelSpec stored in a model file, without loading the weights.

    The header's tensor index is checked against the file size and against the network
    the metadata describes, so a truncated or inconsistent file is refused here too.
    """
    path = Path(path)
    _sniff(path)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        raw = f.read(header_len)
        size = os.fstat(f.fileno()).st_size
    try:
        header = json.loads(raw)
        meta = header.get("__metadata__") or {}
        text = meta[METADATA_KEY]
    except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
        raise ModelFileError(
            f"{path}: a safetensors file without geodetect metadata (classes, bands, "
            "scaling); only models written by `geodetect train` can be used"
        ) from None
    try:
        spec = ModelSpec.from_json(text)
    except (ValueError, TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise ModelFileError(f"{path}: unusable geodetect metadata: {_one_line(exc)}") from None
    _check_tensors(path, header, spec, size - 8 - header_len)
    return spec


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the detector stored in ``path`` (eval mode, on ``device``).

    Raises:
        ModelFileError: the file is missing, truncated, corrupt, a pickle, or its
            weights do not fit its own description.
    """
    path = Path(path)
    spec = read_spec(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: damaged model weights ({exc}); re-copy the file") from None
    calibration = state.pop(CALIBRATION_KEY, None)
    model = build_retinanet(spec, pretrained="none")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelFileError(
            f"{path}: the weights do not match the architecture its metadata describes "
            f"({first}); the file was altered or written by an incompatible tool"
        ) from None
    model.eval().to(device)
    return LoadedModel(
        model=model, spec=spec, model_id=file_id(path), path=path, calibration=calibration
    )


def save_model(
    model: nn.Module,
    spec: ModelSpec,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    calibration: torch.Tensor | None = None,
) -> Path:
    """Write weights + spec to one safetensors file, atomically (temp file, then rename).

    ``calibration``: training chips as read, [N, C, S, S] in the imagery's dtype (see
    the module), kept beside the weights.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; pass --overwrite to replace it")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if calibration is not None:
        state[CALIBRATION_KEY] = calibration.detach().to("cpu").contiguous()
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={METADATA_KEY: spec.to_json()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
