"""Scoring a detection layer against a truth layer, matched as polygons in map units.

Matching follows COCO: detections are taken in descending score order and each one claims
the unclaimed truth polygon of its class that it overlaps best, if that IoU reaches the
threshold; everything else is a false positive. It runs on polygons, so rotated boxes and
outlines score the same way as axis-aligned boxes. AP is COCO's 101-point interpolated
average precision, per class, then averaged over the classes that have truth.

Choices where a ratio is undefined (results never hold NaN): precision is 0 with no
detections, recall is 0 with no truth, F1 is 0 when precision + recall is 0, AP is 0 when
no class has truth, and a class with detections but no truth is listed with AP 0 but left
out of the averaged AP (as COCO does). Centre errors and densities that cannot be measured
(no matches, an area of zero) are ``None``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS

from geodetect.errors import LabelError, OutputError
from geodetect.geometry import overlap_ratio
from geodetect.geometry.match import greedy_match
from geodetect.io.crs import crs_label, parse_crs
from geodetect.io.units import layer_utm, map_scale
from geodetect.io.vectors import (
    layer_name,
    read_layer,
    repair_geometries,
    to_crs_checked,
)

log = logging.getLogger(__name__)

#: COCO's IoU thresholds 0.50:0.05:0.95, rounded so 0.55 is the literal 0.55.
IOU_THRESHOLDS = np.round(np.arange(0.50, 0.951, 0.05), 2)
#: COCO's recall points for interpolated precision: 0, 0.01, ..., 1.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: IoU from which a false alarm counts as "on" an object (an extra or a loose box)
#: rather than on the background.
TOUCH_IOU = 0.1
# Detection kinds (see Scores), and their names in an error layer (see error_layer).
_MATCHED, _DUPLICATE, _EXTRA, _LOOSE, _BACKGROUND = range(5)
KIND_NAMES = ("matched", "duplicate", "extra", "loose", "background")
#: What an error layer's ``kind`` field holds: the false alarms by kind, then the misses.
ERROR_KINDS = (*KIND_NAMES[1:], "missed")

Layer = gpd.GeoDataFrame | str | os.PathLike[str]


@dataclass(frozen=True)
class Scores:
    """Counts and ratios for one class, or for all classes together.

    ``tp + fp == n_detections`` and ``tp + fn == n_truth``. The false alarms ``fp`` split
    into four kinds, ``duplicates + extra_boxes + loose + background == fp``:

    - ``duplicates``: the best-overlapping truth (IoU >= the match IoU) was already
      claimed by a higher-scored detection: the detector saw the object twice.
    - ``extra_boxes``: overlaps a found object (one some detection matched) by IoU >=
      :data:`TOUCH_IOU` without matching it: a second, smaller or shifted box on it.
    - ``loose``: overlaps an object nobody found by IoU >= :data:`TOUCH_IOU` (but under
      the match IoU): a box on the object too badly placed to count.
    - ``background``: touches no object by IoU :data:`TOUCH_IOU`.

    ``matched_iou_median`` is the median IoU of the matched pairs (None without any).
    """

    n_truth: int
    n_detections: int
    tp: int
    fp: int
    fn: int
    duplicates: int
    extra_boxes: int
    loose: int
    background: int
    matched_iou_median: float | None
    precision: float
    recall: float
    f1: float
    ap50: float
    ap50_95: float
    ap75: float


@dataclass(frozen=True, eq=False)
class EvaluationResult(Scores):
    """Everything :func:`evaluate` measured; the inherited counts are over all classes.

    Attributes:
        iou: the IoU threshold of the counts, precision, recall, F1, duplicates, centre
            errors and the curve.
        crs: the CRS the layers were matched in (projected; ``EPSG:...`` when it has a code).
        class_agnostic: True when one layer had no class field, so any detection could
            match any truth and ``per_class`` is empty.
        ap_by_iou: mean AP over classes at each COCO threshold (0.5 ... 0.95).
        centre_error_mean_m, centre_error_median_m: distance in metres between the
            centroids of matched detection/truth pairs; None without matches.
        aoi_area_km2: area the densities are over: the ``aoi`` if one was given, else the
            bounding box of the truth; None if there is none or it has no area.
        truth_per_km2, detections_per_km2: objects whose centroid lies in that area, per km².
        per_class: :class:`Scores` per class name (sorted), empty when class-agnostic.
        pr_score, pr_precision, pr_recall: float arrays [N], one entry per detection in
            rank order (all classes pooled, at ``iou``): its score and the precision and
            recall of the top-ranked detections down to it.
        det_ids, det_matched: index labels of the scored detection rows and whether each
            is a true positive at ``iou`` (for maps of hits and false alarms).
        truth_ids, truth_found: the same for the truth rows (``~truth_found`` = misses).
    """

    iou: float = 0.5
    crs: str = ""
    class_agnostic: bool = False
    ap_by_iou: dict[float, float] = field(default_factory=dict)
    centre_error_mean_m: float | None = None
    centre_error_median_m: float | None = None
    aoi_area_km2: float | None = None
    truth_per_km2: float | None = None
    detections_per_km2: float | None = None
    per_class: dict[str, Scores] = field(default_factory=dict)
    pr_score: np.ndarray = field(default_factory=lambda: np.empty(0))
    pr_precision: np.ndarray = field(default_factory=lambda: np.empty(0))
    pr_recall: np.ndarray = field(default_factory=lambda: np.empty(0))
    det_ids: np.ndarray = field(default_factory=lambda: np.empty(0))
    det_matched: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))
    det_kinds: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int8))
    truth_ids: np.ndarray = field(default_factory=lambda: np.empty(0))
    truth_found: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data: numbers, strings, lists, dicts (no NaN)."""
        skip = {
            "per_class",
            "ap_by_iou",
            "pr_score",
            "pr_precision",
            "pr_recall",
            "det_ids",
            "det_matched",
            "det_kinds",
            "truth_ids",
            "truth_found",
        }
        out: dict[str, Any] = {
            f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip
        }
        out["ap_by_iou"] = {f"{t:.2f}": float(ap) for t, ap in self.ap_by_iou.items()}
        out["per_class"] = {
            name: {f.name: _plain(getattr(s, f.name)) for f in fields(Scores)}
            for name, s in self.per_class.items()
        }
        out["pr_curve"] = {
            "score": self.pr_score.astype(float).tolist(),
            "precision": self.pr_precision.astype(float).tolist(),
            "recall": self.pr_recall.astype(float).tolist(),
        }
        return out

    def summary(self) -> str:
        """A short plain-text report: one table row per class and one for all, then
        centre error and densities."""
        head = (
            f"{self.n_detections} detections vs {self.n_truth} truth objects, "
            f"IoU >= {self.iou:.2f}, matched in {self.crs or 'the layers CRS'}"
        )
        if self.class_agnostic:
            head += " (class-agnostic)"
        names = [*self.per_class, "all"]
        width = max(8, *(len(n) for n in names))
        columns = (
            "truth",
            "det",
            "TP",
            "FP",
            "FN",
            "dup",
            "extra",
            "loose",
            "bg",
            "prec",
            "recall",
            "F1",
            "AP50",
            "AP75",
            "AP50:95",
        )
        lines = [head, "", f"{'class':<{width}}" + "".join(f"{c:>8}" for c in columns)]
        for name, s in [*self.per_class.items(), ("all", self)]:
            counts = (
                s.n_truth,
                s.n_detections,
                s.tp,
                s.fp,
                s.fn,
                s.duplicates,
                s.extra_boxes,
                s.loose,
                s.background,
            )
            ratios = (s.precision, s.recall, s.f1, s.ap50, s.ap75, s.ap50_95)
            lines.append(
                f"{name:<{width}}"
                + "".join(f"{c:>8d}" for c in counts)
                + "".join(f"{r:>8.3f}" for r in ratios)
            )
        lines.append("")
        if self.matched_iou_median is not None:
            lines.append(f"matched pairs: median IoU {self.matched_iou_median:.3f}")
        if self.centre_error_mean_m is None:
            lines.append("centre error: no matched pairs")
        else:
            lines.append(
                f"centre error (matched pairs): mean {self.centre_error_mean_m:.3f} m, "
                f"median {self.centre_error_median_m:.3f} m"
            )
        if self.aoi_area_km2 is None:
            lines.append("density: no area to measure over")
        else:
            lines.append(
                f"density: truth {self.truth_per_km2:.1f}/km2, detections "
                f"{self.detections_per_km2:.1f}/km2 over {self.aoi_area_km2:.4g} km2"
            )
        return "\n".join(lines)

    def plot_pr_curve(self, path: str | os.PathLike[str]) -> Path:
        """Draw the precision-recall curve at ``iou`` (all classes pooled) to an image file.

        The format follows the suffix (``.png``, ``.svg``, ``.pdf``...). The file is written
        to a temporary name and renamed, so a failure leaves nothing behind; an existing
        file is replaced (refusing to clobber is the caller's decision).

        Raises:
            OutputError: unknown image suffix, missing folder, or the write failed.
        """
        from matplotlib.figure import Figure  # no pyplot: no global backend or state

        target = check_plot_path(path, overwrite=True)
        fig = Figure(figsize=(5.0, 4.0), dpi=120, layout="constrained")
        ax = fig.add_subplot()
        if len(self.pr_recall):
            recall = np.concatenate([[0.0], self.pr_recall])
            precision = np.concatenate([[self.pr_precision[0]], self.pr_precision])
            ax.plot(recall, precision, drawstyle="steps-pre", label="measured")
            envelope = np.maximum.accumulate(precision[::-1])[::-1]
            ax.plot(recall, envelope, drawstyle="steps-pre", linestyle="--", label="interpolated")
            ax.legend(loc="lower left")
        else:
            ax.text(0.5, 0.5, "no detections", ha="center", va="center")
        ax.set(
            xlim=(0.0, 1.0),
            ylim=(0.0, 1.05),
            xlabel="recall",
            ylabel="precision",
            title=f"AP50 {self.ap50:.3f}, AP50:95 {self.ap50_95:.3f}; "
            f"IoU {self.iou:.2f}: P {self.precision:.3f}, R {self.recall:.3f}",
        )
        ax.grid(alpha=0.3)

        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(temporary, format=target.suffix.lower().lstrip("."))
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise OutputError(f"{target}: cannot write the plot ({exc.strerror})") from None
        return target


def check_plot_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check, before any work, that a plot can be written to ``path``.

    Raises:
        OutputError: the suffix is not an image type matplotlib writes, the folder is
            missing, or the file exists and ``overwrite`` is False.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    target = Path(path)
    if target.suffix.lower().lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise OutputError(f"{target}: unknown image type; give a .png, .svg or .pdf name")
    if not target.parent.is_dir():
        raise OutputError(f"{target}: folder does not exist; create it first")
    if target.exists() and not overwrite:
        raise OutputError(f"{target}: already exists; pass --overwrite to replace it")
    return target


def evaluate(
    detections: Layer,
    truth: Layer,
    *,
    iou: float = 0.5,
    score_field: str = "score",
    class_field: str = "class",
    crs: Any = None,
    aoi: Layer | None = None,
    boxes: bool = True,
) -> EvaluationResult:
    """Match detections to truth polygons in map coordinates and score them.

    Args:
        detections: detection polygons (GeoDataFrame or a path for :func:`read_layer`).
            ``score_field`` ranks them (higher first); without it they rank in file order.
        truth: reference polygons (GeoDataFrame or path).
        iou: IoU a detection needs with a truth polygon to count as a match, in (0, 1].
        score_field: detection column holding confidence.
        class_field: column holding the class in both layers; values are compared as text
            (``1`` matches ``"1"``). If either layer lacks it, matching is class-agnostic:
            all truth is one class that any detection can match.
        crs: CRS to match in. Default: the detections' CRS, truth is reprojected to it. A
            geographic working CRS is replaced by the local UTM zone so IoU, distances and
            areas are in metres.
        aoi: optional area of interest (GeoDataFrame or path, any CRS). Both layers are cut
            to the features whose centroid lies inside it (so detections outside the
            labelled area are not false positives) and densities are over its area.
        boxes: compare against the bounding boxes of the truth outlines (default), as a
            box detector is scored: an L-shaped pool's box is the right answer for it.
            ``False`` compares against the outlines themselves.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        InputError, LabelError: from reading a layer; a layer without a CRS; a non-empty
            layer without any polygon; detections with missing scores.
        ValueError: ``iou`` outside (0, 1].
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    det = _polygon_layer(detections, "detections")
    ref = _polygon_layer(truth, "truth")
    area = None if aoi is None else _as_layer(aoi, "area of interest")
    det, ref, area = _in_working_crs(det, ref, area, crs)
    work = det.crs
    metres = _metres_per_unit(work)

    if area is not None:
        region = shapely.union_all(area.geometry.to_numpy())
        shapely.prepare(region)
        det = det[shapely.intersects(region, det.geometry.centroid.to_numpy())]
        ref = ref[shapely.intersects(region, ref.geometry.centroid.to_numpy())]
    else:
        region = shapely.box(*ref.total_bounds) if len(ref) else None

    det_geoms = np.asarray(det.geometry.to_numpy(), dtype=object)
    ref_geoms = np.asarray(ref.geometry.to_numpy(), dtype=object)
    if boxes:
        ref_geoms = shapely.envelope(ref_geoms)
    scores = _scores(det, score_field)
    class_agnostic = class_field not in det.columns or class_field not in ref.columns
    if class_agnostic:
        if len(det) and len(ref):
            missing = "truth" if class_field not in ref.columns else "detections"
            log.info("%s layer has no %r field: matching ignores classes", missing, class_field)
        det_class = np.zeros(len(det), dtype=object)
        ref_class = np.zeros(len(ref), dtype=object)
    else:
        det_class = det[class_field].astype(str).to_numpy(dtype=object)
        ref_class = ref[class_field].astype(str).to_numpy(dtype=object)

    thresholds = np.union1d(IOU_THRESHOLDS, [float(iou)])
    k_at = int(np.flatnonzero(thresholds == iou)[0])
    order, matches, pairs = _match(det_geoms, scores, det_class, ref_geoms, ref_class, thresholds)
    matched = matches[k_at] >= 0
    kinds = _false_alarm_kinds(matches[k_at], pairs, len(ref_geoms), iou)
    pair_iou = _matched_iou(matches[k_at], pairs)

    per_class: dict[str, Scores] = {}
    ap_table = []  # one row of AP per threshold for each class that has truth
    for name in sorted(set(det_class.tolist()) | set(ref_class.tolist()), key=str):
        n_truth = int((ref_class == name).sum())
        ranked = order[det_class[order] == name]
        ap = np.array([_average_precision(row[ranked] >= 0, n_truth) for row in matches])
        if n_truth:
            ap_table.append(ap)
        members = det_class == name
        per_class[str(name)] = _scores_for(
            n_truth, matched[members], kinds[members], pair_iou[members], ap, thresholds
        )
    mean_ap = np.mean(ap_table, axis=0) if ap_table else np.zeros(len(thresholds))
    overall = _scores_for(len(ref), matched, kinds, pair_iou, mean_ap, thresholds)

    # Centre error over pairs matched at `iou`.
    centre_mean = centre_median = None
    if matched.any():
        det_centres = shapely.centroid(det_geoms[matched])
        ref_centres = shapely.centroid(ref_geoms[matches[k_at, matched]])
        xy = shapely.get_coordinates(ref_centres)
        ground = metres / map_scale(work, xy[:, 0], xy[:, 1])  # Web Mercator: cos(lat)
        distance = shapely.distance(det_centres, ref_centres) * ground
        centre_mean, centre_median = float(distance.mean()), float(np.median(distance))

    area_km2 = truth_density = det_density = None
    if region is not None and region.area > 0:
        centre = shapely.get_coordinates(shapely.centroid(region))
        ground = metres / float(map_scale(work, centre[:, 0], centre[:, 1])[0])
        area_km2 = float(region.area * ground**2 / 1e6)
        shapely.prepare(region)
        truth_density = _count_inside(region, ref_geoms) / area_km2
        det_density = _count_inside(region, det_geoms) / area_km2

    ranked_tp = matched[order]
    cum_tp = np.cumsum(ranked_tp)
    ranks = np.arange(1, len(order) + 1)
    result = EvaluationResult(
        **{f.name: getattr(overall, f.name) for f in fields(Scores)},
        iou=float(iou),
        crs=crs_label(work),
        class_agnostic=class_agnostic,
        ap_by_iou={
            t: a
            for t, a in zip(thresholds.tolist(), mean_ap.tolist(), strict=True)
            if t in IOU_THRESHOLDS
        },
        centre_error_mean_m=centre_mean,
        centre_error_median_m=centre_median,
        aoi_area_km2=area_km2,
        truth_per_km2=truth_density,
        detections_per_km2=det_density,
        per_class={} if class_agnostic else per_class,
        pr_score=scores[order],
        pr_precision=cum_tp / ranks if len(order) else np.empty(0),
        pr_recall=cum_tp / len(ref) if len(ref) else np.zeros(len(order)),
        det_ids=det.index.to_numpy(),
        det_matched=matched,
        det_kinds=kinds,
        truth_ids=ref.index.to_numpy(),
        truth_found=np.isin(np.arange(len(ref)), matches[k_at][matched]),
    )
    log.info(
        "P %.3f R %.3f F1 %.3f AP50 %.3f AP50:95 %.3f",
        result.precision,
        result.recall,
        result.f1,
        result.ap50,
        result.ap50_95,
    )
    return result


def error_layer(
    result: EvaluationResult,
    detections: gpd.GeoDataFrame,
    truth: gpd.GeoDataFrame,
    *,
    score_field: str = "score",
) -> gpd.GeoDataFrame:
    """What to look at after :func:`evaluate`: each false alarm (its detection polygon)
    and each missed object (its truth polygon), with ``kind`` (one of
    :data:`ERROR_KINDS`, see :class:`Scores`), ``score`` (the detection's; for a miss,
    the best score among the detections overlapping it, empty where none does) and
    ``rank`` (the detection's place by score, 1 = highest; empty for misses). In the
    detections' CRS; ``detections`` and ``truth`` are the layers as given to it.
    """
    det = detections.loc[result.det_ids[~result.det_matched]]
    kinds = np.asarray(KIND_NAMES, dtype=object)[result.det_kinds[~result.det_matched]]
    ranks = np.empty(len(result.det_ids), dtype=np.int64)
    ranks[np.argsort(-_scores(detections.loc[result.det_ids], score_field), kind="stable")] = (
        np.arange(1, len(result.det_ids) + 1)
    )
    alarms = gpd.GeoDataFrame(
        {
            "kind": kinds,
            "score": _scores(det, score_field),
            "rank": ranks[~result.det_matched].astype(float),
        },
        geometry=det.geometry.to_numpy(),
        crs=detections.crs,
    )
    missed = to_crs_checked(truth.loc[result.truth_ids[~result.truth_found]], detections.crs)
    near = np.full(len(missed), np.nan)
    if len(missed) and len(detections):
        scored = detections.loc[result.det_ids]
        miss_idx, det_idx = scored.sindex.query(missed.geometry.to_numpy(), "intersects")
        values = _scores(scored, score_field)[det_idx]
        np.fmax.at(near, miss_idx, values)
    misses = gpd.GeoDataFrame(
        {"kind": "missed", "score": near, "rank": np.nan},
        geometry=missed.geometry.to_numpy(),
        crs=detections.crs,
    )
    return gpd.GeoDataFrame(pd.concat([alarms, misses], ignore_index=True), crs=detections.crs)


def _in_working_crs(
    det: gpd.GeoDataFrame, ref: gpd.GeoDataFrame, area: gpd.GeoDataFrame | None, crs: Any
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame | None]:
    """All layers in one CRS: ``crs``, else the detections'; a projected one if that is
    geographic (the UTM zone of the truth, else of the detections or the area)."""
    work = parse_crs(crs) if crs is not None else det.crs
    det = to_crs_checked(det, work)
    layers = [det, to_crs_checked(ref, work)]
    if area is not None:
        layers.append(to_crs_checked(area, work))
    if CRS.from_user_input(work).is_geographic:
        sample = next((g for g in (layers[1], layers[0], *layers[2:]) if len(g)), None)
        if sample is not None:
            work = layer_utm(sample.crs, sample.total_bounds)
            log.info("matching in %s (the layers are in geographic coordinates)", crs_label(work))
            layers = [g.to_crs(work) for g in layers]
    return layers[0], layers[1], layers[2] if area is not None else None


def _false_alarm_kinds(
    matched_truth: np.ndarray, pairs: tuple[np.ndarray, ...], n_truth: int, iou: float
) -> np.ndarray:
    """Each detection's kind (see :class:`Scores`): an int8 array [N] of
    :data:`_MATCHED`, :data:`_DUPLICATE`, :data:`_EXTRA`, :data:`_LOOSE` or
    :data:`_BACKGROUND`.

    Args:
        matched_truth: int64 [N], the truth each detection matched at ``iou`` (-1: none).
        pairs: detection index, truth index and IoU of every overlapping pair of one class.
    """
    det_idx, ref_idx, pair_iou = pairs
    kinds = np.full(len(matched_truth), _BACKGROUND, dtype=np.int8)
    found = np.zeros(n_truth, dtype=bool)
    found[matched_truth[matched_truth >= 0]] = True
    touching = pair_iou >= TOUCH_IOU
    # Least to most specific: each assignment overrides the one before.
    kinds[det_idx[touching & ~found[ref_idx]]] = _LOOSE
    kinds[det_idx[touching & found[ref_idx]]] = _EXTRA
    kinds[det_idx[pair_iou >= iou]] = _DUPLICATE  # unmatched at >= iou: it was claimed
    kinds[matched_truth >= 0] = _MATCHED
    return kinds


def _matched_iou(matched_truth: np.ndarray, pairs: tuple[np.ndarray, ...]) -> np.ndarray:
    """float64 [N]: each detection's IoU with the truth it matched, NaN where none."""
    det_idx, ref_idx, pair_iou = pairs
    out = np.full(len(matched_truth), np.nan)
    own = matched_truth[det_idx] == ref_idx
    out[det_idx[own]] = pair_iou[own]
    return out


def _count_inside(region: shapely.Geometry, geoms: np.ndarray) -> int:
    """Number of polygons whose centroid lies in (or on the edge of) ``region``."""
    return int(shapely.intersects(region, shapely.centroid(geoms)).sum())


def polygon_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise intersection over union of two equal-length arrays of polygons."""
    return overlap_ratio(a, b, "iou")


def _match(
    det_geoms: np.ndarray,
    scores: np.ndarray,
    det_class: np.ndarray,
    ref_geoms: np.ndarray,
    ref_class: np.ndarray,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO-style greedy matching at several IoU thresholds.

    Returns:
        order: int64 [N], detection indices by descending score (ties: file order).
        matches: int64 [T, N], the truth index each detection matched at each threshold,
            -1 for none.
        pairs: (detection index int64 [P], truth index int64 [P], IoU float64 [P]) of
            every intersecting detection/truth pair of one class.
    """
    n, m = len(det_geoms), len(ref_geoms)
    order = np.lexsort((np.arange(n), -scores))
    matches = np.full((len(thresholds), n), -1, dtype=np.int64)
    no_pairs = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))
    if n == 0 or m == 0:
        return order, matches, no_pairs

    # Candidate pairs from the tree instead of the full N x M table.
    det_idx, ref_idx = shapely.STRtree(ref_geoms).query(det_geoms, predicate="intersects")
    same = det_class[det_idx] == ref_class[ref_idx]
    det_idx, ref_idx = det_idx[same], ref_idx[same]
    pair_iou = polygon_iou(det_geoms[det_idx], ref_geoms[ref_idx])
    pairs = (det_idx, ref_idx, pair_iou)
    if len(det_idx) == 0:
        return order, matches, pairs

    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    matches = greedy_match(det_idx, ref_idx, pair_iou, rank=rank, n_ref=m, thresholds=thresholds)
    return order, matches, pairs


def _average_precision(ranked_tp: np.ndarray, n_truth: int) -> float:
    """COCO 101-point interpolated AP of one class at one threshold.

    Args:
        ranked_tp: bool [N], whether each detection (in descending score order) matched.
        n_truth: number of truth objects of the class.
    """
    if n_truth == 0 or len(ranked_tp) == 0:
        return 0.0
    cum_tp = np.cumsum(ranked_tp)
    recall = cum_tp / n_truth
    precision = cum_tp / np.arange(1, len(ranked_tp) + 1)
    # Interpolated precision: the best precision at this recall or any higher one.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(at < len(precision), precision[np.minimum(at, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def _scores_for(
    n_truth: int,
    matched: np.ndarray,
    kinds: np.ndarray,
    pair_iou: np.ndarray,
    ap: np.ndarray,
    thresholds: np.ndarray,
) -> Scores:
    """Counts and ratios of one class (or all) from its detections' match flags, kinds
    (:func:`_false_alarm_kinds`), matched IoUs and AP at each IoU threshold."""
    coco = np.isin(thresholds, IOU_THRESHOLDS)
    n_det = len(matched)
    tp = int(matched.sum())
    precision = tp / n_det if n_det else 0.0
    recall = tp / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(
        n_truth=n_truth,
        n_detections=n_det,
        tp=tp,
        fp=n_det - tp,
        fn=n_truth - tp,
        duplicates=int((kinds == _DUPLICATE).sum()),
        extra_boxes=int((kinds == _EXTRA).sum()),
        loose=int((kinds == _LOOSE).sum()),
        background=int((kinds == _BACKGROUND).sum()),
        matched_iou_median=float(np.median(pair_iou[matched])) if tp else None,
        precision=precision,
        recall=recall,
        f1=f1,
        ap50=float(ap[thresholds == 0.5][0]),
        ap50_95=float(ap[coco].mean()),
        ap75=float(ap[thresholds == 0.75][0]),
    )


def _as_layer(layer: Layer, role: str) -> gpd.GeoDataFrame:
    if isinstance(layer, gpd.GeoDataFrame):
        gdf = layer.copy(deep=False)
        gdf.attrs = dict(layer.attrs)
        gdf.attrs.setdefault("source", f"{role} layer")
        return gdf
    return read_layer(layer)


def _polygon_layer(layer: Layer, role: str) -> gpd.GeoDataFrame:
    gdf = _as_layer(layer, role)
    repaired, report = repair_geometries(gdf)
    if len(gdf) and not len(repaired):
        kinds = sorted({str(t) for t in gdf.geometry.geom_type.dropna().unique()}) or ["none"]
        raise LabelError(
            f"{layer_name(gdf)}: no polygons to evaluate (geometry types: {', '.join(kinds)}); "
            "give polygon or box outlines"
        )
    if report.repaired:
        log.info("%s: %d invalid geometries repaired", layer_name(gdf), report.repaired)
    if report.dropped:
        log.warning(
            "%s: %d features without a polygon were left out", layer_name(gdf), report.dropped
        )
    return repaired.reset_index(drop=True)


def _scores(det: gpd.GeoDataFrame, score_field: str) -> np.ndarray:
    if score_field not in det.columns:
        if len(det):
            log.warning(
                "%s: no %r field; ranking detections in file order", layer_name(det), score_field
            )
        return np.zeros(len(det))
    try:
        scores = det[score_field].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise LabelError(
            f"{layer_name(det)}: field {score_field!r} is not numeric; name the score field"
        ) from None
    if not np.isfinite(scores).all():
        raise LabelError(
            f"{layer_name(det)}: {int((~np.isfinite(scores)).sum())} detections have no "
            f"finite {score_field!r}; fill or remove them"
        )
    return scores


def _metres_per_unit(crs: CRS) -> float:
    """Length of one unit of a projected CRS's first axis in metres (1.0 if unknown)."""
    axes = crs.axis_info
    factor = axes[0].unit_conversion_factor if axes else None
    return float(factor) if factor else 1.0


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
