"""The PSS SiameseNet: a shared tower of FC layers (each with batch norm and ReLU) that maps
compound features to product embeddings, trained on several pair tasks at once (PSS §3.1).

Each task (e.g. view-to-purchase pairs, catalogue-labelled pairs) contributes its
contrastive loss on the tower's L2-normalised outputs of its pairs, weighted by the task's
weight. With ``loss="hrms"``, the batches are instead the two sides of the tasks' positive
pairs with their labels at each hierarchy level (e.g. the group of items joined by
view-to-purchase positives, then the category), and the hierarchical multi-similarity loss
is used: each level's positives share its label, the rest of the batch are its negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from offline.data.pairs import Pairs
from recsvc.exceptions import ConfigError, DataError
from training.base import Model, NumpyBatch, fit, minibatches, seed_everything
from training.configs import HRMS_PER_LEVEL, PSSConfig
from training.pss_losses import HRMSLevel, contrastive_loss, hrms_loss, weighted_task_sum

logger = logging.getLogger(__name__)
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


class SiameseTower(Model):
    """FC → batch norm → ReLU, repeated; outputs L2-normalised.

    Parameters
    ----------
    features : float32 array, shape (n_items, d), the compound features (a constant)
    widths : tuple of int
    seed : int
    """

    def __init__(self, features: np.ndarray, widths: tuple[int, ...], seed: int = 0) -> None:
        super().__init__(name="pss_tower")
        self.features = tf.constant(np.asarray(features, dtype=np.float32))
        rng = np.random.default_rng(seed)
        self.kernels, self.biases, self.gammas, self.betas = [], [], [], []
        self.moving_means, self.moving_vars = [], []
        fan_in = features.shape[1]
        for i, width in enumerate(widths):
            limit = np.sqrt(6.0 / (fan_in + width))  # Glorot uniform
            kernel = rng.uniform(-limit, limit, (fan_in, width)).astype(np.float32)
            self.kernels.append(tf.Variable(kernel, name=f"kernel{i}"))
            self.biases.append(tf.Variable(tf.zeros(width), name=f"bias{i}"))
            self.gammas.append(tf.Variable(tf.ones(width), name=f"gamma{i}"))
            self.betas.append(tf.Variable(tf.zeros(width), name=f"beta{i}"))
            self.moving_means.append(tf.Variable(tf.zeros(width), trainable=False))
            self.moving_vars.append(tf.Variable(tf.ones(width), trainable=False))
            fan_in = width
        #: ``loss_fn(batch, training)``, set by :func:`train_pss`
        self.loss_fn: Callable[[dict[str, tf.Tensor], bool], tf.Tensor] | None = None

    def embed(self, items: tf.Tensor, training: bool = False) -> tf.Tensor:
        """float32 (b, widths[-1]): normalised embeddings of int32 (b,) item indices."""
        x = tf.gather(self.features, items)
        for i in range(len(self.kernels)):
            x = tf.matmul(x, self.kernels[i]) + self.biases[i]
            if training:
                mean, var = tf.nn.moments(x, axes=[0])
                self.moving_means[i].assign(
                    BN_MOMENTUM * self.moving_means[i] + (1 - BN_MOMENTUM) * mean
                )
                self.moving_vars[i].assign(
                    BN_MOMENTUM * self.moving_vars[i] + (1 - BN_MOMENTUM) * var
                )
            else:
                mean, var = self.moving_means[i], self.moving_vars[i]
            x = tf.nn.batch_normalization(x, mean, var, self.betas[i], self.gammas[i], BN_EPSILON)
            x = tf.nn.relu(x)
        return tf.math.l2_normalize(x, axis=1)

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        if self.loss_fn is None:
            raise RuntimeError("SiameseTower.loss_fn is set by train_pss")
        return self.loss_fn(batch, training)

    def all_embeddings(self, batch_size: int = 4096) -> np.ndarray:
        """float32 (n_items, widths[-1]) in inference mode."""
        n = int(self.features.shape[0])
        parts = [
            self.embed(tf.range(start, min(start + batch_size, n)), training=False).numpy()
            for start in range(0, n, batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.kernels[-1].shape[1]))


def _pair_batches(
    tasks: Mapping[str, Pairs], batch_size: int, rng: np.random.Generator
) -> Iterator[NumpyBatch]:
    """Batches holding ``batch_size`` pairs of every task (each task cycled to the longest)."""
    longest = max(len(p.left) for p in tasks.values())
    orders = {name: np.resize(rng.permutation(len(p.left)), longest) for name, p in tasks.items()}
    for block in minibatches(longest, batch_size, rng):
        if len(block) < 2:
            continue
        batch: dict[str, np.ndarray] = {}
        for t, (name, pairs) in enumerate(sorted(tasks.items())):
            rows = orders[name][np.sort(block)]
            batch[f"left{t}"] = pairs.left[rows].astype(np.int32)
            batch[f"right{t}"] = pairs.right[rows].astype(np.int32)
            batch[f"label{t}"] = pairs.label[rows].astype(np.float32)
        yield batch


def _item_batches(
    tasks: Mapping[str, Pairs], levels: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[NumpyBatch]:
    """Batches of items with their hierarchy labels, for HRMS.

    Each batch holds both sides of ``batch_size // (2 * n_tasks)`` positive pairs of every
    task (each task cycled to the longest), so every anchor has partners in the batch at the
    levels its pairs stand for; the other items are its in-batch negatives.
    """
    positives = {
        name: (p.left[p.label == 1], p.right[p.label == 1]) for name, p in sorted(tasks.items())
    }
    positives = {name: pair for name, pair in positives.items() if len(pair[0])}
    per_task = max(1, batch_size // (2 * max(1, len(positives))))
    longest = max((len(left) for left, _ in positives.values()), default=0)
    orders = {
        name: np.resize(rng.permutation(len(pair[0])), longest) for name, pair in positives.items()
    }
    for block in minibatches(longest, per_task, rng):
        sides = []
        for name, (left, right) in positives.items():
            rows = orders[name][np.sort(block)]
            sides += [left[rows], right[rows]]
        items = np.concatenate(sides).astype(np.int32)
        if len(items) >= 2:
            yield {"items": items, "levels": levels[items].astype(np.int32)}


def train_pss(
    features: np.ndarray,
    tasks: Mapping[str, Pairs],
    config: PSSConfig | None = None,
    seed: int = 0,
    hierarchy: np.ndarray | None = None,
    task_weights: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Train the tower and embed every item.

    Parameters
    ----------
    features : float array, shape (n_items, d), compound features
    tasks : task name -> training Pairs (contrastive loss)
    config : PSSConfig
    seed : int
    hierarchy : int array, shape (n_items, levels), optional
        Label of each item at each level of the hierarchy (e.g. group of behavioural
        positives, category; items sharing a label are positives at that level, -1 is
        unknown); needed by HRMS, whose batches are the two sides of the tasks' positive
        pairs.
    task_weights : task name -> weight (>= 0) of its contrastive loss, optional
        Tasks missing here weigh 1.

    Returns
    -------
    (float32 embeddings (n_items, widths[-1]), loss per epoch)
    """
    config = config or PSSConfig()
    if not tasks or any(len(p.left) == 0 for p in tasks.values()):
        raise DataError("PSS training needs at least one task with pairs")
    seed_everything(seed)
    tower = SiameseTower(features, config.widths, seed)
    if config.loss == "contrastive":
        names = sorted(tasks)  # task t's pairs are batch["left{t}"], ... (_pair_batches)
        given = task_weights or {}
        weights = {name: float(given.get(name, 1.0)) for name in names}

        def pair_loss(batch: dict[str, tf.Tensor], training: bool) -> tf.Tensor:
            losses = {}
            for t, name in enumerate(names):
                left = tower.embed(batch[f"left{t}"], training)
                right = tower.embed(batch[f"right{t}"], training)
                losses[name] = contrastive_loss(left, right, batch[f"label{t}"], config.margin)
            return weighted_task_sum(losses, weights)

        tower.loss_fn = pair_loss

        def batches(rng: np.random.Generator) -> Iterator[NumpyBatch]:
            return _pair_batches(tasks, config.batch_size, rng)
    else:
        if hierarchy is None:
            raise ConfigError("loss='hrms' needs the item hierarchy (e.g. category, root)")
        levels = np.asarray(hierarchy).reshape(len(features), -1)
        alphas, betas, epsilons, level_weights = map(config.hrms_values, HRMS_PER_LEVEL)
        if any(len(v) != levels.shape[1] for v in (alphas, betas, epsilons, level_weights)):
            raise ConfigError(
                f"the hierarchy has {levels.shape[1]} levels; give {', '.join(HRMS_PER_LEVEL)} "
                "one value per level"
            )
        hrms_levels = [
            HRMSLevel(alpha=a, beta=b, epsilon=e, weight=w)
            for a, b, e, w in zip(alphas, betas, epsilons, level_weights, strict=True)
        ]

        def item_loss(batch: dict[str, tf.Tensor], training: bool) -> tf.Tensor:
            embedded = tower.embed(batch["items"], training)
            return hrms_loss(embedded, batch["levels"], hrms_levels, lam=config.hrms_lambda)

        tower.loss_fn = item_loss

        def batches(rng: np.random.Generator) -> Iterator[NumpyBatch]:
            return _item_batches(tasks, levels, config.batch_size, rng)

    losses = fit(
        tower,
        batches,
        config.epochs,
        config.learning_rate,
        seed=seed,
        optimizer="adam",
        description=f"pss ({config.loss})",
    )
    logger.info("pss: tower %s, %s loss", "x".join(map(str, config.widths)), config.loss)
    return tower.all_embeddings(), losses
