"""`geodetect export-onnx --for deepness|geodeep`: a model that GeoDeep (the library,
installed from the package registry as a test extra) runs and that finds the pools
`geodetect detect` finds with the same model."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from geodetect.errors import InputError
from geodetect.model.file import LoadedModel
from geodetect.model.portable import check_portable

from conftest import SAMPLE_DATA, assert_one_line_error, make_oracle, run_cli


def _matched(a: np.ndarray, b: np.ndarray, iou: float = 0.5) -> tuple[int, int]:
    """How many of ``a`` and of ``b`` overlap one of the other by ``iou`` or more."""
    i, j = shapely.STRtree(b).query(a, predicate="intersects")
    inter = shapely.area(shapely.intersection(a[i], b[j]))
    ok = inter / (shapely.area(a[i]) + shapely.area(b[j]) - inter) >= iou
    return len(set(i[ok])), len(set(j[ok]))


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_geodeep_runs_the_export_and_finds_what_geodetect_finds(
    sample_model, tmp_path, capsys, int8
):
    """The export as Deepness and GeoDeep users get it, fp32 or quantised to int8
    (calibrated on the model's training scene)."""
    geodeep = pytest.importorskip("geodeep")
    onnxruntime = pytest.importorskip("onnxruntime")
    scene = tmp_path / "scene"
    assert run_cli("synth", scene, "--size", "1024", "--seed", "9", "-q").returncode == 0
    tif = scene / "scene.tif"
    onnx_path = tmp_path / "pools.onnx"
    extra = ["--int8", "--calibrate", SAMPLE_DATA / "train" / "scene.tif"] if int8 else []
    proc = run_cli("export-onnx", sample_model, "--for", "geodeep", "-o", onnx_path, *extra)
    assert proc.returncode == 0, proc.stderr
    if int8:
        ops = {node.op_type for node in pytest.importorskip("onnx").load(str(onnx_path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = onnxruntime.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map
    spec = json.loads(run_cli("info", sample_model, "--json").stdout)
    assert json.loads(meta["det_type"]) == "YOLO_v5_or_v7_default"
    assert json.loads(meta["class_names"]) == {"0": "pool"}
    assert json.loads(meta["resolution"]) == pytest.approx(100 * spec["gsd"])
    assert json.loads(meta["det_conf"]) == pytest.approx(spec["score_threshold"], abs=1e-4)

    ours_path = tmp_path / "ours.gpkg"
    assert run_cli("detect", tif, "-m", sample_model, "-o", ours_path, "-q").returncode == 0
    ours = gpd.read_file(ours_path, layer="detections").geometry.values
    boxes, scores, classes = geodeep.detect(str(tif), str(onnx_path), output_type="bsc")
    with rasterio.open(tif) as ds:
        transform = ds.transform
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1 = transform * (b[:, 0], b[:, 1])
    x2, y2 = transform * (b[:, 2], b[:, 3])
    theirs = shapely.box(
        np.minimum(x1, x2), np.minimum(y1, y2), np.maximum(x1, x2), np.maximum(y1, y2)
    )
    assert {c[1] for c in classes} == {"pool"}
    ours_found, theirs_found = _matched(ours, theirs)
    with capsys.disabled():
        print(f"\nGeoDeep {len(theirs)} boxes, geodetect {len(ours)}: {ours_found} of "
              f"geodetect's found by GeoDeep, {theirs_found} of GeoDeep's by geodetect "
              "(IoU 0.5)")  # fmt: skip
    assert len(ours) >= 10
    assert ours_found >= 0.85 * len(ours)
    assert theirs_found >= 0.75 * len(theirs)


def test_a_model_those_tools_cannot_feed_is_refused(tmp_path):
    oracle = make_oracle(
        band_mean=[0.0] * 4, band_std=[1.0] * 4, band_names=["r", "g", "b", "nir"], gsd=0.3
    )
    four = LoadedModel(oracle.model, oracle.spec, oracle.model_id, tmp_path / "four.model")
    with pytest.raises(InputError, match="three 8-bit bands"):
        check_portable(four)
    proc = run_cli(
        "export-onnx", tmp_path / "nope.model", "--for", "deepness", "-o", tmp_path / "x.onnx"
    )
    assert_one_line_error(proc, "nope.model")
    assert not (tmp_path / "x.onnx").exists()
