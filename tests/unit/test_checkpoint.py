"""Stage checkpoints: round trip, damage, atomic saves and the run key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from offline.checkpoint import RECORD, Checkpoint, run_key
from offline.pipeline import Timings, _save_stage
from recsvc.cli import main
from recsvc.exceptions import DataError


def saved(tmp_path: Path) -> Checkpoint:
    checkpoint = Checkpoint(tmp_path / "checkpoints", "run")
    arrays = {
        "embeddings": np.arange(6, dtype=np.float32).reshape(3, 2),
        "models/click/known": np.array([True, False, True]),
    }
    checkpoint.save("item2vec", arrays, 12.5, 300.0, {"item2vec_losses": [0.5, 0.25]})
    return checkpoint


def test_a_saved_stage_loads_as_it_was_saved(tmp_path: Path):
    checkpoint = saved(tmp_path)
    assert checkpoint.done() == ["item2vec"]
    stage = checkpoint.load("item2vec")
    assert stage is not None
    np.testing.assert_array_equal(stage.arrays["embeddings"], [[0, 1], [2, 3], [4, 5]])
    assert stage.arrays["embeddings"].dtype == np.float32
    np.testing.assert_array_equal(stage.arrays["models/click/known"], [True, False, True])
    assert (stage.seconds, stage.peak_mib) == (12.5, 300.0)
    assert stage.metrics == {"item2vec_losses": [0.5, 0.25]}
    assert checkpoint.load("personalized") is None


def test_a_damaged_stage_is_an_error_naming_its_folder(tmp_path: Path):
    checkpoint = saved(tmp_path)
    path = checkpoint.folder / "item2vec" / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit of the last float
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"item2vec.*does not match its checksum.*delete"):
        checkpoint.load("item2vec")
    path.unlink()
    with pytest.raises(DataError, match=re.escape(str(checkpoint.folder / "item2vec"))):
        checkpoint.load("item2vec")
    (checkpoint.folder / "item2vec" / RECORD).write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        checkpoint.load("item2vec")


def test_a_save_that_did_not_finish_leaves_no_stage(tmp_path: Path):
    checkpoint = Checkpoint(tmp_path, "run")
    with pytest.raises(ValueError, match="relative file name"):
        checkpoint.save("item2vec", {"ok": np.zeros(2), "../escape": np.zeros(2)}, 1.0, 1.0, {})
    assert checkpoint.done() == []
    assert checkpoint.load("item2vec") is None
    assert list(checkpoint.folder.iterdir()) == []  # nor a half-written folder


def test_saving_again_replaces_the_stage(tmp_path: Path):
    checkpoint = saved(tmp_path)
    checkpoint.save("item2vec", {"embeddings": np.ones(2)}, 1.0, 2.0, {})
    stage = checkpoint.load("item2vec")
    assert stage is not None and list(stage.arrays) == ["embeddings"]
    assert sorted(p.name for p in checkpoint.folder.iterdir()) == ["item2vec"]


def test_remove_deletes_the_run_and_leaves_other_runs(tmp_path: Path):
    root = tmp_path / "checkpoints"
    ours, theirs = Checkpoint(root, "ours"), Checkpoint(root, "theirs")
    for checkpoint in (ours, theirs):
        checkpoint.save("item2vec", {"a": np.zeros(1)}, 1.0, 1.0, {})
    ours.remove()
    assert not ours.folder.exists() and theirs.done() == ["item2vec"]
    theirs.remove()
    assert not root.exists()


def test_the_run_key_follows_the_input_files_and_the_settings(tmp_path: Path):
    log = tmp_path / "events.csv"
    log.write_text("1,2,3,pv,1511539200\n")
    identity = {"inputs": {"events": log}, "parameters": {"pool_size": 200}, "seed": 7}
    key = run_key(identity)
    assert run_key(identity) == key
    assert run_key({**identity, "seed": 8}) != key
    assert run_key({**identity, "parameters": {"pool_size": 100}}) != key
    stat = log.stat()
    os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert run_key(identity) != key  # the file was written again
    assert run_key({**identity, "inputs": {"events": tmp_path / "missing.csv"}}) != key


def test_a_checkpoint_folder_that_cannot_be_made_stops_the_run_before_it_starts(
    tmp_path: Path, capsys
):
    taken = tmp_path / "a-file"
    taken.write_text("")
    events = tmp_path / "events.csv"
    events.write_text("1,2,3,pv,1511539200\n")
    command = ["pipeline", "--format", "taobao", "--events", str(events)]
    code = main([*command, "--out", str(tmp_path / "out"), "--checkpoint", str(taken)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {taken}: cannot make {taken}/" in err and "Traceback" not in err


def test_a_stage_that_cannot_be_saved_leaves_the_run_going(tmp_path: Path, monkeypatch, capsys):
    checkpoint = Checkpoint(tmp_path, "run")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    timings = Timings(seconds={"item2vec": 3.0}, peak_mib={"item2vec": 10.0})
    _save_stage(checkpoint, "item2vec", timings, {"a": np.zeros(1)}, {})
    assert "stage item2vec not saved" in capsys.readouterr().out


def test_a_stage_counts_the_work_its_build_loaded_from_a_checkpoint():
    outer = Timings(seconds={"second_stage": 10.0}, peak_mib={"second_stage": 100.0})
    inner = Timings(
        seconds={"item2vec": 30.0, "neighbours": 5.0, "pools": 1.0},
        peak_mib={"item2vec": 400.0, "neighbours": 50.0, "pools": 60.0},
        resumed={"item2vec": "then", "neighbours": "then"},
    )
    outer.absorb("second_stage", inner)
    assert outer.seconds == {"second_stage": 45.0}  # pools ran in this run: already counted
    assert outer.peak_mib == {"second_stage": 400.0}
    assert outer.resumed == {"second_stage": "in part: item2vec, neighbours"}
    unchanged = Timings(seconds={"second_stage": 10.0}, peak_mib={"second_stage": 100.0})
    unchanged.absorb("second_stage", Timings(seconds={"pools": 1.0}, peak_mib={"pools": 1.0}))
    assert (unchanged.seconds, unchanged.resumed) == ({"second_stage": 10.0}, {})
