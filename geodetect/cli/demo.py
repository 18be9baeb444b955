"""`geodetect demo`: the whole workflow on synthetic data, with its scores."""

from __future__ import annotations

import click

from geodetect.cli import options


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    default="demo_output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for data, model and outputs.",
)
@click.option(
    "--train-minutes",
    type=click.FloatRange(min=0.2),
    default=4.0,
    show_default=True,
    help="Training budget (a machine's first run builds the synthetic start once "
    "before it; the log says what that costs on this machine).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@options.device
@options.verbosity
def command(out_dir, train_minutes, seed, device, verbose, quiet):
    """Synthesise a suburb, train a pool detector, detect over a separate 2x2-file mosaic,
    evaluate it, and write pools.gpkg, pools.geojson, metrics.json and quicklook.png."""
    from geodetect.demo import run_demo

    result = run_demo(
        out_dir, train_minutes=train_minutes, seed=seed, device=device, progress=not quiet
    )
    m = result.metrics
    centre = "n/a" if m.centre_error_mean_m is None else f"{m.centre_error_mean_m:.3f} m"
    click.echo(f"held-out mosaic: {m.n_truth} pools, {m.n_detections} detections")
    click.echo(
        f"  AP50 {m.ap50:.3f}   AP50:95 {m.ap50_95:.3f}   precision {m.precision:.3f}   "
        f"recall {m.recall:.3f}   F1 {m.f1:.3f}"
    )
    click.echo(
        f"  duplicates {m.duplicates}   extra boxes {m.extra_boxes}   AP75 {m.ap75:.3f}   "
        f"mean centre error {centre}"
    )
    click.echo(
        f"outputs in {result.out_dir}/: {', '.join(p.name for p in result.layers)}, "
        f"metrics.json, {result.quicklook.name}, {result.model_path.name}"
    )
    click.echo(f"total {result.minutes:.1f} min")
