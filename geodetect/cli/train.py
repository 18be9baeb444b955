"""`geodetect train`: train a detector on labelled imagery and write one model file."""

from __future__ import annotations

import logging

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")


@click.command("train")
@click.argument("images", nargs=-1, metavar="[IMAGE]...")
@click.option(
    "--labels",
    "-l",
    type=click.Path(),
    default=None,
    help="Label layer (polygons, boxes, or points with a size), any vector format and CRS.",
)
@click.option(
    "--review",
    type=click.Path(),
    default=None,
    help="A review filled in QGIS ('geodetect sample') over IMAGE..., with or without "
    "--labels: detections judged pool and the pools drawn in search squares are learnt as "
    "objects, rejected ones as hard negatives (their reasons counted in `geodetect info`); "
    "only the judged boxes and the done squares count as known ground (elsewhere nothing "
    "is learnt as background). With --labels, files holding labels stay wholly known.",
)
@click.option("--layer", default=None, help="Layer of a multi-layer label file.")
@click.option(
    "--voc",
    type=click.Path(),
    default=None,
    help="Instead of IMAGE + --labels: a PASCAL VOC chip folder (images/, labels/) "
    "as ArcGIS 'Export Training Data For Deep Learning' writes it.",
)
@click.option(
    "--coco",
    type=click.Path(),
    default=None,
    help="Instead of IMAGE + --labels: a COCO detection JSON file.",
)
@click.option(
    "--yolo",
    type=click.Path(),
    default=None,
    help="Instead of IMAGE + --labels: a YOLO folder as Ultralytics uses it "
    "(images/, labels/, optionally with train/ val/ test/) or Roboflow exports it "
    "(train/images, train/labels..., data.yaml); boxes or polygons.",
)
@click.option(
    "--out", "-o", required=True, type=click.Path(dir_okay=False), help="Model file to write."
)
@click.option(
    "--class-field",
    default=None,
    help="Label attribute holding the class (default: 'class' if present, else "
    "every object is 'pool').",
)
@click.option(
    "--point-size",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Side in metres of point labels without a 'size' attribute.",
)
@options.architecture
@options.chip_size(
    default=None,
    note="(default: 128, or 1.5 times the 95th percentile of object sizes; larger "
    "objects are learnt from windows shrunk to the chip)",
)
@click.option(
    "--gsd",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="METRES",
    help="Training pixel size in metres, at which the model then detects (default: the "
    "rasters' median, coarser when the objects are large in pixels).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Planned epochs (with --max-minutes alone the budget decides). Given none of "
    "--epochs, --steps and --max-minutes, training takes 8000 steps: about 30 minutes on "
    "a 2-core CPU, a few on a GPU.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Planned training steps instead of --epochs: the schedule fits them, so the "
    "same --seed gives the same model on a slow or busy machine as on a fast one.",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Wall-clock budget for the whole run, saving included (a first run's one-time "
    "build of the synthetic start comes on top).",
)
@options.batch_size()
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate of the one-cycle schedule (default 2e-3).",
)
@click.option(
    "--find-lr", is_flag=True, help="Run a learning-rate sweep first and use its suggestion."
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=0.2,
    show_default=True,
    help="Share of the area (not of random chips) kept for validation.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many validated epochs without a better AP50 + AP50:95 "
    "(default: never; the one-cycle schedule does its best work at the end, as the "
    "learning rate decays).",
)
@options.device
@options.precision
@options.workers
@click.option(
    "--resume",
    type=click.Path(dir_okay=False),
    default=None,
    help="Continue training from this model file (same classes and bands).",
)
@click.option(
    "--start",
    type=click.Choice(["synthetic", "imagenet", "none"]),
    default="synthetic",
    show_default=True,
    help="What a new model starts from: a detector trained on a synthetic suburb "
    "(built once per machine from a fixed recipe, a few CPU minutes, then cached: the "
    "same start whatever else is cached), torchvision's ImageNet backbone weights "
    "(`geodetect weights fetch` first), or random weights.",
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from this model file's weights instead (same --backbone and --preset); "
    "scaling and chip size come from the new data.",
)
@click.option(
    "--hard-examples",
    is_flag=True,
    help="Twice during training, scan the training area for the model's most confident "
    "false alarms and train on chips around them too (costs some steps).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@options.stac
@options.network
@options.overwrite
@options.verbosity
def command(
    images,
    labels,
    review,
    layer,
    voc,
    coco,
    yolo,
    out,
    class_field,
    point_size,
    backbone,
    preset,
    chip_size,
    gsd,
    epochs,
    steps,
    max_minutes,
    batch_size,
    lr,
    find_lr,
    val_fraction,
    patience,
    device,
    precision,
    workers,
    resume,
    start,
    init,
    hard_examples,
    seed,
    overwrite,
    verbose,
    quiet,
):
    """Train a detector on IMAGE... (GeoTIFFs, globs, folders, URLs, @lists, STAC
    items; as for detect) labelled by --labels,
    or on a chip folder (--voc), COCO file (--coco) or YOLO folder (--yolo), and write
    the model to --out.

    Labels in another CRS are reprojected; a part of the area (--val-fraction) is kept
    aside to measure AP50 each epoch, and the best model is written.

    \b
    Examples:
      geodetect train ortho.tif --labels pools.gpkg --out pools.model --max-minutes 10
      geodetect train county/*.tif --review review.gpkg --resume pools.model --out v2.model
    """
    from geodetect.io.labels import LabelSource
    from geodetect.train import train
    from geodetect.train.options import TrainOptions

    source = LabelSource.of(
        options.image_inputs(images, required=False),
        labels,
        voc=voc,
        coco=coco,
        yolo=yolo,
        layer=layer,
        class_field=class_field,
        point_size=point_size,
        review=review,
    )
    result = train(
        source,
        TrainOptions.of(
            out=out,
            backbone=backbone,
            preset=preset,
            chip_size=chip_size,
            gsd=gsd,
            epochs=epochs,
            steps=steps,
            max_minutes=max_minutes,
            batch_size=batch_size,
            lr=lr,
            find_lr=find_lr,
            val_fraction=val_fraction,
            patience=patience,
            device=device,
            precision=precision,
            workers=workers,
            overwrite=overwrite,
            resume=resume,
            start=start,
            init=init,
            hard_examples=hard_examples,
            seed=seed,
            progress=not quiet,
        ),
    )
    click.echo(result.summary())
    _prepare_detection(out, device)


def _prepare_detection(model_path, device: str) -> None:
    """Export, quantise and time the runtimes that ``detect`` will choose from on this
    machine, so the first detection with the new model pays for none of it (once per
    machine and model; said in the log with what it cost). ``GEODETECT_PREPARE_DETECT=0``
    leaves it to the first ``detect`` (the test suite's many toy models do)."""
    import os

    from geodetect.detect.choose import warm_up
    from geodetect.errors import GeodetectError

    if os.environ.get("GEODETECT_PREPARE_DETECT", "1") == "0":
        return

    try:
        picked = warm_up(model_path, device=device)
    except GeodetectError as exc:  # the model is written; detect will try again
        log.warning("could not prepare detection on this machine: %s", exc)
        return
    if picked:
        log.info("detect will run: %s", picked)
