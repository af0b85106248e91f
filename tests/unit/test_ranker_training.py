"""The second stage's training (offline/ranker/training.py): its NDCG, the guard that a model
must beat the first stage's own orders, feature groups left out, and too little data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle_arrays, with_sessions

from offline.data.interactions import CLICK
from offline.ranker.settings import FEATURE_GROUPS, RankerSettings
from offline.ranker.training import TrainingRows, ndcg_at_10, train_ranker, training_rows
from recsvc.bundle import Bundle, load_bundle, write_bundle
from recsvc.candidates import CandidateSettings
from recsvc.exceptions import ConfigError, DataError
from recsvc.features import COLUMNS, FEATURES
from recsvc.forest import Forest
from recsvc.live import LiveSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # LightGBM's own


def test_training_queries_use_the_candidates_the_model_will_rank(tmp_path: Path) -> None:
    # Held out: one user views d, then e. d's pool is just a; V-SKNN proposes e after d.
    arrays = with_sessions(tiny_bundle_arrays()) | {"item_fit_events": np.full(5, 9)}
    arrays |= {
        "eval/users": np.zeros(2, np.int32),
        "eval/items": np.array([3, 4], np.int32),
        "eval/types": np.full(2, CLICK, np.int8),
        "eval/is_holdout": np.ones(2, bool),
        "eval/ts": np.array([10.0, 20.0]),
    }
    bundle = load_bundle(write_bundle(tmp_path, arrays, {}))
    with pytest.raises(DataError, match="none of the 1 cases"):
        training_rows(bundle, CandidateSettings(), negatives=5, seed=0)
    served = training_rows(bundle, CandidateSettings(knn_items=5), negatives=5, seed=0)
    assert served.groups.tolist() == [2]  # e (the target) and a
    assert served.labels.sum() == 1


def two_users_reach_a_new_item(tmp_path: Path) -> Bundle:
    """Held out: users 0 and 1 each view d, then e, which has no event before that day (d's
    pool is just a)."""
    arrays = tiny_bundle_arrays() | {"item_fit_events": np.array([9, 9, 9, 9, 0])}
    arrays |= {
        "eval/users": np.array([0, 0, 1, 1], np.int32),
        "eval/items": np.array([3, 4, 3, 4], np.int32),
        "eval/types": np.full(4, CLICK, np.int8),
        "eval/is_holdout": np.ones(4, bool),
        "eval/ts": np.array([10.0, 20.0, 30.0, 40.0]),
    }
    return load_bundle(write_bundle(tmp_path, arrays, {}))


def test_with_live_the_training_day_is_replayed_and_new_items_get_rows(tmp_path: Path) -> None:
    # Only the stream can propose e, once user 0 went from d to e.
    bundle = two_users_reach_a_new_item(tmp_path)
    with pytest.raises(DataError, match="none of the 2 cases"):
        training_rows(bundle, CandidateSettings(), negatives=5, seed=0)
    rows = training_rows(bundle, CandidateSettings(), negatives=5, seed=0, live=LiveSettings())
    # User 1's case only: at user 0's view nothing was co-visited yet.
    assert rows.groups.tolist() == [2] and rows.labels.sum() == 1  # e (a new item) and a
    target = rows.features[rows.labels == 1][0]
    assert target[COLUMNS["live_current"]] == 1.0  # all of d's co-visits
    assert np.isnan(target[COLUMNS["log_popularity"]])  # nothing from the bundle


def test_a_day_with_more_cases_than_the_budget_is_sampled_and_still_replayed(
    tmp_path: Path,
) -> None:
    # The day of the test above, budget one case: the replay still plays user 0's events,
    # so whichever case is drawn reads the state they built.
    bundle = two_users_reach_a_new_item(tmp_path)
    live = LiveSettings()
    whole = training_rows(bundle, CandidateSettings(), 5, seed=0, live=live, max_cases=2)
    assert (whole.cases, whole.used) == (2, 2)
    sampled = []
    for seed in range(8):
        try:
            rows = training_rows(bundle, CandidateSettings(), 5, seed=seed, live=live, max_cases=1)
            sampled.append((seed, rows))
        except DataError:
            continue  # user 0's case was drawn: it has no query, as in the whole day
    assert sampled, "no seed drew user 1's case"
    for seed, rows in sampled:
        assert (rows.cases, rows.used) == (2, 1)
        # the whole day's query: user 0's events were replayed before it
        whole = training_rows(bundle, CandidateSettings(), 5, seed=seed, live=live, max_cases=2)
        assert rows.groups.tolist() == whole.groups.tolist()
        assert rows.features.tobytes() == whole.features.tobytes()


def test_the_case_budget_must_allow_the_minimum_of_queries() -> None:
    with pytest.raises(ConfigError, match="max_cases"):
        RankerSettings(max_cases=100, min_queries=200)


def test_ndcg_by_hand() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0], np.float32)
    groups = np.array([3, 3])
    # query 1: target second of three -> 1/log2(3); query 2: target first -> 1
    scores = np.array([3.0, 2.0, 1.0, 5.0, 9.0, np.nan])
    assert ndcg_at_10(scores, labels, groups) == pytest.approx((1 / math.log2(3) + 1) / 2)
    # a tie with one other row counts half a row: rank 1.5; NaN goes last
    tied = np.array([2.0, 2.0, np.nan, 1.0, np.nan, 0.0])
    want = (1 / math.log2(2.5) + 1 / math.log2(4)) / 2
    assert ndcg_at_10(tied, labels, groups) == pytest.approx(want)


def rows_where(signal: str, queries: int = 400, size: int = 20, seed: int = 0) -> TrainingRows:
    """Queries whose target is the row with the highest ``signal`` column, and a second
    informative column (vsknn) that only orders the negatives' noise."""
    rng = np.random.default_rng(seed)
    n = queries * size
    features = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    labels = np.zeros(n, np.float32)
    for q in range(queries):
        block = slice(q * size, (q + 1) * size)
        target = q * size + int(np.argmax(features[block, COLUMNS[signal]]))
        labels[target] = 1
    return TrainingRows(features, labels, np.full(queries, size), queries, queries)


def test_a_model_that_only_matches_a_first_stage_order_is_refused() -> None:
    # The target is personalized's best row: the model can at best tie that baseline.
    with pytest.raises(DataError, match="does not beat personalized"):
        train_ranker(rows_where("personalized"), RankerSettings(), seed=1)


def test_a_model_that_beats_the_baselines_ships_and_records_them() -> None:
    rows = rows_where("age_days")  # no first-stage order knows it
    text, metrics = train_ranker(rows, RankerSettings(), seed=1)
    assert metrics["valid_ndcg10"] > max(metrics["baseline_ndcg10"].values())
    assert set(metrics["baseline_ndcg10"]) == {"personalized", "pool order", "item-CF", "V-SKNN"}
    assert Forest.from_model_text(text).feature_names == FEATURES


def test_left_out_groups_are_never_split_on() -> None:
    settings = RankerSettings(without="popularity,vsknn")
    text, metrics = train_ranker(rows_where("same_category"), settings, seed=1)
    left_out = {*FEATURE_GROUPS["popularity"], *FEATURE_GROUPS["vsknn"]}
    assert set(metrics["left_out"]) == left_out
    assert all(metrics["gain"][name] == 0 for name in left_out)
    assert "same_category" in text


def test_too_few_queries_train_nothing() -> None:
    with pytest.raises(DataError, match=r"150 training queries are too few .*min_queries=200"):
        train_ranker(rows_where("age_days", queries=150), RankerSettings(), seed=1)


def test_blank_group_names_are_ignored() -> None:
    assert RankerSettings(without="itemcf, ,").left_out_columns() == sorted(
        COLUMNS[name] for name in FEATURE_GROUPS["itemcf"]
    )


def test_unknown_groups_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown feature groups \['colour'\]"):
        RankerSettings(without="vsknn,colour")
    with pytest.raises(ConfigError, match="min_queries"):
        RankerSettings(min_queries=0)
