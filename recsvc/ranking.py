"""Rank one item's candidate pool for one shopper, from a loaded bundle.

:class:`Ranker` is built once per bundle (id maps, array views) and is then read-only, so
requests on any thread or task can share it and a bundle swap is a reference swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsvc import _second_stage, contract
from recsvc.bundle import Bundle
from recsvc.candidates import LIVE, CandidateBuilder, CandidateSettings
from recsvc.exceptions import BundleError, ConfigError, InvalidRequest, ItemNotFound
from recsvc.explanations import Because, top_events, window_terms
from recsvc.features import COLUMNS, FEATURES, LIVE_FEATURES, FeatureBuilder, RequestContext
from recsvc.live import EMPTY_READ, LiveRead
from recsvc.live_candidates import EMPTY as NO_LIVE
from recsvc.live_candidates import LiveCandidates, gather
from recsvc.redact import clip
from recsvc.scoring import PoolRanker, Scorer, session_window, window_scores
from recsvc.second_stage import MODEL_ARRAY, SecondStage
from recsvc.session_knn import SessionIndex
from recsvc.sessions import SessionEvent

VISIT_TYPES = frozenset(contract.VISIT_TYPES)


class Fallback:
    """Why an answer is not personalized (names match the proto's ``FallbackReason``)."""

    NO_USER = "no_user"
    SESSION_STORE_UNAVAILABLE = "session_store_unavailable"
    BUDGET_EXCEEDED = "budget_exceeded"
    NO_MODEL = "no_model"
    ITEM_NOT_IN_MODEL = "item_not_in_model"


class RankedBy:
    """What ordered an answer (names match the proto's ``RankedBy``)."""

    POOL_ORDER = "pool_order"
    FIRST_STAGE = "first_stage"
    SECOND_STAGE = "second_stage"


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
    ranked_by: str = RankedBy.POOL_ORDER


@dataclass(frozen=True)
class CandidateRows:
    """A request's candidates with their second-stage features (one row each).

    Attributes
    ----------
    items : int32 (n,), bundle indices
    features : float32 (n, len(FEATURES))
    new : bool (n,), the live neighbours ranked as items new since the bundle was built
        (rows of :meth:`~recsvc.features.FeatureBuilder.new_item_rows`)
    """

    items: np.ndarray
    features: np.ndarray
    new: np.ndarray


class Ranker:
    """Ranks the candidates of one bundle's items.

    ``model`` picks the bundle's personalized model. The bundle's learned second stage
    (``ranker/model``), when it has one, ranks when ``second_stage`` is true and the model is
    ``personalized``, whose scores its features hold, over the candidates the manifest
    records (:mod:`recsvc.candidates`). Otherwise the first stage ranks: the model alone,
    over the item's pool only (the extra candidates, ranked by the model alone, lowered the
    Taobao validation day's HR@10). ``candidates`` replaces either choice of candidates.
    """

    def __init__(
        self,
        bundle: Bundle,
        model: str = "personalized",
        candidates: CandidateSettings | None = None,
        second_stage: bool = True,
    ) -> None:
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
        self._ids = ids
        use_second = second_stage and MODEL_ARRAY in bundle and model == "personalized"
        recorded = bundle.manifest.get("parameters", {}).get("candidates", {})
        try:
            second_stage_candidates = CandidateSettings.from_dict(recorded)
        except ConfigError as exc:
            raise BundleError(f"bundle {bundle.version}: manifest: {exc}") from None
        if candidates is None:
            # The first stage alone ranks the item's pool.
            candidates = second_stage_candidates if use_second else CandidateSettings()
        # The training sessions are read (and checked) only when something uses them: V-SKNN
        # candidates here, the second stage's features below.
        self._sessions: SessionIndex | None = None
        if candidates.knn_items:
            self._sessions = self._session_index()
        sessions = self._sessions
        self._candidates = CandidateBuilder(self.pools, self.pool_sources, sessions, candidates)
        self._feature_builder: FeatureBuilder | None = None
        # Items with events before the held-out period; without the array, all of them.
        self._has_history = np.ones(len(ids), dtype=bool)
        if "item_fit_events" in bundle:
            self._has_history = np.asarray(bundle["item_fit_events"]) > 0
        self._all_have_history = bool(self._has_history.all())
        # The items the live path treats as the bundle's: in an evaluation bundle, an item
        # first seen in the held-out period is in the catalogue, but only the stream knows
        # it, as it would be for a server.
        self._live_index = (
            self._index
            if self._all_have_history
            else {name: i for name, i in self._index.items() if self._has_history[i]}
        )
        # The learned second stage, when the bundle has one; its features are built now so
        # that no request pays for it.
        self._second = (
            SecondStage.from_bundle(bundle, FEATURES)
            if use_second and self.model is not None
            else None
        )
        if self._second is not None:
            missing = [n for n in ("sessions/items", "item_fit_events") if n not in bundle]
            if missing:
                raise BundleError(
                    f"bundle {bundle.version}: its ranker model needs {', '.join(missing)}"
                )
            self._feature_builder = self.features

    @property
    def second_stage(self) -> SecondStage | None:
        """The bundle's learned second stage, or None (the model ranks alone)."""
        return self._second

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
        live: LiveRead = EMPTY_READ,
    ) -> Ranking:
        """Rank ``item_id``'s candidates for a session (oldest event first).

        The window is ``item_id`` then the session's earlier visits, so an empty session
        ranks by the current item alone (``session_events_used`` 0); the candidates are the
        item's pool, its and the session's ``live`` neighbours and what the session adds
        (:mod:`recsvc.candidates`). With ``fallback`` set (no user, or the session could not
        be read) or no model, the item's pool keeps its offline order and the answer says
        why it is not personalized. An item the bundle does not know is ranked from its live
        neighbours alone (:meth:`_rank_new_item`).

        Raises
        ------
        ItemNotFound
            Neither the bundle nor the live neighbours know ``item_id``.
        InvalidRequest
        """
        if not 1 <= k <= self.pool_size:
            raise InvalidRequest(f"k must be in 1..{self.pool_size}, got {k}")
        if category is not None and category not in self._category:
            raise InvalidRequest(f"category {clip(category)} is not in the catalogue")
        session = session or ()
        seen_ids = {e.item_id for e in session} if exclude_seen else set()
        live_items = gather(live, self._live_index, item_id) if live else NO_LIVE
        if live_items.new and (category is not None or seen_ids):
            live_items = self._filter_new(live_items, seen_ids, category)
        seen = [self._index.get(i, -1) for i in seen_ids]
        if item_id not in self._index or (item_id not in self._live_index and live.has(item_id)):
            keep = self._keep(live_items.known, seen, category)
            if keep is not None:
                live_items = live_items.with_known(keep)
            return self._rank_new_item(item_id, k, session, fallback, live, live_items)
        current = self._index[item_id]
        if fallback is None and self.model is None:
            fallback = Fallback.NO_MODEL
        if fallback is None:
            visits = [self._index.get(i, -1) for i in self._slot_items(item_id, session)]
            window = self._window(visits)
            used = sum(item >= 0 for item in window[1:])
            if window[0] >= 0 or used:
                return self._rank_candidates(
                    current, visits, window, k, seen, category, used, live_items
                )
            fallback = Fallback.ITEM_NOT_IN_MODEL
        # The pool in its offline order, scored 1 - slot / pool size.
        items, scores, sources = self._pools.rank(
            current, None, self._pool_keep(current, seen, category), k
        )
        return Ranking(items, scores, sources, personalized=False, fallback=fallback)

    def _rank_new_item(
        self,
        item_id: str,
        k: int,
        session: Sequence[SessionEvent],
        fallback: str | None,
        live: LiveRead,
        live_items: LiveCandidates,
    ) -> Ranking:
        """An item only the live stream knows: its and the session's live neighbours, ranked
        by the model from the session's visits when it has some, else by co-visit count."""
        if not live.has(item_id):
            raise ItemNotFound(
                f"item {clip(item_id)} is not in bundle {self.version} and has no live co-visits"
            )
        visits = [self._index.get(i, -1) for i in self._slot_items(item_id, session)]
        model = self.model
        if fallback is None and model is None:
            fallback = Fallback.NO_MODEL
        if fallback is None and model is not None:
            window = self._window(visits)
            used = sum(item >= 0 for item in window[1:])
            if used:
                known = window_scores(window, live_items.known, *model.arrays)
                new = live_items.new_scores(
                    window_scores(window, live_items.anchors, *model.arrays)
                )
                return self._answer(
                    live_items.known, known, np.full(len(known), LIVE), live_items, new, k,
                    used, RankedBy.FIRST_STAGE,
                )  # fmt: skip
            fallback = Fallback.ITEM_NOT_IN_MODEL
        # By co-visit count, scored 1 - slot / candidates as a pool's order is.
        ids = [self._ids[i] for i in live_items.known.tolist()] + live_items.new
        strength = np.concatenate([live_items.known_strength, live_items.strength])
        order = np.argsort(-strength, kind="stable")[:k]
        return Ranking(
            items=[ids[i] for i in order.tolist()],
            scores=(1.0 - np.arange(len(order)) / len(ids)).tolist(),
            sources=[int(LIVE)] * len(order),
            personalized=False,
            fallback=fallback,
        )

    def _without_candidates(self, live_items: LiveCandidates, items: np.ndarray) -> LiveCandidates:
        """Without the new items already among ``items``: in an evaluation bundle an item
        first seen in the held-out period is new to the live path but may sit in a pool."""
        present = set(items.tolist())
        keep = [i for i, n in enumerate(live_items.new) if self._index.get(n, -1) not in present]
        return live_items.with_new(keep)

    def _filter_new(
        self, live_items: LiveCandidates, seen: set[str], category: str | None
    ) -> LiveCandidates:
        """Without the new items a filter removes: all of them for a category (their
        category is unknown), those seen when ``exclude_seen``."""
        keep = [i for i, item in enumerate(live_items.new) if category is None and item not in seen]
        return live_items.with_new(keep)

    def _rank_candidates(
        self,
        current: int,
        visits: list[int],
        window: list[int],
        k: int,
        seen: list[int],
        category: str | None,
        used: int,
        live_items: LiveCandidates = NO_LIVE,
    ) -> Ranking:
        assert self.model is not None
        if self._second is None and not self._candidates.adds_any and not live_items:
            # The pool alone, by the personalized model: ranked in C, no array per call.
            ids, values, sources = self._pools.rank(
                current, window, self._pool_keep(current, seen, category), k
            )
            return Ranking(
                ids,
                values,
                sources,
                personalized=True,
                session_events_used=used,
                ranked_by=RankedBy.FIRST_STAGE,
            )
        knn = self._candidates.session_scores(current, visits[1:])
        items, flags = self._candidates.build(current, visits[1:], knn, live_items.known)
        keep = self._keep(items, seen, category)
        if keep is not None:
            items, flags = items[keep], flags[keep]
        if live_items.new and self._live_index is not self._index:
            live_items = self._without_candidates(live_items, items)
        arrays = self.model.arrays
        if self._second is not None:
            context = RequestContext(current, visits[1:], window)
            features = self.features.build(context, items, flags, knn, live_items)
            scores = self._second.scores(features)
            if not self._all_have_history:
                # An item with no event before the held-out period is in an evaluation
                # bundle's catalogue only because it is clicked there: no score may use that.
                scores[~self._has_history[items]] = -np.inf
            new = self._second_stage_new(context, live_items)
        else:
            scores = window_scores(window, items, *arrays)
            new = live_items.new_scores(window_scores(window, live_items.anchors, *arrays))
        ranked_by = RankedBy.FIRST_STAGE if self._second is None else RankedBy.SECOND_STAGE
        return self._answer(items, scores, flags, live_items, new, k, used, ranked_by)

    def _second_stage_new(self, context: RequestContext, live_items: LiveCandidates) -> np.ndarray:
        """Second-stage scores of the new live items, from their rows of
        :meth:`~recsvc.features.FeatureBuilder.new_item_rows`."""
        if not live_items.new:
            return np.empty(0)
        assert self._second is not None
        rows = self.features.new_item_rows(context, live_items)
        scores = self._second.scores(rows)
        if not any(self._second.uses(name) for name in LIVE_FEATURES):
            # A model that never learned from the live columns never saw such a row: without
            # an anchor it says nothing of the item, which is not scored (as a known item
            # without a fit-period event is not).
            scores[np.isnan(rows[:, COLUMNS["personalized"]])] = -np.inf
        return scores

    def explain(
        self, item_id: str, session: Sequence[SessionEvent] | None, ranking: Ranking
    ) -> list[list[Because]]:
        """For each item of ``ranking`` (from :meth:`rank` with the same item and session),
        the earlier visits of the session behind its personalized score
        (:mod:`recsvc.explanations`); empty for an answer that is not personalized and for
        items the model cannot score."""
        none: list[list[Because]] = [[] for _ in ranking.items]
        if not ranking.personalized or self.model is None:
            return none
        slot_items = self._slot_items(item_id, session or ())
        window = self._window([self._index.get(i, -1) for i in slot_items])
        answered = np.array([self._index.get(i, -1) for i in ranking.items], dtype=np.int64)
        scorable = answered >= 0
        scorable[scorable] = self.model.scorable[answered[scorable]]
        terms = window_terms(
            window,
            answered[scorable],
            self.model.input_embeddings,
            self.model.output_embeddings,
            self.model.position_weights,
        )
        explained = iter(top_events(terms, slot_items))
        return [next(explained) if ok else [] for ok in scorable.tolist()]

    def _answer(
        self,
        items: np.ndarray,
        scores: np.ndarray,
        flags: np.ndarray,
        live_items: LiveCandidates,
        new_scores: np.ndarray,
        k: int,
        used: int,
        ranked_by: str,
    ) -> Ranking:
        """The best ``k`` of the known candidates and the new live items together."""
        names = self._ids
        if live_items.new:
            scores = np.concatenate([scores, new_scores])
        # The best k, ties in the candidates' order (argsort(-scores, kind="stable")[:k]).
        ranked = np.asarray(scores, dtype=np.float64)  # the first stage's are float32
        best = np.frombuffer(_second_stage.top_positions(ranked, k), dtype=np.int64)
        n_known = len(items)
        known = best[best < n_known] if live_items.new else best
        # Python ints in bulk (tolist), not a numpy scalar per answer item.
        known_items = iter(items[known].tolist())
        known_flags = iter(flags[known].tolist())
        out_items, out_flags = [], []
        for i in best.tolist():
            if i < n_known:
                out_items.append(names[next(known_items)])
                out_flags.append(next(known_flags))
            else:
                out_items.append(live_items.new[i - n_known])
                out_flags.append(int(LIVE))
        return Ranking(
            items=out_items,
            scores=scores[best].tolist(),
            sources=out_flags,
            personalized=True,
            session_events_used=used,
            ranked_by=ranked_by,
        )

    def _pool_keep(self, current: int, seen: list[int], category: str | None) -> np.ndarray | None:
        """:meth:`_keep` for ``current``'s pool, indexed only when a filter needs it."""
        if not seen and category is None:
            return None
        return self._keep(self.pools[current], seen, category)

    def candidate_features(
        self, item_id: str, session: Sequence[SessionEvent], live: LiveRead = EMPTY_READ
    ) -> CandidateRows | None:
        """The candidates of a request and their second-stage features, exactly as
        :meth:`rank` gathers and builds them, or None when the second stage would not rank
        it (the model cannot, or the item is one only the stream knows). The second
        stage's training rows come from here; a new live neighbour the bundle lacks has no
        index and is left out."""
        current = self.index(item_id)
        if self.model is None or (item_id not in self._live_index and live.has(item_id)):
            return None
        visits = [self._index.get(i, -1) for i in self._slot_items(item_id, session)]
        window = self._window(visits)
        if window[0] < 0 and not any(item >= 0 for item in window[1:]):
            return None
        live_items = gather(live, self._live_index, item_id) if live else NO_LIVE
        knn = self._candidates.session_scores(current, visits[1:])
        items, flags = self._candidates.build(current, visits[1:], knn, live_items.known)
        if live_items.new and self._live_index is not self._index:
            live_items = self._without_candidates(live_items, items)
        context = RequestContext(current, visits[1:], window)
        features = self.features.build(context, items, flags, knn, live_items)
        new = np.array([self._index.get(n, -1) for n in live_items.new], dtype=np.int32)
        known = new >= 0
        return CandidateRows(
            np.concatenate([items.astype(np.int32), new[known]]),
            np.concatenate([features, self.features.new_item_rows(context, live_items)[known]]),
            np.concatenate([np.zeros(len(items), bool), np.ones(int(known.sum()), bool)]),
        )

    @property
    def features(self) -> FeatureBuilder:
        """The second stage's feature builder (made on first use)."""
        if self._feature_builder is None:
            self._sessions = self._sessions or self._session_index()
            # The features use the click model whichever model ranks without a second
            # stage: the second stage was trained on them.
            self._feature_builder = FeatureBuilder.from_bundle(
                self.bundle,
                Scorer.from_bundle(self.bundle, "personalized"),
                self._sessions,
                self._candidates.settings.knn,
            )
        return self._feature_builder

    def _session_index(self) -> SessionIndex | None:
        if "sessions/items" not in self.bundle:
            return None
        index = SessionIndex.from_arrays(self.bundle, n_items=len(self._ids))
        index.prepare()  # now, while loading, not in the first request's time
        return index

    def _keep(self, items: np.ndarray, seen: list[int], category: str | None) -> np.ndarray | None:
        """Which of ``items`` the request's filters allow (None: all of them)."""
        keep = None
        if category is not None:
            keep = self.item_category[np.maximum(items, 0)] == self._category[category]
        if seen:
            unseen = ~np.isin(items, seen)
            keep = unseen if keep is None else keep & unseen
        return keep

    def _slot_items(self, item_id: str, session: Sequence[SessionEvent]) -> list[str]:
        """The ids in a request's window slots: ``item_id``, then the session's earlier
        visits, newest first (:func:`~recsvc.scoring.session_window`)."""
        history = [e.item_id for e in session if e.type in VISIT_TYPES]
        return session_window(item_id, history, self._width)

    def _window(self, visits: list[int]) -> list[int]:
        """Window indices, -1 for empty slots and items the model does not know."""
        assert self.model is not None
        window = self.model.window(visits)
        return window + [-1] * (self._width - len(window))
