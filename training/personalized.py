"""The personalized ranking model: weighted pooling of recent items, sampled softmax.

Training examples
-----------------
The next-item cases of :mod:`offline.data.sequences`, the same ones evaluation scores: every
visit (a run of clicks or add-to-carts of one item) that includes a click and has a next
visit gives the window ``[s_i, s_{i-1}, ..., s_{i-7}]`` (slot 0 the current item, ``-1``
where there is no earlier visit), the target ``s_{i+1}``, and ``is_cart`` when the user
converted on the target during that next visit: added it to cart (``conversion="cart"``, the
default), bought it (``"buy"``) or either (``"both"``); :mod:`offline.data.sequences` defines
the span exactly.

Model
-----
``u = (1/n) Σ_j w_j V[window_j]`` over the ``n`` valid slots with trainable position weights
``w`` (initialised to 1) and input embeddings ``V``; a candidate ``c`` scores ``u · O[c]``
with separate output embeddings ``O`` -- the maths of :func:`recsvc.scoring.user_vector` and
:func:`recsvc.scoring.window_scores`, so exported weights score the same online (to float32
rounding; a unit test holds the two together).

Loss
----
The example's weight (``cart_weight`` when ``is_cart``, a conversion case, else 1) times the
sum of

1. a sampled softmax: the target against ``negatives`` items drawn i.i.d. (with
   replacement) from the unigram distribution of targets raised to 0.75, once per batch and
   shared by all its examples (as ``tf.nn.sampled_softmax_loss`` does, so hundreds of
   negatives cost one small matrix product), with the logQ correction: every logit, the
   target's included, minus ``log q(item)``. This makes it a consistent estimate of the full
   softmax over the catalogue, so scores keep the popularity a next click has;
2. optionally, a softmax of the target against ``pool_negatives`` items drawn per example,
   uniformly with replacement, from the current item's candidate pool -- the very list the
   model ranks at serving time. The proposal is uniform over the pool, so every negative
   would get the same correction, and none is applied.

In both, a negative equal to the example's target (and pool padding) is masked out. An L2
penalty ``l2 · Σ ||row||²`` over the embedding rows the batch gathers (each example's valid
window rows, target and pool negatives; the shared negatives once), divided by the batch
size, is added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from offline.data.interactions import Interactions
from offline.data.sequences import next_item_cases
from recsvc.exceptions import ConfigError, DataError
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
from training.configs import WINDOW, PersonalizedConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Examples:
    """Training examples of the personalized model.

    Attributes
    ----------
    windows : int32 array, shape (m, window)
        Slot 0 the current item, then up to ``window - 1`` earlier clicks, -1 padded.
    targets : int32 array, shape (m,)
        The next click.
    is_cart : bool array, shape (m,)
        Conversion examples: the user added the target to cart, bought it, or either (the
        ``conversion`` of :func:`build_examples`) during its visit.
    """

    windows: np.ndarray
    targets: np.ndarray
    is_cart: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class PersonalizedWeights:
    """Exported weights, ready for :mod:`recsvc.scoring`.

    Attributes
    ----------
    input_embeddings, output_embeddings : float32 arrays, shape (n_items, dim)
        All-zero rows for unknown items.
    position_weights : float32 array, shape (window,)
    known : bool array, shape (n_items,)
        Items with a trained input embedding: they occur in some training window.
    scorable : bool array, shape (n_items,)
        Items with a trained output embedding: they are the target of some example. Others
        (e.g. items only ever first in a session) must not be ranked as candidates.
    losses : list of float
        Mean loss per epoch.
    config : PersonalizedConfig
    """

    input_embeddings: np.ndarray
    output_embeddings: np.ndarray
    position_weights: np.ndarray
    known: np.ndarray
    scorable: np.ndarray
    losses: list[float]
    config: PersonalizedConfig

    @property
    def parameters(self) -> dict[str, object]:
        """The configuration as a plain dict, for the bundle manifest."""
        return asdict(self.config)


def build_examples(
    events: Interactions, window: int = WINDOW, conversion: str = "cart"
) -> Examples:
    """Next-item examples: exactly the cases evaluation scores (:mod:`offline.data.sequences`).

    Parameters
    ----------
    events : Interactions
        Events of every type, sorted by (user, ts).
    window : int
        Slots per window, the current item included.
    conversion : str
        Which events mark a conversion example (``cart``, ``buy`` or ``both``; see
        :data:`offline.data.sequences.CONVERSIONS`).

    Returns
    -------
    Examples
        ``windows`` int32 (m, window), ``targets`` int32 (m,), ``is_cart`` bool (m,).
    """
    cases = next_item_cases(
        events.users, events.items, events.types, window=window, conversion=conversion
    )
    return Examples(cases.windows, cases.target, cases.is_cart)


class PersonalizedModel(Model):
    """Weighted pooling of the window's input embeddings, dot product with output embeddings.

    Parameters
    ----------
    input_init, output_init : float32 arrays, shape (n_items, dim)
    log_q : float array, shape (n_items,)
        Log-probability of each item under the sampled negatives' proposal (used for the
        logQ correction; entries of items never drawn are irrelevant but must be finite).
    window : int
    l2 : float
    """

    def __init__(
        self,
        input_init: np.ndarray,
        output_init: np.ndarray,
        log_q: np.ndarray,
        window: int = WINDOW,
        l2: float = 0.0,
    ) -> None:
        super().__init__(name="personalized")
        self.input_embeddings = tf.Variable(input_init.astype(np.float32), name="input")
        self.output_embeddings = tf.Variable(output_init.astype(np.float32), name="output")
        #: raw position weights; :meth:`scaled_position_weights` is what pooling uses
        self.position_weights = tf.Variable(np.ones(window, dtype=np.float32), name="position")
        self.log_q = tf.constant(np.asarray(log_q, dtype=np.float32))
        self.l2 = l2

    def scaled_position_weights(self) -> tf.Tensor:
        """float32 (window,): the position weights rescaled so their magnitudes sum to window.

        The embeddings already carry the user vector's overall scale, so the weights' own
        scale is redundant. Left free, Adam grows all of them in step (each moves by about
        the learning rate in the direction that sharpens the softmax) and the weights never
        say which position matters; with the scale divided out, only their ratios are
        learned.
        """
        raw = self.position_weights
        total = tf.maximum(tf.reduce_sum(tf.abs(raw)), 1e-6)
        return raw * (tf.cast(tf.size(raw), tf.float32) / total)

    def user_vectors(self, windows: tf.Tensor) -> tf.Tensor:
        """float32 (b, dim): the pooled user vector of each int32 (b, window) window."""
        valid = windows >= 0
        rows = tf.gather(self.input_embeddings, tf.where(valid, windows, 0))  # (b, w, d)
        position = self.scaled_position_weights()[: tf.shape(windows)[1]]
        weights = position * tf.cast(valid, tf.float32)
        counts = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32), axis=1, keepdims=True), 1)
        return tf.einsum("bw,bwd->bd", weights, rows) / counts

    def scores(self, windows: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """float32 (b, c): scores of int32 (b, c) candidates, -inf for padding (-1)."""
        users = self.user_vectors(windows)
        valid = candidates >= 0
        rows = tf.gather(self.output_embeddings, tf.where(valid, candidates, 0))
        raw = tf.einsum("bd,bcd->bc", users, rows)
        return tf.where(valid, raw, tf.constant(-np.inf, tf.float32))

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Weighted sampled-softmax loss (see the module docstring).

        Parameters
        ----------
        batch : dict
            ``windows`` int32 (b, window), -1 padded; ``targets`` int32 (b,); ``weights``
            float32 (b,); ``negatives`` int32 (s,), shared by the batch; ``pool_negatives``
            int32 (b, p), -1 padded. ``s`` or ``p`` may be 0.
        training : bool
            Unused.

        Returns
        -------
        tf.Tensor, shape ()
        """
        windows, targets = batch["windows"], batch["targets"]
        users = self.user_vectors(windows)  # (b, d)
        target_rows = tf.gather(self.output_embeddings, targets)  # (b, d)
        target_logits = tf.reduce_sum(users * target_rows, axis=-1)  # (b,)
        losses = tf.zeros_like(target_logits)
        penalty = tf.reduce_sum(tf.square(target_rows))
        # Sampled negatives, shared by the whole batch, with the logQ correction.
        negatives = batch["negatives"]  # (s,)
        rows = tf.gather(self.output_embeddings, negatives)  # (s, d)
        positive = target_logits - tf.gather(self.log_q, targets)
        logits = tf.matmul(users, rows, transpose_b=True) - tf.gather(self.log_q, negatives)
        hit = negatives[None, :] == targets[:, None]  # (b, s)
        losses += _softmax_loss(positive, tf.where(hit, -np.inf, logits))
        penalty += tf.reduce_sum(tf.square(rows))
        # Per-example negatives from the current item's pool, -1 padded; uniform, no correction.
        pooled = batch["pool_negatives"]  # (b, p)
        valid = (pooled >= 0) & (pooled != targets[:, None])
        rows = tf.gather(self.output_embeddings, tf.where(valid, pooled, 0))  # (b, p, d)
        logits = tf.einsum("bd,bpd->bp", users, rows)
        losses += _softmax_loss(target_logits, tf.where(valid, logits, -np.inf))
        penalty += tf.reduce_sum(tf.square(rows) * tf.cast(valid, tf.float32)[..., None])
        valid_slots = tf.cast(windows >= 0, tf.float32)[..., None]
        window_rows = tf.gather(self.input_embeddings, tf.maximum(windows, 0))
        penalty += tf.reduce_sum(tf.square(window_rows) * valid_slots)
        size = tf.cast(tf.shape(targets)[0], tf.float32)
        return tf.reduce_sum(batch["weights"] * losses) / size + self.l2 * penalty / size


def _softmax_loss(positive: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of the positive among itself and the negatives.

    Parameters
    ----------
    positive : tf.Tensor, float32 (b,)
    negatives : tf.Tensor, float32 (b, s); -inf for masked entries. ``s`` may be 0.

    Returns
    -------
    tf.Tensor, float32 (b,): ``logsumexp([positive, negatives]) - positive`` (0 when s = 0).
    """
    logits = tf.concat([positive[:, None], negatives], axis=1)
    return tf.reduce_logsumexp(logits, axis=1) - positive


def _compact_pools(pools: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's valid entries to the front: (int32 (n, P) pools, int64 (n,) counts)."""
    valid = pools >= 0
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(pools, order, axis=1).astype(np.int32), valid.sum(axis=1)


def _batches(
    examples: Examples,
    sampler: ItemSampler,
    pools: tuple[np.ndarray, np.ndarray] | None,
    config: PersonalizedConfig,
    rng: np.random.Generator,
) -> Iterator[NumpyBatch]:
    """One epoch of shuffled examples with freshly drawn negatives."""
    weights = np.where(examples.is_cart, config.cart_weight, 1.0).astype(np.float32)
    for block in minibatches(len(examples), config.batch_size, rng):
        windows = examples.windows[block]
        size = len(block)
        negatives = sampler(rng, (config.negatives,))
        if pools is None or config.pool_negatives == 0:
            pool_negatives = np.full((size, 0), -1, dtype=np.int32)
        else:
            compact, counts = pools
            current = windows[:, 0]
            count = counts[current][:, None]
            picks = (rng.random((size, config.pool_negatives)) * count).astype(np.int64)
            picks = np.minimum(picks, np.maximum(count - 1, 0))
            pool_negatives = np.where(count > 0, compact[current[:, None], picks], -1)
        yield {
            "windows": windows,
            "targets": examples.targets[block],
            "weights": weights[block],
            "negatives": negatives,
            "pool_negatives": pool_negatives.astype(np.int32),
        }


def train_personalized(
    examples: Examples,
    n_items: int,
    config: PersonalizedConfig | None = None,
    seed: int = 0,
    pools: np.ndarray | None = None,
    init_embeddings: np.ndarray | None = None,
) -> PersonalizedWeights:
    """Train the personalized model.

    Parameters
    ----------
    examples : Examples
        From :func:`build_examples` with ``config.window`` slots.
    n_items : int
        Catalogue size.
    config : PersonalizedConfig, optional
    seed : int
        The same seed gives bit-identical weights.
    pools : int array, shape (n_items, P), optional
        Candidate pools (-1 padded); required when ``config.pool_negatives > 0``.
    init_embeddings : float array, shape (n_items, dim), optional
        Initial input embeddings (e.g. item2vec's); all-zero rows are initialised randomly.

    Returns
    -------
    PersonalizedWeights
    """
    config = config or PersonalizedConfig()
    if len(examples) == 0:
        raise DataError("personalized: no training examples (no user has two clicks)")
    if examples.windows.shape[1] != config.window:
        raise ConfigError(
            f"examples have {examples.windows.shape[1]} slots, config.window={config.window}"
        )
    if config.pool_negatives > 0 and pools is None:
        raise ConfigError("pool_negatives > 0 needs candidate pools")
    if pools is not None and pools.shape[0] != n_items:
        raise DataError(f"pools have {pools.shape[0]} rows for {n_items} items")
    seed_everything(seed)
    init_rng, _ = rngs(seed)
    dim = config.dim

    input_init = init_rng.normal(0.0, 0.1, (n_items, dim)).astype(np.float32)
    if init_embeddings is not None:
        if init_embeddings.shape != (n_items, dim):
            raise ConfigError(f"init_embeddings shape {init_embeddings.shape} != {(n_items, dim)}")
        given = np.any(init_embeddings != 0, axis=1)
        input_init[given] = init_embeddings[given]
    output_init = np.zeros((n_items, dim), dtype=np.float32)

    target_counts = np.bincount(examples.targets, minlength=n_items)
    probabilities = unigram_distribution(target_counts, config.unigram_power)
    log_q = np.log(np.maximum(probabilities, 1e-30))
    scorable = target_counts > 0
    known = np.zeros(n_items, dtype=bool)
    for slot in examples.windows.T:  # a slot at a time: no (examples, window) mask
        known[slot[slot >= 0]] = True

    model = PersonalizedModel(input_init, output_init, log_q, config.window, config.l2)
    compact = _compact_pools(np.asarray(pools)) if pools is not None else None
    sampler = ItemSampler(probabilities)
    logger.info(
        "personalized: %d examples (%d conversions), %d items, cart weight %.1f",
        len(examples), int(examples.is_cart.sum()), int((known | scorable).sum()),
        config.cart_weight,
    )  # fmt: skip
    losses = fit(
        model,
        lambda rng: _batches(examples, sampler, compact, config, rng),
        config.epochs,
        config.learning_rate,
        seed=seed,
        optimizer=config.optimizer,
        steps_per_epoch=n_batches(len(examples), config.batch_size),
        description="personalized",
    )
    return export_weights(model, known, scorable, losses, config)


def export_weights(
    model: PersonalizedModel,
    known: np.ndarray,
    scorable: np.ndarray,
    losses: list[float],
    config: PersonalizedConfig,
) -> PersonalizedWeights:
    """Copy the model's variables out as numpy arrays, zeroing the rows of unknown items.

    Parameters
    ----------
    model : PersonalizedModel
    known, scorable : bool arrays, shape (n_items,)
        Items with trained input rows, and with trained output rows.
    losses : list of float
    config : PersonalizedConfig

    Returns
    -------
    PersonalizedWeights
    """
    input_embeddings = model.input_embeddings.numpy()
    output_embeddings = model.output_embeddings.numpy()
    input_embeddings[~known] = 0.0
    output_embeddings[~scorable] = 0.0
    return PersonalizedWeights(
        input_embeddings,
        output_embeddings,
        model.scaled_position_weights().numpy(),
        np.asarray(known, dtype=bool),
        np.asarray(scorable, dtype=bool),
        list(losses),
        config,
    )
