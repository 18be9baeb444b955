"""`geodetect parcels`: pools per parcel, and where they disagree with the tax roll."""

from __future__ import annotations

import json
import logging

import click

from geodetect.cli import options
from geodetect.county.parcels import MIN_COVERED, ROLL_FORMS

log = logging.getLogger("geodetect")


@click.command("parcels")
@click.argument("detections", metavar="DETECTIONS")
@click.option(
    "--parcels",
    "parcels_path",
    required=True,
    metavar="PARCELS",
    help="Parcel polygons: any vector file and CRS (reprojected, never assumed).",
)
@click.option("--out", "-o", required=True, metavar="OUT", help="The parcels with their pools.")
@click.option(
    "--id-field", default=None, metavar="F", help="Parcel id field (named in the summary)."
)
@click.option(
    "--roll-field",
    default=None,
    metavar="F",
    help=f"The roll's pools per parcel: {ROLL_FORMS}. Adds new/missing/agrees statuses.",
)
@click.option(
    "--min-area",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    metavar="M2",
    help="Ignore pools smaller than this many square metres (e.g. 10 where only pools "
    "over 10 m2 are taxed).",
)
@click.option(
    "--class",
    "classes",
    multiple=True,
    metavar="NAME",
    help="Detection class that counts (repeatable; default: every class).",
)
@click.option(
    "--coverage",
    default=None,
    metavar="FILE",
    help="The ground the run looked at (default: the coverage 'geodetect detect' wrote "
    "with DETECTIONS).",
)
@click.option(
    "--parcels-layer", default=None, metavar="NAME", help="Layer of PARCELS when it holds several."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@options.overwrite
@options.verbosity
def command(
    detections,
    parcels_path,
    out,
    id_field,
    roll_field,
    min_area,
    classes,
    coverage,
    parcels_layer,
    as_json,
    overwrite,
    verbose,
    quiet,
):
    """Count the pools of DETECTIONS (from `geodetect detect`) in each parcel of
    PARCELS, and with --roll-field compare them with the tax roll.

    Each pool counts once, in the parcel holding the larger part of it. Each parcel gets
    pools, water_m2, best_score, covered (the share of it the imagery showed) and a
    status, written to OUT with the parcel's own fields and CRS:

    \b
    with --roll-field:
      new          more pools found than the roll lists (the review list, by score)
      missing      fewer found than the roll lists, on a parcel the imagery covered
      agrees       as many as the roll lists
      not_covered  less than {covered:.0%} of the parcel was looked at (no imagery, or
                   nodata), and nothing found that the roll lacks: never 'missing'
    without it: pool, no_pool, not_covered

    A yes/no roll field compares presence; a count (any value above 1) compares counts.

    \b
    Example:
      geodetect parcels pools.gpkg --parcels parcels.gpkg --roll-field HAS_POOL \\
          --id-field APN --min-area 10 --out review.gpkg
    """
    from geodetect.county import join_parcels, read_detections
    from geodetect.io.export import check_output, write_layer
    from geodetect.io.vectors import read_layer

    check_output(out, overwrite=overwrite)
    layer = read_detections(detections, coverage=coverage)
    parcels = read_layer(parcels_path, layer=parcels_layer)
    result = join_parcels(
        layer,
        parcels,
        id_field=id_field,
        roll_field=roll_field,
        min_area=min_area,
        classes=list(classes) or None,
    )
    write_layer(
        result.parcels, out, overwrite=overwrite, layer="parcels", multi=True, style="parcels"
    )
    summary = result.summary
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_table(summary))
    log.info("%d parcel(s) -> %s", summary["parcels"], out)


command.help = command.help.replace("{covered:.0%}", f"{MIN_COVERED:.0%}")


def _table(summary: dict) -> str:
    lines = [f"{'status':<12} {'parcels':>8}"]
    lines += [f"{status:<12} {count:>8}" for status, count in summary["status"].items()]
    lines.append(f"{'total':<12} {summary['parcels']:>8}")
    lines.append("")
    lines.append(f"pools in parcels: {summary['pools']}")
    lines.append(f"pools outside every parcel: {summary['pools_outside_parcels']}")
    if summary["min_area_m2"]:
        lines.append(
            f"pools under {summary['min_area_m2']:g} m2 ignored: {summary['pools_below_min_area']}"
        )
    if summary.get("new"):
        more = summary["status"]["new"] - len(summary["new"])
        shown = ", ".join(map(str, summary["new"])) + (f" and {more} more" if more > 0 else "")
        lines.append(f"new, best score first: {shown}")
    return "\n".join(lines)
