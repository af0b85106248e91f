"""PSS pair mining: hand-made logs and catalogues, cleaning on 2-d embeddings, the split."""

from __future__ import annotations

import numpy as np
import pytest

from offline.data.interactions import BUY, CART, CLICK, FAV, Interactions
from offline.data.pairs import Pairs
from offline.pss.pairs import (
    CATALOGUE_LABELLED,
    VIEW_TO_PURCHASE,
    clean_pairs,
    mine_catalogue_labelled,
    mine_view_to_purchase,
    split_by_anchor,
)
from recsvc.exceptions import ConfigError, DataError

# (user, item, type, ts). View slots (clicks, reloads collapsed) are given per user.
ROWS = [
    # user 0: view slots 1 2 3 4 (the second click on 2 is a reload)
    (0, 1, CLICK, 1.0),
    (0, 2, CLICK, 2.0),
    (0, 2, CLICK, 3.0),
    (0, 3, CLICK, 4.0),
    (0, 3, CART, 5.0),  # last view is 3 itself -> anchor is the slot before: 2 -> 3
    (0, 3, BUY, 6.0),  # same anchor click and item as the cart: no second pair
    (0, 4, CLICK, 7.0),
    (0, 5, BUY, 8.0),  # 4 -> 5
    # user 1: view slots 7 6
    (1, 6, CART, 10.0),  # no view before it (user 0's clicks do not count)
    (1, 7, CLICK, 11.0),
    (1, 6, CLICK, 12.0),
    (1, 7, FAV, 12.5),  # favourites are neither views nor conversions
    (1, 7, CART, 13.0),  # 6 -> 7
    # user 2: view slots 8 9
    (2, 8, CLICK, 20.0),
    (2, 9, CLICK, 21.0),
    (2, 9, CART, 1000.0),  # 8 -> 9, but 980 s after the click on 8
]


def log() -> Interactions:
    return Interactions.from_rows(ROWS, n_items=10)


def triples(pairs: Pairs) -> list[tuple[int, int, int]]:
    return list(zip(pairs.left.tolist(), pairs.right.tolist(), pairs.label.tolist(), strict=True))


def test_view_to_purchase_pairs_by_hand() -> None:
    # n_back = 1: the negative is the item one view slot before the anchor.
    #   2 -> 3: anchor slot "2" (user 0), one before is "1"          -> negative (2, 1)
    #   4 -> 5: anchor slot "4", one before is "3"                   -> negative (4, 3)
    #   6 -> 7: anchor slot "6" (user 1), one before is "7" = the positive -> no negative
    #   8 -> 9: anchor slot "8" is user 2's first                    -> no negative
    pairs = mine_view_to_purchase(log(), n_back=1)
    assert pairs.task == VIEW_TO_PURCHASE
    assert pairs.left.dtype == pairs.right.dtype == np.int32 and pairs.label.dtype == np.int8
    assert triples(pairs) == [(2, 3, 1), (2, 1, 0), (4, 5, 1), (4, 3, 0), (6, 7, 1), (8, 9, 1)]
    assert (pairs.n_positive, pairs.n_negative) == (4, 2)


def test_view_to_purchase_further_back_and_max_gap() -> None:
    # n_back = 2: only anchor "4" (slot 4 of user 0) has a slot two back: "2".
    # max_gap = 100 s drops 8 -> 9 (980 s); the others convert within 1-2 s.
    pairs = mine_view_to_purchase(log(), n_back=2, max_gap=100.0)
    assert triples(pairs) == [(2, 3, 1), (4, 5, 1), (4, 2, 0), (6, 7, 1)]


def test_view_to_purchase_skips_a_negative_equal_to_the_anchor() -> None:
    # Views 5 6 5, then a cart of 7: anchor 5 (the last view), two slots back is 5 again.
    events = Interactions.from_rows(
        [(0, 5, CLICK, 1.0), (0, 6, CLICK, 2.0), (0, 5, CLICK, 3.0), (0, 7, CART, 4.0)], 8
    )
    assert triples(mine_view_to_purchase(events, n_back=2)) == [(5, 7, 1)]
    assert triples(mine_view_to_purchase(events, n_back=1)) == [(5, 7, 1), (5, 6, 0)]


def reference_view_to_purchase(events: Interactions, n_back: int, max_gap: float | None):
    """The module docstring's rules as a plain loop over each user's events."""
    out = []
    for user in range(events.n_users):
        slots: list[tuple[int, int]] = []  # (item, index of its latest click)
        seen = set()
        for k in np.flatnonzero(events.users == user):
            kind, item = events.types[k], int(events.items[k])
            if kind == CLICK:
                if slots and slots[-1][0] == item:
                    slots[-1] = (item, k)
                else:
                    slots.append((item, k))
                continue
            if kind not in (CART, BUY):
                continue
            s = len(slots) - 1 - (bool(slots) and slots[-1][0] == item)
            if s < 0 or (max_gap is not None and events.ts[k] - events.ts[slots[s][1]] > max_gap):
                continue
            anchor, click = slots[s]
            if (click, item) not in seen:
                seen.add((click, item))
                out.append((anchor, item, 1))
                back = slots[s - n_back][0] if s >= n_back else None
                if back is not None and back not in (item, anchor):
                    out.append((anchor, back, 0))
    return out


def test_view_to_purchase_matches_a_plain_loop_on_random_logs() -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        rows = [
            (int(rng.integers(4)), int(rng.integers(5)), int(rng.choice([0, 0, 0, 1, 2, 3])),
             float(rng.integers(30)))
            for _ in range(rng.integers(1, 60))
        ]  # fmt: skip
        events, n_back = Interactions.from_rows(rows, 5), int(rng.integers(1, 4))
        max_gap = 5.0 if trial % 2 else None
        expected = reference_view_to_purchase(events, n_back, max_gap)
        assert triples(mine_view_to_purchase(events, n_back, max_gap)) == expected


def test_view_to_purchase_without_conversions_or_clicks() -> None:
    only_clicks = Interactions.from_rows([(0, 1, CLICK, 1.0), (0, 2, CLICK, 2.0)], 3)
    only_carts = Interactions.from_rows([(0, 1, CART, 1.0), (0, 2, BUY, 2.0)], 3)
    assert len(mine_view_to_purchase(only_clicks)) == 0
    assert len(mine_view_to_purchase(only_carts)) == 0


def test_view_to_purchase_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        mine_view_to_purchase(log(), n_back=0)
    with pytest.raises(ConfigError):
        mine_view_to_purchase(log(), max_gap=0.0)


def test_catalogue_labelled_by_hand() -> None:
    # Categories: items 0, 1 -> 0; item 2 -> 1. Only 0 and 1 can anchor (2 has no partner),
    # each one's positive is the other, and every negative is item 2.
    pairs = mine_catalogue_labelled(np.array([0, 0, 1]), n_anchors=5, negatives_per_positive=3)
    assert pairs.task == CATALOGUE_LABELLED
    assert sorted(triples(pairs)) == sorted(
        [(0, 1, 1), (0, 2, 0), (0, 2, 0), (0, 2, 0), (1, 0, 1), (1, 2, 0), (1, 2, 0), (1, 2, 0)]
    )


def test_catalogue_labelled_respects_categories_and_seed() -> None:
    category = np.array([0, 0, 1, 1, 1, -1, 2, 3, 3])
    eligible = np.ones(9, dtype=bool)
    eligible[8] = False  # item 8 has no embedding: 7 loses its only partner
    pairs = mine_catalogue_labelled(category, 3, negatives_per_positive=5, eligible=eligible)
    assert len(pairs) == 3 * 6 and pairs.label.tolist() == [1, 0, 0, 0, 0, 0] * 3
    assert set(pairs.left.tolist()) <= {0, 1, 2, 3, 4} and len(set(pairs.left.tolist())) == 3
    same = category[pairs.left] == category[pairs.right]
    assert (same == (pairs.label == 1)).all() and (pairs.left != pairs.right).all()
    assert not np.isin(pairs.right, [5, 8]).any()
    again = mine_catalogue_labelled(category, 3, negatives_per_positive=5, eligible=eligible)
    assert triples(again) == triples(pairs)
    other = mine_catalogue_labelled(category, 100, eligible=eligible, seed=1)
    assert sorted(set(other.left.tolist())) == [0, 1, 2, 3, 4]  # capped at what exists


def test_catalogue_labelled_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        mine_catalogue_labelled(np.array([0, 0, 1]), n_anchors=0)
    with pytest.raises(ConfigError):
        mine_catalogue_labelled(np.array([0, 0, 1]), 2, negatives_per_positive=0)
    with pytest.raises(DataError):
        mine_catalogue_labelled(np.array([0, 1, 2]), 2)  # no category has two items
    with pytest.raises(DataError):
        mine_catalogue_labelled(np.array([0, 0, 1]), 2, eligible=np.ones(2, dtype=bool))


def at(degrees: float) -> list[float]:
    return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]


# Two raw 2-d embeddings given as angles, so cos(i, j) = cos(angle_i − angle_j).
#   A: 0°, 90°, 80°, 100°, 110°, (5 unknown)      B: 0°, 30°, 60°, 90°, (4, 5 unknown)
EMBED_A = np.array([at(0), at(90), at(80), at(100), at(110), [0, 0]])
EMBED_B = np.array([at(0), at(30), at(60), at(90), [5, 5], [0, 0]])
KNOWN_B = np.array([True, True, True, True, False, False])  # row 4 is a placeholder
CLEANING_PAIRS = Pairs(
    np.array([0, 0, 0, 1, 1, 3, 0], dtype=np.int32),
    np.array([1, 2, 4, 2, 3, 4, 5], dtype=np.int32),
    np.array([1, 1, 1, 0, 0, 0, 1], dtype=np.int8),
    VIEW_TO_PURCHASE,
)
# pair     label  cos A              cos B              rule
# (0, 1)   pos    cos 90° = 0        cos 30° = 0.87     B >= 0.6            -> kept
# (0, 2)   pos    cos 80° = 0.17     cos 60° = 0.5      < 0.6 on both       -> dropped
# (0, 4)   pos    cos 110° = −0.34   unknown            < 0.6 on A (only)   -> dropped
# (1, 2)   neg    cos 10° = 0.98     cos 30° = 0.87     > 0.8 on both       -> dropped
# (1, 3)   neg    cos 10° = 0.98     cos 60° = 0.5      B <= 0.8            -> kept
# (3, 4)   neg    cos 10° = 0.98     unknown            > 0.8 on A (only)   -> dropped
# (0, 5)   pos    unknown            unknown            cannot be judged    -> kept


def test_cleaning_by_hand() -> None:
    kept, report = clean_pairs(CLEANING_PAIRS, [EMBED_A, EMBED_B], [None, KNOWN_B])
    assert triples(kept) == [(0, 1, 1), (1, 3, 0), (0, 5, 1)]
    assert (report.mined_positive, report.mined_negative) == (4, 3)
    assert (report.dropped_positive, report.dropped_negative) == (2, 2)
    assert (report.kept_positive, report.kept_negative, report.unjudged) == (2, 1, 1)
    summary = report.summary()
    assert summary.startswith("view_to_purchase: mined 7 (4 pos / 3 neg)")
    assert "kept 3 (2 pos / 1 neg), 1 unjudged" in summary


def test_cleaning_thresholds_are_configurable() -> None:
    # positive_min 0.49: (0, 2) survives on B (0.5); negative_max 0.99: no negative is dropped.
    kept, report = clean_pairs(CLEANING_PAIRS, [EMBED_A, EMBED_B], [None, KNOWN_B], 0.49, 0.99)
    assert triples(kept) == [(0, 1, 1), (0, 2, 1), (1, 2, 0), (1, 3, 0), (3, 4, 0), (0, 5, 1)]
    assert (report.dropped_positive, report.dropped_negative) == (1, 0)


def test_cleaning_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A], positive_min=1.5)
    with pytest.raises(ConfigError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A], negative_max=-2.0)
    with pytest.raises(ConfigError):
        clean_pairs(CLEANING_PAIRS, [])
    with pytest.raises(DataError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A[:4]])  # item 5 beyond the rows
    with pytest.raises(DataError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A, EMBED_B], [None])
    with pytest.raises(DataError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A], [np.ones(3, dtype=bool)])
    with pytest.raises(DataError):
        clean_pairs(CLEANING_PAIRS, [EMBED_A.ravel()])


def test_pairs_validate_their_arrays() -> None:
    with pytest.raises(DataError):
        Pairs(np.zeros(2, np.int32), np.zeros(3, np.int32), np.zeros(2, np.int8), "t")
    with pytest.raises(DataError):
        Pairs(np.zeros(2, np.int32), np.zeros(2, np.int32), np.array([0, 2], np.int8), "t")
    with pytest.raises(DataError):
        Pairs(np.array([0, -1], np.int32), np.zeros(2, np.int32), np.zeros(2, np.int8), "t")


def test_split_by_anchor_is_disjoint_and_seeded() -> None:
    category = np.repeat(np.arange(10), 5)
    pairs = mine_catalogue_labelled(category, n_anchors=40, seed=3)
    train, held = split_by_anchor(pairs, holdout_fraction=0.25, seed=7)
    assert len(train) + len(held) == len(pairs)
    assert not set(train.left.tolist()) & set(held.left.tolist())
    assert len(set(held.left.tolist())) == 10  # 25 % of 40 anchors
    again_train, again_held = split_by_anchor(pairs, holdout_fraction=0.25, seed=7)
    assert triples(again_held) == triples(held) and triples(again_train) == triples(train)
    with pytest.raises(ConfigError):
        split_by_anchor(pairs, holdout_fraction=1.0)
    with pytest.raises(DataError):
        split_by_anchor(pairs.select(pairs.left == pairs.left[0]), 0.5)
