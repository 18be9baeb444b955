"""Options shared by several subcommands, as reusable click decorators."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    state = ctx.ensure_object(dict)
    if param.name == "verbose" and value:
        state["verbosity"] = state.get("verbosity", 0) + value
    if param.name == "quiet" and value:
        state["verbosity"] = -1
    level = {-1: logging.ERROR, 0: logging.INFO}.get(state.get("verbosity", 0), logging.DEBUG)
    logger = logging.getLogger("geodetect")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("geodetect: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return value


def _set_progress(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from geodetect.progress import set_mode

    set_mode(value)
    return value


def verbosity(f: F) -> F:
    """-v/--verbose (repeatable), -q/--quiet (-q also hides progress bars) and
    --progress (bar, json lines for other programs, none)."""
    f = click.option(
        "--progress",
        type=click.Choice(["bar", "json", "none"]),
        default="bar",
        show_default=True,
        expose_value=False,
        is_eager=True,
        callback=_set_progress,
        help="How progress is shown: a bar, or one JSON object per line on stderr for "
        "programs that run geodetect (the QGIS plugin; see the README), or none.",
    )(f)
    f = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=True,
        callback=_set_verbosity,
        help="Only errors; no progress bar.",
    )(f)
    return click.option(
        "-v",
        "--verbose",
        count=True,
        callback=_set_verbosity,
        help="More log output (-vv for debug and tracebacks).",
    )(f)


def _set_network(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    from geodetect.io.remote import set_aws

    if value:
        set_aws(**{param.name: True})
    return value


def network(f: F) -> F:
    """--no-sign-request and --requester-pays for imagery in S3 buckets (as the AWS
    command line names them)."""
    f = click.option(
        "--requester-pays",
        is_flag=True,
        expose_value=False,
        callback=_set_network,
        help="Read s3:// imagery from a requester-pays bucket (your account pays).",
    )(f)
    return click.option(
        "--no-sign-request",
        is_flag=True,
        expose_value=False,
        callback=_set_network,
        help="Read s3:// imagery anonymously (public buckets; no credentials needed).",
    )(f)


def _keep_stac(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.ensure_object(dict).setdefault("stac", {})[param.name] = value
    return value


def _parse_bbox(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is not None:
        try:
            box = tuple(float(v) for v in value.split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
            raise click.BadParameter(
                f"{value!r}: give west,south,east,north in degrees (WGS 84)", param_hint="--bbox"
            )
        value = box
    return _keep_stac(ctx, param, value)


def stac(f: F) -> F:
    """Imagery from a STAC API search (--stac URL with --collection, --bbox, --datetime,
    --max-items) and the asset read from each item (--asset); read back by
    :func:`image_inputs`."""
    for decorator in reversed(
        [
            click.option(
                "--stac",
                "stac_url",
                metavar="URL",
                callback=_keep_stac,
                expose_value=False,
                help="Search this STAC API for the imagery (with --collection, --bbox, "
                "--datetime); each item found is an input, beside any IMAGE given.",
            ),
            click.option(
                "--collection",
                "collections",
                multiple=True,
                metavar="ID",
                callback=_keep_stac,
                expose_value=False,
                help="--stac: the collection(s) to search (repeatable).",
            ),
            click.option(
                "--bbox",
                metavar="W,S,E,N",
                callback=_parse_bbox,
                expose_value=False,
                help="The area, in degrees (WGS 84): where --stac searches, or what is "
                "read from a tile service (an IMAGE such as https://host/{z}/{x}/{y}.png, "
                "read at the model's GSD or --gsd).",
            ),
            click.option(
                "--datetime",
                metavar="WHEN",
                callback=_keep_stac,
                expose_value=False,
                help="--stac: a date or range (2023-06-01/2023-08-31, 2023, ../2022-12-31).",
            ),
            click.option(
                "--max-items",
                type=click.IntRange(min=1),
                callback=_keep_stac,
                expose_value=False,
                help="--stac: at most this many items.",
            ),
            click.option(
                "--asset",
                metavar="KEY",
                callback=_keep_stac,
                expose_value=False,
                help="The asset of each STAC item to read (default: its visual one).",
            ),
        ]
    ):
        f = decorator(f)
    return f


def image_inputs(images: tuple[str, ...], *, required: bool = True) -> list:
    """The command's IMAGE arguments with STAC items and the --stac search resolved
    into inputs (see :mod:`geodetect.io.stac`); ``required``: IMAGE or --stac must be
    given."""
    from geodetect.io.stac import Search, stac_inputs
    from geodetect.io.tiles import with_area

    given = click.get_current_context().obj.get("stac", {})
    search = None
    if given.get("stac_url"):
        search = Search(
            given["stac_url"],
            tuple(given.get("collections") or ()),
            given.get("bbox"),
            given.get("datetime"),
            given.get("max_items"),
        )
    else:
        flags = {"collections": "--collection", "datetime": "--datetime"}
        terms = [
            flag for key, flag in (flags | {"max_items": "--max-items"}).items() if given.get(key)
        ]
        if terms:
            names = ", ".join(terms)
            raise click.UsageError(f"{names} need --stac URL (the STAC API to search)")
        if not images and required:
            raise click.UsageError("give IMAGE... or --stac URL")
    inputs = stac_inputs(images, search=search, asset=given.get("asset"))
    # --bbox without --stac: the area read from the tile services among the inputs.
    return inputs if search is not None else with_area(inputs, given.get("bbox"))


def overwrite(f: F) -> F:
    return click.option(
        "--overwrite", is_flag=True, help="Replace OUT if it already exists (kept otherwise)."
    )(f)


def device(f: F) -> F:
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where the model runs; auto picks CUDA when present.",
    )(f)


def precision(f: F) -> F:
    # geodetect.model.device.PRECISIONS, written out: importing it would load torch
    # for every command's --help (tests/test_model_build.py keeps the two equal).
    return click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Arithmetic: auto uses bf16 where the GPU or CPU computes it natively "
        "(about 2x faster), else fp32.",
    )(f)


def batch_size(default: int | None = None) -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=default,
            show_default=default is not None,
            help="Chips per batch" + ("" if default else " (default: 8 on CPU, 32 on CUDA)."),
        )(f)

    return deco


def workers(f: F) -> F:
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=None,
        help="Reader processes (default: one per spare CPU core; 0 reads in the main process).",
    )(f)


def chip_size(default: int | None = None, *, note: str = "") -> Callable[[F], F]:
    """--chip-size (a multiple of 32); ``note`` says what the default is."""

    def deco(f: F) -> F:
        return click.option(
            "--chip-size",
            type=click.IntRange(min=32),
            default=default,
            show_default=default is not None,
            help="Chip edge in pixels, a multiple of 32" + (f" {note}" if note else "") + ".",
        )(f)

    return deco


def bands(f: F) -> F:
    return click.option(
        "--bands",
        default=None,
        metavar="1,2,3",
        help="1-based raster bands to feed the model, in its band order.",
    )(f)


def architecture(f: F) -> F:
    """--backbone and --preset of a new detector."""
    f = click.option(
        "--preset",
        type=click.Choice(["lite", "standard"]),
        default="lite",
        show_default=True,
        help="FPN/head width: lite = 128 channels, 2 convs; standard = 256, 4.",
    )(f)
    return click.option(
        "--backbone",
        type=click.Choice(["resnet18", "resnet34", "resnet50"]),
        default="resnet18",
        show_default=True,
        help="ResNet body of the detector.",
    )(f)
