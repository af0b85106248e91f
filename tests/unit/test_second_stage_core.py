"""recsvc._second_stage, the compiled per-request work of the second stage: its merge of
candidates, and clean errors (never a crash) on arrays it cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc import _second_stage
from recsvc.features import COLUMNS, FEATURES

I32, U8 = np.int32, np.uint8


def merge(items: list[int], flags: list[int], current: int, cap: int) -> tuple[list, list]:
    """What CandidateCore makes of ``items`` proposed in order, written plainly: first
    occurrences with the OR of all their flags, without -1 and ``current``, at most ``cap``."""
    merged: dict[int, int] = {}
    for item, flag in zip(items, flags, strict=True):
        if item >= 0 and item != current:
            merged[item] = merged.get(item, 0) | flag
    kept = list(merged)[:cap]
    return kept, [merged[item] for item in kept]


def from_pool(row: list[int], flags: list[int], current: int, cap: int) -> tuple[list, list]:
    """CandidateCore's merge of one pool row (the current item's, row ``current``)."""
    pools = np.full((current + 1, max(len(row), 1)), -1, I32)
    sources = np.zeros(pools.shape, U8)
    pools[current, : len(row)], sources[current, : len(row)] = row, flags
    items, merged = _second_stage.CandidateCore(pools, sources).build(
        current, [], None, None, 0, None, 64, 32, cap
    )
    return np.frombuffer(items, I32).tolist(), np.frombuffer(merged, U8).tolist()


def test_merge_keeps_first_occurrences_with_every_flag() -> None:
    assert from_pool([5, -1, 3, 5, 9, 3, 7], [1, 1, 2, 4, 8, 16, 32], current=9, cap=10) == (
        [5, 3, 7],
        [1 | 4, 2 | 16, 32],
    )
    assert from_pool([5, 3, 7], [1, 2, 4], current=0, cap=2) == ([5, 3], [1, 2])
    assert from_pool([], [], current=0, cap=2) == ([], [])


@pytest.mark.parametrize("n", [0, 1, 7, 100, 500, 600])
def test_best_scored_orders_as_a_full_sort_would(n: int) -> None:
    rng = np.random.default_rng(n)
    items = rng.permutation(5000)[:500].astype(I32)
    scores = rng.integers(0, 40, 500).astype(np.float64) / 8  # many ties
    best = np.frombuffer(_second_stage.best_scored(items, scores, n), np.int64)
    assert best.tolist() == np.lexsort((items, -scores))[:n].tolist()
    with pytest.raises(ValueError, match="one entry per item"):
        _second_stage.best_scored(items, scores[:3], n)


@pytest.mark.parametrize("seed", range(40))
def test_top_positions_is_a_stable_argsort_of_the_negated_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, int(rng.integers(0, 60))).astype(np.float64)
    for value, share in ((np.nan, 0.2), (-np.inf, 0.2), (np.inf, 0.1)):
        scores[rng.random(len(scores)) < share] = value
    n = int(rng.integers(0, 70))
    got = np.frombuffer(_second_stage.top_positions(scores, n), np.int64)
    assert got.tolist() == np.argsort(-scores, kind="stable")[:n].tolist()


def test_top_positions_refuses_what_it_cannot_rank() -> None:
    with pytest.raises(TypeError, match="float64"):
        _second_stage.top_positions(np.zeros(3, np.float32), 2)
    with pytest.raises(ValueError, match="negative"):
        _second_stage.top_positions(np.zeros(3), -1)


@pytest.mark.parametrize("seed", range(30))
def test_candidate_core_merges_as_the_concatenated_proposals_would(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, width = 60, 12
    pools = rng.integers(-1, n_items, (n_items, width)).astype(I32)
    sources = rng.integers(0, 256, (n_items, width)).astype(U8)
    current = int(rng.integers(0, n_items))
    rows = rng.integers(0, n_items, int(rng.integers(0, 4))).tolist()
    live = rng.integers(0, n_items, int(rng.integers(0, 8))).astype(I32)
    knn_items = rng.permutation(n_items)[: int(rng.integers(0, 30))].astype(I32)
    knn_scores = rng.integers(1, 5, len(knn_items)).astype(np.float64)  # ties
    knn_n, cap = int(rng.integers(0, 20)), int(rng.integers(1, 60))
    best = np.frombuffer(_second_stage.best_scored(knn_items, knn_scores, knn_n), np.int64)
    proposed = [pools[current], live, knn_items[best], *(pools[r] for r in rows)]
    flags = [sources[current], np.full(len(live), 64, U8), np.full(len(best), 32, U8)]
    flags += [sources[r] for r in rows]
    expected = merge(np.concatenate(proposed).tolist(), np.concatenate(flags).tolist(),
                     current, cap)  # fmt: skip
    items, merged = _second_stage.CandidateCore(pools, sources).build(
        current, rows, knn_items, knn_scores, knn_n, live, 64, 32, cap
    )
    assert (np.frombuffer(items, I32).tolist(), np.frombuffer(merged, U8).tolist()) == expected


def test_candidate_core_refuses_bad_input() -> None:
    pools, sources = np.zeros((3, 2), I32), np.zeros((3, 2), U8)
    with pytest.raises(ValueError, match="shape of pools"):
        _second_stage.CandidateCore(pools, np.zeros((3, 3), U8))
    with pytest.raises(TypeError, match="int32"):
        _second_stage.CandidateCore(pools.astype(np.int64), sources)
    built = _second_stage.CandidateCore(pools, sources)
    with pytest.raises(IndexError, match="current item 3"):
        built.build(3, [], None, None, 0, None, 64, 32, 10)
    with pytest.raises(IndexError, match="row 5"):
        built.build(0, [5], None, None, 0, None, 64, 32, 10)
    with pytest.raises(ValueError, match="one entry per knn item"):
        built.build(0, [], np.array([1], I32), np.array([1.0, 2.0]), 1, None, 64, 32, 10)
    with pytest.raises(ValueError, match="negative"):
        built.build(0, [], None, None, 0, None, 64, 32, -1)


def core(**changes: object) -> _second_stage.FeatureCore:
    arrays: dict[str, object] = {
        "pools": np.array([[1, -1], [0, -1]], I32),
        "category": np.array([0, 1], I32),
        "static": np.zeros((2, 3), np.float32),
        "columns": COLUMNS,
        "source_column": COLUMNS["source_itemcf"],
        "source_bits": np.array([1, 2], U8),
        "n_features": len(FEATURES),
    }
    arrays.update(changes)
    return _second_stage.FeatureCore(**arrays)


def test_feature_core_refuses_arrays_it_cannot_use() -> None:
    with pytest.raises(TypeError, match="category must be a 1-d array of int32"):
        core(category=np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="one row per pool row"):
        core(static=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="no valid place for vsknn"):
        core(columns={k: v for k, v in COLUMNS.items() if k != "vsknn"})
    with pytest.raises(ValueError, match="itemcf must have the shape of pools"):
        core(itemcf=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="source columns"):
        core(source_column=len(FEATURES) - 1)
    model = {
        "input_embeddings": np.zeros((2, 4), np.float32),
        "output_embeddings": np.zeros((2, 4), np.float32),
        "position_weights": np.ones(0, np.float32),
        "scorable": np.ones(2, bool),
        "model_known": np.ones(2, bool),
    }
    with pytest.raises(ValueError, match="a position weight"):
        core(**model)
    with pytest.raises(TypeError, match="model_known"):
        core(**(model | {"position_weights": np.ones(3, np.float32), "model_known": None}))


def test_feature_core_refuses_bad_requests() -> None:
    built = core()
    out = np.empty((1, len(FEATURES)), np.float32)
    one, flag = np.array([1], I32), np.array([1], U8)
    with pytest.raises(IndexError, match="current item 2"):
        built.build(2, [], one, flag, None, None, out)
    with pytest.raises(IndexError, match="candidate 5"):
        built.build(0, [], np.array([5], I32), flag, None, None, out)
    with pytest.raises(ValueError, match="one row per candidate"):
        built.build(0, [], one, flag, None, None, np.empty((2, len(FEATURES)), np.float32))
    with pytest.raises(TypeError, match="visits"):
        built.build(0, None, one, flag, None, None, out)
    # V-SKNN items that are no candidate, or not an item at all, change nothing
    built.build(0, [], one, flag, np.array([-1, 7, 1], I32), np.array([9.0, 9.0, 0.5]), out)
    assert out[0, COLUMNS["vsknn"]] == 0.5
    with pytest.raises(RuntimeError, match="initialised once"):
        built.__init__(np.zeros((2, 2), I32), np.zeros(2, I32), np.zeros((2, 3), np.float32),
                       COLUMNS, 13, np.array([1], U8), len(FEATURES))  # fmt: skip
    # unknown visits (out of range, or -1) count as unknown
    built.build(0, [-1, 99], one, flag, None, None, out)
    assert out[0, COLUMNS["session_length"]] == 0
    assert out[0, COLUMNS["pool_position"]] == 0.0
    assert out[0, COLUMNS["source_itemcf"]] == 1.0 and np.isnan(out[0, COLUMNS["vsknn"]])
    with pytest.raises(ValueError, match="a window needs a model"):
        built.build(0, [], one, flag, None, None, out, [0])
    shares = np.array([[0.5, 0.25]], np.float32)
    with pytest.raises(ValueError, match="two columns per live item"):
        built.build(0, [], one, flag, None, None, out, None, np.array([1, 0], I32), shares)
    with pytest.raises(ValueError, match="absent_shares two values"):
        built.build(0, [], one, flag, None, None, out, None, None, None, np.zeros(3, np.float32))
    # the live shares go to candidates flagged live (bit 64 here) only
    live = core(live_bit=64)
    absent = np.array([0.0, np.nan], np.float32)
    live.build(0, [], one, np.array([64], U8), None, None, out, None, one, shares, absent)
    assert out[0, COLUMNS["live_current"]] == 0.5 and out[0, COLUMNS["live_session"]] == 0.25
    live.build(0, [], one, flag, None, None, out, None, one, shares, absent)
    assert out[0, COLUMNS["live_current"]] == 0.0 and np.isnan(out[0, COLUMNS["live_session"]])


def test_session_knn_refuses_arrays_that_do_not_fit() -> None:
    items, offsets = np.array([0, 1], I32), np.array([0, 2], np.int64)
    by_item, item_offsets = np.array([0, 0], I32), np.array([0, 1, 2], np.int64)
    idf = np.zeros(2, np.float32)
    index = _second_stage.SessionKNN(items, offsets, by_item, item_offsets, idf)
    got_items, got_scores = index.scores([0], 5, 10, True, 0.0)
    assert np.frombuffer(got_items, I32).tolist() == [1]
    assert np.frombuffer(got_scores, np.float64).tolist() == [1 / np.sqrt(2)]
    with pytest.raises(ValueError, match="do not fit"):
        _second_stage.SessionKNN(items, np.array([0, 3], np.int64), by_item, item_offsets, idf)
    with pytest.raises(ValueError, match="out of range"):
        _second_stage.SessionKNN(np.array([0, 7], I32), offsets, by_item, item_offsets, idf)
    with pytest.raises(ValueError, match="k and sample_size"):
        index.scores([0], 0, 10, True, 0.0)
