"""Partitioned annoy search: merged answers against one index and brute force, the heap merge,
the attribute post-filter, and the errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline.ann.partitioned import (
    build_partitioned,
    merge_top_k,
    partition_members,
    query_partitioned,
    same_attributes,
)
from offline.ann.search import build_index, exact_neighbours, query_neighbours, usable_rows
from recsvc.exceptions import ConfigError, DataError


def random_vectors(seed: int, n: int = 300, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    known = rng.random(n) > 0.1
    return vectors, known


def test_contiguous_and_given_partitions() -> None:
    parts = partition_members(7, 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    parts = partition_members(6, partition_ids=np.array([2, 0, 2, 1, 0, 2]))
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    assert all(p.dtype == np.int64 for p in parts)


def test_merged_answer_equals_one_index_and_brute_force() -> None:
    vectors, known = random_vectors(1)
    k = 10
    index = build_partitioned(vectors, known, n_partitions=3, n_trees=50, seed=3, progress=False)
    merged = query_partitioned(index, vectors, k, workers=0)
    single_index = build_index(vectors, known, n_trees=100, seed=3, progress=False)
    single = query_neighbours(single_index, usable_rows(vectors, known), k, progress=False)
    exact = exact_neighbours(vectors, known, k)
    np.testing.assert_array_equal(merged.items, single.items)
    np.testing.assert_array_equal(merged.items, exact.items)
    np.testing.assert_allclose(merged.scores, exact.scores, atol=1e-5)
    assert merged.items.dtype == np.int32 and merged.scores.dtype == np.float32
    assert merged.items.shape == merged.scores.shape == (len(vectors), k)
    np.testing.assert_array_equal(merged.items[~known], -1)
    assert np.isnan(merged.scores[~known]).all()
    for item in np.flatnonzero(known):
        assert item not in merged.items[item]


def test_worker_processes_on_a_saved_index_give_the_same_answer(tmp_path: Path) -> None:
    vectors, known = random_vectors(2)
    ids = np.random.default_rng(0).integers(0, 3, size=len(vectors))
    built = build_partitioned(
        vectors, known, partition_ids=ids, n_trees=50, seed=1, directory=tmp_path, progress=False
    )
    items = np.array([5, 17, 42, 299])
    in_process = query_partitioned(built, vectors, 12, items=items, workers=0)
    in_workers = query_partitioned(built, vectors, 12, items=items, workers=2, batch=3)
    exact = exact_neighbours(vectors, known, 12, items=items)
    np.testing.assert_array_equal(in_workers.items, in_process.items)
    np.testing.assert_array_equal(in_workers.scores, in_process.scores)
    np.testing.assert_array_equal(in_workers.items, exact.items)
    others = np.setdiff1d(np.arange(len(vectors)), items)
    assert (in_workers.items[others] == -1).all()


def test_heap_merge_by_hand() -> None:
    lists = [
        [(0.9, 4), (0.5, 7), (0.1, 2)],
        [(0.95, 10), (0.5, 3), (0.2, 11)],
        [],
        [(0.7, 20)],
    ]
    # The 0.5 tie goes to the lower item, 3 before 7.
    assert merge_top_k(lists, 4) == [(0.95, 10), (0.9, 4), (0.7, 20), (0.5, 3)]
    assert [item for _, item in merge_top_k(lists, 100)] == [10, 4, 20, 3, 7, 11, 2]
    assert merge_top_k([[], []], 3) == []


# 2-d vectors, by angle from item 0 = (1, 0); categories alternate between the close items:
#   item 1 (cat 1) is nearest, then 2 (cat 0), 3 (cat 1), 4 (cat 0, at 90°), 5 (cat 0, at 180°).
FILTER_VECTORS = np.array([[1, 0], [1, 0.1], [1, 0.3], [1, 0.5], [0, 1], [-1, 0]], dtype=np.float32)
CATEGORY = np.array([0, 1, 0, 1, 0, 0])


def test_post_filter_drops_other_categories_by_hand() -> None:
    index = build_partitioned(FILTER_VECTORS, n_partitions=2, n_trees=10, progress=False)
    plain = query_partitioned(index, FILTER_VECTORS, 2, items=np.array([0, 1]), workers=0)
    np.testing.assert_array_equal(plain.items[[0, 1]], [[1, 2], [0, 2]])
    kept = query_partitioned(
        index, FILTER_VECTORS, 3, items=np.array([0, 1]), workers=0, attributes=CATEGORY
    )
    # Item 0 skips 1 and 3 (category 1); item 1 has a single other category-1 item: a short row.
    np.testing.assert_array_equal(kept.items[[0, 1]], [[2, 4, 5], [3, -1, -1]])
    assert np.isnan(kept.scores[1, 1:]).all()


def test_same_attributes_needs_every_key_and_skips_padding() -> None:
    keys = np.array([[0, 7], [0, 7], [0, 8], [1, 7]])
    mask = same_attributes(np.array([0, 3]), np.array([[1, 2, 3, -1], [0, 1, 2, 3]]), keys)
    np.testing.assert_array_equal(mask, [[1, 0, 0, 0], [0, 0, 0, 1]])


def test_bad_partitions_raise_clear_errors() -> None:
    vectors, known = random_vectors(3, n=20, d=4)
    with pytest.raises(ConfigError, match="partitions"):
        build_partitioned(vectors, n_partitions=0)
    with pytest.raises(ConfigError, match="partitions"):
        build_partitioned(vectors, n_partitions=21)
    with pytest.raises(ConfigError):
        partition_members(20)
    with pytest.raises(DataError, match="known"):
        build_partitioned(vectors, known[:-1], n_partitions=2)
    with pytest.raises(DataError, match="partition_ids"):
        build_partitioned(vectors, partition_ids=np.zeros(19, dtype=int))
    with pytest.raises(DataError, match="partition_ids"):
        partition_members(3, 2, np.array([0, 2, 1]))
    with pytest.raises(DataError, match="partition_ids"):
        partition_members(3, partition_ids=np.array([0, -1, 1]))
    with pytest.raises(DataError):
        build_partitioned(vectors[0], n_partitions=1)


def test_bad_queries_raise_clear_errors(tmp_path: Path) -> None:
    vectors, known = random_vectors(4, n=20, d=4)
    index = build_partitioned(vectors, known, n_partitions=2, n_trees=2, progress=False)
    with pytest.raises(DataError, match="shape"):
        query_partitioned(index, vectors[:, :3], 5, workers=0)
    with pytest.raises(DataError, match="shape"):
        query_partitioned(index, vectors[:-1], 5, workers=0)
    with pytest.raises(DataError, match="attributes"):
        query_partitioned(index, vectors, 5, workers=0, attributes=np.zeros(19))
    with pytest.raises(DataError, match="query items"):
        query_partitioned(index, vectors, 5, items=np.array([3, 20]), workers=0)
    with pytest.raises(ConfigError):
        query_partitioned(index, vectors, -1, workers=0)
    with pytest.raises(ConfigError):
        query_partitioned(index, vectors, 5, workers=0, attributes=np.zeros(20), overfetch=0)
    with pytest.raises(ConfigError, match="directory"):
        query_partitioned(index, vectors, 5, workers=2)
