"""Top-K hit-ratio evaluation of pool rankings on the bundle's held-out days.

Cases are defined in :mod:`offline.data.sequences`: for every held-out viewed item with a next
visit, the current item's pool is ranked by a method, and it is a hit at K when the next
visited item is in the top K. Conversion cases (the ``cart`` rows) are those whose next item
was added to cart, bought, or either: the bundle's ``conversion`` parameter (``cart`` when the
manifest has none), as the pipeline weighed them in ``personalized_cart``.
The session-kNN methods (:mod:`offline.evaluation.session_knn`) rank the whole catalogue
instead of the pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from offline.data.sequences import CONVERSIONS, Cases, next_item_cases
from offline.evaluation.metrics import Difference, paired_bootstrap, summarize, target_ranks
from offline.evaluation.replay import Replay, replay_served
from offline.evaluation.served import served_ranks
from offline.evaluation.session_knn import KNN_METHODS, all_knn_ranks
from recsvc.bundle import Bundle
from recsvc.candidates import CandidateSettings
from recsvc.contract import CANDIDATE_SOURCES, MODELS
from recsvc.exceptions import BundleError
from recsvc.live import LiveSettings
from recsvc.scoring import Scorer
from recsvc.session_knn import KNNParams

EVAL_ARRAYS = ("eval/users", "eval/items", "eval/types", "eval/is_holdout")
#: Methods whose pool scores the pipeline stores in ``pool_scores/<method>``.
POOL_SCORE_METHODS = CANDIDATE_SOURCES
PERSONALIZED_METHODS = MODELS
#: Comparisons reported with bootstrap intervals: (a, b, case set).
COMPARISONS = (
    ("served_live", "served", "click"),
    ("served_live", "served", "cart"),
    ("served", "vsknn", "click"),
    ("served", "itemcf", "click"),
    ("served", "personalized", "click"),
    ("personalized", "itemcf", "click"),
    ("personalized", "item2vec", "click"),
    ("personalized", "popular", "click"),
    ("personalized", "sknn", "click"),
    ("personalized", "vsknn", "click"),
    ("personalized_cart", "personalized", "cart"),
    ("personalized_cart", "personalized", "click"),
)


def bundle_conversion(bundle: Bundle) -> str:
    """The bundle's ``conversion`` parameter: ``cart`` for bundles from before it existed."""
    conversion = bundle.manifest.get("parameters", {}).get("conversion", "cart")
    if conversion not in CONVERSIONS:
        raise BundleError(
            f"bundle {bundle.version}: unknown conversion {conversion!r} in its parameters "
            f"(known: {', '.join(CONVERSIONS)})"
        )
    return str(conversion)


def conversion_label(conversion: str) -> str:
    """The name of the conversion rows in printed tables and comparisons: ``cart``, ``buy``,
    ``cart|buy``."""
    return {"cart": "cart", "buy": "buy", "both": "cart|buy"}[conversion]


def cases_from_bundle(bundle: Bundle, with_times: bool = False) -> Cases:
    """The held-out cases, ``is_cart`` marking the bundle's conversion events; with
    ``with_times`` also their times (``eval/ts``) and window gaps."""
    arrays = [np.asarray(bundle[name]) for name in EVAL_ARRAYS]
    window = len(bundle["models/personalized/position_weights"])
    ts = np.asarray(bundle["eval/ts"]) if with_times else None
    return next_item_cases(*arrays, window=window, ts=ts, conversion=bundle_conversion(bundle))


def available_methods(bundle: Bundle) -> list[str]:
    methods = ["popular", "fallback"]
    methods += [m for m in POOL_SCORE_METHODS if f"pool_scores/{m}" in bundle]
    methods += [m for m in PERSONALIZED_METHODS if f"models/{m}/position_weights" in bundle]
    methods += [m for m in KNN_METHODS if "sessions/items" in bundle]
    if "models/personalized/position_weights" in bundle:
        methods.append("served")
    return methods


def method_scores(bundle: Bundle, method: str, cases: Cases, pools: np.ndarray) -> np.ndarray:
    """Scores of each case's pool under ``method``: float array (n, pool size), -inf unscorable."""
    if method == "fallback":  # the pool's stored order: what a fallback answer returns
        scores = np.broadcast_to(-np.arange(pools.shape[1], dtype=np.float64), pools.shape)
    elif method == "popular":
        popularity = np.asarray(bundle["item_popularity"], dtype=np.float64)
        scores = popularity[np.maximum(pools, 0)]
    elif method in POOL_SCORE_METHODS:
        scores = np.asarray(bundle[f"pool_scores/{method}"])[cases.current].astype(np.float64)
    elif method in PERSONALIZED_METHODS:
        scorer = Scorer.from_bundle(bundle, method)
        if scorer is None:
            raise ValueError(f"bundle {bundle.version} has no model {method!r}")
        scores = scorer.case_scores(cases.windows, pools).astype(np.float64)
    else:
        raise ValueError(f"unknown method {method!r}")
    scores = np.where(np.isnan(scores) | (pools < 0), -np.inf, scores)
    return scores


@dataclass(frozen=True)
class Evaluation:
    """Per-case ranks of every method, and the summary in the JSON shape of ``recsvc eval``.

    ``conversion`` names the events behind ``cases.is_cart`` (the ``cart`` rows).
    """

    cases: Cases
    ranks: dict[str, np.ndarray]
    ks: tuple[int, ...]
    conversion: str = "cart"
    replay: Replay | None = None

    def result(self, subset: np.ndarray | None = None) -> dict[str, object]:
        """The ``recsvc eval`` JSON, over all cases or the cases where ``subset`` is true.

        The conversion rows keep the key ``cart`` whatever the conversion events; the top
        level ``conversion`` says which they are (``cart``, ``buy`` or ``both``).
        """
        keep = np.ones(len(self.cases), dtype=bool) if subset is None else subset
        cart = self.cases.is_cart & keep
        methods: dict[str, dict[str, dict[str, float]]] = {}
        for method, ranks in self.ranks.items():
            methods[method] = {"click": summarize(ranks[keep], self.ks)}
            if cart.any():
                methods[method]["cart"] = summarize(ranks[cart], self.ks)
        return {
            "cases": {"click": int(keep.sum()), "cart": int(cart.sum())},
            "conversion": self.conversion,
            "methods": methods,
        }

    def differences(self, seed: int = 0, metric_k: int = 10) -> list[Difference]:
        """Bootstrap intervals of hr@``metric_k`` differences for ``COMPARISONS``."""
        out = []
        for a, b, subset in COMPARISONS:
            if a not in self.ranks or b not in self.ranks:
                continue
            mask = self.cases.is_cart if subset == "cart" else np.ones(len(self.cases), bool)
            if not mask.any():
                continue
            hits_a = (self.ranks[a][mask] <= metric_k).astype(np.float64)
            hits_b = (self.ranks[b][mask] <= metric_k).astype(np.float64)
            value, low, high = paired_bootstrap(hits_a, hits_b, self.cases.users[mask], seed=seed)
            label = conversion_label(self.conversion) if subset == "cart" else subset
            out.append(
                Difference(a, b, f"{label} hr@{metric_k}", int(mask.sum()), value, low, high)
            )
        return out


def evaluate(
    bundle: Bundle,
    ks: Sequence[int] = (5, 10, 20),
    methods: Sequence[str] | None = None,
    knn: Mapping[str, KNNParams] = KNN_METHODS,
    candidates: CandidateSettings | None = None,
    replay: LiveSettings | None = None,
) -> Evaluation:
    """Rank every case's candidates with each method and record the target's rank.

    ``knn`` gives the settings of the session-kNN methods (default: the papers');
    ``methods`` None scores every method the bundle has. ``candidates`` replaces the
    bundle's candidate settings for ``served``. With ``replay``, the method ``served_live``
    is ``served`` with the live co-visits of the held-out stream
    (:mod:`offline.evaluation.replay`), scored as well as ``methods``.
    """
    cases = cases_from_bundle(bundle, with_times=replay is not None)
    pools = np.asarray(bundle["pools"])[cases.current]
    chosen = list(available_methods(bundle) if methods is None else methods)
    ranks = {}
    for method in chosen:
        if method == "served":
            ranks[method] = served_ranks(bundle, cases, candidates=candidates)
        elif method not in KNN_METHODS:
            scores = method_scores(bundle, method, cases, pools)
            ranks[method] = target_ranks(scores, pools, cases.target)
    chosen_knn = {m: knn.get(m, p) for m, p in KNN_METHODS.items() if m in chosen}
    ranks |= all_knn_ranks(bundle, cases, chosen_knn)
    ranked = {m: ranks[m] for m in chosen if m in ranks}
    played = None
    if replay is not None:
        played = replay_served(bundle, cases, replay, candidates)
        ranked["served_live"] = played.ranks
    return Evaluation(cases, ranked, tuple(ks), bundle_conversion(bundle), played)
