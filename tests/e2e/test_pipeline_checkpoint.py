"""``recsvc pipeline --checkpoint``: a run stopped in the middle resumes from the saved
stages, and writes the bundle an uninterrupted run writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL

import offline.pipeline
from recsvc.bundle import load_bundle
from recsvc.cli import main

pytestmark = pytest.mark.slow


class Stopped(Exception):
    """Stands for the run being stopped (a kill, a crash, the machine going away)."""


def run_stopped_at_personalized(command: list[str], call: int, monkeypatch) -> None:
    """Run ``command``, stopped when it trains the personalized models for the ``call``-th
    time: the first is in the second stage's own first-stage build, the second the
    bundle's own, the last costly stage."""
    train, calls = offline.pipeline._train_personalized, []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Stopped
        return train(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(offline.pipeline, "_train_personalized", stop)
        with pytest.raises(Stopped):
            main(command)


def test_a_stopped_run_resumes_from_its_checkpoint(
    taobao_slice: Path, taobao_bundle: Path, tmp_path: Path, monkeypatch, capsys
):
    out, checkpoints = tmp_path / "bundles", tmp_path / "checkpoints"
    command = ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out", str(out)]
    command += [*SMALL, "--checkpoint", str(checkpoints)]

    # Stopped inside the second stage's build: what that build finished is kept.
    run_stopped_at_personalized(command, 1, monkeypatch)
    (run,) = checkpoints.iterdir()
    build = run / offline.pipeline.SECOND_STAGE_BUILD
    assert sorted(p.name for p in run.iterdir()) == [build.name]
    assert sorted(p.name for p in build.iterdir()) == ["item2vec", "neighbours"]
    capsys.readouterr()

    # Stopped again, in the bundle's last stage: the second stage is kept whole.
    run_stopped_at_personalized(command, 2, monkeypatch)
    printed = capsys.readouterr().out
    assert "stage item2vec: loaded from the checkpoint" in printed
    assert "stage neighbours: loaded from the checkpoint" in printed
    assert sorted(p.name for p in run.iterdir()) == ["item2vec", "neighbours", "second_stage"]
    record = json.loads((run / "second_stage" / "stage.json").read_text())
    assert not out.exists()

    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {run} (saved stages: item2vec, neighbours, second_stage)" in printed
    for stage in ("second_stage", "item2vec", "neighbours"):
        assert f"stage {stage}: loaded from the checkpoint" in printed
    assert not checkpoints.exists()  # removed with the bundle written

    resumed, reference = load_bundle(out), load_bundle(taobao_bundle)
    assert set(resumed.manifest["resumed"]) == {"second_stage", "item2vec", "neighbours"}
    timings = resumed.manifest["timings"]
    # The second stage's seconds count its build's stages from the first run too.
    assert timings["second_stage"] == record["seconds"]
    assert record["seconds"] > timings["item2vec"] + timings["neighbours"] > 0
    assert "resumed" not in reference.manifest
    # The same bundle as the uninterrupted run of the same command (the session's bundle).
    # It was bit for bit when this test was written; the tolerances are TensorFlow's
    # run-to-run noise (test_train_pss_cli.py), which can swap two close neighbours.
    assert set(resumed.arrays) == set(reference.arrays)
    exact = ("ranker/model", "embeddings/item2vec", "item_ids", "sessions/items")
    for name in exact:
        np.testing.assert_array_equal(np.asarray(resumed[name]), np.asarray(reference[name]))
    same = np.asarray(resumed["pools"]) == np.asarray(reference["pools"])
    assert same.mean() > 0.99
    for name in resumed.arrays:
        mine, theirs = np.asarray(resumed[name]), np.asarray(reference[name])
        if name.startswith("pool_"):
            mine, theirs = mine[same], theirs[same]
        if mine.dtype.kind == "f":  # NaN where the reference has NaN
            np.testing.assert_allclose(mine, theirs, atol=1e-4, err_msg=name)
        elif name != "pools":
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
    metrics = resumed.manifest["metrics"]
    assert json.dumps(metrics["second_stage"]) == json.dumps(
        reference.manifest["metrics"]["second_stage"]
    )
    assert metrics["item2vec_losses"] == reference.manifest["metrics"]["item2vec_losses"]
