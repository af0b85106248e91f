"""A request's candidates: the item's pool, then V-SKNN's items, then earlier visits' pools."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.candidates import CandidateBuilder, CandidateSettings
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import ConfigError
from recsvc.session_knn import KNNParams, build_session_index

CF, I2V, KNN = SOURCE_BITS["itemcf"], SOURCE_BITS["item2vec"], SOURCE_BITS["session_knn"]
# Pools of 3 over items 0..6 (-1 pads).
POOLS = np.array(
    [[1, 2, -1], [0, 3, 4], [5, 0, 1], [6, -1, -1], [0, 1, 2], [0, 1, 2], [0, 1, 2]],
    dtype=np.int32,
)
FLAGS = np.where(POOLS >= 0, CF, 0).astype(np.uint8)
FLAGS[1, 1] = CF | I2V


def builder(session_pools: int, knn_items: int, cap: int = 400) -> CandidateBuilder:
    # Training sessions {0, 1, 6} and {0, 5}. For the session [1, 0] (weights 1/2, 1) their
    # similarities are 1.5 and 1, so V-SKNN proposes 1 and 6 (1.5 each; ties by id), then 5.
    sessions = build_session_index(
        np.array([0, 0, 0, 1, 1]), np.array([0, 1, 6, 0, 5]), np.ones(5), n_items=7
    )
    settings = CandidateSettings(session_pools, knn_items, cap, KNNParams(similarity="vector"))
    return CandidateBuilder(POOLS, FLAGS, sessions, settings)


def test_off_it_is_the_pool() -> None:
    items, flags = builder(0, 0).build(0, [3, 1])
    assert items.tolist() == [1, 2] and flags.tolist() == [CF, CF]


def test_pool_then_knn_then_earlier_visits_pools_each_once_with_all_flags() -> None:
    items, flags = builder(2, 5).build(0, [1, -1, 3])
    # pool of 0: 1, 2; knn of the session [1, 0]: 1 (already in), 6, 5; pools of visits 1
    # and 3: 0 (the current item, dropped), 3, 4, then 6 (already in).
    assert items.tolist() == [1, 2, 6, 5, 3, 4]
    assert flags.tolist() == [CF | KNN, CF, KNN | CF, KNN, CF | I2V, CF]


def test_the_cap_keeps_the_first_candidates() -> None:
    items, _ = builder(2, 5, cap=3).build(0, [1])
    assert items.tolist() == [1, 2, 6]


def test_without_training_sessions_knn_adds_nothing() -> None:
    plain = CandidateBuilder(POOLS, FLAGS, None, CandidateSettings(1, 50))
    assert plain.build(0, [3])[0].tolist() == [1, 2, 6]


def test_settings_round_trip_through_the_manifest_and_refuse_bad_values() -> None:
    settings = CandidateSettings(1, 50, 300, KNNParams(k=20))
    assert CandidateSettings.from_dict(settings.as_dict()) == settings
    assert CandidateSettings.from_dict({}) == CandidateSettings()
    for bad in ({"cap": 0}, {"knn_items": -1}, {"session_pools": 1.5}, {"nope": 1}):
        with pytest.raises(ConfigError):
            CandidateSettings.from_dict(bad)
