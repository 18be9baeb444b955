"""Progress for people (a tqdm bar on a terminal, a plain line every tenth of the way
when stderr is a file or a pipe) or for programs (``--progress json``).

In JSON mode every long step (detection's chips, training's steps) writes one JSON object
per line on stderr, at most every :data:`MIN_INTERVAL` seconds and once at its end:

    {"event": "progress", "stage": "detect", "unit": "chip", "done": 120, "total": 480,
     "fraction": 0.25, "elapsed_s": 12.4, "blocks": "3/12", "objects": 41}
    {"event": "end", "stage": "detect", "unit": "chip", "done": 480, "total": 480, ...}

Other stderr lines are geodetect's log lines as in the other modes (``geodetect: INFO:
...``), and a failed run's last line is its one-line error (``geodetect: error: ...``),
so a front end (the QGIS plugin, a web service) parses the lines that start with ``{``
and shows the rest. ``total`` may grow while a run learns how long it is (training on a
time budget).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

MODES = ("bar", "json", "none")
MIN_INTERVAL = 0.5

_mode = "bar"


def set_mode(mode: str) -> None:
    """How progress is shown from now on in this process: ``bar``, ``json`` or ``none``."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose one of {', '.join(MODES)}")
    _mode = mode


def progress_bar(*, total: int | None, desc: str, unit: str, disable: bool = False, **options: Any):
    """A tqdm bar where stderr is a terminal, a :class:`LineProgress` where it is not (a
    log file has no use for a bar's redraws), a :class:`JsonProgress` in JSON mode, all
    with the same methods; nothing shown when ``disable`` (the caller's quiet) or in mode
    ``none``. ``total`` None: not known yet (set ``.total`` when it is)."""
    initial = options.get("initial", 0)
    if _mode == "json" and not disable:
        return JsonProgress(total=total, desc=desc, unit=unit, initial=initial)
    off = disable or _mode == "none"
    if not off and not _is_terminal(sys.stderr):
        return LineProgress(total=total, desc=desc, unit=unit, initial=initial)
    return tqdm(total=total, desc=desc, unit=unit, disable=off, **options)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class _Progress:
    """The part of tqdm's interface geodetect uses: ``update``, ``set_postfix``,
    ``close``, ``write``, ``external_write_mode`` and the ``n`` and ``total`` fields."""

    def __init__(self, *, total: int | None, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix: dict[str, Any] = {}
        self.started = time.monotonic()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit("progress")

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = {k: v if isinstance(v, int | float) else str(v) for k, v in values.items()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._emit("end", force=True)

    def write(self, text: str) -> None:
        sys.stderr.write(text.rstrip("\n") + "\n")

    @contextmanager
    def external_write_mode(self):
        yield

    def _emit(self, event: str, *, force: bool = False) -> None:
        raise NotImplementedError


class LineProgress(_Progress):
    """Progress as plain lines, for stderr that is not a terminal: one each time another
    tenth of the total is done and one at the end (``geodetect: detect: 30% (144/480
    chips, 1.2 min, objects 41)``), nothing while the total is not known."""

    STEP = 0.1

    def __init__(self, *, total: int | None, desc: str, unit: str, initial: int = 0) -> None:
        super().__init__(total=total, desc=desc, unit=unit, initial=initial)
        self._shown = self._tenths()  # resumed work is not news

    def _tenths(self) -> int:
        if not self.total:
            return 0
        return int(min(self.n / self.total, 1.0) / self.STEP + 1e-9)

    def _emit(self, event: str, *, force: bool = False) -> None:
        tenths = self._tenths()
        if event == "end":
            if self.n == 0 or (self.total and tenths == self._shown and self.n >= self.total):
                return  # nothing done, or the last tenth's line said it all
        elif not self.total or tenths <= self._shown:
            return
        self._shown = tenths
        share = f"{min(self.n / self.total, 1.0):.0%} " if self.total else ""
        counts = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        minutes = (time.monotonic() - self.started) / 60
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        sys.stderr.write(
            f"geodetect: {self.desc}: {share}({counts} {self.unit}s, {minutes:.1f} min{extra})\n"
        )
        sys.stderr.flush()


class JsonProgress(_Progress):
    """Progress as JSON lines (see the module)."""

    def __init__(self, *, total: int | None, desc: str, unit: str, initial: int = 0) -> None:
        super().__init__(total=total, desc=desc, unit=unit, initial=initial)
        self._last = -float("inf")
        self._emit("progress", force=True)

    def _emit(self, event: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < MIN_INTERVAL:
            return
        self._last = now
        total = self.total or 0
        line = {
            "event": event,
            "stage": self.desc,
            "unit": self.unit,
            "done": self.n,
            "total": total,
            "fraction": round(min(self.n / total, 1.0), 4) if total else None,
            "elapsed_s": round(now - self.started, 1),
            **self.postfix,
        }
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()
