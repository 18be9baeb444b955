"""Preparing a detection run: the inputs on their target grids, the model's settings
filled in, the plan of blocks and the manifest a journal records, as one value
(:class:`PreparedRun`) that every executor and the publishing step read.

Preparing reads each file's header once and nothing of its pixels (except to tell a
wholly-nodata file with the wrong band layout from an unusable one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from geodetect.detect.choose import choose_runtime, sample_chips
from geodetect.detect.options import DetectOptions
from geodetect.detect.plan import Plan, RunConfig, default_chip_size, default_overlap, make_plan
from geodetect.detect.runner import band_scaling
from geodetect.detect.screen import SCREEN_SAMPLE, Screen, choose_screen
from geodetect.detect.tta import DIHEDRAL, FLIPS
from geodetect.errors import RasterError
from geodetect.io.raster import (
    MosaicGrid,
    SceneInfo,
    configure_gdal,
    describe_all,
    expand_inputs,
    grid_gsd_metres,
    grid_has_data,
)
from geodetect.io.target import TargetChoice, choose_target, target_grids
from geodetect.io.tiles import resolve_services
from geodetect.model import LoadedModel, ModelSpec, autocast_dtype, load_model, resolve_device

log = logging.getLogger(__name__)

# Crops of chips over the edge of the data have sides on multiples of this: at most 16
# shapes of a 512 px chip, each met often enough that the runtimes' per-shape set-up
# (oneDNN primitives, ONNX Runtime's memory plans) is paid once.
CROP_STEP = 128


@dataclass(frozen=True)
class PreparedRun:
    """A detection run ready to execute.

    Attributes:
        options: what was asked.
        loaded: the model, on ``device``.
        device: where the network runs.
        grids: the target grids (one per lattice and band layout).
        target: the CRS and lattice of the run (the layer's CRS is ``target.crs``).
        config: the settled :class:`RunConfig` (what decides the detections).
        plan: grids, chip grids and the blocks worth running.
        scaling: each grid's band scaling (means, standard deviations).
        manifest: what a journal records, so a rerun continues only the same run.
    """

    options: DetectOptions
    loaded: LoadedModel
    device: torch.device
    grids: tuple[MosaicGrid, ...]
    target: TargetChoice
    config: RunConfig
    plan: Plan
    scaling: tuple[tuple[list[float], list[float]], ...]
    manifest: dict

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec


def prepare(
    inputs: Sequence[str | os.PathLike] | Sequence[MosaicGrid],
    model: str | os.PathLike | LoadedModel,
    options: DetectOptions,
) -> PreparedRun:
    """Find and describe the inputs, choose the target grid, settle the run's settings
    from the model and plan the blocks.

    Raises:
        InputError, RasterError: inputs or settings the run cannot use.
        ModelFileError: an unreadable model file.
    """
    configure_gdal()
    device = resolve_device(options.device)
    autocast_dtype(device, options.precision)  # refuses bf16 where the device lacks it
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device)
    spec = loaded.spec
    grids, target = _grids(inputs, spec, options)
    grids = _usable(grids, spec, options.bands)
    _say_gsd(grids, spec, target)
    config = run_config(options, spec, device)
    plan = make_plan(grids, config)
    scaling = tuple(band_scaling(g, spec) for g in grids)
    runtime = choose_runtime(
        options.runtime, loaded, device, config, plan, scaling, compile=options.compile
    )
    config = replace(config, runtime=runtime)
    config = replace(config, screen=_screen(options, loaded, device, config, plan, scaling))
    manifest = {
        "inputs": [_file_stamp(m.info) for g in grids for m in g.members],
        "model": loaded.model_id,
        "options": config.identity(),
        # bf16 and fp32, a GPU and a CPU, torch and ONNX Runtime, eager and compiled
        # networks give slightly different boxes: never mixed.
        "compute": runtime.compute(device),
        "grids": [
            [g.crs.to_wkt() if g.crs else None, list(g.transform)[:6], list(g.bands)] for g in grids
        ],
    }
    log.debug(
        "%d chip(s) in %d block(s) over %d grid(s)", plan.chips_total, len(plan.blocks), len(grids)
    )
    return PreparedRun(
        options, loaded, device, tuple(grids), target, config, plan, scaling, manifest
    )


def _screen(options, loaded, device, config: RunConfig, plan: Plan, scaling) -> Screen | None:
    """The run's screen (see :mod:`geodetect.detect.screen`); ``auto`` looks at chips
    spread over the plan through the run's own runtime."""
    if options.screen == "off" or not plan.blocks:
        return None
    return choose_screen(
        options.screen,
        lambda: config.runtime.build(loaded, device, config.chip_size),
        config.threshold,
        plan.chips_total,
        lambda: sample_chips(plan, scaling, SCREEN_SAMPLE).chips,
    )


def run_config(options: DetectOptions, spec: ModelSpec, device: torch.device) -> RunConfig:
    """The options with the model's settings filled in where they say None."""
    chip_size = options.chip_size or default_chip_size(spec)
    config = RunConfig(
        chip_size=chip_size,
        overlap=default_overlap(spec, chip_size) if options.overlap is None else options.overlap,
        threshold=spec.score_threshold if options.threshold is None else options.threshold,
        nms_iou=spec.nms_iou if options.nms_iou is None else options.nms_iou,
        second_box_iou=spec.second_box_iou,
        merge_metric=options.merge_metric,
        views={0: (), 4: FLIPS, 8: DIHEDRAL}[options.tta_views],
        block_chips=options.block_size,
        precision=options.precision,
        skip_bad_chips=options.skip_bad_chips,
        batch_size=options.batch_size or (32 if device.type == "cuda" else 8),
        # Test-time views turn chips, so they stay square and whole.
        crop_step=CROP_STEP if options.crop and not options.tta_views else 0,
    )
    typical = spec.typical_object_px or spec.max_object_px
    if options.overlap is None and typical:
        log.info(
            "chips %d px, overlap %d px (1.2x the model's typical object, %.0f px; larger "
            "ones are joined from their pieces)",
            config.chip_size,
            config.overlap,
            typical,
        )
    return config


def _file_stamp(info: SceneInfo) -> list:
    """A file's identity in the journal: its name, size and modification time, or for a
    remote file what its server says (size, ETag, Last-Modified), never credentials."""
    path = info.path
    if info.remote_stamp is not None:
        return [path.identity or str(path), *info.remote_stamp]
    try:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def _grids(
    inputs, spec: ModelSpec, options: DetectOptions
) -> tuple[list[MosaicGrid], TargetChoice]:
    """The run's target grids and where they lie."""
    if _all_grids(inputs):
        grids = list(inputs)
        return grids, TargetChoice(grids[0].crs, None, None)
    # A tile service is read at --gsd, else at the model's GSD.
    gsd = options.gsd if isinstance(options.gsd, float) else spec.gsd
    files = resolve_services(expand_inputs(inputs), gsd)
    infos = describe_all(files, allow_no_crs=options.allow_no_crs)
    choice = choose_target(infos, model_gsd=spec.gsd, gsd=options.gsd, crs=options.crs)
    return target_grids(infos, choice), choice


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
            grid = _with_bands(grid, spec, bands)
        except RasterError:
            if grid_has_data(grid):
                raise
            log.warning("%s holds no valid pixels; nothing to detect there", grid.paths[0].name)
            continue
        usable.append(grid)
    return usable


def _with_bands(grid: MosaicGrid, spec: ModelSpec, bands: Sequence[int] | None) -> MosaicGrid:
    """The grid reading ``bands`` (default: its data bands), checked against the model."""
    first = grid.members[0].info
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= first.count]
        if bad:
            raise RasterError(
                f"{first.path}: has {first.count} band(s); --bands {bad} "
                f"does not exist (choose from 1..{first.count})"
            )
        grid = grid.with_bands(bands)
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
    return grid


def _all_grids(inputs: Any) -> bool:
    return (
        isinstance(inputs, list | tuple)
        and bool(inputs)
        and all(isinstance(g, MosaicGrid) for g in inputs)
    )
