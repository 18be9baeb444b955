"""The bad-input contract, end to end, through real `geodetect` processes.

Bad input gives exactly one line on stderr starting ``geodetect: error: `` that names the
file, a non-zero exit, no traceback and no file at ``--out``; interrupted runs leave no
partial output; model files are never unpickled. Everything here is a real file on disk
and a real process. Runs that need their own process (signals, a file-size limit, the
pickle) get one; the many plain bad-input runs share ONE process that calls the CLI entry
point once per command (torch is imported once), set up by the ``batch`` fixture.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from safetensors.torch import save_file

from geodetect.model import build_retinanet, save_model

from conftest import (
    NORTH_UP,
    PROGRESS_LINE,
    SHARED_RASTERS,
    make_tiny_spec,
    paint_boxes,
    sigint_as_in_a_terminal,
    write_geotiff,
)

GEODETECT = [sys.executable, "-m", "geodetect"]
FAST = ("--workers", "0", "-q")  # one process, no progress bar: stderr holds only errors


def _argv(args) -> list[str]:
    return [*GEODETECT, *map(str, args)]


def spawn(*args, **kw) -> subprocess.Popen:
    """Start `python -m geodetect ARGS`, exactly as a user would run it."""
    return subprocess.Popen(
        _argv(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def collect(popen: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = popen.communicate(timeout=300)
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)


_BATCH = """
import json, os, resource, sys
from geodetect.cli import main
cases, folder = json.loads(sys.argv[1]), sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
codes = []
for i, (argv, fsize) in enumerate(cases):
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    for fd, name in ((1, "out"), (2, "err")):
        target = os.open(os.path.join(folder, f"{i}.{name}"), os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(target, fd)
        os.close(target)
    if fsize:  # a full disk: writes past fsize bytes fail with EFBIG (SIGXFSZ is ignored)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, hard))
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
    codes.append(code)
print(json.dumps(codes))
"""


class Disk:
    """A command to run with at most ``limit`` bytes per written file (a full disk)."""

    def __init__(self, limit: int, *args) -> None:
        self.limit, self.args = limit, args


def cli_batch(*commands) -> list[subprocess.CompletedProcess]:
    """Run each command through the CLI entry point that `python -m geodetect` runs
    (:func:`geodetect.cli.main`), one after the other in ONE fresh process, each with its
    own stdout and stderr: the same contract as separate runs, torch imported once."""
    cases = [
        [list(map(str, c.args)), c.limit] if isinstance(c, Disk) else [list(map(str, c)), 0]
        for c in commands
    ]
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.run(
            [sys.executable, "-c", _BATCH, json.dumps(cases), folder],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        codes = json.loads(proc.stdout.splitlines()[-1])
        return [
            subprocess.CompletedProcess(
                [*GEODETECT, *argv],
                code,
                Path(folder, f"{i}.out").read_text(),
                Path(folder, f"{i}.err").read_text(),
            )
            for i, ((argv, _), code) in enumerate(zip(cases, codes, strict=True))
        ]


def assert_one_line_error(proc, *needles) -> str:
    """Exactly one stderr line, ``geodetect: error: ...`` holding every needle."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, (proc.args, proc.stderr)
    assert len(lines) == 1, (proc.args, proc.stderr)
    assert lines[0].startswith("geodetect: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny random RetinaNet (64 px chips) and small scenes, shared by the module."""

    root = tmp_path_factory.mktemp("inputs")
    spec = make_tiny_spec()
    torch.manual_seed(0)
    model = save_model(build_retinanet(spec, pretrained="none"), spec, root / "tiny.model")
    image = paint_boxes(96, 96, [(10, 10, 30, 30), (50, 40, 70, 75)])
    image[1] += np.arange(96, dtype=np.uint8)[None, :]
    scene = write_geotiff(root / "scene.tif", image, transform=NORTH_UP)
    return {"root": root, "spec": spec, "model": model, "scene": scene}


@pytest.fixture(scope="module")
def big_scene(files):
    """2000x2000 uint8: hundreds of 128 px chips, minutes of CPU with the tiny model."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, 2000, 2000), dtype=np.uint8)
    return write_geotiff(
        files["root"] / "big.tif", data, transform=NORTH_UP, blockxsize=256, blockysize=256
    )


# ------------------------------------------------------------------ interrupted runs


def start_detect(scene, model, out, *, workers: str | None = "0", **popen) -> subprocess.Popen:
    """Start `geodetect detect` over many chips, with its progress on stderr
    (``workers=None``: the default reader processes)."""
    # Every chip through the network (--screen off): the run must last until signalled.
    # torch, not `auto`, which would first time three runtimes (what is interrupted here
    # is detection; `auto` is tested in test_onnx.py).
    argv = _argv(
        ["detect", scene, "--model", model, "--out", out, "--chip-size", "128"]
        + ["--overlap", "0", "--batch-size", "1", "--screen", "off", "--runtime", "torch"]
        + ([] if workers is None else ["--workers", workers])
    )
    return subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=sigint_as_in_a_terminal,
        **popen,
    )


def wait_until_detecting(proc: subprocess.Popen) -> bytes:
    """Block until progress counts finished chips (stderr is a pipe: a plain line each
    tenth of the chips; a bar on a terminal): setup is over and the run is in the middle
    of detection. Returns what stderr said so far."""
    seen = b""
    deadline = time.monotonic() + 120
    started = rb"(\| *[1-9][0-9]*/[0-9]+ \[)|(geodetect: detect: [0-9]+% \([1-9][0-9]*/)"
    while not re.search(started, seen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"detect did not get going: {seen.decode(errors='replace')}")
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            seen += os.read(proc.stderr.fileno(), 1 << 16)
    return seen


def finish(proc: subprocess.Popen, seen: bytes) -> tuple[int, str]:
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, (seen + rest).decode(errors="replace")


def messages(stderr: str) -> list[str]:
    """stderr without progress: a bar's renders (tqdm redraws with carriage returns) or
    the plain progress lines written where stderr is not a terminal."""
    parts = stderr.replace("\r", "\n").splitlines()
    return [
        p for p in parts if p.strip() and not p.startswith("detect:") and not PROGRESS_LINE.match(p)
    ]


def assert_interrupted(code: int, stderr: str) -> None:
    assert code == 130, stderr
    assert "Traceback" not in stderr, stderr
    # The run's own log (which runtime it chose, and why) may come first.
    lines = [m for m in messages(stderr) if not m.startswith("geodetect: INFO")]
    assert len(lines) == 1 and lines[0].startswith("geodetect: error: interrupted"), lines


@pytest.mark.slow
def test_signals_mid_run(files, big_scene, tmp_path):
    """Ctrl-C, and SIGTERM with a reader process: exit 130, one line, nothing left in the
    folder. kill -9: no file at --out (an existing one surviving kill -9 is checked at the
    worst moment, just before the rename, in the next test)."""
    runs = {}
    for sig, workers in [(signal.SIGINT, "0"), (signal.SIGTERM, "1"), (signal.SIGKILL, "0")]:
        folder = tmp_path / sig.name
        folder.mkdir()
        out = folder / "pools.shp"  # the format with the most files to leave behind
        runs[sig] = start_detect(big_scene, files["model"], out, workers=workers)
    # Each run signalled as soon as it detects, before any is waited for: waiting for
    # one run to finish would leave the others time to complete.
    seen = {}
    for sig, proc in runs.items():
        seen[sig] = wait_until_detecting(proc)
        proc.send_signal(sig)
    results = {sig: finish(proc, seen[sig]) for sig, proc in runs.items()}
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert_interrupted(*results[sig])
        assert listing(tmp_path / sig.name) == []  # no output, no hidden temp file
    assert results[signal.SIGKILL][0] == -signal.SIGKILL
    assert [n for n in listing(tmp_path / "SIGKILL") if not n.startswith(".pools.")] == []


def test_ctrl_c_in_a_terminal_reaches_every_reader_process(files, big_scene, tmp_path):
    """Ctrl-C in a terminal signals the whole foreground process group, so the default
    reader processes get SIGINT with the main one: still exit 130 and one line, no
    traceback from any process, no process left behind, nothing left in the folder."""
    out = tmp_path / "pools.gpkg"
    proc = start_detect(big_scene, files["model"], out, workers=None, start_new_session=True)
    seen = wait_until_detecting(proc)
    os.killpg(proc.pid, signal.SIGINT)  # the session's group: the CLI and its readers
    assert_interrupted(*finish(proc, seen))
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid):
        assert time.monotonic() < deadline, "reader processes outlived the interrupted run"
        time.sleep(0.1)
    from geodetect.detect.journal import journal_dir

    # No output, no temporary one; only the journal of finished blocks, for a rerun (that
    # the rerun then gives the uninterrupted layer: test_county.py, the stopped runs).
    assert [p for p in tmp_path.iterdir() if p != journal_dir(out)] == []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# Ctrl-C where Python itself mishandles it, staged in a command added to the real CLI
# group; each place was hit by a real Ctrl-C during startup. Inside exec() of source
# text (dataclasses and namedtuple build their methods so, hundreds of times while torch
# is imported): run as `python -m`, as the tests run geodetect, CPython then dies by
# SIGINT. Inside a __set_name__ (dataclass fields): Python 3.11 turns it into a
# RuntimeError. Where Python cannot raise at all (fork handlers, weakref callbacks,
# __del__), here a __del__: the interrupt was dropped and the run went on.
_STAGED_INTERRUPT = """
import sys, time
from geodetect.cli import cli, main

class Dropped:
    def __del__(self):
        raise KeyboardInterrupt

class Interrupting:
    def __set_name__(self, owner, name):
        raise KeyboardInterrupt

@cli.command("staged")
def staged():
    if sys.argv[1] == "exec":
        exec("raise KeyboardInterrupt", {})
    if sys.argv[1] == "set_name":
        type("Owner", (), {"field": Interrupting()})
    Dropped()
    time.sleep(2)
    print("finished")

main(["staged"])
"""


@pytest.mark.parametrize("place", ["exec", "set_name", "del"])
def test_interrupt_where_python_mishandles_it(tmp_path, place):
    (tmp_path / "staged_interrupt.py").write_text(_STAGED_INTERRUPT)
    proc = subprocess.run(
        [sys.executable, "-m", "staged_interrupt", place],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=sigint_as_in_a_terminal,
    )
    assert proc.stdout == ""  # the interrupt was not lost
    assert_interrupted(proc.returncode, proc.stderr)


# A run interrupted exactly while its output is being put in place: the signal is sent
# by the process to itself from inside os.replace, after the temporary file is complete
# and before it is renamed over --out. Real signals, real handlers; only the moment is fixed.
_SIGNAL_AT_RENAME = """
import os, runpy, signal, sys, time
sig = int(sys.argv.pop(1))
real_replace = os.replace
def replace(src, dst):
    if not str(dst).endswith("pools.gpkg"):  # the journal's own renames pass
        return real_replace(src, dst)
    os.kill(os.getpid(), sig)
    time.sleep(5)  # a Python-level handler interrupts this at once
    return real_replace(src, dst)
os.replace = replace
sys.argv[0] = "geodetect"
runpy.run_module("geodetect", run_name="__main__", alter_sys=True)
"""


def test_signal_while_writing_keeps_existing_output(files, tmp_path):
    old = gpd.GeoDataFrame(
        {"class": ["old"]}, geometry=gpd.points_from_xy([0], [0]).buffer(1), crs="EPSG:32617"
    )
    procs = {}
    for sig in (signal.SIGINT, signal.SIGKILL):
        folder = tmp_path / sig.name
        folder.mkdir()
        old.to_file(folder / "pools.gpkg")
        procs[sig] = subprocess.Popen(
            [sys.executable, "-c", _SIGNAL_AT_RENAME, str(int(sig)), "detect", files["scene"]]
            + ["--model", files["model"], "--out", folder / "pools.gpkg", "--overwrite", *FAST],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=sigint_as_in_a_terminal,
        )
    for sig, popen in procs.items():
        out, err = popen.communicate(timeout=300)
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        folder = tmp_path / sig.name
        assert gpd.read_file(folder / "pools.gpkg")["class"].tolist() == ["old"]
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
            # kill -9 may leave the complete hidden temp file, never a partial --out
            assert [n for n in listing(folder) if not n.startswith(".pools.")] == ["pools.gpkg"]
        else:
            assert_one_line_error(proc, "interrupted")
            assert proc.returncode == 130
            # Every block was done: the journal stays, so the rerun only merges and writes.
            assert listing(folder) == [".pools.gpkg.geodetect", "pools.gpkg"]


# ------------------------------------------------- plain bad input, run in one process


def _folders_cases(folder: Path, files) -> dict[str, list]:
    (folder / "file.txt").write_text("not a folder\n")
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    targets = {
        "under-a-file": folder / "file.txt" / "out.gpkg",
        "deep-under-a-file": folder / "file.txt" / "sub" / "out.gpkg",
        "under-a-device": Path(os.devnull) / "out.gpkg",
        "missing": folder / "missing" / "out.gpkg",
        "locked": locked / "out.gpkg",
    }
    if UNWRITABLE_FOLDER.is_dir():
        targets["unwritable-for-root"] = UNWRITABLE_FOLDER / "out.gpkg"
    return {
        name: ["detect", files["scene"], "--model", files["model"], "--out", out, *FAST]
        for name, out in targets.items()
    }


# A folder no one may write, root included (chmod 0o555 does not stop root): a process's
# own /proc entry, which the kernel says is not writable, so os.access says so too.
UNWRITABLE_FOLDER = Path("/proc/self")


def _damaged_cases(folder: Path, files) -> dict[str, list]:
    common = ["--model", files["model"], "--chip-size", "128", "--overlap", "0"]
    garbled = folder / "garbled.tif"  # GDAL quotes its undecodable bytes in its error
    garbled.write_bytes(b"<VRTDataset \xd8\xff garbage")
    cases = {"garbled": ["detect", garbled, *common, "--out", folder / "garbled.gpkg", *FAST]}
    if SHARED_RASTERS.is_dir():
        # corrupt.tif has a damaged JPEG tile at rows and cols 512-1023; a VRT showing a
        # 256 px window across it (over the real file) keeps the run to four chips.
        window = _write_window_vrt(
            SHARED_RASTERS / "corrupt.tif",
            folder / "window.vrt",
            col_off=384,
            row_off=384,
            size=256,
        )
        cases["strict"] = ["detect", window, *common, "--out", folder / "strict.gpkg", *FAST]
        cases["skip"] = ["detect", window, *common, "--out", folder / "pools.gpkg"]
        cases["skip"] += ["--skip-bad-chips", "--workers", "0"]
    return cases


def _nocrs_cases(folder: Path, files) -> dict[str, list]:
    image = paint_boxes(96, 96, [(10, 10, 30, 30)])
    scene = write_geotiff(folder / "nocrs.tif", image, transform=NORTH_UP, crs=None)
    model = ["--model", files["model"]]
    return {
        "refused": ["detect", scene, *model, "--out", folder / "pools.gpkg", *FAST],
        "allowed": ["detect", scene, *model, "--out", folder / "pools.gpkg", "--allow-no-crs"]
        + ["--threshold", "0", *FAST],
        "geojson": ["detect", scene, *model, "--out", folder / "pools.geojson"]
        + ["--allow-no-crs", *FAST],
    }


def _bands_cases(folder: Path, files) -> dict[str, list]:
    rng = np.random.default_rng(2)
    image = rng.integers(200, 4000, size=(3, 96, 96), dtype=np.uint16)
    image[:, 10:30, 10:30] = 12000
    scene16 = write_geotiff(folder / "scene16.tif", image, transform=NORTH_UP)
    model, rgb = ["--model", files["model"]], files["scene"]
    return {
        "uint16": ["detect", scene16, *model, "--out", folder / "pools16.gpkg"]
        + ["--workers", "0", "--threshold", "0"],
        "band5": ["detect", rgb, *model, "--out", folder / "pools.gpkg", "--bands", "5", *FAST],
        "two": ["detect", rgb, *model, "--out", folder / "pools.gpkg", "--bands", "1,2", *FAST],
    }


def _model_cases(folder: Path, files) -> dict[str, list]:
    _bad_models(folder, files["model"], files["spec"])
    out = folder / "pools.gpkg"
    cases = {}
    for name in BAD_MODELS:
        path = folder / name
        cases[f"detect {name}"] = ["detect", files["scene"], "--model", path, "--out", out, *FAST]
        cases[f"info {name}"] = ["info", path]
    return cases


FORMATS = (".gpkg", ".geojson", ".shp", ".parquet", ".fgb")


def _full_disk_cases(folder: Path, files) -> dict[str, Disk]:
    """Every format, with a file-size limit far below what the layer needs (reading is
    not limited; a one-line error is short enough to be written)."""
    # 64 px chips, the tiny model's own: a 512 px chip would be mostly padding, where
    # the untrained net puts most of its boxes, and the layer would fit in the limit.
    model = ["--model", files["model"], "--threshold", "0", "--chip-size", "64", *FAST]
    return {
        ext: Disk(4096, "detect", files["scene"], *model, "--out", folder / f"pools{ext}")
        for ext in FORMATS
    }


_GROUPS = {
    "full-disk": _full_disk_cases,
    "folders": _folders_cases,
    "damaged": _damaged_cases,
    "nocrs": _nocrs_cases,
    "bands": _bands_cases,
    "models": _model_cases,
}


@pytest.fixture(scope="module")
def batch(files, tmp_path_factory):
    """group -> (its folder, {case: finished run}), all runs in one process."""
    folders = {group: tmp_path_factory.mktemp(group) for group in _GROUPS}
    cases = {group: make(folders[group], files) for group, make in _GROUPS.items()}
    flat = [(group, name, argv) for group in cases for name, argv in cases[group].items()]
    try:
        procs = cli_batch(*[argv for _, _, argv in flat])
    finally:
        (folders["folders"] / "locked").chmod(0o755)
    results: dict[str, dict] = {group: {} for group in _GROUPS}
    for (group, name, _), proc in zip(flat, procs, strict=True):
        results[group][name] = proc
    return {group: (folders[group], results[group]) for group in _GROUPS}


def test_full_disk_leaves_no_partial_output(batch):
    folder, runs = batch["full-disk"]
    for ext in FORMATS:
        assert_one_line_error(runs[ext], str(folder / f"pools{ext}"))
    assert listing(folder) == []  # no output, no temp file, no shapefile sidecar


def test_unwritable_missing_or_bogus_output_folder(batch):
    folder, runs = batch["folders"]
    for name, out in [("under-a-file", "out.gpkg"), ("deep-under-a-file", "sub/out.gpkg")]:
        # root cannot write there either; "create it first" would be advice that fails
        line = assert_one_line_error(
            runs[name], str(folder / "file.txt" / out), "file.txt is a file, not a folder"
        )
        assert "create it" not in line
    # a character device is no folder either (not a regular file: "not a folder")
    line = assert_one_line_error(
        runs["under-a-device"], f"{os.devnull}/out.gpkg", f"{os.devnull} is not a folder"
    )
    assert "create it" not in line
    assert_one_line_error(runs["missing"], str(folder / "missing" / "out.gpkg"), "create it")
    if os.geteuid() == 0:  # root writes through chmod 0o555: nothing to refuse there
        assert runs["locked"].returncode == 0, runs["locked"].stderr
        (folder / "locked" / "out.gpkg").unlink()
    else:
        assert_one_line_error(runs["locked"], str(folder / "locked" / "out.gpkg"), "writable")
    assert (folder / "file.txt").read_text() == "not a folder\n"
    assert listing(folder) == ["file.txt", "locked"] and listing(folder / "locked") == []
    # A folder that is not writable: refused before any work, for root as for anyone.
    if "unwritable-for-root" not in runs:
        pytest.skip(f"{UNWRITABLE_FOLDER} is not here (not Linux)")
    assert_one_line_error(
        runs["unwritable-for-root"], str(UNWRITABLE_FOLDER / "out.gpkg"), "is not writable"
    )


def test_damaged_tiles_error_or_skip_and_list(batch, shared_rasters):
    folder, runs = batch["damaged"]
    window = folder / "window.vrt"
    # without --skip-bad-chips: one line naming the file, the window and the way out
    line = assert_one_line_error(runs["strict"], str(window), "cannot read window")
    assert "col " in line and "row " in line and "--skip-bad-chips" in line
    # with it: exit 0, a valid layer, and the skipped windows listed at the end
    skip = runs["skip"]
    assert skip.returncode == 0 and "Traceback" not in skip.stderr, skip.stderr
    assert gpd.read_file(folder / "pools.gpkg").crs.to_epsg() == 3857
    log = skip.stderr.replace("\r", "\n").splitlines()
    header = max(i for i, ln in enumerate(log) if "could not be read and were skipped" in ln)
    listed = [ln for ln in log[header + 1 :] if "cannot read window" in ln]
    assert int(log[header].split("WARNING: ")[1].split()[0]) == len(listed) >= 1
    assert all(str(window) in ln and "col " in ln and "row " in ln for ln in listed)
    assert listing(folder) == ["garbled.tif", "pools.gpkg", "window.vrt"]


def test_garbled_file_is_one_line_not_a_traceback(batch):
    """GDAL quotes the file's undecodable bytes in its error; rasterio's error callback
    chokes on them and Python would print that under the error line."""
    folder, runs = batch["damaged"]
    assert_one_line_error(runs["garbled"], str(folder / "garbled.tif"), "not a raster")
    assert not (folder / "garbled.gpkg").exists()


def test_no_crs_refused_unless_allowed(batch):
    folder, runs = batch["nocrs"]
    assert_one_line_error(runs["refused"], str(folder / "nocrs.tif"), "no CRS", "--allow-no-crs")
    # GeoJSON is WGS84 lon/lat by definition (RFC 7946): refused for a layer without CRS
    assert_one_line_error(runs["geojson"], str(folder / "pools.geojson"), "CRS", ".gpkg")
    assert runs["allowed"].returncode == 0, runs["allowed"].stderr
    layer = gpd.read_file(folder / "pools.gpkg")
    assert layer.crs is None and len(layer) > 0
    # the coordinates are the scene's own geotransform applied to pixels
    x0, y0 = NORTH_UP @ (0, 0)
    x1, y1 = NORTH_UP @ (96, 96)
    minx, miny, maxx, maxy = layer.total_bounds
    assert x0 - 1e-6 <= minx and maxx <= x1 + 1e-6 and y1 - 1e-6 <= miny and maxy <= y0 + 1e-6
    assert listing(folder) == ["nocrs.tif", "pools.gpkg"]


def test_uint16_scaled_by_statistics_and_band_choice_errors(batch, files):
    folder, runs = batch["bands"]
    ok = runs["uint16"]
    assert ok.returncode == 0, ok.stderr
    log = messages(ok.stderr)
    assert any("WARNING" in ln and "scaling bands by their own statistics" in ln for ln in log)
    assert not any("error" in ln.lower() for ln in log)
    assert len(gpd.read_file(folder / "pools16.gpkg")) > 0
    assert pyogrio.read_info(folder / "pools16.gpkg")["crs"] == "EPSG:32617"
    assert_one_line_error(runs["band5"], str(files["scene"]), "--bands", "5", "1..3")
    assert_one_line_error(runs["two"], str(files["scene"]), "model expects 3")
    assert listing(folder) == ["pools16.gpkg", "scene16.tif"]


def test_bad_model_files_refused_by_detect_and_info(batch, files):
    folder, runs = batch["models"]
    for name, needle in BAD_MODELS.items():
        path = folder / name
        for command in ("detect", "info"):
            proc = runs[f"{command} {name}"]
            assert_one_line_error(proc, str(path), needle)
            assert proc.stdout == ""
    # the hostile pickle once more, the way a user runs it
    out = folder / "pools.gpkg"
    proc = collect(spawn("detect", files["scene"], "--model", folder / "evil.model", "--out", out))
    assert_one_line_error(proc, str(folder / "evil.model"), "pickle")
    assert not (folder / "unpickled").exists()
    assert not (folder / "pools.gpkg").exists()


# ------------------------------------------------------------------------- helpers


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}


def _write_window_vrt(source: Path, vrt: Path, *, col_off: int, row_off: int, size: int):
    """A VRT showing a size x size window of ``source`` (same bands, georeferenced)."""
    with rasterio.open(source) as ds:
        transform = ds.transform @ ds.transform.translation(col_off, row_off)
        bands = "".join(
            f"""
  <VRTRasterBand dataType="{_GDAL_TYPES[ds.dtypes[b - 1]]}" band="{b}">
    <ColorInterp>{ds.colorinterp[b - 1].name.capitalize()}</ColorInterp>
    <SimpleSource>
      <SourceFilename relativeToVRT="0">{source}</SourceFilename>
      <SourceBand>{b}</SourceBand>
      <SrcRect xOff="{col_off}" yOff="{row_off}" xSize="{size}" ySize="{size}"/>
      <DstRect xOff="0" yOff="0" xSize="{size}" ySize="{size}"/>
    </SimpleSource>
  </VRTRasterBand>"""
            for b in ds.indexes
        )
        vrt.write_text(
            f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">\n'
            f"  <SRS>{ds.crs.to_wkt()}</SRS>\n"
            f"  <GeoTransform>{', '.join(map(repr, transform.to_gdal()))}</GeoTransform>"
            f"{bands}\n</VRTDataset>\n"
        )
    return vrt


class _Marker:
    """Unpickling this creates a file: proof that a model file was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# bad model file -> a phrase its error line must hold
BAD_MODELS = {
    "empty.model": "not a geodetect model",
    "short.model": "not a geodetect model",
    "truncated-header.model": "truncated",
    "truncated-weights.model": "truncated",
    "random.model": "not a geodetect model",
    "evil.model": "pickle",
    "evil0.model": "not a geodetect model",  # protocol-0 pickle: text, no magic bytes
    "evil.pt": "pickle",
    "zipped.model": "zip",
    "foreign.safetensors": "without geodetect metadata",
    "two-classes.model": "do not match",
    "wider.model": "do not match",
    "four-bands.model": "do not match",
}


def _bad_models(folder: Path, good: Path, spec) -> None:
    """Write every file of BAD_MODELS into ``folder``."""
    data = good.read_bytes()
    marker = folder / "unpickled"
    payloads = {
        "empty.model": b"",
        "short.model": data[:5],
        "truncated-header.model": data[:200],
        "truncated-weights.model": data[: len(data) // 2],
        "random.model": np.random.default_rng(1).bytes(50_000),
        "evil.model": pickle.dumps(_Marker(marker), protocol=4),
        "evil0.model": pickle.dumps(_Marker(marker), protocol=0),
    }
    for name, payload in payloads.items():
        (folder / name).write_bytes(payload)
    torch.save({"state": _Marker(marker)}, folder / "evil.pt")
    with zipfile.ZipFile(folder / "zipped.model", "w") as zf:
        zf.write(good, "tiny.model")
    save_file({"weight": torch.zeros(4, 4)}, folder / "foreign.safetensors", {"tool": "other"})
    # valid files whose metadata describes another network than the weights hold
    net = build_retinanet(spec, pretrained="none")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    four = replace(spec, band_mean=[1.0] * 4, band_std=[1.0] * 4, band_names=list("rgbn"))
    for name, other in [
        ("two-classes.model", replace(spec, classes=["pool", "tank"])),
        ("wider.model", replace(spec, fpn_channels=64)),
        ("four-bands.model", four),
    ]:
        save_file(state, folder / name, metadata={"geodetect": other.to_json()})
    assert sorted(p.name for p in folder.iterdir()) == sorted(BAD_MODELS)
