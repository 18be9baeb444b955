"""The block runner: chips in, owned detections out.

Two halves, so reading can run in other processes than the model:

- :class:`ChipReader` reads chips of the plan's grids (picklable: each process opens its
  own files, a bounded number at a time);
- :class:`Detector` runs the model on a batch and keeps what each chip owns.

:func:`run_block` joins them for one block; the in-process loop (with DataLoader
readers, :mod:`geodetect.detect.local`) and Dask workers
(:mod:`geodetect.detect.cluster`) call the same pieces, so every mode gives the same
detections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from geodetect.detect.merge import TABLE_COLUMNS, concat_tables, empty_table
from geodetect.detect.plan import Plan, RunConfig
from geodetect.detect.tta import predict_with_flips
from geodetect.errors import RasterError
from geodetect.geometry import (
    Block,
    Chip,
    box_centres,
    clip_boxes,
    cut_mask,
    owned_mask,
    window_box,
)
from geodetect.geometry.coverage import CELL, chip_cells, empty_runs, merge_runs, to_runs
from geodetect.geometry.grid import data_crop
from geodetect.io.raster import GridReader, MosaicGrid, default_max_open, grid_band_stats
from geodetect.model import LoadedModel, ModelSpec
from geodetect.model.runtime import Decoding, Runtime

log = logging.getLogger(__name__)


@dataclass
class ChipData:
    """One chip as read: ``data`` [C, H, W] in the files' dtype (uint8 stays uint8 so
    it travels cheaply), None when wholly nodata or skipped; ``error`` says why a
    damaged window was skipped. ``data`` is the whole chip, or only the part of it
    that holds imagery (see :func:`geodetect.geometry.grid.data_crop`), whose offset
    in the chip ``origin`` gives as (row, col)."""

    grid: int
    chip: Chip
    data: np.ndarray | None
    error: str | None = None
    # The cells of the chip's core that held data (runs, see geometry.coverage).
    coverage: np.ndarray = field(default_factory=empty_runs)
    origin: tuple[int, int] = (0, 0)


class ChipReader:
    """Reads the chips of a plan's grids (see :class:`geodetect.io.raster.GridReader`).

    ``crop_step`` > 0 crops each chip to the part that holds imagery, its edges on
    multiples of that many pixels: the network then runs on fewer pixels where a chip
    lies over the edge of the data (a mosaic's outline, scattered tiles). 0: whole chips.
    """

    def __init__(
        self, grids: Sequence[MosaicGrid], *, skip_bad_chips: bool = False, crop_step: int = 0
    ) -> None:
        # The open-file bound is per process: the grids share it.
        share = max(2, default_max_open() // max(1, len(grids)))
        self.readers = [GridReader(g, max_open=share) for g in grids]
        self.skip_bad_chips = skip_bad_chips
        self.crop_step = crop_step

    def read(self, grid: int, chip: Chip) -> ChipData:
        try:
            data, valid = self.readers[grid].read(
                chip.row_off, chip.col_off, chip.height, chip.width
            )
        except RasterError as exc:
            if not self.skip_bad_chips:
                raise
            return ChipData(grid, chip, None, str(exc))
        if not valid.any():
            return ChipData(grid, chip, None)
        if data.dtype not in (np.uint8, np.float32):
            data = data.astype(np.float32)
        coverage = self.coverage(grid, chip, valid)
        crop = data_crop(valid, self.crop_step) if self.crop_step else None
        if crop is None:
            return ChipData(grid, chip, data, coverage=coverage)
        r0, c0, h, w = crop
        part = np.ascontiguousarray(data[:, r0 : r0 + h, c0 : c0 + w])
        return ChipData(grid, chip, part, coverage=coverage, origin=(r0, c0))

    def coverage(self, grid: int, chip: Chip, valid: np.ndarray) -> np.ndarray:
        """The chip's covered cells as runs, each with the file under the cell's centre."""
        grid_ = self.readers[grid].grid
        rows, cols, covered = chip_cells(valid, chip, CELL, grid_.height, grid_.width)
        rows, cols = rows[covered], cols[covered]
        files = grid_.index.first_at((cols + 0.5) * CELL, (rows + 0.5) * CELL)
        return to_runs(rows, cols, np.maximum(files, 0))

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


class Normaliser:
    """``(x - mean) / std`` per band on the model's device (inputs stay raw until here)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std


def band_scaling(grid: MosaicGrid, spec: ModelSpec) -> tuple[list[float], list[float]]:
    """The per-band mean and std the model's inputs are normalised with."""
    if np.dtype(grid.dtype) == np.dtype(spec.input_dtype):
        return list(spec.band_mean), list(spec.band_std)
    # Another radiometry than the training data: match each band's distribution to the
    # training statistics instead of assuming a fixed range.
    scene_mean, scene_std = grid_band_stats(grid)
    log.warning(
        "%s is %s but the model was trained on %s; scaling bands by their own statistics",
        grid.paths[0].name,
        grid.dtype,
        spec.input_dtype,
    )
    return scene_mean.tolist(), scene_std.tolist()


@dataclass
class Detector:
    """The model side of a run: normalise a batch on the device, run it through the
    run's runtime (with test-time views if asked), and keep the detections each chip
    owns."""

    runtime: Runtime
    grids: Sequence[MosaicGrid]
    config: RunConfig
    device: torch.device
    scaling: Sequence[tuple[list[float], list[float]]]
    _normalisers: list[Normaliser] = field(default_factory=list, repr=False)

    @classmethod
    def build(
        cls,
        loaded: LoadedModel,
        grids: Sequence[MosaicGrid],
        config: RunConfig,
        device: torch.device,
        scaling: Sequence[tuple[list[float], list[float]]] | None = None,
    ) -> Detector:
        if scaling is None:
            scaling = [band_scaling(g, loaded.spec) for g in grids]
        runtime = config.runtime.build(loaded, device, config.chip_size)
        return cls(runtime, grids, config, device, scaling)

    def __post_init__(self) -> None:
        self._normalisers = [Normaliser(m, s, self.device) for m, s in self.scaling]
        self._extents = [g.data_extent() for g in self.grids]
        config = self.config
        # With test-time views, keep weaker per-pass boxes: the fused score decides.
        self.decoding = Decoding(
            score_thresh=config.threshold / 2 if config.views else config.threshold,
            nms_iou=config.nms_iou,
            second_box_iou=config.second_box_iou,
            box_vote_iou=self.runtime.spec.box_vote_iou,
        )

    def __call__(self, chips: Sequence[ChipData], batch: torch.Tensor) -> Found:
        """Owned detections of ``chips`` (whose pixels ``batch`` stacks), as a table,
        and how many of the chips the screen skipped.

        A chip keeps the boxes whose centre lies in its core, plus boxes that may belong
        to another chip's core but are too large for the seam strip to guarantee that
        chip saw them whole (larger than the overlap, and not cut by this chip's edge);
        boxes that touch an interior chip edge are marked as pieces, for
        :func:`geodetect.geometry.merge_pieces`.
        """
        found = self.network(chips, batch)
        table = concat_tables(
            self._owned(c, out) for c, out in zip(chips, found.per_chip, strict=True)
        )
        return Found(table, found.screened)

    def network(self, chips: Sequence[ChipData], batch: torch.Tensor) -> Found:
        """The network's detections for each chip, on the host: the batch goes to the
        device as it was read (uint8 stays uint8; pinned for an asynchronous copy), is
        normalised there, screened where the run has a screen (skipped chips get no
        detections), and the detections of the whole batch come back in one copy."""
        dev = self.device
        if dev.type == "cuda" and not batch.is_pinned():
            batch = batch.pin_memory()
        batch = batch.to(dev, non_blocking=True)
        grid_ids = np.array([c.grid for c in chips])
        if len(set(grid_ids.tolist())) == 1:
            normed = self._normalisers[int(grid_ids[0])](batch)
        else:
            normed = torch.empty(batch.shape, dtype=torch.float32, device=dev)
            for gi in np.unique(grid_ids):
                sel = torch.as_tensor(np.flatnonzero(grid_ids == gi), device=dev)
                normed[sel] = self._normalisers[gi](batch[sel])
        n = len(chips)
        screen = self.config.screen
        passed = np.ones(n, dtype=bool)
        if screen is not None:
            with torch.inference_mode():
                shown = screen.passes(self.runtime, self._padded(normed))[:n]
            passed = shown.numpy()
            normed = normed[torch.as_tensor(np.flatnonzero(passed), device=dev)]
        if not len(normed):  # every chip of the batch skipped
            return Found([_nothing() for _ in range(n)], n)
        detect = partial(self.runtime.detect, decoding=self.decoding)
        with torch.inference_mode():
            outputs = (
                predict_with_flips(
                    detect,
                    self._padded(normed),
                    min_score=self.config.threshold,
                    views=self.config.views,
                )
                if self.config.views
                else detect(self._padded(normed))
            )[: len(normed)]
        found = iter(_to_host(outputs))
        per_chip = [next(found) if p else _nothing() for p in passed]
        return Found(per_chip, int(n - passed.sum()))

    def _padded(self, normed: torch.Tensor) -> torch.Tensor:
        """Always the same batch size on a GPU: cuDNN picks its algorithms by shape, so
        a chip's boxes must not depend on how many share its batch."""
        n = len(normed)
        if self.device.type != "cuda" or n >= self.config.batch_size:
            return normed
        pad = normed.new_zeros((self.config.batch_size - n, *normed.shape[1:]))
        return torch.cat([normed, pad])

    def _owned(self, item: ChipData, out: dict) -> dict[str, np.ndarray]:
        boxes = out["boxes"].astype(np.float64)
        if len(boxes) == 0:
            return empty_table()
        row, col = item.origin  # a cropped chip's boxes, in the whole chip's pixels
        boxes += np.array([col, row, col, row], dtype=np.float64)
        chip, grid = item.chip, self.grids[item.grid]
        # Clip to the grid's data extent: a scene smaller than a chip is padded, and a
        # resampled file's data ends inside the whole pixels its window snaps out to.
        x0, y0, x1, y1 = self._extents[item.grid]
        boxes = clip_boxes(
            boxes, (x0 - chip.col_off, y0 - chip.row_off, x1 - chip.col_off, y1 - chip.row_off)
        )
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cut = cut_mask(boxes, chip.core, size=chip.width)
        large = np.maximum(width, height) > self.config.overlap
        keep = (owned_mask(boxes, chip.core) | (large & ~cut)) & (width > 0) & (height > 0)
        n = int(keep.sum())
        if not n:
            return empty_table()
        boxes = boxes[keep] + np.array([chip.col_off, chip.row_off] * 2, dtype=np.float64)
        window = window_box(chip.row_off, chip.col_off, chip.height, chip.width)
        table = {
            "grid": np.full(n, item.grid, dtype=np.int32),
            "chip": np.full(n, chip.index, dtype=np.int64),
            "score": out["scores"][keep].astype(np.float64),
            "label": out["labels"][keep].astype(np.int64),
            "piece": cut[keep],
            "source": source_names(grid, boxes),
        }
        for i, name in enumerate(("x0", "y0", "x1", "y1")):
            table[name] = boxes[:, i]
        for i, name in enumerate(("wx0", "wy0", "wx1", "wy1")):
            table[name] = np.full(n, window[i], dtype=np.float64)
        return {name: table[name] for name in TABLE_COLUMNS}


class Found(NamedTuple):
    """What the model side gives for a batch: per-chip detections (or, from
    :class:`Detector`, the chips' owned detections as one table) and how many of the
    batch's chips the screen skipped."""

    per_chip: Any
    screened: int = 0


def _nothing() -> dict[str, np.ndarray]:
    """A chip's detections where there are none."""
    return {
        "boxes": np.zeros((0, 4), dtype=np.float32),
        "scores": np.zeros(0, dtype=np.float32),
        "labels": np.zeros(0, dtype=np.int64),
    }


def _to_host(outputs: list[dict]) -> list[dict[str, np.ndarray]]:
    """Per-chip detections as numpy arrays, copied from the device in one go (labels
    travel as float32, exact below 2**24)."""
    if not outputs:
        return []
    packed = torch.cat(
        [
            torch.cat([o["boxes"].float(), o["scores"].float()[:, None], o["labels"][:, None]], 1)
            for o in outputs
        ]
    )
    rows = np.split(packed.cpu().numpy(), np.cumsum([len(o["boxes"]) for o in outputs])[:-1])
    return [
        {"boxes": r[:, :4], "scores": r[:, 4], "labels": r[:, 5].astype(np.int64)} for r in rows
    ]


def source_names(grid: MosaicGrid, boxes: np.ndarray) -> np.ndarray:
    """Name of the file under each box centre (grid pixels); in a gap, the first file
    the box touches, else the grid's first."""
    cx, cy = box_centres(boxes).T
    hit = grid.index.first_at(cx, cy)
    for i in np.flatnonzero(hit < 0):
        x0, y0, x1, y1 = boxes[i]
        touching = grid.index.query(y0, x0, max(y1 - y0, 1e-9), max(x1 - x0, 1e-9))
        hit[i] = touching[0] if len(touching) else 0
    return grid.index.names[hit]


@dataclass
class BlockResult:
    """What running one block gave: its owned detections and what was read."""

    key: str
    table: dict[str, np.ndarray]
    chips: int  # chips of the block (read, empty or skipped)
    chips_read: int = 0
    chips_empty: int = 0
    pixels_run: int = 0  # pixels through the network (crops count their own)
    chips_screened: int = 0  # read, and skipped by the screen
    skipped: list[str] = field(default_factory=list)
    coverage: np.ndarray = field(default_factory=empty_runs)  # runs of covered cells


def stack(chips: Sequence[ChipData]) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.data for c in chips]))


def batches(plan: Plan, block: Block, size: int) -> list[list[Chip]]:
    """The block's chips (those over a file) cut into batches of ``size``, in order."""
    chips = plan.chips(block)
    return [chips[start : start + size] for start in range(0, len(chips), size)]


class BlockAssembly:
    """One block put together from its batches, in whatever order they arrive: the
    one batch loop of every executor (in this process, with reader processes, on Dask).
    """

    def __init__(self, key: str, chips: int, batches: int) -> None:
        self.result = BlockResult(key, empty_table(), chips)
        self.expected = batches
        self.received = 0
        self.tables: list[dict[str, np.ndarray]] = []
        self.coverage: list[np.ndarray] = []

    def add(
        self,
        items: Sequence[ChipData],
        detect: Callable[[Sequence[ChipData], torch.Tensor], Found],
        *,
        pin: bool = False,
    ) -> None:
        """Count one batch of read chips and detect over those with data (``detect``: a
        :class:`Detector`, or anything called like one)."""
        self.received += 1
        tally(self.result, items)
        self.coverage.extend(c.coverage for c in items)
        full = [c for c in items if c.data is not None]
        # Cropped chips come in a few shapes: one network call per shape.
        for shape in dict.fromkeys(c.data.shape for c in full):
            same = [c for c in full if c.data.shape == shape]
            batch = stack(same)
            found = detect(same, batch.pin_memory() if pin else batch)
            self.tables.append(found.per_chip)
            self.result.chips_screened += found.screened
            # Pixels through the network's full pass: skipped chips had only the screen's.
            self.result.pixels_run -= found.screened * shape[-2] * shape[-1]

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    def finish(self) -> BlockResult:
        self.result.table = concat_tables(self.tables)
        self.result.coverage = merge_runs(self.coverage)
        return self.result


def run_block(
    plan: Plan,
    block: Block,
    reader: ChipReader,
    detect: Callable[[Sequence[ChipData], torch.Tensor], Found],
    batch_size: int,
) -> BlockResult:
    """Read and detect one block in this process, batch by batch."""
    parts = batches(plan, block, batch_size)
    assembly = BlockAssembly(block.key, sum(len(p) for p in parts), len(parts))
    for part in parts:
        assembly.add([reader.read(block.grid, chip) for chip in part], detect)
    return assembly.finish()


def tally(result: BlockResult, items: Sequence[ChipData]) -> None:
    """Count a batch's chips into ``result`` and log the skipped windows."""
    for item in items:
        if item.data is not None:
            result.chips_read += 1
            result.pixels_run += item.data.shape[-2] * item.data.shape[-1]
        elif item.error is not None:
            result.skipped.append(item.error)
            log.warning("skipped: %s", item.error)
        else:
            result.chips_empty += 1
