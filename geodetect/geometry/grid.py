"""Pixel grids: the one value for "shape + transform + CRS", the lattice rules, where
overlapping full-size chips fall on a grid, and which chip owns what.

Conventions: offsets and sizes are integer pixels; rows are ``y``, columns are ``x``;
shapes are always passed as named ``height``/``width`` (never a bare tuple). A grid's
CRS is whatever the raster layer gave (geodetect's raster CRS type, see
:mod:`geodetect.io.crs`); this module only carries it and compares it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine

from geodetect.geometry.boxes import box_centres, points_in_boxes

# Pixels: a transform closer than this to a lattice point is on the lattice.
ALIGN_TOL = 1e-6


@dataclass(frozen=True)
class Grid:
    """``height`` x ``width`` pixels placed on the map by ``transform`` in ``crs``.

    Frozen and cheap: a file, a mosaic of files, a chip and a block are all grids, and a
    window of a grid is a grid (:meth:`window`).
    """

    height: int
    width: int
    transform: Affine = Affine.identity()
    crs: Any = None

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise ValueError(f"a grid cannot have a negative size, got {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def pixel_size(self) -> float:
        """Pixel size in CRS units (the longer side for non-square or rotated pixels)."""
        t = self.transform
        return max(math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` of the grid's corners in CRS units."""
        xs, ys = self.transform @ (
            np.array([0, self.width, 0, self.width], dtype=np.float64),
            np.array([0, 0, self.height, self.height], dtype=np.float64),
        )
        return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))

    def window(self, row_off: int, col_off: int, height: int, width: int) -> Grid:
        """The grid of a window of this one (it may reach outside: a chip over an edge)."""
        return Grid(height, width, self.transform @ Affine.translation(col_off, row_off), self.crs)

    def offset_on(self, lattice: Affine) -> tuple[int, int] | None:
        """``(row_off, col_off)`` of this grid's first pixel on ``lattice``, or None when
        its pixels are not the lattice's (another size or rotation, or a shift of a
        fraction of a pixel). The CRS is not compared: see :meth:`same_crs`."""
        found = lattice_offset(lattice, self.transform)
        return None if found is None else (round(found[0]), round(found[1]))

    def same_crs(self, other: Grid) -> bool:
        return self.crs == other.crs

    def chips(self, chip_size: int, overlap: int, *, flush: bool = True) -> ChipGrid:
        """This grid cut into overlapping full-size chips (see :func:`axis_offsets`)."""
        axis_offsets(max(self.height, 1), chip_size, overlap)  # validates arguments early
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"scene must have a positive size, got {self.height}x{self.width}")
        return ChipGrid(self, chip_size, overlap, flush)


def lattice_offset(lattice: Affine, transform: Affine) -> tuple[float, float] | None:
    """Where ``transform``'s first pixel lies on ``lattice``: ``(row, col)`` in lattice
    pixels when both have the same pixel size and rotation and the offset is whole (within
    :data:`ALIGN_TOL`), else None."""
    if not all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        for x, y in zip(lattice[:2] + lattice[3:5], transform[:2] + transform[3:5], strict=True)
    ):
        return None
    col, row = ~lattice @ (transform.c, transform.f)
    if abs(col - round(col)) < ALIGN_TOL and abs(row - round(row)) < ALIGN_TOL:
        return row, col
    return None


def covering_window(lattice: Affine, xs: np.ndarray, ys: np.ndarray, crs: Any = None) -> Grid:
    """The smallest window of ``lattice`` (rotated or not), in whole pixels, that holds
    the points ``xs, ys`` (map units); at least one pixel each way. Points within 1e-6
    pixel of a pixel edge do not grow the window by a pixel."""
    cols, rows = ~lattice @ (np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
    c0, r0 = math.floor(cols.min() + 1e-6), math.floor(rows.min() + 1e-6)
    c1, r1 = math.ceil(cols.max() - 1e-6), math.ceil(rows.max() - 1e-6)
    return Grid(max(1, r1 - r0), max(1, c1 - c0), lattice @ Affine.translation(c0, r0), crs)


def window_box(
    row_off: float | np.ndarray,
    col_off: float | np.ndarray,
    height: float | np.ndarray,
    width: float | np.ndarray,
) -> tuple:
    """The ``xyxy`` pixel box ``(col_off, row_off, col_off + width, row_off + height)`` of
    a window given as ``(row_off, col_off, height, width)``: a chip, a block, a file in
    its mosaic. Numbers or arrays of them; each coordinate is of the kind given."""
    return col_off, row_off, col_off + width, row_off + height


def offset_range(length: int, size: int) -> tuple[int, int]:
    """The offsets at which a window of ``size`` stays inside an axis of ``length`` (or
    covers it, when the axis is shorter)."""
    return min(0, length - size), max(0, length - size)


def axis_offsets(length: int, chip: int, overlap: int, *, flush: bool = True) -> np.ndarray:
    """Chip start offsets along one axis.

    Chips step by ``chip - overlap``; the last chip is shifted inward so it ends exactly at
    ``length`` and stays full size (``flush``), or keeps its step and reaches past the
    end, where a reader that crops chips to their imagery runs only the part inside (the
    shifted chip would run a whole chip for the few pixels it adds). An axis shorter
    than a chip gets one chip at 0, which the reader pads.

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
    if flush:
        offsets[-1] = length - chip
    return offsets


def data_crop(valid: np.ndarray, step: int) -> tuple[int, int, int, int] | None:
    """The part of a chip worth running the network on: the bounding box of its valid
    pixels, its edges moved outward to multiples of ``step`` from the chip's origin
    (so crops come in few shapes), as ``(row_off, col_off, height, width)`` in chip
    pixels; None when that is the whole chip or nothing is valid.

    ``valid``: bool [height, width] of the chip; ``step`` a multiple of 32 (the
    network's coarsest stride that must divide a crop's sides).
    """
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if not len(rows):
        return None
    height, width = valid.shape
    r0, c0 = (rows[0] // step) * step, (cols[0] // step) * step
    r1 = min(height, -(-(rows[-1] + 1) // step) * step)
    c1 = min(width, -(-(cols[-1] + 1) // step) * step)
    if (r0, c0, r1, c1) == (0, 0, height, width):
        return None
    return int(r0), int(c0), int(r1 - r0), int(c1 - c0)


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
    """Overlapping full-size chips over a grid; each chip is a window of it."""

    grid: Grid
    chip_size: int
    overlap: int
    # The last chip of each axis ends at the grid's edge (shifted inward); False: it
    # keeps its step and reaches past the edge (see axis_offsets).
    flush: bool = True

    @property
    def height(self) -> int:
        return self.grid.height

    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def transform(self) -> Affine:
        return self.grid.transform

    @cached_property
    def row_offsets(self) -> np.ndarray:
        return axis_offsets(self.height, self.chip_size, self.overlap, flush=self.flush)

    @cached_property
    def col_offsets(self) -> np.ndarray:
        return axis_offsets(self.width, self.chip_size, self.overlap, flush=self.flush)

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
        window = self.grid.window(row_off, col_off, self.chip_size, self.chip_size)
        return Chip(
            index=index,
            row_off=row_off,
            col_off=col_off,
            height=window.height,
            width=window.width,
            transform=window.transform,
            core=core,
        )


def chip_grid(
    *,
    height: int,
    width: int,
    chip_size: int,
    overlap: int,
    transform: Affine | None = None,
    flush: bool = True,
) -> ChipGrid:
    """The chip grid of a ``height`` x ``width`` scene (see :meth:`Grid.chips`)."""
    grid = Grid(height, width, transform or Affine.identity())
    return grid.chips(chip_size, overlap, flush=flush)


def owned_mask(boxes: np.ndarray, core: tuple[float, float, float, float]) -> np.ndarray:
    """Which pixel boxes (N×4 xyxy, chip pixels) have their centre in the chip's core
    (half-open, as the cores partition the grid)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    core_box = np.asarray(core, dtype=np.float64)
    return points_in_boxes(box_centres(boxes), core_box, edges="half-open")
