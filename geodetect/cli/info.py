"""`geodetect info`: print what a model file says about itself (never runs it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from geodetect.cli import options

# Longest value shown in the summary; paths keep their end (the file name).
_MAX_TEXT = 120
# Lists and dicts longer than this are counted, not printed.
_MAX_ITEMS = 8


@click.command("info")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print all the metadata as JSON.")
@options.verbosity
def command(model_path, as_json, verbose, quiet):
    """Summarise MODEL: classes, bands, GSD, chip size, anchors and how it was trained.

    --json prints the complete metadata (every training path and epoch).
    """
    from geodetect.model import file_id, read_spec

    spec = read_spec(model_path)
    model_id = file_id(model_path)
    if as_json:
        data = asdict(spec)
        data["model_id"] = model_id
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    rows = _model_rows(spec, model_id)
    training = _training_rows(spec.training, spec.score_threshold) if spec.training else []
    width = max(len(label) for label, _ in rows + training) + 2
    for label, text in rows:
        click.echo(f"{label:<{width}}  {text}")
    click.echo("")
    if not training:
        click.echo("training (not recorded in this model file)")
        return
    click.echo("training")
    for label, text in training:
        click.echo(f"  {label:<{width - 2}}  {text}")


def _model_rows(spec, model_id: str) -> list[tuple[str, str]]:
    """(label, text) lines for the architecture and input contract of ``spec``."""
    rows = [
        ("model id", model_id),
        ("classes", _listed(spec.classes)),
        ("bands", f"{_listed(spec.band_names)} ({spec.input_dtype})"),
        ("band scaling", f"mean {_listed(spec.band_mean)}; std {_listed(spec.band_std)}"),
        ("GSD", "unknown" if spec.gsd is None else f"{spec.gsd:.3g} m"),
        ("chip size", f"{spec.chip_size} px"),
        (
            "backbone",
            f"{spec.backbone}, preset {spec.preset} ({spec.fpn_channels} FPN channels, "
            f"head depth {spec.head_convs})",
        ),
        (
            "anchors",
            f"sizes {_listed(spec.anchor_base_sizes)} px; scales "
            f"{_listed(spec.anchor_scales)}; ratios {_listed(spec.anchor_ratios)}",
        ),
    ]
    if spec.typical_object_px is not None:
        rows.append(("typical object", f"{spec.typical_object_px:.0f} px (95th percentile)"))
    if spec.max_object_px is not None:
        rows.append(("largest object", f"{spec.max_object_px:.0f} px"))
    rows += [
        ("score threshold", _text(spec.score_threshold)),
        ("one object above", f"IoU {_text(spec.nms_iou)} (NMS)"),
        (
            "second boxes",
            "kept"
            if spec.second_box_iou is None
            else f"IoU above {_text(spec.second_box_iou)} with a centre inside the better box",
        ),
        (
            "box loss",
            f"{spec.box_loss} (focal alpha {_text(spec.focal_alpha)}, "
            f"gamma {_text(spec.focal_gamma)})",
        ),
        ("box voting", "off" if spec.box_vote_iou in (None, 1) else f"IoU {spec.box_vote_iou}"),
        ("geodetect", f"{spec.geodetect_version} (model format {spec.format_version})"),
    ]
    return rows


def _review_text(counts: dict[str, Any]) -> str:
    """What a model learnt from a review, in one line."""
    reasons = counts.get("reasons") or {}
    why = ", ".join(f"{k} {v}" for k, v in reasons.items())
    return (
        f"{counts.get('confirmed', 0)} confirmed detections and {counts.get('missed', 0)} "
        f"drawn missed pools as objects; {counts.get('rejected', 0)} rejected as hard "
        f"negatives{f' ({why})' if why else ''}; {counts.get('squares', 0)} done search "
        f"squares as complete ground; {counts.get('unjudged', 0)} unjudged left out"
    )


def _training_rows(training: dict[str, Any], threshold: float) -> list[tuple[str, str]]:
    """(label, text) lines for the training record: counts, not lists.

    Tolerates any subset of the keys that :func:`geodetect.train.train` writes, since
    older files lack some and VOC/COCO-trained models have no image list.
    """
    rest = dict(training)
    rows: list[tuple[str, str]] = []

    source = rest.pop("source", None)
    if isinstance(source, dict):
        source = dict(source)
        images = source.pop("images", None)
        if isinstance(images, list):
            rows.append(("images", _first_of(images)))
        for key, label in (
            ("labels", "labels"),
            ("voc", "VOC dataset"),
            ("coco", "COCO file"),
            ("review", "review"),
        ):
            if key in source:
                rows.append((label, _text(source.pop(key))))
        counts = source.pop("review_counts", None)
        if isinstance(counts, dict):
            rows.append(("learnt from review", _review_text(counts)))
        rows += [(f"source {key}", _text(value)) for key, value in source.items()]
    elif source is not None:
        rows.append(("source", _text(source)))

    if "objects" in rest:
        rows.append(("objects", _text(rest.pop("objects"))))
    if "train_chips" in rest or "val_chips" in rest:
        train, val = rest.pop("train_chips", None), rest.pop("val_chips", None)
        rows.append(("chips", f"{_text(train)} training, {_text(val)} validation"))
    if "epochs" in rest:
        text = _text(rest.pop("epochs"))
        if "steps" in rest:
            text += f" ({_text(rest.pop('steps'))} steps)"
        rows.append(("epochs", text))
    if "stop_reason" in rest:
        rows.append(("stop reason", _text(rest.pop("stop_reason"))))
    if "minutes" in rest:
        rows.append(("time", f"{_text(rest.pop('minutes'))} min"))
    if "device" in rest or "precision" in rest:
        device, precision = rest.pop("device", None), rest.pop("precision", None)
        rows.append(("device", ", ".join(_text(v) for v in (device, precision) if v is not None)))
    best = {k: rest.pop(k) for k in ("val_map_50", "val_map", "best_epoch") if k in rest}
    centre_error = rest.pop("val_centre_error_px", None)
    if best:
        if best.get("val_map_50") is None:
            rows.append(("best validation", "none (no validation area)"))
        else:
            text = f"AP50 {_text(best['val_map_50'])}, AP50:95 {_text(best.get('val_map'))}"
            if best.get("best_epoch") is not None:
                text += f" at epoch {_text(best['best_epoch'])}"
            if centre_error is not None:
                text += f"; centre error {_text(centre_error)} px"
            rows.append(("best validation", text))
    if rest.get("score_threshold", threshold) == threshold:
        rest.pop("score_threshold", None)  # the one printed above
    for key, label in (
        ("score_threshold", "threshold chosen"),
        ("lr", "learning rate"),
        ("batch_size", "batch size"),
        ("seed", "seed"),
    ):
        if key in rest:
            rows.append((label, _text(rest.pop(key))))
    resumed = rest.pop("resumed_from", None)
    if resumed is not None:
        rows.append(("resumed from", _text(resumed)))
    history = rest.pop("history", None)
    if isinstance(history, list):
        rows.append(("history", f"{len(history)} epochs (--json lists them)"))
    elif history is not None:
        rows.append(("history", _text(history)))
    rows += [(key.replace("_", " "), _text(value)) for key, value in rest.items()]
    return rows


def _first_of(items: list) -> str:
    """'580: first ... and 579 more' for a long list of paths."""
    if not items:
        return "0"
    more = f" ... and {len(items) - 1} more" if len(items) > 1 else ""
    return f"{len(items)}: {_text(items[0])}{more}"


def _listed(items: list) -> str:
    shown = ", ".join(_text(v) for v in items[:_MAX_ITEMS])
    more = f" ... and {len(items) - _MAX_ITEMS} more" if len(items) > _MAX_ITEMS else ""
    return shown + more


def _text(value: Any) -> str:
    """One short line for any metadata value; big lists and dicts are counted."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        if len(value) > _MAX_ITEMS or any(isinstance(v, dict | list) for v in value):
            return f"{len(value)} items"
        return _listed(list(value))
    if isinstance(value, dict):
        text = json.dumps(value, sort_keys=True, default=str)
        return text if len(text) <= _MAX_TEXT else f"{len(value)} entries"
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_TEXT else "..." + text[-(_MAX_TEXT - 3) :]
