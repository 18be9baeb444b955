"""The `geodetect` command: a click group whose subcommands live one per module."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

import click

from geodetect._version import __version__
from geodetect.errors import GeodetectError

# Subcommands are imported only when called so `geodetect --help` does not pay for torch.
_COMMANDS = {
    "detect": "geodetect.cli.detect",
    "info": "geodetect.cli.info",
    "train": "geodetect.cli.train",
    "evaluate": "geodetect.cli.evaluate",
    "synth": "geodetect.cli.synth",
    "demo": "geodetect.cli.demo",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_COMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            try:
                module = importlib.import_module(_COMMANDS[name])
            except ModuleNotFoundError as exc:
                if exc.name == _COMMANDS[name]:
                    return None  # command not shipped in this build
                raise
            return module.command
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geodetect")
def cli() -> None:
    """Find objects (swimming pools first) in georeferenced images and write a GIS layer."""


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"geodetect: error: {message}", err=True)
    sys.exit(code)


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out.
    raise KeyboardInterrupt


def _unless_debugging(default_hook):
    """Python prints some errors itself, outside any handler: GDAL's error callback
    choking on undecodable bytes of a garbled file, a reader process whose parent was
    interrupted mid-handover. Without -vv they must not put a traceback under the
    one-line error; with -vv they print as usual."""

    def hook(*args) -> None:
        if logging.getLogger("geodetect").isEnabledFor(logging.DEBUG):
            default_hook(*args)

    return hook


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every failure into one line on stderr and an exit code."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _unless_debugging(sys.__excepthook__)
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unless_debugging(sys.__unraisablehook__)
    try:
        cli.main(args=argv, prog_name="geodetect", standalone_mode=False)
    except GeodetectError as exc:
        _fail(str(exc))
    except click.exceptions.Abort:
        _fail("interrupted; no output was written", 130)
    except KeyboardInterrupt:
        _fail("interrupted; no output was written", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or 2)
    except BrokenPipeError:
        # stdout closed early (`geodetect detect ... --out - | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except MemoryError:
        _fail("out of memory; use a smaller --batch-size or --chip-size")
    except OSError as exc:
        # Disk full, permission denied and the like, from code that did not wrap them.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _fail(f"{exc.strerror or exc}{where}")
    except Exception as exc:  # noqa: BLE001 - last resort: one line, details in the log
        if logging.getLogger("geodetect").isEnabledFor(logging.DEBUG):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (run with -v for a traceback and report it)", 3
        )
