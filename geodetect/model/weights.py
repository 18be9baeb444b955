"""ImageNet backbone weights in torch's local cache: listed, downloaded once, or imported
from a copied file, so that training finds them offline.

Files keep torchvision's names (``resnet18-f37072fd.pth``, the hash being the start of
the file's SHA-256) in ``$TORCH_HOME/hub/checkpoints``, where torchvision itself and
:func:`geodetect.model.build.build_backbone` look for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torchvision import models

from geodetect.errors import DownloadError, InputError, ModelFileError, OutputError
from geodetect.model.build import imagenet_cache_path, imagenet_url
from geodetect.model.spec import BACKBONES, ModelSpec

log = logging.getLogger(__name__)

# The backbone a new model gets, hence the one worth fetching first.
DEFAULT_BACKBONE: str = next(f.default for f in fields(ModelSpec) if f.name == "backbone")

# torch.hub opens URLs without a timeout: a network that drops packets would hang forever.
_DOWNLOAD_TIMEOUT_S = 60.0

_OFFLINE_HINT = "copy the file from a machine with internet and run 'geodetect weights import FILE'"


@dataclass(frozen=True)
class CachedWeights:
    """The ImageNet weights of one backbone in torch's cache.

    Attributes:
        backbone: the ResNet name (``"resnet18"`` ... ``"resnet152"``).
        path: where the file is, or would be, under torchvision's file name.
        size: the file's size in bytes; None when it is not there.
    """

    backbone: str
    path: Path
    size: int | None

    @classmethod
    def of(cls, backbone: str) -> CachedWeights:
        path = imagenet_cache_path(backbone)
        return cls(backbone, path, path.stat().st_size if path.is_file() else None)


def cached_weights() -> list[CachedWeights]:
    """The cache state of every supported backbone, smallest ResNet first."""
    return [CachedWeights.of(backbone) for backbone in BACKBONES]


def resolve_backbones(names: Sequence[str]) -> list[str]:
    """Backbone names as given on a command line: none means the default backbone,
    ``"all"`` every one; repeats are dropped.

    Raises:
        InputError: a name is not a supported ResNet.
    """
    chosen: list[str] = []
    for name in names or [DEFAULT_BACKBONE]:
        if name == "all":
            chosen += BACKBONES
        elif name in BACKBONES:
            chosen.append(name)
        else:
            raise InputError(
                f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)} or all)"
            )
    return list(dict.fromkeys(chosen))


def fetch_imagenet_weights(
    backbone: str, *, progress: bool = True, url: str | None = None
) -> tuple[CachedWeights, bool]:
    """Download torchvision's ImageNet weights of ``backbone`` into torch's cache.

    torch.hub's own downloader does the work: it writes a temporary file beside the
    target, checks its SHA-256 against the hash in torchvision's file name, then renames
    it, so an interrupted download never leaves a partial file under the real name.

    Args:
        progress: show torch's progress bar on stderr.
        url: where to download from; default: torchvision's address for ``backbone``.

    Returns:
        The cached weights, and whether they were downloaded (False: already there).

    Raises:
        DownloadError: the network or the server failed, or the file arrived damaged.
    """
    target = imagenet_cache_path(backbone)
    if target.is_file():
        return CachedWeights.of(backbone), False
    url = url or imagenet_url(backbone)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", url, target)
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(
                url, str(target), _hash_prefix(target.name), progress=progress
            )
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url} ({exc}); {_OFFLINE_HINT}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url} ({exc.reason}); {_OFFLINE_HINT}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DownloadError(f"cannot download {url} ({reason}); {_OFFLINE_HINT}") from None
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise DownloadError(
            f"{url} arrived damaged ({exc}); run 'geodetect weights fetch {backbone}' again"
        ) from None
    return CachedWeights.of(backbone), True


def import_imagenet_weights(
    source: str | os.PathLike, *, backbone: str | None = None, overwrite: bool = False
) -> tuple[CachedWeights, bool]:
    """Check a copied weights file and place it in torch's cache under torchvision's name.

    The file is loaded with ``torch.load(weights_only=True)``, never unpickled in full,
    and must be a state dict that a torchvision ResNet accepts as it is (strict
    ``load_state_dict``). It is copied to a temporary file in the cache folder and
    renamed, so the cache never holds half a file. A file that is not torchvision's
    published one (another SHA-256) is used all the same, with a warning.

    Args:
        source: the file, e.g. ``resnet18-f37072fd.pth`` copied from another machine.
        backbone: the ResNet it is for; default: from torchvision's file name, else from
            the state dict's keys and shapes.
        overwrite: replace different weights already cached for that backbone.

    Returns:
        The cached weights, and whether the file was copied (False: identical already).

    Raises:
        InputError: ``source`` is missing, or ``backbone`` is not a supported ResNet.
        ModelFileError: the file is not the weights of that ResNet, or not safe to load.
        OutputError: other weights are cached for that backbone and ``overwrite`` is off.
    """
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    state = read_state_dict(source)
    if backbone is None:
        backbone = infer_backbone(state, source)
    elif backbone not in BACKBONES:
        raise InputError(f"unknown backbone {backbone!r} (choose from {', '.join(BACKBONES)})")
    check_state_dict(state, backbone, source)
    del state

    target = imagenet_cache_path(backbone)
    digest = _sha256(source)
    published = _hash_prefix(target.name)
    if published and not digest.startswith(published):
        log.warning(
            "%s is not torchvision's published %s file (SHA-256 %s..., expected %s...); "
            "it is used as given",
            source,
            target.name,
            digest[: len(published)],
            published,
        )
    if target.is_file():
        if _sha256(target) == digest:
            return CachedWeights.of(backbone), False
        if not overwrite:
            raise OutputError(
                f"{target} already holds other {backbone} weights; add --overwrite to "
                f"replace them with {source}"
            )
    copy_atomically(source, target)
    log.debug("%s weights from %s placed at %s", backbone, source, target)
    return CachedWeights.of(backbone), True


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a file ``torch.save`` wrote, loaded on the CPU with
    ``weights_only=True``: a file holding any other Python object is refused unread.

    Raises:
        ModelFileError: the file is unreadable, not a PyTorch file, holds other objects
            than tensors, or is not a mapping of parameter names to tensors.
    """
    try:
        with warnings.catch_warnings():
            # Protocol notices about foreign pickles: the outcome is reported below.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except MemoryError:
        raise
    except Exception as exc:  # torch.load fails with whatever the bytes provoke
        raise ModelFileError(f"{path}: {_load_failure(exc)}") from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise ModelFileError(
            f"{path}: not a state dict (a mapping of parameter names to tensors, as "
            "torchvision's resnet18-f37072fd.pth is)"
        )
    return state


def infer_backbone(state: dict[str, torch.Tensor], path: str | os.PathLike) -> str:
    """The ResNet a state dict belongs to: from torchvision's file name when ``path``
    has one, else the backbone whose parameter names and shapes are exactly those.

    Raises:
        ModelFileError: no supported ResNet has these parameters.
    """
    by_file_name = {imagenet_cache_path(b).name: b for b in BACKBONES}
    if Path(path).name in by_file_name:
        return by_file_name[Path(path).name]
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    for backbone in BACKBONES:
        if shapes == _parameter_shapes(backbone):
            return backbone
    raise ModelFileError(
        f"{path}: not the weights of a torchvision ResNet ({', '.join(BACKBONES)}): its "
        "parameter names or shapes differ; name the backbone with --backbone to see how"
    )


def check_state_dict(
    state: dict[str, torch.Tensor], backbone: str, path: str | os.PathLike
) -> None:
    """Refuse ``state`` unless a torchvision ``backbone`` (``weights=None``) accepts it
    with a strict ``load_state_dict`` and every float in it is finite.

    Raises:
        ModelFileError: naming ``path`` and the first differences.
    """
    expected = _parameter_shapes(backbone)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} is {list(state[key].shape)} instead of {list(shape)}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing parameter(s) ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected parameter(s) ({_first(unexpected)})")
    if reshaped:
        problems.append(_first(reshaped))
    if problems:
        raise ModelFileError(
            f"{path}: not the weights of a torchvision {backbone}: " + "; ".join(problems)
        )
    try:
        getattr(models, backbone)(weights=None).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelFileError(f"{path}: a torchvision {backbone} refuses it ({first})") from None
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{path}: {key} holds NaN or infinite values; the file is damaged")


def _parameter_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a torchvision ``backbone``, built without memory."""
    with torch.device("meta"):
        model = getattr(models, backbone)(weights=None)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _first(items: list[str], count: int = 2) -> str:
    return ", ".join(items[:count]) + (", ..." if len(items) > count else "")


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words (its own messages
    run to paragraphs and suggest loading the file unsafely)."""
    text = str(exc)
    if match := re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE):
        return (
            f"it holds Python objects besides tensors ({match.group(1)}); geodetect loads "
            "weights only, never arbitrary pickles"
        )
    return "not a file torch.save wrote (truncated, damaged or another format)"


def _hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix in a torchvision file name (``resnet18-f37072fd.pth``)."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) if match and match.group(1) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` to a temporary file beside ``target``, then rename it over."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
    )
    try:
        with os.fdopen(handle, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the cache from other users
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
