"""`geodetect synth`: write a synthetic suburban orthomosaic with pool ground truth."""

from __future__ import annotations

import re
from pathlib import Path

import click

from geodetect.cli import options
from geodetect.errors import InputError

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX×,]\s*(\d+))?\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"2500"`` -> (2500, 2500); ``"2500x2000"`` -> (width 2500, height 2000)."""
    match = _SIZE.match(text)
    if match is None:
        raise InputError(
            f"--size {text!r} is not a pixel size; give WIDTH or WIDTHxHEIGHT, "
            "e.g. 2500 or 2500x2000."
        )
    width = int(match.group(1))
    return width, int(match.group(2) or width)


def parse_origin(text: str | None) -> tuple[float, float] | None:
    """``"405000,2942000"`` -> (x0, y0) of the upper-left corner in CRS units."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        x0, y0 = (float(p) for p in parts)
    except ValueError:
        raise InputError(
            f"--origin {text!r} is not X,Y; give the upper-left corner in CRS "
            "units, e.g. 405000,2942000."
        ) from None
    return x0, y0


@click.command("synth", short_help="Make a synthetic suburb orthomosaic with known pools.")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The scene is a pure function of the seed and the options.",
)
@click.option(
    "--size",
    "size_text",
    default="2500",
    show_default=True,
    metavar="W[xH]",
    help="Scene size in pixels: 2500 or 2500x2000 (width x height).",
)
@click.option(
    "--gsd",
    type=float,
    default=0.3,
    show_default=True,
    help="Ground sample distance, metres per pixel.",
)
@click.option(
    "--tiles",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="Cut the scene into KxK GeoTIFFs on one pixel grid (scene_rR_cC.tif).",
)
@click.option(
    "--crs",
    default="EPSG:32617",
    show_default=True,
    help="Any projected CRS: EPSG code, WKT or PROJ string.",
)
@click.option(
    "--origin",
    "origin_text",
    default=None,
    metavar="X,Y",
    help="Upper-left corner in CRS units (default: near Cape Coral, FL, per seed).",
)
@click.option(
    "--compress",
    type=click.Choice(["jpeg", "deflate"]),
    default="deflate",
    show_default=True,
    help="GeoTIFF compression (jpeg: YCbCr, quality 90).",
)
@click.option(
    "--confusers",
    is_flag=True,
    help="Also draw tennis and basketball courts and solar panels, which models trained "
    "from today's synthetic start take for pools (not with --county).",
)
@click.option(
    "--county",
    is_flag=True,
    help="Write a synthetic county with known answers instead: two flights (old/, new/) "
    "whose pools changed, parcels.gpkg with a roll holding planted errors, county.json.",
)
@click.option(
    "--shift",
    "shift_text",
    default="1.5,-0.7",
    show_default=True,
    metavar="DX,DY",
    help="With --county: how far off (metres) the new flight's georeferencing is.",
)
@options.overwrite
@options.verbosity
def command(
    out_dir: Path,
    seed: int,
    size_text: str,
    gsd: float,
    tiles: int,
    crs: str,
    origin_text: str | None,
    compress: str,
    confusers: bool,
    county: bool,
    shift_text: str,
    overwrite: bool,
    verbose: int,
    quiet: bool,
) -> None:
    """Write a procedural suburban orthomosaic and truth.gpkg to OUT_DIR.

    The scene has roads, parcels, houses, lawns, trees and pools of varied shape and
    state (clean, green, covered), plus things detectors mistake for pools (blue tarps
    and roofs, blue cars, ponds, dark shadows, trampolines; with --confusers also
    courts and solar panels). truth.gpkg holds the pool outlines (layer "pools") and
    distractors.gpkg those look-alikes (layer "distractors").

    With --county: the same suburb flown twice (old/ and new/, each a scene as above;
    pool_id numbers the pools alike in both), with pools added, removed and shrunk
    between the flights and the new flight's georeferencing off by --shift; and
    parcels.gpkg: the parcels with a yes/no roll (HAS_POOL) holding planted errors, and
    a 'truth' layer with each parcel's true pools and expected status.
    """
    scene_args = {
        "seed": seed,
        "size": parse_size(size_text),
        "gsd": gsd,
        "tiles": tiles,
        "crs": crs,
        "compress": compress,
        "overwrite": overwrite,
    }
    if county:
        from geodetect.synth.county import synth_county

        made = synth_county(out_dir, shift=parse_shift(shift_text), **scene_args)
        click.echo(
            f"{out_dir}: old/ {made.old.n_pools} pools, new/ {made.new.n_pools} pools "
            f"({len(made.added)} added, {len(made.removed)} removed, {len(made.shrunk)} "
            f"shrunk, shifted {made.shift[0]:+g},{made.shift[1]:+g} m), {made.parcels_path}"
        )
        return
    from geodetect.synth import synth_scene  # keeps `geodetect --help` fast

    scene = synth_scene(
        out_dir, origin=parse_origin(origin_text), confusers=confusers, **scene_args
    )
    images = (
        str(scene.image_paths[0])
        if len(scene.image_paths) == 1
        else f"{len(scene.image_paths)} tiles {out_dir / 'scene_r*_c*.tif'}"
    )
    click.echo(
        f"{images} + {scene.truth_path}: {scene.n_pools} pools, "
        f"{scene.n_distractors} distractors ({scene.width}x{scene.height} px, "
        f"{scene.gsd:g} m, {scene.crs})"
    )


def parse_shift(text: str) -> tuple[float, float]:
    try:
        dx, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: give DX,DY in metres, e.g. 1.5,-0.7") from None
    return dx, dy
