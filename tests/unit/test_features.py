"""The second-stage ranker's per-candidate features, checked against values worked by hand."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers import live_read, tiny_bundle_arrays

from recsvc.bundle import Bundle, load_bundle, write_bundle
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import InvalidRequest
from recsvc.features import COLUMNS, FEATURE_SOURCES, FEATURES, FeatureBuilder, RequestContext
from recsvc.live_candidates import gather
from recsvc.scoring import Scorer, window_scores
from recsvc.session_knn import KNNParams, SessionIndex, build_session_index

NAN = np.nan
CF, I2V, KNN = SOURCE_BITS["itemcf"], SOURCE_BITS["item2vec"], SOURCE_BITS["session_knn"]
LIVE = SOURCE_BITS["live"]
VECTOR = KNNParams(similarity="vector", idf_weight=0.0)
A, B, C, D, E = range(5)
DAY = 86400.0


def full_arrays() -> dict[str, np.ndarray]:
    """The tiny bundle (items a..e) with every array the features read.

    Changed from tiny_bundle_arrays: position weights (1, .5, .25, .125, 0, 0, 0, 0); e is
    not scorable; e's category is unknown; a's pool flags d as item-CF too (so item-CF scores
    d in a's pool). Added: item-CF pool scores, item2vec, recent clicks, first-seen days,
    and the training sessions {a, b, d} (end 100) and {c, d} (end 90).
    """
    arrays = tiny_bundle_arrays(weights=(1.0, 0.5, 0.25, 0.125))
    arrays["models/personalized/scorable"] = np.array([1, 1, 1, 1, 0], dtype=bool)
    arrays["item_category"] = np.array([0, 0, 1, 1, -1], np.int32)
    # pools: a [b c d e], b [a c], c [a b d], d [a], e [a b c d]
    arrays["pool_sources"] = np.array(
        [[1, 3, 3, 16], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.uint8
    )
    arrays["pool_scores/itemcf"] = np.array(
        [
            [0.9, 0.6, 0.4, NAN],
            [0.8, 0.3, NAN, NAN],
            [0.5, 0.4, 0.2, NAN],
            [0.7, NAN, NAN, NAN],
            [0.1, 0.2, 0.3, 0.4],
        ],
        np.float32,
    )
    # a [1 0], b [0 1], c [3 4], d [1 1], e unknown
    arrays["embeddings/item2vec"] = np.array([[1, 0], [0, 1], [3, 4], [1, 1], [5, 5]], np.float32)
    arrays["embeddings/item2vec_known"] = np.array([1, 1, 1, 1, 0], dtype=bool)
    arrays["item_recent_clicks"] = np.array([0, 1, 3, 0, 7], np.int64)
    arrays["item_fit_events"] = np.array([6, 5, 4, 3, 2], np.int64)
    arrays["item_first_seen"] = np.array([0, 1, 3, 10, 4], np.float64) * DAY
    sessions = build_session_index(
        np.array([0, 0, 0, 1, 1]),
        np.array([A, B, D, C, D]),
        np.array([100, 100, 100, 90, 90], np.float64),
        n_items=5,
    )
    arrays.update(sessions.to_arrays())
    return arrays


def bundle_of(arrays: dict[str, np.ndarray], tmp_path: Path) -> Bundle:
    return load_bundle(write_bundle(tmp_path / "b", arrays, {"split": {}}))


def builder_of(bundle: Bundle, model: bool = True, sessions: bool = True) -> FeatureBuilder:
    scorer = Scorer.from_bundle(bundle, "personalized") if model else None
    index = SessionIndex.from_arrays(bundle) if sessions and "sessions/items" in bundle else None
    return FeatureBuilder.from_bundle(bundle, scorer, index, VECTOR)


# The request: view of b, earlier visits newest first c, (unknown), a, d; the window holds
# them all (b, c, -, a, d, -, -, -). Candidates a, c (b's pool), d, e (outside it).
CTX = RequestContext(current=B, visits=[C, -1, A, D], window=[B, C, -1, A, D, -1, -1, -1])
ITEMS = np.array([A, C, D, E], np.int32)
FLAGS = np.array([CF, CF | KNN, KNN, I2V | KNN], np.uint8)


def column(features: np.ndarray, name: str) -> list[float]:
    return features[:, COLUMNS[name]].tolist()


def close(got: list[float], want: list[float]) -> bool:
    return bool(np.allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True))


def test_the_columns_are_named_once_in_order() -> None:
    assert len(FEATURES) == 24 == len(set(FEATURES))
    assert FEATURES[:3] == ("personalized", "personalized_item", "itemcf_current")
    assert FEATURES[13:20] == tuple(f"source_{name}" for name in FEATURE_SOURCES)
    assert FEATURES[20:22] == ("scorable", "session_length")
    # Added last: a model trained before them reads its 22 columns as a prefix.
    assert FEATURES[-2:] == ("live_current", "live_session")


def test_the_model_columns_are_the_served_scores_bit_for_bit(tmp_path: Path) -> None:
    """The compiled feature core scores with the arithmetic of the compiled scoring core:
    a feature row holds the score the first stage would serve, to the last bit."""
    bundle = bundle_of(full_arrays(), tmp_path)
    features = builder_of(bundle).build(CTX, ITEMS, FLAGS)
    scorer = Scorer.from_bundle(bundle, "personalized")
    assert scorer is not None
    for name, window in (("personalized", CTX.window), ("personalized_item", [CTX.current])):
        served = window_scores(window, ITEMS, *scorer.arrays)
        served[served == -np.inf] = np.nan
        assert features[:, COLUMNS[name]].tobytes() == served.tobytes()


def test_hand_computed_features(tmp_path: Path) -> None:
    features = builder_of(bundle_of(full_arrays(), tmp_path)).build(CTX, ITEMS, FLAGS)
    assert features.shape == (4, len(FEATURES)) and features.dtype == np.float32

    # personalized: valid slots 0 (b, w 1), 1 (c, w .5), 3 (a, w .125), 4 (d, w 0) with input
    # vectors b [0 1], c [1 1], a [1 0], d [0 0]: u = ([0 1] + [.5 .5] + [.125 0]) / 4
    # = [.15625 .375]; outputs a [1 0] -> .15625, c [1 -1] -> -.21875, d [-1 1] -> .21875;
    # e is not scorable (-inf) -> NaN.
    assert column(features, "personalized")[:3] == [0.15625, -0.21875, 0.21875]
    assert np.isnan(column(features, "personalized")[3])
    # personalized_item: u = b's input [0 1]: a 0, c -1, d 1, e NaN.
    assert close(column(features, "personalized_item"), [0, -1, 1, NAN])
    assert column(features, "scorable") == [1, 1, 1, 0]

    # itemcf_current: b's pool [a c] scores [.8 .3]; d and e are not in it.
    assert close(column(features, "itemcf_current"), [0.8, 0.3, NAN, NAN])
    # pool_position: a slot 0, c slot 1, of a pool 4 wide.
    assert close(column(features, "pool_position"), [0, 0.25, NAN, NAN])

    # itemcf_session, visits c (w .5), a (w .125), d (w 0; the unknown visit holds slot 2):
    #   a: c's pool scores it .5, d's pool .7 with weight 0 -> .5
    #   c: a's pool .6 -> .6
    #   d: c's pool .2, a's pool .4 -> (.5 * .2 + .125 * .4) / .625 = .24
    #   e: a's pool has it, but item-CF did not score it there -> NaN
    assert close(column(features, "itemcf_session"), [0.5, 0.6, 0.24, NAN])

    # item2vec_current, against b [0 1]: a 0, c 4/5, d 1/sqrt(2), e unknown.
    assert close(column(features, "item2vec_current"), [0, 0.8, 2**-0.5, NAN])
    # item2vec_session, visits c [3 4] (w .5), a [1 0] (w .125), d (w 0):
    #   a: (.5 * 3/5 + .125 * 1) / .625 = .68
    #   c: (.5 * 1 + .125 * 3/5) / .625 = .92
    #   d: (.5 * 7/(5 sqrt 2) + .125 / sqrt 2) / .625 = 0.9333809
    assert close(column(features, "item2vec_session"), [0.68, 0.92, 0.9333809, NAN])

    # vsknn: session d, a, c, b (oldest first): positions 1..4 of 4. Training sessions
    # {a b d}: (2 + 4 + 1) / 4 = 1.75, {c d}: (3 + 1) / 4 = 1. a 1.75, c 1, d 2.75, e 0.
    assert close(column(features, "vsknn"), [1.75, 1, 2.75, 0])

    # popularity 5 3 2 1, recent clicks 0 3 0 7, first seen day 0 3 10 4 of 10 ("now").
    # Shares per million of all clicks: popularity 5,4,3,2,1 sums to 15; recent clicks to 11.
    share = np.log1p(np.array([5, 3, 2, 1]) * 1e6 / 15).tolist()
    assert close(column(features, "log_popularity"), share)
    recent = np.log1p(np.array([0, 3, 0, 7]) * 1e6 / 11).tolist()
    assert close(column(features, "log_recent_clicks"), recent)
    assert column(features, "age_days") == [10, 7, 0, 6]

    # categories: b 0; a 0, c 1, d 1, e unknown. Visits c 1, a 0, d 1: shares 1/3, 2/3.
    assert close(column(features, "same_category"), [1, 0, 0, NAN])
    assert close(column(features, "session_category_share"), [1 / 3, 2 / 3, 2 / 3, NAN])

    assert column(features, "source_itemcf") == [1, 1, 0, 0]
    assert column(features, "source_item2vec") == [0, 0, 0, 1]
    assert column(features, "source_session_knn") == [0, 1, 1, 1]
    assert column(features, "source_category") == [0, 0, 0, 0]
    assert column(features, "session_length") == [3] * 4


def test_without_a_model_every_visit_weighs_the_same(tmp_path: Path) -> None:
    features = builder_of(bundle_of(full_arrays(), tmp_path), model=False).build(CTX, ITEMS, FLAGS)
    # itemcf_session: a (.5 from c, .7 from d) .6; c .6; d (.2, .4) .3; e NaN
    assert close(column(features, "itemcf_session"), [0.6, 0.6, 0.3, NAN])
    for name in ("personalized", "personalized_item", "scorable"):
        assert np.isnan(column(features, name)).all()


def test_missing_arrays_give_nan_columns(tmp_path: Path) -> None:
    bundle = bundle_of(tiny_bundle_arrays(), tmp_path)  # no item-CF scores, item2vec, ...
    features = builder_of(bundle, model=False).build(CTX, ITEMS, FLAGS)
    missing = [
        "personalized",
        "personalized_item",
        "itemcf_current",
        "itemcf_session",
        "item2vec_current",
        "item2vec_session",
        "vsknn",
        "log_recent_clicks",
        "scorable",
        "live_current",  # nothing read live
        "live_session",
    ]
    for name in missing:
        assert np.isnan(column(features, name)).all(), name
    present = [name for name in FEATURES if name not in [*missing, "pool_position"]]
    assert not np.isnan(features[:, [COLUMNS[n] for n in present]]).any()
    assert close(column(features, "pool_position"), [0, 0.25, NAN, NAN])
    assert column(features, "age_days") == [0, 0, 0, 0]  # every first_seen is 0


def test_a_row_does_not_depend_on_the_other_candidates(tmp_path: Path) -> None:
    builder = builder_of(bundle_of(full_arrays(), tmp_path))
    together = builder.build(CTX, ITEMS, FLAGS)
    for n in range(len(ITEMS)):
        alone = builder.build(CTX, ITEMS[n : n + 1], FLAGS[n : n + 1])
        np.testing.assert_array_equal(alone[0], together[n])
    # a repeated candidate gets the same row each time
    twice = builder.build(CTX, np.array([D, A, D], np.int32), np.array([KNN, CF, KNN], np.uint8))
    np.testing.assert_array_equal(twice[0], together[2])
    np.testing.assert_array_equal(twice[2], together[2])
    np.testing.assert_array_equal(twice[1], together[0])


def test_knn_scores_passed_in_are_the_ones_it_would_compute(tmp_path: Path) -> None:
    builder = builder_of(bundle_of(full_arrays(), tmp_path))
    assert builder.sessions is not None
    session = [D, A, C, B]  # the known visits oldest first, then the current item
    knn = builder.sessions.scores(session, VECTOR)
    np.testing.assert_array_equal(
        builder.build(CTX, ITEMS, FLAGS, knn), builder.build(CTX, ITEMS, FLAGS)
    )
    # what the caller passes is what the column shows
    other = (np.array([A, E], np.int32), np.array([0.25, 4.0]))
    assert column(builder.build(CTX, ITEMS, FLAGS, other), "vsknn") == [0.25, 0.0, 0.0, 4.0]


def test_empty_session_and_edge_cases(tmp_path: Path) -> None:
    builder = builder_of(bundle_of(full_arrays(), tmp_path))
    ctx = RequestContext(current=B, visits=[], window=[B])
    features = builder.build(ctx, ITEMS, FLAGS)
    for name in ("itemcf_session", "item2vec_session", "session_category_share"):
        assert np.isnan(column(features, name)).all(), name
    assert column(features, "session_length") == [0] * 4
    # the window of the current item alone is personalized_item's
    np.testing.assert_array_equal(
        features[:, COLUMNS["personalized"]], features[:, COLUMNS["personalized_item"]]
    )
    # a window with no known item scores nothing
    blind = builder.build(RequestContext(B, [-1], [-1, -1]), ITEMS, FLAGS)
    assert np.isnan(column(blind, "personalized")).all()
    empty = builder.build(CTX, np.zeros(0, np.int32), np.zeros(0, np.uint8))
    assert empty.shape == (0, len(FEATURES)) and empty.dtype == np.float32
    with pytest.raises(InvalidRequest):
        builder.build(CTX, np.array([5], np.int32), np.array([CF], np.uint8))
    with pytest.raises(InvalidRequest):
        builder.build(CTX, ITEMS, FLAGS[:2])


def random_bundle(
    tmp_path: Path, n_items: int = 20_000, pool: int = 200, dim: int = 64
) -> tuple[Bundle, np.random.Generator]:
    rng = np.random.default_rng(0)
    pools = np.stack([rng.choice(n_items, pool, replace=False) for _ in range(n_items)])
    pools = pools.astype(np.int32)
    scores = rng.random(pools.shape, dtype=np.float32)
    scores[:, pool // 2 :] = np.nan
    model = {
        "input_embeddings": rng.normal(size=(n_items, dim)).astype(np.float32),
        "output_embeddings": rng.normal(size=(n_items, dim)).astype(np.float32),
        "position_weights": np.linspace(1.2, 0.8, 8).astype(np.float32),
        "known": np.ones(n_items, dtype=bool),
        "scorable": np.ones(n_items, dtype=bool),
    }
    events = 200_000
    sessions = build_session_index(
        rng.integers(0, events // 8, events),
        rng.integers(0, n_items, events),
        rng.random(events),
        n_items,
    )
    arrays = {
        "item_ids": np.arange(n_items).astype(str),
        "item_category": rng.integers(-1, 50, n_items).astype(np.int32),
        "category_names": np.arange(50).astype(str),
        "item_popularity": rng.integers(0, 1000, n_items),
        "item_recent_clicks": rng.integers(0, 100, n_items),
        "item_first_seen": rng.random(n_items) * 30 * DAY,
        "pools": pools,
        "pool_sources": np.full(pools.shape, CF | I2V, np.uint8),
        "pool_scores/itemcf": scores,
        "embeddings/item2vec": rng.normal(size=(n_items, dim)).astype(np.float32),
        "embeddings/item2vec_known": rng.random(n_items) < 0.9,
        **{f"models/personalized/{k}": v for k, v in model.items()},
        **sessions.to_arrays(),
    }
    return bundle_of(arrays, tmp_path), rng


def test_hundreds_of_candidates_on_a_random_catalogue(tmp_path: Path) -> None:
    bundle, rng = random_bundle(tmp_path)
    builder = builder_of(bundle)
    assert builder.scorer is not None
    current = 7
    visits = rng.choice(bundle.n_items, 8, replace=False).tolist()
    window = builder.scorer.window([current, *visits[:7]])
    ctx = RequestContext(current, visits, window)
    timings = {}
    for n in (30, 300, 400):
        items = np.concatenate([bundle["pools"][current], bundle["pools"][visits[0]]])[:n]
        flags = np.full(n, CF, np.uint8)
        features = builder.build(ctx, items, flags)
        assert features.shape == (n, len(FEATURES))
        runs = 50
        start = time.perf_counter()
        for _ in range(runs):
            builder.build(ctx, items, flags)
        timings[n] = (time.perf_counter() - start) / runs * 1e3
    print(" ".join(f"{n} candidates {ms:.3f} ms;" for n, ms in timings.items()))


# The viewed item b was co-visited with c (3) and n (1, an item the bundle lacks); the
# session's c with a (1) and n (3).
LIVE_ITEMS = gather(
    live_read(b=[("c", 3.0), ("n", 1.0)], c=[("n", 3.0), ("a", 1.0)]),
    {name: i for i, name in enumerate("abcde")},
    viewed="b",
)


def test_live_columns_by_hand(tmp_path: Path) -> None:
    builder = builder_of(bundle_of(full_arrays(), tmp_path))
    flags = FLAGS | np.array([LIVE, LIVE, 0, 0], np.uint8)  # a and c came from the stream
    features = builder.build(CTX, ITEMS, flags, live=LIVE_ITEMS)
    # b's co-visits total 4: c 3/4; the session's (c's) total 4: a 1/4. A candidate that is
    # no live neighbour has 0 on a side that was read.
    assert column(features, "live_current") == [0, 0.75, 0, 0]
    assert column(features, "live_session") == [0.25, 0, 0, 0]
    # Only the viewed item's co-visits read: the session side is NaN for every candidate.
    alone = gather(live_read(b=[("c", 3.0)]), {n: i for i, n in enumerate("abcde")}, "b")
    features = builder.build(CTX, ITEMS, flags, live=alone)
    assert column(features, "live_current") == [0, 1, 0, 0]
    assert np.isnan(column(features, "live_session")).all()


def test_a_new_item_row_has_its_live_vector_scores_and_live_shares(tmp_path: Path) -> None:
    bundle = bundle_of(full_arrays(), tmp_path)
    builder = builder_of(bundle)
    rows = builder.new_item_rows(CTX, LIVE_ITEMS)
    assert rows.shape == (1, len(FEATURES))
    # n's anchors are b (count 1) and c (count 3): its live score is their weighted mean.
    scorer = Scorer.from_bundle(bundle, "personalized")
    assert scorer is not None
    b, c = window_scores(CTX.window, np.array([B, C], np.int32), *scorer.arrays)
    assert close(column(rows, "personalized"), [(b + 3 * c) / 4])
    alone_b, alone_c = window_scores([B], np.array([B, C], np.int32), *scorer.arrays)
    assert close(column(rows, "personalized_item"), [(alone_b + 3 * alone_c) / 4])
    assert column(rows, "scorable") == [1]
    assert column(rows, "live_current") == [0.25] and column(rows, "live_session") == [0.75]
    assert column(rows, "vsknn") == [0] and column(rows, "session_length") == [3]
    assert all(column(rows, f"source_{name}") == [0] for name in FEATURE_SOURCES)
    for name in ("itemcf_current", "item2vec_session", "log_popularity", "pool_position"):
        assert np.isnan(column(rows, name)).all(), name
