"""Change between two flights: which pools are new, removed, kept or resized.

Two layers of the same ground (possibly another GSD, CRS or sensor) are compared in
map coordinates. Flights are rarely registered to each other to better than a metre
or two, so the offset between them is estimated first, from the pools both saw
(the densest offset among pool pairs within ``max_shift``, then the median over the
pools matched once it is applied), reported, and applied before matching. A pool with
no partner is ``new`` or ``removed`` only where the other flight looked (its coverage);
elsewhere it is ``not_covered``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import shapely

from geodetect.county.layers import DetectionLayer, require_coverage, share_inside, work_crs
from geodetect.county.parcels import parcel_of
from geodetect.errors import InputError
from geodetect.geometry.match import greedy_match
from geodetect.geometry.merge import overlap_ratio
from geodetect.io.vectors import to_crs_checked

log = logging.getLogger(__name__)

STATUSES = ("new", "removed", "resized", "kept", "not_covered")
# Pools of two flights are the same pool when their boxes overlap this much once the
# offset between the flights is applied (a pool grown by half still overlaps 0.67).
MATCH_IOU = 0.25
# Bin of the offset histogram, metres.
_BIN = 0.25


@dataclass(frozen=True)
class Change:
    """The pools of both flights with their change, and the offset between the flights.

    Attributes:
        layer: one feature per pool (the new flight's geometry where it has one):
            ``status``, ``class``, the score, area, source and date of each flight
            (``_old`` / ``_new``), ``area_change`` (new over old area) and, with parcels,
            ``parcel``.
        shift: ``(dx, dy)`` in metres: where the new flight puts what the old one put
            at (0, 0).
        shift_se: the standard error of each component (metres).
        summary: counts by status and by class, the shift and how many pools gave it.
    """

    layer: gpd.GeoDataFrame
    shift: tuple[float, float]
    shift_se: tuple[float, float]
    summary: dict = field(default_factory=dict)


def compare_flights(
    old: DetectionLayer,
    new: DetectionLayer,
    *,
    max_shift: float = 3.0,
    resize: float = 0.3,
    classes: Sequence[str] | None = None,
    parcels: gpd.GeoDataFrame | None = None,
    id_field: str | None = None,
) -> Change:
    """Compare two flights' layers (see the module's docstring).

    Args:
        old, new: the layers and their coverage (:func:`~geodetect.county.read_detections`).
        max_shift: the largest offset between the flights to look for (metres).
        resize: a kept pool is ``resized`` when its area changed by more than this
            share of the larger of the two areas.
        classes: the classes that count (default: all).
        parcels: give each change the parcel holding most of it (``id_field``, or the
            parcel's row number).

    Raises:
        InputError: a layer without coverage, or coverages that are empty or do not
            overlap (no ground both flights looked at).
    """
    for layer, option in ((old, "--old-coverage"), (new, "--new-coverage")):
        require_coverage(layer, option)
    if not (math.isfinite(max_shift) and max_shift > 0):
        raise InputError(f"--max-shift {max_shift}: give a distance in metres above 0")
    if not 0 < resize < 1:
        raise InputError(f"--resize {resize}: give a share of the area between 0 and 1")
    work = work_crs(new.detections, old.detections)
    a = _pools(old.detections, classes, work)
    b = _pools(new.detections, classes, work)
    old_cover = old.coverage.to_crs(work).geometry.union_all()
    new_cover = new.coverage.to_crs(work).geometry.union_all()
    for layer, cover in ((old, old_cover), (new, new_cover)):
        if cover is None or cover.is_empty:
            raise InputError(
                f"{layer.path}: its coverage is empty (the run read no valid imagery), so "
                "no change can be told; detect on imagery of the area first"
            )
    if old_cover.intersection(new_cover).area <= 0:
        raise InputError(
            f"{old.path} and {new.path}: the ground their imagery covered does not overlap, "
            "so no pool can be compared; give two layers of the same area (and check that "
            "each file's CRS is the right one)"
        )

    shift, se, used = _estimate_shift(a, b, max_shift)
    moved = shapely.transform(a.geometry.to_numpy(), lambda xy: xy + np.array(shift))
    pair_old, pair_new = _match(moved, b, max_shift)

    n_old, n_new = len(a), len(b)
    status_old = np.where(share_inside(moved, new_cover) >= 0.5, "removed", "not_covered")
    back = shapely.transform(b.geometry.to_numpy(), lambda xy: xy - np.array(shift))
    status_new = np.where(share_inside(back, old_cover) >= 0.5, "new", "not_covered")
    rows = []
    matched_old = np.zeros(n_old, dtype=bool)
    matched_new = np.zeros(n_new, dtype=bool)
    matched_old[pair_old] = True
    matched_new[pair_new] = True
    area_old = a["area_m2"].to_numpy(dtype=np.float64)
    area_new = b["area_m2"].to_numpy(dtype=np.float64)
    for i, j in zip(pair_old.tolist(), pair_new.tolist(), strict=True):
        change = abs(area_new[j] - area_old[i]) / max(area_new[j], area_old[i], 1e-9)
        rows.append(("resized" if change > resize else "kept", i, j))
    rows += [(status_new[j], -1, j) for j in np.flatnonzero(~matched_new).tolist()]
    rows += [(status_old[i], i, -1) for i in np.flatnonzero(~matched_old).tolist()]

    layer = _change_layer(rows, a, b, work)
    if parcels is not None:
        layer["parcel"] = parcel_of(layer, parcels, id_field)
    layer = layer.to_crs(new.detections.crs)
    classes_of = sorted({str(c) for c in layer["class"]})
    summary = {
        "shift_m": [round(shift[0], 3), round(shift[1], 3)],
        # null, not NaN (which is no JSON), when no pool pair gave the offset
        "shift_se_m": [None if math.isnan(v) else round(v, 3) for v in se],
        "pools_for_shift": used,
        "pools_old": n_old,
        "pools_new": n_new,
        "status": _counts(layer["status"]),
        "by_class": {str(c): _counts(layer["status"][layer["class"] == c]) for c in classes_of},
    }
    return Change(layer, shift, se, summary)


def _counts(status) -> dict[str, int]:
    return {s: int((status == s).sum()) for s in STATUSES}


def _pools(detections: gpd.GeoDataFrame, classes, work) -> gpd.GeoDataFrame:
    pools = detections
    if classes is not None and "class" in pools:
        pools = pools[pools["class"].isin(list(classes))]
    pools = to_crs_checked(pools, work).reset_index(drop=True)
    # a feature without a class (drawn by hand) counts as "object", as a layer without them
    pools["class"] = pools["class"].fillna("object") if "class" in pools else "object"
    # areas from the geometry, not the area_m2 field a box edited in QGIS keeps
    metre = work.axis_info[0].unit_conversion_factor if work.axis_info else 1.0
    pools["area_m2"] = pools.geometry.area * metre**2
    return pools


def _estimate_shift(
    a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, max_shift: float
) -> tuple[tuple[float, float], tuple[float, float], int]:
    """The offset from ``a`` to ``b``: the densest offset among pairs of same-class pools
    within ``max_shift``, refined to the median over pairs within a metre of it."""
    if not len(a) or not len(b):
        return (0.0, 0.0), (math.nan, math.nan), 0
    ca = shapely.get_coordinates(shapely.centroid(a.geometry.to_numpy()))
    cb = shapely.get_coordinates(shapely.centroid(b.geometry.to_numpy()))
    tree = shapely.STRtree(shapely.points(cb))
    i, j = tree.query(shapely.points(ca), predicate="dwithin", distance=max_shift)
    same = a["class"].to_numpy()[i] == b["class"].to_numpy()[j]
    i, j = i[same], j[same]
    if not len(i):
        log.warning("no pools of the two flights lie within %g m of each other", max_shift)
        return (0.0, 0.0), (math.nan, math.nan), 0
    d = cb[j] - ca[i]
    bins = int(math.ceil(2 * max_shift / _BIN))
    hist, xe, ye = np.histogram2d(d[:, 0], d[:, 1], bins=bins, range=[[-max_shift, max_shift]] * 2)
    # A 3 x 3 box smooth so an offset on a bin edge is not split in two.
    padded = np.pad(hist, 1)
    smooth = sum(
        padded[1 + di : 1 + di + bins, 1 + dj : 1 + dj + bins]
        for di in (-1, 0, 1)
        for dj in (-1, 0, 1)
    )
    bx, by = np.unravel_index(np.argmax(smooth), smooth.shape)
    peak = np.array([(xe[bx] + xe[bx + 1]) / 2, (ye[by] + ye[by + 1]) / 2])
    for _ in range(3):
        near = np.hypot(*(d - peak).T) <= 1.0
        if not near.any():
            break
        peak = np.median(d[near], axis=0)
    near = np.hypot(*(d - peak).T) <= 1.0
    # One pair per old pool: the nearest to the peak.
    order = np.argsort(np.hypot(*(d - peak).T))
    _, first = np.unique(i[order], return_index=True)
    chosen = order[first]
    chosen = chosen[near[chosen]]
    n = len(chosen)
    if n:
        peak = np.median(d[chosen], axis=0)
        mad = np.median(np.abs(d[chosen] - peak), axis=0) * 1.4826
        se = tuple(float(v) for v in mad * math.sqrt(math.pi / 2) / math.sqrt(n))
    else:  # no pair near the peak: no offset is known, so none is applied
        return (0.0, 0.0), (math.nan, math.nan), 0
    return (float(peak[0]), float(peak[1])), se, n


def _match(moved: np.ndarray, b: gpd.GeoDataFrame, max_shift: float):
    """Pairs (old, new) of the same pool: greedy by IoU, the new flight's best first."""
    geoms = b.geometry.to_numpy()
    i, j = shapely.STRtree(geoms).query(moved, predicate="intersects")
    if not len(i):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = overlap_ratio(moved[i], geoms[j], "iou")
    rank = np.argsort(np.argsort(-b["score"].to_numpy(dtype=np.float64), kind="stable"))
    match = greedy_match(j, i, iou, rank=rank, n_ref=len(moved), thresholds=[MATCH_IOU])[0]
    pair_new = np.flatnonzero(match >= 0)
    return match[pair_new], pair_new


def _change_layer(rows, a, b, crs) -> gpd.GeoDataFrame:
    status = np.array([r[0] for r in rows], dtype=object)
    io = np.array([r[1] for r in rows], dtype=np.int64)
    jn = np.array([r[2] for r in rows], dtype=np.int64)
    has_new = jn >= 0
    geometry = np.full(len(rows), None, dtype=object)
    geometry[has_new] = b.geometry.to_numpy()[jn[has_new]]
    geometry[~has_new] = a.geometry.to_numpy()[io[~has_new]]

    def column(frame, name, index, fill):
        if name not in frame or not len(frame):
            return np.full(len(index), fill, dtype=object)
        values = frame[name].to_numpy()[np.maximum(index, 0)]
        return np.where(index >= 0, values, fill)

    area_old = column(a, "area_m2", io, np.nan).astype(np.float64)
    area_new = column(b, "area_m2", jn, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.round(area_new / area_old, 3)
    layer = gpd.GeoDataFrame(
        {
            "status": status,
            "class": np.where(has_new, column(b, "class", jn, None), column(a, "class", io, None)),
            "score_old": column(a, "score", io, np.nan).astype(np.float64),
            "score_new": column(b, "score", jn, np.nan).astype(np.float64),
            "area_old_m2": area_old,
            "area_new_m2": area_new,
            "area_change": ratio,
            "source_old": column(a, "source", io, None),
            "source_new": column(b, "source", jn, None),
            "date_old": column(a, "date", io, None),
            "date_new": column(b, "date", jn, None),
        },
        geometry=list(geometry),
        crs=crs,
    )
    order = {s: k for k, s in enumerate(STATUSES)}
    keys = np.array([order[s] for s in status], dtype=np.int64)
    return layer.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)
