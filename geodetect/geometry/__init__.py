"""Pure geometry: grids (shape + transform + CRS), chip grids, pixel-to-map transforms,
box maths and the seam merge.

Nothing here opens a file or imports torch.
"""

from geodetect.geometry.blocks import Block, plan_blocks
from geodetect.geometry.boxes import (
    EDGES,
    box_area,
    box_centres,
    box_has_area,
    box_intersection,
    boxes_overlap,
    clip_boxes,
    either_centre_inside,
    intersecting_pairs,
    pixel_boxes_to_map,
    pixel_boxes_to_map_coords,
    points_in_boxes,
)
from geodetect.geometry.grid import (
    Chip,
    ChipGrid,
    Grid,
    axis_offsets,
    chip_grid,
    lattice_offset,
    offset_range,
    owned_mask,
    window_box,
)
from geodetect.geometry.merge import (
    MERGE_METRICS,
    cut_mask,
    merge_pieces,
    nms_polygons,
    overlap_ratio,
)

__all__ = [
    "EDGES",
    "Block",
    "Chip",
    "ChipGrid",
    "Grid",
    "MERGE_METRICS",
    "axis_offsets",
    "box_area",
    "box_centres",
    "box_has_area",
    "box_intersection",
    "boxes_overlap",
    "chip_grid",
    "clip_boxes",
    "cut_mask",
    "either_centre_inside",
    "intersecting_pairs",
    "lattice_offset",
    "merge_pieces",
    "nms_polygons",
    "offset_range",
    "overlap_ratio",
    "plan_blocks",
    "owned_mask",
    "pixel_boxes_to_map",
    "pixel_boxes_to_map_coords",
    "points_in_boxes",
    "window_box",
]
