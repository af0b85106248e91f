"""Item-CF on a hand-made log, checked against Jaccard values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from offline.data.interactions import CART, CLICK, Interactions
from offline.sources.itemcf import ItemCF, attribute_matrix
from recsvc.exceptions import ConfigError, DataError

# Users and what they did (c = click, x = cart; carts are ignored by item-CF):
#   u0: c0 c1 c2 x5      u1: c0 c0 c1      u2: c1 c2 c3      u3: c3 c4 x0
# Clicking users per item: U0={u0,u1} U1={u0,u1,u2} U2={u0,u2} U3={u2,u3} U4={u3} U5={}
# Categories: items 0,1 -> 0; items 2,3,4 -> 1; item 5 -> unknown (-1).
#
# Csim = |Ui & Uj| / |Ui | Uj|, Fsim = 1 for the same category else 0, sim = .9 Cs + .1 Fs
#   (0,1): 2/3 -> .9*2/3 + .1 = 0.7      (0,2): 1/3 -> 0.3
#   (1,2): 2/3 -> 0.6                    (1,3): 1/4 -> 0.225
#   (2,3): 1/3 -> .3 + .1 = 0.4          (3,4): 1/2 -> .45 + .1 = 0.55
#   (2,4): 0 co-clicks, same category -> 0.1 (not a neighbour, but pair_scores knows it)
#   (0,3): 0 co-clicks, other category -> 0.0
EVENTS = [
    (0, 0, CLICK),
    (0, 1, CLICK),
    (0, 2, CLICK),
    (0, 5, CART),
    (1, 0, CLICK),
    (1, 0, CLICK),
    (1, 1, CLICK),
    (2, 1, CLICK),
    (2, 2, CLICK),
    (2, 3, CLICK),
    (3, 3, CLICK),
    (3, 4, CLICK),
    (3, 0, CART),
]
CATEGORY = np.array([0, 0, 1, 1, 1, -1], dtype=np.int32)

EXPECTED_ITEMS = [[1, 2, -1], [0, 2, 3], [1, 3, 0], [4, 2, 1], [3, -1, -1], [-1, -1, -1]]
EXPECTED_SCORES = [
    [0.7, 0.3, np.nan],
    [0.7, 0.6, 0.225],
    [0.6, 0.4, 0.3],
    [0.55, 0.4, 0.225],
    [0.55, np.nan, np.nan],
    [np.nan, np.nan, np.nan],
]


def make_interactions(events: list[tuple[int, int, int]], n_users: int, n_items: int):
    users, items, types = (np.array(column) for column in zip(*events, strict=True))
    return Interactions(
        users.astype(np.int32),
        items.astype(np.int32),
        types.astype(np.int8),
        np.arange(len(events), dtype=np.float64),
        n_users,
        n_items,
    )


@pytest.fixture
def log() -> Interactions:
    return make_interactions(EVENTS, 4, 6)


def test_neighbours_match_hand_computed_jaccard(log: Interactions) -> None:
    result = ItemCF(log, CATEGORY).neighbours(3)
    assert result.items.dtype == np.int32 and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.items, EXPECTED_ITEMS)
    np.testing.assert_allclose(result.scores, EXPECTED_SCORES, rtol=1e-6)
    for item, row in enumerate(result.items):
        assert item not in row


def test_k_wider_than_any_row_is_padded(log: Interactions) -> None:
    result = ItemCF(log, CATEGORY).neighbours(8)
    assert result.items.shape == (6, 8)
    np.testing.assert_array_equal(result.items[:, :3], EXPECTED_ITEMS)
    assert (result.items[:, 3:] == -1).all() and np.isnan(result.scores[:, 3:]).all()


def test_ties_go_to_the_lower_index(log: Interactions) -> None:
    # With alpha = 1 item 2 has (0,2) = (2,3) = 1/3: item 0 must come before item 3.
    result = ItemCF(log, CATEGORY, alpha=1.0).neighbours(3)
    np.testing.assert_array_equal(result.items[2], [1, 0, 3])
    np.testing.assert_allclose(result.scores[2], [2 / 3, 1 / 3, 1 / 3], rtol=1e-6)


def test_pair_scores_inside_and_outside_the_top_k(log: Interactions) -> None:
    source = ItemCF(log, CATEGORY)
    queries = np.array([2, 0, 0, 3, -1])
    candidates = np.array(
        [[4, 1, 3, -1], [3, 5, 0, 1], [-1, -1, -1, -1], [4, 1, 2, 0], [0, 1, 2, 3]]
    )
    scores = source.pair_scores(queries, candidates)
    expected = [
        [0.1, 0.6, 0.4, np.nan],  # (2,4) shares only the category
        [0.0, np.nan, 1.0, 0.7],  # item 5 never clicked -> NaN; self = .9 + .1
        [np.nan] * 4,
        [0.55, 0.225, 0.4, 0.0],
        [np.nan] * 4,  # padded query
    ]
    assert scores.dtype == np.float32 and scores.shape == (5, 4)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_pair_scores_agree_with_neighbour_scores(log: Interactions) -> None:
    source = ItemCF(log, CATEGORY)
    result = source.neighbours(3)
    scores = source.pair_scores(np.arange(6), result.items)
    np.testing.assert_array_equal(scores, result.scores)


def test_unknown_category_shares_no_attribute() -> None:
    attributes = attribute_matrix(np.array([0, -1, 0, 2]), np.array([1, 1, -1, -1])).toarray()
    np.testing.assert_array_equal(
        attributes, [[1, 0, 0, 0, 1], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    )


def test_extra_attributes_enter_the_attribute_jaccard(log: Interactions) -> None:
    # A second attribute: items 0 and 1 differ (values 0 and 1), so Fsim(0,1) = |{c0}| /
    # |{c0, b0, b1}| = 1/3 and sim(0,1) = .9 * 2/3 + .1 / 3.
    brand = np.array([0, 1, -1, -1, -1, -1])
    source = ItemCF(log, CATEGORY, extra_attributes=[brand])
    score = source.pair_scores(np.array([0]), np.array([[1]]))
    np.testing.assert_allclose(score, [[0.6 + 0.1 / 3]], rtol=1e-6)


def random_log(seed: int, n_users: int = 60, n_items: int = 40, n_events: int = 600):
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(0, n_users, n_events))
    items = rng.integers(0, n_items - 3, n_events)  # the last 3 items are never clicked
    types = np.where(rng.random(n_events) < 0.8, CLICK, CART)
    events = list(zip(users.tolist(), items.tolist(), types.tolist(), strict=True))
    category = rng.integers(-1, 5, n_items).astype(np.int32)
    return make_interactions(events, n_users, n_items), category


def brute_force_similarity(
    log: Interactions, category: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Dense (n_items, n_items) sim from the definition (NaN for unclicked items), co-clicks."""
    clicked = np.zeros((log.n_users, log.n_items), dtype=bool)
    clicks = log.of_type(CLICK)
    clicked[clicks.users, clicks.items] = True
    inter = clicked.T.astype(int) @ clicked.astype(int)
    count = clicked.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        csim = inter / (count[:, None] + count[None, :] - inter)
    csim[(count[:, None] == 0) | (count[None, :] == 0)] = np.nan
    known = category >= 0
    same = (category[:, None] == category[None, :]) & known[:, None]
    attr_union = known[:, None].astype(int) + known[None, :] - same
    fsim = np.where(attr_union > 0, same / np.maximum(attr_union, 1), 0.0)
    return alpha * csim + (1 - alpha) * fsim, inter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_log_matches_brute_force_and_chunking_does_not_matter(seed: int) -> None:
    log, category = random_log(seed)
    k = 10
    dense, co_clicks = brute_force_similarity(log, category, 0.9)
    one_chunk = ItemCF(log, category, chunk_pairs=10**12)
    many_chunks = ItemCF(log, category, chunk_pairs=1)
    result = one_chunk.neighbours(k)
    chunked = many_chunks.neighbours(k)
    np.testing.assert_array_equal(result.items, chunked.items)
    np.testing.assert_array_equal(result.scores, chunked.scores)

    for item in range(log.n_items):
        others = np.flatnonzero((co_clicks[item] > 0) & (np.arange(log.n_items) != item))
        order = np.lexsort((others, -dense[item, others].astype(np.float32)))[:k]
        expected = others[order]
        np.testing.assert_array_equal(result.items[item, : len(expected)], expected)
        assert (result.items[item, len(expected) :] == -1).all()
        np.testing.assert_allclose(result.scores[item, : len(expected)], dense[item, expected])

    queries = np.random.default_rng(seed).integers(-1, log.n_items, 50)
    candidates = np.random.default_rng(seed + 1).integers(-1, log.n_items, (50, 7))
    scores = one_chunk.pair_scores(queries, candidates)
    np.testing.assert_array_equal(scores, many_chunks.pair_scores(queries, candidates))
    expected = np.where(
        (queries[:, None] >= 0) & (candidates >= 0), dense[queries[:, None], candidates], np.nan
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_an_item_cf_rebuilt_from_its_click_matrix_ranks_the_same(log: Interactions) -> None:
    built = ItemCF(log, CATEGORY, alpha=0.6, chunk_pairs=3)
    rebuilt = ItemCF.from_click_matrix(built.user_item, CATEGORY, alpha=0.6, chunk_pairs=3)
    assert rebuilt.chunks() == built.chunks() and len(built.chunks()) > 1
    first, second = built.neighbours(4), rebuilt.neighbours(4)
    np.testing.assert_array_equal(first.items, second.items)
    np.testing.assert_array_equal(first.scores, second.scores)


def test_bad_settings_and_data_are_clear_errors(log: Interactions) -> None:
    with pytest.raises(ConfigError):
        ItemCF(log, CATEGORY, alpha=1.5)
    with pytest.raises(DataError):
        ItemCF(log, CATEGORY[:3])
