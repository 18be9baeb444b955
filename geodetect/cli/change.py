"""`geodetect change`: pools new, removed, kept or resized between two flights."""

from __future__ import annotations

import json
import logging

import click

from geodetect.cli import options
from geodetect.county.change import STATUSES

log = logging.getLogger("geodetect")


@click.command("change")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@click.option("--out", "-o", required=True, metavar="OUT", help="The pools with their change.")
@click.option(
    "--max-shift",
    type=click.FloatRange(0, min_open=True),
    default=3.0,
    show_default=True,
    metavar="M",
    help="Largest offset between the two flights to look for, in metres.",
)
@click.option(
    "--resize",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.3,
    show_default=True,
    metavar="SHARE",
    help="A pool is 'resized' when its area changed by more than this share of the "
    "larger area (boxes of one pool differ by about 0.1 between flights).",
)
@click.option(
    "--class", "classes", multiple=True, metavar="NAME", help="Class that counts (repeatable)."
)
@click.option(
    "--parcels", "parcels_path", default=None, metavar="PARCELS", help="Add each change's parcel."
)
@click.option("--id-field", default=None, metavar="F", help="Parcel id field (with --parcels).")
@click.option(
    "--old-coverage", default=None, metavar="FILE", help="Coverage of OLD (default: its own)."
)
@click.option(
    "--new-coverage", default=None, metavar="FILE", help="Coverage of NEW (default: its own)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@options.overwrite
@options.verbosity
def command(
    old,
    new,
    out,
    max_shift,
    resize,
    classes,
    parcels_path,
    id_field,
    old_coverage,
    new_coverage,
    as_json,
    overwrite,
    verbose,
    quiet,
):
    """Compare the pools of two flights: OLD and NEW layers from `geodetect detect`
    (any GSD, CRS or sensor), matched in map coordinates.

    The offset between the flights (often 1-2 m) is estimated from the pools both saw
    and applied before matching; it is printed with its standard error. Each pool gets
    a status, written to OUT in NEW's CRS:

    \b
      new          in NEW only, where OLD's imagery looked
      removed      in OLD only, where NEW's imagery looked
      resized      in both, area changed by more than --resize
      kept         in both
      not_covered  in one only, where the other flight's imagery did not look

    \b
    Example:
      geodetect change pools_2021.gpkg pools_2024.gpkg --out change.gpkg \\
          --parcels parcels.gpkg --id-field APN
    """
    from geodetect.county import compare_flights, read_detections
    from geodetect.errors import InputError
    from geodetect.io.export import check_output, write_layer
    from geodetect.io.vectors import read_layer

    check_output(out, overwrite=overwrite)
    if id_field is not None and parcels_path is None:
        raise InputError("--id-field needs --parcels: give the parcel layer too")
    result = compare_flights(
        read_detections(old, coverage=old_coverage),
        read_detections(new, coverage=new_coverage),
        max_shift=max_shift,
        resize=resize,
        classes=list(classes) or None,
        parcels=None if parcels_path is None else read_layer(parcels_path),
        id_field=id_field,
    )
    write_layer(result.layer, out, overwrite=overwrite, layer="change", style="change")
    if as_json:
        click.echo(json.dumps(result.summary, indent=2))
    else:
        click.echo(_table(result.summary))
    log.info("%d pool(s) -> %s", len(result.layer), out)


def _table(summary: dict) -> str:
    (dx, dy), (sx, sy) = summary["shift_m"], summary["shift_se_m"]
    if summary["pools_for_shift"]:
        offset = (
            f"offset NEW - OLD: dx {dx:+.2f} m (+/- {sx:.2f}), dy {dy:+.2f} m (+/- {sy:.2f}), "
            f"from {summary['pools_for_shift']} pool(s)"
        )
    else:
        offset = "offset NEW - OLD: none found (no pool pair within --max-shift); none applied"
    lines = [
        offset,
        "",
        f"{'class':<12}" + "".join(f"{s:>12}" for s in STATUSES),
    ]
    for name, counts in summary["by_class"].items():
        lines.append(f"{name:<12}" + "".join(f"{counts[s]:>12}" for s in STATUSES))
    return "\n".join(lines)
