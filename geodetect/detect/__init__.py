"""The detection pipeline: mosaic grids -> chips -> RetinaNet -> owned map boxes -> merged layer.

Reading runs in DataLoader workers (each with its own open datasets) while the model
works on the previous batch; chips travel as their raw dtype and are normalised on the
model's device. Memory holds a few batches of chips plus the detections, never a scene.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import batched_nms, box_iou
from tqdm.auto import tqdm

from geodetect.errors import InputError, RasterError
from geodetect.geometry import (
    Chip,
    chip_grid,
    cut_mask,
    merge_pieces,
    nms_polygons,
    owned_mask,
    pixel_boxes_to_map,
)
from geodetect.io.export import area_m2
from geodetect.io.raster import (
    GridReader,
    MosaicGrid,
    grid_band_stats,
    grid_gsd_metres,
    grid_has_data,
    open_mosaics,
    resample_to_gsd,
    to_pyproj,
)
from geodetect.model import LoadedModel, ModelSpec, autocast_dtype, load_model, resolve_device

log = logging.getLogger(__name__)

COLUMNS = ["class", "score", "area_m2", "source", "model_id"]
# Imagery whose pixels are within this share of the model's GSD is read as it is; other
# imagery is resampled to the model's GSD (``gsd="native"`` never resamples).
GSD_TOLERANCE = 0.15


@dataclass(frozen=True)
class ChipJob:
    """One chip to read: which mosaic grid it comes from and where."""

    grid_index: int
    chip: Chip


@dataclass
class DetectionReport:
    """What happened during a run besides the detections themselves."""

    chips_total: int = 0
    chips_read: int = 0
    chips_empty: int = 0
    skipped_windows: list[str] = field(default_factory=list)


class ChipDataset(Dataset):
    """Chips of one or more mosaic grids, read on demand.

    Item: ``(job_index, data, has_data, error)`` where data is a tensor [C, S, S] in the
    source dtype (uint8 stays uint8 so it travels cheaply) and ``has_data`` is False for
    chips wholly nodata, which the pipeline skips.
    """

    def __init__(
        self, grids: Sequence[MosaicGrid], jobs: Sequence[ChipJob], *, skip_bad_chips: bool = False
    ) -> None:
        self.readers = [GridReader(g) for g in grids]
        self.jobs = list(jobs)
        self.skip_bad_chips = skip_bad_chips

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int):
        job = self.jobs[index]
        chip = job.chip
        try:
            data, valid = self.readers[job.grid_index].read(
                chip.row_off, chip.col_off, chip.height, chip.width
            )
        except RasterError as exc:
            if not self.skip_bad_chips:
                raise
            return index, None, False, str(exc)
        if data.dtype not in (np.uint8, np.float32):
            data = data.astype(np.float32)
        return index, torch.from_numpy(data), bool(valid.any()), None


def _collate(items):
    keep = [it for it in items if it[2]]
    indices = [it[0] for it in keep]
    batch = torch.stack([it[1] for it in keep]) if keep else None
    skipped = [it[3] for it in items if it[3]]
    return indices, batch, len(items) - len(keep) - len(skipped), skipped


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # readers decode; the main process owns the cores for compute


def plan_chips(grids: Sequence[MosaicGrid], *, chip_size: int, overlap: int) -> list[ChipJob]:
    """Every chip of every grid that touches at least one file (gaps are never read)."""
    jobs = []
    for gi, grid in enumerate(grids):
        chips = chip_grid(
            height=grid.height,
            width=grid.width,
            chip_size=chip_size,
            overlap=overlap,
            transform=grid.transform,
        )
        for chip in chips:
            if grid.members_in(chip.row_off, chip.col_off, chip.height, chip.width):
                jobs.append(ChipJob(gi, chip))
    return jobs


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


class Normaliser:
    """``(x - mean) / std`` per band on the model's device (inputs stay raw until here)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() - self.mean) / self.std


def _band_scaling(grid: MosaicGrid, spec: ModelSpec) -> tuple[list[float], list[float]]:
    if np.dtype(grid.dtype) == np.dtype(spec.input_dtype):
        return spec.band_mean, spec.band_std
    # Another radiometry than the training data: match each band's distribution to the
    # training statistics instead of assuming a fixed range.
    scene_mean, scene_std = grid_band_stats(grid)
    log.warning(
        "%s is %s but the model was trained on %s; scaling bands by their own statistics",
        grid.paths[0].name,
        grid.dtype,
        spec.input_dtype,
    )
    # z = (x - m_s)/s_s  ==  (x - mean)/std with mean = m_s, std = s_s
    return scene_mean.tolist(), scene_std.tolist()


def _check_bands(grid: MosaicGrid, spec: ModelSpec, bands: Sequence[int] | None) -> None:
    first = grid.members[0].info
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= first.count]
        if bad:
            raise RasterError(
                f"{first.path}: has {first.count} band(s); --bands {bad} "
                f"does not exist (choose from 1..{first.count})"
            )
        grid.bands = list(bands)
    if grid.count != spec.num_bands:
        names = ", ".join(spec.band_names)
        if bands is not None:
            raise RasterError(
                f"{first.path}: --bands {','.join(map(str, bands))} selects {len(bands)} "
                f"band(s) but the model expects {spec.num_bands} ({names})"
            )
        raise RasterError(
            f"{first.path}: has {grid.count} data band(s) but the model expects "
            f"{spec.num_bands} ({names}); choose bands with --bands, e.g. --bands "
            + ",".join(str(i) for i in range(1, spec.num_bands + 1))
        )


def _source_of(grid: MosaicGrid, chip: Chip, boxes: np.ndarray) -> list[str]:
    """Name of the file under each box centre (the chip's first file if in a gap)."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + chip.col_off
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + chip.row_off
    names = []
    for x, y in zip(cx, cy, strict=True):
        hit = grid.members_in(int(y), int(x), 1, 1) or grid.members
        names.append(hit[0].info.path.name)
    return names


def detect(
    inputs: Iterable[str | os.PathLike] | Sequence[MosaicGrid],
    model: str | os.PathLike | LoadedModel,
    *,
    chip_size: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
    nms_iou: float = 0.5,
    merge_metric: str = "iou",
    tta: bool = False,
    tta_views: int = 8,
    gsd: str = "model",
    bands: Sequence[int] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    allow_no_crs: bool = False,
    skip_bad_chips: bool = False,
    progress: bool = True,
    report: DetectionReport | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> gpd.GeoDataFrame:
    """Detect objects over scenes and mosaics and return one merged layer.

    Args:
        inputs: raster paths, globs or folders (files sharing a CRS and pixel lattice
            are read as one mosaic), or mosaic grids from :func:`open_mosaics`.
        model: a model file path or a :class:`LoadedModel`.
        chip_size: chip edge in pixels (default: the model's, at least 512); a multiple
            of 32.
        overlap: chip overlap in pixels (default: :func:`default_overlap`).
        threshold: minimum score (default: the model's).
        nms_iou: overlap above which same-class detections are merged.
        merge_metric: ``"iou"`` or ``"ios"`` (intersection over the smaller box).
        tta: also run turned and flipped copies of each chip and fuse the answers
            (score-weighted box averages), for ``tta_views`` times the compute. Off by
            default: on real 0.2 m orthophotos (``benchmarks/real.py``) 4 views gave
            AP50 0.840 and 8 views 0.835 against 0.829 without, and the same centre
            error, for 3.6x and 8.3x the detection time.
        tta_views: 8 (the flips of the chip and of its transpose: all symmetries of the
            square) or 4 (the chip flipped left-right, up-down and both).
        gsd: ``"model"`` reads imagery whose pixels are more than 15 % off the model's
            GSD resampled to it (a 0.1 m flight through a 0.2 m model is read at 0.2 m);
            ``"native"`` always reads the files' own pixels.
        bands: 1-based raster bands in the model's band order (default: non-alpha bands).
        precision: ``"auto"`` (bf16 where the GPU or CPU computes it natively),
            ``"fp32"`` or ``"bf16"``.

    Returns:
        GeoDataFrame of Polygons in the (first) mosaic CRS with columns ``class``,
        ``score``, ``area_m2``, ``source`` (file name) and ``model_id``, sorted by score.
    """
    dev = resolve_device(device)
    amp = autocast_dtype(dev, precision)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=dev)
    loaded.model.to(dev).eval()
    spec = loaded.spec
    grids = list(inputs) if _all_grids(inputs) else open_mosaics(inputs, allow_no_crs=allow_no_crs)
    if gsd not in ("model", "native"):
        raise InputError(f"--gsd {gsd}: choose 'model' or 'native'")
    chip_size = chip_size or default_chip_size(spec)
    if chip_size % 32:
        raise RasterError(f"--chip-size {chip_size}: must be a multiple of 32")
    chosen = overlap is None
    overlap = default_overlap(spec, chip_size) if overlap is None else overlap
    if not 0 <= overlap < chip_size:
        raise RasterError(f"--overlap {overlap}: must be between 0 and chip size {chip_size}")
    threshold = spec.score_threshold if threshold is None else threshold
    usable = []
    for grid in grids:
        try:
            _check_bands(grid, spec, bands)
        except RasterError:
            if grid_has_data(grid):
                raise
            # A wholly-nodata file is simply empty, whatever its band layout.
            log.warning("%s holds no valid pixels; nothing to detect there", grid.paths[0].name)
            continue
        usable.append(grid)
    empty_crs = grids[0].crs if grids else None
    grids = usable
    if gsd == "model" and spec.gsd:
        grids = resample_to_gsd(grids, spec.gsd, tolerance=GSD_TOLERANCE)
    for grid in grids:
        # Both in metres: the grid's pixel size is in its CRS's unit (feet, degrees...).
        grid_gsd_m = grid_gsd_metres(grid)
        # (With gsd="model", resample_to_gsd has said why a grid stays off the model's.)
        if gsd == "native" and grid_gsd_m and spec.gsd and not 0.67 < grid_gsd_m / spec.gsd < 1.5:
            log.warning(
                "%s has %.3g m pixels but the model was trained at %.3g m; "
                "expect poorer results (resample the imagery to match)",
                grid.paths[0].name,
                grid_gsd_m,
                spec.gsd,
            )
    net = loaded.model
    # With flips, keep weaker per-pass boxes: the fused score decides.
    if tta_views not in (4, 8):
        raise InputError(f"--tta-views {tta_views}: choose 4 (flips) or 8 (all symmetries)")
    views = () if not tta else FLIPS if tta_views == 4 else DIHEDRAL
    net.score_thresh = threshold / 2 if views else threshold
    net.nms_thresh = nms_iou
    normalisers = [Normaliser(*_band_scaling(g, spec), dev) for g in grids]
    typical = spec.typical_object_px or spec.max_object_px
    if chosen and typical:
        log.info(
            "chips %d px, overlap %d px (1.2x the model's typical object, %.0f px; larger "
            "ones are joined from their pieces)",
            chip_size,
            overlap,
            typical,
        )
    jobs = plan_chips(grids, chip_size=chip_size, overlap=overlap)
    report = report if report is not None else DetectionReport()
    report.chips_total = len(jobs)

    batch_size = batch_size or (32 if dev.type == "cuda" else 8)
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    dataset = ChipDataset(grids, jobs, skip_bad_chips=skip_bad_chips)
    run = _Run(
        net,
        jobs,
        grids,
        normalisers,
        dev,
        amp,
        views,
        threshold,
        overlap,
        [g.data_extent() for g in grids],
    )
    # Batches must not mix grids (each has its own scaling): order jobs by grid already.
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers and hasattr(os, "fork") else None,
    )
    parts: dict[int, list[dict[str, np.ndarray]]] = {}
    found = 0
    bar = tqdm(
        total=len(jobs),
        unit="chip",
        disable=not progress,
        desc="detect",
        dynamic_ncols=True,
        file=None,
    )
    try:
        with torch.inference_mode():
            for indices, batch, empty, skipped in loader:
                report.chips_empty += empty
                for message in skipped:
                    report.skipped_windows.append(message)
                    log.warning("skipped: %s", message)
                n_items = len(indices) + empty + len(skipped)
                if batch is not None:
                    report.chips_read += len(indices)
                    for part in _run_batch(run, batch, indices):
                        parts.setdefault(part["grid"], []).append(part)
                        found += len(part["score"])
                bar.update(n_items)
                bar.set_postfix(objects=found, refresh=False)
                if on_batch:
                    on_batch(n_items)
    finally:
        bar.close()
    merged = _merge(parts, grids, threshold=nms_iou, metric=merge_metric, crs=empty_crs)
    return to_layer(merged, spec, loaded.model_id)


def _all_grids(inputs) -> bool:
    return (
        isinstance(inputs, list | tuple)
        and bool(inputs)
        and all(isinstance(g, MosaicGrid) for g in inputs)
    )


@dataclass(frozen=True)
class _Run:
    """What every batch of one detection run shares."""

    net: torch.nn.Module
    jobs: Sequence[ChipJob]
    grids: Sequence[MosaicGrid]
    normalisers: Sequence[Normaliser]
    device: torch.device
    amp: torch.dtype | None
    views: Sequence[View]
    threshold: float
    overlap: int
    extents: Sequence[tuple[float, float, float, float]]


def _run_batch(run: _Run, batch: torch.Tensor, indices: Sequence[int]) -> list[dict]:
    """Run one batch (possibly spanning grids) and keep the detections each chip owns.

    A chip keeps the boxes whose centre lies in its core, plus boxes that may belong to
    another chip's core but are too large for the seam strip to guarantee that chip saw
    them whole (larger than the overlap, and not cut by this chip's edge); boxes that
    touch an interior chip edge are marked as pieces, for :func:`merge_pieces`.

    Returns one dict per chip with detections: ``grid`` (int), ``boxes`` (float64
    [K, 4] in the grid's pixel-edge coordinates), ``score``, ``label``, ``piece``,
    ``window`` (the chip's, xyxy grid pixels) and ``source`` (file names) arrays.
    """
    dev = run.device
    batch = batch.to(dev, non_blocking=True)
    grid_ids = np.array([run.jobs[i].grid_index for i in indices])
    normed = torch.empty(batch.shape, dtype=torch.float32, device=dev)
    for gi in np.unique(grid_ids):
        sel = torch.as_tensor(np.flatnonzero(grid_ids == gi), device=dev)
        normed[sel] = run.normalisers[gi](batch[sel])
    ctx = torch.autocast(dev.type, dtype=run.amp) if run.amp else nullcontext()
    with ctx:
        outputs = (
            predict_with_flips(run.net, normed, min_score=run.threshold, views=run.views)
            if run.views
            else run.net(normed)
        )
    parts = []
    for job_index, out in zip(indices, outputs, strict=True):
        boxes = out["boxes"].float().cpu().numpy().astype(np.float64)
        if len(boxes) == 0:
            continue
        job = run.jobs[job_index]
        grid, chip = run.grids[job.grid_index], job.chip
        # Clip to the grid's data extent: a scene smaller than a chip is padded, and a
        # resampled file's data ends inside the whole pixels its window snaps out to.
        x0, y0, x1, y1 = run.extents[job.grid_index]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(x0 - chip.col_off, x1 - chip.col_off)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(y0 - chip.row_off, y1 - chip.row_off)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cut = cut_mask(boxes, chip.core, size=chip.width)
        large = np.maximum(width, height) > run.overlap
        keep = (owned_mask(boxes, chip.core) | (large & ~cut)) & (width > 0) & (height > 0)
        if not keep.any():
            continue
        boxes = boxes[keep]
        parts.append(
            {
                "grid": job.grid_index,
                "boxes": boxes + np.array([chip.col_off, chip.row_off] * 2, dtype=np.float64),
                "score": out["scores"].float().cpu().numpy()[keep].astype(np.float64),
                "label": out["labels"].cpu().numpy()[keep],
                "piece": cut[keep],
                "window": np.tile(
                    np.array(
                        [
                            chip.col_off,
                            chip.row_off,
                            chip.col_off + chip.width,
                            chip.row_off + chip.height,
                        ],
                        dtype=np.float64,
                    ),
                    (len(boxes), 1),
                ),
                "source": np.asarray(_source_of(grid, chip, boxes), dtype=object),
            }
        )
    return parts


def _flip_boxes(boxes: torch.Tensor, size: int, dims: tuple[int, ...]) -> torch.Tensor:
    """Map xyxy boxes found in a chip flipped along ``dims`` (2 = rows, 3 = columns)
    back to the unflipped chip (flipping is its own inverse)."""
    out = boxes.clone()
    if 3 in dims:
        out[:, [0, 2]] = size - boxes[:, [2, 0]]
    if 2 in dims:
        out[:, [1, 3]] = size - boxes[:, [3, 1]]
    return out


View = tuple[bool, tuple[int, ...]]
"""A view of a square chip for test-time augmentation: (transpose rows and columns
first?, dims then flipped: 2 = rows, 3 = columns)."""

FLIPS: tuple[View, ...] = ((False, ()), (False, (3,)), (False, (2,)), (False, (2, 3)))
DIHEDRAL: tuple[View, ...] = FLIPS + tuple((True, dims) for _, dims in FLIPS)


def _view(batch: torch.Tensor, view: View) -> torch.Tensor:
    transpose, dims = view
    out = batch.transpose(-2, -1) if transpose else batch
    return torch.flip(out, dims) if dims else out


def _unview_boxes(boxes: torch.Tensor, size: int, view: View) -> torch.Tensor:
    """Map xyxy boxes found in ``_view(chip, view)`` back to the chip itself."""
    transpose, dims = view
    out = _flip_boxes(boxes, size, dims)
    return out[:, [1, 0, 3, 2]] if transpose else out


def predict_with_flips(
    net,
    batch: torch.Tensor,
    *,
    min_score: float = 0.0,
    fuse_iou: float = 0.55,
    views: Sequence[View] = FLIPS,
) -> list[dict]:
    """Test-time augmentation: run several views of each chip (the four flips by
    default; :data:`DIHEDRAL` adds the four transposed ones) and fuse the answers.

    Boxes of one class that overlap (IoU > ``fuse_iou``) across views are one object:
    its box is the score-weighted mean of theirs and its score the mean over all
    passes (an object seen in one of four passes only keeps a quarter of its score);
    fused objects scoring below ``min_score`` are dropped. Chips must be square.

    The fusion is batched tensor work on the batch's device: the object leaders are the
    boxes class-wise NMS keeps (at ``fuse_iou``, per chip), every box joins the best-
    scored leader it overlaps, and the weighted means are scatter-adds.
    """
    size = batch.shape[-1]
    if batch.shape[-2] != size:
        raise ValueError(f"test-time augmentation needs square chips, got {tuple(batch.shape)}")
    passes = [net(_view(batch, view)) for view in views]
    # float64 where it is cheap (CPU) so fused edges are not rounded; float32 on a GPU.
    dtype = torch.float64 if batch.device.type == "cpu" else torch.float32
    boxes = torch.cat(
        [
            _unview_boxes(torch.cat([d["boxes"] for d in p]).to(dtype), size, view)
            for p, view in zip(passes, views, strict=True)
        ]
    )
    scores = torch.cat([d["scores"].to(dtype) for p in passes for d in p])
    labels = torch.cat([d["labels"] for p in passes for d in p])
    counts = torch.tensor([len(d["boxes"]) for p in passes for d in p], device=boxes.device)
    n_images = batch.shape[0]
    image = torch.arange(n_images, device=boxes.device).repeat(len(views))
    image = image.repeat_interleave(counts)
    fused_boxes, fused_scores, fused_labels, fused_image = _fuse(
        boxes, scores, labels, image, fuse_iou=fuse_iou, n_views=len(views)
    )
    keep = fused_scores >= min_score
    fused_boxes, fused_scores = fused_boxes[keep], fused_scores[keep]
    fused_labels, fused_image = fused_labels[keep], fused_image[keep]
    by_score = torch.argsort(fused_scores, descending=True, stable=True)
    order = by_score[torch.argsort(fused_image[by_score], stable=True)]
    per_image = torch.bincount(fused_image, minlength=n_images).tolist()
    return [
        {"boxes": b, "scores": sc, "labels": lb}
        for b, sc, lb in zip(
            fused_boxes[order].split(per_image),
            fused_scores[order].split(per_image),
            fused_labels[order].split(per_image),
            strict=True,
        )
    ]


_FUSE_PAIRS = 4_000_000  # box-leader IoUs computed at once in test-time fusion


def _fuse(boxes, scores, labels, image, *, fuse_iou: float, n_views: int):
    """Score-weighted fusion of boxes from several views (see :func:`predict_with_flips`).

    Args:
        boxes: [N, 4] xyxy; scores [N]; labels [N] int; image [N] int, the chip of each.

    Returns:
        fused boxes [L, 4], scores [L] (summed weights / ``n_views``), labels [L] and
        image [L], one per leader.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0), labels[:0], image[:0]
    group = image * (int(labels.max()) + 1) + labels
    leaders = batched_nms(boxes.float(), scores.float(), group, fuse_iou)  # by score, desc
    # The first (best-scored) leader of its chip and class that a box overlaps takes it,
    # as a greedy pass would; a box NMS suppressed by a hair that float rounding puts
    # back under the threshold goes to the leader it overlaps most. Rows go in chunks
    # so the IoU matrix stays small whatever the candidate count.
    rows = max(1, _FUSE_PAIRS // len(leaders))
    owners = []
    for part, part_group in zip(boxes.split(rows), group.split(rows), strict=True):
        iou = box_iou(part, boxes[leaders])
        iou = iou.masked_fill(part_group[:, None] != group[leaders][None, :], -1.0)
        above = iou > fuse_iou
        first = torch.argmax(above.to(torch.uint8), dim=1)
        owners.append(torch.where(above.any(dim=1), first, torch.argmax(iou, dim=1)))
    owner = torch.cat(owners)
    owner[leaders] = torch.arange(len(leaders), device=boxes.device)
    weight_sum = scores.new_zeros(len(leaders)).index_add_(0, owner, scores)
    box_sum = boxes.new_zeros((len(leaders), 4)).index_add_(0, owner, boxes * scores[:, None])
    return (
        box_sum / weight_sum[:, None],
        weight_sum / n_views,
        labels[leaders],
        image[leaders],
    )


_PIECE_COLUMNS = ("boxes", "piece", "window")


def _merge(parts: dict[int, list[dict]], grids, *, threshold, metric, crs) -> gpd.GeoDataFrame:
    """All owned detections in the first grid's CRS, after class-wise NMS."""
    crs = grids[0].crs if grids else crs
    target_crs = to_pyproj(crs)
    columns = ["score", "label", "source"]
    frames = []
    for gi, chunks in sorted(parts.items()):
        grid = grids[gi]
        joined = {c: np.concatenate([p[c] for p in chunks]) for c in (*columns, *_PIECE_COLUMNS)}
        keep, boxes = merge_pieces(
            joined["boxes"], joined["score"], joined["label"], joined["piece"], joined["window"]
        )
        frame = gpd.GeoDataFrame(
            {c: joined[c][keep] for c in columns},
            geometry=pixel_boxes_to_map(boxes, grid.transform),
            crs=to_pyproj(grid.crs),
        )
        if grid.crs is not None and crs is not None and grid.crs != crs:
            log.warning(
                "%s is in another CRS than %s; its detections are reprojected",
                grid.paths[0].name,
                grids[0].paths[0].name,
            )
            frame = frame.to_crs(target_crs)
        frames.append(frame)
    if frames:
        gdf = gpd.GeoDataFrame(
            pd.concat(frames, ignore_index=True), geometry="geometry", crs=target_crs
        )
    else:
        gdf = gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=target_crs)
    keep = nms_polygons(
        gdf.geometry.values,
        gdf["score"].to_numpy(),
        gdf["label"].to_numpy(),
        threshold=threshold,
        metric=metric,
    )
    return gdf.iloc[keep].reset_index(drop=True)


def to_layer(gdf: gpd.GeoDataFrame, spec: ModelSpec, model_id: str) -> gpd.GeoDataFrame:
    """Attach the published attribute columns to merged detections."""
    classes = np.asarray(spec.classes, dtype=object)
    labels = gdf["label"].to_numpy(dtype=np.int64) if len(gdf) else np.empty(0, np.int64)
    layer = gpd.GeoDataFrame(
        {
            "class": classes[labels] if len(labels) else np.empty(0, dtype=object),
            "score": gdf["score"].to_numpy(dtype=np.float64).round(4),
            "area_m2": area_m2(gdf.geometry.values, gdf.crs).round(3),
            "source": gdf["source"].astype(str).to_numpy(),
            "model_id": np.full(len(gdf), model_id, dtype=object),
        },
        geometry=gdf.geometry.values,
        crs=gdf.crs,
    )
    return layer
