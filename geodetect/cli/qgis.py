"""`geodetect qgis install`: put geodetect's Processing plugin into a QGIS profile."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import click

from geodetect.cli import options

log = logging.getLogger("geodetect")

PLUGIN = "geodetect_processing"
SOURCE = Path(__file__).resolve().parents[1] / "qgis_plugin" / PLUGIN


def default_profile() -> Path:
    """QGIS's default profile folder on this system (``$QGIS_CUSTOM_CONFIG_PATH`` moves
    it, as it moves QGIS's)."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom) / "profiles" / "default"
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
        return base / "QGIS" / "QGIS3" / "profiles" / "default"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "QGIS" / "QGIS3" / "profiles" / "default"


def this_command() -> str:
    """The command that runs this geodetect: its console script when there is one beside
    this Python, else ``python -m geodetect``."""
    script = Path(sys.executable).with_name("geodetect.exe" if os.name == "nt" else "geodetect")
    if script.is_file():
        return str(script)
    return f'"{sys.executable}" -m geodetect'


def enable_in_settings(profile: Path) -> Path:
    """Mark the plugin enabled in the profile's ``QGIS/QGIS3.ini`` (the one line of its
    ``[PythonPlugins]`` section; the rest of the file is left as it is)."""
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    lines = ini.read_text(encoding="utf-8").splitlines() if ini.is_file() else []
    entry = f"{PLUGIN}=true"
    try:
        start = lines.index("[PythonPlugins]")
    except ValueError:
        lines += ([""] if lines and lines[-1] else []) + ["[PythonPlugins]", entry]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines)
        )
        keep = [ln for ln in lines[start + 1 : end] if not ln.startswith(f"{PLUGIN}=")]
        lines[start + 1 : end] = [entry, *keep]
    tmp = ini.with_name(ini.name + ".geodetect-tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, ini)
    return ini


@click.group("qgis")
def command() -> None:
    """geodetect inside QGIS: its Processing plugin."""


@command.command("install")
@click.option(
    "--profile",
    "profile",
    type=click.Path(file_okay=False),
    default=None,
    help="QGIS profile folder (default: the default profile of this user, e.g. "
    "~/.local/share/QGIS/QGIS3/profiles/default on Linux).",
)
@click.option(
    "--print-only",
    is_flag=True,
    help="Change nothing: print where the plugin is and where to copy it.",
)
@options.verbosity
def install(profile, print_only, verbose, quiet):
    """Copy the geodetect Processing plugin into a QGIS profile and enable it.

    The plugin runs this geodetect (its command is recorded in the plugin), so QGIS's
    own Python never needs torch. Restart QGIS: the algorithms are in the Processing
    Toolbox under "geodetect" (and `qgis_process list` shows them).
    """
    target_profile = Path(profile) if profile else default_profile()
    target = target_profile / "python" / "plugins" / PLUGIN
    if print_only:
        click.echo(f"plugin: {SOURCE}\ncopy it to: {target}\nthen enable '{PLUGIN}' in QGIS's "
                   f"Plugin Manager (or: qgis_process plugins enable {PLUGIN})")  # fmt: skip
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{PLUGIN}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(SOURCE, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / "geodetect_command.txt").write_text(this_command() + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    ini = enable_in_settings(target_profile)
    click.echo(f"installed the geodetect plugin in {target} (enabled in {ini}); it runs "
               f"{this_command()}. Restart QGIS: Processing Toolbox > geodetect")  # fmt: skip
