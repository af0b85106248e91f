"""The embedding-backed candidate source: hand-computed cosines and annoy neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from offline.sources.base import CandidateSource
from offline.sources.embedding import EmbeddingSource
from recsvc.exceptions import ConfigError

# item 0 = (3, 4, 0)   item 1 = (0, 4, 3)   item 2 = (6, 8, 0)   item 3 = (0, 0, 2)
# item 4 unknown       item 5 = (0, 0, 0) (no direction)
# cos(0,1) = 16/25 = 0.64   cos(0,2) = 1   cos(0,3) = 0   cos(1,3) = 6/10 = 0.6
# cos(1,2) = 32/50 = 0.64   cos(2,3) = 0
VECTORS = np.array(
    [[3, 4, 0], [0, 4, 3], [6, 8, 0], [0, 0, 2], [1, 1, 1], [0, 0, 0]], dtype=np.float32
)
KNOWN = np.array([True, True, True, True, False, True])


@pytest.fixture
def source() -> EmbeddingSource:
    return EmbeddingSource("image", VECTORS, KNOWN, n_trees=20, progress=False)


def test_is_a_named_candidate_source(source: EmbeddingSource) -> None:
    assert isinstance(source, CandidateSource)
    assert source.name == "image"
    assert EmbeddingSource("pss", VECTORS).name == "pss"
    with pytest.raises(ConfigError):
        EmbeddingSource("", VECTORS)


def test_pair_scores_are_hand_computed_cosines(source: EmbeddingSource) -> None:
    queries = np.array([0, 1, 4, -1, 5])
    candidates = np.array([[1, 2, 3, 0], [3, 2, -1, 4], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    scores = source.pair_scores(queries, candidates)
    nan = np.nan
    expected = [
        [0.64, 1.0, 0.0, 1.0],
        [0.6, 0.64, nan, nan],  # padding, unknown item 4
        [nan] * 4,  # unknown query
        [nan] * 4,  # padded query
        [nan] * 4,  # zero vector: cosine undefined
    ]
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    blocked = source.pair_scores(queries, candidates, block_floats=1)
    np.testing.assert_array_equal(blocked, scores)


def test_neighbours_by_cosine(source: EmbeddingSource) -> None:
    result = source.neighbours(2)
    np.testing.assert_array_equal(result.items[0], [2, 1])
    np.testing.assert_allclose(result.scores[0], [1.0, 0.64], atol=1e-6)
    assert result.items[3, 0] == 1 and result.items[3, 1] in (0, 2)  # cos 0.6, then a tie at 0
    assert (result.items[[4, 5]] == -1).all() and np.isnan(result.scores[[4, 5]]).all()


def test_neighbour_scores_match_pair_scores() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    known = rng.random(200) > 0.2
    source = EmbeddingSource("item2vec", vectors, known, n_trees=30, progress=False)
    result = source.neighbours(10)
    scores = source.pair_scores(np.arange(200), result.items)
    np.testing.assert_allclose(scores, result.scores, atol=1e-5)
    assert np.all(np.diff(result.scores[known], axis=1) <= 1e-6)
    for item in range(200):
        assert item not in result.items[item]


def test_partitioned_search_gives_the_single_index_neighbours() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(120, 8)).astype(np.float32)
    known = rng.random(120) > 0.1
    single = EmbeddingSource("item2vec", vectors, known, n_trees=30, search_k=100_000)
    split = EmbeddingSource("item2vec", vectors, known, n_trees=30, search_k=100_000, partitions=3)
    one, three = single.neighbours(10), split.neighbours(10)
    np.testing.assert_array_equal(three.items, one.items)
    np.testing.assert_allclose(three.scores, one.scores, rtol=1e-5, equal_nan=True)
    with pytest.raises(ConfigError, match="partitions"):
        EmbeddingSource("item2vec", vectors, partitions=0)
