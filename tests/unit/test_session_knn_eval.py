"""The session-kNN methods of ``recsvc eval``: training sessions, current sessions, flags."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from offline.data.interactions import CART, CLICK, FAV, Interactions
from offline.data.sequences import Cases, next_item_cases
from offline.data.sessions import fit_sessions, session_numbers
from offline.evaluation.metrics import MISS
from offline.evaluation.served import candidate_settings
from offline.evaluation.session_knn import current_sessions, knn_params, knn_ranks
from recsvc.exceptions import ConfigError
from recsvc.session_knn import SKNN, VSKNN, build_session_index


def test_a_session_ends_at_a_new_user_or_a_long_pause() -> None:
    users = np.array([0, 0, 0, 0, 1, 1])
    ts = np.array([0.0, 100.0, 2000.0, 2100.0, 2150.0, 9000.0])
    assert session_numbers(users, ts, gap_s=1800).tolist() == [0, 0, 1, 1, 2, 3]


def test_training_sessions_are_the_visits_only() -> None:
    rows = [(0, 1, CLICK, 0.0), (0, 2, FAV, 10.0), (0, 3, CART, 20.0), (1, 2, CLICK, 5.0),
            (1, 4, CLICK, 6.0)]  # fmt: skip
    index = fit_sessions(Interactions.from_rows(rows, n_items=5), gap_s=1800)
    sessions = {
        tuple(index.items[index.offsets[s] : index.offsets[s + 1]].tolist())
        for s in range(index.n_sessions)
    }
    assert sessions == {(1, 3), (2, 4)}  # the favourite of item 2 is not a visit


class FakeBundle(dict):
    """Arrays by name plus a manifest: what the evaluation reads of a Bundle."""

    manifest: ClassVar[dict] = {"parameters": {"session_gap_s": 1800.0}}


def one_users_clicks(items: list[int], ts: list[float]) -> tuple[FakeBundle, Cases]:
    """A held-out period of one user's clicks, and its cases."""
    n = len(items)
    bundle = FakeBundle(
        {
            "eval/users": np.zeros(n, dtype=np.int32),
            "eval/items": np.array(items, dtype=np.int32),
            "eval/types": np.full(n, CLICK, dtype=np.int8),
            "eval/is_holdout": np.ones(n, dtype=bool),
            "eval/ts": np.array(ts),
        }
    )
    arrays = [bundle[f"eval/{name}"] for name in ("users", "items", "types", "is_holdout")]
    return bundle, next_item_cases(*arrays, window=8)


def test_the_current_session_is_cut_at_the_gap_and_ends_with_the_current_item() -> None:
    # One user: visits 5, 6 (then an hour's pause), 7, 8 -> cases at 5, 6, 7 (8 is last).
    bundle, cases = one_users_clicks([5, 6, 7, 8], [0.0, 60.0, 3660.0, 3700.0])
    assert current_sessions(bundle, cases) == [[5], [5, 6], [7]]


def test_the_gap_runs_from_a_visits_last_event_to_the_next_visits_first() -> None:
    # Visit 1 is clicks at 0 and 1700, visit 2 starts at 3400: 1700 s apart, one session
    # (as the training sessions are cut between consecutive events), not 3400.
    bundle, cases = one_users_clicks([1, 1, 2, 3], [0.0, 1700.0, 3400.0, 3500.0])
    assert current_sessions(bundle, cases) == [[1], [1, 2]]


def test_ranks_come_from_the_session_index_and_an_unscored_target_is_a_miss() -> None:
    # Training sessions {1, 2} and {1, 3}: after item 1, items 2 and 3 tie (ids break it).
    index = build_session_index(
        np.array([0, 0, 1, 1]), np.array([1, 2, 1, 3]), np.array([1.0, 2, 3, 4]), n_items=5
    )
    ranks = knn_ranks(index, [[1], [1], [1]], np.array([2, 3, 4]), SKNN)
    assert ranks.tolist() == [1, 2, MISS]


def test_knn_flags_override_one_field_of_one_method() -> None:
    params = knn_params(["vsknn.k=200", "vsknn.idf_weight=2.5", "sknn.sample_size=1000"])
    assert params["vsknn"].k == 200 and params["vsknn"].idf_weight == 2.5
    assert params["sknn"].sample_size == 1000 and params["sknn"].k == SKNN.k
    assert params["vsknn"].similarity == VSKNN.similarity


@pytest.mark.parametrize(
    "text", ["vsknn.k", "knn.k=3", "vsknn.nope=1", "vsknn.k=many", "vsknn.k=0", "k=3"]
)
def test_bad_knn_flags_are_clear_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        knn_params([text])


def test_candidate_flags_for_served_override_the_bundles_settings() -> None:
    bundle = FakeBundle()
    assert candidate_settings(bundle, []) is None
    settings = candidate_settings(bundle, ["candidates.knn_items=50", "candidates.cap=300"])
    assert settings is not None and (settings.knn_items, settings.cap) == (50, 300)
    for bad in ("candidates.nope=1", "candidates.cap=many", "candidates.cap=0"):
        with pytest.raises(ConfigError):
            candidate_settings(bundle, [bad])
