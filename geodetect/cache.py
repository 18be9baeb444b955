"""Where geodetect keeps what it makes once per machine: exported networks, runtime
timings, tile-service windows and their tiles."""

from __future__ import annotations

import os
from pathlib import Path

from geodetect.errors import OutputError


def cache_root() -> Path:
    """``$GEODETECT_CACHE``, else ``$XDG_CACHE_HOME/geodetect`` (default
    ``~/.cache/geodetect``)."""
    root = os.environ.get("GEODETECT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "geodetect"


def cache_folder(name: str, *, what: str, instead: str = "") -> Path:
    """The cache's folder ``name``, created.

    Raises:
        OutputError: it cannot be created; says how to choose another (and ``instead``,
            what else the user can do).
    """
    folder = cache_root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot create the {what} ({exc.strerror}); set GEODETECT_CACHE "
            f"to a writable folder{instead}"
        ) from None
    return folder
