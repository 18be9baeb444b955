"""Pure geometry: grids (shape + transform + CRS), chip grids, pixel-to-map transforms,
box maths and the seam merge.

Nothing here opens a file or imports torch.
"""

from geodetect.geometry.blocks import Block, plan_blocks
from geodetect.geometry.boxes import (
    box_centres,
    pixel_boxes_to_map,
    pixel_boxes_to_map_coords,
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
)
from geodetect.geometry.merge import (
    MERGE_METRICS,
    cut_mask,
    merge_pieces,
    nms_polygons,
    overlap_ratio,
)

__all__ = [
    "Block",
    "Chip",
    "ChipGrid",
    "Grid",
    "MERGE_METRICS",
    "axis_offsets",
    "box_centres",
    "chip_grid",
    "cut_mask",
    "lattice_offset",
    "merge_pieces",
    "nms_polygons",
    "offset_range",
    "overlap_ratio",
    "plan_blocks",
    "owned_mask",
    "pixel_boxes_to_map",
    "pixel_boxes_to_map_coords",
]
