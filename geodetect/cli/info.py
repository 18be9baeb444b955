"""`geodetect info`: print what a model file says about itself (never runs it)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from geodetect.cli import options


@click.command("info")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@options.verbosity
def command(model_path, as_json, verbose, quiet):
    """Print the metadata of MODEL: classes, bands, scaling, GSD, chip size, anchors."""
    from geodetect.model import file_id, read_spec

    spec = read_spec(model_path)
    data = asdict(spec)
    data["model_id"] = file_id(model_path)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, list) and value and isinstance(value[0], float):
            value = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        click.echo(f"{key:<{width}}  {value}")
