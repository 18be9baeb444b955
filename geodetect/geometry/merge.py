"""The seam merge: pieces of objects cut by chip edges put back together, then
class-wise non-maximum suppression of map-coordinate polygons.

Chip ownership (see :mod:`geodetect.geometry.grid`) keeps each object that fits the
chip overlap once within one chip grid; :func:`merge_pieces` joins larger objects that
chip edges cut; NMS removes what is left where grids or files overlap, and what the
detector itself reported twice.
"""

from __future__ import annotations

import numpy as np
import shapely

from geodetect.geometry.boxes import box_area, box_intersection, intersecting_pairs

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
    second_iou: float | None = None,
) -> np.ndarray:
    """Greedy class-wise NMS on polygons, second boxes included.

    Args:
        polygons: array [N] of shapely Polygons (any orientation, any CRS units).
        scores: float array [N]; higher is kept first (ties: lower index first).
        classes: array [N] of labels; polygons of different classes never suppress each
            other. ``None`` treats all as one class.
        threshold: a polygon is suppressed when its overlap with a kept, higher-scored
            polygon of the same class is > threshold.
        metric: ``"iou"`` (intersection over union) or ``"ios"`` (intersection over the
            smaller area: suppresses a box cut by a chip edge inside the whole one).
        second_iou: a polygon is also suppressed by a kept, better one it overlaps by
            IoU above this when the centroid of one of the two lies inside the other: a
            second box of one object (see :func:`second_box_pairs`). None: NMS only.

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
    if second_iou is not None:
        over |= second_box_pairs(polygons[left], polygons[right], second_iou)
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


def second_box_pairs(a: np.ndarray, b: np.ndarray, iou: float) -> np.ndarray:
    """Element-wise, whether polygons ``a`` and ``b`` are one object seen twice: they
    overlap by IoU above ``iou`` and the centroid of one lies inside the other.

    Two objects side by side keep each other's centres out, or overlap little (a spa at
    the corner of a pool, inside its box); a detector's second box on one object lies
    around its centre. The pixel-box form of this rule is
    :func:`geodetect.model.postprocess.second_boxes`, which drops the worse of a pair.
    """
    over = overlap_ratio(a, b, "iou") > iou
    if not over.any():
        return over
    a, b = a[over], b[over]
    centred = shapely.contains(a, shapely.centroid(b)) | shapely.contains(b, shapely.centroid(a))
    out = np.zeros(len(over), dtype=bool)
    out[np.flatnonzero(over)] = centred
    return out


def cut_mask(
    boxes: np.ndarray, core: tuple[float, float, float, float], *, size: int, margin: float = 4.0
) -> np.ndarray:
    """Which chip-pixel boxes (N×4 ``xyxy``) reach within ``margin`` pixels of an
    *interior* edge of a ``size``-pixel chip (a side where its core is finite, i.e. a
    neighbouring chip continues the scene): such a box may be only the piece of an
    object that this chip cuts."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xmin, ymin, xmax, ymax = core
    cut = np.zeros(len(boxes), dtype=bool)
    if np.isfinite(xmin):
        cut |= boxes[:, 0] <= margin
    if np.isfinite(ymin):
        cut |= boxes[:, 1] <= margin
    if np.isfinite(xmax):
        cut |= boxes[:, 2] >= size - margin
    if np.isfinite(ymax):
        cut |= boxes[:, 3] >= size - margin
    return cut


def _same_object(boxes, windows, a, b, min_iou) -> np.ndarray:
    """Whether boxes ``a`` and ``b`` (index arrays) found by two chips are one object:
    where both chips see the scene (their windows' intersection), the parts of the
    two boxes there must agree (IoU >= ``min_iou``)."""
    common = box_intersection(windows[a], windows[b])
    part_a, part_b = box_intersection(boxes[a], common), box_intersection(boxes[b], common)
    inter = box_area(box_intersection(part_a, part_b))
    union = box_area(part_a) + box_area(part_b) - inter
    other_chip = (windows[a] != windows[b]).any(axis=1)
    return other_chip & (inter >= min_iou * np.maximum(union, 1e-12)) & (inter > 0)


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label (0..k-1, numbered by each component's lowest node) of
    each of ``n`` nodes joined by the edges ``left[i]``-``right[i]``."""
    label = np.arange(n)
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    while True:
        low = np.minimum(label[left], label[right])
        new = label.copy()
        np.minimum.at(new, left, low)
        np.minimum.at(new, right, low)
        new = new[new]  # pointer jumping: follow each label to its own label
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1].reshape(-1)


def merge_pieces(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    pieces: np.ndarray,
    windows: np.ndarray,
    *,
    min_iou: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Put objects that chip edges cut back together, in one grid's pixel coordinates.

    A *piece* is a box that touches an interior chip edge (see :func:`cut_mask`). Two
    boxes of one class from different chips are the same object when, inside the area
    both chips see, their parts agree (IoU >= ``min_iou``). A piece that is the same
    object as a whole box is dropped (the whole box stands for it); pieces that are the
    same object as each other (an object larger than the chip overlap, which no chip
    saw whole) become one box, their envelope, with the best score. Everything else
    passes unchanged.

    Args:
        boxes: float64 [N, 4] ``xyxy`` in the grid's pixel-edge coordinates.
        scores, labels: [N].
        pieces: bool [N], True for pieces.
        windows: float64 [N, 4] ``xyxy`` grid pixel window of the chip each box came from.

    Returns:
        ``keep`` int64 [K] indices of the boxes that remain and ``merged`` float64 [K, 4]
        their boxes (the envelope for joined pieces; the box itself otherwise).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    pieces = np.asarray(pieces, dtype=bool)
    labels, scores = np.asarray(labels), np.asarray(scores)
    piece_ids, whole_ids = np.flatnonzero(pieces), np.flatnonzero(~pieces)
    dropped = np.zeros(n, dtype=bool)
    i, j = intersecting_pairs(boxes[piece_ids], boxes[whole_ids])
    p, w = piece_ids[i], whole_ids[j]
    inside = (labels[p] == labels[w]) & _same_object(boxes, windows, p, w, min_iou)
    dropped[p[inside]] = True

    # Connected groups of pieces that are one object, joined by agreeing pairs.
    left = piece_ids[~dropped[piece_ids]]
    i, j = intersecting_pairs(boxes[left], boxes[left])
    a, b = left[i], left[j]
    pair = (a < b) & (labels[a] == labels[b])
    a, b = a[pair], b[pair]
    joined = _same_object(boxes, windows, a, b, min_iou)
    merged = boxes.copy()
    groups = components(n, a[joined], b[joined])[left]
    _, which, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    for g in np.flatnonzero(sizes > 1):  # only groups of several pieces: few
        members = left[which == g]
        top = members[np.argmax(scores[members])]
        merged[top] = [*boxes[members, :2].min(axis=0), *boxes[members, 2:].max(axis=0)]
        dropped[members[members != top]] = True
    keep = np.flatnonzero(~dropped)
    return keep, merged[keep]
