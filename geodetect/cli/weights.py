"""`geodetect weights`: place the ImageNet backbone weights in torch's cache once, by
download or from a copied file, so that training uses them offline."""

from __future__ import annotations

import click

from geodetect.cli import options


@click.group("weights")
def command():
    """Starting weights, kept in torch's cache ($TORCH_HOME/hub/checkpoints, default
    ~/.cache/torch/hub/checkpoints): the synthetic starting model new models start
    from by default (`geodetect train` builds it the first time it needs it), and
    ImageNet backbone weights for `geodetect train --start imagenet`.
    """


@command.command("list")
@options.verbosity
def list_weights(verbose, quiet):
    """One line per backbone: cached or missing, file size, cache path."""
    from geodetect.model.weights import cached_weights
    from geodetect.train.start import synthetic_start_path

    for entry in cached_weights():
        status = "missing" if entry.size is None else "cached"
        size = "-" if entry.size is None else f"{entry.size / 2**20:.1f} MiB"
        click.echo(f"{entry.backbone:<9}  {status:<7}  {size:>9}  {entry.path}")
    start = synthetic_start_path()
    for path in sorted(start.parent.glob("geodetect-start-*.model")):
        size = f"{path.stat().st_size / 2**20:.1f} MiB"
        click.echo(f"synthetic start  {size:>9}  {path}")
    if not start.is_file():
        click.echo(f"synthetic start  missing    {start} (built by the first `geodetect train`)")


@command.command("fetch")
@click.argument("backbones", metavar="[BACKBONE]...", nargs=-1)
@options.verbosity
def fetch_weights(backbones, verbose, quiet):
    """Download torchvision's ImageNet weights of each BACKBONE (default resnet18; 'all'
    for resnet18 to resnet152) into torch's cache; cached ones are left alone.

    Without internet: copy the file from a machine that has it and use
    'geodetect weights import FILE'.
    """
    from geodetect.model.weights import fetch_imagenet_weights, resolve_backbones

    for backbone in resolve_backbones(backbones):
        entry, downloaded = fetch_imagenet_weights(backbone, progress=not quiet)
        click.echo(f"{backbone}: {'downloaded to' if downloaded else 'already in'} {entry.path}")


@command.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--backbone",
    metavar="NAME",
    default=None,
    help="The ResNet the weights are for (default: from torchvision's file name, "
    "else from the parameter names and shapes).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace other weights already cached for that backbone."
)
@options.verbosity
def import_weights(file, backbone, overwrite, verbose, quiet):
    """Check FILE (e.g. resnet18-f37072fd.pth copied from another machine) and copy it
    into torch's cache under torchvision's file name.

    FILE must be a state dict a torchvision ResNet accepts as it is; it is loaded as
    tensors only, never unpickled in full.
    """
    from geodetect.model.weights import import_imagenet_weights

    entry, copied = import_imagenet_weights(file, backbone=backbone, overwrite=overwrite)
    if copied:
        click.echo(f"{entry.backbone}: {file} imported to {entry.path}")
    else:
        click.echo(f"{entry.backbone}: {entry.path} already holds this file")


@command.command("synth")
@options.architecture
@options.device
@options.overwrite
@options.verbosity
def synth_weights(backbone, preset, device, overwrite, verbose, quiet):
    """Build the synthetic starting model of a backbone and preset now and keep it in
    torch's cache (`geodetect train` otherwise builds it the first time it needs it).

    It is a detector trained on a `geodetect synth` suburb for a fixed number of seeded
    steps, so every machine builds the same start; nothing is downloaded.
    """
    from geodetect.train.run import build_synthetic_start
    from geodetect.train.start import start_recipe

    recipe = start_recipe(backbone, preset)
    click.echo(f"building {recipe.name} ({recipe.cost(device)})", err=True)
    path = build_synthetic_start(recipe, device=device, overwrite=overwrite, progress=not quiet)
    click.echo(f"{backbone}/{preset}: synthetic starting model in {path}")
