"""Pixel sizes and the rules that the labels' sizes set: one training GSD for rasters of
several (:func:`to_training_gsd`), a coarser one for objects large in pixels
(:func:`object_scaled_gsd`), and the NMS and second-box IoUs read from how the labelled
objects overlap (:func:`label_nms_iou`, :func:`label_second_box_iou`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import shapely

from geodetect.geometry.boxes import either_centre_inside, intersecting_pairs
from geodetect.geometry.merge import overlap_ratio
from geodetect.io.raster import MosaicGrid, grid_gsd_metres, resample_to_gsd

if TYPE_CHECKING:
    from geodetect.train.labelled import LabelledData

log = logging.getLogger(__name__)

# Percentile of object sizes that sets chip sizes and overlaps (see typical_object_px).
TYPICAL_PERCENTILE = 95
# Training rasters whose pixels differ from the training GSD by more than this share
# are resampled to it.
GSD_TOLERANCE = 0.02
# Objects large in pixels train at a coarser GSD, chosen so the typical object (95th
# percentile) is about TARGET_OBJECT_PX, once that coarsens by COARSEN_FROM or more; the
# small ones (SMALL_PERCENTILE) keep at least MIN_SMALL_PX (a 12 px object still meets
# RetinaNet's smallest anchor, 16 px, at IoU 0.56), and at most MAX_COARSEN times
# coarser (see object_scaled_gsd).
TARGET_OBJECT_PX = 80.0
COARSEN_FROM = 1.25
SMALL_PERCENTILE = 5
MIN_SMALL_PX = 12.0
MAX_COARSEN = 4.0
# label_nms_iou: the percentile of objects' largest overlap, the margin, and the range.
NMS_PERCENTILE = 99
NMS_MARGIN = 0.1
NMS_IOU_RANGE = (0.4, 0.5)
# label_second_box_iou's floor: on real 0.2 m orthophotos, second boxes on a found pool
# overlap it by IoU 0.17-0.40, and pools labelled side by side with a centre inside the
# other's box by 0.04-0.22 (one pair of 851 above 0.11).
SECOND_BOX_IOU_FLOOR = 0.15


def _upper_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2])


def to_training_gsd(grids: Sequence[MosaicGrid], gsd: float | None = None) -> list[MosaicGrid]:
    """One training GSD for rasters of several: the upper median of their pixel sizes in
    metres (so a 0.1 m and a 0.2 m flight train at 0.2 m, never upsampled, and a lone
    coarse raster does not coarsen the rest); rasters off it by more than
    :data:`GSD_TOLERANCE` are read resampled to it, and labels land on the resampled
    pixels. ``gsd`` (metres) imposes the training GSD instead (a resumed model's).
    Grids without a metric or angular CRS are left as they are."""
    sizes = [s for s in (grid_gsd_metres(g) for g in grids) if s]
    if not sizes:
        return list(grids)
    target = gsd or _upper_median(sizes)
    if gsd is None and max(sizes) > (1 + GSD_TOLERANCE) * min(sizes):
        log.warning(
            "training rasters have pixels of %.3g-%.3g m; all are read at %.3g m (their "
            "upper median), which the model records as its GSD",
            min(sizes),
            max(sizes),
            target,
        )
    return resample_to_gsd(grids, target, tolerance=GSD_TOLERANCE)


def object_scaled_gsd(sides_m: np.ndarray, gsd: float) -> float:
    """The training GSD for objects of longest sides ``sides_m`` (metres) on rasters of
    ``gsd`` metres: ``gsd`` itself, or coarser when the objects are large in pixels.

    A step's cost grows with the chip's area and the chip with the typical object (see
    ``default_chip_size``), so 7.5 cm imagery of 15 m pools would train on 320 px chips,
    six times the cost of 128 px ones, and get a sixth of the steps in a time budget. The
    typical object (the 95th percentile) is brought to about :data:`TARGET_OBJECT_PX`
    when that coarsens the pixels by :data:`COARSEN_FROM` or more, at most
    :data:`MAX_COARSEN` times, and never so far that the small objects (the
    :data:`SMALL_PERCENTILE` th percentile) fall under :data:`MIN_SMALL_PX`. Detection
    reads its chips at the model's GSD, so it gains the same factor squared."""
    if not len(sides_m) or gsd <= 0:
        return gsd
    typical = float(np.percentile(sides_m, TYPICAL_PERCENTILE)) / gsd
    small = float(np.percentile(sides_m, SMALL_PERCENTILE)) / gsd
    factor = min(typical / TARGET_OBJECT_PX, small / MIN_SMALL_PX, MAX_COARSEN)
    if factor < COARSEN_FROM:
        return gsd
    return min(float(f"{gsd * factor:.3g}"), gsd * MAX_COARSEN)  # 0.21 m, not 0.20992 m


def label_nms_iou(labelled: LabelledData) -> float:
    """The NMS IoU for objects that overlap as the labelled ones do: the IoU that 99 %
    of them stay under with any other object of their class, plus
    :data:`NMS_MARGIN` for imprecise boxes, within :data:`NMS_IOU_RANGE`.

    Objects seen from above (pools, roofs, tanks) barely overlap, and a detector's
    second box on one of them often overlaps the first by IoU 0.4-0.5, just under
    torchvision's 0.5, so such sets get the floor; densely packed objects (parked cars,
    crowns) keep 0.5. One odd pair of labels does not move it."""
    low, high = NMS_IOU_RANGE
    return _label_overlap_rule(labelled, low, high, centred=False)


def label_second_box_iou(labelled: LabelledData, nms_iou: float) -> float:
    """The second-box IoU (see :func:`geodetect.model.postprocess.second_boxes`) for
    objects that nest as the labelled ones do: the IoU that 99 % of them stay under
    with any other object of their class such that the centre of one lies inside the
    other's box, plus :data:`NMS_MARGIN`, at least :data:`SECOND_BOX_IOU_FLOOR` and at
    most ``nms_iou`` (where NMS takes over).

    A detector's second box on a pool lies mostly inside the first, around its centre,
    at IoU 0.15-0.4; labelled pools only do so with a spa or plunge pool at the corner
    of a larger pool, whose box holds the spa's centre at IoU 0.04-0.2 (11 such pairs
    among São Paulo's 851 pools). Objects that often nest (parked cars under a
    carport's box, say) raise it to ``nms_iou``, which turns the rule off."""
    return _label_overlap_rule(labelled, SECOND_BOX_IOU_FLOOR, nms_iou, centred=True)


def _label_overlap_rule(labelled: LabelledData, low: float, high: float, *, centred: bool):
    """The 99th percentile over labelled objects of their largest IoU with another
    object of their class (only pairs where a centre lies inside the other box when
    ``centred``), plus :data:`NMS_MARGIN`, within [low, high], to 2 decimals."""
    worst: list[np.ndarray] = []
    for gl in labelled.grids:
        b = np.asarray(gl.boxes, dtype=np.float64)
        per = np.zeros(len(b))
        if len(b) > 1:
            i, j = intersecting_pairs(b, b)
            keep = (i != j) & (gl.classes[i] == gl.classes[j])
            if centred:
                keep &= either_centre_inside(b[i], b[j])
            i, j = i[keep], j[keep]
            polys = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            np.maximum.at(per, i, overlap_ratio(polys[i], polys[j], "iou"))
        worst.append(per)
    values = np.concatenate(worst) if worst else np.zeros(0)
    if not len(values):
        return round(high, 2)
    q = float(np.percentile(values, NMS_PERCENTILE))
    return round(min(high, max(low, q + NMS_MARGIN)), 2)


def _log_coarser(labelled: LabelledData, finest: float, coarser: float) -> None:
    sides = labelled.object_sides_px()
    factor = coarser / finest
    log.info(
        "objects are large in pixels at %.3g m (95th percentile %.0f px, 5th %.0f px): "
        "training at %.3g m instead (%.0f px and %.0f px: %.1fx fewer pixels per object, "
        "so smaller chips and more steps a minute); the model detects at that GSD. "
        "--gsd %.3g keeps the finer pixels",
        finest,
        labelled.typical_object_px,
        float(np.percentile(sides, SMALL_PERCENTILE)),
        coarser,
        labelled.typical_object_px / factor,
        float(np.percentile(sides, SMALL_PERCENTILE)) / factor,
        factor**2,
        finest,
    )
