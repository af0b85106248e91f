"""PSS losses: contrastive and HRMS values worked out by hand, the miner's kept pairs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from recsvc.exceptions import ConfigError, DataError
from training.pss_losses import (
    HRMSLevel,
    contrastive_loss,
    cosine_similarities,
    hrms_loss,
    multi_similarity_loss,
    multi_similarity_mining,
    weighted_task_sum,
)

# Four unit vectors whose cosines are round numbers:
#   e0 = (1, 0), e1 = (0.8, 0.6), e2 = (0.6, 0.8), e3 = (0, 1)
#   S01 = 0.8, S02 = 0.6, S03 = 0, S12 = 0.48 + 0.48 = 0.96, S13 = 0.6, S23 = 0.8
BATCH = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
SIMILARITY = np.array(
    [[1.0, 0.8, 0.6, 0.0], [0.8, 1.0, 0.96, 0.6], [0.6, 0.96, 1.0, 0.8], [0.0, 0.6, 0.8, 1.0]]
)
LEVEL0 = [0, 0, 1, 1]  # e.g. two views of each of two items
LEVEL1 = [0, 0, 0, 1]  # the first three items share a category


def pairs_of(mask: tf.Tensor) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in np.argwhere(mask.numpy())}


def test_contrastive_loss_by_hand() -> None:
    # Sides are normalised first; d² = |l̂ − r̂|² = 2 − 2·cos, margin m = 1:
    #   (1,0)-(0,1), positive: d² = 2                                   -> 2
    #   (1,0)-(3,4), negative: r̂ = (0.6, 0.8), d² = 0.16 + 0.64 = 0.8, d = 0.894427,
    #                          max(0, 1 − 0.894427)² = 0.105573² = 0.011146 -> 0.011146
    #   (1,0)-(2,0), negative: d = 0, max(0, 1 − 0)² = 1                 -> 1
    # mean = (2 + 0.011146 + 1) / 3 = 1.003715
    left = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    right = np.array([[0.0, 1.0], [3.0, 4.0], [2.0, 0.0]], dtype=np.float32)
    loss = contrastive_loss(left, right, np.array([1, 0, 0], dtype=np.int8), margin=1.0)
    assert float(loss) == pytest.approx(1.003715, abs=1e-5)
    # A smaller margin: the second pair (d = 0.894) no longer costs anything.
    loss = contrastive_loss(left, right, np.array([1, 0, 0]), margin=0.5)
    assert float(loss) == pytest.approx((2 + 0 + 0.25) / 3, abs=1e-5)


def test_contrastive_gradients_stay_finite_for_identical_sides() -> None:
    left = tf.Variable([[1.0, 2.0], [1.0, 2.0]])
    with tf.GradientTape() as tape:
        loss = contrastive_loss(left, tf.constant([[1.0, 2.0], [1.0, 2.0]]), tf.constant([1, 0]))
    assert np.isfinite(tape.gradient(loss, left).numpy()).all()
    assert float(loss) == pytest.approx(0.5)  # positive 0, negative max(0, 1 − 0)² = 1


def test_contrastive_loss_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        contrastive_loss(BATCH, BATCH, np.ones(4), margin=2.5)
    with pytest.raises(DataError):
        contrastive_loss(BATCH, BATCH[:3], np.ones(4))
    with pytest.raises(DataError):
        contrastive_loss(BATCH, np.ones((4, 3), np.float32), np.ones(4))
    with pytest.raises(DataError):
        contrastive_loss(BATCH, BATCH, np.ones((4, 1)))


def test_cosine_similarities_of_the_batch() -> None:
    np.testing.assert_allclose(cosine_similarities(BATCH * 3.0).numpy(), SIMILARITY, atol=1e-6)


def test_miner_keeps_the_hard_pairs_by_hand() -> None:
    # Level 0 (labels 0 0 1 1), ε = 0.1. A negative is kept when S > min pos − ε, a positive
    # when S < max neg + ε:
    #   anchor 0: pos {1: 0.8}, neg {2: 0.6, 3: 0}; keep neg S > 0.7: none; pos S < 0.7: none
    #   anchor 1: pos {0: 0.8}, neg {2: 0.96, 3: 0.6}; neg S > 0.7: {2}; pos S < 1.06: {0}
    #   anchor 2: pos {3: 0.8}, neg {1: 0.96, 0: 0.6}; neg S > 0.7: {1}; pos S < 1.06: {3}
    #   anchor 3: pos {2: 0.8}, neg {1: 0.6, 0: 0}; neg S > 0.7: none; pos S < 0.7: none
    positive, negative, candidate = multi_similarity_mining(SIMILARITY, np.array(LEVEL0), 0.1)
    assert pairs_of(positive) == {(1, 0), (2, 3)}
    assert pairs_of(negative) == {(1, 2), (2, 1)}
    assert candidate.numpy().tolist() == [True] * 4


def test_miner_on_the_category_level_and_unknown_labels() -> None:
    # Level 1 (labels 0 0 0 1), ε = 0.3:
    #   anchor 0: pos {1: 0.8, 2: 0.6}, neg {3: 0}; neg S > 0.3: none; pos S < 0.3: none
    #   anchor 1: pos {0: 0.8, 2: 0.96}, neg {3: 0.6}; neg S > 0.5: {3}; pos S < 0.9: {0}
    #   anchor 2: pos {0: 0.6, 1: 0.96}, neg {3: 0.8}; neg S > 0.3: {3}; pos S < 1.1: {0, 1}
    #   anchor 3: no positive, so not a candidate anchor and nothing is mined for it
    positive, negative, candidate = multi_similarity_mining(SIMILARITY, np.array(LEVEL1), 0.3)
    assert pairs_of(positive) == {(1, 0), (2, 0), (2, 1)}
    assert pairs_of(negative) == {(1, 3), (2, 3)}
    assert candidate.numpy().tolist() == [True, True, True, False]
    # Item 3's label unknown: it is nobody's negative, so no anchor is a candidate.
    positive, negative, candidate = multi_similarity_mining(
        SIMILARITY, np.array([0, 0, 0, -1]), 0.3
    )
    assert not negative.numpy().any() and not candidate.numpy().any()


def test_hrms_one_level_by_hand() -> None:
    # α = 2, β = 10, λ = 0.5, ε = 0.1 with the kept pairs above. Anchors 0 and 3 keep nothing
    # (0 each); anchors 1 and 2 are mirror images:
    #   pull = (1/2)·log(1 + exp(−2·(0.8 − 0.5)))  = 0.5·log(1 + e^−0.6) = 0.5·0.437488 = 0.218744
    #   push = (1/10)·log(1 + exp(10·(0.96 − 0.5))) = 0.1·log(1 + e^4.6) = 0.1·4.610002 = 0.461000
    # mean over the 4 candidate anchors = 2·(0.218744 + 0.461000) / 4 = 0.339872
    level = HRMSLevel(alpha=2.0, beta=10.0, epsilon=0.1)
    loss = hrms_loss(BATCH, np.array(LEVEL0), [level], lam=0.5)
    assert float(loss) == pytest.approx(0.339872, abs=1e-5)
    direct = multi_similarity_loss(SIMILARITY, np.array(LEVEL0), 2.0, 10.0, 0.5, 0.1)
    assert float(direct) == pytest.approx(0.339872, abs=1e-5)


def test_hrms_two_levels_by_hand() -> None:
    # Level 0 as above: 0.339872. Level 1 (α = 2, β = 10, λ = 0.5, ε = 0.3), kept pairs from
    # test_miner_on_the_category_level_and_unknown_labels:
    #   anchor 1: pull 0.5·log(1 + e^(−2·0.3)) = 0.5·log(1.548812)          = 0.218744
    #             push 0.1·log(1 + e^(10·0.1)) = 0.1·log(3.718282)          = 0.131326
    #   anchor 2: pull 0.5·log(1 + e^(−2·0.1) + e^(−2·0.46))
    #                = 0.5·log(1 + 0.818731 + 0.398519) = 0.5·0.796268     = 0.398134
    #             push 0.1·log(1 + e^(10·0.3)) = 0.1·log(21.085537)         = 0.304859
    #   anchor 0 keeps nothing (0); anchor 3 is no candidate.
    #   level 1 = (0.218744 + 0.131326 + 0.398134 + 0.304859) / 3 = 0.351021
    # With weights 1 and 0.5: 0.339872 + 0.5·0.351021 = 0.515382
    levels = [
        HRMSLevel(alpha=2.0, beta=10.0, epsilon=0.1, weight=1.0),
        HRMSLevel(alpha=2.0, beta=10.0, epsilon=0.3, weight=0.5),
    ]
    labels = np.array([LEVEL0, LEVEL1]).T  # shape (4, 2)
    loss = hrms_loss(BATCH, labels, levels, lam=0.5)
    assert float(loss) == pytest.approx(0.515382, abs=1e-5)


def test_hrms_gradients_are_finite_and_pull_positives_together() -> None:
    embeddings = tf.Variable(BATCH)
    levels = [HRMSLevel(alpha=2.0, beta=10.0, epsilon=0.1)]
    with tf.GradientTape() as tape:
        loss = hrms_loss(embeddings, np.array(LEVEL0), levels)
    gradient = tape.gradient(loss, embeddings).numpy()
    assert np.isfinite(gradient).all()
    stepped = BATCH - 0.1 * gradient
    assert float(hrms_loss(stepped, np.array(LEVEL0), levels)) < float(loss)
    # No candidate anchor (one label everywhere): the loss is 0, not NaN.
    assert float(hrms_loss(BATCH, np.zeros(4, np.int32), levels)) == 0.0


def test_hrms_rejects_bad_input() -> None:
    level = HRMSLevel()
    with pytest.raises(ConfigError):
        HRMSLevel(alpha=0.0)
    with pytest.raises(ConfigError):
        HRMSLevel(epsilon=-0.1)
    with pytest.raises(ConfigError):
        hrms_loss(BATCH, np.array(LEVEL0), [level], lam=1.5)
    with pytest.raises(ConfigError):
        hrms_loss(BATCH, np.array(LEVEL0), [])
    with pytest.raises(DataError):
        hrms_loss(BATCH, np.array([LEVEL0, LEVEL1]).T, [level])  # 2 label levels, 1 configured
    with pytest.raises(DataError):
        hrms_loss(BATCH, np.array(LEVEL0[:3]), [level])


def test_weighted_task_sum() -> None:
    losses = {"view_to_purchase": tf.constant(2.0), "catalogue_labelled": tf.constant(4.0)}
    total = weighted_task_sum(losses, {"view_to_purchase": 1.0, "catalogue_labelled": 0.25})
    assert float(total) == pytest.approx(3.0)
    with pytest.raises(ConfigError):
        weighted_task_sum(losses, {"view_to_purchase": 1.0})
    assert math.isclose(float(weighted_task_sum({"a": tf.constant(1.0)}, {"a": 0.0})), 0.0)
