"""``recsvc eval --replay``: cases ranked with the live state of the events before them only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from helpers import tiny_bundle_arrays

from offline.evaluation.evaluate import evaluate
from offline.evaluation.served import MISS
from recsvc.bundle import load_bundle, write_bundle
from recsvc.live import LiveSettings

D, E = 3, 4  # d's pool is just a; e is new in the held-out period (no event before it)


def replay_bundle(tmp_path: Path) -> Path:
    """Three shoppers view d and then e, at different times of the held-out day:
    user 2 at 50 s, user 0 at 100 s, user 1 at 200 s."""
    arrays = tiny_bundle_arrays()
    arrays |= {
        "item_fit_events": np.array([9, 9, 9, 9, 0]),
        "eval/users": np.array([0, 0, 1, 1, 2, 2], np.int32),
        "eval/items": np.array([D, E, D, E, D, E], np.int32),
        "eval/types": np.zeros(6, np.int8),  # clicks
        "eval/ts": np.array([100.0, 110, 200, 210, 50, 60]),
        "eval/is_holdout": np.ones(6, dtype=bool),
    }
    return write_bundle(tmp_path, arrays, {})


def test_a_case_sees_the_co_visits_of_earlier_events_only(tmp_path: Path) -> None:
    bundle = load_bundle(replay_bundle(tmp_path))
    evaluation = evaluate(bundle, methods=["served"], replay=LiveSettings())
    users = evaluation.cases.users.tolist()
    assert users == [0, 1, 2]
    # Without the stream, e is out of d's pool: every case misses.
    assert evaluation.ranks["served"].tolist() == [MISS] * 3
    # With it: user 2 views d first, before anyone went from d to e, so that case misses;
    # users 0 and 1 come after a co-visit of d and e, which makes e a candidate.
    live = evaluation.ranks["served_live"]
    assert live[users.index(2)] == MISS
    assert live[users.index(0)] != MISS and live[users.index(1)] != MISS
    replay = evaluation.replay
    assert replay is not None and replay.events == 6 and replay.new_items == 1
    # e, first clicked at 60 s, is first recommended at user 0's view (100 s)
    assert replay.lags_s.tolist() == [40.0]
    assert replay.summary()["new_items_recommended"] == 1


def test_the_replay_leaves_the_served_method_as_it_was(tmp_path: Path) -> None:
    bundle = load_bundle(replay_bundle(tmp_path))
    plain = evaluate(bundle, methods=["served"])
    replayed = evaluate(bundle, methods=["served"], replay=LiveSettings())
    assert plain.ranks["served"].tolist() == replayed.ranks["served"].tolist()
    assert "served_live" not in plain.ranks and plain.replay is None


def test_the_command_reports_the_replay_and_refuses_bad_live_settings(
    tmp_path: Path, capsys
) -> None:
    from recsvc.cli import main

    bundle = str(replay_bundle(tmp_path / "bundle"))
    out = tmp_path / "eval.json"
    base = ["eval", "--bundle", bundle, "--json", str(out), "--methods", "served"]
    assert main([*base, "--replay", "--param", "live.read_top=5"]) == 0
    printed = capsys.readouterr().out
    assert "served_live - served on click hr@10" in printed
    assert "Cases whose next item is new in the held-out period" in printed
    result = json.loads(out.read_text())
    assert result["replay"]["new_items_recommended"] == 1
    assert "served_live" in result["methods"]
    for args, message in (
        (["--replay", "--param", "live.nope=1"], "live.FIELD=VALUE takes half_life_s"),
        (["--replay", "--param", "live.read_top=x"], "'x' is not a number"),
        (["--replay", "--param", "live.cap=0"], "live cap must be an int >= 1"),
        (["--param", "live.cap=3"], "sets up --replay, which is not given"),
    ):
        assert main([*base, *args]) == 2, args
        assert message in capsys.readouterr().err


def test_no_method_asked_scores_the_replay_alone(tmp_path: Path) -> None:
    bundle = load_bundle(replay_bundle(tmp_path))
    alone = evaluate(bundle, methods=[], replay=LiveSettings())
    both = evaluate(bundle, methods=["served"], replay=LiveSettings())
    assert list(alone.ranks) == ["served_live"]
    assert alone.ranks["served_live"].tolist() == both.ranks["served_live"].tolist()
