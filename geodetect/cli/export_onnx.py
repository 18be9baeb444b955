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
@click.option(
    "--int8",
    is_flag=True,
    help="Quantise the network to int8 (static, per channel, QDQ; the heads' last "
    "convolutions stay fp32), calibrated on chips of the --calibrate imagery: smaller, "
    "and faster on most CPUs (see benchmarks/README.md).",
)
@click.option(
    "--calibrate",
    "calibration_images",
    multiple=True,
    metavar="IMAGE",
    help="Imagery to calibrate --int8 on (files, globs or folders, as detect reads "
    "them; repeat the option for more): like what the model will meet.",
)
@options.overwrite
@options.verbosity
def command(
    model_path, out, chip_size, target, int8, calibration_images, overwrite, verbose, quiet
):
    """Export MODEL to ONNX, for a chip size.

    By default the file takes normalised chips [N, bands, S, S] (any N) and gives the
    heads' class logits and box offsets; anchors, thresholds, box voting and NMS stay
    with the model (geodetect.model.runtime.OnnxRuntime runs both). Its metadata holds
    the model's description and id.

    With --for deepness (or geodeep) it is a whole detector for the QGIS plugin Deepness
    and the GeoDeep library: band scaling, anchors, box decoding and scores inside the
    graph, and the keys those tools read (resolution, tile size and overlap, score
    threshold, NMS IoU, class names). They lack geodetect's seam ownership, box voting,
    test-time augmentation, mosaics and resume (see the README).
    """
    import tempfile
    from pathlib import Path

    from geodetect.detect.plan import default_chip_size, default_overlap
    from geodetect.errors import InputError, OutputError
    from geodetect.model import load_model
    from geodetect.model.onnx import check_chip_size, export_onnx

    if chip_size is not None:
        check_chip_size(chip_size)
    if int8 and not calibration_images:
        raise InputError("--int8 needs --calibrate IMAGE: imagery like what the model will meet")
    if calibration_images and not int8:
        raise InputError("--calibrate is for --int8; add --int8 or leave --calibrate out")
    if Path(out).exists() and not overwrite:
        # Before loading and tracing the model: that takes seconds.
        raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
    loaded = load_model(model_path)
    size = chip_size or default_chip_size(loaded.spec)
    chips = calibration_chips(loaded, calibration_images, size, target) if int8 else None
    with tempfile.TemporaryDirectory(prefix="geodetect-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if int8 else out
        if target == "geodetect":
            path = export_onnx(loaded, fp32, chip_size=size, overwrite=overwrite)
        else:
            from geodetect.model.portable import export_portable

            overlap = default_overlap(loaded.spec, size)
            path = export_portable(
                loaded, fp32, chip_size=size, overlap=overlap, overwrite=overwrite
            )
        if int8:
            from geodetect.model.quantize import quantize_int8

            path = quantize_int8(fp32, out, chips)
    log.info(
        "wrote %s: model %s (%s), %s%d px chips of %d bands",
        path,
        loaded.model_id,
        loaded.path.name,
        f"int8 calibrated on {len(chips)} chips, " if int8 else "",
        size,
        loaded.spec.num_bands,
    )


def calibration_chips(loaded, images, chip_size: int, target: str) -> list:
    """Chips of ``images`` spread over them, scaled as the exported network's input:
    normalised for geodetect's, 0-1 for the Deepness/GeoDeep one."""
    import numpy as np

    from geodetect.detect.choose import sample_chips
    from geodetect.detect.options import DetectOptions
    from geodetect.detect.prepare import prepare

    run = prepare(list(images), loaded, DetectOptions(chip_size=chip_size, runtime="torch"))
    chips = sample_chips(run.plan, run.scaling).chips
    if target != "geodetect":
        mean, std = (np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in run.scaling[0])
        chips = (chips.numpy() * std + mean) / 255.0
        return list(chips.astype(np.float32))
    return list(chips.numpy())
