"""`geodetect sample` and `geodetect estimate`: a short review in QGIS, then the count
with its confidence interval."""

from __future__ import annotations

import json
import logging

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")


@click.command("sample")
@click.argument("detections", metavar="DETECTIONS")
@click.option("--out", "-o", required=True, metavar="REVIEW.gpkg", help="The review to fill in.")
@click.option(
    "--n",
    "count",
    type=click.IntRange(8),
    default=200,
    show_default=True,
    help="Detections to judge, drawn evenly from four score strata.",
)
@click.option(
    "--squares",
    type=click.IntRange(2),
    default=20,
    show_default=True,
    help="Random search squares in which to draw the pools the layer missed.",
)
@click.option(
    "--square-size",
    type=click.FloatRange(0, min_open=True),
    default=100.0,
    show_default=True,
    metavar="M",
    help="Side of a search square in metres.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw.")
@click.option("--aoi", default=None, metavar="AOI", help="Polygons to estimate over.")
@options.overwrite
@options.verbosity
def sample(detections, out, count, squares, square_size, seed, aoi, overwrite, verbose, quiet):
    """Draw a review of DETECTIONS (from `geodetect detect`) for a person to check in
    QGIS; `geodetect estimate` turns it into a count with a 95 % confidence interval.

    REVIEW.gpkg holds four layers. In 'review' (the detections to judge) fill
    verdict with pool or not_pool and, for a rejection, reason with tarp, solar,
    above_ground or other. In 'squares' (random search squares over the ground the
    imagery covered) look for every pool in each square, draw those the layer missed
    into 'missed', and set done to yes. 'strata' records the draw.

    \b
    Example:
      geodetect sample pools.gpkg --n 200 --out review.gpkg
    """
    from geodetect.county import read_detections
    from geodetect.county.review import draw_review, write_review
    from geodetect.io.export import check_output
    from geodetect.io.vectors import read_layer

    check_output(out, overwrite=overwrite)
    review = draw_review(
        read_detections(detections),
        n=count,
        squares=squares,
        square_size=square_size,
        seed=seed,
        aoi=None if aoi is None else read_layer(aoi),
    )
    write_review(review, out, overwrite=overwrite)
    inside = int((review.items["square"] >= 0).sum())
    log.info(
        "%d detection(s) to judge (%d drawn from %d score strata, %d more in %d search "
        "square(s)) -> %s",
        len(review.items),
        int(review.items["in_sample"].sum()),
        len(review.strata),
        inside - int((review.items["in_sample"] & (review.items["square"] >= 0)).sum()),
        len(review.squares),
        out,
    )


@click.command("estimate")
@click.argument("detections", metavar="DETECTIONS")
@click.option("--reviewed", required=True, metavar="REVIEW.gpkg", help="The review, filled in.")
@click.option(
    "--partial",
    is_flag=True,
    help="Estimate from the judged detections and done squares of an unfinished review.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@options.verbosity
def estimate(detections, reviewed, partial, as_json, verbose, quiet):
    """The number of pools (and their water area) with a 95 % confidence interval, from
    DETECTIONS and a REVIEW drawn by `geodetect sample` and filled in.

    Estimator: the share of pools in each score stratum (a stratified random sample)
    gives how many detections are pools; the search squares (a random cluster sample)
    give the share of all pools the layer found; the total is their ratio, with the
    two samples' relative variances added and the interval taken on the log scale, so
    it is never below zero and fits a ratio's skew. It covers sampling error, not the
    reviewer's mistakes. An unfinished review is refused unless --partial.

    \b
    Example:
      geodetect estimate pools.gpkg --reviewed review.gpkg
    """
    from geodetect.county import read_detections
    from geodetect.county.estimate import estimate as estimate_total
    from geodetect.errors import InputError
    from geodetect.io.review import read_review

    layer = read_detections(detections)
    items, squares, missed, strata = read_review(reviewed)
    if int(strata["layer_size"].iloc[0]) != len(layer.detections):
        raise InputError(
            f"{reviewed}: was drawn from a layer of {int(strata['layer_size'].iloc[0])} "
            f"detections, but {detections} holds {len(layer.detections)}; give the layer "
            "the review was drawn from"
        )
    result = estimate_total(items, squares, missed, strata, source=reviewed, partial=partial)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(
        f"pools: {result.pools:,.0f} (95 % CI {result.pools_low:,.0f} - "
        f"{result.pools_high:,.0f})\n"
        f"water: {result.water_m2:,.0f} m2 (95 % CI {result.water_low:,.0f} - "
        f"{result.water_high:,.0f})\n"
        f"detections {result.detections:,}: precision {result.precision:.3f}; recall "
        f"{result.recall:.3f} from {result.squares} square(s) ({result.missed} missed pool(s) "
        "drawn)"
    )
    for row in result.strata:
        low, high = row["scores"]
        click.echo(
            f"  stratum {row['stratum']} (scores {low:.2f}-{high:.2f}): "
            f"{row['judged']} of {row['detections']} judged, precision {row['precision']:.2f}"
        )
    if result.reasons:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in result.reasons.items() if v)
        click.echo(f"false alarms by reason: {shares}")
