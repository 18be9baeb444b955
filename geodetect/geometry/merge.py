"""The seam merge: class-wise non-maximum suppression of map-coordinate polygons.

Chip ownership (see :mod:`geodetect.geometry.grid`) already keeps each object once
within one chip grid; this step removes what is left where grids or files overlap, and
what the detector itself reported twice.
"""

from __future__ import annotations

import numpy as np
import shapely

MERGE_METRICS = ("iou", "ios")


def overlap_ratio(a: np.ndarray, b: np.ndarray, metric: str = "iou") -> np.ndarray:
    """Element-wise overlap of two equal-length polygon arrays: ``"iou"`` or ``"ios"``
    (intersection over the smaller area); 0 where the denominator is 0."""
    inter = shapely.area(shapely.intersection(a, b))
    area_a, area_b = shapely.area(a), shapely.area(b)
    if metric == "iou":
        denom = area_a + area_b - inter
    elif metric == "ios":
        denom = np.minimum(area_a, area_b)
    else:
        raise ValueError(f"unknown merge metric {metric!r}; choose one of {MERGE_METRICS}")
    return np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)


def nms_polygons(
    polygons: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    metric: str = "iou",
) -> np.ndarray:
    """Greedy class-wise NMS on polygons.

    Args:
        polygons: array [N] of shapely Polygons (any orientation, any CRS units).
        scores: float array [N]; higher is kept first (ties: lower index first).
        classes: array [N] of labels; polygons of different classes never suppress each
            other. ``None`` treats all as one class.
        threshold: a polygon is suppressed when its overlap with a kept, higher-scored
            polygon of the same class is > threshold.
        metric: ``"iou"`` (intersection over union) or ``"ios"`` (intersection over the
            smaller area: suppresses a box cut by a chip edge inside the whole one).

    Returns:
        int64 array of the kept indices, in descending score order.
    """
    polygons = np.asarray(polygons, dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(polygons)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if metric not in MERGE_METRICS:
        raise ValueError(f"unknown merge metric {metric!r}; choose one of {MERGE_METRICS}")
    order = np.lexsort((np.arange(n), -scores))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    tree = shapely.STRtree(polygons)
    left, right = tree.query(polygons, predicate="intersects")
    pair = left < right
    if classes is not None:
        classes = np.asarray(classes)
        pair &= classes[left] == classes[right]
    left, right = left[pair], right[pair]
    over = overlap_ratio(polygons[left], polygons[right], metric) > threshold
    left, right = left[over], right[over]
    # Orient each conflicting pair from the better-ranked to the worse-ranked polygon.
    better = np.where(rank[left] < rank[right], left, right)
    worse = np.where(rank[left] < rank[right], right, left)
    by_better = np.argsort(better, kind="stable")
    better, worse = better[by_better], worse[by_better]
    starts = np.searchsorted(better, np.arange(n), side="left")
    ends = np.searchsorted(better, np.arange(n), side="right")

    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[worse[starts[i] : ends[i]]] = True
    return np.asarray(keep, dtype=np.int64)
