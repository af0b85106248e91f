"""recsvc._second_stage, the compiled per-request work of the second stage: its merge of
candidates, and clean errors (never a crash) on arrays it cannot use."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc import _second_stage
from recsvc.features import COLUMNS, FEATURES

I32, U8 = np.int32, np.uint8


def merge(items: list[int], flags: list[int], current: int, cap: int) -> tuple[list, list]:
    got_items, got_flags = _second_stage.merge_candidates(
        np.array(items, I32), np.array(flags, U8), current, cap
    )
    return np.frombuffer(got_items, I32).tolist(), np.frombuffer(got_flags, U8).tolist()


def test_merge_keeps_first_occurrences_with_every_flag() -> None:
    assert merge([5, -1, 3, 5, 9, 3, 7], [1, 1, 2, 4, 8, 16, 32], current=9, cap=10) == (
        [5, 3, 7],
        [1 | 4, 2 | 16, 32],
    )
    assert merge([5, 3, 7], [1, 2, 4], current=0, cap=2) == ([5, 3], [1, 2])
    assert merge([], [], current=0, cap=2) == ([], [])


@pytest.mark.parametrize("n", [0, 1, 7, 100, 500, 600])
def test_best_scored_orders_as_a_full_sort_would(n: int) -> None:
    rng = np.random.default_rng(n)
    items = rng.permutation(5000)[:500].astype(I32)
    scores = rng.integers(0, 40, 500).astype(np.float64) / 8  # many ties
    best = np.frombuffer(_second_stage.best_scored(items, scores, n), np.int64)
    assert best.tolist() == np.lexsort((items, -scores))[:n].tolist()
    with pytest.raises(ValueError, match="one entry per item"):
        _second_stage.best_scored(items, scores[:3], n)


def test_merge_refuses_bad_arrays() -> None:
    with pytest.raises(ValueError, match="one entry per item"):
        merge([1, 2], [1], current=0, cap=5)
    with pytest.raises(TypeError, match="int32"):
        _second_stage.merge_candidates(np.array([1, 2]), np.array([1, 1], U8), 0, 5)
    with pytest.raises(ValueError, match="cap"):
        merge([1], [1], current=0, cap=-1)


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
