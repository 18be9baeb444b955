"""`geodetect weights`: ImageNet backbone weights placed in torch's cache once, by import
or download, then used by training offline. No test reaches beyond this machine."""

from __future__ import annotations

import collections
import datetime
import functools
import hashlib
import http.server
import logging
import os
import threading

import pytest
import torch
from torchvision import models

from geodetect.cli import main
from geodetect.errors import DownloadError, InputError
from geodetect.model import weights
from geodetect.model.build import _imagenet_state_dict, build_backbone, imagenet_cache_path
from geodetect.model.spec import BACKBONES

from conftest import make_tiny_spec

CLOSED_PORT_URL = "http://127.0.0.1:9/x.pth"  # the discard port: nothing listens there


@pytest.fixture(autouse=True)
def fresh_cli_logging():
    """The CLI gives the ``geodetect`` logger a handler on the stderr of its time; each
    test starts without one, so that one writes to this test's captured stderr."""
    logger = logging.getLogger("geodetect")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def cache(torch_cache):
    return torch_cache


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return models.resnet18(weights=None).state_dict()


@pytest.fixture
def resnet18_file(tmp_path, resnet18_state):
    path = tmp_path / "copied" / "my-resnet18.pth"
    path.parent.mkdir()
    torch.save(resnet18_state, path)
    return path


def geodetect(capsys, *args):
    """Run the CLI in this process: (exit code, stdout lines, stderr lines)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code, err, *needles):
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("geodetect: error: ")
    for needle in needles:
        assert str(needle) in err[0]


def listed(capsys):
    code, out, _ = geodetect(capsys, "weights", "list")
    assert code == 0
    return {line.split()[0]: line.split() for line in out}


def test_cache_follows_torch_home(cache):
    assert imagenet_cache_path("resnet18") == cache / "resnet18-f37072fd.pth"
    assert imagenet_cache_path("resnet152").name == "resnet152-f82ba261.pth"


def test_imported_file_is_listed_and_used_by_the_backbone(
    capsys, cache, resnet18_file, resnet18_state
):
    rows = listed(capsys)
    assert list(rows) == [*BACKBONES, "synthetic"]
    assert rows["resnet18"] == ["resnet18", "missing", "-", str(cache / "resnet18-f37072fd.pth")]
    assert rows["synthetic"][:3] == ["synthetic", "start", "missing"]  # built by train

    code, out, err = geodetect(capsys, "weights", "import", resnet18_file, "-q")
    assert code == 0 and not err
    target = cache / "resnet18-f37072fd.pth"
    assert out == [f"resnet18: {resnet18_file} imported to {target}"]
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # no temporary left
    assert target.read_bytes() == resnet18_file.read_bytes()

    rows = listed(capsys)
    size = f"{target.stat().st_size / 2**20:.1f}"
    assert rows["resnet18"] == ["resnet18", "cached", size, "MiB", str(target)]
    assert rows["resnet34"][1] == "missing"

    state = _imagenet_state_dict("resnet18")
    assert state.keys() == resnet18_state.keys()
    assert all(torch.equal(state[key], resnet18_state[key]) for key in state)
    backbone = build_backbone(make_tiny_spec(), pretrained="imagenet")
    assert torch.equal(backbone.body.conv1.weight, resnet18_state["conv1.weight"])


def test_import_again_is_a_no_op_and_other_weights_need_overwrite(
    capsys, cache, tmp_path, resnet18_file
):
    target = cache / "resnet18-f37072fd.pth"
    assert geodetect(capsys, "weights", "import", resnet18_file, "-q")[0] == 0
    code, out, _ = geodetect(capsys, "weights", "import", resnet18_file, "-q")
    assert code == 0 and out == [f"resnet18: {target} already holds this file"]

    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    torch.save(models.resnet18(weights=None).state_dict(), other)
    code, _, err = geodetect(capsys, "weights", "import", other, "-q")
    assert_one_line_error(code, err, target, "already holds other resnet18 weights", "--overwrite")
    assert target.read_bytes() == resnet18_file.read_bytes()

    code, _, _ = geodetect(capsys, "weights", "import", other, "--overwrite", "-q")
    assert code == 0 and target.read_bytes() == other.read_bytes()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backbone_is_inferred_from_parameter_shapes(backbone):
    with torch.device("meta"):
        state = getattr(models, backbone)(weights=None).state_dict()
    assert weights.infer_backbone(state, "weights.pth") == backbone


def test_torchvision_file_name_decides_unless_backbone_is_given(
    capsys, cache, tmp_path, resnet18_file
):
    renamed = tmp_path / "resnet50-11ad3fa6.pth"
    renamed.write_bytes(resnet18_file.read_bytes())
    code, _, err = geodetect(capsys, "weights", "import", renamed, "-q")
    assert_one_line_error(code, err, renamed, "not the weights of a torchvision resnet50")
    assert not cache.exists() or not any(cache.iterdir())

    code, out, _ = geodetect(capsys, "weights", "import", renamed, "--backbone", "resnet18", "-q")
    assert code == 0 and out[0].startswith("resnet18: ")
    for name in ("vgg16", "all"):
        code, _, err = geodetect(capsys, "weights", "import", renamed, "--backbone", name)
        assert_one_line_error(code, err, f"unknown backbone '{name}'")


class _Payload:
    """Pickles as a call to os.system: what a hostile weights file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _resnet18_with(state, **changes):
    return collections.OrderedDict(state, **changes)


BAD_FILES = {
    "wrong keys": (
        lambda state, tmp: {"weight": torch.zeros(3)},
        [],
        "not the weights of a torchvision ResNet",
    ),
    "datetime object": (
        lambda state, tmp: _resnet18_with(state, created=datetime.datetime(2024, 1, 1)),
        [],
        "holds Python objects besides tensors (datetime.datetime)",
    ),
    "os.system call": (
        lambda state, tmp: {"conv1.weight": _Payload(tmp / "pwned")},
        [],
        "holds Python objects besides tensors (posix.system)",
    ),
    "not a mapping": (
        lambda state, tmp: list(state.values()),
        [],
        "not a state dict",
    ),
    "a number among tensors": (
        lambda state, tmp: _resnet18_with(state, epoch=3),
        [],
        "not a state dict",
    ),
    "other classifier": (
        lambda state, tmp: _resnet18_with(
            state, **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
        ),
        ["--backbone", "resnet18"],
        "fc.weight is [10, 512] instead of [1000, 512]",
    ),
    "missing layer": (
        lambda state, tmp: {k: v for k, v in state.items() if not k.startswith("layer4")},
        ["--backbone", "resnet18"],
        "missing parameter(s) (layer4.0.conv1.weight",
    ),
    "NaN weights": (
        lambda state, tmp: _resnet18_with(
            state, **{"conv1.weight": torch.full((64, 3, 7, 7), float("nan"))}
        ),
        [],
        "conv1.weight holds NaN or infinite values",
    ),
}


@pytest.mark.parametrize("content, extra, needle", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_wrong_or_hostile_file_is_refused_in_one_line(
    capsys, cache, tmp_path, resnet18_state, content, extra, needle
):
    path = tmp_path / "weights.pth"
    torch.save(content(resnet18_state, tmp_path), path)
    code, out, err = geodetect(capsys, "weights", "import", path, *extra)
    assert_one_line_error(code, err, path, needle)
    assert not out
    assert not (tmp_path / "pwned").exists()
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("data", [b"", b"not a pytorch file\n", b"PK\x03\x04 truncated zip"])
def test_file_torch_did_not_write_is_refused_in_one_line(capsys, cache, tmp_path, data):
    path = tmp_path / "resnet18-f37072fd.pth"
    path.write_bytes(data)
    code, _, err = geodetect(capsys, "weights", "import", path)
    assert_one_line_error(code, err, path, "not a file torch.save wrote")


def test_unreachable_server_is_one_line_naming_url_and_import(capsys, cache, monkeypatch):
    with pytest.raises(DownloadError) as info:
        weights.fetch_imagenet_weights("resnet18", progress=False, url=CLOSED_PORT_URL)
    message = str(info.value)
    assert message.startswith(f"cannot download {CLOSED_PORT_URL} (")
    assert message.endswith(
        "); copy the file from a machine with internet and run 'geodetect weights import FILE'"
    )
    assert "\n" not in message
    assert not any(cache.iterdir())  # torch.hub removed its temporary file

    monkeypatch.setattr(weights, "imagenet_url", lambda backbone: CLOSED_PORT_URL)
    code, out, err = geodetect(capsys, "weights", "fetch", "-q")
    assert_one_line_error(code, err, CLOSED_PORT_URL, "geodetect weights import FILE")
    assert not out


def test_fetch_leaves_cached_weights_alone(capsys, cache, resnet18_file, monkeypatch):
    geodetect(capsys, "weights", "import", resnet18_file, "-q")
    monkeypatch.setattr(weights, "imagenet_url", lambda backbone: CLOSED_PORT_URL)
    code, out, _ = geodetect(capsys, "weights", "fetch", "resnet18", "-q")
    assert code == 0
    assert out == [f"resnet18: already in {cache / 'resnet18-f37072fd.pth'}"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on this machine serving ``tmp_path / "served"``; yields its URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_is_checked_against_the_hash_in_the_file_name(
    cache, local_server, resnet18_file, monkeypatch
):
    root, url = local_server
    (root / "w.pth").write_bytes(resnet18_file.read_bytes())
    with pytest.raises(DownloadError, match="arrived damaged .*invalid hash value"):
        weights.fetch_imagenet_weights("resnet18", progress=False, url=f"{url}/w.pth")
    assert not any(cache.iterdir())

    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    named = cache / f"resnet18-{digest[:8]}.pth"
    monkeypatch.setattr(weights, "imagenet_cache_path", lambda backbone: named)
    entry, downloaded = weights.fetch_imagenet_weights(
        "resnet18", progress=False, url=f"{url}/w.pth"
    )
    assert downloaded and entry.path == named and entry.size == resnet18_file.stat().st_size
    assert sorted(p.name for p in cache.iterdir()) == [named.name]
    assert weights.fetch_imagenet_weights("resnet18", url=CLOSED_PORT_URL)[1] is False


def test_backbone_names_as_given_on_the_command_line():
    assert weights.resolve_backbones([]) == ["resnet18"]
    assert weights.resolve_backbones(["all"]) == list(BACKBONES)
    assert weights.resolve_backbones(["resnet50", "resnet18", "resnet50"]) == [
        "resnet50",
        "resnet18",
    ]
    with pytest.raises(InputError, match="unknown backbone 'resnet9'"):
        weights.resolve_backbones(["resnet9"])
