"""`geodetect export-onnx`: write a model's network as an ONNX file for ONNX Runtime."""

from __future__ import annotations

import logging

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")


@click.command("export-onnx")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    help="ONNX file to write (FILE.onnx).",
)
@options.chip_size(note="(default: the model's training chip, at least 512, as detect uses)")
@click.option(
    "--for",
    "target",
    type=click.Choice(["geodetect", "deepness", "geodeep"]),
    default="geodetect",
    show_default=True,
    help="geodetect: the network up to its head outputs, for geodetect's ONNX Runtime "
    "path. deepness or geodeep (the same file): a self-contained detector those tools run "
    "(RGB tiles 0-1 in, YOLO-layout candidates out, the model's settings in the metadata).",
)
@options.overwrite
@options.verbosity
def command(model_path, out, chip_size, target, overwrite, verbose, quiet):
    """Export MODEL to ONNX, for a chip size.

    By default the file takes normalised chips [N, bands, S, S] (any N) and gives the
    heads' class logits and box offsets; anchors, thresholds, box voting and NMS stay
    with the model (geodetect.model.onnx.OnnxRetinaNet runs both). Its metadata holds
    the model's description and id.

    With --for deepness (or geodeep) it is a whole detector for the QGIS plugin Deepness
    and the GeoDeep library: band scaling, anchors, box decoding and scores inside the
    graph, and the keys those tools read (resolution, tile size and overlap, score
    threshold, NMS IoU, class names). They lack geodetect's seam ownership, box voting,
    test-time augmentation, mosaics and resume (see the README).
    """
    from pathlib import Path

    from geodetect.detect.plan import default_chip_size, default_overlap
    from geodetect.errors import OutputError
    from geodetect.model import load_model
    from geodetect.model.onnx import check_chip_size, export_onnx

    if chip_size is not None:
        check_chip_size(chip_size)
    if Path(out).exists() and not overwrite:
        # Before loading and tracing the model: that takes seconds.
        raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
    loaded = load_model(model_path)
    size = chip_size or default_chip_size(loaded.spec)
    if target == "geodetect":
        path = export_onnx(loaded, out, chip_size=size, overwrite=overwrite)
    else:
        from geodetect.model.portable import export_portable

        overlap = default_overlap(loaded.spec, size)
        path = export_portable(loaded, out, chip_size=size, overlap=overlap, overwrite=overwrite)
    log.info(
        "wrote %s: model %s (%s), %d px chips of %d bands",
        path,
        loaded.model_id,
        loaded.path.name,
        size,
        loaded.spec.num_bands,
    )
