import math

import numpy as np

from offline.evaluation.metrics import (
    MISS,
    hit_ratio,
    ndcg,
    paired_bootstrap,
    reciprocal_rank,
    summarize,
    target_ranks,
)

NEG = -np.inf


def test_target_rank_orders_by_score_and_breaks_ties_by_pool_order():
    candidates = np.array([[5, 6, 7, 8], [5, 6, 7, -1], [5, 6, 7, 8], [1, 2, 3, 4]])
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # target 7 scores 0.5: behind 6 only -> rank 2
            [0.3, 0.3, 0.3, NEG],  # all tied: pool order -> 7 is third
            [NEG, NEG, NEG, 0.0],  # target 6 unscorable: behind 8, then pool order after 5 -> 3
            [0.5, 0.4, 0.3, 0.2],  # target 9 not in the pool
        ]
    )
    ranks = target_ranks(scores, candidates, np.array([7, 7, 6, 9]))
    assert ranks.tolist() == [2, 3, 3, MISS]


def test_metrics_by_hand():
    ranks = np.array([1, 3, 12, MISS])
    assert hit_ratio(ranks, 5).tolist() == [1, 1, 0, 0]
    assert np.allclose(ndcg(ranks, 10), [1.0, 1 / math.log2(4), 0, 0])
    assert np.allclose(reciprocal_rank(ranks, 20), [1.0, 1 / 3, 1 / 12, 0])
    summary = summarize(ranks, (5, 10, 20))
    assert summary["hr@5"] == 0.5 and summary["hr@20"] == 0.75
    assert math.isclose(summary["ndcg@10"], (1 + 0.5) / 4)
    assert math.isclose(summary["mrr@20"], (1 + 1 / 3 + 1 / 12) / 4)
    assert summary["coverage"] == 0.75  # the MISS is outside the ranked candidates


def test_paired_bootstrap_difference_and_interval():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1], dtype=float)
    b = np.array([0, 1, 0, 0, 0, 1, 0, 0], dtype=float)
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    value, low, high = paired_bootstrap(a, b, users, rounds=500, seed=1)
    assert math.isclose(value, 4 / 8)  # a - b = 1,0,1,0,1,0,0,1
    assert low <= value <= high
    assert low >= 0.0  # every user's difference is >= 0, so every resample is too
    again = paired_bootstrap(a, b, users, rounds=500, seed=1)
    assert again == (value, low, high)
    # Identical methods differ by exactly zero in every resample.
    assert paired_bootstrap(a, a, users, rounds=50) == (0.0, 0.0, 0.0)
