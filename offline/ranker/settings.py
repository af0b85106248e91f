"""The second stage's settings (``--param ranker.*``), apart so that the config loads light."""

from __future__ import annotations

from dataclasses import dataclass

from recsvc.exceptions import ConfigError


@dataclass(frozen=True)
class RankerSettings:
    """``--param ranker.*``: the second stage, trained when ``enabled``."""

    enabled: bool = False
    span_hours: float = 24.0
    negatives: int = 100
    rounds: int = 400
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    early_stopping: int = 40
    valid_share: float = 0.2

    def __post_init__(self) -> None:
        if self.negatives < 1 or self.rounds < 1 or self.early_stopping < 1:
            raise ConfigError("ranker.negatives, rounds and early_stopping must be >= 1")
        if self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ConfigError("ranker.num_leaves must be >= 2 and min_data_in_leaf >= 1")
        if not self.span_hours > 0:
            raise ConfigError(f"ranker.span_hours must be > 0, got {self.span_hours}")
        if not 0 < self.valid_share < 1 or not self.learning_rate > 0:
            raise ConfigError("ranker.valid_share must be in (0, 1), learning_rate > 0")
