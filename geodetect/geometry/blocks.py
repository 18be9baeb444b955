"""Blocks: rectangles of whole chips, the unit of work, progress, journal and scale-out.

A block is cut from a chip grid's rows and columns of chips, so chip placement and
ownership (:mod:`geodetect.geometry.grid`) are the same whatever the block size: blocks
only group chips, they never move them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geodetect.geometry.grid import Chip, ChipGrid


@dataclass(frozen=True)
class Block:
    """Chips ``rows[0]:rows[1]`` × ``cols[0]:cols[1]`` (chip rows and columns, half-open)
    of grid ``grid``'s chip grid."""

    grid: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def key(self) -> str:
        """A name unique within a run and safe in a file name."""
        return f"{self.grid}-{self.rows[0]}-{self.cols[0]}"

    def chip_indices(self, chips: ChipGrid) -> np.ndarray:
        """Indices in ``chips`` of the block's chips, row by row."""
        rows = np.arange(*self.rows)[:, None]
        cols = np.arange(*self.cols)[None, :]
        return (rows * len(chips.col_offsets) + cols).ravel()

    def chips(self, chips: ChipGrid) -> list[Chip]:
        return [chips[int(i)] for i in self.chip_indices(chips)]

    def window(self, chips: ChipGrid) -> tuple[int, int, int, int]:
        """``(row_off, col_off, height, width)`` in grid pixels covered by the block."""
        r0 = int(chips.row_offsets[self.rows[0]])
        c0 = int(chips.col_offsets[self.cols[0]])
        r1 = int(chips.row_offsets[self.rows[1] - 1]) + chips.chip_size
        c1 = int(chips.col_offsets[self.cols[1] - 1]) + chips.chip_size
        return r0, c0, r1 - r0, c1 - c0


def plan_blocks(chips: ChipGrid, block_chips: int, *, grid: int = 0) -> list[Block]:
    """Blocks of at most ``block_chips`` × ``block_chips`` chips covering the chip grid,
    row-major."""
    if block_chips < 1:
        raise ValueError(f"block size must be at least one chip, got {block_chips}")
    n_rows, n_cols = len(chips.row_offsets), len(chips.col_offsets)
    return [
        Block(grid, (r, min(r + block_chips, n_rows)), (c, min(c + block_chips, n_cols)))
        for r in range(0, n_rows, block_chips)
        for c in range(0, n_cols, block_chips)
    ]
