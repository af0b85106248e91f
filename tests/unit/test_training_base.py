"""The model base and training loop: convergence, bit-identical reruns, LazyAdam, samplers."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.base import (
    ItemSampler,
    LazyAdam,
    Model,
    NumpyBatch,
    fit,
    minibatches,
    n_batches,
    rngs,
    unigram_distribution,
)

pytestmark = pytest.mark.slow

TRUE_WEIGHTS = np.array([1.5, -2.0, 0.5], dtype=np.float32)


class Regression(Model):
    """Least squares with an embedding table, so gradients are both dense and sparse."""

    def __init__(self, seed: int) -> None:
        super().__init__(name="regression")
        init_rng, _ = rngs(seed)
        self.weights = tf.Variable(init_rng.normal(size=3).astype(np.float32))
        self.offsets = tf.Variable(np.zeros((4, 1), dtype=np.float32))

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        offsets = tf.gather(self.offsets, batch["group"])[:, 0]
        predictions = tf.linalg.matvec(batch["x"], self.weights) + offsets
        return tf.reduce_mean(tf.square(predictions - batch["y"]))


def regression_batches(rng: np.random.Generator) -> Iterator[NumpyBatch]:
    """Noisy data drawn from ``rng``, so every random choice goes through the seed."""
    x = rng.normal(size=(200, 3)).astype(np.float32)
    group = rng.integers(0, 4, size=200).astype(np.int32)
    y = x @ TRUE_WEIGHTS + group * 0.5 + rng.normal(scale=0.05, size=200).astype(np.float32)
    for block in minibatches(200, 64, rng):
        yield {"x": x[block], "group": group[block], "y": y[block].astype(np.float32)}


@pytest.mark.parametrize("optimizer", ["lazy_adam", "adam"])
def test_fit_converges_and_reports_one_loss_per_epoch(optimizer: str) -> None:
    model = Regression(seed=3)
    losses = fit(
        model, regression_batches, epochs=40, learning_rate=0.05, seed=3, optimizer=optimizer
    )
    assert len(losses) == 40
    assert losses[-1] < 0.05 < losses[0]
    np.testing.assert_allclose(model.weights.numpy(), TRUE_WEIGHTS, atol=0.1)
    np.testing.assert_allclose(model.offsets.numpy()[:, 0], [0.0, 0.5, 1.0, 1.5], atol=0.15)


def test_same_seed_gives_bit_identical_weights() -> None:
    runs = []
    for seed in (11, 11, 12):
        model = Regression(seed)
        losses = fit(model, regression_batches, epochs=3, learning_rate=0.01, seed=seed)
        runs.append((model.weights.numpy(), model.offsets.numpy(), losses))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_fit_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        fit(Regression(0), regression_batches, 1, 0.1, seed=0, optimizer="sgd")
    with pytest.raises(ValueError):
        fit(Regression(0), regression_batches, 1, 0.0, seed=0)
    assert fit(Regression(0), regression_batches, 0, 0.1, seed=0) == []


def test_lazy_adam_matches_keras_adam_on_dense_gradients() -> None:
    start = np.array([[1.0, -1.0], [0.5, 2.0]], dtype=np.float32)
    gradients = [np.array([[0.3, -0.1], [2.0, 0.0]], np.float32), np.ones((2, 2), np.float32)]
    lazy_var, keras_var = tf.Variable(start), tf.Variable(start)
    lazy, reference = LazyAdam(0.1), keras.optimizers.Adam(0.1)
    lazy.build([lazy_var])
    reference.build([keras_var])
    for gradient in gradients:
        lazy.apply_gradients([(tf.constant(gradient), lazy_var)])
        reference.apply_gradients([(tf.constant(gradient), keras_var)])
    np.testing.assert_allclose(lazy_var.numpy(), keras_var.numpy(), rtol=1e-6)


def test_lazy_adam_updates_only_touched_rows_and_sums_repeats() -> None:
    table = tf.Variable(np.ones((4, 2), dtype=np.float32))
    optimizer = LazyAdam(0.1)
    optimizer.build([table])
    # Row 1 twice (gradients 1 and 2 sum to 3), row 3 once; rows 0 and 2 untouched.
    gradient = tf.IndexedSlices(
        tf.constant([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]), tf.constant([1, 3, 1])
    )
    optimizer.apply_gradients([(gradient, table)])
    m, v = optimizer._slots[id(table)]
    np.testing.assert_allclose(m.numpy()[:, 0], [0.0, 0.1 * 3, 0.0, 0.1 * -1])
    np.testing.assert_allclose(v.numpy()[:, 0], [0.0, 0.001 * 9, 0.0, 0.001 * 1], rtol=1e-6)
    # The first Adam step moves each touched coordinate by lr * sign(g), others not at all.
    expected = np.ones((4, 2), dtype=np.float32)
    expected[1, 0], expected[3, 0] = 0.9, 1.1
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5)


def test_minibatches_cover_every_index_once() -> None:
    blocks = list(minibatches(10, 4, np.random.default_rng(0)))
    assert [len(b) for b in blocks] == [4, 4, 2]
    assert n_batches(10, 4) == 3
    assert sorted(np.concatenate(blocks).tolist()) == list(range(10))


def test_unigram_sampler_follows_counts_to_the_power() -> None:
    counts = np.array([16, 0, 1, 81])
    probabilities = unigram_distribution(counts, 0.75)
    np.testing.assert_allclose(probabilities, np.array([8, 0, 1, 27]) / 36)
    draws = ItemSampler(probabilities)(np.random.default_rng(1), (60_000,))
    assert draws.dtype == np.int32
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    assert frequencies[1] == 0.0
    np.testing.assert_allclose(frequencies, probabilities, atol=0.01)
    with pytest.raises(ValueError):
        unigram_distribution(np.zeros(3))
