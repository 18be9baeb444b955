"""Training chips: labelled grids, split into training and validation *areas*, sampled as
chips around objects (plus object-free negatives), normalised and augmented.

Sampling rules (one place for them, used by both parts):

- Every labelled object anchors one positive item per epoch. Its chip is placed at a
  random offset that holds the whole object, so objects appear at varied positions;
  every other object in the chip is part of the target too. An object too large for a
  chip is read in a window 1.25 times its size, shrunk to the chip (``window_for``).
- An object cut by the chip edge stays a target, clipped to the chip, when at least
  ``min_visible`` of its area is inside (and inside the raster); otherwise it is simply
  dropped from the targets (RetinaNet has no "ignore" label; detection sees typical
  objects whole in some chip and joins larger ones from their pieces).
- Negative items (no object inside) come at ``negative_ratio`` per positive; chips
  with less than ``min_valid`` of real data are redrawn.
- Validation is *by area*: each grid is cut into square blocks, some of which are
  validation blocks; a chip belongs to a part only if every block it touches does, so
  no validation chip overlaps a training chip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou

from geodetect.county.review import ReviewLabels, review_labels
from geodetect.errors import LabelError, RasterError
from geodetect.geometry.boxes import (
    box_area,
    box_centres,
    box_has_area,
    boxes_overlap,
    clip_boxes,
    either_centre_inside,
    intersecting_pairs,
)
from geodetect.geometry.grid import offset_range, window_box
from geodetect.geometry.merge import overlap_ratio
from geodetect.io.labels import (
    GridLabels,
    LabelSource,
    boxes_on_grid,
    chip_class_names,
    chips_on_grids,
    class_names,
    labels_on_grids,
    largest_side,
    map_to_pixel_boxes,
    read_coco,
    read_labels,
    read_voc_folder,
    read_yolo,
)
from geodetect.io.raster import (
    GridReader,
    MosaicGrid,
    grid_gsd_metres,
    open_mosaics,
    open_raster,
    resample_to_gsd,
)
from geodetect.train.augment import NO_AUGMENTATION, Augmentation, resize

log = logging.getLogger(__name__)

TRAIN, VAL, EXCLUDED = 0, 1, 2
# ChipItem.anchor of a random negative, of a mined hard example and of a reviewer's
# rejection (``GridLabels.rejected[ChipItem.box]``).
NEGATIVE, HARD, REJECTED = -1, -2, -3
# Percentile of object sizes that sets chip sizes and overlaps (see typical_object_px).
TYPICAL_PERCENTILE = 95
# Training rasters whose pixels differ from the training GSD by more than this share
# are resampled to it.
GSD_TOLERANCE = 0.02
# Objects large in pixels train at a coarser GSD, chosen so the typical object (95th
# percentile) is about TARGET_OBJECT_PX, once that coarsens by COARSEN_FROM or more; the
# small ones (SMALL_PERCENTILE) keep at least MIN_SMALL_PX (a 12 px object still meets
# RetinaNet's smallest anchor, 16 px, at IoU 0.56), and at most MAX_COARSEN times
# coarser (see object_scaled_gsd).
TARGET_OBJECT_PX = 80.0
COARSEN_FROM = 1.25
SMALL_PERCENTILE = 5
MIN_SMALL_PX = 12.0
MAX_COARSEN = 4.0
_BLOCKS_PER_GRID = 16  # aim: a 4 x 4 checkerboard of candidate validation blocks
_PLACE_TRIES = 50
# An object whose longest side exceeds a chip divided by this is read in a larger window,
# shrunk to the chip: it is learnt whole, at a smaller scale, instead of cut.
_FIT = 1.25


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


# --- placing windows -----------------------------------------------------------------


def _place_object(
    rng: np.random.Generator,
    box: np.ndarray,
    grid: MosaicGrid,
    split: SplitMap,
    part: int,
    size: int,
) -> tuple[int, int] | None:
    """A random window (row_off, col_off) that holds ``box`` whole and lies in ``part``."""
    lo_c, hi_c = offset_range(grid.width, size)
    lo_r, hi_r = offset_range(grid.height, size)
    x1, y1, x2, y2 = box
    c_lo, c_hi = max(lo_c, math.ceil(x2) - size), min(hi_c, math.floor(x1))
    r_lo, r_hi = max(lo_r, math.ceil(y2) - size), min(hi_r, math.floor(y1))
    if c_lo > c_hi or r_lo > r_hi:  # larger than a chip, or off the grid: centre it
        col = int(np.clip(round((x1 + x2 - size) / 2), lo_c, hi_c))
        row = int(np.clip(round((y1 + y2 - size) / 2), lo_r, hi_r))
        return (row, col) if split.part_of(row, col, size) == part else None
    for _ in range(_PLACE_TRIES):
        row = int(rng.integers(r_lo, r_hi + 1))
        col = int(rng.integers(c_lo, c_hi + 1))
        if split.part_of(row, col, size) == part:
            return row, col
    return None


def window_for(box: np.ndarray, size: int) -> int:
    """Window edge for a chip of ``size`` pixels meant to hold ``box`` whole: ``size``,
    or ``_FIT`` times the object's longest side when that is larger (the window is then
    shrunk to ``size`` on reading)."""
    side = max(float(box[2] - box[0]), float(box[3] - box[1]))
    return max(size, math.ceil(_FIT * side))


def _place_negative(
    rng: np.random.Generator, gl: GridLabels, split: SplitMap, part: int, size: int
) -> tuple[int, int] | None:
    """A random window in ``part`` that no labelled object touches; on a grid known only
    in places (``gl.known``), one centred in a known box (drawn by area)."""
    lo_c, hi_c = offset_range(gl.grid.width, size)
    lo_r, hi_r = offset_range(gl.grid.height, size)
    weights = None
    if gl.known is not None:
        if not len(gl.known):
            return None
        weights = box_area(gl.known)
        weights = weights / weights.sum()
    for _ in range(_PLACE_TRIES):
        if weights is None:
            row = int(rng.integers(lo_r, hi_r + 1))
            col = int(rng.integers(lo_c, hi_c + 1))
        else:
            x1, y1, x2, y2 = gl.known[rng.choice(len(weights), p=weights)]
            col = int(np.clip(round(rng.uniform(x1, x2) - size / 2), lo_c, hi_c))
            row = int(np.clip(round(rng.uniform(y1, y2) - size / 2), lo_r, hi_r))
        if split.part_of(row, col, size) != part:
            continue
        if not boxes_overlap(gl.boxes, window_box(row, col, size, size)).any():
            return row, col
    return None


def chip_targets(
    gl: GridLabels, row_off: int, col_off: int, size: int, *, min_visible: float
) -> tuple[np.ndarray, np.ndarray]:
    """Targets of one window: boxes (float64 [K, 4], chip pixel-edge ``xyxy``, clipped to
    the chip and the raster) and class indices (int64 [K]) of the objects whose visible
    part is at least ``min_visible`` of their area."""
    boxes = gl.boxes - np.array([col_off, row_off, col_off, row_off], dtype=np.float64)
    full = box_area(boxes)
    x_hi = min(size, gl.grid.width - col_off)
    y_hi = min(size, gl.grid.height - row_off)
    x_lo, y_lo = max(0, -col_off), max(0, -row_off)
    clipped = clip_boxes(boxes, (x_lo, y_lo, x_hi, y_hi))
    keep = box_has_area(clipped) & (box_area(clipped) >= min_visible * np.maximum(full, 1e-12))
    return clipped[keep], gl.classes[keep]


@dataclass(frozen=True)
class ChipItem:
    """One item of a chip set: its grid, its anchor object (``NEGATIVE``: a random
    object-free window; ``HARD``: a mined window around a false alarm, always read where
    it was found) and a window found at planning time (used as is for validation and
    hard examples, as a fallback in training). ``REJECTED`` items place a reviewer's
    rejection (``box``: its index in ``GridLabels.rejected``) as positives place their
    object."""

    grid_index: int
    anchor: int
    row_off: int
    col_off: int
    size: int
    box: int = -1


class ChipSet(Dataset):
    """Positive and negative chips of one part (training or validation) of labelled grids.

    Item: ``(image, target)`` with ``image`` FloatTensor[C, S, S] normalised as
    ``(raw - band_mean) / band_std`` (raw nodata pixels are 0, exactly as detection
    reads them) and ``target`` a dict of ``boxes`` FloatTensor[K, 4] (``xyxy`` chip
    pixel-edge, 0 <= x1 < x2 <= S) and ``labels`` Int64Tensor[K].

    Training sets (``fixed=False``) draw new windows, scales and augmentations each
    epoch (see :meth:`set_epoch`) from a generator seeded by (seed, epoch, index), so a
    run is reproducible whatever the number of loader workers. Fixed sets read the
    planned windows, unaugmented, and cache them.
    """

    def __init__(
        self,
        labelled: Sequence[GridLabels],
        splits: Sequence[SplitMap],
        part: int,
        *,
        chip_size: int,
        negative_ratio: float = 1 / 3,
        min_visible: float = 0.5,
        min_valid: float = 0.1,
        augmentation: Augmentation = NO_AUGMENTATION,
        fixed: bool = False,
        seed: int = 0,
        max_items: int | None = None,
        items: Sequence[ChipItem] | None = None,
        cache: bool = True,
    ) -> None:
        self.labelled = list(labelled)
        self.splits = list(splits)
        self.part = part
        self.chip_size = chip_size
        self.min_visible = min_visible
        self.min_valid = min_valid
        self.augmentation = NO_AUGMENTATION if fixed else augmentation
        self.fixed = fixed
        self.seed = seed
        self.epoch = 0
        self.band_mean = np.zeros(self.labelled[0].grid.count, dtype=np.float32)
        self.band_std = np.ones(self.labelled[0].grid.count, dtype=np.float32)
        self.readers = [GridReader(gl.grid) for gl in self.labelled]
        self._cache: dict[int, tuple[Tensor, dict[str, Tensor]]] = {}
        self.cache = cache
        self.items = list(items) if items is not None else self._plan(negative_ratio, max_items)
        self.hard: list[ChipItem] = []

    def _plan(self, negative_ratio: float, max_items: int | None) -> list[ChipItem]:
        rng = np.random.default_rng([self.seed, self.part, 11])
        positives = []
        for gi, (gl, split) in enumerate(zip(self.labelled, self.splits, strict=True)):
            for oi in range(len(gl)):
                size = window_for(gl.boxes[oi], self.chip_size)
                place = _place_object(rng, gl.boxes[oi], gl.grid, split, self.part, size)
                if place is not None:
                    positives.append(ChipItem(gi, oi, *place, size))
        rejected = []
        for gi, (gl, split) in enumerate(zip(self.labelled, self.splits, strict=True)):
            for ri, box in enumerate(gl.rejected):
                size = window_for(box, self.chip_size)
                place = _place_object(rng, box, gl.grid, split, self.part, size)
                if place is not None:
                    rejected.append(ChipItem(gi, REJECTED, *place, size, box=ri))
        areas = np.array(
            [
                s.area(self.part, gl.grid.height, gl.grid.width)
                if gl.known is None
                else _known_area(gl, s, self.part)
                for gl, s in zip(self.labelled, self.splits, strict=True)
            ]
        )
        negatives = []
        if areas.sum() > 0:
            for _ in range(round(len(positives) * negative_ratio)):
                gi = int(rng.choice(len(areas), p=areas / areas.sum()))
                place = _place_negative(
                    rng, self.labelled[gi], self.splits[gi], self.part, self.chip_size
                )
                if place is not None:
                    negatives.append(ChipItem(gi, NEGATIVE, *place, self.chip_size))
        items = positives + rejected + negatives
        if max_items is not None and len(items) > max_items:
            keep = np.sort(rng.choice(len(items), size=max_items, replace=False))
            items = [items[i] for i in keep]
        return items

    @property
    def num_positive(self) -> int:
        return sum(1 for item in self.items if item.anchor >= 0)

    def __len__(self) -> int:
        return len(self.items) + len(self.hard)

    def set_hard_examples(self, items: Sequence[ChipItem]) -> None:
        """Windows around false alarms of the model so far (see ``mine_hard_examples``),
        trained on every epoch from now on besides the planned items (replacing earlier
        ones)."""
        self.hard = list(items)

    def item(self, index: int) -> ChipItem:
        return self.items[index] if index < len(self.items) else self.hard[index - len(self.items)]

    def set_epoch(self, epoch: int) -> None:
        """Draw other windows and augmentations from now on (training sets only)."""
        self.epoch = epoch

    def set_normalisation(self, band_mean: Sequence[float], band_std: Sequence[float]) -> None:
        self.band_mean = np.asarray(band_mean, dtype=np.float32)
        self.band_std = np.asarray(band_std, dtype=np.float32)
        self._cache.clear()

    def window(
        self, index: int, rng: np.random.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """(grid index, row_off, col_off, window size) of item ``index``; a new random
        window when ``rng`` is given, else the planned one."""
        item = self.item(index)
        if rng is None or item.anchor == HARD:
            return item.grid_index, item.row_off, item.col_off, item.size
        scale = self.augmentation.scale
        size = self.chip_size
        if scale:
            size = round(self.chip_size / rng.uniform(1 - scale, 1 + scale))
        gl, split = self.labelled[item.grid_index], self.splits[item.grid_index]
        if item.anchor >= 0 or item.anchor == REJECTED:
            box = gl.boxes[item.anchor] if item.anchor >= 0 else gl.rejected[item.box]
            size = window_for(box, size)
            place = _place_object(rng, box, gl.grid, split, self.part, size)
        else:
            place = _place_negative(rng, gl, split, self.part, size)
        if place is None:
            return item.grid_index, item.row_off, item.col_off, item.size
        return item.grid_index, place[0], place[1], size

    def read_raw(
        self, grid_index: int, row_off: int, col_off: int, size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw data [C, size, size] and validity [size, size] of a window."""
        return self.readers[grid_index].read(row_off, col_off, size, size)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self.fixed:
            if not self.cache:
                return self._load(index, None)
            if index not in self._cache:
                self._cache[index] = self._load(index, None)
            return self._cache[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 3])
        return self._load(index, rng)

    def _load(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        negative = self.item(index).anchor == NEGATIVE
        for attempt in range(5):
            gi, row, col, size = self.window(index, rng)
            data, valid = self.read_raw(gi, row, col, size)
            if not negative or rng is None or valid.mean() >= self.min_valid or attempt == 4:
                break
        gl = self.labelled[gi]
        boxes, labels = chip_targets(gl, row, col, size, min_visible=self.min_visible)
        image = torch.from_numpy(
            (data.astype(np.float32) - self.band_mean[:, None, None]) / self.band_std[:, None, None]
        )
        box_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        n_boxes = len(box_t)
        if gl.known is not None:  # moved with the objects, split off after
            known = torch.as_tensor(known_in_window(gl, row, col, size), dtype=torch.float32)
            box_t = torch.cat([box_t, known.reshape(-1, 4)])
        image, box_t = resize(image, box_t, self.chip_size)
        if rng is not None:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            image, box_t = self.augmentation(image, box_t, generator)
        box_t, known_t = box_t[:n_boxes], box_t[n_boxes:]
        labels_t = torch.as_tensor(labels, dtype=torch.int64)
        big_enough = ((box_t[:, 2] - box_t[:, 0]) >= 1) & ((box_t[:, 3] - box_t[:, 1]) >= 1)
        target = {"boxes": box_t[big_enough], "labels": labels_t[big_enough]}
        if gl.known is not None:
            target["known"] = known_t
        return image, target


def known_in_window(gl: GridLabels, row_off: int, col_off: int, size: int) -> np.ndarray:
    """The grid's known boxes that reach into a window, in its pixels, clipped to it
    (float64 [K, 4]); the whole window when the grid is all known."""
    if gl.known is None:
        return np.array([[0.0, 0.0, size, size]])
    offset = np.array([col_off, row_off, col_off, row_off], dtype=np.float64)
    boxes = clip_boxes(gl.known - offset, (0, 0, size, size))
    return boxes[box_has_area(boxes)].reshape(-1, 4)


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


def area_windows(
    labelled: Sequence[GridLabels],
    splits: Sequence[SplitMap],
    part: int,
    size: int,
    *,
    max_windows: int | None = None,
    seed: int = 0,
) -> list[ChipItem]:
    """Non-overlapping ``size``-pixel windows that tile a part's area (each wholly inside
    the part and its grid), objects or not: a sample of the scene as detection sees it,
    background included (at most ``max_windows``, spread at random). On grids known
    only in places, windows that reach no known box are left out."""
    items = []
    for gi, (gl, split) in enumerate(zip(labelled, splits, strict=True)):
        for row in range(0, gl.grid.height - size + 1, size):
            for col in range(0, gl.grid.width - size + 1, size):
                if split.part_of(row, col, size) != part:
                    continue
                if gl.known is not None and not len(known_in_window(gl, row, col, size)):
                    continue
                items.append(ChipItem(gi, NEGATIVE, row, col, size))
    if max_windows is not None and len(items) > max_windows:
        rng = np.random.default_rng([seed, 5])
        keep = np.sort(rng.choice(len(items), size=max_windows, replace=False))
        items = [items[i] for i in keep]
    return items


def collate_chips(
    items: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack images to [N, C, S, S]; targets stay a list of dicts."""
    images, targets = zip(*items, strict=True)
    return torch.stack(images), list(targets)


def chip_loader(
    chips: ChipSet, *, batch_size: int, shuffle: bool, workers: int, seed: int
) -> DataLoader:
    """A DataLoader over ``chips`` (seeded shuffling) that batches them with
    :func:`collate_chips`."""
    # Workers are not persistent: each epoch's workers get the chip set as it is then,
    # with its current epoch (a persistent worker's copy would replay epoch 1's windows).
    return DataLoader(
        chips,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_chips,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


def band_statistics(chips: ChipSet, *, max_chips: int = 64) -> tuple[list[float], list[float]]:
    """Per-band mean and std (raw units) of the valid pixels of up to ``max_chips``
    planned chips, spread evenly over the set.

    Raises:
        RasterError: the sampled chips hold no valid pixel.
    """
    count = chips.labelled[0].grid.count
    sums, squares, n = np.zeros(count), np.zeros(count), 0
    picks = np.unique(np.linspace(0, len(chips) - 1, min(max_chips, len(chips))).astype(int))
    for index in picks:
        gi, row, col, size = chips.window(int(index))
        data, valid = chips.read_raw(gi, row, col, size)
        pixels = data[:, valid].astype(np.float64)
        sums += pixels.sum(axis=1)
        squares += (pixels**2).sum(axis=1)
        n += pixels.shape[1]
    if n == 0:
        raise RasterError(
            f"{chips.labelled[0].grid.paths[0]}: the training chips hold no "
            "valid pixels (all nodata); check the raster's nodata setting"
        )
    mean = sums / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    return mean.tolist(), np.where(std > 1e-6, std, 1.0).tolist()


# --- from files to a training set ----------------------------------------------------


@dataclass
class LabelledData:
    """Labelled grids ready for sampling, and what they say about the imagery.

    Attributes:
        grids: one :class:`GridLabels` per mosaic grid (or chip image).
        classes: sorted class names; label indices point into this list.
        ordered: True for chip folders (split by file order, see :func:`plan_split`).
        source: short description for logs and the model's training record.
    """

    grids: list[GridLabels]
    classes: list[str]
    ordered: bool = False
    source: dict = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        return sum(len(g) for g in self.grids)

    @property
    def input_dtype(self) -> str:
        return self.grids[0].grid.dtype

    @property
    def num_bands(self) -> int:
        return self.grids[0].grid.count

    @property
    def max_object_px(self) -> float:
        return max(largest_side(g.boxes) for g in self.grids)

    def object_sides_px(self) -> np.ndarray:
        """Longest side in pixels of every labelled object (float64 [N])."""
        sides = [
            np.maximum(g.boxes[:, 2] - g.boxes[:, 0], g.boxes[:, 3] - g.boxes[:, 1])
            for g in self.grids
        ]
        return np.concatenate(sides) if sides else np.zeros(0)

    @property
    def typical_object_px(self) -> float:
        """The size that chip sizes and overlaps are planned for: the
        :data:`TYPICAL_PERCENTILE` th percentile of the objects' longest sides, so one
        outlier (a lake labelled as a pool, a water park) does not set them."""
        sides = self.object_sides_px()
        return float(np.percentile(sides, TYPICAL_PERCENTILE)) if len(sides) else 0.0

    def gsd(self) -> float | None:
        """Pixel size in metres of the training grids (all at one GSD after
        :func:`to_training_gsd`; the upper median otherwise); None without a CRS."""
        sizes = [s for s in (grid_gsd_metres(g.grid) for g in self.grids) if s]
        return _upper_median(sizes) if sizes else None

    def band_names(self) -> list[str]:
        """Band names from the first raster's colour interpretation (``band<i>`` when
        unknown)."""
        grid = self.grids[0].grid
        names = []
        with open_raster(grid.paths[0]) as ds:
            for band in grid.bands:
                interp = ds.colorinterp[band - 1].name
                names.append(
                    interp
                    if interp not in ("undefined", "gray", "grey")
                    else (ds.descriptions[band - 1] or f"band{band}")
                )
        return names if len(set(names)) == len(names) else [f"band{b}" for b in grid.bands]


def load_labelled(source: LabelSource, *, gsd: float | None = None) -> LabelledData:
    """Read the training labels of ``source`` (rasters + a label layer, a VOC chip
    folder, a COCO JSON file or a YOLO folder); check that all imagery has one band
    layout. Rasters are read at one training GSD (see :func:`to_training_gsd`; ``gsd``
    metres imposes it, as resuming a model does).

    Raises:
        InputError: missing files.
        LabelError: unusable labels (see :func:`geodetect.io.labels.read_labels`).
        RasterError: rasters that differ in band count or data type.
    """
    if source.kind == "layer":
        gdf = None
        if source.path is not None:
            gdf = read_labels(
                source.path,
                layer=source.layer,
                class_field=source.class_field,
                point_size=source.point_size,
            )
        review = None if source.review is None else review_labels(source.review)
        classes = sorted(
            set(class_names(gdf) if gdf is not None else ())
            | set(review.positives["class"].astype(str) if review is not None else ())
        )
        if not classes:
            raise LabelError(
                f"{source.review}: no detection is judged pool and no missed pool is drawn; "
                "a detector needs objects to learn from"
            )

        def on(grids: list[MosaicGrid], *, again: bool = False) -> LabelledData:
            if gdf is not None:
                boxes = labels_on_grids(gdf, grids, classes, warn_outside=not again)
            else:
                boxes = [
                    GridLabels(g, np.zeros((0, 4)), np.zeros(0, dtype=np.int64)) for g in grids
                ]
            described = {**source.describe(), "images": [str(p) for g in grids for p in g.paths]}
            if review is not None:
                boxes = with_review(boxes, review, classes, labelled_files=gdf is not None)
                described["review_counts"] = review.counts
            return LabelledData(boxes, classes, source=described)

        opened = open_mosaics(list(source.images))
        labelled = on(to_training_gsd(opened, gsd=gsd))
        finest = labelled.gsd()
        if gsd is None and finest:
            coarser = object_scaled_gsd(labelled.object_sides_px() * finest, finest)
            if coarser != finest:
                _log_coarser(labelled, finest, coarser)
                labelled = on(resample_to_gsd(opened, coarser, tolerance=GSD_TOLERANCE), again=True)
    else:
        reader = {"voc": read_voc_folder, "coco": read_coco, "yolo": read_yolo}[source.kind]
        chips = reader(source.path)
        classes = chip_class_names(chips)
        if not classes:
            raise LabelError(f"{source.path}: holds no labelled objects; export chips with labels")
        labelled = LabelledData(
            chips_on_grids(chips, classes), classes, ordered=True, source=source.describe()
        )
    _check_layout(labelled)
    return labelled


# A review's detection judged pool that overlaps a label-layer object by this IoU is
# that object, labelled twice; a rejected one that overlaps an object by this much is a
# second box on it, not background.
_SAME_OBJECT_IOU = 0.3
_ON_OBJECT_IOU = 0.1


def with_review(
    grids: Sequence[GridLabels],
    review: ReviewLabels,
    classes: Sequence[str],
    *,
    labelled_files: bool,
) -> list[GridLabels]:
    """Add a filled review to labelled grids.

    Its confirmed detections and drawn pools become objects (unless a label already
    marks them), its rejections hard negatives (``GridLabels.rejected``; not those on
    an object). What is known changes: without a label layer only the review's own
    boxes and done squares are (``GridLabels.known``); with one
    (``labelled_files``), the files that hold label-layer objects stay wholly known,
    as a label layer alone has them, and the review adds its places on the others.

    Raises:
        LabelError: none of the review's objects lies on the rasters.
    """
    index = {c: i for i, c in enumerate(classes)}
    classes_of = np.array([index[c] for c in review.positives["class"].astype(str)], np.int64)
    out, placed = [], 0
    for gl in grids:
        grid = gl.grid
        pos, on = boxes_on_grid(review.positives, grid)
        pos, pos_cls = pos[on], classes_of[on]
        placed += int(on.sum())
        if len(gl.boxes) and len(pos):
            pos_keep = _max_iou(pos, gl.boxes) < _SAME_OBJECT_IOU
            pos, pos_cls = pos[pos_keep], pos_cls[pos_keep]
        boxes = np.concatenate([gl.boxes, pos]).reshape(-1, 4)
        labels = np.concatenate([gl.classes, pos_cls]).astype(np.int64)
        rejected, on = boxes_on_grid(review.rejected, grid)
        rejected = rejected[on].reshape(-1, 4)
        if len(boxes) and len(rejected):
            rejected = rejected[_max_iou(rejected, boxes) < _ON_OBJECT_IOU]
        known, on = boxes_on_grid(review.known, grid)
        known = known[on].reshape(-1, 4)
        if labelled_files:
            files = _member_boxes(grid)
            holding = _max_iou(files, gl.boxes) > 0 if len(gl.boxes) else np.zeros(len(files), bool)
            known = None if holding.all() else np.concatenate([known, files[holding]])
        out.append(GridLabels(grid, boxes, labels, rejected, known))
    if not placed and len(review.positives):
        raise LabelError(
            f"none of the review's {len(review.positives)} pools lies on the input raster(s); "
            "give the rasters the reviewed layer was detected on"
        )
    return out


def _max_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each box of ``a``'s largest IoU with a box of ``b`` (float64 [len(a)])."""
    if not len(a) or not len(b):
        return np.zeros(len(a))
    return box_iou(torch.as_tensor(a), torch.as_tensor(b)).max(dim=1).values.numpy()


def _member_boxes(grid: MosaicGrid) -> np.ndarray:
    """Each member file's footprint in the grid's pixels (float64 [M, 4])."""
    from rasterio.warp import transform_bounds

    boxes = []
    for member in grid.members:
        bounds = member.info.grid.bounds
        if member.info.grid.crs != grid.crs:
            bounds = transform_bounds(member.info.grid.crs, grid.crs, *bounds)
        boxes.append(shapely.box(*bounds))
    return map_to_pixel_boxes(np.array(boxes, dtype=object), grid.transform)


# label_nms_iou: the percentile of objects' largest overlap, the margin, and the range.
NMS_PERCENTILE = 99
NMS_MARGIN = 0.1
NMS_IOU_RANGE = (0.4, 0.5)
# label_second_box_iou's floor: on real 0.2 m orthophotos, second boxes on a found pool
# overlap it by IoU 0.17-0.40, and pools labelled side by side with a centre inside the
# other's box by 0.04-0.22 (one pair of 851 above 0.11).
SECOND_BOX_IOU_FLOOR = 0.15


def _upper_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return float(ordered[len(ordered) // 2])


def to_training_gsd(grids: Sequence[MosaicGrid], gsd: float | None = None) -> list[MosaicGrid]:
    """One training GSD for rasters of several: the upper median of their pixel sizes in
    metres (so a 0.1 m and a 0.2 m flight train at 0.2 m, never upsampled, and a lone
    coarse raster does not coarsen the rest); rasters off it by more than
    :data:`GSD_TOLERANCE` are read resampled to it, and labels land on the resampled
    pixels. ``gsd`` (metres) imposes the training GSD instead (a resumed model's).
    Grids without a metric or angular CRS are left as they are."""
    sizes = [s for s in (grid_gsd_metres(g) for g in grids) if s]
    if not sizes:
        return list(grids)
    target = gsd or _upper_median(sizes)
    if gsd is None and max(sizes) > (1 + GSD_TOLERANCE) * min(sizes):
        log.warning(
            "training rasters have pixels of %.3g-%.3g m; all are read at %.3g m (their "
            "upper median), which the model records as its GSD",
            min(sizes),
            max(sizes),
            target,
        )
    return resample_to_gsd(grids, target, tolerance=GSD_TOLERANCE)


def object_scaled_gsd(sides_m: np.ndarray, gsd: float) -> float:
    """The training GSD for objects of longest sides ``sides_m`` (metres) on rasters of
    ``gsd`` metres: ``gsd`` itself, or coarser when the objects are large in pixels.

    A step's cost grows with the chip's area and the chip with the typical object (see
    ``default_chip_size``), so 7.5 cm imagery of 15 m pools would train on 320 px chips,
    six times the cost of 128 px ones, and get a sixth of the steps in a time budget. The
    typical object (the 95th percentile) is brought to about :data:`TARGET_OBJECT_PX`
    when that coarsens the pixels by :data:`COARSEN_FROM` or more, at most
    :data:`MAX_COARSEN` times, and never so far that the small objects (the
    :data:`SMALL_PERCENTILE` th percentile) fall under :data:`MIN_SMALL_PX`. Detection
    reads its chips at the model's GSD, so it gains the same factor squared."""
    if not len(sides_m) or gsd <= 0:
        return gsd
    typical = float(np.percentile(sides_m, TYPICAL_PERCENTILE)) / gsd
    small = float(np.percentile(sides_m, SMALL_PERCENTILE)) / gsd
    factor = min(typical / TARGET_OBJECT_PX, small / MIN_SMALL_PX, MAX_COARSEN)
    if factor < COARSEN_FROM:
        return gsd
    return min(float(f"{gsd * factor:.3g}"), gsd * MAX_COARSEN)  # 0.21 m, not 0.20992 m


def label_nms_iou(labelled: LabelledData) -> float:
    """The NMS IoU for objects that overlap as the labelled ones do: the IoU that 99 %
    of them stay under with any other object of their class, plus
    :data:`NMS_MARGIN` for imprecise boxes, within :data:`NMS_IOU_RANGE`.

    Objects seen from above (pools, roofs, tanks) barely overlap, and a detector's
    second box on one of them often overlaps the first by IoU 0.4-0.5, just under
    torchvision's 0.5, so such sets get the floor; densely packed objects (parked cars,
    crowns) keep 0.5. One odd pair of labels does not move it."""
    low, high = NMS_IOU_RANGE
    return _label_overlap_rule(labelled, low, high, centred=False)


def label_second_box_iou(labelled: LabelledData, nms_iou: float) -> float:
    """The second-box IoU (see :func:`geodetect.model.postprocess.second_boxes`) for
    objects that nest as the labelled ones do: the IoU that 99 % of them stay under
    with any other object of their class such that the centre of one lies inside the
    other's box, plus :data:`NMS_MARGIN`, at least :data:`SECOND_BOX_IOU_FLOOR` and at
    most ``nms_iou`` (where NMS takes over).

    A detector's second box on a pool lies mostly inside the first, around its centre,
    at IoU 0.15-0.4; labelled pools only do so with a spa or plunge pool at the corner
    of a larger pool, whose box holds the spa's centre at IoU 0.04-0.2 (11 such pairs
    among São Paulo's 851 pools). Objects that often nest (parked cars under a
    carport's box, say) raise it to ``nms_iou``, which turns the rule off."""
    return _label_overlap_rule(labelled, SECOND_BOX_IOU_FLOOR, nms_iou, centred=True)


def _label_overlap_rule(labelled: LabelledData, low: float, high: float, *, centred: bool):
    """The 99th percentile over labelled objects of their largest IoU with another
    object of their class (only pairs where a centre lies inside the other box when
    ``centred``), plus :data:`NMS_MARGIN`, within [low, high], to 2 decimals."""
    worst: list[np.ndarray] = []
    for gl in labelled.grids:
        b = np.asarray(gl.boxes, dtype=np.float64)
        per = np.zeros(len(b))
        if len(b) > 1:
            i, j = intersecting_pairs(b, b)
            keep = (i != j) & (gl.classes[i] == gl.classes[j])
            if centred:
                keep &= either_centre_inside(b[i], b[j])
            i, j = i[keep], j[keep]
            polys = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            np.maximum.at(per, i, overlap_ratio(polys[i], polys[j], "iou"))
        worst.append(per)
    values = np.concatenate(worst) if worst else np.zeros(0)
    if not len(values):
        return round(high, 2)
    q = float(np.percentile(values, NMS_PERCENTILE))
    return round(min(high, max(low, q + NMS_MARGIN)), 2)


def _log_coarser(labelled: LabelledData, finest: float, coarser: float) -> None:
    sides = labelled.object_sides_px()
    factor = coarser / finest
    log.info(
        "objects are large in pixels at %.3g m (95th percentile %.0f px, 5th %.0f px): "
        "training at %.3g m instead (%.0f px and %.0f px: %.1fx fewer pixels per object, "
        "so smaller chips and more steps a minute); the model detects at that GSD. "
        "--gsd %.3g keeps the finer pixels",
        finest,
        labelled.typical_object_px,
        float(np.percentile(sides, SMALL_PERCENTILE)),
        coarser,
        labelled.typical_object_px / factor,
        float(np.percentile(sides, SMALL_PERCENTILE)) / factor,
        factor**2,
        finest,
    )


def _check_layout(labelled: LabelledData) -> None:
    first = labelled.grids[0].grid
    for gl in labelled.grids[1:]:
        g = gl.grid
        if g.count != first.count or g.dtype != first.dtype:
            raise RasterError(
                f"{g.paths[0]}: has {g.count} band(s) of {g.dtype} but {first.paths[0]} has "
                f"{first.count} of {first.dtype}; train on imagery of one band layout"
            )


@dataclass
class TrainingData:
    """Everything the training loop needs: the two chip sets and the input contract."""

    train: ChipSet
    val: ChipSet | None
    labelled: LabelledData
    band_mean: list[float]
    band_std: list[float]
    splits: list[SplitMap] = field(default_factory=list)

    def val_area(self, *, max_windows: int | None = None) -> ChipSet | None:
        """Windows tiling the validation area (see :func:`area_windows`), twice the
        training chip a side but at most 512 px, for choosing the score threshold on what detection
        meets: mostly background. None without a validation area or for chip folders."""
        if self.val is None or self.labelled.ordered:
            return None
        size = min(512, 2 * self.train.chip_size)
        items = area_windows(self.labelled.grids, self.splits, VAL, size, max_windows=max_windows)
        if not items:
            return None
        windows = ChipSet(
            self.labelled.grids,
            self.splits,
            VAL,
            chip_size=size,
            min_visible=self.train.min_visible,
            fixed=True,
            items=items,
            cache=False,
        )
        windows.set_normalisation(self.band_mean, self.band_std)
        return windows

    @property
    def classes(self) -> list[str]:
        return self.labelled.classes


def prepare_training_data(
    labelled: LabelledData,
    *,
    chip_size: int,
    val_fraction: float = 0.2,
    augmentation: Augmentation | None = None,
    negative_ratio: float = 1 / 3,
    min_visible: float = 0.5,
    max_val_chips: int = 400,
    band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    seed: int = 0,
) -> TrainingData:
    """Split by area, plan the chip sets and measure band statistics.

    Args:
        band_stats: (mean, std) to use instead of measuring them (e.g. when resuming a
            model, whose inputs must keep their scaling).

    Raises:
        LabelError: no object can be placed in a training chip.
    """
    augmentation = Augmentation() if augmentation is None else augmentation
    splits = plan_split(
        labelled.grids,
        val_fraction=val_fraction,
        chip_size=chip_size,
        seed=seed,
        ordered=labelled.ordered,
    )
    common = dict(
        chip_size=chip_size, negative_ratio=negative_ratio, min_visible=min_visible, seed=seed
    )
    train = ChipSet(labelled.grids, splits, TRAIN, augmentation=augmentation, **common)
    if train.num_positive == 0:
        raise LabelError(
            "no labelled object fits in a training chip; use a larger "
            "--chip-size or a smaller --val-fraction"
        )
    has_val = any((s.parts == VAL).any() for s in splits)
    val = (
        ChipSet(labelled.grids, splits, VAL, fixed=True, max_items=max_val_chips, **common)
        if has_val
        else None
    )
    if val is not None and val.num_positive == 0:
        log.warning("no validation chip holds an object; training without validation")
        val = None
    if band_stats is None:
        band_mean, band_std = band_statistics(train)
    else:
        band_mean, band_std = [float(v) for v in band_stats[0]], [float(v) for v in band_stats[1]]
    for chips in (train, val):
        if chips is not None:
            chips.set_normalisation(band_mean, band_std)
    sides = labelled.object_sides_px()
    larger = int((_FIT * sides > chip_size).sum())
    if larger:
        log.info(
            "%d of %d objects are too large for a %d-pixel chip; they are learnt whole "
            "from larger windows shrunk to the chip",
            larger,
            len(sides),
            chip_size,
        )
    log.info(
        "training chips: %d with objects + %d without; validation chips: %s "
        "(%d objects, classes: %s)",
        train.num_positive,
        len(train) - train.num_positive,
        "none" if val is None else f"{val.num_positive} + {len(val) - val.num_positive}",
        labelled.num_objects,
        ", ".join(labelled.classes),
    )
    return TrainingData(train, val, labelled, band_mean, band_std, splits)
