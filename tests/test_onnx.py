"""ONNX export (`geodetect export-onnx`) and the ONNX Runtime runner: same detections as
the torch model, a self-describing file, and the command line's one-line refusals."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from geodetect.errors import ModelFileError
from geodetect.model import ModelSpec, build_retinanet, file_id, load_model, save_model

from conftest import assert_one_line_error, make_tiny_spec, run_cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from geodetect.model.runtime import (  # noqa: E402
    Decoding,
    OnnxRuntime,
    TorchRuntime,
    level_sizes,
)

# Not the model's 64 px training chip, and one whose P6/P7 edges round up (3 -> 2 -> 1).
CHIP = 96


run = run_cli


def _tiny_model(path, *, seed: int):
    """An untrained two-class tiny RetinaNet whose scores spread over 0.001-0.1, so a
    low threshold keeps hundreds of boxes with few near-ties in score."""
    torch.manual_seed(seed)
    spec = make_tiny_spec(classes=["pool", "hot tub"], score_threshold=0.0)
    model = build_retinanet(spec, pretrained="none")
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.normal_(std=0.05)
    return save_model(model, spec, path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model file, .onnx file written by the command line at CHIP px)."""
    root = tmp_path_factory.mktemp("onnx")
    model_path = _tiny_model(root / "tiny.model", seed=0)
    out = root / "tiny.onnx"
    proc = run("export-onnx", model_path, "--out", out, "--chip-size", CHIP)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stderr  # the one line saying what was written
    return model_path, out


@pytest.mark.parametrize(
    ("batch", "score_thresh", "nms_thresh", "box_vote_iou"),
    [(1, 0.02, 0.5, 0.7), (3, 0.02, 0.5, 0.7), (3, 0.05, 0.3, None), (2, 0.5, 0.5, 0.7)],
)
def test_runtimes_give_the_torch_models_detections(
    exported, batch, score_thresh, nms_thresh, box_vote_iou
):
    """ONNX Runtime and the torch runtime, decoded by geodetect's one decoder, give what
    torchvision's own RetinaNet.forward gives with the same settings."""
    model_path, onnx_path = exported
    loaded = load_model(model_path)
    runtimes = {
        "onnxruntime": OnnxRuntime(onnx_path, loaded, kind="onnxruntime"),
        "torch": TorchRuntime(loaded, torch.device("cpu"), precision="fp32"),
    }
    decoding = Decoding(
        score_thresh=score_thresh,
        nms_iou=nms_thresh,
        second_box_iou=loaded.spec.second_box_iou,
        box_vote_iou=box_vote_iou,
    )
    # The reference: the model's own forward, its settings set on a copy of it.
    reference = copy.deepcopy(loaded.model).eval()
    reference.score_thresh, reference.nms_thresh = score_thresh, nms_thresh
    reference.box_vote_iou = box_vote_iou
    generator = torch.Generator().manual_seed(batch)
    chips = torch.randn((batch, 3, CHIP, CHIP), generator=generator)
    with torch.inference_mode():
        expected = reference(chips)
    for name, runtime in runtimes.items():
        got = runtime.detect(chips, decoding)
        assert len(got) == batch, name
        for mine, theirs in zip(got, expected, strict=True):
            assert len(mine["boxes"]) == len(theirs["boxes"]), name
            torch.testing.assert_close(mine["boxes"], theirs["boxes"], atol=1e-3, rtol=0)
            torch.testing.assert_close(mine["scores"], theirs["scores"], atol=1e-4, rtol=0)
            assert torch.equal(mine["labels"], theirs["labels"]), name
    found = [len(d["boxes"]) for d in expected]
    if score_thresh < 0.1:
        assert min(found) > 10, found
        if score_thresh <= 0.02:  # both classes, so labels are compared too
            assert {0, 1} <= set(torch.cat([d["labels"] for d in expected]).tolist())
    else:
        assert max(found) == 0  # untrained: nothing reaches 0.5


def test_runtimes_leave_the_loaded_model_as_it_was(exported):
    """Building and running a runtime changes nothing of the caller's model: not its
    thresholds, mode, memory format or weights."""
    model_path, onnx_path = exported
    loaded = load_model(model_path)
    loaded.model.train()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    settings = (loaded.model.score_thresh, loaded.model.nms_thresh, loaded.model.box_vote_iou)
    chips = torch.randn((2, 3, CHIP, CHIP), generator=torch.Generator().manual_seed(0))
    decoding = Decoding(score_thresh=0.3, nms_iou=0.2, box_vote_iou=None)
    for runtime in (
        TorchRuntime(loaded, torch.device("cpu"), precision="fp32"),
        OnnxRuntime(onnx_path, loaded, kind="onnxruntime"),
    ):
        runtime.detect(chips, decoding)
    assert loaded.model.training
    assert (loaded.model.score_thresh, loaded.model.nms_thresh) == settings[:2]
    assert loaded.model.box_vote_iou == settings[2]
    weight = loaded.model.backbone.body.conv1.weight
    assert weight.is_contiguous()  # not turned channels-last
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_metadata_says_what_the_file_is(exported):
    model_path, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(meta["geodetect"]) == load_model(model_path).spec
    assert meta["geodetect_model_id"] == file_id(model_path)
    assert meta["geodetect_chip_size"] == str(CHIP)
    (chips,) = proto.graph.input
    dims = chips.type.tensor_type.shape.dim
    assert dims[0].dim_param  # any batch size
    assert [d.dim_value for d in dims[1:]] == [3, CHIP, CHIP]
    anchors = 9 * sum(h * w for h, w in level_sizes(CHIP))
    for output, last in zip(proto.graph.output, (2, 4), strict=True):
        assert [d.dim_value for d in output.type.tensor_type.shape.dim[1:]] == [anchors, last]


def test_runner_refuses_the_export_of_another_model_and_other_files(exported, tmp_path):
    model_path, onnx_path = exported
    other = load_model(_tiny_model(tmp_path / "other.model", seed=1))
    with pytest.raises(ModelFileError, match="exported from model"):
        OnnxRuntime(onnx_path, other, kind="onnxruntime")
    with pytest.raises(ModelFileError, match="not a usable ONNX file"):
        OnnxRuntime(model_path, other, kind="onnxruntime")


def test_existing_output_is_kept_without_overwrite(exported):
    model_path, onnx_path = exported
    before = onnx_path.read_bytes()
    stat = onnx_path.stat()
    proc = run("export-onnx", model_path, "--out", onnx_path, "--chip-size", CHIP)
    assert_one_line_error(proc, str(onnx_path), "--overwrite")
    assert onnx_path.stat().st_mtime_ns == stat.st_mtime_ns
    assert onnx_path.read_bytes() == before


def test_int8_export_needs_imagery_to_calibrate_on(exported, tmp_path):
    model_path, _ = exported
    out = tmp_path / "q.onnx"
    proc = run("export-onnx", model_path, "--out", out, "--int8")
    assert_one_line_error(proc, "--int8 needs --calibrate")
    proc = run("export-onnx", model_path, "--out", out, "--calibrate", model_path)
    assert_one_line_error(proc, "--calibrate is for --int8")
    assert list(tmp_path.iterdir()) == []


def test_chip_size_must_be_a_multiple_of_32(exported, tmp_path):
    model_path, _ = exported
    out = tmp_path / "odd.onnx"
    proc = run("export-onnx", model_path, "--out", out, "--chip-size", 100)
    assert_one_line_error(proc, "--chip-size 100", "multiple of 32")
    assert list(tmp_path.iterdir()) == []


def _layer_coordinates(layer):
    import numpy as np
    import shapely

    return np.array([shapely.get_coordinates(g) for g in layer.geometry])


@pytest.mark.slow
def test_auto_times_the_runtimes_once_and_runs_the_fastest(tmp_path):
    """A run of 256+ chips on a CPU: `auto` times torch, ONNX Runtime fp32 and int8 on
    chips of the run, remembers the figures, says what it picked and why, and gives
    the layer that runtime gives when asked for; a second run reads the figures."""
    import geopandas as gpd
    import numpy as np

    from conftest import NORTH_UP, paint_boxes, random_boxes, write_geotiff

    model_path = _tiny_model(tmp_path / "tiny.model", seed=3)
    rng = np.random.default_rng(5)
    image = paint_boxes(784, 784, random_boxes(rng, 784, 784, 120, max_size=24))
    scene = write_geotiff(tmp_path / "scene.tif", image, transform=NORTH_UP)
    cache = tmp_path / "cache"
    env = {**os.environ, "GEODETECT_CACHE": str(cache)}
    common = ["detect", scene, "--model", model_path, "--chip-size", 64, "--overlap", 16]
    # the CPU's runtimes are what this test is about: pinned, so a CUDA machine runs it too
    common += ["--threshold", 0.04, "--precision", "fp32", "--device", "cpu", "--verbose"]

    def run_detect(name, *extra):
        out = tmp_path / f"{name}.gpkg"
        proc = subprocess.run(
            [sys.executable, "-m", "geodetect", *map(str, common), *extra, "--out", out],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr, gpd.read_file(out, layer="detections")

    log, auto = run_detect("auto")
    assert "timing torch, ONNX Runtime fp32 and int8" in log
    picked = re.search(r"runtime: (torch|ONNX Runtime fp32|ONNX Runtime int8), the fastest", log)
    assert picked, log
    figures = json.loads((cache / "runtimes.json").read_text())
    (entry,) = figures.values()
    assert {"torch", "onnxruntime", "int8", "agreement", "cpu"} <= set(entry)
    kind = {"torch": "torch", "ONNX Runtime fp32": "onnxruntime"}.get(picked[1], "int8")
    assert kind == max(("torch", "onnxruntime", "int8"), key=entry.get) or (
        entry["agreement"] < 0.9 and kind != "int8"
    )
    again, _ = run_detect("again")
    assert "timing torch" not in again and picked[0] in again
    _, asked = run_detect("asked", "--runtime", kind)
    assert len(auto) == len(asked) > 50
    assert np.abs(_layer_coordinates(auto) - _layer_coordinates(asked)).max() == 0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "int8"])
def test_each_runtime_gives_the_torch_fp32_layer(sample_model, tmp_path, runtime):
    """The suite's trained sample model over the sample mosaic: ONNX Runtime fp32 gives
    torch fp32's layer to 1/1000 of a pixel; int8 finds the same pools (each layer's
    boxes matched at IoU >= 0.5 both ways, scores within 0.05) and the same AP50
    within 0.02 against the truth."""
    import geopandas as gpd
    import numpy as np
    import shapely

    from conftest import SAMPLE_DATA

    mosaic = SAMPLE_DATA / "mosaic"
    layers, scores = {}, {}
    for name in ("torch", runtime):
        out = tmp_path / f"{name}.gpkg"
        args = ["detect", mosaic, "-m", sample_model, "-o", out, "--runtime", name]
        proc = run(*args, "--precision", "fp32", "--device", "cpu", "-q")
        assert proc.returncode == 0, proc.stderr
        layers[name] = gpd.read_file(out, layer="detections")
        proc = run("evaluate", out, "--truth", mosaic / "truth.gpkg", "--json")
        scores[name] = json.loads(proc.stdout)
    ref, got = layers["torch"], layers[runtime]
    assert len(ref) >= 20
    if runtime == "onnxruntime":
        assert len(got) == len(ref)
        gap = np.abs(_layer_coordinates(got) - _layer_coordinates(ref)).max()
        assert gap <= 1e-3 * 0.3  # 1/1000 of a 0.3 m pixel
        assert np.abs(got["score"] - ref["score"]).max() <= 1e-3
        return
    a, b = np.asarray(ref.geometry.values), np.asarray(got.geometry.values)
    inter = shapely.area(shapely.intersection(a[:, None], b[None, :]))
    iou = inter / (shapely.area(a)[:, None] + shapely.area(b)[None, :] - inter)
    assert (iou.max(axis=1) >= 0.5).mean() >= 0.95
    assert (iou.max(axis=0) >= 0.5).mean() >= 0.95
    pairs = iou >= 0.5
    i, j = np.nonzero(pairs)
    assert np.abs(ref["score"].to_numpy()[i] - got["score"].to_numpy()[j]).max() <= 0.05
    assert abs(scores[runtime]["ap50"] - scores["torch"]["ap50"]) <= 0.02, scores


@pytest.mark.slow
def test_train_prepares_detection_on_this_machine(tmp_path):
    """`train` keeps calibration chips in the model file, quantises and times the
    runtimes once, and says what `detect` will run; `detect` then picks from those
    figures even for a small run, with nothing more to time."""
    from conftest import SAMPLE_DATA

    env = {**os.environ, "GEODETECT_PREPARE_DETECT": "1", "GEODETECT_CACHE": str(tmp_path)}
    model = tmp_path / "m.model"
    train = [
        sys.executable, "-m", "geodetect", "train", SAMPLE_DATA / "train" / "scene.tif",
        "--labels", SAMPLE_DATA / "train" / "truth.gpkg", "--out", model, "--steps", 20,
        "--start", "none", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(list(map(str, train)), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "detect will run:" in proc.stderr, proc.stderr
    loaded = load_model(model)
    kept = loaded.calibration
    assert kept is not None and kept.dtype == torch.uint8 and kept.shape[:2] == (16, 3)
    assert len(list(tmp_path.glob("onnx/*-int8-*.onnx"))) == 1
    detect = [
        sys.executable, "-m", "geodetect", "detect", SAMPLE_DATA / "mosaic", "-m", model,
        "-o", tmp_path / "out.gpkg", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(list(map(str, detect)), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "runtime: " in proc.stderr and "timing torch" not in proc.stderr, proc.stderr
