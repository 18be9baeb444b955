"""The journal: each finished block's owned detections, on disk beside the output; and
the store's life over a run (:func:`run_store`), owned here for every caller.

``.NAME.geodetect/`` holds ``manifest.json`` (inputs, model, options: what the run is)
and one Parquet part ``KEY.parquet`` per finished block. Every file is written to a
temporary name, synced and renamed, so after ``kill -9`` at any moment a part is whole
or absent; rerunning the same command skips the blocks that have a part. A run with
other inputs, model or options refuses to mix its blocks with these (``--restart``
starts afresh).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geodetect.errors import InputError, OutputError

JOURNAL_VERSION = 2  # 2: each block keeps the cells it covered
_MANIFEST = "manifest.json"
_PART = ".parquet"
_INFO = "geodetect"
_TEMP = ".tmp"  # suffix of a file being written; one left behind is from a killed run
_KEY = re.compile(r"[A-Za-z0-9_-]+")


class BlockStore(Protocol):
    """Where a run keeps its finished blocks: a :class:`Journal` on disk, or a
    :class:`MemoryStore`."""

    resumed: int

    def done(self) -> set[str]: ...

    def commit(self, key: str, table: dict[str, np.ndarray], info: dict | None = None) -> None: ...

    def read(self, key: str) -> dict[str, np.ndarray]: ...

    def info(self, key: str) -> dict | None: ...

    def remove(self) -> None: ...


class MemoryStore:
    """The blocks of a run that keeps nothing on disk (the notebook API's default)."""

    resumed = 0

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, np.ndarray]] = {}
        self.infos: dict[str, dict | None] = {}

    def done(self) -> set[str]:
        return set(self.tables)

    def commit(self, key: str, table: dict[str, np.ndarray], info: dict | None = None) -> None:
        self.tables[key] = table
        self.infos[key] = info

    def read(self, key: str) -> dict[str, np.ndarray]:
        return self.tables[key]

    def info(self, key: str) -> dict | None:
        return self.infos.get(key)

    def remove(self) -> None:
        self.tables.clear()
        self.infos.clear()


@contextlib.contextmanager
def run_store(
    manifest: dict,
    directory: str | os.PathLike | None = None,
    *,
    restart: bool = False,
    owner: str | None = None,
    keep: bool = False,
) -> Iterator[BlockStore]:
    """The store of one run, for its whole life: a :class:`Journal` in ``directory``
    (None: in memory).

    It is removed when the run fails before any block is finished (nothing worth
    keeping), when it fails with an output that can never be written (a non-transient
    :class:`OutputError`: no rerun could use it) unless ``keep``, and when the
    run finishes without error unless ``keep``. Otherwise (interrupted, a worker died, the
    disk filled) it stays, and the same command continues from it.
    """
    store: BlockStore = (
        MemoryStore()
        if directory is None
        else Journal(Path(directory), manifest, restart=restart, owner=owner)
    )
    try:
        yield store
    except BaseException as exc:
        useless = isinstance(exc, OutputError) and not exc.transient and not keep
        if useless or not store.done():
            store.remove()
        raise
    if not keep:
        store.remove()


def journal_dir(out: str | os.PathLike) -> Path:
    """The journal folder beside an output: ``dir/.NAME.geodetect`` for ``dir/NAME``.

    Example: ``out/pools.gpkg`` -> ``out/.pools.gpkg.geodetect``.
    """
    out = Path(out)
    return out.parent / f".{out.name}.geodetect"


class Journal:
    """The finished blocks of one run, one Parquet part per block.

    Args:
        directory: the journal folder (see :func:`journal_dir`); created if missing.
        manifest: what the run is (inputs, model, options), JSON-serialisable. A folder
            holding another run's manifest is refused unless ``restart``.
        restart: discard whatever the folder holds and start afresh.

    Attributes:
        directory: the journal folder.
        resumed: the number of blocks already committed when the journal was opened
            (0 for a fresh or restarted journal).

    Raises:
        InputError: the folder holds the journal of another run (and not ``restart``),
            or it cannot be created or read.
    """

    def __init__(
        self, directory: Path, manifest: dict, *, restart: bool = False, owner: str | None = None
    ) -> None:
        self.directory = Path(directory)
        self.owner = owner  # the output the journal serves, named in messages
        # The JSON round trip makes the comparison see what the file will hold
        # (tuples as lists, keys as strings).
        manifest = json.loads(json.dumps({**manifest, "journal_version": JOURNAL_VERSION}))
        path = self.directory / _MANIFEST
        try:
            if (
                self.directory.is_dir()
                and not path.exists()
                and any(not p.name.endswith((_PART, _TEMP)) for p in self.directory.iterdir())
            ):
                raise InputError(
                    f"{self.directory}: holds other files than a geodetect journal; choose a "
                    "new or empty folder for the journal"
                )
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob(f"*{_TEMP}"):
                leftover.unlink(missing_ok=True)
            old = _read_manifest(path, restart)
        except OSError as exc:
            raise InputError(
                f"{self.directory}: cannot use this folder for the run's journal ({exc}); "
                "fix its permissions or delete it"
            ) from None
        if old is not None and old != manifest and not restart:
            raise InputError(
                f"{self.directory}: holds a journal of another run "
                f"({_differences(old, manifest)} differ); rerun with --restart to start "
                "afresh, or delete the folder"
            )
        if old is None or restart:
            # Parts go before the new manifest: a kill in between leaves the old
            # manifest with fewer parts, which is still a consistent journal.
            for part in self.directory.glob(f"*{_PART}"):
                part.unlink()
            self._write(path, json.dumps(manifest, indent=1).encode())
        self.resumed = len(self.done())

    def done(self) -> set[str]:
        """Keys of the committed blocks."""
        return {p.name[: -len(_PART)] for p in self.directory.glob(f"*{_PART}")}

    def commit(self, key: str, table: dict[str, np.ndarray], info: dict | None = None) -> None:
        """Write one block's table, whole or not at all (replacing an earlier commit).

        Args:
            key: the block's key, a file-name fragment of ``[A-Za-z0-9_-]``.
            table: column name -> 1-D array, all of one length N (N may be 0); dtypes
                float64, int64, int32, bool, or object holding ``str``.

        Raises:
            ValueError: ``key`` is not a safe file-name fragment.
        """
        columns = {}
        for name, column in table.items():
            column = np.asarray(column)
            # Arrow cannot infer a type for an empty object column: say it is text.
            columns[name] = pa.array(column, type=pa.string() if column.dtype == object else None)
        sink = pa.BufferOutputStream()
        arrow = pa.table(columns)
        if info is not None:  # what else the block said (chips read, windows skipped)
            arrow = arrow.replace_schema_metadata({_INFO: json.dumps(info)})
        pq.write_table(arrow, sink)
        self._write(self._part(key), sink.getvalue().to_pybytes())

    def _write(self, path: Path, data: bytes) -> None:
        try:
            _write_atomic(path, data)
        except OSError as exc:
            raise OutputError(
                f"{self.owner or self.directory}: cannot write the run's journal in "
                f"{self.directory} ({exc.strerror or exc}); free disk space or fix the "
                "folder's permissions, then rerun the same command to continue"
            ) from None

    def read(self, key: str) -> dict[str, np.ndarray]:
        """The committed table of one block, in the dtypes it was committed with.

        Text columns come back as object arrays of ``str``.

        Raises:
            ValueError: ``key`` is not a safe file-name fragment.
            FileNotFoundError: no block ``key`` was committed.
        """
        table = pq.read_table(self._part(key))
        out = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                out[name] = np.array(column.to_pylist(), dtype=object)
            else:
                out[name] = column.to_numpy()
        return out

    def info(self, key: str) -> dict | None:
        """What :meth:`commit` was given as ``info`` for block ``key`` (None if nothing)."""
        metadata = pq.read_schema(self._part(key)).metadata or {}
        raw = metadata.get(_INFO.encode())
        return json.loads(raw) if raw else None

    def remove(self) -> None:
        """Delete the journal's own files, then the folder if nothing else is in it."""
        for pattern in (f"*{_PART}", f"*{_TEMP}", _MANIFEST):
            for path in self.directory.glob(pattern):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # something else is in it: leave the folder
            self.directory.rmdir()

    def _part(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"journal key {key!r}: use letters, digits, '-' and '_' only")
        return self.directory / f"{key}{_PART}"


def _read_manifest(path: Path, restart: bool) -> dict | None:
    """The manifest in ``path``, or None if there is none (or it is damaged and ``restart``)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        if restart:
            return None
        raise InputError(
            f"{path}: is not a readable journal manifest; rerun with --restart to start "
            "afresh, or delete the folder"
        ) from None


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    """The keys whose values differ, as ``'model', 'options.overlap'`` (nested dicts dotted)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "the manifests"
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            names.append(_differences(a, b, f"{prefix}{key}."))
        else:
            names.append(f"'{prefix}{key}'")
    return ", ".join(names)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill at any moment leaves the old file or the new."""
    temp = path.with_name(path.name + _TEMP)
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # The rename itself must reach the disk, or a power cut could undo the commit.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
