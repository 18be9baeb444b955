"""Training chips: windows placed in one part of the labelled grids, around objects
(plus object-free negatives), read as normalised and augmented chips (:class:`ChipSet`)
and batched (:func:`chip_loader`); the band statistics that normalise them.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geodetect.errors import RasterError
from geodetect.geometry.boxes import box_area, box_has_area, boxes_overlap, clip_boxes
from geodetect.geometry.grid import offset_range, window_box
from geodetect.io.labels import GridLabels
from geodetect.io.raster import GridReader, MosaicGrid
from geodetect.train.augment import NO_AUGMENTATION, Augmentation, resize
from geodetect.train.split import SplitMap, _known_area

# ChipItem.anchor of a random negative, of a mined hard example and of a reviewer's
# rejection (``GridLabels.rejected[ChipItem.box]``).
NEGATIVE, HARD, REJECTED = -1, -2, -3
_PLACE_TRIES = 50
# An object whose longest side exceeds a chip divided by this is read in a larger window,
# shrunk to the chip: it is learnt whole, at a smaller scale, instead of cut.
_FIT = 1.25


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
