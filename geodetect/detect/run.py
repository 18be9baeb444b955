"""A detection run as a chain of values: options (:class:`DetectOptions`, checked before
anything is read) -> :func:`prepare` (a :class:`PreparedRun`) -> :func:`execute` (its
pending blocks on an executor, into the run's store) -> :func:`publish` (the merged
layer, returned or written). :func:`detect` is that chain; the CLI, the notebook API
and the benchmarks call it or its steps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import geopandas as gpd
import pandas as pd

from geodetect.detect.coverage import COVERAGE_LAYER, coverage_layer
from geodetect.detect.journal import BlockStore, run_store
from geodetect.detect.merge import Provenance, merged_batches, to_layer
from geodetect.detect.options import VIEW_COUNTS, DetectOptions
from geodetect.detect.prepare import PreparedRun, prepare
from geodetect.detect.runner import BlockResult
from geodetect.errors import InputError
from geodetect.geometry import Block
from geodetect.io.raster import MosaicGrid, grid_gsd_metres
from geodetect.model import LoadedModel
from geodetect.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class DetectionReport:
    """What happened during a run besides the detections themselves."""

    chips_total: int = 0
    chips_read: int = 0  # by this run (resumed blocks' chips are in chips_resumed)
    chips_empty: int = 0
    chips_resumed: int = 0  # read (or empty) in an earlier run, kept in the journal
    # Pixels the network ran on in this run (chips over the edge of the data cropped).
    pixels_run: int = 0
    chips_screened: int = 0  # read by this run and skipped by the screen
    blocks_total: int = 0
    blocks_resumed: int = 0
    skipped_windows: list[str] = field(default_factory=list)
    objects: int = 0  # features in the layer
    # The ground read with valid imagery, one feature per source file (written as the
    # output's coverage layer); None until published.
    coverage: gpd.GeoDataFrame | None = None


class Executor(Protocol):
    """Runs blocks of a prepared run and hands each finished one to ``sink.block`` (and
    chip counts to ``sink.chips``) as it finishes: :class:`~geodetect.detect.local.InProcess`
    or :class:`~geodetect.detect.cluster.OnDask`."""

    def run(
        self, run: PreparedRun, blocks: Sequence[Block], counts: Sequence[int], sink: Any
    ) -> None: ...


def executor_for(options: DetectOptions) -> Executor:
    """Dask workers when ``options.cluster`` names a cluster; this process otherwise."""
    if options.cluster is not None:
        from geodetect.detect.cluster import OnDask

        return OnDask(options.cluster)
    from geodetect.detect.local import InProcess

    return InProcess(options.workers)


def detect(
    inputs: Iterable[str | os.PathLike] | Sequence[MosaicGrid],
    model: str | os.PathLike | LoadedModel,
    options: DetectOptions | None = None,
    *,
    journal: str | os.PathLike | None = None,
    restart: bool = False,
    keep_journal: bool = False,
    journal_for: str | None = None,
    progress: bool = True,
    report: DetectionReport | None = None,
    on_batch: Callable[[int], None] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    tta: bool = False,
    tta_views: int = 8,
    cluster: Any = None,
    **settings: Any,
) -> gpd.GeoDataFrame | None:
    """Detect objects over scenes and mosaics and return one merged layer.

    Args:
        inputs: raster paths, globs or folders, or mosaic grids from
            :func:`geodetect.io.raster.open_mosaics` (read as they are).
        model: a model file path or a :class:`LoadedModel`.
        options: a :class:`DetectOptions`; or give its fields as keywords (``settings``):
            ``chip_size`` (pixels, a multiple of 32; default the model's, at least 512),
            ``overlap`` (pixels; default :func:`default_overlap`), ``threshold`` and
            ``nms_iou`` (default the model's), ``merge_metric`` (``"iou"`` or ``"ios"``),
            ``gsd`` (``"model"``, ``"native"`` or metres), ``crs`` (the target grid's;
            default the first file's), ``bands`` (1-based, in the model's order),
            ``batch_size``, ``block_size`` (chips per block side: the unit of work,
            progress, journal and scale-out; the result does not depend on it),
            ``device``, ``precision`` (``"auto"``, ``"fp32"``, ``"bf16"``), ``workers``
            (reader processes; default CPUs - 1, at most 8), ``allow_no_crs``,
            ``skip_bad_chips``, ``compile`` (``torch.compile``: 15-35 s of start-up on a
            2-core CPU, see ``benchmarks/README.md``) and ``runtime`` (``"torch"``,
            ``"onnxruntime"``, ``"int8"``, or ``"auto"``: the fastest of them on this
            machine for this model, see :mod:`geodetect.detect.choose`) and ``screen``
            (``"auto"``, ``"on"``, ``"off"``: skip chips where a look at half resolution
            finds nothing, see :mod:`geodetect.detect.screen`).
        tta: also run turned and flipped copies of each chip and fuse the answers
            (score-weighted box averages), for ``tta_views`` (4: the flips; 8: all
            symmetries of the square) times the compute. Off by default: on real 0.2 m
            orthophotos 4 views gave AP50 0.840 and 8 views 0.835 against 0.829
            without, for 3.6x and 8.3x the detection time.
        cluster: run blocks on Dask: ``"local:N"`` (a LocalCluster of N processes), a
            scheduler address, or a ``dask.distributed.Client``.
        journal: a folder for finished blocks (see
            :func:`geodetect.detect.journal.journal_dir`); the same call continues a run
            that stopped, a different one refuses unless ``restart``. Removed after the
            layer is written unless ``keep_journal``. Default: kept in memory only.
        out: write the layer to this file (format by extension, see
            :func:`geodetect.io.export.write_batches`) as the merge settles it, instead
            of returning it: the layer is never whole in memory. ``overwrite`` replaces
            an existing file. The run's coverage (the ground read with valid imagery, one
            feature per source file) goes with it: a ``coverage`` layer in a GeoPackage,
            a ``<name>.coverage<ext>`` file beside other formats (see
            :func:`geodetect.io.export.coverage_path`).
        report: a :class:`DetectionReport` to fill (chips read, skipped windows, and
            ``coverage``: the coverage layer, also when the layer is returned).

    Returns:
        GeoDataFrame of Polygons in the target CRS with columns ``class``, ``score``,
        ``area_m2``, ``source`` (file name) and ``model_id``, north to south (then west
        to east); None when written to ``out``.

    Raises:
        InputError: an option no run could use (before anything is read), or inputs the
            run cannot use.
    """
    if options is None:
        if tta_views not in VIEW_COUNTS:
            raise InputError(f"--tta-views {tta_views}: choose 4 (flips) or 8 (all symmetries)")
        options = DetectOptions(tta_views=tta_views if tta else 0, cluster=cluster, **settings)
    elif settings or tta or cluster is not None:
        raise TypeError("give either options or option keywords, not both")
    run = prepare(inputs, model, options)
    report = report if report is not None else DetectionReport()
    with run_store(
        run.manifest, journal, restart=restart, owner=journal_for, keep=keep_journal
    ) as store:
        execute(run, store, executor_for(options), report, progress=progress, on_batch=on_batch)
        return publish(run, store, report, out=out, overwrite=overwrite)


def execute(
    run: PreparedRun,
    store: BlockStore,
    executor: Executor,
    report: DetectionReport,
    *,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Run the blocks ``store`` does not hold yet and commit each as it finishes."""
    plan = run.plan
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
            getattr(store, "directory", "memory"),
        )
    if not pending:
        return
    sink = _Sink(plan, sum(n for _, n in pending), store, report, progress, on_batch)
    try:
        executor.run(run, [b for b, _ in pending], [n for _, n in pending], sink)
    finally:
        sink.close()


def publish(
    run: PreparedRun,
    store: BlockStore,
    report: DetectionReport,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> gpd.GeoDataFrame | None:
    """Merge the store's blocks across seams into the layer: returned, or written to
    ``out`` batch by batch as the merge settles it."""
    merged = merged_batches(
        run.plan,
        store.read,
        crs=run.target.crs,
        nms_iou=run.config.nms_iou,
        metric=run.config.merge_metric,
        second_iou=run.config.second_box_iou,
    )
    origin = provenance(run)
    layers = (_counted(to_layer(m, run.spec, origin), report) for m in merged)
    coverage = coverage_layer(run.plan, store.info, run.target.crs)
    report.coverage = coverage
    if out is not None:
        from geodetect.io.export import write_batches

        write_batches(
            layers,
            out,
            overwrite=overwrite,
            extra={COVERAGE_LAYER: coverage},
            style="detections",
        )
        return None
    parts = list(layers)
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)


def provenance(run: PreparedRun) -> Provenance:
    """What each feature records of where it came from (see :class:`Provenance`)."""
    dates, gsds = {}, {}
    for grid in run.plan.grids:
        gsd = grid_gsd_metres(grid)
        for member in grid.members:
            name = member.info.path.name
            dates.setdefault(name, run.options.date or member.info.date)
            gsds.setdefault(name, gsd)
    return Provenance(run.loaded.model_id, run.config.threshold, dates, gsds)


def _counted(layer: gpd.GeoDataFrame, report: DetectionReport) -> gpd.GeoDataFrame:
    report.objects += len(layer)
    return layer


class _Sink:
    """Where finished work goes: the store, the report and the progress bar."""

    def __init__(self, plan, pending: int, store, report, progress: bool, on_batch) -> None:
        self.store, self.report, self.on_batch = store, report, on_batch
        self.blocks_total = len(plan.blocks)
        self.blocks, self.objects = report.blocks_resumed, 0
        self.bar = progress_bar(
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
            "chips_screened": result.chips_screened,
            "skipped": result.skipped,
            "coverage": result.coverage.tolist(),
        }
        self.store.commit(result.key, result.table, info)
        report = self.report
        report.chips_read += result.chips_read
        report.chips_empty += result.chips_empty
        report.pixels_run += result.pixels_run
        report.chips_screened += result.chips_screened
        report.skipped_windows.extend(result.skipped)
        self.blocks += 1
        self.objects += len(result.table["score"])
        self.bar.set_postfix(
            blocks=f"{self.blocks}/{self.blocks_total}", objects=self.objects, refresh=False
        )

    def close(self) -> None:
        self.bar.close()
