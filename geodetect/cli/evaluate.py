"""`geodetect evaluate`: score a detection layer against truth polygons."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")


@click.command("evaluate")
@click.argument("detections", metavar="DETECTIONS")
@click.option(
    "--truth",
    "-t",
    required=True,
    metavar="TRUTH",
    help="Reference polygons: any vector file (.gpkg, .geojson, .shp, .fgb, .parquet).",
)
@click.option(
    "--iou",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="IoU a detection needs to match a truth polygon.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the full result (with the precision-recall curve) as JSON.",
)
@click.option(
    "--pr-curve",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="PNG",
    help="Also draw the precision-recall curve to this image.",
)
@click.option(
    "--truth-layer",
    default=None,
    metavar="NAME",
    help="Layer of TRUTH to read when it holds several.",
)
@click.option(
    "--detections-layer",
    default=None,
    metavar="NAME",
    help="Layer of DETECTIONS to read when it holds several.",
)
@click.option(
    "--class-field",
    default="class",
    show_default=True,
    help="Class column in both layers; if TRUTH lacks it, classes are ignored.",
)
@click.option(
    "--score-field",
    default="score",
    show_default=True,
    help="Confidence column of DETECTIONS, used to rank them.",
)
@click.option(
    "--crs",
    default=None,
    metavar="CRS",
    help="CRS to match in, e.g. EPSG:32633 (default: that of DETECTIONS; "
    "geographic CRSs are replaced by the local UTM zone).",
)
@click.option(
    "--aoi",
    default=None,
    metavar="AOI",
    help="Area-of-interest polygons: only objects centred inside are scored, and "
    "densities are over its area (default: the bounding box of TRUTH).",
)
@click.option(
    "--outlines",
    is_flag=True,
    help="Match against the truth outlines themselves instead of their bounding boxes "
    "(the default, since detections are boxes).",
)
@click.option(
    "--errors",
    default=None,
    metavar="OUT",
    help="Also write what to look at: each false alarm (by kind: duplicate, extra, loose, "
    "background) and each missed object, with its score, as one layer styled by kind "
    "(any vector format: .gpkg, .geojson, .shp, .fgb, .parquet).",
)
@options.overwrite
@options.verbosity
def command(
    detections,
    truth,
    iou,
    as_json,
    pr_curve,
    truth_layer,
    detections_layer,
    class_field,
    score_field,
    crs,
    aoi,
    outlines,
    errors,
    overwrite,
    verbose,
    quiet,
):
    """Compare DETECTIONS (e.g. from `geodetect detect`) with TRUTH polygons.

    Layers in different CRSs are reprojected, never assumed; matching runs in metres.
    Prints a table of counts, precision, recall, F1, AP50, AP75 and AP50:95 per class,
    the matched pairs' median IoU and centre error, and object densities. False alarms
    (FP) are split by kind: dup (a second match of an object already matched), extra (a
    box on a found object, IoU >= 0.1 with it, that does not match it), loose (IoU
    0.1 to --iou with an object nobody found) and bg (background: nothing there).

    \b
    Example:
      geodetect evaluate pools.gpkg --truth labels.gpkg --pr-curve pr.png
      geodetect evaluate pools.gpkg --truth labels.gpkg --errors look_at.gpkg
    """
    from geodetect.evaluate import check_plot_path, error_layer, evaluate
    from geodetect.io.export import check_output, write_layer
    from geodetect.io.vectors import read_layer

    if pr_curve is not None:
        check_plot_path(pr_curve, overwrite=overwrite)
    if errors is not None:
        check_output(errors, overwrite=overwrite)
    det_layer = read_layer(detections, layer=detections_layer)
    truth_layer_ = read_layer(truth, layer=truth_layer)
    result = evaluate(
        det_layer,
        truth_layer_,
        iou=iou,
        score_field=score_field,
        class_field=class_field,
        crs=crs,
        aoi=None if aoi is None else read_layer(aoi),
        boxes=not outlines,
    )
    if pr_curve is not None:
        result.plot_pr_curve(pr_curve)
        log.info("precision-recall curve -> %s", pr_curve)
    if errors is not None:
        layer = error_layer(result, det_layer, truth_layer_, score_field=score_field)
        write_layer(layer, errors, overwrite=overwrite, layer="errors", style="errors")
        counts = layer["kind"].value_counts()
        log.info(
            "%d to look at (%s) -> %s",
            len(layer),
            ", ".join(f"{counts[k]} {k}" for k in counts.index),
            errors,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        click.echo(result.summary())
