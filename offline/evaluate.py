"""Top-K hit-ratio evaluation of pool rankings on the bundle's held-out days.

A *visit* is a run of consecutive clicks of one user on one item (a reload is not a new
visit). Each held-out visit that has a next visit by the same user is a click case: the
current item's pool is ranked by a method, and it is a hit at K when the next visited item
is in the top K. The case is also an add-to-cart case when the user added that next item to
cart at or after visiting it (on the held-out days).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from offline.interactions import CART, CLICK
from offline.metrics import Difference, paired_bootstrap, summarize, target_ranks
from recsvc.bundle import Bundle
from recsvc.scoring import candidate_scores, user_vectors

EVAL_ARRAYS = ("eval/users", "eval/items", "eval/types", "eval/ts", "eval/is_holdout")
#: Methods whose pool scores the pipeline stores in ``pool_scores/<method>``.
POOL_SCORE_METHODS = ("itemcf", "item2vec", "image", "pss")
PERSONALIZED_METHODS = ("personalized", "personalized_cart")
#: Comparisons reported with bootstrap intervals: (a, b, case set).
COMPARISONS = (
    ("personalized", "itemcf", "click"),
    ("personalized", "item2vec", "click"),
    ("personalized", "popular", "click"),
    ("personalized_cart", "personalized", "cart"),
    ("personalized_cart", "personalized", "click"),
)


@dataclass(frozen=True)
class Cases:
    """Evaluation cases.

    Attributes
    ----------
    users : int array, shape (n,)
    current, target : int32 arrays, shape (n,), the item viewed and the next one visited
    is_cart : bool array, shape (n,), the next item was added to cart
    windows : int32 array, shape (n, w), current item then earlier visits, -1 padded
    """

    users: np.ndarray
    current: np.ndarray
    target: np.ndarray
    is_cart: np.ndarray
    windows: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


def collapse_visits(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mask of clicks that start a visit (first click of a user, or a different item)."""
    start = np.ones(len(users), dtype=bool)
    start[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    return start


def build_cases(
    users: np.ndarray,
    items: np.ndarray,
    types: np.ndarray,
    ts: np.ndarray,
    is_holdout: np.ndarray,
    window: int = 8,
) -> Cases:
    """Click and add-to-cart cases from events sorted by (user, ts).

    Parameters
    ----------
    users, items, types, ts, is_holdout : arrays of shape (n_events,)
        Earlier (fit-period) events give the windows their history; cases come from
        held-out events only.
    """
    clicks = types == CLICK
    c_users, c_items, c_ts, c_hold = users[clicks], items[clicks], ts[clicks], is_holdout[clicks]
    start = collapse_visits(c_users, c_items)
    v_users, v_items, v_ts, v_hold = c_users[start], c_items[start], c_ts[start], c_hold[start]
    has_next = np.zeros(len(v_users), dtype=bool)
    has_next[:-1] = v_users[1:] == v_users[:-1]
    case = np.flatnonzero(v_hold & has_next)
    target, target_ts = v_items[case + 1], v_ts[case + 1]
    # Add-to-cart: the latest held-out cart of (user, item) is at or after the next visit.
    carts = (types == CART) & is_holdout
    n_items = int(max(items.max(initial=0), 0)) + 1
    cart_keys = users[carts].astype(np.int64) * n_items + items[carts]
    keys, inverse = np.unique(cart_keys, return_inverse=True)
    last_cart = np.full(len(keys), -np.inf)
    np.maximum.at(last_cart, inverse, ts[carts])
    wanted = v_users[case].astype(np.int64) * n_items + target
    if len(keys):
        slot = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        is_cart = (keys[slot] == wanted) & (last_cart[slot] >= target_ts)
    else:
        is_cart = np.zeros(len(case), dtype=bool)
    back = case[:, None] - np.arange(window)[None, :]
    inside = (back >= 0) & (v_users[np.maximum(back, 0)] == v_users[case][:, None])
    windows = np.where(inside, v_items[np.maximum(back, 0)], -1).astype(np.int32)
    return Cases(
        v_users[case], v_items[case].astype(np.int32), target.astype(np.int32), is_cart, windows
    )


def cases_from_bundle(bundle: Bundle) -> Cases:
    arrays = [np.asarray(bundle[name]) for name in EVAL_ARRAYS]
    window = int(bundle.manifest.get("parameters", {}).get("window", 8))
    return build_cases(*arrays, window=window)


def available_methods(bundle: Bundle) -> list[str]:
    methods = ["popular"]
    methods += [m for m in POOL_SCORE_METHODS if f"pool_scores/{m}" in bundle]
    methods += [m for m in PERSONALIZED_METHODS if f"models/{m}/position_weights" in bundle]
    return methods


def method_scores(bundle: Bundle, method: str, cases: Cases, pools: np.ndarray) -> np.ndarray:
    """Scores of each case's pool under ``method``: float array (n, pool size), -inf unscorable."""
    if method == "popular":
        popularity = np.asarray(bundle["item_popularity"], dtype=np.float64)
        scores = popularity[np.maximum(pools, 0)]
    elif method in POOL_SCORE_METHODS:
        scores = np.asarray(bundle[f"pool_scores/{method}"])[cases.current].astype(np.float64)
    elif method in PERSONALIZED_METHODS:
        prefix = f"models/{method}"
        known = np.asarray(bundle[f"{prefix}/known"])
        windows = np.where(cases.windows >= 0, cases.windows, 0)
        windows = np.where((cases.windows >= 0) & known[windows], cases.windows, -1)
        users = user_vectors(
            windows,
            np.asarray(bundle[f"{prefix}/input_embeddings"]),
            np.asarray(bundle[f"{prefix}/position_weights"]),
        )
        scores = candidate_scores(
            users, pools, np.asarray(bundle[f"{prefix}/output_embeddings"]), known
        ).astype(np.float64)
    else:
        raise ValueError(f"unknown method {method!r}")
    scores = np.where(np.isnan(scores) | (pools < 0), -np.inf, scores)
    return scores


@dataclass(frozen=True)
class Evaluation:
    """Per-case ranks of every method, and the summary in the JSON shape of ``recsvc eval``."""

    cases: Cases
    ranks: dict[str, np.ndarray]
    ks: tuple[int, ...]

    def result(self) -> dict[str, object]:
        cart = self.cases.is_cart
        methods: dict[str, dict[str, dict[str, float]]] = {}
        for method, ranks in self.ranks.items():
            methods[method] = {"click": summarize(ranks, self.ks)}
            if cart.any():
                methods[method]["cart"] = summarize(ranks[cart], self.ks)
        return {"cases": {"click": len(self.cases), "cart": int(cart.sum())}, "methods": methods}

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
            out.append(
                Difference(a, b, f"{subset} hr@{metric_k}", int(mask.sum()), value, low, high)
            )
        return out


def evaluate(
    bundle: Bundle, ks: Sequence[int] = (5, 10, 20), methods: Sequence[str] | None = None
) -> Evaluation:
    """Rank every case's pool with each method and record the target's rank."""
    cases = cases_from_bundle(bundle)
    pools = np.asarray(bundle["pools"])[cases.current]
    ranks = {}
    for method in methods or available_methods(bundle):
        scores = method_scores(bundle, method, cases, pools)
        ranks[method] = target_ranks(scores, pools, cases.target)
    return Evaluation(cases, ranks, tuple(ks))
