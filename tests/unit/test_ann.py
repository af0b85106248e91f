"""Annoy neighbour search against brute force, and the recall measure itself."""

from __future__ import annotations

import numpy as np
import pytest

from offline.ann.search import (
    build_index,
    exact_neighbours,
    query_neighbours,
    recall_at_k,
    usable_rows,
)
from offline.sources.base import Neighbours
from recsvc.exceptions import DataError

# 2-d vectors, cosines worked out by hand:
#   item 0 = (1, 0)   item 1 = (0, 1)   item 2 = (1, 1)   item 3 = (-1, 0)   item 4 = (2, 0)
#   item 5 unknown, item 6 all zeros (no direction: never a neighbour)
#   cos(0,4) = 1, cos(0,2) = cos(1,2) = cos(2,4) = 1/sqrt(2), cos(0,1) = cos(1,3) = cos(1,4) = 0,
#   cos(0,3) = cos(3,4) = -1, cos(2,3) = -1/sqrt(2)
VECTORS = np.array([[1, 0], [0, 1], [1, 1], [-1, 0], [2, 0], [3, 3], [0, 0]], dtype=np.float32)
KNOWN = np.array([True, True, True, True, True, False, True])
R = 1 / np.sqrt(2)


def test_usable_rows_drop_unknown_zero_and_non_finite() -> None:
    vectors = np.vstack([VECTORS, [[np.nan, 1.0]]])
    known = np.append(KNOWN, True)
    np.testing.assert_array_equal(usable_rows(vectors, known), [1, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(DataError):
        usable_rows(VECTORS[0])


def test_exact_neighbours_by_hand() -> None:
    result = exact_neighbours(VECTORS, KNOWN, 3)
    # Item 1 ties at cosine 0 with items 0, 3 and 4: the lower indices 0 and 3 win.
    np.testing.assert_array_equal(
        result.items, [[4, 2, 1], [2, 0, 3], [0, 1, 4], [1, 2, 0], [0, 2, 1], [-1] * 3, [-1] * 3]
    )
    expected = [[1, R, 0], [R, 0, 0], [R, R, R], [0, -R, -1], [1, R, 0], [np.nan] * 3]
    np.testing.assert_allclose(result.scores[:6], expected, atol=1e-6)
    assert np.isnan(result.scores[6]).all()


def test_exact_neighbours_k_larger_than_the_catalogue_and_item_subset() -> None:
    result = exact_neighbours(VECTORS, KNOWN, 6, items=np.array([3, 5]))
    np.testing.assert_array_equal(result.items[3], [1, 2, 0, 4, -1, -1])
    assert (result.items[[0, 1, 2, 4, 5, 6]] == -1).all()


def random_vectors(seed: int, n: int = 300, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    known = rng.random(n) > 0.1
    return vectors, known


def test_blocks_do_not_change_exact_neighbours() -> None:
    vectors, known = random_vectors(0)
    whole = exact_neighbours(vectors, known, 12)
    blocked = exact_neighbours(vectors, known, 12, block_floats=1)
    np.testing.assert_array_equal(whole.items, blocked.items)
    np.testing.assert_array_equal(whole.scores, blocked.scores)


def test_annoy_with_many_trees_finds_the_exact_neighbours() -> None:
    vectors, known = random_vectors(1)
    index = build_index(vectors, known, n_trees=100, seed=3, progress=False)
    approx = query_neighbours(index, known, 10, progress=False)
    exact = exact_neighbours(vectors, known, 10)
    items = np.flatnonzero(known)
    assert recall_at_k(approx, exact, items) == 1.0
    np.testing.assert_array_equal(approx.items[~known], -1)
    for item in items:
        assert item not in approx.items[item]
    np.testing.assert_allclose(approx.scores[items], exact.scores[items], atol=1e-5)


def test_annoy_build_is_deterministic() -> None:
    vectors, known = random_vectors(2)
    results = []
    for _ in range(2):
        index = build_index(vectors, known, n_trees=2, seed=11, progress=False)
        results.append(query_neighbours(index, known, 5, search_k=20, progress=False))
    np.testing.assert_array_equal(results[0].items, results[1].items)
    np.testing.assert_array_equal(results[0].scores, results[1].scores)


def test_annoy_skips_unusable_items_and_queries_only_the_sample() -> None:
    index = build_index(VECTORS, KNOWN, n_trees=10, progress=False)
    usable = usable_rows(VECTORS, KNOWN)
    result = query_neighbours(index, usable, 3, items=np.array([1, 5, 6]), progress=False)
    np.testing.assert_array_equal(result.items[1, :1], [2])
    np.testing.assert_allclose(result.scores[1], [R, 0, 0], atol=1e-6)
    assert (result.items[[0, 2, 3, 4, 5, 6]] == -1).all()


def test_recall_on_hand_made_neighbours() -> None:
    exact = Neighbours(
        np.array([[1, 2, 3], [0, -1, -1], [-1, -1, -1]]), np.zeros((3, 3), dtype=np.float32)
    )
    approx = Neighbours(
        np.array([[1, 3, 4], [2, -1, -1], [0, 1, 2]]), np.zeros((3, 3), dtype=np.float32)
    )
    items = np.array([0, 1, 2])
    # item 0: {1,3} of {1,2,3} = 2/3; item 1: 0/1; item 2 has no exact neighbour: left out.
    assert recall_at_k(approx, exact, items) == pytest.approx((2 / 3 + 0) / 2)
    # First 2 columns: item 0 finds 1 of {1, 2}.
    assert recall_at_k(approx, exact, items, k=2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(approx, exact, np.array([0])) == pytest.approx(2 / 3)
    assert np.isnan(recall_at_k(approx, exact, np.array([2])))
