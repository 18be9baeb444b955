"""Typed exceptions raised by the library; only the CLI turns them into messages."""

from __future__ import annotations


class GeodetectError(Exception):
    """Base class: the message is one sentence naming the file, the problem and the fix."""


class InputError(GeodetectError):
    """An input path is missing, unreadable or of the wrong kind."""


class RasterError(InputError):
    """A raster cannot be used as it is (no CRS, wrong bands, damaged data...)."""


class LabelError(InputError):
    """A label layer cannot be used (empty, wrong geometry type, no overlap...)."""


class ModelFileError(InputError):
    """A model file is corrupt, foreign or unsafe; it is never executed."""


class OutputError(GeodetectError):
    """An output cannot be written (exists, unknown format, unwritable, disk full).

    ``transient`` is False only when the same command can never succeed (a format that
    cannot hold the layer); otherwise a finished run's journal is worth keeping."""

    transient = True


class DownloadError(GeodetectError):
    """A file cannot be downloaded (no network, server refusal, damaged transfer)."""


class RunError(GeodetectError):
    """A run cannot go on: a reader or worker process died, or a system limit was hit.
    Finished blocks stay in the journal, so the same command continues after the fix."""
