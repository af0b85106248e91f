"""The PSS tower on tiny synthetic data: pairs pull together, negatives apart."""

import numpy as np
import pytest

from offline.data.pairs import Pairs
from recsvc.exceptions import ConfigError
from training.configs import PSSConfig
from training.pss import train_pss

pytestmark = pytest.mark.slow
#: HRMS values for a one-level hierarchy (the defaults have two levels, the pipeline's).
ONE_LEVEL = {"hrms_alphas": "2", "hrms_betas": "50", "hrms_epsilons": "0.1", "hrms_weights": "1"}


def synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, Pairs]:
    """40 items in 4 groups whose raw features barely separate the groups."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(4), 10)
    centres = rng.normal(size=(4, 16)) * 0.3
    features = (centres[group] + rng.normal(size=(40, 16))).astype(np.float32)
    left = rng.integers(0, 40, 600)
    right = rng.integers(0, 40, 600)
    label = (group[left] == group[right]).astype(np.int8)
    return features, group, Pairs(left.astype(np.int32), right.astype(np.int32), label, "synthetic")


def separation(embeddings: np.ndarray, group: np.ndarray) -> float:
    """Mean cosine within groups minus mean cosine across groups."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-9)
    cos = unit @ unit.T
    same = group[:, None] == group[None, :]
    np.fill_diagonal(same, False)
    other = group[:, None] != group[None, :]
    return float(cos[same].mean() - cos[other].mean())


@pytest.mark.parametrize("loss", ["contrastive", "hrms"])
def test_training_separates_the_groups(loss: str) -> None:
    features, group, pairs = synthetic()
    config = PSSConfig(
        width=32, depth=2, loss=loss, epochs=30, batch_size=64, learning_rate=0.01, **ONE_LEVEL
    )
    embeddings, losses = train_pss(features, {"synthetic": pairs}, config, seed=1, hierarchy=group)
    assert embeddings.shape == (40, 32)
    assert losses[-1] < losses[0]
    assert separation(embeddings, group) > separation(features, group) + 0.2
    again, _ = train_pss(features, {"synthetic": pairs}, config, seed=1, hierarchy=group)
    np.testing.assert_array_equal(again, embeddings)  # the same seed, the same weights


def test_hrms_needs_the_hierarchy_and_one_setting_per_level() -> None:
    features, group, pairs = synthetic()
    with pytest.raises(ConfigError, match="hierarchy"):
        train_pss(features, {"s": pairs}, PSSConfig(loss="hrms", epochs=1))
    with pytest.raises(ConfigError, match="one value per level"):
        train_pss(
            features,
            {"s": pairs},
            PSSConfig(loss="hrms", epochs=1, **ONE_LEVEL),
            hierarchy=np.column_stack([group, group]),
        )
    with pytest.raises(ConfigError, match="one value per level"):  # the defaults: two levels
        train_pss(features, {"s": pairs}, PSSConfig(loss="hrms", epochs=1), hierarchy=group)


def test_task_weights_go_through_the_checked_weighted_sum() -> None:
    features, _, pairs = synthetic()
    config = PSSConfig(width=8, depth=1, epochs=1, batch_size=64)
    with pytest.raises(ConfigError, match="task weights must be >= 0"):
        train_pss(features, {"s": pairs}, config, task_weights={"s": -1.0})
    off, _ = train_pss(features, {"s": pairs}, config, seed=2, task_weights={"s": 0.0})
    other_task, _ = train_pss(features, {"s": pairs}, config, seed=2, task_weights={"t": 0.0})
    plain, _ = train_pss(features, {"s": pairs}, config, seed=2)
    np.testing.assert_array_equal(other_task, plain)  # tasks missing from the weights weigh 1
    assert not np.allclose(off, plain, atol=1e-3)  # weight 0: no gradient, no training


def test_config_is_the_pss_params_and_parses_the_per_level_values() -> None:
    config = PSSConfig(width=64, depth=3, hrms_alphas="2, 4")
    assert config.widths == (64, 64, 64)
    assert config.hrms_values("hrms_alphas") == (2.0, 4.0)
    with pytest.raises(ConfigError, match="not comma-separated numbers"):
        PSSConfig(hrms_weights="1,x").hrms_values("hrms_weights")
    for bad in ({"width": 0}, {"depth": 0}, {"loss": "triplet"}, {"batch_size": 1}):
        with pytest.raises(ConfigError):
            PSSConfig(**bad)
