"""A thin TensorFlow model base and its training loop, shared by every model in ``training/``.

In the spirit of TensorFlow Recommenders' ``tfrs.Model``: a model is a ``tf.Module`` holding
plain ``tf.Variable`` s and knows one thing, how to turn a batch into a scalar loss
(:meth:`Model.compute_loss`). :func:`fit` owns everything else: the optimizer, a compiled
train step, progress bars and per-epoch summaries.

Determinism
-----------
Training is reproducible bit for bit given ``seed``: :func:`seed_everything` seeds Python,
numpy, Keras and TensorFlow and turns on TensorFlow's op determinism, and models draw their
initial weights and every batch (shuffles, negatives) from ``numpy.random.default_rng``
generators derived from the seed (:func:`rngs`), never from TensorFlow's random ops.
Op determinism is a process-wide switch; the server never imports TensorFlow, so it only
affects offline jobs.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: A batch as produced by a model's batch generator: named numpy arrays, first axis = batch.
NumpyBatch = Mapping[str, np.ndarray]
#: Called once per epoch with the shared batch generator; yields that epoch's batches.
BatchesFn = Callable[[np.random.Generator], Iterable[NumpyBatch]]


class Model(tf.Module, abc.ABC):
    """Base of every trainable model: variables plus a loss.

    Subclasses create their ``tf.Variable`` s in ``__init__`` (``tf.Module`` collects them into
    ``trainable_variables``) and implement :meth:`compute_loss`.
    """

    @abc.abstractmethod
    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """The scalar loss of one batch.

        Parameters
        ----------
        batch : dict of str to tf.Tensor
            The tensors of one batch; every tensor's first axis is the batch axis.
        training : bool
            True inside :func:`fit` (for losses that differ between training and evaluation).

        Returns
        -------
        tf.Tensor, shape ()
            float32 loss, averaged over the batch, regularisation included.
        """


def seed_everything(seed: int) -> None:
    """Seed Python, numpy, Keras and TensorFlow and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)  # also seeds Python's `random` and numpy's global RNG
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()


def rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent generators derived from ``seed``: (initial weights, batches)."""
    init_seq, batch_seq = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(init_seq), np.random.default_rng(batch_seq)


def batch_size_of(batch: NumpyBatch) -> int:
    """Length of the first axis of the batch's first array."""
    return len(next(iter(batch.values())))


def _signature(batch: NumpyBatch) -> dict[str, tf.TensorSpec]:
    """TensorSpecs with a free batch axis, so a short last batch does not retrace."""
    return {
        name: tf.TensorSpec((None, *np.shape(value)[1:]), tf.as_dtype(np.asarray(value).dtype))
        for name, value in batch.items()
    }


def fit(
    model: Model,
    batches_fn: BatchesFn,
    epochs: int,
    learning_rate: float,
    *,
    seed: int,
    steps_per_epoch: int | None = None,
    optimizer: str = "lazy_adam",
    description: str = "train",
) -> list[float]:
    """Train ``model`` with Adam, one compiled step per batch.

    Parameters
    ----------
    model : Model
        Its variables must already exist (created in ``__init__``).
    batches_fn : callable
        ``batches_fn(rng)`` returns an iterable of batches (dicts of numpy arrays with the same
        keys, dtypes and trailing shapes every time; the first array's first axis is the batch
        axis, which weights its loss in the epoch mean) for one epoch. It is
        called once per epoch with the same ``numpy.random.Generator`` (seeded from ``seed``),
        which it must use for every random choice (shuffling, negatives).
    epochs : int
    learning_rate : float
        Adam's step size.
    seed : int
        Seeds everything (:func:`seed_everything`) and the batch generator.
    steps_per_epoch : int, optional
        Batches per epoch, only for the progress bar's total.
    optimizer : {"lazy_adam", "adam"}
        ``"adam"``: ``keras.optimizers.Adam``, which updates every row of an embedding matrix
        (and its moments) at every step. ``"lazy_adam"``: :class:`LazyAdam`, the same rule
        applied only to the rows a batch touches -- much faster for large catalogues, and
        rarely seen items are not dragged along by stale momentum.
    description : str
        Name shown on progress bars and in the epoch summaries.

    Returns
    -------
    list of float, length ``epochs``
        Mean loss of each epoch (batch losses weighted by batch size).
    """
    if epochs < 0 or learning_rate <= 0:
        raise ValueError(f"need epochs >= 0 and learning_rate > 0, got {epochs}, {learning_rate}")
    seed_everything(seed)
    _, batch_rng = rngs(seed)
    variables = list(model.trainable_variables)
    if optimizer == "lazy_adam":
        opt: LazyAdam | keras.optimizers.Optimizer = LazyAdam(learning_rate)
    elif optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=learning_rate)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'lazy_adam' or 'adam'")
    opt.build(variables)

    def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        gradients = tape.gradient(loss, variables)
        opt.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    train_step: Callable[[dict[str, tf.Tensor]], tf.Tensor] | None = None
    losses: list[float] = []
    fit_started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        total, count = 0.0, 0
        bar = tqdm(
            batches_fn(batch_rng),
            total=steps_per_epoch,
            desc=f"{description} {epoch}/{epochs}",
            unit="batch",
            leave=False,
            disable=None,
        )
        for batch in bar:
            if train_step is None:
                train_step = tf.function(step, input_signature=[_signature(batch)])
            loss = float(train_step(as_tensors(batch)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"{description}: loss became {loss} in epoch {epoch}")
            size = batch_size_of(batch)
            total += loss * size
            count += size
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()
        mean = total / count if count else float("nan")
        losses.append(mean)
        logger.info(
            "%s epoch %d/%d: loss %.5f, %d examples, %.1f s",
            description, epoch, epochs, mean, count, time.perf_counter() - started,
        )  # fmt: skip
    logger.info(
        "%s: %d epochs in %.1f s, final loss %s", description, epochs,
        time.perf_counter() - fit_started, f"{losses[-1]:.5f}" if losses else "n/a",
    )  # fmt: skip
    return losses


def as_tensors(batch: NumpyBatch) -> dict[str, tf.Tensor]:
    """Convert a numpy batch to the dict of tensors :meth:`Model.compute_loss` takes."""
    return {name: tf.convert_to_tensor(value) for name, value in batch.items()}


def minibatches(n: int, batch_size: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """Shuffled index blocks covering ``range(n)`` once.

    Parameters
    ----------
    n, batch_size : int
    rng : numpy.random.Generator

    Yields
    ------
    int64 array, shape (batch_size,) (the last one may be shorter)
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    """Number of blocks :func:`minibatches` yields."""
    return -(-n // batch_size)


def unigram_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """The negative-sampling distribution ``counts**power``, normalised.

    Parameters
    ----------
    counts : int or float array, shape (n_items,)
        Occurrences of each item; items with zero count are never drawn.
    power : float

    Returns
    -------
    float64 array, shape (n_items,), sums to 1.
    """
    weights = np.asarray(counts, dtype=np.float64) ** power
    weights[np.asarray(counts) <= 0] = 0.0
    total = weights.sum()
    if total <= 0:
        raise ValueError("cannot sample negatives: every item has zero count")
    return weights / total


class LazyAdam:
    """Adam whose sparse updates touch only the rows in the gradient (like TF Addons' LazyAdam).

    A gradient that is a ``tf.IndexedSlices`` (from ``tf.gather`` on an embedding matrix)
    updates the first and second moments and the weights of its rows only; repeated indices
    are summed first. Dense gradients get the ordinary Adam update. Bias correction uses the
    global step, as in Keras.

    Parameters
    ----------
    learning_rate : float
    beta_1, beta_2, epsilon : float
        As in ``keras.optimizers.Adam``.
    """

    def __init__(
        self,
        learning_rate: float,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        self.learning_rate = learning_rate
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.iterations: tf.Variable | None = None
        self._slots: dict[int, tuple[tf.Variable, tf.Variable]] = {}

    def build(self, variables: list[tf.Variable]) -> None:
        """Create the step counter and the moment slots (outside any ``tf.function``)."""
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        for variable in variables:
            self._slots[id(variable)] = (
                tf.Variable(tf.zeros_like(variable), trainable=False),
                tf.Variable(tf.zeros_like(variable), trainable=False),
            )

    def apply_gradients(self, grads_and_vars: Iterable[tuple[object, tf.Variable]]) -> None:
        """Apply one Adam step; ``None`` gradients are skipped."""
        assert self.iterations is not None, "call build() first"
        self.iterations.assign_add(1)
        step = tf.cast(self.iterations, tf.float32)
        b1, b2 = self.beta_1, self.beta_2
        rate = self.learning_rate * tf.sqrt(1.0 - b2**step) / (1.0 - b1**step)
        for gradient, variable in grads_and_vars:
            if gradient is None:
                continue
            m, v = self._slots[id(variable)]
            if isinstance(gradient, tf.IndexedSlices):
                rows, position = tf.unique(gradient.indices)
                values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
                m_rows = b1 * tf.gather(m, rows) + (1.0 - b1) * values
                v_rows = b2 * tf.gather(v, rows) + (1.0 - b2) * tf.square(values)
                m.scatter_update(tf.IndexedSlices(m_rows, rows))
                v.scatter_update(tf.IndexedSlices(v_rows, rows))
                delta = rate * m_rows / (tf.sqrt(v_rows) + self.epsilon)
                variable.scatter_sub(tf.IndexedSlices(delta, rows))
            else:
                m.assign(b1 * m + (1.0 - b1) * gradient)
                v.assign(b2 * v + (1.0 - b2) * tf.square(gradient))
                variable.assign_sub(rate * m / (tf.sqrt(v) + self.epsilon))


class ItemSampler:
    """Draw items i.i.d. from a fixed distribution by inverse-CDF lookup.

    Parameters
    ----------
    probabilities : float array, shape (n_items,)
        Sums to 1.
    """

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self._cdf = np.cumsum(self.probabilities)
        self._cdf /= self._cdf[-1]

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """int32 array of the given shape."""
        draws = np.searchsorted(self._cdf, rng.random(shape), side="right")
        return np.minimum(draws, len(self._cdf) - 1).astype(np.int32)
