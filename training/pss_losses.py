"""Losses of the PSS SiameseNet: contrastive loss on pairs and the hierarchical HRMS loss.

Both are pure functions of tensors (no variables), usable inside ``tf.function``.

Contrastive loss (Hadsell, Chopra and LeCun 2006)
-------------------------------------------------
Both sides of a pair are L2-normalised first and ``d`` is the Euclidean distance between the
unit vectors, so ``d² = 2 − 2·cos`` lies in [0, 4] and the margin in (0, 2] reads directly
as a cosine: a negative stops contributing once ``cos < 1 − m²/2`` (the default ``m = 1``
means cos < 0.5). The loss is the mean over pairs of

    y·d² + (1 − y)·max(0, m − d)²

with ``y = 1`` for a positive. Where ``d² < 1e-12`` the distance is taken as 0 with a zero
gradient (the square root's gradient is infinite there), so training never sees a NaN.

HRMS: hierarchical ranked multi-similarity loss
-----------------------------------------------
For a batch of n embeddings with a label per hierarchy level (e.g. level 0 = item id,
level 1 = category, level 2 = root), ``S`` is the n × n cosine-similarity matrix. At level
``l``, for anchor ``i``:

* its *positives* are the other batch members ``j ≠ i`` with the same level-``l`` label;
* its *negatives* are the members with a different level-``l`` label;
* an item whose level-``l`` label is -1 (unknown) is neither anchor nor partner at level l.

The level's miner (multi-similarity mining, Wang et al. 2019) with margin ``ε_l`` keeps a
negative ``j`` when ``S_ij > min_{positives k} S_ik − ε_l`` and a positive ``j`` when
``S_ij < max_{negatives k} S_ik + ε_l``. (An anchor keeps a positive exactly when it keeps a
negative: either inequality implies the other for its extreme pair.) The anchor's loss is

    (1/α_l)·log(1 + Σ_{kept pos j} exp(−α_l·(S_ij − λ)))
      + (1/β_l)·log(1 + Σ_{kept neg j} exp(β_l·(S_ij − λ)))

with ``λ`` shared by all levels. The level loss is the mean over the level's *candidate
anchors*, those with at least one positive and one negative before mining (an anchor whose
miner keeps nothing is already well separated and adds 0 to the mean). The HRMS loss is
``Σ_l w_l · loss_l``. Because a same-item pair is also a same-category pair, the lower
levels pull the closest items together harder: the ranking the name refers to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import tensorflow as tf

from recsvc.exceptions import ConfigError, DataError

_MIN_SQUARED_DISTANCE = 1e-12


def _check_rank(name: str, tensor: tf.Tensor, rank: int) -> None:
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise DataError(f"{name} must have rank {rank}, got shape {tensor.shape}")


def _check_same_length(names: str, *tensors: tf.Tensor) -> None:
    lengths = {t.shape[0] for t in tensors if t.shape.rank and t.shape[0] is not None}
    if len(lengths) > 1:
        raise DataError(f"{names} must share the first axis, got {[t.shape for t in tensors]}")


def contrastive_loss(
    left: tf.Tensor, right: tf.Tensor, labels: tf.Tensor, margin: float = 1.0
) -> tf.Tensor:
    """Hadsell et al.'s contrastive loss on L2-normalised pair embeddings (module docstring).

    Parameters
    ----------
    left, right : float tensors, shape (n, d)
        The two sides of each pair (normalised here).
    labels : tensor, shape (n,)
        1 for a positive pair, 0 for a negative (any numeric dtype).
    margin : float in (0, 2]
        Distance between unit vectors beyond which a negative costs nothing.

    Returns
    -------
    tf.Tensor, shape ()
        float32 mean over the pairs.
    """
    if not 0.0 < margin <= 2.0:
        raise ConfigError(f"margin must be in (0, 2] for unit vectors, got {margin}")
    left = tf.convert_to_tensor(left, dtype=tf.float32)
    right = tf.convert_to_tensor(right, dtype=tf.float32)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.float32)
    _check_rank("left", left, 2)
    _check_rank("right", right, 2)
    _check_rank("labels", labels, 1)
    if left.shape[1] is not None and right.shape[1] is not None and left.shape[1] != right.shape[1]:
        raise DataError(f"left and right dims differ: {left.shape} vs {right.shape}")
    _check_same_length("left, right and labels", left, right, labels)
    diff = tf.math.l2_normalize(left, axis=1) - tf.math.l2_normalize(right, axis=1)
    squared = tf.reduce_sum(tf.square(diff), axis=1)
    apart = squared > _MIN_SQUARED_DISTANCE  # sqrt's gradient is infinite at 0: mask it out
    distance = tf.where(apart, tf.sqrt(tf.where(apart, squared, 1.0)), 0.0)
    hinge = tf.square(tf.nn.relu(margin - distance))
    return tf.reduce_mean(labels * squared + (1.0 - labels) * hinge)


def weighted_task_sum(losses: Mapping[str, tf.Tensor], weights: Mapping[str, float]) -> tf.Tensor:
    """``Σ_task w_task · loss_task``; every task with a loss needs a weight >= 0."""
    missing = sorted(set(losses) - set(weights))
    if missing:
        raise ConfigError(f"no weight for task(s) {missing}")
    if any(weights[task] < 0 for task in losses):
        raise ConfigError(f"task weights must be >= 0, got {dict(weights)}")
    return tf.add_n([weights[task] * tf.cast(loss, tf.float32) for task, loss in losses.items()])


@dataclass(frozen=True)
class HRMSLevel:
    """Parameters of one hierarchy level of :func:`hrms_loss`.

    Attributes
    ----------
    alpha, beta : float > 0
        Scales of the positive and negative terms.
    epsilon : float >= 0
        The miner's margin.
    weight : float >= 0
        The level's weight in the sum over levels.
    """

    alpha: float = 2.0
    beta: float = 50.0
    epsilon: float = 0.1
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0 and self.epsilon >= 0 and self.weight >= 0):
            raise ConfigError(f"need alpha, beta > 0 and epsilon, weight >= 0, got {self}")


def cosine_similarities(embeddings: tf.Tensor) -> tf.Tensor:
    """float32 tensor, shape (n, n): cosines between the rows of ``embeddings`` (n, d)."""
    embeddings = tf.convert_to_tensor(embeddings, dtype=tf.float32)
    _check_rank("embeddings", embeddings, 2)
    unit = tf.math.l2_normalize(embeddings, axis=1)
    return tf.matmul(unit, unit, transpose_b=True)


def multi_similarity_mining(
    similarity: tf.Tensor, labels: tf.Tensor, epsilon: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The pairs one level's miner keeps (module docstring).

    Parameters
    ----------
    similarity : float tensor, shape (n, n)
    labels : int tensor, shape (n,)
        The level's label of each item, -1 when unknown.
    epsilon : float >= 0

    Returns
    -------
    positives, negatives : bool tensors, shape (n, n)
        ``[i, j]`` true when ``j`` is a kept positive / negative of anchor ``i``.
    candidate : bool tensor, shape (n,)
        Anchors with at least one positive and one negative before mining.
    """
    similarity = tf.stop_gradient(tf.convert_to_tensor(similarity, dtype=tf.float32))
    labels = tf.convert_to_tensor(labels)
    _check_rank("similarity", similarity, 2)
    _check_rank("labels", labels, 1)
    _check_same_length("similarity and labels", similarity, labels)
    known = labels >= 0
    both_known = known[:, None] & known[None, :]
    same = tf.equal(labels[:, None], labels[None, :]) & both_known
    not_self = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    positive = same & not_self
    negative = tf.logical_not(same) & both_known
    inf = tf.constant(float("inf"))
    hardest_positive = tf.reduce_min(tf.where(positive, similarity, inf), axis=1, keepdims=True)
    hardest_negative = tf.reduce_max(tf.where(negative, similarity, -inf), axis=1, keepdims=True)
    kept_negative = negative & (similarity > hardest_positive - epsilon)
    kept_positive = positive & (similarity < hardest_negative + epsilon)
    candidate = tf.reduce_any(positive, axis=1) & tf.reduce_any(negative, axis=1)
    return kept_positive, kept_negative, candidate


def _log1p_sum_exp(logits: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """``log(1 + Σ_j exp(logits_ij))`` over the masked j, per row, computed stably."""
    masked = tf.where(mask, logits, tf.constant(-float("inf")))
    zero = tf.zeros_like(masked[:, :1])
    return tf.reduce_logsumexp(tf.concat([zero, masked], axis=1), axis=1)


def multi_similarity_loss(
    similarity: tf.Tensor,
    labels: tf.Tensor,
    alpha: float,
    beta: float,
    lam: float,
    epsilon: float,
) -> tf.Tensor:
    """One level's mined multi-similarity loss, averaged over candidate anchors.

    Parameters
    ----------
    similarity : float tensor, shape (n, n)
    labels : int tensor, shape (n,), -1 = unknown
    alpha, beta, lam, epsilon : float

    Returns
    -------
    tf.Tensor, shape ()
        0 when the level has no candidate anchor.
    """
    similarity = tf.convert_to_tensor(similarity, dtype=tf.float32)
    positive, negative, candidate = multi_similarity_mining(similarity, labels, epsilon)
    pull = _log1p_sum_exp(-alpha * (similarity - lam), positive) / alpha
    push = _log1p_sum_exp(beta * (similarity - lam), negative) / beta
    n_candidates = tf.reduce_sum(tf.cast(candidate, tf.float32))
    return tf.reduce_sum(pull + push) / tf.maximum(n_candidates, 1.0)


def hrms_loss(
    embeddings: tf.Tensor,
    labels: tf.Tensor,
    levels: Sequence[HRMSLevel],
    lam: float = 0.5,
) -> tf.Tensor:
    """Hierarchical ranked multi-similarity loss of one batch (module docstring).

    Parameters
    ----------
    embeddings : float tensor, shape (n, d)
        Normalised here; similarities are cosines.
    labels : int tensor, shape (n, n_levels), or (n,) for one level
        ``labels[:, l]`` is each item's label at level ``l``, -1 when unknown.
    levels : sequence of HRMSLevel, length n_levels
    lam : float in [-1, 1]
        The similarity threshold λ shared by the levels.

    Returns
    -------
    tf.Tensor, shape ()
        float32 ``Σ_l w_l · loss_l``.
    """
    if not levels:
        raise ConfigError("hrms_loss needs at least one level")
    if not -1.0 <= lam <= 1.0:
        raise ConfigError(f"lam must be a cosine in [-1, 1], got {lam}")
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 1:
        labels = labels[:, None]
    _check_rank("labels", labels, 2)
    if labels.shape[1] is not None and labels.shape[1] != len(levels):
        raise DataError(f"labels have {labels.shape[1]} levels, {len(levels)} configured")
    similarity = cosine_similarities(embeddings)
    _check_same_length("embeddings and labels", similarity, labels)
    total = tf.constant(0.0)
    for index, level in enumerate(levels):
        level_loss = multi_similarity_loss(
            similarity, labels[:, index], level.alpha, level.beta, lam, level.epsilon
        )
        total += level.weight * level_loss
    return total
