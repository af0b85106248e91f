"""``personalized_cart`` on a log whose conversions are purchases: trained with conversion=buy
(or both), skipped with a message naming the events with conversion=cart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from offline.config import PipelineConfig
from offline.data.dataset import Dataset
from offline.data.interactions import BUY, CART, CLICK, Catalogue, Interactions
from offline.pipeline import _train_personalized
from offline.pools import Pools
from training.configs import PersonalizedConfig
from training.personalized import build_examples

pytestmark = pytest.mark.slow

N_ITEMS = 12
TINY = PersonalizedConfig(dim=4, negatives=4, epochs=2, batch_size=16, learning_rate=0.05)


def log(conversion_type: int) -> Interactions:
    """Each user views k, k+1, k+2; every third user converts on k+1 during its visit."""
    rows = []
    for user in range(30):
        k = user % N_ITEMS
        rows += [(user, k, CLICK, 1.0), (user, (k + 1) % N_ITEMS, CLICK, 2.0)]
        if user % 3 == 0:
            rows.append((user, (k + 1) % N_ITEMS, conversion_type, 2.5))
        rows.append((user, (k + 2) % N_ITEMS, CLICK, 3.0))
    return Interactions.from_rows(rows, N_ITEMS)


def dataset(events: Interactions) -> Dataset:
    catalogue = Catalogue(
        np.array([f"i{n}" for n in range(N_ITEMS)]),
        np.zeros(N_ITEMS, np.int32),
        np.array(["x"]),
        np.zeros(N_ITEMS),
    )
    users = np.array([f"u{n}" for n in range(events.n_users)])
    return Dataset(catalogue, users, events, np.zeros(len(events.users), bool), {})


def train(events: Interactions, conversion: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    pools = Pools(np.full((N_ITEMS, 4), -1, np.int32), np.zeros((N_ITEMS, 4), np.uint8))
    config = PipelineConfig(conversion=conversion, personalized=TINY)
    metrics: dict[str, Any] = {}
    arrays = _train_personalized(
        dataset(events), pools, np.zeros((N_ITEMS, 4), np.float32), config, 0, metrics
    )
    return arrays, metrics


def test_build_examples_flags_purchases_with_conversion_buy() -> None:
    events = log(BUY)
    # Two cases per user (k -> k+1, k+1 -> k+2); the first is a conversion for every third.
    expected = [user % 3 == 0 and step == 0 for user in range(30) for step in (0, 1)]
    assert build_examples(events, conversion="buy").is_cart.tolist() == expected
    assert build_examples(events, conversion="both").is_cart.tolist() == expected
    assert not build_examples(events).is_cart.any()  # purchases are no add-to-carts


@pytest.mark.parametrize("conversion", ["buy", "both"])
def test_a_purchase_log_trains_the_conversion_model(conversion: str, capsys) -> None:
    arrays, metrics = train(log(BUY), conversion)
    assert "not trained" not in capsys.readouterr().out
    assert "models_skipped" not in metrics
    assert metrics["personalized_examples"] == {
        "examples": 60,
        "cart_targets": 10,
        "conversion": conversion,
    }
    plain, weighted = (
        arrays[f"models/{m}/output_embeddings"] for m in ("personalized", "personalized_cart")
    )
    assert not np.array_equal(plain, weighted)  # the purchases weigh cart_omega


def test_a_purchase_log_gets_no_cart_model_with_conversion_cart(capsys) -> None:
    arrays, metrics = train(log(BUY), "cart")
    printed = capsys.readouterr().out
    assert "personalized_cart: not trained: no next visit of the fit period includes an " in printed
    assert "--param conversion=buy" in printed
    assert metrics["models_skipped"] == {"personalized_cart": "no add-to-cart targets"}
    assert "models/personalized/output_embeddings" in arrays
    assert not [name for name in arrays if name.startswith("models/personalized_cart/")]


def test_a_cart_log_gets_no_cart_model_with_conversion_buy(capsys) -> None:
    arrays, metrics = train(log(CART), "buy")
    printed = capsys.readouterr().out
    assert "personalized_cart: not trained: no next visit of the fit period is followed" in printed
    assert "by a purchase of its item" in printed
    assert metrics["models_skipped"] == {"personalized_cart": "no purchase targets"}
    assert not [name for name in arrays if name.startswith("models/personalized_cart/")]
