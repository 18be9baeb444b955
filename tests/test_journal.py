"""The journal of finished blocks: round trips, resuming, refusing, and surviving kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import geodetect.detect.journal as journal_module
from geodetect.detect.journal import Journal, journal_dir
from geodetect.errors import InputError

MANIFEST = {"inputs": [["a.tif", 123, 4.5]], "model": "m1", "options": {"overlap": 64}}


def make_table(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x0": rng.random(n),
        "chip": rng.integers(-(2**40), 2**40, n),
        "grid": rng.integers(0, 9, n).astype(np.int32),
        "owned": rng.random(n) > 0.5,
        "label": np.array([f"pool-{i}" for i in range(n)], dtype=object),
    }


def assert_same_table(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name, column in want.items():
        assert got[name].dtype == column.dtype, name
        assert got[name].shape == column.shape, name
        np.testing.assert_array_equal(got[name], column)
    for text in got["label"]:
        assert type(text) is str


def test_journal_dir_is_hidden_beside_the_output(tmp_path):
    assert journal_dir(tmp_path / "pools.gpkg") == tmp_path / ".pools.gpkg.geodetect"
    assert journal_dir("pools.gpkg") == Path(".pools.gpkg.geodetect")


@pytest.mark.parametrize("rows", [0, 1, 257])
def test_tables_round_trip_with_their_dtypes(tmp_path, rows):
    journal = Journal(tmp_path / "j", MANIFEST)
    table = make_table(rows, seed=rows)
    journal.commit("0-17", table)
    assert_same_table(journal.read("0-17"), table)


def test_strided_and_unicode_columns_are_written_as_their_values(tmp_path):
    journal = Journal(tmp_path / "j", MANIFEST)
    boxes = np.arange(12.0).reshape(3, 4)
    journal.commit("b", {"x1": boxes[:, 2], "name": np.array(["ä", "b", ""])})
    got = journal.read("b")
    np.testing.assert_array_equal(got["x1"], [2.0, 6.0, 10.0])
    assert got["name"].dtype == object and list(got["name"]) == ["ä", "b", ""]


def test_done_lists_the_committed_blocks(tmp_path):
    journal = Journal(tmp_path / "j", MANIFEST)
    assert journal.done() == set() and journal.resumed == 0
    journal.commit("0-0", make_table(3))
    journal.commit("0-1", make_table(0))
    assert journal.done() == {"0-0", "0-1"}


def test_reopening_the_same_run_resumes(tmp_path):
    first = Journal(tmp_path / "j", MANIFEST)
    first.commit("0-0", make_table(3, seed=1))
    first.commit("1-0", make_table(2, seed=2))
    # Tuples become lists in JSON: the same run still matches.
    again = Journal(tmp_path / "j", {**MANIFEST, "inputs": [("a.tif", 123, 4.5)]})
    assert again.resumed == 2
    assert again.done() == {"0-0", "1-0"}
    assert_same_table(again.read("1-0"), make_table(2, seed=2))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "m2"}, "'model'"),
        ({"options": {"overlap": 32}}, "'options.overlap'"),
        ({"tta": True}, "'tta'"),
    ],
)
def test_another_run_is_refused(tmp_path, change, named):
    Journal(tmp_path / "j", MANIFEST).commit("0-0", make_table(3))
    with pytest.raises(InputError, match="--restart") as info:
        Journal(tmp_path / "j", {**MANIFEST, **change})
    assert named in str(info.value) and str(tmp_path / "j") in str(info.value)
    assert Journal(tmp_path / "j", MANIFEST).done() == {"0-0"}  # nothing was touched


def test_restart_starts_empty(tmp_path):
    Journal(tmp_path / "j", MANIFEST).commit("0-0", make_table(3))
    other = {**MANIFEST, "model": "m2"}
    fresh = Journal(tmp_path / "j", other, restart=True)
    assert fresh.resumed == 0 and fresh.done() == set()
    assert Journal(tmp_path / "j", other).resumed == 0  # the new manifest is the one kept
    fresh.commit("0-0", make_table(1))
    same = Journal(tmp_path / "j", other, restart=True)
    assert same.resumed == 0 and same.done() == set()


def test_a_damaged_manifest_is_refused_unless_restart(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"model": ')
    with pytest.raises(InputError, match="--restart"):
        Journal(folder, MANIFEST)
    assert Journal(folder, MANIFEST, restart=True).done() == set()
    assert Journal(folder, MANIFEST).resumed == 0


def test_leftover_temporary_files_are_removed_and_not_counted(tmp_path):
    journal = Journal(tmp_path / "j", MANIFEST)
    journal.commit("0-0", make_table(3))
    # What a commit killed before its rename leaves behind.
    (journal.directory / "0-1.parquet.tmp").write_bytes(b"PAR1 half a file")
    (journal.directory / "manifest.json.tmp").write_text("{")
    again = Journal(tmp_path / "j", MANIFEST)
    assert again.resumed == 1 and again.done() == {"0-0"}
    assert sorted(p.name for p in again.directory.iterdir()) == ["0-0.parquet", "manifest.json"]


@pytest.mark.parametrize("key", ["", "../x", "a/b", "a.b", "a b", "é"])
def test_unsafe_keys_are_refused(tmp_path, key):
    journal = Journal(tmp_path / "j", MANIFEST)
    with pytest.raises(ValueError, match="journal key"):
        journal.commit(key, make_table(1))
    with pytest.raises(ValueError, match="journal key"):
        journal.read(key)
    assert journal.done() == set()


def test_remove_deletes_the_folder(tmp_path):
    journal = Journal(tmp_path / "j", MANIFEST)
    journal.commit("0-0", make_table(3))
    journal.remove()
    assert not (tmp_path / "j").exists()


def test_kill_9_during_commits_leaves_only_whole_parts(tmp_path):
    folder = tmp_path / "j"
    # The child loads the module from its file so that it skips importing torch through
    # geodetect.detect, and keeps committing until it is killed, mid-write or not.
    child = textwrap.dedent(
        f"""
        import importlib.util, sys
        import numpy as np
        spec = importlib.util.spec_from_file_location("journal", {journal_module.__file__!r})
        journal = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(journal)
        store = journal.Journal(journal.Path({str(folder)!r}), {MANIFEST!r})
        for i in range(100_000):
            n = 20_000 + i
            store.commit(f"b{{i}}", {{"x": np.arange(n, dtype=np.float64), "i": np.full(n, i)}})
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):
            assert proc.stdout.readline(), "the child died before committing five blocks"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    journal = Journal(folder, MANIFEST)
    assert journal.resumed == len(journal.done()) >= 5
    for key in journal.done():
        i = int(key[1:])
        table = journal.read(key)
        np.testing.assert_array_equal(table["x"], np.arange(20_000 + i, dtype=np.float64))
        np.testing.assert_array_equal(table["i"], np.full(20_000 + i, i))
    assert not list(folder.glob("*.tmp"))
