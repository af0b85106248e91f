"""SKNN and V-SKNN (recsvc/session_knn.py): hand-computed scores on a toy index, the index
arrays, and a plain-Python reference of the definitions on random data."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest

from recsvc.exceptions import BundleError, ConfigError, DataError
from recsvc.session_knn import (
    SKNN,
    VSKNN,
    KNNParams,
    SessionIndex,
    build_session_index,
    target_rank,
)

# The toy index: 7 items (item 6 in no session), 5 sessions (caller id: items, end time).
#   A (10): {0, 1, 2}  end 100
#   B (11): {1, 3}     end 200
#   C (12): {0, 3, 4}  end 300
#   D (13): {2, 5}     end 400
#   E (14): {0, 5}     end 150
# Numbered most recent first: D=0, C=1, B=2, E=3, A=4.
TOY = {10: ([0, 1, 2], 100.0), 11: ([1, 3], 200.0), 12: ([0, 3, 4], 300.0)}
TOY |= {13: ([2, 5], 400.0), 14: ([0, 5], 150.0)}
D, C, B, E, A = range(5)
N_ITEMS = 7
# The current session, oldest first: 1, 0, 1, 3 (current item 3). S = {0, 1, 3}, |S| = 3.
# Last occurrences: 0 at position 1, 1 at 2, 3 at 3 -> V-SKNN weights 0: 1/3, 1: 2/3, 3: 1.
CURRENT = [1, 0, 1, 3]
# Candidates (sessions holding 0, 1 or 3): A, B, C, E (D holds none).
SQ6 = math.sqrt(6)
# cosine: A: |{0,1}| / sqrt(3*3) = 2/3;  B: |{1,3}| / sqrt(3*2) = 2/sqrt6;
#         C: |{0,3}| / sqrt(3*3) = 2/3;  E: |{0}| / sqrt(3*2) = 1/sqrt6.
COS = {A: 2 / 3, B: 2 / SQ6, C: 2 / 3, E: 1 / SQ6}
# vector: A: 1/3 + 2/3 = 1;  B: 2/3 + 1 = 5/3;  C: 1/3 + 1 = 4/3;  E: 1/3.
VEC = {A: 1.0, B: 5 / 3, C: 4 / 3, E: 1 / 3}
# idf over 5 sessions: df 0: 3 (A, C, E); 1, 2, 3, 5: 2; 4: 1 (C); 6: 0.
IDF = [math.log(5 / 3), math.log(2.5), math.log(2.5), math.log(2.5), math.log(5), math.log(2.5), 0]


def events(
    sessions: dict[int, tuple[list[int], float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events, one per item; a session's events end at its end time."""
    sid, item, ts = [], [], []
    for s, (its, end) in sessions.items():
        for j, i in enumerate(its):
            sid.append(s)
            item.append(i)
            ts.append(end - len(its) + 1 + j)
    return np.array(sid), np.array(item, dtype=np.int32), np.array(ts)


@pytest.fixture
def toy() -> SessionIndex:
    return build_session_index(*events(TOY), N_ITEMS)


def as_dict(result: tuple[np.ndarray, np.ndarray]) -> dict[int, float]:
    items, scores = result
    assert items.dtype == np.int32 and scores.dtype == np.float64
    assert len(set(items.tolist())) == len(items)
    return dict(zip(items.tolist(), scores.tolist(), strict=True))


def test_toy_index_arrays(toy: SessionIndex) -> None:
    assert toy.n_sessions == 5 and toy.n_items == N_ITEMS
    assert toy.end_ts.tolist() == [400.0, 300.0, 200.0, 150.0, 100.0]
    assert toy.offsets.tolist() == [0, 2, 5, 7, 9, 12]
    assert toy.items.tolist() == [2, 5, 0, 3, 4, 1, 3, 0, 5, 0, 1, 2]
    # each item's sessions, most recent first
    assert toy.item_offsets.tolist() == [0, 3, 5, 7, 9, 10, 12, 12]
    assert toy.by_item.tolist() == [C, E, A, B, A, D, A, C, B, C, D, E]
    assert toy.idf.dtype == np.float32
    assert toy.idf.tolist() == pytest.approx(IDF, rel=1e-6)
    assert toy.idf[6] == 0.0


def test_sknn_by_hand(toy: SessionIndex) -> None:
    # score(i) = sum of the cosines of the neighbours holding i; item 3 is the current one.
    #   0: A + C + E = 4/3 + 1/sqrt6    1: A + B = 2/3 + 2/sqrt6
    #   2: A = 2/3                       4: C = 2/3                5: E = 1/sqrt6
    expected = {
        0: COS[A] + COS[C] + COS[E],
        1: COS[A] + COS[B],
        2: 2 / 3,
        4: 2 / 3,
        5: 1 / SQ6,
    }
    assert expected[0] == pytest.approx(4 / 3 + 1 / SQ6)
    assert as_dict(toy.scores(CURRENT, SKNN)) == pytest.approx(expected)


def test_vsknn_by_hand(toy: SessionIndex) -> None:
    # Sums of the vector similarities: 0: A + C + E = 1 + 4/3 + 1/3 = 8/3;
    # 1: A + B = 1 + 5/3 = 8/3; 2: A = 1; 4: C = 4/3; 5: E = 1/3.
    # V-SKNN multiplies each by 1 + idf(i).
    raw = {0: 8 / 3, 1: 8 / 3, 2: 1.0, 4: 4 / 3, 5: 1 / 3}
    assert raw[0] == pytest.approx(VEC[A] + VEC[C] + VEC[E])
    expected = {i: s * (1 + IDF[i]) for i, s in raw.items()}
    assert as_dict(toy.scores(CURRENT, VSKNN)) == pytest.approx(expected, rel=1e-6)
    plain = KNNParams(similarity="vector", idf_weight=0.0)
    assert as_dict(toy.scores(CURRENT, plain)) == pytest.approx(raw)
    half = KNNParams(similarity="vector", idf_weight=0.5)
    expected_half = {i: s * (1 + 0.5 * IDF[i]) for i, s in raw.items()}
    assert as_dict(toy.scores(CURRENT, half)) == pytest.approx(expected_half, rel=1e-6)


def test_top_items_and_rank(toy: SessionIndex) -> None:
    # SKNN: 0 (1.742) > 1 (1.483) > 2 = 4 (2/3, tie by id) > 5 (0.408)
    items, scores = toy.top_items(CURRENT, SKNN, 10)
    assert items.tolist() == [0, 1, 2, 4, 5]
    assert scores.tolist() == pytest.approx(
        [4 / 3 + 1 / SQ6, 2 / 3 + 2 / SQ6, 2 / 3, 2 / 3, 1 / SQ6]
    )
    items, scores = toy.top_items(CURRENT, SKNN, 3)
    assert items.tolist() == [0, 1, 2]
    assert toy.top_items(CURRENT, SKNN, 0)[0].tolist() == []
    all_items, all_scores = toy.scores(CURRENT, SKNN)
    assert [target_rank(all_items, all_scores, t) for t in (0, 1, 2, 4, 5)] == [1, 2, 3, 4, 5]
    assert target_rank(all_items, all_scores, 3) == 0  # the current item
    assert target_rank(all_items, all_scores, 6) == 0


def test_recency_sampling(toy: SessionIndex) -> None:
    # sample_size 2 of the candidates C (300), B (200), E (150), A (100): C and B.
    # cosines as before: C = 2/3 scores 0, 4 (3 is current); B = 2/sqrt6 scores 1.
    params = KNNParams(k=100, sample_size=2, similarity="cosine")
    assert as_dict(toy.scores(CURRENT, params)) == pytest.approx({0: 2 / 3, 1: 2 / SQ6, 4: 2 / 3})
    # sample_size 3 adds E (1/sqrt6): 0 gets C + E, 5 gets E.
    params = KNNParams(k=100, sample_size=3, similarity="cosine")
    assert as_dict(toy.scores(CURRENT, params)) == pytest.approx(
        {0: 2 / 3 + 1 / SQ6, 1: 2 / SQ6, 4: 2 / 3, 5: 1 / SQ6}
    )


def test_k_truncation(toy: SessionIndex) -> None:
    # cosines: B 0.816 > A = C 0.667 > E 0.408.
    # k=1: B alone -> 1: 2/sqrt6 (3 is current).
    assert as_dict(toy.scores(CURRENT, KNNParams(k=1))) == pytest.approx({1: 2 / SQ6})
    # k=2: B, then C wins the tie with A as the more recent -> 0: C, 1: B, 4: C; no 2.
    assert as_dict(toy.scores(CURRENT, KNNParams(k=2))) == pytest.approx(
        {0: 2 / 3, 1: 2 / SQ6, 4: 2 / 3}
    )
    # vector, k=2: B 5/3 > C 4/3 > A 1 > E 1/3 -> 0: C = 4/3, 1: B = 5/3, 4: C = 4/3.
    params = KNNParams(k=2, similarity="vector")
    assert as_dict(toy.scores(CURRENT, params)) == pytest.approx({0: 4 / 3, 1: 5 / 3, 4: 4 / 3})


def test_current_item_removed(toy: SessionIndex) -> None:
    # current item 0: neighbours A, C, E with cosine 1/sqrt(1*3), 1/sqrt3, 1/sqrt2.
    r3, r2 = 1 / math.sqrt(3), 1 / math.sqrt(2)
    got = as_dict(toy.scores([0], SKNN))
    assert got == pytest.approx({1: r3, 2: r3, 3: r3, 4: r3, 5: r2})
    # 0 is recommended when earlier in the session, not when current
    assert 0 in as_dict(toy.scores([0, 5], SKNN))
    assert 5 not in as_dict(toy.scores([0, 5], SKNN))


def test_unknown_and_negative_ids_ignored(toy: SessionIndex) -> None:
    expected = as_dict(toy.scores(CURRENT, SKNN))
    noisy = [-1, 1, 99, 0, -5, 1, 3, 7, -1]  # 7 = n_items is unknown too
    assert as_dict(toy.scores(noisy, SKNN)) == pytest.approx(expected)
    assert as_dict(toy.scores(np.array(noisy), VSKNN)) == pytest.approx(
        as_dict(toy.scores(CURRENT, VSKNN))
    )


def test_empty_results(toy: SessionIndex) -> None:
    for session in ([], [-1], [99], [6]):  # item 6 is in no session
        items, scores = toy.scores(session, SKNN)
        assert items.tolist() == [] and scores.tolist() == []
        assert toy.top_items(session, VSKNN, 5)[0].tolist() == []


def test_build_order_independent_and_min_items() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    sid = rng.integers(-50, 300, n) * 7  # arbitrary, negative too
    item = rng.integers(0, 40, n).astype(np.int32)
    ts = rng.integers(0, 500, n).astype(np.float64)  # many equal end times
    a = build_session_index(sid, item, ts, 40)
    perm = rng.permutation(n)
    b = build_session_index(sid[perm], item[perm], ts[perm], 40)
    for name, array in a.to_arrays().items():
        assert np.array_equal(array, b.to_arrays()[name]), name
    # every session with >= 2 distinct items, and only those
    distinct = {s: set(item[sid == s].tolist()) for s in set(sid.tolist())}
    assert a.n_sessions == sum(len(v) >= 2 for v in distinct.values())
    everything = build_session_index(sid, item, ts, 40, min_items=1)
    assert everything.n_sessions == len(distinct)
    # ties of end time keep the caller's session id order
    ends = {s: ts[sid == s].max() for s in distinct}
    order = sorted(distinct, key=lambda s: (-ends[s], s))
    rows = [
        set(everything.items[lo:hi].tolist())
        for lo, hi in zip(everything.offsets[:-1], everything.offsets[1:], strict=True)
    ]
    assert rows == [distinct[s] for s in order]
    assert everything.end_ts.tolist() == [ends[s] for s in order]


def test_build_refuses_bad_events() -> None:
    with pytest.raises(DataError, match=re.escape("0..4")):
        build_session_index(np.array([1, 1]), np.array([0, 5]), np.array([0.0, 1.0]), 5)
    with pytest.raises(DataError, match="length"):
        build_session_index(np.array([1]), np.array([0, 1]), np.array([0.0, 1.0]), 5)
    empty = build_session_index(np.zeros(0, int), np.zeros(0, np.int32), np.zeros(0), 3)
    assert empty.n_sessions == 0 and empty.idf.tolist() == [0, 0, 0]
    assert empty.scores([0, 1], SKNN)[0].tolist() == []


def test_round_trip(toy: SessionIndex) -> None:
    arrays = toy.to_arrays()
    assert sorted(arrays) == [
        "sessions/by_item",
        "sessions/end_ts",
        "sessions/idf",
        "sessions/item_offsets",
        "sessions/items",
        "sessions/offsets",
    ]
    back = SessionIndex.from_arrays(arrays)
    assert as_dict(back.scores(CURRENT, VSKNN)) == as_dict(toy.scores(CURRENT, VSKNN))
    other = SessionIndex.from_arrays(toy.to_arrays("knn/"), "knn/")
    assert np.array_equal(other.by_item, toy.by_item)


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("offsets", lambda a: a[[0, 2, 1, 3, 4, 5]], "non-decreasing"),
        ("offsets", lambda a: a[:-1], "entries"),
        ("item_offsets", lambda a: a + 1, "from 0"),
        ("items", lambda a: np.where(a == 4, 7, a).astype(np.int32), "outside 0..6"),
        ("by_item", lambda a: np.where(a == 0, -1, a).astype(np.int32), "outside 0..4"),
        ("items", lambda a: a.astype(np.int64), "dtype int64"),
        ("idf", lambda a: a * 2, "idf"),
        ("end_ts", lambda a: a[::-1].copy(), "most recent first"),
        ("items", lambda a: a[[1, 0, *range(2, 12)]], "increasing within"),
    ],
)
def test_from_arrays_refuses(
    toy: SessionIndex, name: str, corrupt: Callable[[np.ndarray], np.ndarray], message: str
) -> None:
    arrays = toy.to_arrays()
    arrays[f"sessions/{name}"] = corrupt(arrays[f"sessions/{name}"])
    with pytest.raises(BundleError, match=re.escape(message)):
        SessionIndex.from_arrays(arrays)


def test_from_arrays_missing(toy: SessionIndex) -> None:
    arrays = toy.to_arrays()
    del arrays["sessions/idf"]
    with pytest.raises(BundleError, match="sessions/idf"):
        SessionIndex.from_arrays(arrays)


def test_target_rank_ties() -> None:
    items = np.array([5, 2, 9, 1, 7], dtype=np.int32)
    scores = np.array([1.0, 2.0, 1.0, 1.0, 0.5])
    assert target_rank(items, scores, 2) == 1
    assert target_rank(items, scores, 1) == 2  # ties at 1.0: 1, 5, 9
    assert target_rank(items, scores, 5) == 3
    assert target_rank(items, scores, 9) == 4
    assert target_rank(items, scores, 7) == 5
    assert target_rank(items, scores, 3) == 0
    assert target_rank(items[:0], scores[:0], 3) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"k": 0},
        {"sample_size": 0},
        {"similarity": "jaccard"},
        {"idf_weight": -1.0},
        {"idf_weight": math.nan},
        {"k": 2.5},
    ],
)
def test_params_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        KNNParams(**bad)  # type: ignore[arg-type]


def test_presets() -> None:
    assert (SKNN.k, SKNN.sample_size, SKNN.similarity, SKNN.idf_weight) == (100, 500, "cosine", 0.0)
    assert (VSKNN.k, VSKNN.sample_size, VSKNN.similarity, VSKNN.idf_weight) == (
        100,
        500,
        "vector",
        1.0,
    )


# -- a plain-Python reference of the definitions, on random data -------------------------


def reference(index: SessionIndex, session: list[int], p: KNNParams) -> dict[int, float]:
    valid = [i for i in session if 0 <= i < index.n_items]
    if not valid:
        return {}
    rows = [
        set(index.items[lo:hi].tolist())
        for lo, hi in zip(index.offsets[:-1], index.offsets[1:], strict=True)
    ]
    last: dict[int, int] = {}
    for pos, i in enumerate(valid):
        last[i] = pos
    in_order = sorted(last, key=last.__getitem__)
    position = {i: p_ + 1 for p_, i in enumerate(in_order)}
    current = set(valid)
    # recency: newer end first, then the session number (the caller's order on ties)
    cands = [s for s in range(len(rows)) if rows[s] & current]
    cands.sort(key=lambda s: (-index.end_ts[s], s))
    cands = cands[: p.sample_size]
    sims = {}
    for s in cands:
        common = rows[s] & current
        if p.similarity == "cosine":
            sims[s] = len(common) / math.sqrt(len(current) * len(rows[s]))
        else:
            sims[s] = float(sum(position[i] for i in common)) / len(current)
    kept = sorted(sims, key=lambda s: (-sims[s], -index.end_ts[s], s))[: p.k]
    scores: dict[int, float] = {}
    for s in kept:
        for i in rows[s]:
            scores[i] = scores.get(i, 0.0) + sims[s] * (1 + p.idf_weight * float(index.idf[i]))
    scores.pop(valid[-1], None)
    return {i: v for i, v in scores.items() if v > 0}


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, n_sessions = 30, 120
    lengths = rng.integers(1, 7, n_sessions)
    sid = np.repeat(rng.permutation(n_sessions) * 3, lengths)
    item = rng.zipf(1.5, len(sid)) % n_items
    ts = rng.integers(0, 40, len(sid)).astype(np.float64)
    index = build_session_index(sid, item.astype(np.int32), ts, n_items)
    for params in (
        SKNN,
        VSKNN,
        KNNParams(k=5, sample_size=12, similarity="cosine"),
        KNNParams(k=3, sample_size=20, similarity="vector", idf_weight=0.7),
        KNNParams(k=20, sample_size=4, similarity="vector"),
    ):
        for _ in range(15):
            session = rng.integers(-2, n_items + 2, rng.integers(1, 9)).tolist()
            assert as_dict(index.scores(session, params)) == pytest.approx(
                reference(index, session, params)
            ), (session, params)
            items, _ = index.top_items(session, params, 4)
            full = index.scores(session, params)
            assert [target_rank(*full, int(i)) for i in items] == list(range(1, len(items) + 1))
