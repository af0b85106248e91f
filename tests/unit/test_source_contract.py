"""One contract, run against every registered candidate source (``offline.sources.registry``):
what ``CandidateSource`` and ``Neighbours`` promise, on a tiny synthetic catalogue.

A new source registered in ``REGISTRY`` is checked here with no test to add: give it its
part of :func:`inputs` if it reads data no source read before.
"""

from __future__ import annotations

import numpy as np
import pytest

from offline.config import PipelineConfig
from offline.data.interactions import CART, CLICK, Interactions
from offline.sources import PSS, SOURCE_NAMES
from offline.sources.base import CandidateSource, Neighbours
from offline.sources.registry import REGISTRY, SourceInputs, build_source
from recsvc.exceptions import ConfigError, DataError

N_ITEMS = 30
#: Items no source knows: never clicked (one only added to cart), no embedding.
UNKNOWN = np.arange(26, N_ITEMS)
SEED = 5
SETTINGS = PipelineConfig(annoy_trees=8, annoy_search_k=-1)


def inputs() -> SourceInputs:
    """60 users clicking 5 of the known items each; random vectors for the known items."""
    rng = np.random.default_rng(0)
    known_items = np.setdiff1d(np.arange(N_ITEMS), UNKNOWN)
    rows = [
        (user, int(item), CLICK, float(t))
        for user in range(60)
        for t, item in enumerate(rng.choice(known_items, 5, replace=False))
    ]
    rows.append((0, int(UNKNOWN[0]), CART, 99.0))  # item-CF counts clicks only
    category = (np.arange(N_ITEMS) % 4).astype(np.int32)
    category[::7] = -1
    known = np.ones(N_ITEMS, dtype=bool)
    known[UNKNOWN] = False
    embeddings = {}
    for offset, name in enumerate(SOURCE_NAMES):
        vectors = np.random.default_rng(offset).normal(size=(N_ITEMS, 6)).astype(np.float32)
        embeddings[name] = (vectors, known)
    return SourceInputs(Interactions.from_rows(rows, N_ITEMS), category, embeddings)


def build(name: str) -> CandidateSource:
    return build_source(name, inputs(), SETTINGS, SEED)


def test_the_registry_builds_every_named_source_and_the_config_weighs_each() -> None:
    assert tuple(REGISTRY) == SOURCE_NAMES
    config = PipelineConfig()
    assert list(config.source_weights) == list(config.source_quotas) == list(SOURCE_NAMES)
    with pytest.raises(ConfigError, match="unknown candidate source"):
        build_source("bogus", inputs(), SETTINGS, SEED)
    without = inputs()
    del without.embeddings[PSS]
    with pytest.raises(DataError, match="needs its embeddings"):
        build_source(PSS, without, SETTINGS, SEED)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_is_a_candidate_source_under_its_registered_name(name: str) -> None:
    source = build(name)
    assert isinstance(source, CandidateSource)
    assert source.name == name


@pytest.mark.parametrize("k", [4, N_ITEMS + 3])
@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_neighbours_are_ranked_padded_rows_without_the_item_itself(name: str, k: int) -> None:
    result = build(name).neighbours(k)
    assert isinstance(result, Neighbours)
    items, scores = result.items, result.scores
    assert items.shape == scores.shape == (N_ITEMS, k)
    assert items.dtype == np.int32 and scores.dtype == np.float32
    assert ((items >= -1) & (items < N_ITEMS)).all()
    padding = items == -1
    np.testing.assert_array_equal(np.isnan(scores), padding)  # NaN exactly on the padding
    assert (padding[:, :-1] <= padding[:, 1:]).all()  # padding only at the end of a row
    assert not (items == np.arange(N_ITEMS)[:, None]).any()  # never its own neighbour
    for row, row_scores, pad in zip(items, scores, padding, strict=True):
        assert len(set(row[~pad])) == (~pad).sum()  # no neighbour twice
        assert (np.diff(row_scores[~pad]) <= 1e-6).all()  # best first
    assert (~padding).sum(axis=1).max() > 0
    if k > N_ITEMS:
        assert padding.any(axis=1).all()  # fewer candidates than k: padded


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_items_the_source_knows_nothing_of_get_and_give_no_neighbours(name: str) -> None:
    source = build(name)
    result = source.neighbours(8)
    assert (result.items[UNKNOWN] == -1).all()
    assert not np.isin(result.items, UNKNOWN).any()
    queries = np.arange(N_ITEMS)
    candidates = np.tile(UNKNOWN, (N_ITEMS, 1)).astype(np.int32)
    assert np.isnan(source.pair_scores(queries, candidates)).all()
    everything = np.tile(np.arange(N_ITEMS), (len(UNKNOWN), 1))
    assert np.isnan(source.pair_scores(UNKNOWN, everything)).all()


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_pair_scores_are_the_neighbours_scores_and_nan_on_padding(name: str) -> None:
    source = build(name)
    result = source.neighbours(6)
    queries = np.arange(N_ITEMS)
    scores = source.pair_scores(queries, result.items)
    assert scores.shape == result.items.shape and scores.dtype == np.float32
    np.testing.assert_allclose(scores, result.scores, atol=1e-4)  # NaNs on the same places
    padded = np.array([[1, -1, 2, -1]] * 3)
    assert np.isnan(source.pair_scores(np.array([0, 2, 3]), padded)[:, [1, 3]]).all()
    assert source.pair_scores(np.array([0, 1]), np.zeros((2, 0), np.int64)).shape == (2, 0)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_the_same_data_and_seed_give_the_same_neighbours(name: str) -> None:
    first, second = build(name).neighbours(6), build(name).neighbours(6)
    np.testing.assert_array_equal(first.items, second.items)
    np.testing.assert_array_equal(first.scores, second.scores)
