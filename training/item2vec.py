"""item2vec: skip-gram with negative sampling over each user's time-ordered clicks.

Each user's clicks, in time order, form one sequence (``Interactions`` keeps a user's events
contiguous and sorted by time). Consecutive repeats of the same item are collapsed first
(``A A B`` becomes ``A B``): a reload or a return from a sub-page says nothing about which
items go together, and left in it would spend the window on self-pairs. Then every item is
paired with each item up to ``window`` positions before and after it in the collapsed
sequence; pairs of an item with itself (``A B A``) are dropped.

For a pair (centre ``i``, context ``j``) with negatives ``n_1..n_K`` drawn from the unigram
distribution of clicks raised to 0.75, the loss is the sigmoid cross-entropy

    -log σ(v_i · c_j) - Σ_k log σ(-v_i · c_{n_k})

with separate input (``v``) and context (``c``) embeddings; a negative that happens to equal
the context is ignored. Items are compared by the cosine of their input embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from offline.data.interactions import CLICK, Interactions
from offline.data.sequences import visit_starts
from recsvc.exceptions import DataError
from training.base import (
    ItemSampler,
    Model,
    NumpyBatch,
    fit,
    minibatches,
    n_batches,
    rngs,
    seed_everything,
    unigram_distribution,
)
from training.configs import Item2VecConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item2VecResult:
    """Trained item2vec embeddings.

    Attributes
    ----------
    embeddings : float32 array, shape (n_items, dim)
        Input embeddings; all-zero rows for items without a training pair.
    context_embeddings : float32 array, shape (n_items, dim)
        Output (context) embeddings, zero rows likewise.
    known : bool array, shape (n_items,)
        Items that occurred in at least one training pair.
    losses : list of float
        Mean loss per epoch.
    config : Item2VecConfig
    """

    embeddings: np.ndarray
    context_embeddings: np.ndarray
    known: np.ndarray
    losses: list[float]
    config: Item2VecConfig

    @property
    def parameters(self) -> dict[str, object]:
        """The configuration as a plain dict, for the bundle manifest."""
        return asdict(self.config)


def skipgram_pairs(clicks: Interactions, window: int) -> tuple[np.ndarray, np.ndarray]:
    """All (centre, context) pairs of the collapsed per-user click sequences.

    Parameters
    ----------
    clicks : Interactions
        Click events (other types are ignored), sorted by (user, ts).
    window : int
        Context positions on each side.

    Returns
    -------
    centres, contexts : int32 arrays, shape (n_pairs,)
        Each unordered neighbour pair appears in both directions; no self-pairs.
    """
    is_click = clicks.types == CLICK
    users, items = clicks.users[is_click], clicks.items[is_click]
    keep = visit_starts(users, items)
    users, items = users[keep], items[keep]
    centres, contexts = [], []
    for offset in range(1, window + 1):
        left, right = items[:-offset], items[offset:]
        ok = (users[:-offset] == users[offset:]) & (left != right)
        centres += [left[ok], right[ok]]
        contexts += [right[ok], left[ok]]
    if not centres:
        empty = np.zeros(0, dtype=np.int32)
        return empty, empty
    # No copy when the ids are int32 already: at paper scale each copy is gigabytes.
    return (
        np.concatenate(centres).astype(np.int32, copy=False),
        np.concatenate(contexts).astype(np.int32, copy=False),
    )


class Item2VecModel(Model):
    """Skip-gram with negative sampling.

    Parameters
    ----------
    input_init, context_init : float32 arrays, shape (n_items, dim)
        Initial input and context embeddings.
    """

    def __init__(self, input_init: np.ndarray, context_init: np.ndarray) -> None:
        super().__init__(name="item2vec")
        self.input_embeddings = tf.Variable(input_init.astype(np.float32), name="input")
        self.context_embeddings = tf.Variable(context_init.astype(np.float32), name="context")

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Mean sigmoid cross-entropy of the positives and their negatives.

        Parameters
        ----------
        batch : dict
            ``centres`` int32 (b,), ``contexts`` int32 (b,), ``negatives`` int32 (b, k).
        training : bool
            Unused.

        Returns
        -------
        tf.Tensor, shape ()
        """
        centres = tf.gather(self.input_embeddings, batch["centres"])  # (b, d)
        contexts = tf.gather(self.context_embeddings, batch["contexts"])  # (b, d)
        negatives = tf.gather(self.context_embeddings, batch["negatives"])  # (b, k, d)
        positive_logits = tf.reduce_sum(centres * contexts, axis=-1)  # (b,)
        negative_logits = tf.einsum("bd,bkd->bk", centres, negatives)  # (b, k)
        # A negative that is the context itself is not a negative.
        real = tf.cast(batch["negatives"] != batch["contexts"][:, None], tf.float32)
        per_pair = tf.math.softplus(-positive_logits) + tf.reduce_sum(
            real * tf.math.softplus(negative_logits), axis=-1
        )
        return tf.reduce_mean(per_pair)


def _batches(
    centres: np.ndarray,
    contexts: np.ndarray,
    sampler: ItemSampler,
    config: Item2VecConfig,
    rng: np.random.Generator,
) -> Iterator[NumpyBatch]:
    """One epoch of shuffled positive pairs with freshly drawn negatives."""
    for block in minibatches(len(centres), config.batch_size, rng):
        yield {
            "centres": centres[block],
            "contexts": contexts[block],
            "negatives": sampler(rng, (len(block), config.negatives)),
        }


def train_item2vec(
    clicks: Interactions,
    config: Item2VecConfig | None = None,
    seed: int = 0,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> Item2VecResult:
    """Train item2vec on the users' click sequences.

    Parameters
    ----------
    clicks : Interactions
        Click events, sorted by (user, ts) (non-click events are ignored).
    config : Item2VecConfig, optional
    seed : int
        The same seed gives bit-identical embeddings.
    pairs : (centres, contexts), optional
        :func:`skipgram_pairs` of ``clicks`` with ``config.window``, made elsewhere (Spark's,
        memory-mapped: :mod:`offline.spark.sequences`); default: made here.

    Returns
    -------
    Item2VecResult
        ``embeddings`` float32 (n_items, dim), ``known`` bool (n_items,), ``losses``.

    Raises
    ------
    DataError
        If no user clicked two different items in a row (nothing to learn from).
    """
    config = config or Item2VecConfig()
    seed_everything(seed)
    centres, contexts = pairs if pairs is not None else skipgram_pairs(clicks, config.window)
    if len(centres) == 0:
        raise DataError("item2vec: no user has two different consecutive clicks")
    n_items, dim = clicks.n_items, config.dim
    # Unigram counts of the clicks that are part of some pair (each click counted once).
    is_click = clicks.types == CLICK
    users, items = clicks.users[is_click], clicks.items[is_click]
    sequence_items = items[visit_starts(users, items)]
    known = np.zeros(n_items, dtype=bool)
    known[centres] = True
    counts = np.bincount(sequence_items, minlength=n_items) * known
    sampler = ItemSampler(unigram_distribution(counts, config.unigram_power))

    init_rng, _ = rngs(seed)
    input_init = (init_rng.random((n_items, dim), dtype=np.float32) - 0.5) / dim
    model = Item2VecModel(input_init, np.zeros((n_items, dim), dtype=np.float32))
    logger.info(
        "item2vec: %d pairs over %d items, %d epochs", len(centres), int(known.sum()),
        config.epochs,
    )  # fmt: skip
    losses = fit(
        model,
        lambda rng: _batches(centres, contexts, sampler, config, rng),
        config.epochs,
        config.learning_rate,
        seed=seed,
        optimizer=config.optimizer,
        steps_per_epoch=n_batches(len(centres), config.batch_size),
        description="item2vec",
    )
    embeddings = model.input_embeddings.numpy()
    context_embeddings = model.context_embeddings.numpy()
    embeddings[~known] = 0.0
    context_embeddings[~known] = 0.0
    return Item2VecResult(embeddings, context_embeddings, known, losses, config)
