import numpy as np
import pytest

from offline.pss.metrics import ranking_metrics, recall_at_precision
from recsvc.exceptions import DataError


def test_recall_at_precision_by_hand() -> None:
    # Sorted by score: + + - + - -. Cut after 2: precision 1, recall 2/3. Cut after 4:
    # precision 3/4, recall 1. Cut after 3: precision 2/3.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 1, 0, 1, 0, 0])
    assert recall_at_precision(scores, labels, 0.9) == pytest.approx(2 / 3)
    assert recall_at_precision(scores, labels, 0.75) == pytest.approx(1.0)
    assert recall_at_precision(scores, labels, 0.5) == pytest.approx(1.0)


def test_tied_scores_are_one_threshold() -> None:
    # A positive and a negative share 0.8: no threshold separates them, so precision 1 is
    # reached only by the first pair (recall 1/2).
    scores = np.array([0.9, 0.8, 0.8])
    labels = np.array([1, 1, 0])
    assert recall_at_precision(scores, labels, 1.0) == pytest.approx(0.5)
    with pytest.raises(DataError):
        recall_at_precision(scores, np.zeros(3), 0.9)


def test_ndcg_and_map_by_hand() -> None:
    # Anchor 0 ranks - + +: DCG = 1/log2(3) + 1/log2(4) = 0.6309 + 0.5 = 1.1309;
    # ideal = 1 + 0.6309 = 1.6309; NDCG = 0.6934. AP = (1/2 + 2/3) / 2 = 0.5833.
    # Anchor 1 ranks + -: NDCG 1, AP 1. Anchor 2 has no positive and is skipped.
    anchors = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([0.9, 0.5, 0.4, 0.7, 0.1, 0.3])
    labels = np.array([0, 1, 1, 1, 0, 0])
    result = ranking_metrics(anchors, scores, labels)
    assert result["ndcg@10"] == pytest.approx((1.1309297535714575 / 1.6309297535714575 + 1) / 2)
    assert result["map@30"] == pytest.approx((7 / 12 + 1) / 2)
