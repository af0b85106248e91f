"""Stage checkpoints: round trip, damage, atomic saves, the run key and the stage figures."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from offline.checkpoint import (
    RECORD,
    Checkpoint,
    CheckpointDamaged,
    load_stage,
    run_key,
    save_stage,
)
from offline.config import PipelineConfig
from offline.data.events import TAOBAO_SPEC
from offline.features.image import MODEL_RELATIVE_PATH
from offline.pipeline import PipelineInputs, _neighbours_stage, open_checkpoint
from offline.sources.base import Neighbours
from offline.timings import Timings
from recsvc.cli import main


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
    assert checkpoint.saved_stages() == ["item2vec"]
    stage = checkpoint.load("item2vec")
    assert stage is not None
    np.testing.assert_array_equal(stage.arrays["embeddings"], [[0, 1], [2, 3], [4, 5]])
    assert stage.arrays["embeddings"].dtype == np.float32
    np.testing.assert_array_equal(stage.arrays["models/click/known"], [True, False, True])
    assert (stage.seconds, stage.peak_mib) == (12.5, 300.0)
    assert stage.metrics == {"item2vec_losses": [0.5, 0.25]}
    assert checkpoint.load("personalized") is None


def test_a_damaged_stage_is_reported_deleted_and_run_again(tmp_path: Path, capsys):
    checkpoint = saved(tmp_path)
    path = checkpoint.folder / "item2vec" / "embeddings.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit of the last float
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match=r"item2vec.*does not match its checksum"):
        checkpoint.load("item2vec")
    path.unlink()
    with pytest.raises(CheckpointDamaged, match=re.escape(str(checkpoint.folder / "item2vec"))):
        checkpoint.load("item2vec")
    for text in ("{not json", "[1, 2]", json.dumps({"arrays": {}})):
        (checkpoint.folder / "item2vec" / RECORD).write_text(text)
        with pytest.raises(CheckpointDamaged):
            checkpoint.load("item2vec")

    timings = Timings()
    assert load_stage(checkpoint, "item2vec", timings) is None
    out = capsys.readouterr().out
    assert "checkpoint of stage item2vec" in out and "the stage runs again" in out
    assert checkpoint.saved_stages() == [] and timings.seconds == {}


def test_a_save_that_did_not_finish_leaves_no_stage(tmp_path: Path):
    checkpoint = Checkpoint(tmp_path, "run")
    with pytest.raises(ValueError, match="relative file name"):
        checkpoint.save("item2vec", {"ok": np.zeros(2), "../escape": np.zeros(2)}, 1.0, 1.0, {})
    assert checkpoint.saved_stages() == []
    assert checkpoint.load("item2vec") is None
    assert list(checkpoint.folder.iterdir()) == []  # nor a half-written folder
    # A run killed between writing and renaming leaves a hidden folder: not a stage.
    hidden = checkpoint.folder / ".item2vec.tmp-1"
    hidden.mkdir()
    (hidden / RECORD).write_text("{}")
    assert checkpoint.saved_stages() == []


def test_saving_again_replaces_the_stage(tmp_path: Path):
    checkpoint = saved(tmp_path)
    checkpoint.save("item2vec", {"embeddings": np.ones(2)}, 1.0, 2.0, {})
    stage = checkpoint.load("item2vec")
    assert stage is not None and list(stage.arrays) == ["embeddings"]
    assert sorted(p.name for p in checkpoint.folder.iterdir()) == ["item2vec"]


def test_remove_deletes_the_run_and_its_children_and_leaves_other_runs(tmp_path: Path):
    root = tmp_path / "checkpoints"
    ours, theirs = Checkpoint(root, "ours"), Checkpoint(root, "theirs")
    for checkpoint in (ours, theirs):
        checkpoint.save("item2vec", {"a": np.zeros(1)}, 1.0, 1.0, {})
    build = ours.child("build")
    build.save("neighbours", {"a": np.zeros(1)}, 1.0, 1.0, {})
    assert ours.saved_stages() == ["item2vec"] and build.saved_stages() == ["neighbours"]
    assert ours.saved_stages(nested=True) == ["item2vec", "build/neighbours"]
    build.remove()
    assert ours.saved_stages() == ["item2vec"]  # a child's removal leaves its parent
    ours.remove()
    assert not ours.folder.exists() and theirs.saved_stages() == ["item2vec"]
    theirs.remove()
    assert not root.exists()


def test_the_run_key_follows_the_input_files_and_the_settings(tmp_path: Path):
    log = tmp_path / "events.csv"
    log.write_text("1,2,3,pv,1511539200\n")
    images = tmp_path / "images"
    images.mkdir()
    (images / "2.jpg").write_bytes(b"a photo")
    identity = {"inputs": {"events": log, "images": images}, "parameters": {"pool": 200}}
    key = run_key(identity)
    assert run_key(identity) == key
    assert run_key({**identity, "seed": 8}) != key
    assert run_key({**identity, "parameters": {"pool": 100}}) != key
    stat = log.stat()
    os.utime(log, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert run_key(identity) != key  # the file was written again
    key = run_key(identity)
    (images / "2.jpg").write_bytes(b"another photo")  # a file inside a folder
    assert run_key(identity) != key
    assert run_key({**identity, "inputs": {"events": tmp_path / "missing.csv"}}) != key


def test_the_pipeline_keys_a_run_by_what_changes_its_bundle(tmp_path: Path):
    log = tmp_path / "events.csv"
    log.write_text("1,2,3,pv,1511539200\n")
    inputs = PipelineInputs(events=log, spec=TAOBAO_SPEC, checkpoint=tmp_path / "c")
    config = PipelineConfig()

    def folder(**changes) -> Path:
        changed = PipelineInputs(**{**inputs.__dict__, **changes})
        checkpoint = open_checkpoint(changed, config, 7, "taobao")
        assert checkpoint is not None
        return checkpoint.folder

    base = folder()
    assert base.is_dir()  # made at once, before any stage
    assert folder(feature_cache=tmp_path / "cache.sqlite", spark_master="spark://h:7077") == base
    assert folder(engine="spark") != base
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (shared / "data" / "README.md").write_text("a copy of the shared folder\n")
    assert folder(shared=shared) == base  # read only to embed images
    model = shared / MODEL_RELATIVE_PATH
    model.parent.mkdir(parents=True)
    model.write_bytes(b"a model")
    photos = tmp_path / "photos"
    photos.mkdir()
    images = folder(shared=shared, item_images=photos)
    assert images != base
    (shared / "data" / "README.md").write_text("provisioned again\n")
    assert folder(shared=shared, item_images=photos) == images
    model.write_bytes(b"another model")
    assert folder(shared=shared, item_images=photos) != images
    assert folder(timezone="+08:00") != base
    assert open_checkpoint(inputs, config, 8, "taobao").folder != base  # type: ignore[union-attr]


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


def test_a_stage_that_cannot_be_written_leaves_the_run_going(tmp_path: Path, capsys):
    checkpoint = Checkpoint(tmp_path, "run")
    checkpoint.folder.write_text("")  # the run's folder is a file now: nothing can be written
    timings = Timings(seconds={"item2vec": 3.0}, peak_mib={"item2vec": 10.0})
    assert not save_stage(checkpoint, "item2vec", timings, {"a": np.zeros(1)}, {})
    assert "stage item2vec not saved" in capsys.readouterr().out
    assert save_stage(None, "item2vec", timings, {}, {}) is False


def test_a_stage_counts_the_work_its_build_loaded_from_a_checkpoint(capsys):
    outer = Timings(seconds={"second_stage": 10.0}, peak_mib={"second_stage": 100.0})
    inner = Timings(seconds={"pools": 1.0}, peak_mib={"pools": 60.0})
    inner.restore("item2vec", 30.0, 400.0, "then")
    inner.restore("neighbours", 5.0, 50.0, "then")
    outer.absorb("second_stage", inner)
    assert outer.seconds == {"second_stage": 45.0}  # pools ran in this run: already counted
    assert outer.peak_mib == {"second_stage": 400.0}
    assert outer.resumed == {"second_stage": {"in_part": ["item2vec", "neighbours"]}}
    assert outer.loaded_s == 35.0
    assert "stage item2vec: loaded from the checkpoint (it ran 30s" in capsys.readouterr().out
    unchanged = Timings(seconds={"second_stage": 10.0}, peak_mib={"second_stage": 100.0})
    unchanged.absorb("second_stage", Timings(seconds={"pools": 1.0}, peak_mib={"pools": 1.0}))
    assert (unchanged.seconds, unchanged.resumed) == ({"second_stage": 10.0}, {})


class CountingSource:
    """A candidate source with fixed neighbours that counts its searches."""

    def __init__(self, value: int) -> None:
        self.value, self.searches = value, 0

    def neighbours(self, k: int) -> Neighbours:
        self.searches += 1
        return Neighbours(np.full((3, k), self.value, np.int32), np.ones((3, k), np.float32))


def test_saved_neighbours_are_used_only_when_they_cover_every_source(tmp_path: Path, capsys):
    checkpoint = Checkpoint(tmp_path, "run")
    sources = {"itemcf": CountingSource(1), "item2vec": CountingSource(2)}
    first = _neighbours_stage(sources, 2, Timings(), checkpoint)  # type: ignore[arg-type]
    assert [s.searches for s in sources.values()] == [1, 1]

    timings = Timings()
    again = _neighbours_stage(sources, 2, timings, checkpoint)  # type: ignore[arg-type]
    assert [s.searches for s in sources.values()] == [1, 1]  # loaded, not searched
    assert set(timings.resumed) == {"neighbours"}
    for name in sources:
        np.testing.assert_array_equal(again[name].items, first[name].items)

    more = {**sources, "image": CountingSource(3)}  # a source the saved stage lacks
    timings = Timings()
    found = _neighbours_stage(more, 2, timings, checkpoint)  # type: ignore[arg-type]
    assert [s.searches for s in more.values()] == [2, 2, 1]
    assert "lack a source" in capsys.readouterr().out
    assert timings.resumed == {} and timings.loaded_s == 0.0 and "neighbours" in timings.seconds
    assert found["image"].items[0, 0] == 3
