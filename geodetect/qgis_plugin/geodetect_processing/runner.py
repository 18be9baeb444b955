"""Running the geodetect command line for QGIS: which command, and one run of it with its
progress, log, error and cancel. Nothing here imports QGIS (tests run it alone).

The run is started in a session of its own, so cancelling ends its whole process group
(reader processes and all): first with SIGINT, which geodetect handles like Ctrl-C (the
journal keeps the finished blocks, no half-written output), then, if it has not ended
within :data:`GRACE_S`, with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The file `geodetect qgis install` writes beside this module: the command that ran it.
COMMAND_FILE = Path(__file__).with_name("geodetect_command.txt")
ENV_COMMAND = "GEODETECT_COMMAND"
ERROR_PREFIX = "geodetect: error: "
GRACE_S = 20.0


def geodetect_command(setting: str | None = None) -> list[str]:
    """The geodetect command: the Processing setting when given, else
    ``$GEODETECT_COMMAND``, else the command `geodetect qgis install` recorded, else
    ``geodetect`` on PATH.

    Raises:
        FileNotFoundError: none of them names a command that exists.
    """
    for text in (setting, os.environ.get(ENV_COMMAND), _recorded()):
        if text and text.strip():
            words = shlex.split(text)
            if shutil.which(words[0]) or Path(words[0]).is_file():
                return words
            raise FileNotFoundError(
                f"the geodetect command {words[0]!r} does not exist; set its path in "
                "Processing > Options > Providers > geodetect, or run `geodetect qgis "
                "install` again from the environment where geodetect is installed"
            )
    found = shutil.which("geodetect")
    if found:
        return [found]
    raise FileNotFoundError(
        "geodetect was not found: install it (pip install geodetect), then run "
        "`geodetect qgis install`, or set the command's path in Processing > Options > "
        "Providers > geodetect"
    )


def _recorded() -> str | None:
    try:
        return COMMAND_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        return None


@dataclass
class RunResult:
    """How a run ended: its exit status, its one-line error (without the prefix), whether
    it was cancelled, and its standard output."""

    returncode: int
    error: str | None = None
    canceled: bool = False
    stdout: str = ""
    log: list[str] = field(default_factory=list)


def run(
    argv: list[str],
    *,
    on_progress=lambda event: None,
    on_log=lambda line: None,
    is_canceled=lambda: False,
    poll_s: float = 0.2,
) -> RunResult:
    """Run ``argv`` (a geodetect command with ``--progress json``) to its end.

    ``on_progress`` gets each JSON progress event (a dict), ``on_log`` each other stderr
    line, both on the calling thread; ``is_canceled`` is polled, and when it turns true
    the run's process group is stopped (see the module).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines: queue.Queue = queue.Queue()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        start_new_session=True,
        # SIGINT is how a cancel stops the run: handled even where QGIS itself was
        # started with it ignored (a background job inherits that, and passes it on).
        preexec_fn=_sigint_handled if os.name == "posix" else None,
    )
    out: list[str] = []

    def pump(stream, sink) -> None:
        with stream:
            for line in stream:
                sink(line)

    threads = [
        threading.Thread(target=pump, args=(proc.stderr, lines.put), daemon=True),
        threading.Thread(target=pump, args=(proc.stdout, out.append), daemon=True),
    ]
    for t in threads:
        t.start()
    result = RunResult(returncode=0)
    stop_sent: float | None = None

    def drain() -> None:
        while True:
            try:
                line = lines.get_nowait().rstrip("\n")
            except queue.Empty:
                return
            if not line.strip():
                continue
            if line.startswith("{"):
                try:
                    on_progress(json.loads(line))
                    continue
                except ValueError:
                    pass
            if line.startswith(ERROR_PREFIX):
                result.error = line[len(ERROR_PREFIX) :]
            result.log.append(line)
            on_log(line)

    while proc.poll() is None:
        drain()
        if is_canceled() and not result.canceled:
            result.canceled = True
            stop_sent = time.monotonic()
            _signal_group(proc, signal.SIGINT)
        if stop_sent is not None and time.monotonic() - stop_sent > GRACE_S:
            _signal_group(proc, signal.SIGKILL)
            stop_sent = float("inf")
        time.sleep(poll_s)
    for t in threads:
        t.join(timeout=5)
    drain()
    if result.canceled:
        _signal_group(proc, signal.SIGKILL)  # any process of the group still alive
    result.returncode = proc.returncode
    result.stdout = "".join(out)
    return result


def _sigint_handled() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
