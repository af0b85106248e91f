"""The candidates of one request: the viewed item's pool joined with what the session adds.

Offline, every item gets a pool. A shopper's next item is often outside the pool of the item
in view but inside the pool of an item viewed just before, or among the items that similar
sessions went on to (:mod:`recsvc.session_knn`). So a request's candidates are, in this
order of priority, deduplicated and capped:

1. the current item's pool;
2. the live neighbours the bundle knows (flag ``live``; :mod:`recsvc.live_candidates`);
3. the top ``knn_items`` of V-SKNN for the session (flag ``session_knn``);
4. the pools of the ``session_pools`` most recent earlier visits.

A candidate proposed more than once keeps every proposer's flags. The current item itself is
never a candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsvc import _second_stage
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import ConfigError
from recsvc.session_knn import KNNParams, SessionIndex, request_session

SESSION_KNN = np.uint8(SOURCE_BITS["session_knn"])
LIVE = np.uint8(SOURCE_BITS["live"])


def _session_knn() -> KNNParams:
    # V-SKNN as tuned on the YooChoose validation day (docs/RESULTS.md).
    return KNNParams(k=100, sample_size=500, similarity="vector", idf_weight=5.0)


@dataclass(frozen=True)
class CandidateSettings:
    """How a request's candidates are gathered (recorded in the bundle manifest)."""

    # Off here: the item's pool alone, what the first stage ranks (in C). The pipeline
    # records its own defaults (offline.config), which add V-SKNN's items and the last
    # visit's pool for the second stage.
    session_pools: int = 0
    knn_items: int = 0
    cap: int = 400
    knn: KNNParams = field(default_factory=_session_knn)

    def __post_init__(self) -> None:
        for name in ("session_pools", "knn_items", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"candidates.{name} must be an int >= 0, got {value!r}")
        if self.cap < 1:
            raise ConfigError(f"candidates.cap must be >= 1, got {self.cap}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: object) -> CandidateSettings:
        """Settings from a manifest's ``candidates`` (missing keys keep their defaults).

        Raises
        ------
        ConfigError
            Not a mapping, an unknown key, or a value out of range.
        """
        kwargs = dict(_mapping("candidates", values, {f.name for f in dataclasses.fields(cls)}))
        if "knn" in kwargs:
            knn_fields = {f.name for f in dataclasses.fields(KNNParams)}
            kwargs["knn"] = KNNParams(**_mapping("candidates.knn", kwargs["knn"], knn_fields))
        return cls(**kwargs)


def _mapping(name: str, values: object, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, got {values!r}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {name} settings {unknown} (known: {sorted(known)})")
    return values


class CandidateBuilder:
    """Gathers candidates from one bundle's pools and training sessions (read-only)."""

    def __init__(
        self,
        pools: np.ndarray,
        pool_sources: np.ndarray,
        sessions: SessionIndex | None,
        settings: CandidateSettings,
    ) -> None:
        self.pools = pools
        self.pool_sources = pool_sources
        self.sessions = sessions
        self.settings = settings
        # The merge gathers from the pools in C: no array is made per request.
        self._core = _second_stage.CandidateCore(
            np.ascontiguousarray(pools, dtype=np.int32),
            np.ascontiguousarray(pool_sources, dtype=np.uint8),
        )

    @property
    def adds_any(self) -> bool:
        """Whether a request can get candidates beyond its item's pool."""
        s = self.settings
        return s.session_pools > 0 or (s.knn_items > 0 and self.sessions is not None)

    def session_scores(
        self, current: int, visits: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """V-SKNN's (items, scores) for the session (``visits`` newest first, then the
        current item), or None without training sessions: computed once per request, for
        the candidates and for the second stage's features."""
        if self.sessions is None:
            return None
        return self.sessions.scores(request_session(current, visits), self.settings.knn)

    def build(
        self,
        current: int,
        visits: Sequence[int],
        knn: tuple[np.ndarray, np.ndarray] | None = None,
        live: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items int32, source flags uint8) of one request, in priority order.

        Parameters
        ----------
        current : the viewed item's index
        visits : the session's earlier visits, newest first (indices; -1 for items the
            bundle does not know)
        knn : :meth:`session_scores` of the same request, when the caller has it
        live : the request's live neighbours that the bundle knows (indices)
        """
        s = self.settings
        knn_items = knn_scores = None
        if self.sessions is not None and s.knn_items:
            if knn is None:
                knn = self.session_scores(current, visits)
            assert knn is not None
            knn_items, knn_scores = knn
        rows = [v for v in visits if v >= 0][: s.session_pools]
        merged, merged_flags = self._core.build(
            current,
            rows,
            knn_items,
            knn_scores,
            s.knn_items,
            live if live is not None and len(live) else None,
            LIVE,
            SESSION_KNN,
            s.cap,
        )
        return np.frombuffer(merged, dtype=np.int32), np.frombuffer(merged_flags, dtype=np.uint8)
