import numpy as np

from offline.pss_pairs import Pairs
from offline.pss_source import add_random_negatives


def test_random_negatives_top_up_to_the_ratio() -> None:
    pairs = Pairs(
        np.array([0, 1, 2, 3], np.int32),
        np.array([1, 2, 3, 4], np.int32),
        np.array([1, 1, 1, 0], np.int8),
        "view_to_view",
    )
    topped = add_random_negatives(pairs, np.arange(100, 200), ratio=2.0, seed=0)
    assert (topped.n_positive, topped.n_negative) == (3, 6)  # 2 per positive: 1 had, 5 drawn
    new = slice(4, None)
    assert set(topped.left[new]) <= {0, 1, 2}  # anchors of positives
    assert set(topped.right[new]) <= set(range(100, 200))
    assert topped.task == "view_to_view"
    assert add_random_negatives(topped, np.arange(100, 200), ratio=2.0, seed=0) is topped
