"""`--progress json`: the machine-readable progress other front ends (the QGIS plugin)
read from stderr, one JSON object per line (training's steps: test_train_review)."""

from __future__ import annotations

from conftest import SAMPLE_DATA, events_of, run_cli


def test_detect_reports_chips_as_json_lines(untrained_model, tmp_path):
    out = tmp_path / "pools.gpkg"
    proc = run_cli("detect", SAMPLE_DATA / "mosaic", "-m", untrained_model, "-o", out,
                   "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events, other = events_of(proc.stderr)
    assert events[0]["event"] == "progress" and events[-1]["event"] == "end"
    assert {e["stage"] for e in events} == {"detect"} and {e["unit"] for e in events} == {"chip"}
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == events[-1]["total"] > 0
    assert events[-1]["fraction"] == 1.0 and "objects" in events[-1]
    assert all(line.startswith("geodetect: ") for line in other)  # the log, as text


def test_a_run_into_a_file_writes_a_line_a_tenth_not_redraws(untrained_model, tmp_path):
    """stderr captured (not a terminal, as in a log file): no bar redraws, a plain line
    for each tenth of the chips and the log's lines, nothing else."""
    out = tmp_path / "pools.gpkg"
    proc = run_cli("detect", SAMPLE_DATA / "mosaic", "-m", untrained_model, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("geodetect: detect: ")]
    assert 1 <= len(lines) <= 10
    shares = [int(ln.split(": ")[2].split("%")[0]) for ln in lines]
    assert shares == sorted(set(shares)) and shares[-1] == 100
    assert all(ln.startswith("geodetect: ") for ln in proc.stderr.splitlines())


def test_a_bad_input_gives_no_progress_and_the_one_line_error(untrained_model, tmp_path):
    proc = run_cli("detect", tmp_path / "nope.tif", "-m", untrained_model,
                   "-o", tmp_path / "x.gpkg", "--progress", "json")  # fmt: skip
    events, other = events_of(proc.stderr)
    assert proc.returncode != 0 and events == []
    assert len(other) == 1 and other[0].startswith("geodetect: error: ")
