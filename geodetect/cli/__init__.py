"""The `geodetect` command: a click group whose subcommands live one per module."""

from __future__ import annotations

import _thread
import contextlib
import functools
import importlib
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

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
    "weights": "geodetect.cli.weights",
    "export-onnx": "geodetect.cli.export_onnx",
    "parcels": "geodetect.cli.parcels",
    "change": "geodetect.cli.change",
    "sample": "geodetect.cli.review:sample",
    "estimate": "geodetect.cli.review:estimate",
    "qgis": "geodetect.cli.qgis",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(_COMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _COMMANDS:
            module_name, _, attribute = _COMMANDS[name].partition(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:
                    return None  # command not shipped in this build
                raise
            return getattr(module, attribute or "command")
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geodetect")
def cli() -> None:
    """Find objects (swimming pools first) in georeferenced images and write a GIS layer."""


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"geodetect: error: {message}", err=True)
    sys.exit(code)


def _interrupted() -> None:
    """Say the run was interrupted and exit 130."""
    # CPython (up to 3.13 at least) marks a KeyboardInterrupt that leaves an exec() or
    # eval() of source text as unhandled even when it is caught further up, and `python
    # -m geodetect` then dies by SIGINT at exit instead of exiting 130. Ctrl-C during an
    # import often lands there: dataclasses and namedtuple build their methods with
    # exec (torch defines hundreds). Running any source text clears the mark.
    exec("pass", {})
    _fail("interrupted; no output was written", 130)


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies under ``exc``: Python 3.11 wraps one raised in a
    ``__set_name__`` (a dataclass field, while a module is imported) in a RuntimeError,
    and a failure while unwinding from Ctrl-C has it as its context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


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


def _keep_interrupts(hook):
    """A ``sys.unraisablehook`` that hands a Ctrl-C on to the main thread instead of
    letting ``hook`` drop it.

    Python cannot raise where it calls fork handlers, weakref callbacks and ``__del__``;
    a KeyboardInterrupt there is reported as unraisable and lost. Ctrl-C in a terminal
    often lands in logging's after-fork handler while the reader processes start: the
    readers stopped, the lost interrupt left the main process running, and it either
    failed 5 s later ("DataLoader worker exited unexpectedly") or ran to the end.
    """

    def unraisable(info) -> None:
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            _interrupt_main_soon()
            return
        hook(info)

    return unraisable


def _interrupt_main_soon() -> None:
    # Not from the hook itself: the main thread would raise it inside the hook, where it
    # is lost again. A real signal also wakes a main thread blocked on a reader's queue.
    if hasattr(signal, "pthread_kill"):
        main = threading.main_thread().ident
        resend = functools.partial(signal.pthread_kill, main, signal.SIGINT)
    else:
        resend = _thread.interrupt_main
    timer = threading.Timer(0.05, resend)
    timer.daemon = True
    timer.start()


# Library warnings geodetect expects, said in its own words: (warning class name or
# None, pattern on the message's first line or None, log level, sentence; {0}, {1}...
# are the pattern's groups). Most are DEBUG: geodetect deals with the matter itself.
_EXPECTED_WARNINGS = (
    (
        None,
        re.compile(r"Encountered more than (\d+) detections in a single image"),
        logging.DEBUG,
        "AP (torchmetrics) counts the {0} highest-scoring boxes of each chip, as COCO does",
    ),
    (
        None,
        re.compile(r"This DataLoader will create (\d+) worker processes"),
        logging.DEBUG,
        "{0} reader processes, more than torch suggests for this machine "
        "(--workers sets the number)",
    ),
    (
        None,
        re.compile(r"torch\.meshgrid: in an upcoming release"),
        logging.DEBUG,
        "torch.meshgrid indexing notice from torchvision (harmless)",
    ),
    (
        "NotGeoreferencedWarning",
        None,
        logging.DEBUG,
        "a raster has no georeferencing (geodetect checks and reports the CRS itself)",
    ),
    (
        None,
        re.compile(r"'crs' was not provided"),
        logging.WARNING,
        "the layer is written without a CRS, as the imagery has none; GIS software "
        "cannot place it on a map",
    ),
)


def _origin(filename: str) -> str:
    """The top-level package (or script name) a warning was raised from."""
    path = os.path.abspath(filename)
    # Longest first: site-packages may lie inside the current directory (a venv).
    for entry in sorted({os.path.abspath(p) for p in sys.path}, key=len, reverse=True):
        if path.startswith(entry + os.sep):
            return path[len(entry) + 1 :].split(os.sep)[0].removesuffix(".py")
    return os.path.basename(filename).removesuffix(".py")


class _WarningsToLog:
    """A ``warnings.showwarning`` that logs instead of printing ``file:line: UserWarning``.

    Expected library warnings become a geodetect sentence (mostly at DEBUG); any other
    says its first line and the package it came from at WARNING. Each distinct message
    is said once; with -vv, every one Python lets through, with its class and location.
    """

    def __init__(self) -> None:
        self.log = logging.getLogger("geodetect.warnings")
        self.said: set[tuple[str, str]] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip()
        first = text.splitlines()[0] if text else category.__name__
        debugging = self.log.isEnabledFor(logging.DEBUG)
        key = (category.__name__, first)
        if key in self.said and not debugging:
            return
        self.said.add(key)
        where = f"{category.__name__} from {filename}:{lineno}"
        for name, pattern, level, sentence in _EXPECTED_WARNINGS:
            match = pattern.search(first) if pattern is not None else None
            if (name is None or name == category.__name__) and (pattern is None or match):
                said = sentence.format(*(match.groups() if match else ()))
                if debugging:
                    self.log.log(level, "%s [%s: %s]", said, where, first)
                else:
                    self.log.log(level, "%s", said)
                return
        if debugging:
            self.log.warning("%s (%s)", first, where)
        else:
            self.log.warning("%s (from %s)", first, _origin(filename))


@contextlib.contextmanager
def _warnings_to_log() -> Iterator[None]:
    previous = warnings.showwarning
    warnings.showwarning = _WarningsToLog()
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every failure into one line on stderr and an exit code."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _unless_debugging(sys.__excepthook__)
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _keep_interrupts(_unless_debugging(sys.__unraisablehook__))
    try:
        with _warnings_to_log():
            cli.main(args=argv, prog_name="geodetect", standalone_mode=False)
    except GeodetectError as exc:
        _fail(str(exc))
    except (click.exceptions.Abort, KeyboardInterrupt):
        # click turns a KeyboardInterrupt inside a command into Abort
        _interrupted()
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
        if _caused_by_interrupt(exc):
            _interrupted()
        if logging.getLogger("geodetect").isEnabledFor(logging.DEBUG):
            raise
        _fail(
            f"unexpected {type(exc).__name__}: {exc} (run with -v for a traceback and report it)", 3
        )
