"""`geodetect detect`: run a model over scenes and mosaics and write one layer."""

from __future__ import annotations

import logging

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")


def parse_bands(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        bands = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give 1-based band numbers like 1,2,3", param_hint="--bands"
        ) from None
    if not bands or min(bands) < 1:
        raise click.BadParameter(f"{text!r}: band numbers start at 1", param_hint="--bands")
    return bands


@click.command("detect")
@click.argument("images", nargs=-1, metavar="IMAGE...")
@click.option(
    "--model",
    "-m",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Model file written by `geodetect train`.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    help="Output layer: .gpkg, .geojson, .shp, .parquet or .fgb; '-' for GeoJSON on stdout.",
)
@options.chip_size(note="(default: the model's training chip, at least 512)")
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Chip overlap in pixels (default: 1.2x the model's typical object, the 95th "
    "percentile of its training objects; larger objects are joined from their pieces).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Minimum score (default: the model's, the best F1 on its validation area).",
)
@click.option(
    "--nms-iou",
    type=click.FloatRange(0, 1),
    default=None,
    help="Same-class detections overlapping more than this IoU are merged (default: the "
    "model's, 0.4-0.5 from how much its training labels overlap).",
)
@click.option(
    "--merge-metric",
    type=click.Choice(["iou", "ios"]),
    default="iou",
    show_default=True,
    help="Overlap measure for merging: IoU, or intersection over the smaller box "
    "(merges boxes cut by chip edges into the whole one).",
)
@click.option(
    "--tta/--no-tta",
    default=None,
    help="Test-time augmentation: also run flipped and turned copies of each chip and "
    "fuse the answers. Off by default: on real 0.2 m imagery it bought +0.01 AP50 for "
    "4-8x the time.",
)
@click.option(
    "--tta-views",
    type=click.Choice(["4", "8"]),
    default=None,
    help="Views fused by test-time augmentation (implies --tta): all 8 symmetries of the "
    "square (the default with --tta), or the 4 flips (twice as fast).",
)
@click.option(
    "--gsd",
    default="model",
    show_default=True,
    metavar="model|native|METRES",
    help="Pixel size of the target grid: 'model' (the model's; imagery more than 15% off "
    "it is resampled on the fly), a size in metres, or 'native' (each file's own pixels, "
    "no warps). A tile service is read at the zoom level that serves it.",
)
@click.option(
    "--crs",
    default=None,
    metavar="EPSG:XXXX",
    help="CRS of the target grid and the layer (default: the first file's); files in "
    "other CRSs are warped onto the grid, so objects on their seams are found whole.",
)
@options.bands
@options.batch_size()
@options.device
@options.precision
@options.workers
@click.option(
    "--runtime",
    type=click.Choice(["auto", "torch", "onnxruntime", "int8"]),
    default="auto",
    show_default=True,
    help="What runs the network: torch, ONNX Runtime (fp32) or ONNX Runtime int8 "
    "(calibrated on chips of the inputs; CPU). auto: on a CPU, for runs of 256 chips or "
    "more, the fastest of the three for this model on this machine, timed once and "
    "remembered (int8 only where its boxes agree with fp32's); torch on a GPU.",
)
@click.option(
    "--crop/--no-crop",
    default=True,
    show_default=True,
    help="Run the network only on the part of a chip that holds imagery where a chip "
    "lies over the edge of the data (a mosaic's outline, scattered tiles); --no-crop "
    "runs whole chips.",
)
@click.option(
    "--screen",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Look at each chip at half resolution first and skip the chips where the "
    "network finds nothing there (fields, forest, water: a quarter of a full pass each). "
    "auto: where a sample of 32 of the run's chips says at least 40%% would be skipped "
    "(runs of 128 chips or more); off: every chip through the full pass.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="Compile the network with torch.compile: slower start, then faster on some "
    "hardware (see benchmarks/README.md).",
)
@click.option(
    "--cluster",
    default=None,
    metavar="local:N|ADDRESS",
    help="Run blocks on Dask: local:N starts N worker processes on this machine; "
    "tcp://HOST:8786 uses a running cluster (its workers need geodetect and the files).",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Chips per block side; a block is the unit of progress, journal and scale-out "
    "(the layer does not depend on it).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Discard the journal of an earlier, unfinished run and start afresh.",
)
@click.option(
    "--keep-journal",
    is_flag=True,
    help="Keep the journal of finished blocks (.OUT.geodetect/ beside OUT) after the "
    "layer is written.",
)
@click.option(
    "--allow-no-crs", is_flag=True, help="Accept rasters without a CRS; the layer then has no CRS."
)
@click.option(
    "--skip-bad-chips",
    is_flag=True,
    help="Carry on past unreadable windows of damaged files and list them at the end.",
)
@click.option(
    "--date",
    default=None,
    metavar="YYYY-MM-DD",
    help="The imagery's acquisition date, written on every feature (default: each file's "
    "own, where its metadata states one, e.g. ACQUISITION_DATE).",
)
@options.stac
@options.network
@options.overwrite
@options.verbosity
def command(
    images,
    model_path,
    out,
    chip_size,
    overlap,
    threshold,
    nms_iou,
    merge_metric,
    tta,
    tta_views,
    gsd,
    crs,
    bands,
    batch_size,
    device,
    precision,
    workers,
    runtime,
    screen,
    crop,
    compile_,
    cluster,
    block_size,
    restart,
    keep_journal,
    allow_no_crs,
    skip_bad_chips,
    date,
    overwrite,
    verbose,
    quiet,
):
    """Detect objects in IMAGE... and write OUT.

    IMAGE: GeoTIFF/VRT files, globs or folders; URLs (https://, s3://, gs://, az://,
    /vsicurl/...) of Cloud-Optimized GeoTIFFs, read by range requests; @FILE for a list
    of inputs, one per line; STAC items or item collections (.json files or URLs).
    --stac URL searches a STAC API instead (or as well).

    All files are read on one target grid (the first file's CRS at the model's pixel
    size; files in other CRSs or resolutions through a warp), so an object on a file
    seam is reported once, whole. Finished blocks are journalled beside OUT: if the run
    stops, the same command continues where it stopped.

    Each feature records where it came from: class, score, area_m2, source (file
    name), model_id, date (acquisition date: --date, or the file's metadata), gsd_m
    (the pixel size it was read at) and threshold. The ground read with valid imagery
    is written beside the layer: a 'coverage' layer of a GeoPackage, or
    NAME.coverage.EXT beside other formats.

    \b
    Example:
      geodetect detect mosaic/*.tif --model pools.model --out pools.gpkg
    """
    from geodetect.detect import DetectionReport, DetectOptions, detect
    from geodetect.detect.journal import journal_dir
    from geodetect.io.export import check_output
    from geodetect.model import load_model, resolve_device

    check_output(out, overwrite=overwrite, side_layers=["coverage"])
    use_tta = tta if tta is not None else tta_views is not None
    settings = DetectOptions(  # every option checked before anything is read
        chip_size=chip_size,
        overlap=overlap,
        threshold=threshold,
        nms_iou=nms_iou,
        merge_metric=merge_metric,
        tta_views=int(tta_views or 8) if use_tta else 0,
        gsd=gsd,
        crs=crs,
        bands=parse_bands(bands),
        batch_size=batch_size,
        block_size=block_size,
        device=device,
        precision=precision,
        workers=workers,
        cluster=cluster,
        allow_no_crs=allow_no_crs,
        skip_bad_chips=skip_bad_chips,
        compile=compile_,
        crop=crop,
        runtime=runtime,
        screen=screen,
        date=date,
    )
    inputs = options.image_inputs(images)
    loaded = load_model(model_path, device=resolve_device(device))
    report = DetectionReport()
    detect(
        inputs,
        loaded,
        settings,
        journal=None if out == "-" else journal_dir(out),
        journal_for=out,
        restart=restart,
        keep_journal=keep_journal,
        progress=not quiet,
        report=report,
        out=out,
        overwrite=overwrite,
    )
    if report.skipped_windows:
        log.warning("%d window(s) could not be read and were skipped:", len(report.skipped_windows))
        for message in report.skipped_windows:
            log.warning("  %s", message)
    target = "stdout" if out == "-" else out
    resumed = f", {report.chips_resumed} more from the journal" if report.chips_resumed else ""
    if report.chips_screened:
        resumed += f", {report.chips_screened} skipped by the screen"
    log.info(
        "%d object(s) from %d chip(s) (%d empty%s; %.1f Mpx through the network) -> %s",
        report.objects,
        report.chips_read,
        report.chips_empty,
        resumed,
        report.pixels_run / 1e6,
        target,
    )
    if report.coverage is not None and out != "-":
        from geodetect.io.export import coverage_path

        where = coverage_path(out) or f"{out} (layer 'coverage')"
        log.info(
            "coverage: %.3f km2 of valid imagery from %d file(s) -> %s",
            report.coverage["area_m2"].sum() / 1e6,
            len(report.coverage),
            where,
        )
