"""Rank one item's candidate pool for one shopper, from a loaded bundle.

:class:`Ranker` is built once per bundle (id maps, array views) and is then read-only, so
requests on any thread or task can share it and a bundle swap is a reference swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsvc import contract
from recsvc.bundle import Bundle
from recsvc.exceptions import BundleError, InvalidRequest, ItemNotFound
from recsvc.redact import clip
from recsvc.scoring import PoolRanker, Scorer, session_window
from recsvc.sessions import SessionEvent

VISIT_TYPES = frozenset(contract.VISIT_TYPES)


class Fallback:
    """Why an answer is not personalized (names match the proto's ``FallbackReason``)."""

    NO_USER = "no_user"
    SESSION_STORE_UNAVAILABLE = "session_store_unavailable"
    BUDGET_EXCEEDED = "budget_exceeded"
    NO_MODEL = "no_model"
    ITEM_NOT_IN_MODEL = "item_not_in_model"


@dataclass(frozen=True)
class Ranking:
    """An answer: item ids best first, their scores and source bits.

    A score of ``-inf`` marks a candidate the model cannot score (these come last); the
    reply writes it as the lowest float with ``unscored`` set (see ``recsvc/_wire.c``).
    """

    items: list[str]
    scores: list[float]
    sources: list[int]
    personalized: bool
    fallback: str | None = None
    session_events_used: int = 0


class Ranker:
    """Ranks pools of one bundle; ``model`` picks the bundle's personalized model."""

    def __init__(self, bundle: Bundle, model: str = "personalized") -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.model_name = model
        self.model = Scorer.from_bundle(bundle, model)
        if self.model is None and any(k.startswith("models/") for k in bundle.arrays):
            raise BundleError(f"bundle {bundle.version} has no model {model!r}")
        self._index = bundle.item_index()
        if len(self._index) != len(bundle["item_ids"]):
            raise BundleError(f"bundle {bundle.version} lists some item ids more than once")
        self.pools = np.asarray(bundle["pools"])
        self.pool_sources = np.asarray(bundle["pool_sources"])
        self.item_category = np.asarray(bundle["item_category"])
        names = np.asarray(bundle["category_names"]).astype(str).tolist()
        self._category = {name: i for i, name in enumerate(names)}
        self.pool_size = self.pools.shape[1]
        model_arrays = self.model.arrays if self.model is not None else ()
        # The compiled ranking holds the arrays from here on: a request creates no views.
        ids = list(self._index)  # index -> id, the dict's own strings
        self._pools = PoolRanker(self.pools, self.pool_sources, ids, *model_arrays)
        self._width = self.model.width if self.model is not None else 0

    def index(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ItemNotFound(f"item {clip(item_id)} is not in bundle {self.version}") from None

    def has_item(self, item_id: str) -> bool:
        return item_id in self._index

    def rank(
        self,
        item_id: str,
        k: int,
        session: Sequence[SessionEvent] | None = None,
        fallback: str | None = None,
        exclude_seen: bool = False,
        category: str | None = None,
    ) -> Ranking:
        """Rank ``item_id``'s pool for a session (oldest event first).

        The window is ``item_id`` then the session's earlier visits, so an empty session
        ranks by the current item alone (``session_events_used`` 0). With ``fallback`` set
        (no user, or the session could not be read) or no model, the pool keeps its offline
        order and the answer says why it is not personalized.

        Raises
        ------
        ItemNotFound, InvalidRequest
        """
        current = self.index(item_id)
        if not 1 <= k <= self.pool_size:
            raise InvalidRequest(f"k must be in 1..{self.pool_size}, got {k}")
        keep = None  # padding (-1) is always left out; keep narrows the pool further
        if category is not None:
            if category not in self._category:
                raise InvalidRequest(f"category {clip(category)} is not in the catalogue")
            pool = self.pools[current]
            keep = self.item_category[np.maximum(pool, 0)] == self._category[category]
        session = session or ()
        if exclude_seen and session:
            seen = [self._index.get(e.item_id, -1) for e in session]
            unseen = ~np.isin(self.pools[current], seen)
            keep = unseen if keep is None else keep & unseen

        history = [e.item_id for e in session if e.type in VISIT_TYPES]
        if fallback is None:
            fallback = self._why_not_personalized()
        window, used = None, 0
        if fallback is None:
            window = self._window(item_id, history)
            used = sum(item >= 0 for item in window[1:])
            if window[0] < 0 and not used:
                fallback, window = Fallback.ITEM_NOT_IN_MODEL, None
        # window None: the pool in its offline order, scored 1 - slot / pool size.
        items, scores, sources = self._pools.rank(current, window, keep, k)
        return Ranking(
            items=items,
            scores=scores,
            sources=sources,
            personalized=fallback is None,
            fallback=fallback,
            session_events_used=used,
        )

    def _why_not_personalized(self) -> str | None:
        # An empty session is no reason: the request's item alone fills the window's first
        # slot, so the first view of a visit is ranked as it will be once its click lands.
        return Fallback.NO_MODEL if self.model is None else None

    def _window(self, item_id: str, history: list[str]) -> list[int]:
        """Window indices, -1 for empty slots and items the model does not know."""
        assert self.model is not None
        items = session_window(item_id, history, self._width)
        window = self.model.window([self._index.get(item, -1) for item in items])
        return window + [-1] * (self._width - len(window))
