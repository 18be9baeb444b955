"""`--progress json`: the machine-readable progress other front ends (the QGIS plugin)
read from stderr, one JSON object per line."""

from __future__ import annotations

import json

from conftest import SAMPLE_DATA, run_cli


def _events(stderr: str) -> tuple[list[dict], list[str]]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    events = [json.loads(ln) for ln in lines if ln.startswith("{")]
    return events, [ln for ln in lines if not ln.startswith("{")]


def test_detect_reports_chips_as_json_lines(sample_model, tmp_path):
    out = tmp_path / "pools.gpkg"
    proc = run_cli("detect", SAMPLE_DATA / "mosaic", "-m", sample_model, "-o", out,
                   "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events, other = _events(proc.stderr)
    assert events[0]["event"] == "progress" and events[-1]["event"] == "end"
    assert {e["stage"] for e in events} == {"detect"} and {e["unit"] for e in events} == {"chip"}
    done = [e["done"] for e in events]
    assert done == sorted(done) and done[-1] == events[-1]["total"] > 0
    assert events[-1]["fraction"] == 1.0 and "objects" in events[-1]
    assert all(line.startswith("geodetect: ") for line in other)  # the log, as text


def test_training_reports_steps_and_errors_stay_one_line(tmp_path):
    train = SAMPLE_DATA / "train"
    out = tmp_path / "m.model"
    proc = run_cli("train", train / "scene.tif", "--labels", train / "truth.gpkg", "--out", out,
                   "--steps", "4", "--start", "none", "--progress", "json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events, _ = _events(proc.stderr)
    steps = [e for e in events if e["stage"] == "training"]
    assert steps[-1]["event"] == "end" and steps[-1]["done"] == steps[-1]["total"] == 4
    # a bad input: no progress, the one-line error as in every mode
    proc = run_cli("detect", tmp_path / "nope.tif", "-m", out, "-o", tmp_path / "x.gpkg",
                   "--progress", "json")  # fmt: skip
    events, other = _events(proc.stderr)
    assert proc.returncode != 0 and events == []
    assert len(other) == 1 and other[0].startswith("geodetect: error: ")
