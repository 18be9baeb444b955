"""Coverage: which ground a run actually looked at, as whole cells of a grid.

A grid's pixels are grouped into square *cells* of ``cell`` pixels (cell ``(i, j)``
holds pixel rows ``i*cell .. (i+1)*cell`` and columns ``j*cell .. (j+1)*cell``). A chip
that was read with data speaks for the cells whose centre lies in its core (the cores
partition the grid, so each cell is decided once, whatever the overlap or the blocks); a
cell is covered when at least half of its pixels that the chip holds were valid (not
nodata, not masked, inside a file). Chips that were skipped as damaged, or were wholly
nodata, cover nothing.

Covered cells travel as *runs*: rows of ``(cell_row, first_col, end_col, file)``
(``end_col`` exclusive; ``file`` the index of the grid's file under the cell's centre),
small integers that a journal stores as they are. :func:`runs_to_polygons` turns them
into polygons in grid pixels.
"""

from __future__ import annotations

import numpy as np
import shapely

from geodetect.geometry.grid import Chip

# Cell size in pixels: 8 pixels are 2.4 m at 30 cm, far below a parcel, and a county
# mosaic's coverage stays a few thousand runs per block.
CELL = 8


def empty_runs() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.int64)


def chip_cells(
    valid: np.ndarray, chip: Chip, cell: int, grid_height: int, grid_width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells ``chip`` speaks for and whether each is covered.

    Args:
        valid: bool [chip.height, chip.width], True where a pixel held data.
        chip: the chip (its offset and core, in grid pixels).
        cell: cell size in pixels.
        grid_height, grid_width: the grid's size (a chip may reach beyond it, padded).

    Returns:
        ``(rows, cols, covered)``: 1-D cell indices on the grid's cell lattice (every cell
        whose centre is in the chip's core and inside the chip; at the grid's far edges,
        the last cells however little of them the grid holds), and a bool per cell: at
        least half of the cell's pixels in the chip and the grid were valid.
    """
    rows = _axis_cells(chip.row_off, chip.height, chip.core[1], chip.core[3], cell, grid_height)
    cols = _axis_cells(chip.col_off, chip.width, chip.core[0], chip.core[2], cell, grid_width)
    if not len(rows) or not len(cols):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    row_spans = _cell_bounds(rows, chip.row_off, min(chip.height, grid_height - chip.row_off), cell)
    col_spans = _cell_bounds(cols, chip.col_off, min(chip.width, grid_width - chip.col_off), cell)
    pixels = np.outer(row_spans[:, 1] - row_spans[:, 0], col_spans[:, 1] - col_spans[:, 0])
    if valid.all():  # most chips: every cell wholly valid, nothing to count
        covered = pixels > 0
    else:
        frac = _cell_sums(_cell_sums(valid, row_spans, axis=0), col_spans, axis=1)
        covered = (frac >= 0.5 * pixels) & (pixels > 0)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return rr.ravel(), cc.ravel(), covered.ravel()


def _axis_cells(
    offset: int, size: int, core0: float, core1: float, cell: int, length: int
) -> np.ndarray:
    """Cells (grid cell indices) along one axis whose centre lies in the chip's core and
    inside the chip; the chip whose core reaches the axis's end also takes the cells
    that start inside the axis but whose centre lies beyond it."""
    lo = max(core0 + offset, offset)
    hi = min(core1 + offset, offset + size)
    # centre (i + 0.5) * cell in [lo, hi)
    first = int(np.ceil(lo / cell - 0.5))
    last = int(np.ceil(hi / cell - 0.5))  # exclusive
    if core1 + offset >= length:
        last = max(last, -(-length // cell))
    return np.arange(first, max(first, last), dtype=np.int64)


def _cell_bounds(cells: np.ndarray, offset: int, size: int, cell: int) -> np.ndarray:
    """Each cell's pixel span inside the first ``size`` pixels of the chip, in chip
    pixels: [n, 2]."""
    start = np.clip(cells * cell - offset, 0, size)
    end = np.clip((cells + 1) * cell - offset, 0, size)
    return np.stack([start, end], axis=1)


def _cell_sums(values: np.ndarray, bounds: np.ndarray, *, axis: int) -> np.ndarray:
    """Sums of ``values`` over each span ``bounds`` along ``axis``."""
    cumulative = np.cumsum(values, axis=axis, dtype=np.int32)
    pad = [(0, 0), (0, 0)]
    pad[axis] = (1, 0)
    cumulative = np.pad(cumulative, pad)
    return np.take(cumulative, bounds[:, 1], axis=axis) - np.take(
        cumulative, bounds[:, 0], axis=axis
    )


def to_runs(rows: np.ndarray, cols: np.ndarray, files: np.ndarray) -> np.ndarray:
    """Covered cells as runs ``(row, col0, col1, file)``: consecutive cells of one row and
    one file joined, sorted by file, row and column."""
    if not len(rows):
        return empty_runs()
    order = np.lexsort((cols, rows, files))
    rows, cols, files = rows[order], cols[order], files[order]
    starts = np.ones(len(rows), dtype=bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (files[1:] != files[:-1]) | (cols[1:] != cols[:-1] + 1)
    index = np.flatnonzero(starts)
    ends = np.append(index[1:], len(rows)) - 1
    return np.stack([rows[index], cols[index], cols[ends] + 1, files[index]], axis=1).astype(
        np.int64
    )


def merge_runs(parts: list[np.ndarray]) -> np.ndarray:
    """Runs of several chips (or blocks) as one set of runs, touching runs joined."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_runs()
    runs = np.concatenate(parts)
    lengths = runs[:, 2] - runs[:, 1]
    rows = np.repeat(runs[:, 0], lengths)
    files = np.repeat(runs[:, 3], lengths)
    starts = np.repeat(runs[:, 1] - np.cumsum(lengths) + lengths, lengths)
    cols = np.arange(int(lengths.sum())) + starts
    return to_runs(rows, cols, files)


def runs_to_polygons(runs: np.ndarray, cell: int) -> dict[int, shapely.Geometry]:
    """The runs of each file as one (multi)polygon in grid pixels (x = column)."""
    out = {}
    for file in np.unique(runs[:, 3]) if len(runs) else ():
        sel = runs[runs[:, 3] == file]
        boxes = shapely.box(
            sel[:, 1] * cell, sel[:, 0] * cell, sel[:, 2] * cell, (sel[:, 0] + 1) * cell
        )
        out[int(file)] = shapely.coverage_union_all(boxes)
    return out
