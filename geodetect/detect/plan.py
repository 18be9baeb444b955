"""What a detection run is (:class:`RunConfig`) and where it reads (:class:`Plan`).

A run configuration is one frozen value: chip size, overlap, thresholds, test-time views,
batch and block size. A plan is the target grids, their chip grids and the blocks that
hold at least one chip over a file. Neither holds a chip list: a county's plan is a few
thousand blocks, and each block lists its chips when it is run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from geodetect.detect.options import DEFAULT_BLOCK_CHIPS
from geodetect.detect.screen import Screen
from geodetect.detect.tta import View
from geodetect.errors import InputError, RasterError
from geodetect.geometry import (
    Block,
    Chip,
    ChipGrid,
    boxes_overlap,
    chip_grid,
    plan_blocks,
    window_box,
)
from geodetect.io.raster import MosaicGrid
from geodetect.model import ModelSpec
from geodetect.model.runtime import RuntimeChoice


def default_chip_size(spec: ModelSpec) -> int:
    """Detection chips: the model's training chip, but at least 512 px, since the
    network is convolutional and small chips spend most of their time on overlaps."""
    return max(spec.chip_size, 512)


def default_overlap(spec: ModelSpec, chip_size: int) -> int:
    """Enough overlap that the model's typical object (the 95th percentile of its
    training objects' sizes; the largest in older model files) fits in the seam strip:
    then chip ownership alone yields each object once, whole. Larger objects are put
    together from their pieces (see :func:`geodetect.geometry.merge_pieces`). Capped at
    half a chip."""
    typical = spec.typical_object_px or spec.max_object_px or chip_size / 4
    overlap = int(np.ceil(typical * 1.2 / 8.0) * 8)
    return int(min(max(overlap, 32), chip_size // 2))


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run detects (and so what its journal may hold).

    ``batch_size``, ``runtime`` and the reader count only decide how fast: they are not
    part of :meth:`identity` (the journal's manifest records the compute separately, as
    it rounds boxes differently).
    """

    chip_size: int
    overlap: int
    threshold: float
    nms_iou: float = 0.5
    second_box_iou: float | None = None
    merge_metric: str = "iou"
    views: tuple[View, ...] = ()
    block_chips: int = DEFAULT_BLOCK_CHIPS
    precision: str = "auto"
    skip_bad_chips: bool = False
    # Chips over the edge of the data are cropped to the part holding imagery, their
    # sides on multiples of this (see geometry.grid.data_crop); 0: whole chips.
    crop_step: int = 0
    # Chips whose shrunk view holds no candidate are skipped (detect.screen); None: off.
    screen: Screen | None = None
    batch_size: int = field(default=8, compare=False)
    # What runs the network (torch, ONNX Runtime fp32 or int8): settled in preparing.
    runtime: RuntimeChoice = field(default=RuntimeChoice(), compare=False)

    def __post_init__(self) -> None:
        if self.chip_size <= 0 or self.chip_size % 32:
            raise RasterError(f"--chip-size {self.chip_size}: must be a multiple of 32")
        if not 0 <= self.overlap < self.chip_size:
            raise RasterError(
                f"--overlap {self.overlap}: must be between 0 and chip size {self.chip_size}"
            )
        if self.block_chips < 1:
            raise InputError(f"--block-size {self.block_chips}: at least 1 chip")
        if self.crop_step < 0 or self.crop_step % 32:
            raise InputError(f"crop step {self.crop_step}: a multiple of 32 (0: no crops)")

    def identity(self) -> dict:
        """The options a resumed run must share with the run that started the journal."""
        out = asdict(self)
        out.pop("batch_size")
        out.pop("runtime")
        out["views"] = [[t, list(d)] for t, d in self.views]
        return out


@dataclass(frozen=True)
class Plan:
    """The target grids of a run, their chip grids, and the blocks worth running."""

    grids: tuple[MosaicGrid, ...]
    chip_grids: tuple[ChipGrid, ...]
    blocks: tuple[Block, ...]
    chip_counts: tuple[int, ...]  # chips over a file in each block

    @property
    def chips_total(self) -> int:
        return sum(self.chip_counts)

    def chips(self, block: Block) -> list[Chip]:
        """The block's chips that touch at least one file (gaps are never read)."""
        chips = self.chip_grids[block.grid]
        index = block.chip_indices(chips)
        return [chips[int(i)] for i in index[_touching(self.grids[block.grid], chips, block)]]


def make_plan(grids: Sequence[MosaicGrid], config: RunConfig) -> Plan:
    """Cut each grid into chips and blocks; keep the blocks with a chip over a file."""
    chip_grids, blocks, counts = [], [], []
    for gi, grid in enumerate(grids):
        chips = chip_grid(
            height=grid.height,
            width=grid.width,
            chip_size=config.chip_size,
            overlap=config.overlap,
            transform=grid.transform,
            # Cropping chips to their imagery: the last chip of an axis need not be
            # shifted inward to stay whole.
            flush=not config.crop_step,
        )
        chip_grids.append(chips)
        for block in plan_blocks(chips, config.block_chips, grid=gi):
            n = int(_touching(grid, chips, block).sum())
            if n:
                blocks.append(block)
                counts.append(n)
    return Plan(tuple(grids), tuple(chip_grids), tuple(blocks), tuple(counts))


def _touching(grid: MosaicGrid, chips: ChipGrid, block: Block) -> np.ndarray:
    """Which of the block's chips (row-major) overlap a file: the file index answers
    for the block, numpy for its chips."""
    members = grid.index.query(*block.window(chips))
    rows = chips.row_offsets[block.rows[0] : block.rows[1]].astype(np.float64)
    cols = chips.col_offsets[block.cols[0] : block.cols[1]].astype(np.float64)
    if not len(members):
        return np.zeros(len(rows) * len(cols), dtype=bool)
    size = chips.chip_size
    chip_boxes = np.stack(
        window_box(np.repeat(rows, len(cols)), np.tile(cols, len(rows)), size, size), axis=-1
    )
    return boxes_overlap(chip_boxes[:, None], grid.index.boxes[members][None]).any(axis=1)
