"""The personalized model: examples by hand, the loss against numpy, scoring parity, learning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from offline.data.interactions import BUY, CART, CLICK, Interactions
from recsvc.exceptions import ConfigError
from recsvc.scoring import case_scores, user_vector
from training.base import as_tensors
from training.configs import PersonalizedConfig
from training.personalized import (
    Examples,
    PersonalizedModel,
    _batches,
    _compact_pools,
    build_examples,
    export_weights,
    train_personalized,
)

pytestmark = pytest.mark.slow

_ = -1  # padding, for readable windows


# u0 clicks 5 5 6 7 6 8; carts 6 at t=3 (the second of its click), 7 at t=3.5 (just before
#    its click at t=4: one visit), 8 at t=7. Visits: 5 6 7 6 8.
# u1 clicks 8 9, buys 9 at 1.5 (a buy is not a visit), carts 9 at t=10 (same visit of 9).
# u2 clicks 5, then carts 7 and 6 without viewing them: 5 -> 7 is a case, 7 -> 6 is not
#    (7 was never viewed, so nothing was shown beside it).
EVENTS = [
    (0, 5, CLICK, 1.0), (0, 5, CLICK, 2.0), (0, 6, CLICK, 3.0), (0, 6, CART, 3.0),
    (0, 7, CART, 3.5), (0, 7, CLICK, 4.0), (0, 6, CLICK, 5.0), (0, 8, CLICK, 6.0),
    (0, 8, CART, 7.0),
    (1, 8, CLICK, 1.0), (1, 9, BUY, 1.5), (1, 9, CLICK, 2.0), (1, 9, CART, 10.0),
    (2, 5, CLICK, 1.0), (2, 7, CART, 2.0), (2, 6, CART, 9.0),
]  # fmt: skip


def test_build_examples_by_hand() -> None:
    examples = build_examples(Interactions.from_rows(EVENTS, n_items=10), window=4)
    assert examples.windows.dtype == examples.targets.dtype == np.int32
    assert examples.windows.tolist() == [
        [5, _, _, _],
        [6, 5, _, _],
        [7, 6, 5, _],
        [6, 7, 6, 5],
        [8, _, _, _],
        [5, _, _, _],
    ]
    assert examples.targets.tolist() == [6, 7, 6, 8, 9, 7]
    # 6 carted at its click's second; 7 carted as its visit began; 6 again: its only cart
    # is at t=3, before the visit at t=5; 8 carted after; u1's 9 later in the same visit;
    # u2's 7 carted without a view.
    assert examples.is_cart.tolist() == [True, True, False, True, True, True]


def test_windows_keep_the_latest_eight_clicks() -> None:
    events = Interactions.from_rows(
        [(0, item, CLICK, float(item)) for item in range(10)], n_items=10
    )
    examples = build_examples(events)
    assert examples.windows.shape == (9, 8)
    assert examples.windows[-1].tolist() == [8, 7, 6, 5, 4, 3, 2, 1]
    assert examples.windows[0].tolist() == [0, _, _, _, _, _, _, _]
    assert examples.targets.tolist() == list(range(1, 10))
    assert not examples.is_cart.any()


def test_loss_equals_numpy_on_a_hand_made_batch() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(5, 3)).astype(np.float32)
    outputs = rng.normal(size=(5, 3)).astype(np.float32)
    log_q = np.log(np.array([0.1, 0.2, 0.3, 0.25, 0.15]))
    model = PersonalizedModel(inputs, outputs, log_q, window=3, l2=0.01)
    model.position_weights.assign([1.5, 0.5, 1.0])  # magnitudes sum to the window: as is
    batch = {
        "windows": np.array([[0, 1, _], [2, _, _]], dtype=np.int32),
        "targets": np.array([3, 4], dtype=np.int32),
        "weights": np.array([1.0, 2.0], dtype=np.float32),
        "negatives": np.array([3, 0, 0], dtype=np.int32),  # 3 is example 0's target
        "pool_negatives": np.array([[1, _], [4, 1]], dtype=np.int32),  # 4: example 1's target
    }
    loss = float(model.compute_loss(as_tensors(batch)))

    u0 = (1.5 * inputs[0] + 0.5 * inputs[1]) / 2
    u1 = 1.5 * inputs[2]

    def cross_entropy(positive: float, negatives: list[float]) -> float:
        return float(np.log(np.exp([positive, *negatives]).sum()) - positive)

    def corrected(u: np.ndarray, item: int) -> float:
        return float(u @ outputs[item] - log_q[item])

    sampled0 = cross_entropy(corrected(u0, 3), [corrected(u0, 0)] * 2)
    sampled1 = cross_entropy(corrected(u1, 4), [corrected(u1, i) for i in (3, 0, 0)])
    pool0 = cross_entropy(u0 @ outputs[3], [u0 @ outputs[1]])
    pool1 = cross_entropy(u1 @ outputs[4], [u1 @ outputs[1]])
    data = (1.0 * (sampled0 + pool0) + 2.0 * (sampled1 + pool1)) / 2

    def sq(rows: list[int], table: np.ndarray) -> float:
        return float(sum(table[r] @ table[r] for r in rows))

    penalty = sq([0, 1, 2], inputs) + sq([3, 4], outputs) + sq([3, 0, 0], outputs)
    penalty += sq([1, 1], outputs)
    assert loss == pytest.approx(data + 0.01 * penalty / 2, rel=1e-5)


def chain_log(n_items: int = 30, users: int = 300, seed: int = 0) -> Interactions:
    """Every user clicks a run k, k+1, k+2, ... (mod n_items) from a random start."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start = int(rng.integers(n_items))
        for step in range(int(rng.integers(3, 12))):
            rows.append((user, (start + step) % n_items, CLICK, float(step)))
    return Interactions.from_rows(rows, n_items)


SMALL = PersonalizedConfig(dim=16, negatives=16, epochs=10, batch_size=128, learning_rate=0.02)


def test_exported_weights_score_like_the_tf_model() -> None:
    events = chain_log(n_items=12, users=40)
    examples = build_examples(events)
    weights = train_personalized(examples, 12, PersonalizedConfig(dim=8, epochs=2), seed=0)
    model = PersonalizedModel(
        weights.input_embeddings, weights.output_embeddings, np.zeros(12), window=8
    )
    model.position_weights.assign(np.linspace(2.0, 0.2, 8, dtype=np.float32))
    exported = export_weights(model, weights.known, weights.scorable, [], weights.config)
    windows = examples.windows[:20]
    candidates = np.random.default_rng(1).integers(-1, 12, size=(20, 6)).astype(np.int32)
    tf_scores = model.scores(windows, candidates).numpy()
    users = [user_vector(w, exported.input_embeddings, exported.position_weights) for w in windows]
    np_scores = case_scores(
        windows,
        candidates,
        exported.input_embeddings,
        exported.output_embeddings,
        exported.position_weights,
        exported.scorable,
    )
    np.testing.assert_allclose(model.user_vectors(windows).numpy(), users, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.isinf(tf_scores), np.isinf(np_scores))
    finite = np.isfinite(np_scores)
    np.testing.assert_allclose(tf_scores[finite], np_scores[finite], rtol=1e-5, atol=1e-6)


def test_learns_the_next_item_rule() -> None:
    n_items = 30
    examples = build_examples(chain_log(n_items))
    weights = train_personalized(examples, n_items, SMALL, seed=2)
    assert weights.known.all() and weights.scorable.all()  # a chain: every item is both
    assert weights.position_weights.shape == (8,)
    assert weights.losses[-1] < weights.losses[0]
    rng = np.random.default_rng(3)
    windows = np.full((n_items, 8), -1, dtype=np.int32)
    windows[:, 0] = np.arange(n_items)
    windows[:, 1] = (np.arange(n_items) - 1) % n_items
    # Candidates: the right next item in column 0, then 19 others (not the current item).
    candidates = np.zeros((n_items, 20), dtype=np.int32)
    for k in range(n_items):
        others = [i for i in range(n_items) if i not in (k, (k + 1) % n_items)]
        candidates[k] = [(k + 1) % n_items, *rng.choice(others, size=19, replace=False)]
    scores = case_scores(
        windows,
        candidates,
        weights.input_embeddings,
        weights.output_embeddings,
        weights.position_weights,
        weights.scorable,
    )
    assert (scores.argmax(axis=1) == 0).mean() >= 0.9


def test_pool_negatives_and_init_embeddings() -> None:
    n_items = 30
    examples = build_examples(chain_log(n_items))
    pools = np.full((n_items, 6), -1, dtype=np.int32)
    pools[:, 1:4] = (np.arange(n_items)[:, None] + [1, 2, 3]) % n_items  # padding in front
    pools[7] = -1  # an item with an empty pool
    config = PersonalizedConfig(dim=16, negatives=4, pool_negatives=5, epochs=1)
    _, counts = compact = _compact_pools(pools)
    batch = next(_batches(examples, lambda rng, shape: np.zeros(shape, np.int32), compact,
                          config, np.random.default_rng(0)))  # fmt: skip
    assert batch["negatives"].shape == (4,)
    assert batch["pool_negatives"].shape == (len(batch["targets"]), 5)
    for window, drawn in zip(batch["windows"], batch["pool_negatives"], strict=True):
        row = pools[window[0]]
        allowed = set(row[row >= 0].tolist()) or {-1}
        assert set(drawn.tolist()) <= allowed
    assert counts[7] == 0 and counts[0] == 3

    init = np.random.default_rng(4).normal(size=(n_items, 16)).astype(np.float32)
    init[3] = 0.0  # no vector for item 3: initialised randomly instead
    untrained = train_personalized(
        examples, n_items, PersonalizedConfig(dim=16, epochs=0), seed=0, init_embeddings=init
    )
    assert np.array_equal(np.delete(untrained.input_embeddings, 3, 0), np.delete(init, 3, 0))
    assert untrained.input_embeddings[3].any()
    weights = train_personalized(
        examples, n_items, replace(SMALL, pool_negatives=8),
        seed=2, pools=pools, init_embeddings=init,
    )  # fmt: skip
    assert np.isfinite(weights.losses).all()
    with pytest.raises(ConfigError):
        train_personalized(examples, n_items, config, seed=0)  # pool negatives without pools


def test_cart_weight_reaches_the_batches() -> None:
    examples = Examples(
        np.array([[0, _], [1, 0], [2, 1]], dtype=np.int32),
        np.array([1, 2, 3], dtype=np.int32),
        np.array([False, True, False]),
    )
    config = PersonalizedConfig(window=2, negatives=2, cart_weight=2.0, batch_size=8)
    batch = next(_batches(examples, lambda rng, shape: np.zeros(shape, np.int32), None,
                          config, np.random.default_rng(0)))  # fmt: skip
    by_target = dict(zip(batch["targets"].tolist(), batch["weights"].tolist(), strict=True))
    assert by_target == {1: 1.0, 2: 2.0, 3: 1.0}
    assert batch["pool_negatives"].shape == (3, 0)


def test_same_seed_gives_identical_weights() -> None:
    examples = build_examples(chain_log(n_items=20, users=80))
    config = PersonalizedConfig(dim=8, negatives=8, epochs=2, batch_size=64)
    first = train_personalized(examples, 20, config, seed=9)
    second = train_personalized(examples, 20, config, seed=9)
    other = train_personalized(examples, 20, config, seed=10)
    for name in ("input_embeddings", "output_embeddings", "position_weights"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert first.losses == second.losses
    assert not np.array_equal(first.output_embeddings, other.output_embeddings)


def test_rejects_inconsistent_configs() -> None:
    with pytest.raises(ConfigError):
        PersonalizedConfig(negatives=0, pool_negatives=0)
    with pytest.raises(ConfigError):
        PersonalizedConfig(cart_weight=0.0)
    examples = build_examples(chain_log(n_items=10, users=5))
    with pytest.raises(ConfigError):
        train_personalized(examples, 10, PersonalizedConfig(window=4))
