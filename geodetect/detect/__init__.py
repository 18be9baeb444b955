"""The detection pipeline: files -> one target grid -> blocks of chips -> owned detections
-> journal -> merged layer.

The shape of a run, module by module (each value is small and immutable):

- :mod:`geodetect.io.target`: the files on one target grid (CRS, lattice at the
  model's GSD); files off it are read through warps.
- :mod:`geodetect.detect.plan`: :class:`RunConfig` (what decides the detections) and
  :class:`Plan` (grids, chip grids, blocks of whole chips).
- :mod:`geodetect.detect.runner`: the block runner, a chip reader and a detector
  (chips in, owned detections out), called by
- :mod:`geodetect.detect.local` (reader processes feed the model in this process) and
  :mod:`geodetect.detect.cluster` (Dask workers run whole blocks).
- :mod:`geodetect.detect.journal`: finished blocks on disk, so a rerun continues.
- :mod:`geodetect.detect.merge`: the journal's tables -> seam merge -> layer.

Results do not depend on block size, worker count or the order blocks finish in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geodetect.detect.merge import merged_batches, to_layer
from geodetect.detect.plan import (
    DEFAULT_BLOCK_CHIPS,
    Plan,
    RunConfig,
    default_chip_size,
    default_overlap,
    make_plan,
)
from geodetect.detect.runner import BlockResult, ChipReader, Detector, Normaliser, band_scaling
from geodetect.detect.tta import (
    DIHEDRAL,
    FLIPS,
    View,
    _fuse,
    _unview_boxes,
    _view,
    predict_with_flips,
)
from geodetect.errors import InputError, RasterError
from geodetect.io.raster import (
    MosaicGrid,
    configure_gdal,
    describe_all,
    expand_inputs,
    grid_gsd_metres,
    grid_has_data,
)
from geodetect.io.target import GSD_TOLERANCE, TargetChoice, choose_target, target_grids
from geodetect.model import LoadedModel, ModelSpec, autocast_dtype, load_model, resolve_device

__all__ = [
    "DIHEDRAL",
    "FLIPS",
    "GSD_TOLERANCE",
    "DetectionReport",
    "Normaliser",
    "Plan",
    "RunConfig",
    "View",
    "default_chip_size",
    "default_overlap",
    "detect",
    "make_plan",
    "predict_with_flips",
    "to_layer",
    "_fuse",
    "_unview_boxes",
    "_view",
]

log = logging.getLogger(__name__)

COLUMNS = ["class", "score", "area_m2", "source", "model_id"]


@dataclass
class DetectionReport:
    """What happened during a run besides the detections themselves."""

    chips_total: int = 0
    chips_read: int = 0  # by this run (resumed blocks' chips are in chips_resumed)
    chips_empty: int = 0
    chips_resumed: int = 0  # read (or empty) in an earlier run, kept in the journal
    blocks_total: int = 0
    blocks_resumed: int = 0
    skipped_windows: list[str] = field(default_factory=list)
    objects: int = 0  # features in the layer
    journal: Any = None  # the run's Journal, when it has one on disk


class _MemoryJournal:
    """The journal of a run that keeps nothing on disk (the notebook API's default)."""

    resumed = 0

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, np.ndarray]] = {}

    def done(self) -> set[str]:
        return set(self.tables)

    def commit(self, key: str, table: dict[str, np.ndarray], info: dict | None = None) -> None:
        self.tables[key] = table

    def read(self, key: str) -> dict[str, np.ndarray]:
        return self.tables[key]

    def info(self, key: str) -> dict | None:
        return None

    def remove(self) -> None:
        self.tables.clear()


def detect(
    inputs: Iterable[str | os.PathLike] | Sequence[MosaicGrid],
    model: str | os.PathLike | LoadedModel,
    *,
    chip_size: int | None = None,
    overlap: int | None = None,
    threshold: float | None = None,
    nms_iou: float | None = None,
    merge_metric: str = "iou",
    tta: bool = False,
    tta_views: int = 8,
    gsd: str | float = "model",
    crs: str | None = None,
    bands: Sequence[int] | None = None,
    batch_size: int | None = None,
    block_size: int = DEFAULT_BLOCK_CHIPS,
    device: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    cluster: Any = None,
    journal: str | os.PathLike | None = None,
    restart: bool = False,
    keep_journal: bool = False,
    journal_for: str | None = None,
    allow_no_crs: bool = False,
    skip_bad_chips: bool = False,
    progress: bool = True,
    report: DetectionReport | None = None,
    on_batch: Callable[[int], None] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    compile: bool = False,
    runtime: str = "auto",
) -> gpd.GeoDataFrame | None:
    """Detect objects over scenes and mosaics and return one merged layer.

    Args:
        inputs: raster paths, globs or folders, or mosaic grids from
            :func:`geodetect.io.raster.open_mosaics` (read as they are).
        model: a model file path or a :class:`LoadedModel`.
        chip_size: chip edge in pixels (default: the model's, at least 512); a multiple
            of 32.
        overlap: chip overlap in pixels (default: :func:`default_overlap`).
        threshold: minimum score (default: the model's).
        nms_iou: IoU above which same-class detections are one object (default: the
            model's, from how much its training labels overlap).
        merge_metric: ``"iou"`` or ``"ios"`` (intersection over the smaller box).
        tta: also run turned and flipped copies of each chip and fuse the answers
            (score-weighted box averages), for ``tta_views`` times the compute. Off by
            default: on real 0.2 m orthophotos (``benchmarks/real.py``) 4 views gave
            AP50 0.840 and 8 views 0.835 against 0.829 without, and the same centre
            error, for 3.6x and 8.3x the detection time.
        tta_views: 8 (all symmetries of the square) or 4 (the flips).
        gsd: the target grid's pixel size: ``"model"`` (the model's GSD, unless the
            first file is within 15 % of it: then its own), a number of metres, or
            ``"native"`` (every file group on its own lattice; no warps).
        crs: the target grid's CRS (default: the first file's); files in other CRSs
            are read through a warp onto the grid.
        bands: 1-based raster bands in the model's band order (default: non-alpha bands).
        block_size: chips per block side; blocks are the unit of work, progress,
            journal and scale-out, and do not change the result.
        precision: ``"auto"`` (bf16 where the GPU or CPU computes it natively),
            ``"fp32"`` or ``"bf16"``.
        workers: reader processes feeding the model (default: CPUs - 1, at most 8).
        cluster: run blocks on Dask: ``"local:N"`` (a LocalCluster of N processes),
            a scheduler address, or a ``dask.distributed.Client``.
        journal: a folder for finished blocks (see
            :func:`geodetect.detect.journal.journal_dir`); the same call continues a
            run that stopped, a different one refuses unless ``restart``. Removed after
            the merge unless ``keep_journal``. Default: kept in memory only.
        compile: compile the network with ``torch.compile`` (15-35 s of start-up on a
            2-core CPU; see ``benchmarks/README.md`` for where it pays).
        runtime: what runs the network: ``"torch"``, ``"onnxruntime"`` (the CPU, fp32;
            the network is exported once per model into
            :func:`geodetect.model.onnx.cache_dir`) or ``"auto"``: ONNX Runtime where the
            CPU computes in fp32 (no native bf16), the run has at least
            :data:`ONNX_MIN_CHIPS` chips and the ``onnx`` extra is installed (1.33x torch's
            fp32 speed for the same boxes, ``benchmarks/README.md``); torch otherwise.
        out: write the layer to this file (format by extension, see
            :func:`geodetect.io.export.write_batches`) as the merge settles it, instead
            of returning it: the layer is never whole in memory. ``overwrite`` replaces
            an existing file.

    Returns:
        GeoDataFrame of Polygons in the target CRS with columns ``class``, ``score``,
        ``area_m2``, ``source`` (file name) and ``model_id``, north to south (then west
        to east); None when written to ``out``.
    """
    configure_gdal()
    dev = resolve_device(device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=dev)
    spec = loaded.spec
    grids, choice = _grids(inputs, spec, gsd=gsd, crs=crs, allow_no_crs=allow_no_crs)
    grids = _usable(grids, spec, bands)
    _say_gsd(grids, spec, choice)
    if tta_views not in (4, 8):
        raise InputError(f"--tta-views {tta_views}: choose 4 (flips) or 8 (all symmetries)")
    chip_size = chip_size or default_chip_size(spec)
    chosen = overlap is None
    config = RunConfig(
        chip_size=chip_size,
        overlap=default_overlap(spec, chip_size) if overlap is None else overlap,
        threshold=spec.score_threshold if threshold is None else threshold,
        nms_iou=spec.nms_iou if nms_iou is None else nms_iou,
        second_box_iou=spec.second_box_iou,
        merge_metric=merge_metric,
        views=() if not tta else FLIPS if tta_views == 4 else DIHEDRAL,
        block_chips=block_size,
        precision=precision,
        skip_bad_chips=skip_bad_chips,
        batch_size=batch_size or (32 if dev.type == "cuda" else 8),
        compile=compile,
    )
    typical = spec.typical_object_px or spec.max_object_px
    if chosen and typical:
        log.info(
            "chips %d px, overlap %d px (1.2x the model's typical object, %.0f px; larger "
            "ones are joined from their pieces)",
            config.chip_size,
            config.overlap,
            typical,
        )
    plan = make_plan(grids, config)
    config = replace(config, runtime=_runtime(runtime, dev, config, plan, loaded.model))
    scaling = [band_scaling(g, spec) for g in grids]
    manifest = {
        "inputs": [_file_stamp(m.info.path) for g in grids for m in g.members],
        "model": loaded.model_id,
        "options": config.identity(),
        # bf16 and fp32, a GPU and a CPU, torch and ONNX Runtime, eager and compiled
        # networks give slightly different boxes: never mixed.
        "compute": _compute(dev, config),
        "grids": [
            [g.crs.to_wkt() if g.crs else None, list(g.transform)[:6], g.bands] for g in grids
        ],
    }
    if journal is None:
        store = _MemoryJournal()
    else:
        from geodetect.detect.journal import Journal

        store = Journal(Path(journal), manifest, restart=restart, owner=journal_for)
    report = report if report is not None else DetectionReport()
    report.journal = store if journal is not None else None
    done = store.done()
    pending = [
        (b, n) for b, n in zip(plan.blocks, plan.chip_counts, strict=True) if b.key not in done
    ]
    report.chips_total = plan.chips_total
    report.blocks_total = len(plan.blocks)
    report.blocks_resumed = len(plan.blocks) - len(pending)
    for block in plan.blocks:  # what the resumed blocks read and skipped, earlier
        info = store.info(block.key) if block.key in done else None
        if info:
            report.chips_resumed += info["chips_read"] + info["chips_empty"]
            report.skipped_windows.extend(info["skipped"])
    if report.blocks_resumed:
        log.info(
            "resuming: %d of %d block(s) already done in %s",
            report.blocks_resumed,
            len(plan.blocks),
            journal,
        )
    log.debug(
        "%d chip(s) in %d block(s) over %d grid(s)", plan.chips_total, len(plan.blocks), len(grids)
    )
    sink = _Sink(plan, sum(n for _, n in pending), store, report, progress, on_batch)
    try:
        _execute(plan, pending, config, _Model(loaded, scaling, dev), sink, workers, cluster)
    except BaseException:
        if journal is not None and not store.done():
            store.remove()  # nothing finished: leave nothing behind
        raise
    finally:
        sink.close()
    merged = merged_batches(
        plan,
        store.read,
        crs=choice.crs,
        nms_iou=config.nms_iou,
        metric=config.merge_metric,
        second_iou=config.second_box_iou,
    )
    layers = (_counted(to_layer(m, spec, loaded.model_id), report) for m in merged)
    if out is not None:
        from geodetect.io.export import write_batches

        write_batches(layers, out, overwrite=overwrite)
        layer = None
    else:
        parts = list(layers)
        layer = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)
    if journal is not None and not keep_journal:
        store.remove()
    return layer


def _counted(layer: gpd.GeoDataFrame, report: DetectionReport) -> gpd.GeoDataFrame:
    report.objects += len(layer)
    return layer


# The smallest run for which ``runtime="auto"`` exports the network to ONNX (≈10 s once
# per model for a ResNet18, then ≈1.3x faster chips in fp32 on the CPU).
ONNX_MIN_CHIPS = 256


def _runtime(choice: str, dev, config: RunConfig, plan: Plan, network) -> str:
    """The runtime ``choice`` ("auto", "torch" or "onnxruntime") comes to for this run."""
    from torchvision.models.detection import RetinaNet

    from geodetect.model.onnx import onnx_available

    if choice not in ("auto", "torch", "onnxruntime"):
        raise InputError(f"--runtime {choice}: choose auto, torch or onnxruntime")
    if choice == "onnxruntime":
        if dev.type != "cpu":
            raise InputError("--runtime onnxruntime runs on the CPU; pass --device cpu")
        if not onnx_available():
            raise InputError(
                "--runtime onnxruntime needs onnx, onnxruntime and onnxscript: "
                "pip install 'geodetect[onnx]'"
            )
        return choice
    fp32_cpu = dev.type == "cpu" and autocast_dtype(dev, config.precision) is None
    if (
        choice == "auto"
        and fp32_cpu
        and isinstance(network, RetinaNet)  # what export_onnx knows how to export
        and not config.compile
        and plan.chips_total >= ONNX_MIN_CHIPS
        and onnx_available()
    ):
        log.debug("the network runs in ONNX Runtime (this CPU computes in fp32)")
        return "onnxruntime"
    return "torch"


def _compute(dev, config: RunConfig) -> list:
    """What computes the boxes, as the journal's manifest records it."""
    if config.runtime == "onnxruntime":
        return [dev.type, "fp32", "onnxruntime"]
    precision = str(autocast_dtype(dev, config.precision))
    return [dev.type, precision, "torch", "compiled" if config.compile else "eager"]


@dataclass(frozen=True)
class _Model:
    """The model side of a run: the loaded model, each grid's band scaling, the device."""

    loaded: LoadedModel
    scaling: Sequence[tuple[list[float], list[float]]]
    device: Any


class _Sink:
    """Where finished work goes: the journal, the report and the progress bar."""

    def __init__(self, plan: Plan, pending: int, store, report, progress: bool, on_batch):
        self.plan, self.store, self.report, self.on_batch = plan, store, report, on_batch
        self.blocks, self.objects = report.blocks_resumed, 0
        self.bar = tqdm(
            total=plan.chips_total,
            initial=plan.chips_total - pending,
            unit="chip",
            disable=not progress,
            desc="detect",
            dynamic_ncols=True,
        )

    def chips(self, n: int) -> None:
        self.bar.update(n)
        if self.on_batch:
            self.on_batch(n)

    def block(self, result: BlockResult) -> None:
        info = {
            "chips_read": result.chips_read,
            "chips_empty": result.chips_empty,
            "skipped": result.skipped,
        }
        self.store.commit(result.key, result.table, info)
        report = self.report
        report.chips_read += result.chips_read
        report.chips_empty += result.chips_empty
        report.skipped_windows.extend(result.skipped)
        self.blocks += 1
        self.objects += len(result.table["score"])
        self.bar.set_postfix(
            blocks=f"{self.blocks}/{len(self.plan.blocks)}", objects=self.objects, refresh=False
        )

    def close(self) -> None:
        self.bar.close()


def _execute(plan: Plan, pending, config: RunConfig, model: _Model, sink: _Sink, workers, cluster):
    """Run the pending ``(block, chip count)`` pairs here or on Dask."""
    from geodetect.model.device import available_cpus

    blocks = [b for b, _ in pending]
    counts = [n for _, n in pending]
    if not blocks:
        return
    if cluster is not None:
        from geodetect.detect.cluster import connect, run_cluster

        loaded = model.loaded
        source = str(loaded.path) if loaded.path.is_file() else loaded
        threads = None  # a LocalCluster's workers share this machine's cores
        text = str(cluster)
        count = text.partition(":")[2] or "2"
        if text.startswith("local") and count.isdigit() and int(count) > 0:
            threads = max(1, available_cpus() // int(count))
        with connect(cluster) as client:
            run_cluster(
                client,
                plan,
                blocks,
                config,
                source,
                model.scaling,
                model.device.type,
                torch_threads=threads,
                on_block=sink.block,
                on_chips=sink.chips,
            )
        return
    from geodetect.detect.local import run_local

    if workers is None:
        workers = min(8, max(1, available_cpus() - 1))
    reader = ChipReader(plan.grids, skip_bad_chips=config.skip_bad_chips)
    detector = Detector.build(model.loaded, plan.grids, config, model.device, model.scaling)
    run_local(
        plan,
        blocks,
        counts,
        reader,
        detector,
        workers=workers,
        on_block=sink.block,
        on_chips=sink.chips,
    )


def _file_stamp(path: Path) -> list:
    try:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def _grids(
    inputs, spec: ModelSpec, *, gsd, crs, allow_no_crs
) -> tuple[list[MosaicGrid], TargetChoice]:
    """The run's target grids and where they lie."""
    if gsd not in ("model", "native") and not isinstance(gsd, int | float):
        try:
            gsd = float(gsd)
        except (TypeError, ValueError):
            raise InputError(
                f"--gsd {gsd}: choose 'model', 'native' or a pixel size in metres"
            ) from None
    if _all_grids(inputs):
        grids = list(inputs)
        return grids, TargetChoice(grids[0].crs, None, None)
    infos = describe_all(expand_inputs(inputs), allow_no_crs=allow_no_crs)
    choice = choose_target(infos, model_gsd=spec.gsd, gsd=gsd, crs=crs)
    grids = target_grids(infos, choice)
    return grids, choice


def _say_gsd(grids: list[MosaicGrid], spec: ModelSpec, choice: TargetChoice) -> None:
    """Warn where the imagery is read far off the model's GSD."""
    for note in choice.notes:
        log.info("%s", note)
    for note in choice.warnings:
        log.warning("%s", note)
    if choice.lattice is not None:
        return
    for grid in grids:
        grid_gsd_m = grid_gsd_metres(grid)
        if grid_gsd_m and spec.gsd and not 0.67 < grid_gsd_m / spec.gsd < 1.5:
            log.warning(
                "%s has %.3g m pixels but the model was trained at %.3g m; "
                "expect poorer results (resample the imagery to match)",
                grid.paths[0].name,
                grid_gsd_m,
                spec.gsd,
            )


def _usable(grids: list[MosaicGrid], spec: ModelSpec, bands) -> list[MosaicGrid]:
    """Grids whose bands fit the model; a wholly-nodata file is simply empty, whatever
    its band layout."""
    usable = []
    for grid in grids:
        try:
            _check_bands(grid, spec, bands)
        except RasterError:
            if grid_has_data(grid):
                raise
            log.warning("%s holds no valid pixels; nothing to detect there", grid.paths[0].name)
            continue
        usable.append(grid)
    return usable


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


def _all_grids(inputs) -> bool:
    return (
        isinstance(inputs, list | tuple)
        and bool(inputs)
        and all(isinstance(g, MosaicGrid) for g in inputs)
    )
