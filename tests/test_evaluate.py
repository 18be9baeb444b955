"""Scoring detections against truth: matching, AP, centre error, CRS handling and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import shapely

from geodetect.errors import LabelError
from geodetect.evaluate import IOU_THRESHOLDS, evaluate

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0


def squares(
    offsets: list[tuple[float, float]],
    *,
    size: float = 10.0,
    scores: list[float] | None = None,
    classes: list[object] | None = None,
    crs: str = UTM,
) -> gpd.GeoDataFrame:
    """Squares of ``size`` metres whose lower-left corners are ``offsets`` from (X0, Y0)."""
    xy = np.asarray(offsets, dtype=float).reshape(-1, 2)
    geoms = shapely.box(X0 + xy[:, 0], Y0 + xy[:, 1], X0 + xy[:, 0] + size, Y0 + xy[:, 1] + size)
    columns: dict[str, object] = {}
    if scores is not None:
        columns["score"] = scores
    if classes is not None:
        columns["class"] = classes
    return gpd.GeoDataFrame(columns, geometry=list(geoms), crs=crs)


GRID = [(0, 0), (50, 0), (100, 0), (0, 50), (50, 50)]


def truth_layer(**kw) -> gpd.GeoDataFrame:
    return squares(GRID, classes=["pool"] * len(GRID), **kw)


def test_perfect_detections(tmp_path):
    truth_path = tmp_path / "truth.gpkg"
    det_path = tmp_path / "detections.geojson"
    truth_layer().to_file(truth_path)
    squares(GRID, scores=[0.9, 0.8, 0.7, 0.6, 0.5], classes=["pool"] * 5).to_file(det_path)

    result = evaluate(det_path, truth_path)

    assert (result.tp, result.fp, result.fn, result.duplicates) == (5, 0, 0, 0)
    assert result.precision == result.recall == result.f1 == 1.0
    assert result.ap50 == pytest.approx(1.0) and result.ap50_95 == pytest.approx(1.0)
    assert result.centre_error_mean_m == pytest.approx(0.0, abs=1e-9)
    assert result.centre_error_median_m == pytest.approx(0.0, abs=1e-9)
    assert result.crs == UTM
    assert list(result.per_class) == ["pool"]
    np.testing.assert_allclose(result.pr_recall, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(result.pr_precision, 1.0)
    np.testing.assert_allclose(result.pr_score, [0.9, 0.8, 0.7, 0.6, 0.5])


def test_shift_in_metres_is_the_centre_error():
    shift = (2.0, 1.5)
    moved = [(x + shift[0], y + shift[1]) for x, y in GRID]
    detections = squares(moved, scores=[0.9] * 5, classes=["pool"] * 5)

    result = evaluate(detections, truth_layer())

    assert result.tp == 5  # IoU (8 * 8.5) / (200 - 68) = 0.52 >= 0.5
    assert result.centre_error_mean_m == pytest.approx(math.hypot(*shift), abs=1e-6)
    assert result.centre_error_median_m == pytest.approx(math.hypot(*shift), abs=1e-6)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap50_95 == pytest.approx(0.1)  # matched only at IoU 0.50 of 0.50..0.95


def test_duplicate_is_counted_and_is_a_false_positive():
    truth = squares([(0, 0)], classes=["pool"])
    detections = squares([(0, 0), (1, 0)], scores=[0.9, 0.8], classes=["pool", "pool"])

    result = evaluate(detections, truth)

    assert (result.tp, result.fp, result.fn, result.duplicates) == (1, 1, 0, 1)
    assert result.precision == 0.5 and result.recall == 1.0
    assert result.per_class["pool"].duplicates == 1


def test_false_alarms_are_split_into_duplicates_extra_loose_and_background():
    # Pool A (found), pool B (nobody finds it), and open ground far away.
    truth = squares([(0, 0), (50, 0)], classes=["pool", "pool"])
    a, b = (X0, Y0), (X0 + 50, Y0)
    boxes = [
        shapely.box(a[0], a[1], a[0] + 10, a[1] + 10),  # matches A exactly (IoU 1)
        shapely.box(a[0] + 1, a[1], a[0] + 11, a[1] + 10),  # A again at IoU 0.82: duplicate
        shapely.box(a[0] + 2, a[1] + 2, a[0] + 6, a[1] + 6),  # a part of A, IoU 0.16: extra
        shapely.box(b[0] + 5, b[1] + 5, b[0] + 15, b[1] + 15),  # B, IoU 0.14: loose
        shapely.box(X0 + 200, Y0, X0 + 210, Y0 + 10),  # nothing there: background
        shapely.box(a[0] - 9.5, a[1], a[0] + 0.5, a[1] + 10),  # grazes A, IoU 0.03
    ]
    detections = gpd.GeoDataFrame(
        {"score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "class": ["pool"] * 6},
        geometry=boxes,
        crs=UTM,
    )

    result = evaluate(detections, truth)

    assert (result.tp, result.fp, result.fn) == (1, 5, 1)
    kinds = (result.duplicates, result.extra_boxes, result.loose, result.background)
    assert kinds == (1, 1, 1, 2)
    assert sum(kinds) == result.fp
    assert result.per_class["pool"].extra_boxes == 1
    assert result.matched_iou_median == pytest.approx(1.0)
    report = result.to_dict()
    assert (report["extra_boxes"], report["loose"], report["background"]) == (1, 1, 2)
    assert "extra" in result.summary() and "AP75" in result.summary()


def test_ap75_and_matched_iou_follow_the_box_fit():
    truth = squares(GRID, classes=["pool"] * 5)
    # Two boxes shifted by 1 m (IoU 0.82), three by 2 m (IoU 0.67): all match at 0.5,
    # only the first two at 0.75.
    moved = [(x + d, y) for (x, y), d in zip(GRID, [1, 1, 2, 2, 2], strict=True)]
    detections = squares(moved, scores=[0.9, 0.8, 0.7, 0.6, 0.5], classes=["pool"] * 5)

    result = evaluate(detections, truth)

    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == pytest.approx(result.ap_by_iou[0.75])
    # Interpolated precision is 1 up to recall 0.4, then 0: 41 of 101 recall points.
    assert result.ap75 == pytest.approx(41 / 101)
    assert result.matched_iou_median == pytest.approx(8 / 12)


def test_higher_score_claims_the_truth_first():
    truth = squares([(0, 0)], classes=["pool"])
    # The worse-placed box scores higher, so it takes the truth; the exact one is a duplicate.
    detections = squares([(0, 0), (2, 0)], scores=[0.5, 0.9], classes=["pool", "pool"])

    result = evaluate(detections, truth)

    assert result.duplicates == 1
    assert result.centre_error_mean_m == pytest.approx(2.0)


def test_truth_in_wgs84_is_reprojected_to_detection_crs(tmp_path):
    truth_path = tmp_path / "truth.geojson"
    det_path = tmp_path / "detections.shp"
    truth_layer().to_crs("EPSG:4326").to_file(truth_path)
    squares(GRID, scores=[0.9] * 5, classes=["pool"] * 5).to_file(det_path)

    result = evaluate(det_path, truth_path)

    assert result.crs == UTM
    assert result.tp == 5 and result.fp == 0
    assert result.centre_error_mean_m < 1e-3


def test_geographic_layers_are_matched_in_utm_metres():
    shift = 3.0
    truth = truth_layer().to_crs("EPSG:4326")
    moved = [(x + shift, y) for x, y in GRID]
    detections = squares(moved, scores=[0.9] * 5, classes=["pool"] * 5).to_crs("EPSG:4326")

    result = evaluate(detections, truth)

    assert result.crs == UTM
    assert result.tp == 5
    assert result.centre_error_mean_m == pytest.approx(shift, abs=1e-3)


def test_empty_detection_file_gives_zeros(tmp_path):
    det_path = tmp_path / "none.gpkg"
    squares([], scores=[], classes=[]).to_file(det_path)

    result = evaluate(det_path, truth_layer())

    assert (result.tp, result.fp, result.fn) == (0, 0, 5)
    assert result.precision == result.recall == result.f1 == 0.0
    assert result.ap50 == 0.0 and result.ap50_95 == 0.0
    assert result.centre_error_mean_m is None
    assert result.detections_per_km2 == 0.0
    assert len(result.pr_recall) == 0
    json.dumps(result.to_dict(), allow_nan=False)
    assert "no matched pairs" in result.summary()


def test_empty_truth_gives_zeros():
    detections = squares([(0, 0)], scores=[0.9], classes=["pool"])
    result = evaluate(detections, squares([], classes=[]))

    assert (result.tp, result.fp, result.fn) == (0, 1, 0)
    assert result.precision == result.recall == result.ap50 == 0.0
    assert result.aoi_area_km2 is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_average_precision_by_the_101_point_rule():
    truth = squares([(0, 0), (100, 0)], classes=["pool", "pool"])
    # Ranked TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    detections = squares([(0, 0), (200, 0), (100, 0)], scores=[0.9, 0.8, 0.7], classes=["pool"] * 3)

    result = evaluate(detections, truth)

    # Recall points 0.00..0.50 (51 of them) see precision 1; 0.51..1.00 (50) see max(2/3).
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert result.ap50 == pytest.approx(expected, abs=1e-12)
    assert result.ap50_95 == pytest.approx(expected, abs=1e-12)  # IoUs are exactly 1
    np.testing.assert_allclose(result.pr_precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(result.pr_recall, [0.5, 0.5, 1.0])
    assert sorted(result.ap_by_iou) == IOU_THRESHOLDS.tolist()


def test_classes_match_only_their_own_kind():
    truth = squares([(0, 0), (50, 0), (100, 0)], classes=["pool", "pool", 7])
    detections = squares(
        [(0, 0), (50, 0), (100, 0)], scores=[0.9, 0.8, 0.7], classes=["pool", "tank", "7"]
    )

    result = evaluate(detections, truth)

    assert sorted(result.per_class) == ["7", "pool", "tank"]
    pool, tank, seven = (result.per_class[k] for k in ("pool", "tank", "7"))
    assert (pool.tp, pool.fp, pool.fn) == (1, 0, 1)
    assert (tank.tp, tank.fp, tank.fn, tank.n_truth) == (0, 1, 0, 0)
    assert (seven.tp, seven.fp, seven.fn) == (1, 0, 0)  # 7 and "7" compare as text
    assert (result.tp, result.fp, result.fn) == (2, 1, 1)
    # Mean over the classes that have truth ("tank" has none, as in COCO).
    assert result.ap50 == pytest.approx((pool.ap50 + seven.ap50) / 2)
    assert pool.ap50 == pytest.approx(51 / 101) and seven.ap50 == pytest.approx(1.0)


def test_truth_without_class_field_matches_any_class():
    truth = squares(GRID[:2])
    detections = squares(GRID[:2], scores=[0.9, 0.8], classes=["pool", "tank"])

    result = evaluate(detections, truth)

    assert result.class_agnostic and result.per_class == {}
    assert result.tp == 2 and result.precision == 1.0


def test_density_over_truth_bounding_box_and_aoi():
    truth = truth_layer()
    detections = squares([*GRID, (500, 500)], scores=[0.9] * 6, classes=["pool"] * 6)

    result = evaluate(detections, truth)
    area_km2 = 110.0 * 60.0 / 1e6  # truth bounding box 110 m x 60 m
    assert result.aoi_area_km2 == pytest.approx(area_km2)
    assert result.truth_per_km2 == pytest.approx(5 / area_km2)
    assert result.detections_per_km2 == pytest.approx(5 / area_km2)  # (500, 500) is outside
    assert result.fp == 1

    aoi = gpd.GeoDataFrame(geometry=[shapely.box(X0 - 5, Y0 - 5, X0 + 200, Y0 + 200)], crs=UTM)
    inside = evaluate(detections, truth, aoi=aoi.to_crs("EPSG:3857"))
    assert inside.fp == 0 and inside.tp == 5  # the stray detection is outside the AOI
    assert inside.aoi_area_km2 == pytest.approx(205.0 * 205.0 / 1e6, rel=1e-6)


def test_missing_scores_rank_in_file_order_and_summary_reads():
    detections = squares(GRID[:2], classes=["pool", "pool"])
    result = evaluate(detections, truth_layer())
    assert result.tp == 2 and result.fn == 3
    text = result.summary()
    assert "pool" in text and "AP50:95" in text and "all" in text


def test_pr_curve_plot_is_written(tmp_path):
    result = evaluate(squares(GRID, scores=[0.9] * 5, classes=["pool"] * 5), truth_layer())
    path = result.plot_pr_curve(tmp_path / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pr.png"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from geodetect.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_json_and_pr_curve(tmp_path):
    truth_path, det_path = tmp_path / "truth.gpkg", tmp_path / "det.gpkg"
    truth_layer().to_file(truth_path, layer="labels")
    truth_layer().to_file(truth_path, layer="other")
    squares(GRID, scores=[0.9] * 5, classes=["pool"] * 5).to_file(det_path)
    png = tmp_path / "pr.png"

    done = run_cli(
        "evaluate",
        str(det_path),
        "--truth",
        str(truth_path),
        "--truth-layer",
        "labels",
        "--json",
        "--pr-curve",
        str(png),
        "-q",
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in (
        "tp",
        "fp",
        "fn",
        "precision",
        "recall",
        "f1",
        "ap50",
        "ap50_95",
        "duplicates",
        "extra_boxes",
        "loose",
        "background",
        "ap75",
        "matched_iou_median",
        "centre_error_mean_m",
        "centre_error_median_m",
        "truth_per_km2",
        "detections_per_km2",
        "per_class",
        "pr_curve",
        "crs",
    ):
        assert key in report
    assert report["tp"] == 5 and report["per_class"]["pool"]["recall"] == 1.0
    assert png.is_file()

    again = run_cli(
        "evaluate",
        str(det_path),
        "--truth",
        str(truth_path),
        "--truth-layer",
        "labels",
        "--pr-curve",
        str(png),
    )
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_errors_layer_holds_each_false_alarm_by_kind_and_each_miss_styled(tmp_path):
    """`evaluate --errors OUT` writes what to look at: the five false alarms of the
    kinds test above with their scores and ranks, and the missed pool B (with the
    score of the loose box on it), in the detections' CRS, styled by kind for QGIS."""
    truth = squares([(0, 0), (50, 0)], classes=["pool", "pool"]).to_crs("EPSG:4326")
    a, b = (X0, Y0), (X0 + 50, Y0)
    boxes = [
        shapely.box(a[0], a[1], a[0] + 10, a[1] + 10),  # matches A
        shapely.box(a[0] + 1, a[1], a[0] + 11, a[1] + 10),  # duplicate
        shapely.box(a[0] + 2, a[1] + 2, a[0] + 6, a[1] + 6),  # extra
        shapely.box(b[0] + 5, b[1] + 5, b[0] + 15, b[1] + 15),  # loose on B
        shapely.box(X0 + 200, Y0, X0 + 210, Y0 + 10),  # background
    ]
    det_path, truth_path = tmp_path / "det.gpkg", tmp_path / "truth.geojson"
    gpd.GeoDataFrame(
        {"score": [0.9, 0.8, 0.7, 0.6, 0.5], "class": ["pool"] * 5}, geometry=boxes, crs=UTM
    ).to_file(det_path)
    truth.to_file(truth_path)
    out = tmp_path / "look_at.gpkg"

    done = run_cli("evaluate", det_path, "--truth", truth_path, "--errors", out)

    assert done.returncode == 0, done.stderr
    assert "5 to look at" in done.stderr
    errors = gpd.read_file(out, layer="errors")
    assert errors.crs == UTM
    by_kind = {k: g for k, g in errors.groupby("kind")}
    assert sorted(by_kind) == ["background", "duplicate", "extra", "loose", "missed"]
    assert by_kind["duplicate"]["score"].tolist() == [0.8]
    assert by_kind["duplicate"]["rank"].tolist() == [2]
    assert by_kind["background"]["score"].tolist() == [0.5]
    assert by_kind["loose"].geometry.iloc[0].equals(boxes[3])
    missed = by_kind["missed"]
    assert missed["score"].tolist() == [0.6] and missed["rank"].isna().all()
    assert missed.geometry.iloc[0].centroid.distance(shapely.Point(b[0] + 5, b[1] + 5)) < 0.01
    styles = gpd.read_file(out, layer="layer_styles")
    assert "categorizedSymbol" in styles["styleQML"].iloc[0]
    assert 'attr="kind"' in styles["styleQML"].iloc[0]
    # An existing output is kept without --overwrite, and refused before any work.
    again = run_cli("evaluate", det_path, "--truth", truth_path, "--errors", out)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert len(gpd.read_file(out, layer="errors")) == 5


def test_cli_rejects_a_non_vector_file_in_one_line(tmp_path):
    noise = tmp_path / "noise.gpkg"
    noise.write_bytes(np.random.default_rng(1).bytes(4096))
    truth_path = tmp_path / "truth.gpkg"
    truth_layer().to_file(truth_path)

    done = run_cli("evaluate", str(noise), "--truth", str(truth_path))

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geodetect: error: ")
    assert str(noise) in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_equals_pycocotools_on_random_boxes(seed):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(seed)
    n_truth, n_det = 40, 60  # under COCO's 100 detections per image
    xy, wh = rng.uniform(0, 200, (n_truth, 2)), rng.uniform(5, 20, (n_truth, 2))
    truth_class = rng.integers(1, 3, n_truth)
    source = rng.integers(0, n_truth, n_det)
    det_xy = xy[source] + rng.normal(0, 2.5, (n_det, 2))
    det_wh = wh[source] * rng.uniform(0.8, 1.2, (n_det, 2))
    det_class = np.where(
        rng.uniform(size=n_det) < 0.85, truth_class[source], 3 - truth_class[source]
    )
    det_score = rng.uniform(size=n_det)

    def coco_box(corner, size):
        return [float(corner[0]), float(corner[1]), float(size[0]), float(size[1])]

    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}, {"id": 2}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": int(c),
                "bbox": coco_box(p, s),
                "area": float(s[0] * s[1]),
                "iscrowd": 0,
            }
            for i, (p, s, c) in enumerate(zip(xy, wh, truth_class, strict=True))
        ],
    }
    coco.createIndex()
    found = coco.loadRes(
        [
            {"image_id": 1, "category_id": int(c), "bbox": coco_box(p, s), "score": float(q)}
            for p, s, c, q in zip(det_xy, det_wh, det_class, det_score, strict=True)
        ]
    )
    reference = COCOeval(coco, found, "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()

    def layer(corner, size, **columns):
        geoms = shapely.box(*(corner.T + [[X0], [Y0]]), *((corner + size).T + [[X0], [Y0]]))
        return gpd.GeoDataFrame(columns, geometry=list(geoms), crs=UTM)

    result = evaluate(
        layer(det_xy, det_wh, score=det_score, **{"class": det_class}),
        layer(xy, wh, **{"class": truth_class}),
    )

    assert result.ap50_95 == pytest.approx(reference.stats[0], abs=1e-12)
    assert result.ap50 == pytest.approx(reference.stats[1], abs=1e-12)


def test_truth_of_points_is_a_label_error(tmp_path):
    path = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(X0, Y0)], crs=UTM).to_file(path)
    detections = squares([(0, 0)], scores=[0.9])
    with pytest.raises(LabelError, match=r"points.gpkg: no polygons to evaluate \(.*Point"):
        evaluate(detections, path)


def test_boxes_are_scored_against_truth_bounding_boxes():
    # an L-shaped pool: its bounding box is the right answer for a box detector
    ell = shapely.Polygon([(0, 0), (10, 0), (10, 2), (2, 2), (2, 10), (0, 10)])
    truth = gpd.GeoDataFrame({"class": ["pool"]}, geometry=[ell], crs="EPSG:32617")
    det = gpd.GeoDataFrame(
        {"class": ["pool"], "score": [0.9]}, geometry=[shapely.box(0, 0, 10, 10)], crs="EPSG:32617"
    )
    boxed = evaluate(det, truth)
    assert boxed.tp == 1 and boxed.centre_error_mean_m == pytest.approx(0.0)
    outlined = evaluate(det, truth, boxes=False)
    assert outlined.tp == 0  # IoU with the outline is 36/100


def test_centre_error_in_web_mercator_is_in_ground_metres():
    """The same 2.0 m / 1.5 m shift measured in Web Mercator: its map metres at 45 N
    are 1/cos(45) = 1.41 ground metres, so the error stays 2.5 m on the ground."""
    shift = (2.0, 1.5)
    truth = truth_layer().to_crs("EPSG:3857")
    moved = squares([(x + shift[0], y + shift[1]) for x, y in GRID], scores=[0.9] * 5)
    result = evaluate(moved.to_crs("EPSG:3857"), truth)
    assert result.tp == 5
    assert result.centre_error_mean_m == pytest.approx(math.hypot(*shift), rel=2e-3)
