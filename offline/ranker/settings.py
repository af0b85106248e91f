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
        if self.negatives < 1 or self.rounds < 1 or self.num_leaves < 2:
            raise ConfigError("ranker.negatives, ranker.rounds must be >= 1, num_leaves >= 2")
        if not self.span_hours > 0:
            raise ConfigError(f"ranker.span_hours must be > 0, got {self.span_hours}")
        if not 0 < self.valid_share < 1 or self.learning_rate <= 0:
            raise ConfigError("ranker.valid_share must be in (0, 1), learning_rate > 0")
