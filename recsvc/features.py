"""Per-candidate features of the learned second-stage ranker.

One :class:`FeatureBuilder` per bundle, read-only after it is built; its :meth:`build`
turns one request (the viewed item, the session's earlier visits, the personalized model's
window) and its candidates into a float32 matrix, one row per candidate and one column per
name of :data:`FEATURES`, NaN where a feature is not defined. The server calls it on the
request path and the offline training calls the same method on its cases, so a model is
trained on exactly the features it is served with. It needs numpy and the compiled
:mod:`recsvc._second_stage`.

The visits
    ``visits`` are the session's earlier visits, newest first, without the current view;
    ``-1`` for items the bundle does not know. The *weighted* visits are those the
    personalized model's window holds: visit ``j`` (1-based) sits in window slot ``j`` and
    weighs the model's position weight ``w_j``, clipped at 0; only the first ``width - 1``
    visits count. Without a model every visit counts, with weight 1. A pooled value is the
    weighted mean over the weighted visits that define it: ``sum w_j x_j / sum w_j``, NaN
    when no visit of positive weight defines it.

The columns
    ``personalized``
        The model's score of the candidate for ``window`` (:func:`~recsvc.scoring.
        window_scores`, the served score). NaN when the model cannot score the candidate,
        when the window holds no known item, and throughout without a model.
    ``personalized_item``
        The same for the window holding only the current item; NaN when the model does not
        know it.
    ``itemcf_current``
        ``pool_scores/itemcf`` of (current item, candidate): NaN when the candidate is not
        in the current item's pool or item-CF did not score it there.
    ``itemcf_session``
        Item-CF score of the candidate in each weighted visit's pool, pooled.
    ``item2vec_current``
        Cosine of the candidate's and the current item's item2vec embeddings; NaN when
        either is unknown (``embeddings/item2vec_known``) or has norm 0.
    ``item2vec_session``
        Cosine of the candidate to each weighted visit, pooled.
    ``vsknn``
        V-SKNN score (:meth:`~recsvc.session_knn.SessionIndex.scores`) of the candidate for
        the session: the known visits oldest first, then the current item (as
        :mod:`recsvc.candidates` builds it); 0 when V-SKNN does not score it.
    ``log_popularity``
        ``log1p`` of the item's share of the fit period's clicks, per million: a share, so
        that the training bundle (a shorter fit period) and the served one mean the same.
    ``log_recent_clicks``
        The same of ``item_recent_clicks``: the share of the clicks of the fit period's
        last 24 hours.
    ``age_days``
        Days from the candidate's first event (``item_first_seen``) to the end of the fit
        period, taken as ``max(item_first_seen)``: the bundle records no fit-period end,
        and the pipeline gives items first seen in the held-out period the held-out
        period's first event time, so the largest first-seen time is that start (or the
        last new listing of the fit period, when no item is new in the held-out period).
        The server uses the same bundle value, not the clock, so an age means what it meant
        in training.
    ``same_category``
        1 when the candidate's category is the current item's, else 0; NaN when either is
        unknown (-1).
    ``session_category_share``
        Share of the earlier visits of known category (all of them, not only the weighted
        ones) that have the candidate's category; NaN when there are none or the
        candidate's category is unknown.
    ``pool_position``
        The candidate's 0-based slot in the current item's pool divided by the pool width
        (``pools.shape[1]``); NaN when it is not in the pool.
    ``source_itemcf`` ... ``source_session_knn``
        1 when the candidate's source flags have that source's bit
        (:data:`recsvc.contract.SOURCE_BITS`) for each of :data:`FEATURE_SOURCES`, else 0.
    ``scorable``
        1 when the model can score the candidate, else 0; NaN without a model.
    ``session_length``
        The number of earlier visits the bundle knows (the same for every candidate).
    ``live_current``
        The candidate's share of the live co-visits read for the viewed item
        (:mod:`recsvc.live_candidates`): 0 when it is not among them, NaN when none were
        read (no co-visits yet, live reads off or failed).
    ``live_session``
        The same for the co-visits read for the session's other items.

Items new since the bundle was built (live neighbours only the stream knows) get rows of
their own (:meth:`FeatureBuilder.new_item_rows`): the model's columns from their live
vector, the live columns, V-SKNN 0, no source column set, and every column the bundle
would give missing.

A feature whose bundle array is absent (``pool_scores/itemcf``, ``embeddings/item2vec``,
``item_recent_clicks``, the training sessions, the model) is NaN throughout.

Cost
    Every column is built in one compiled call (``recsvc/_second_stage.c``,
    :class:`FeatureCore`): the candidates' pool slots and live shares through a small
    per-call table item -> candidate, the cosines one dot product each, the columns of the
    candidate alone gathered from a table built with the builder (``n_items`` x 3 float32),
    and the model's two columns with the scoring arithmetic of ``recsvc/_model.h``, so they
    are the bits :func:`~recsvc.scoring.window_scores` gives. On a busy server each numpy
    call starts with cold caches, so the calls, not the arithmetic, were the cost. V-SKNN is
    scored once per request: the caller passes the scores it gathered candidates with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recsvc import _second_stage
from recsvc.bundle import Bundle
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import BundleError, InvalidRequest
from recsvc.live_candidates import EMPTY as NO_LIVE
from recsvc.live_candidates import LiveCandidates
from recsvc.scoring import Scorer, window_scores
from recsvc.session_knn import KNNParams, SessionIndex, request_session

#: The sources with a feature column each: the bundle's models were trained on these, so a
#: source added later (``live``) gets no column until the features change on purpose.
FEATURE_SOURCES: tuple[str, ...] = (
    "itemcf",
    "item2vec",
    "image",
    "pss",
    "category",
    "new",
    "session_knn",
)
FEATURES: tuple[str, ...] = (
    "personalized",
    "personalized_item",
    "itemcf_current",
    "itemcf_session",
    "item2vec_current",
    "item2vec_session",
    "vsknn",
    "log_popularity",
    "log_recent_clicks",
    "age_days",
    "same_category",
    "session_category_share",
    "pool_position",
    *(f"source_{name}" for name in FEATURE_SOURCES),
    "scorable",
    "session_length",
    # Last, so that a model trained before them still reads its columns as a prefix
    # (recsvc.second_stage).
    "live_current",
    "live_session",
)
#: Column of each feature.
COLUMNS: dict[str, int] = {name: j for j, name in enumerate(FEATURES)}

_SOURCE_COLUMN = COLUMNS[f"source_{FEATURE_SOURCES[0]}"]
_SOURCE_BITS = np.array([SOURCE_BITS[name] for name in FEATURE_SOURCES], dtype=np.uint8)
_SECONDS_PER_DAY = 86400.0
_STATIC = [COLUMNS[name] for name in ("log_popularity", "log_recent_clicks", "age_days")]
#: The columns of the live co-visits (recsvc.live), missing when none were read.
LIVE_FEATURES = ("live_current", "live_session")
_LIVE_COLUMNS = [COLUMNS[name] for name in LIVE_FEATURES]
_LIVE_BIT = SOURCE_BITS["live"]


@dataclass(frozen=True)
class RequestContext:
    """One request, as the features see it.

    Attributes
    ----------
    current : the viewed item's dense index
    visits : the session's earlier visits, newest first, the current view excluded; -1 for
        items the bundle does not know
    window : the personalized model's window (current first, then the earlier visits, -1
        for empty or unknown slots), as :meth:`recsvc.scoring.Scorer.window` gives it
    """

    current: int
    visits: Sequence[int]
    window: Sequence[int]


class FeatureBuilder:
    """The features of one bundle's candidates (see the module docstring); read-only."""

    def __init__(
        self,
        *,
        pools: np.ndarray,
        category: np.ndarray,
        popularity: np.ndarray,
        first_seen: np.ndarray,
        itemcf: np.ndarray | None = None,
        item2vec: np.ndarray | None = None,
        item2vec_known: np.ndarray | None = None,
        recent_clicks: np.ndarray | None = None,
        scorer: Scorer | None = None,
        sessions: SessionIndex | None = None,
        knn: KNNParams | None = None,
    ) -> None:
        """Arrays by role; :meth:`from_bundle` takes them from a bundle.

        Parameters
        ----------
        pools : int32 (n_items, pool), -1 padded
        category : int (n_items,), -1 unknown
        popularity, first_seen : (n_items,): clicks in the fit period, first event (Unix s)
        itemcf : float32 (n_items, pool), NaN where item-CF does not score the pair
        item2vec : float (n_items, d); item2vec_known : bool (n_items,) (default: all)
        recent_clicks : int (n_items,): clicks in the fit period's last day
        scorer : the personalized model
        sessions, knn : the training sessions and how V-SKNN scores them (both or neither)
        """
        # Plain views of the (memory-mapped) arrays: indexing a np.memmap costs a Python call.
        pools, category, popularity, first_seen = (
            np.asarray(a) for a in (pools, category, popularity, first_seen)
        )
        itemcf, item2vec, item2vec_known, recent_clicks = (
            None if a is None else np.asarray(a)
            for a in (itemcf, item2vec, item2vec_known, recent_clicks)
        )
        n_items = len(pools)
        self.n_items = n_items
        self.pools = pools
        self.pool_width = pools.shape[1]
        self.category = category
        self.popularity = popularity
        self.first_seen = first_seen
        self.itemcf = itemcf
        self.item2vec = item2vec
        if item2vec is not None and item2vec_known is None:
            item2vec_known = np.ones(n_items, dtype=bool)
        self.item2vec_known = item2vec_known
        self.recent_clicks = recent_clicks
        self.scorer = scorer
        if (sessions is None) != (knn is None):
            raise ValueError("sessions and knn come together")
        self.sessions = sessions
        self.knn = knn
        finite = first_seen[np.isfinite(first_seen)]
        #: The fit period's end for ``age_days`` (see the module docstring).
        self.now = float(finite.max()) if len(finite) else float("nan")
        # The columns that depend on the candidate alone, one row per item (12 bytes each):
        # one gather per request instead of a dozen numpy calls.
        static = np.full((n_items, len(_STATIC)), np.nan, dtype=np.float32)
        static[:, 0] = _log_share(popularity)
        if recent_clicks is not None:
            static[:, 1] = _log_share(recent_clicks)
        with np.errstate(invalid="ignore"):  # inf - inf: an item never seen
            age = (self.now - first_seen.astype(np.float64)) / _SECONDS_PER_DAY
        static[:, 2] = np.where(np.isfinite(age), age, np.nan)
        self._static = static
        weights = (
            np.maximum(np.asarray(scorer.position_weights, dtype=np.float64), 0.0)
            if scorer is not None
            else None
        )
        #: Weights of the visits in window slots 1.. (None: no model, every visit weighs 1).
        self._visit_weights = weights[1:] if weights is not None else None
        for name, array in (
            ("category", category),
            ("popularity", popularity),
            ("first_seen", first_seen),
            ("itemcf", itemcf),
            ("item2vec", item2vec),
            ("item2vec_known", item2vec_known),
            ("recent_clicks", recent_clicks),
        ):
            if array is not None and len(array) != n_items:
                raise BundleError(f"features: {name} has {len(array)} rows, pools {n_items}")
        if itemcf is not None and itemcf.shape != pools.shape:
            raise BundleError(f"features: itemcf has shape {itemcf.shape}, pools {pools.shape}")
        # The compiled part holds the arrays (views when they already have its dtypes, as a
        # bundle's do).
        model = (
            {
                "input_embeddings": scorer.input_embeddings,
                "output_embeddings": scorer.output_embeddings,
                "position_weights": scorer.position_weights,
                "scorable": np.ascontiguousarray(scorer.scorable, dtype=bool),
                "model_known": np.ascontiguousarray(scorer.known, dtype=bool),
            }
            if scorer is not None
            else {}
        )
        self._core = _second_stage.FeatureCore(
            np.ascontiguousarray(pools, dtype=np.int32),
            np.ascontiguousarray(category, dtype=np.int32),
            static,
            COLUMNS,
            _SOURCE_COLUMN,
            _SOURCE_BITS,
            len(FEATURES),
            itemcf=None if itemcf is None else np.ascontiguousarray(itemcf, dtype=np.float32),
            item2vec=None if item2vec is None else np.ascontiguousarray(item2vec, np.float32),
            item2vec_known=(
                None if item2vec_known is None else np.ascontiguousarray(item2vec_known, bool)
            ),
            visit_weights=self._visit_weights,
            live_bit=_LIVE_BIT,
            **model,
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        scorer: Scorer | None,
        sessions: SessionIndex | None,
        knn: KNNParams,
    ) -> FeatureBuilder:
        """The builder of one bundle; arrays stay memory-mapped, nothing is copied."""

        return cls(
            pools=bundle["pools"],
            category=bundle["item_category"],
            popularity=bundle["item_popularity"],
            first_seen=bundle["item_first_seen"],
            itemcf=bundle.arrays.get("pool_scores/itemcf"),
            item2vec=bundle.arrays.get("embeddings/item2vec"),
            item2vec_known=bundle.arrays.get("embeddings/item2vec_known"),
            recent_clicks=bundle.arrays.get("item_recent_clicks"),
            scorer=scorer,
            sessions=sessions,
            knn=knn if sessions is not None else None,
        )

    def build(
        self,
        ctx: RequestContext,
        items: np.ndarray,
        flags: np.ndarray,
        knn: tuple[np.ndarray, np.ndarray] | None = None,
        live: LiveCandidates = NO_LIVE,
    ) -> np.ndarray:
        """float32 (len(items), len(FEATURES)): the features of each candidate; NaN missing.

        Parameters
        ----------
        ctx : the request
        items : int (c,): candidate indices
        flags : uint8 (c,): their source flags (:data:`recsvc.contract.SOURCE_BITS`)
        knn : V-SKNN's (items, scores) for the session, when the caller has them
            (:meth:`recsvc.candidates.CandidateBuilder.session_scores`); else scored here
        live : the request's live neighbours; a candidate flagged ``live`` takes its shares
            from there

        Raises
        ------
        InvalidRequest
            An item index outside the catalogue, or flags of another length.
        """
        items = np.ascontiguousarray(items, dtype=np.int32)
        flags = np.ascontiguousarray(flags, dtype=np.uint8)
        n = len(items)
        if flags.shape != items.shape:
            raise InvalidRequest(f"{len(flags)} source flags for {n} candidates")
        current = int(ctx.current)
        if not 0 <= current < self.n_items:
            raise InvalidRequest(f"current item {current} is outside 0..{self.n_items - 1}")
        if n and (int(items.min()) < 0 or int(items.max()) >= self.n_items):
            raise InvalidRequest(f"candidates outside 0..{self.n_items - 1}")
        visits = list(ctx.visits)
        if knn is None and self.sessions is not None and self.knn is not None:
            knn = self.sessions.scores(request_session(current, visits), self.knn)
        knn_items, knn_scores = knn if knn is not None else (None, None)
        out = np.empty((n, len(FEATURES)), dtype=np.float32)
        self._core.build(
            current,
            visits,
            items,
            flags,
            knn_items,
            knn_scores,
            out,
            ctx.window if self.scorer is not None else None,
            live.known if len(live.known) else None,
            live.known_shares if len(live.known) else None,
            live.absent_shares,
        )
        return out

    def new_item_rows(self, ctx: RequestContext, live: LiveCandidates) -> np.ndarray:
        """float32 (len(live.new), len(FEATURES)): the rows of the live neighbours the bundle
        does not know (see the module docstring), in ``live.new``'s order."""
        rows = np.full((len(live.new), len(FEATURES)), np.nan, dtype=np.float32)
        if not live.new:
            return rows
        if self.scorer is not None:
            arrays = self.scorer.arrays
            scored = [(COLUMNS["personalized"], ctx.window)]
            if self.scorer.known[ctx.current]:  # as for the known candidates' rows
                scored.append((COLUMNS["personalized_item"], [ctx.current]))
            for column, window in scored:
                if any(v >= 0 for v in window):
                    values = live.new_scores(window_scores(window, live.anchors, *arrays))
                    rows[:, column] = np.where(np.isfinite(values), values, np.nan)
            rows[:, COLUMNS["scorable"]] = np.isfinite(rows[:, COLUMNS["personalized"]])
        rows[:, COLUMNS["vsknn"]] = 0.0
        rows[:, _SOURCE_COLUMN : _SOURCE_COLUMN + len(FEATURE_SOURCES)] = 0.0
        rows[:, COLUMNS["session_length"]] = sum(0 <= v < self.n_items for v in ctx.visits)
        rows[:, _LIVE_COLUMNS] = live.new_shares
        return rows


def _log_share(counts: np.ndarray) -> np.ndarray:
    """``log1p`` of each item's share of all ``counts``, per million (0 for no counts)."""
    counts = counts.astype(np.float64)
    total = counts.sum()
    return np.log1p(counts * (1e6 / total)) if total > 0 else np.zeros_like(counts)
