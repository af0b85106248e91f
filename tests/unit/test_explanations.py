"""The session events behind each recommendation, against hand-computed terms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.bundle import load_bundle
from recsvc.explanations import Because, top_events, window_terms
from recsvc.ranking import Ranker
from recsvc.scoring import window_scores
from recsvc.sessions import SessionEvent


def clicks(*items: str) -> list[SessionEvent]:
    return [SessionEvent(f"{item}{t}", item, "click", 1000.0 + t) for t, item in enumerate(items)]


def test_the_terms_of_the_tiny_bundle_by_hand(tiny_bundle: Path) -> None:
    """Window (a, b, c) with weights (1, .5, .25), n = 3: inputs a=[1,0], b=[0,1], c=[1,1]."""
    ranker = Ranker(load_bundle(tiny_bundle), second_stage=False)
    session = clicks("c", "b")  # c, then b, then the view of a
    ranking = ranker.rank("a", 4, session)
    assert ranking.items == ["e", "b", "c", "d"]  # u = [1.25, .75] / 3: 5/6, 1/4, 1/6, -1/6
    explained = dict(zip(ranking.items, ranker.explain("a", session, ranking), strict=True))
    # e = [2, 0]: a 2/3, b 0, c .25 * 2 / 3 = 1/6; b adds nothing.
    assert explained["e"] == [Because("c", 2, pytest.approx(1 / 6))]
    # b = [0, 1]: a 0, b .5 / 3 = 1/6, c .25 / 3 = 1/12.
    assert explained["b"] == [
        Because("b", 1, pytest.approx(1 / 6)),
        Because("c", 2, pytest.approx(1 / 12)),
    ]
    # d = [-1, 1]: a -1/3, b 1/6, c 0.
    assert explained["d"] == [Because("b", 1, pytest.approx(1 / 6))]
    # c = [1, -1]: a 1/3, b -1/6, c 0: no earlier visit adds to it.
    assert explained["c"] == []


def test_answers_that_are_not_personalized_have_no_explanations(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle), second_stage=False)
    ranking = ranker.rank("a", 3, clicks("b"), fallback="no_user")
    assert ranker.explain("a", clicks("b"), ranking) == [[], [], []]
    alone = ranker.rank("a", 3, [])  # personalized by the viewed item alone
    assert ranker.explain("a", [], alone) == [[], [], []]


@pytest.mark.parametrize("seed", range(10))
def test_the_terms_add_up_to_the_served_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, d, width = 50, 8, 6
    inputs = rng.normal(size=(n_items, d)).astype(np.float32)
    outputs = rng.normal(size=(n_items, d)).astype(np.float32)
    weights = rng.uniform(0, 2, size=width).astype(np.float32)
    window = rng.integers(-1, n_items, size=width)
    window[0] = rng.integers(0, n_items)
    items = rng.choice(n_items, size=12, replace=False).astype(np.int32)
    terms = window_terms(window.tolist(), items, inputs, outputs, weights)
    scores = window_scores(window.tolist(), items, inputs, outputs, weights)
    np.testing.assert_allclose(terms.sum(axis=0), scores, rtol=1e-5, atol=1e-5)
    assert not terms[window < 0].any()


def test_top_events_keep_the_largest_positive_terms_recent_first_on_ties() -> None:
    terms = np.array([[9.0, 9.0], [0.5, -1.0], [2.0, 0.0], [2.0, -0.5]])
    explained = top_events(terms, ["now", "b", "c", "d"], top=2)
    assert explained == [[Because("c", 2, 2.0), Because("d", 3, 2.0)], []]


def test_an_item_visited_twice_counts_once_and_the_viewed_item_is_not_named() -> None:
    # Window: now (a), b one click ago, a two clicks ago, b three clicks ago.
    terms = np.array([[5.0], [0.25], [3.0], [0.5]])
    assert top_events(terms, ["a", "b", "a", "b"]) == [[Because("b", 1, 0.75)]]
