"""item2vec: pairs from a hand-made log, the loss against numpy, learned structure, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from offline.data.interactions import CART, CLICK, Interactions
from offline.data.sequences import visit_starts
from recsvc.exceptions import ConfigError, DataError
from training.base import as_tensors
from training.configs import Item2VecConfig
from training.item2vec import (
    Item2VecModel,
    skipgram_pairs,
    train_item2vec,
)

pytestmark = pytest.mark.slow


def test_visit_starts_keep_the_first_of_each_run_per_user() -> None:
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([5, 5, 6, 5, 5, 5])
    assert visit_starts(users, items).tolist() == [True, False, True, True, True, False]


def test_skipgram_pairs_by_hand() -> None:
    # u0 clicks 1 1 2 3 1 (and carts 7); u1 clicks 3 4. Collapsed: u0 = 1 2 3 1, u1 = 3 4.
    # Window 2 in u0: (1,2) (2,3) (3,1) at distance 1, (1,3) (2,1) at distance 2; u1: (3,4).
    # (1, 1) at distance 3 is out of the window; nothing pairs across users.
    events = Interactions.from_rows(
        [(0, 1, CLICK, 1), (0, 1, CLICK, 2), (0, 2, CLICK, 3), (0, 7, CART, 3.5),
         (0, 3, CLICK, 4), (0, 1, CLICK, 5), (1, 3, CLICK, 1), (1, 4, CLICK, 2)],
        n_items=8,
    )  # fmt: skip
    centres, contexts = skipgram_pairs(events, window=2)
    assert centres.dtype == contexts.dtype == np.int32
    one_way = [(1, 2), (2, 3), (3, 1), (1, 3), (2, 1), (3, 4)]
    expected = sorted(one_way + [(b, a) for a, b in one_way])
    assert sorted(zip(centres.tolist(), contexts.tolist(), strict=True)) == expected


def test_loss_equals_numpy_on_a_hand_made_batch() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(5, 3)).astype(np.float32)
    contexts = rng.normal(size=(5, 3)).astype(np.float32)
    model = Item2VecModel(inputs, contexts)
    batch = {
        "centres": np.array([0, 2], dtype=np.int32),
        "contexts": np.array([1, 3], dtype=np.int32),
        # The second pair's first negative is its context: it must be ignored.
        "negatives": np.array([[2, 4], [3, 0]], dtype=np.int32),
    }
    loss = float(model.compute_loss(as_tensors(batch)))

    def log_sigmoid(x: float) -> float:
        return -np.log1p(np.exp(-x))

    pair0 = -log_sigmoid(inputs[0] @ contexts[1]) - log_sigmoid(-inputs[0] @ contexts[2])
    pair0 -= log_sigmoid(-inputs[0] @ contexts[4])
    pair1 = -log_sigmoid(inputs[2] @ contexts[3]) - log_sigmoid(-inputs[2] @ contexts[0])
    assert loss == pytest.approx((pair0 + pair1) / 2, rel=1e-5)


def two_group_log(seed: int = 0) -> Interactions:
    """Items 0-9 and 10-19 are only ever clicked with their own group; 20, 21 never."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(160):
        group = user % 2
        for step, item in enumerate(rng.integers(0, 10, size=12) + 10 * group):
            rows.append((user, int(item), CLICK, float(step)))
    return Interactions.from_rows(rows, n_items=22)


def test_learns_which_items_are_clicked_together() -> None:
    config = Item2VecConfig(dim=16, epochs=15, batch_size=256, learning_rate=0.02)
    result = train_item2vec(two_group_log(), config, seed=1)
    assert result.embeddings.shape == (22, 16)
    assert result.embeddings.dtype == np.float32
    assert result.known.tolist() == [True] * 20 + [False] * 2
    assert not result.embeddings[20:].any() and not result.context_embeddings[20:].any()
    assert result.losses[-1] < result.losses[0]

    vectors = result.embeddings[:20]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    nearest = cosine.argmax(axis=1)
    assert (nearest // 10 == np.arange(20) // 10).all()


def test_same_seed_gives_identical_embeddings() -> None:
    config = Item2VecConfig(dim=8, epochs=2, batch_size=128)
    log = two_group_log()
    first = train_item2vec(log, config, seed=5)
    second = train_item2vec(log, config, seed=5)
    other = train_item2vec(log, config, seed=6)
    assert np.array_equal(first.embeddings, second.embeddings)
    assert first.losses == second.losses
    assert not np.array_equal(first.embeddings, other.embeddings)
    assert first.parameters["dim"] == 8


def test_rejects_bad_configs_and_empty_logs() -> None:
    with pytest.raises(ConfigError):
        Item2VecConfig(window=0)
    with pytest.raises(ConfigError):
        Item2VecConfig(learning_rate=0)
    repeats_only = Interactions.from_rows(
        [(0, 1, CLICK, 1.0), (0, 1, CLICK, 2.0), (1, 2, CLICK, 1.0)], 3
    )
    with pytest.raises(DataError):
        train_item2vec(repeats_only, Item2VecConfig(epochs=1))
