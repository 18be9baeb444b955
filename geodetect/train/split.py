"""The training/validation split: each labelled grid divided by *area* into a training
and a validation part (:class:`SplitMap`, :func:`plan_split`).

Validation is *by area*: each grid is cut into square blocks, some of which are
validation blocks; a chip belongs to a part only if every block it touches does, so
no validation chip overlaps a training chip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geodetect.geometry.boxes import box_area, box_centres, boxes_overlap
from geodetect.io.labels import GridLabels

log = logging.getLogger(__name__)

TRAIN, VAL, EXCLUDED = 0, 1, 2
_BLOCKS_PER_GRID = 16  # aim: a 4 x 4 checkerboard of candidate validation blocks


@dataclass(frozen=True)
class SplitMap:
    """Which area of one grid belongs to which part.

    Attributes:
        block: side of a square block in grid pixels.
        parts: int8 [rows, cols] of blocks: ``TRAIN`` (0), ``VAL`` (1) or ``EXCLUDED`` (2).
    """

    block: int
    parts: np.ndarray

    def part_of(self, row_off: int, col_off: int, size: int) -> int | None:
        """The part a ``size``-pixel window lies wholly in, or None when it straddles."""
        rows, cols = self.parts.shape
        r0 = min(max(row_off // self.block, 0), rows - 1)
        r1 = min(max((row_off + size - 1) // self.block, 0), rows - 1)
        c0 = min(max(col_off // self.block, 0), cols - 1)
        c1 = min(max((col_off + size - 1) // self.block, 0), cols - 1)
        touched = self.parts[r0 : r1 + 1, c0 : c1 + 1]
        first = int(touched.flat[0])
        return first if (touched == first).all() and first != EXCLUDED else None

    def area(self, part: int, height: int, width: int) -> float:
        """Pixels of the grid in ``part``."""
        rows, cols = self.parts.shape
        heights = np.minimum(self.block, height - np.arange(rows) * self.block)
        widths = np.minimum(self.block, width - np.arange(cols) * self.block)
        return float((np.outer(heights, widths) * (self.parts == part)).sum())


def plan_split(
    labelled: Sequence[GridLabels],
    *,
    val_fraction: float,
    chip_size: int,
    seed: int = 0,
    ordered: bool = False,
) -> list[SplitMap]:
    """Choose the validation area.

    Scenes (``ordered=False``) are cut into square blocks of at least two chips a side
    (about 16 per grid); among 32 seeded random choices of blocks covering
    ``val_fraction`` of the area, the one whose share of objects is closest to
    ``val_fraction`` wins (both parts must hold objects). Chip folders (``ordered=True``,
    each grid one chip image) give their last ``val_fraction`` of chips, in file order,
    to validation: exported chips are numbered row by row, so the tail is one area;
    georeferenced training chips that overlap a validation chip are excluded.

    Returns one :class:`SplitMap` per grid; all-``TRAIN`` maps when no split is
    possible (``val_fraction`` 0 or too little area), which is logged.
    """
    if ordered:
        return _split_ordered(labelled, val_fraction)
    maps = []
    for gl in labelled:
        g = gl.grid
        block = max(2 * chip_size, math.ceil(math.sqrt(g.height * g.width / _BLOCKS_PER_GRID)))
        shape = (math.ceil(g.height / block), math.ceil(g.width / block))
        maps.append(SplitMap(block, np.zeros(shape, dtype=np.int8)))
    if val_fraction <= 0:
        return maps
    # Candidate blocks across all grids: (grid, row, col, area, objects).
    cells = []
    for gi, (gl, split) in enumerate(zip(labelled, maps, strict=True)):
        centres = box_centres(gl.boxes)
        obj_r = np.clip((centres[:, 1] // split.block).astype(int), 0, split.parts.shape[0] - 1)
        obj_c = np.clip((centres[:, 0] // split.block).astype(int), 0, split.parts.shape[1] - 1)
        for r in range(split.parts.shape[0]):
            for c in range(split.parts.shape[1]):
                h = min(split.block, gl.grid.height - r * split.block)
                w = min(split.block, gl.grid.width - c * split.block)
                cells.append((gi, r, c, h * w, int(((obj_r == r) & (obj_c == c)).sum())))
    total_area = sum(c[3] for c in cells)
    total_objects = sum(c[4] for c in cells)
    if len(cells) < 2 or total_objects < 2:
        log.warning(
            "the labelled area is too small to set aside a validation area; "
            "training without validation (the last epoch's model is kept)"
        )
        return maps
    rng = np.random.default_rng([seed, 7])
    best, best_score = None, math.inf
    for _ in range(32):
        chosen, area = [], 0.0
        for i in rng.permutation(len(cells)):
            if area >= val_fraction * total_area or len(chosen) == len(cells) - 1:
                break
            chosen.append(i)
            area += cells[i][3]
        val_objects = sum(cells[i][4] for i in chosen)
        if not 0 < val_objects < total_objects:
            continue
        score = abs(val_objects / total_objects - val_fraction)
        if score < best_score:
            best, best_score = chosen, score
    if best is None:
        log.warning(
            "no block split puts objects in both training and validation areas; "
            "training without validation (the last epoch's model is kept)"
        )
        return maps
    for i in best:
        gi, r, c = cells[i][:3]
        maps[gi].parts[r, c] = VAL
    return maps


def _split_ordered(labelled: Sequence[GridLabels], val_fraction: float) -> list[SplitMap]:
    maps = [
        SplitMap(max(g.grid.height, g.grid.width, 1), np.zeros((1, 1), dtype=np.int8))
        for g in labelled
    ]
    n_val = math.ceil(val_fraction * len(labelled)) if val_fraction > 0 else 0
    if n_val == 0 or n_val >= len(labelled):
        if val_fraction > 0:
            log.warning(
                "too few chips to set aside validation chips; training without "
                "validation (the last epoch's model is kept)"
            )
        return maps
    val_ids = range(len(labelled) - n_val, len(labelled))
    for i in val_ids:
        maps[i].parts[0, 0] = VAL
    georeferenced = [g.grid.crs is not None for g in labelled]
    if all(georeferenced):
        val_boxes = [(labelled[i].grid.crs, labelled[i].grid.grid.bounds) for i in val_ids]
        for i in range(len(labelled) - n_val):
            box = labelled[i].grid.grid.bounds
            if any(crs == labelled[i].grid.crs and boxes_overlap(box, vb) for crs, vb in val_boxes):
                maps[i].parts[0, 0] = EXCLUDED
    return maps


def _known_area(gl: GridLabels, split: SplitMap, part: int) -> float:
    """Pixels of a grid's known boxes whose centres lie in ``part`` (overlaps counted
    twice: a weight, not a measure)."""
    if gl.known is None or not len(gl.known):
        return 0.0
    total = 0.0
    for (x, y), area in zip(box_centres(gl.known), box_area(gl.known), strict=True):
        if split.part_of(int(y), int(x), 1) == part:
            total += area
    return total
