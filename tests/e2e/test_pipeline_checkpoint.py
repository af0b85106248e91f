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


def run_stopped(command: list[str], monkeypatch, name: str, call: int = 1) -> None:
    """Run ``command``, stopped at the ``call``-th call of :mod:`offline.pipeline`'s
    ``name``."""
    original, calls = getattr(offline.pipeline, name), []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Stopped
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(offline.pipeline, name, stop)
        with pytest.raises(Stopped):
            main(command)


def test_a_stopped_run_resumes_from_its_checkpoint(
    taobao_slice: Path, taobao_bundle: Path, tmp_path: Path, monkeypatch, capsys
):
    out, checkpoints = tmp_path / "bundles", tmp_path / "checkpoints"
    command = ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out", str(out)]
    command += [*SMALL, "--checkpoint", str(checkpoints)]

    # Stopped inside the second stage's own first-stage build, as it trains the personalized
    # models (the first of the two trainings): what the build finished is kept.
    run_stopped(command, monkeypatch, "_train_personalized", call=1)
    (run,) = checkpoints.iterdir()
    build = run / offline.pipeline.SECOND_STAGE_BUILD
    assert sorted(p.name for p in run.iterdir()) == [build.name]
    assert sorted(p.name for p in build.iterdir()) == ["item2vec", "neighbours"]
    capsys.readouterr()

    # Stopped again as it writes the bundle (the second write: the first is the second
    # stage's own): every costly stage is kept, the second stage whole (its build's folder
    # goes).
    run_stopped(command, monkeypatch, "write_bundle", call=2)
    printed = capsys.readouterr().out
    saved = [f"{build.name}/{stage}" for stage in ("item2vec", "neighbours")]
    assert f"checkpoint: {run} (saved stages: {', '.join(saved)})" in printed
    assert "stage item2vec: loaded from the checkpoint" in printed
    assert "stage neighbours: loaded from the checkpoint" in printed
    stages = ["item2vec", "neighbours", "personalized", "second_stage"]
    assert sorted(p.name for p in run.iterdir()) == stages
    record = json.loads((run / "second_stage" / "stage.json").read_text())
    assert not out.exists()

    assert main(command) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint: {run} (saved stages: {', '.join(stages)})" in printed
    for stage in stages:
        assert f"stage {stage}: loaded from the checkpoint" in printed
    assert not checkpoints.exists()  # removed with the bundle written

    resumed, reference = load_bundle(out), load_bundle(taobao_bundle)
    assert set(resumed.manifest["resumed"]) == set(stages)
    assert "resumed" not in reference.manifest
    timings = resumed.manifest["timings"]
    assert list(timings) == list(reference.manifest["timings"])
    # The second stage's seconds count its build's stages from the first run too.
    assert timings["second_stage"] == record["seconds"]
    assert record["seconds"] > timings["item2vec"] + timings["neighbours"] > 0
    assert json.dumps(resumed.manifest["metrics"], sort_keys=True) == json.dumps(
        reference.manifest["metrics"], sort_keys=True
    )
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
