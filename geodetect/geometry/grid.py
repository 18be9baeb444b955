"""The chip grid: where overlapping, full-size chips fall on a scene, and which chip owns what.

Conventions: offsets and sizes are integer pixels; rows are ``y``, columns are ``x``;
shapes are always passed as named ``height``/``width`` (never a bare tuple).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from affine import Affine


def axis_offsets(length: int, chip: int, overlap: int) -> np.ndarray:
    """Chip start offsets along one axis.

    Chips step by ``chip - overlap``; the last chip is shifted inward so it ends exactly at
    ``length`` and stays full size. An axis shorter than a chip gets one chip at 0, which
    the reader pads.

    Returns:
        int64 array of strictly increasing offsets, first 0; consecutive chips overlap by
        at least ``overlap`` pixels.
    """
    if chip <= 0:
        raise ValueError(f"chip size must be positive, got {chip}")
    if not 0 <= overlap < chip:
        raise ValueError(f"overlap must be in [0, chip size), got {overlap} for chip {chip}")
    if length <= chip:
        return np.zeros(1, dtype=np.int64)
    stride = chip - overlap
    count = int(np.ceil((length - chip) / stride)) + 1
    offsets = np.arange(count, dtype=np.int64) * stride
    offsets[-1] = length - chip
    return offsets


def core_bounds(offsets: np.ndarray, chip: int) -> np.ndarray:
    """Edges of each chip's *core* along one axis: ``[edges[i], edges[i+1])`` for chip i.

    Neighbouring chips split their shared strip at its middle, so the cores partition the
    whole axis (the first starts at -inf, the last ends at +inf) and every box centre has
    exactly one owner, whatever the overlap of the shifted-in edge chip.
    """
    inner = (offsets[1:] + offsets[:-1] + chip) / 2.0
    return np.concatenate([[-np.inf], inner, [np.inf]])


@dataclass(frozen=True)
class Chip:
    """One chip: a window of a scene grid plus its own affine transform.

    Attributes:
        index: position in the grid's chip list.
        row_off, col_off: pixel offset of the chip in the scene grid.
        height, width: chip size in pixels.
        transform: ``scene_transform @ Affine.translation(col_off, row_off)``; maps chip
            pixel-edge coordinates ``(x, y)`` to map coordinates.
        core: ``(xmin, ymin, xmax, ymax)`` in chip pixel coordinates; detections whose
            centre falls inside belong to this chip (half-open, may be infinite).
    """

    index: int
    row_off: int
    col_off: int
    height: int
    width: int
    transform: Affine
    core: tuple[float, float, float, float]


@dataclass(frozen=True)
class ChipGrid:
    """Overlapping full-size chips over a ``height`` × ``width`` scene grid."""

    height: int
    width: int
    chip_size: int
    overlap: int
    transform: Affine = Affine.identity()

    @cached_property
    def row_offsets(self) -> np.ndarray:
        return axis_offsets(self.height, self.chip_size, self.overlap)

    @cached_property
    def col_offsets(self) -> np.ndarray:
        return axis_offsets(self.width, self.chip_size, self.overlap)

    @cached_property
    def _row_edges(self) -> np.ndarray:
        return core_bounds(self.row_offsets, self.chip_size)

    @cached_property
    def _col_edges(self) -> np.ndarray:
        return core_bounds(self.col_offsets, self.chip_size)

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Chip:
        if not 0 <= index < len(self):
            raise IndexError(index)
        n_cols = len(self.col_offsets)
        r, c = divmod(index, n_cols)
        row_off = int(self.row_offsets[r])
        col_off = int(self.col_offsets[c])
        row_edges, col_edges = self._row_edges, self._col_edges
        core = (
            float(col_edges[c] - col_off),
            float(row_edges[r] - row_off),
            float(col_edges[c + 1] - col_off),
            float(row_edges[r + 1] - row_off),
        )
        return Chip(
            index=index,
            row_off=row_off,
            col_off=col_off,
            height=self.chip_size,
            width=self.chip_size,
            transform=self.transform @ Affine.translation(col_off, row_off),
            core=core,
        )


def chip_grid(
    *, height: int, width: int, chip_size: int, overlap: int, transform: Affine | None = None
) -> ChipGrid:
    """Build the chip grid of a scene (see :func:`axis_offsets` for the placement rule)."""
    axis_offsets(max(height, 1), chip_size, overlap)  # validates arguments early
    if height <= 0 or width <= 0:
        raise ValueError(f"scene must have a positive size, got {height}x{width}")
    return ChipGrid(height, width, chip_size, overlap, transform or Affine.identity())


def owned_mask(boxes: np.ndarray, core: tuple[float, float, float, float]) -> np.ndarray:
    """Which pixel boxes (N×4 xyxy, chip pixels) have their centre in the chip's core."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0
    xmin, ymin, xmax, ymax = core
    return (cx >= xmin) & (cx < xmax) & (cy >= ymin) & (cy < ymax)
