"""Box maths on ``xyxy`` boxes, and the georeferencer: pixel boxes to map polygons.

A box is ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``, in pixel-edge
coordinates (pixel (0, 0) covers [0, 1) x [0, 1)) or any other units; arrays of boxes
are ``[..., 4]`` and points ``[..., 2]`` ``(x, y)``, and two arguments broadcast
against each other as numpy does, so ``a[:, None]`` and ``b[None]`` compare every box
of ``a`` with every box of ``b``.

:func:`box_centres`, :func:`box_area`, :func:`box_has_area`, :func:`points_in_boxes`
and :func:`either_centre_inside` use only operators and methods that numpy arrays and
torch tensors share: they take either (the model's post-processing and loss call them
with tensors) and return the same kind, so this module needs no torch. The others take
numpy arrays. Pairwise IoU of tensors is :func:`torchvision.ops.box_iou`; IoU of
polygons is :func:`geodetect.geometry.merge.overlap_ratio`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from affine import Affine

#: How a box's edges count in :func:`points_in_boxes`.
EDGES = ("open", "closed", "half-open")


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_centres(boxes: Any) -> Any:
    """Centres ``[..., 2]`` ``(x, y)`` of boxes ``[..., 4]`` (numpy or torch)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def box_area(boxes: Any) -> Any:
    """Areas ``[...]`` of boxes ``[..., 4]`` (numpy or torch); a box with ``x2 < x1`` or
    ``y2 < y1`` (an empty intersection) has area 0."""
    width = (boxes[..., 2] - boxes[..., 0]).clip(min=0)
    height = (boxes[..., 3] - boxes[..., 1]).clip(min=0)
    return width * height


def box_has_area(boxes: Any) -> Any:
    """Whether each box ``[..., 4]`` (numpy or torch) has a positive width and height."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def points_in_boxes(points: Any, boxes: Any, *, edges: str) -> Any:
    """Whether each point ``[..., 2]`` lies in the box ``[..., 4]`` it is paired with
    (numpy or torch, broadcast).

    Args:
        points: ``(x, y)`` points.
        boxes: ``xyxy`` boxes; their coordinates may be infinite.
        edges: ``"open"``: strictly inside, a point on an edge is out; ``"closed"``: a
            point on an edge is in; ``"half-open"``: in [x1, x2) x [y1, y2), so boxes
            that tile the plane hold each point exactly once.

    Returns:
        bool ``[...]``, the broadcast shape without the last axis.
    """
    x, y = points[..., 0], points[..., 1]
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    if edges == "open":
        return (x > x1) & (x < x2) & (y > y1) & (y < y2)
    if edges == "closed":
        return (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    if edges == "half-open":
        return (x >= x1) & (x < x2) & (y >= y1) & (y < y2)
    raise ValueError(f"unknown edges {edges!r}; choose one of {EDGES}")


def either_centre_inside(a: Any, b: Any) -> Any:
    """Whether the centre of box ``a`` lies strictly inside box ``b`` or the centre of
    ``b`` strictly inside ``a`` (``[..., 4]`` each, numpy or torch, broadcast).

    The nesting half of the second-box rule: a detector's second box on one object
    lies around the first one's centre, while two objects side by side keep each
    other's centres out (see :func:`geodetect.model.postprocess.second_boxes`)."""
    return points_in_boxes(box_centres(a), b, edges="open") | points_in_boxes(
        box_centres(b), a, edges="open"
    )


def box_intersection(a: Any, b: Any) -> np.ndarray:
    """The box where boxes ``a`` and ``b`` overlap (``[..., 4]`` each, broadcast), as
    float64 ``[..., 4]``; where they do not overlap, ``x2 < x1`` or ``y2 < y1`` (see
    :func:`box_has_area` and :func:`box_area`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.concatenate(
        [np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])], axis=-1
    )


def boxes_overlap(a: Any, b: Any) -> np.ndarray:
    """Whether boxes ``a`` and ``b`` (``[..., 4]`` each, broadcast) share an area: their
    intersection has a positive width and height. Boxes that only touch do not, and a
    box of no area overlaps nothing."""
    return box_has_area(box_intersection(a, b))


def clip_boxes(boxes: Any, window: tuple[float, float, float, float]) -> np.ndarray:
    """Boxes ``[..., 4]`` with x clipped to [``x1``, ``x2``] and y to [``y1``, ``y2``] of
    the ``xyxy`` ``window``; a box outside the window becomes a box of no area on its
    edge (see :func:`box_has_area`)."""
    x1, y1, x2, y2 = window
    return np.clip(boxes, [x1, y1, x1, y1], [x2, y2, x2, y2])


def intersecting_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i into ``a``, j into ``b``) of boxes (float [N, 4], [M, 4]) that
    intersect, boxes that touch included (shapely's ``intersects``), from an STRtree
    over ``b``."""
    if len(a) == 0 or len(b) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    tree = shapely.STRtree(shapely.box(*b.T))
    return tree.query(shapely.box(*a.T), predicate="intersects")


def pixel_boxes_to_map_coords(boxes: np.ndarray, transform: Affine) -> np.ndarray:
    """Map coordinates of the four corners of each pixel box.

    Args:
        boxes: float array [N, 4], ``xyxy`` in pixel-edge coordinates of the array the
            boxes were found in (pixel (0, 0) covers [0, 1) × [0, 1)).
        transform: that array's affine transform (pixel edge -> map).

    Returns:
        float64 array [N, 4, 2]: corners (x1, y1), (x2, y1), (x2, y2), (x1, y2) in map
        coordinates. No half-pixel shift is applied.
    """
    b = _as_boxes(boxes)
    px = b[:, [0, 2, 2, 0]]
    py = b[:, [1, 1, 3, 3]]
    a, bb, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    mx = a * px + bb * py + c
    my = d * px + e * py + f
    return np.stack([mx, my], axis=-1)


def pixel_boxes_to_map(boxes: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel ``xyxy`` boxes -> shapely Polygons in map coordinates (array of N geometries).

    A north-up transform yields axis-aligned rectangles; a rotated or sheared transform
    yields the true 4-corner quadrilateral, never its envelope. Rings are made
    counter-clockwise (the orientation RFC 7946 and OGC simple features expect).
    """
    corners = pixel_boxes_to_map_coords(boxes, transform)
    if len(corners) == 0:
        return np.empty(0, dtype=object)
    # A transform with negative determinant (the usual north-up one) mirrors the pixel
    # ring's orientation; reverse it so map rings are counter-clockwise.
    if transform.determinant < 0:
        corners = corners[:, ::-1, :]
    return shapely.polygons(corners)
