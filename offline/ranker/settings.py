"""The second stage's settings (``--param ranker.*``), apart so that the config loads light."""

from __future__ import annotations

from dataclasses import dataclass

from recsvc.exceptions import ConfigError
from recsvc.features import COLUMNS, FEATURE_SOURCES, LIVE_FEATURES

#: The features by what they describe, for ``ranker.without``.
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "personalized": ("personalized", "personalized_item", "scorable"),
    "itemcf": ("itemcf_current", "itemcf_session"),
    "item2vec": ("item2vec_current", "item2vec_session"),
    "vsknn": ("vsknn",),
    "popularity": ("log_popularity", "log_recent_clicks", "age_days"),
    "category": ("same_category", "session_category_share"),
    "position": ("pool_position", *(f"source_{name}" for name in FEATURE_SOURCES)),
    "session": ("session_length",),
    "live": LIVE_FEATURES,
}


@dataclass(frozen=True)
class RankerSettings:
    """``--param ranker.*``: the second stage, trained when ``enabled``.

    The forest's size (40 rounds of 7 leaves at rate 0.15) was chosen on the YooChoose
    validation day against 31 leaves at rate 0.05 (79 rounds there): the same hit ratios
    within their noise at a sixth of the trees' cost per request (docs/RESULTS.md). With
    fewer than ``min_queries`` training queries no model is trained: the bundle then ranks
    with the personalized model alone.
    """

    enabled: bool = True
    span_hours: float = 24.0
    negatives: int = 100
    rounds: int = 40
    learning_rate: float = 0.15
    num_leaves: int = 7
    min_data_in_leaf: int = 50
    early_stopping: int = 40
    valid_share: float = 0.2
    min_queries: int = 200
    #: At most this many held-out cases become training queries, drawn at random (seeded)
    #: when the day has more: the feature rows and LightGBM's copies of them grow with the
    #: cases (6.3 GiB at 415,000 cases of a synthetic 4M-event log), and a larger sample
    #: would mostly add time. The real logs here have under 10,000.
    max_cases: int = 100_000
    #: Replay the training day's events so that the cases have live co-visits (with the
    #: server's default :class:`recsvc.live.LiveSettings`), as a server with ``--live 1``
    #: has; false trains without them.
    live: bool = True
    #: Feature groups (:data:`FEATURE_GROUPS`) the model may not use, comma-separated: for
    #: an ablation.
    without: str = ""

    def left_out_columns(self) -> list[int]:
        """Columns of :data:`recsvc.features.FEATURES` in the groups of ``without``."""
        return sorted(
            COLUMNS[name]
            for group in self.without.split(",")
            if group.strip()
            for name in FEATURE_GROUPS[group.strip()]
        )

    def __post_init__(self) -> None:
        if min(self.negatives, self.rounds, self.early_stopping, self.min_queries) < 1:
            raise ConfigError(
                "ranker.negatives, rounds, early_stopping and min_queries must be >= 1"
            )
        if self.max_cases < self.min_queries:
            raise ConfigError(
                f"ranker.max_cases ({self.max_cases}) must be at least ranker.min_queries "
                f"({self.min_queries})"
            )
        if self.num_leaves < 2 or self.min_data_in_leaf < 1:
            raise ConfigError("ranker.num_leaves must be >= 2 and min_data_in_leaf >= 1")
        if not self.span_hours > 0:
            raise ConfigError(f"ranker.span_hours must be > 0, got {self.span_hours}")
        unknown = {g.strip() for g in self.without.split(",") if g.strip()} - set(FEATURE_GROUPS)
        if unknown:
            raise ConfigError(
                f"ranker.without: unknown feature groups {sorted(unknown)} (known: "
                f"{', '.join(FEATURE_GROUPS)})"
            )
        if not 0 < self.valid_share < 1 or not self.learning_rate > 0:
            raise ConfigError("ranker.valid_share must be in (0, 1), learning_rate > 0")
