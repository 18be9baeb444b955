"""Box maths and the georeferencer: pixel ``xyxy`` boxes to map-coordinate polygons."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """Centres of N×4 ``xyxy`` boxes as an N×2 ``(x, y)`` array."""
    b = _as_boxes(boxes)
    return np.column_stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0])


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
