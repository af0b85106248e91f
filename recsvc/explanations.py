"""Why an item was recommended: the session events behind its personalized score.

The personalized score of candidate ``c`` is ``u . o_c`` with the user vector
``u = (1/n) * sum_j w_j * v_j`` (:mod:`recsvc.scoring`), so it splits exactly into one
term per window slot, ``w_j * (v_j . o_c) / n``. The earlier visits with the largest
positive terms are the explanation: "because you viewed X two clicks ago". Slot 0, the item
being viewed, is left out; it explains every answer alike. The second stage ranks with more
than this score, but the personalized score is among its features, and these terms are
what links an answer to the shopper's own clicks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Session events named per recommended item at most.
TOP_EVENTS = 2


@dataclass(frozen=True)
class Because:
    """One earlier visit behind a recommendation.

    Attributes
    ----------
    item_id : the item visited
    clicks_ago : 1 for the visit just before the current view, 2 for the one before, ...
    weight : its term of the item's personalized score (positive)
    """

    item_id: str
    clicks_ago: int
    weight: float


def window_terms(
    window: Sequence[int],
    items: np.ndarray,
    input_embeddings: np.ndarray,
    output_embeddings: np.ndarray,
    position_weights: np.ndarray,
) -> np.ndarray:
    """Each window slot's term of each item's personalized score.

    Parameters
    ----------
    window : ints, slot 0 the current item; -1 for an empty slot
    items : int array, shape (k,), bundle indices of the items to explain
    input_embeddings, output_embeddings : float32 arrays, shape (n_items, d)
    position_weights : float32 array, shape (>= len(window),)

    Returns
    -------
    float64 array, shape (len(window), k); zero rows for empty slots. Column sums are the
    items' scores (to rounding: the compiled scorer sums in float32).
    """
    slots = np.asarray(window, dtype=np.int64)
    valid = slots >= 0
    terms = np.zeros((len(slots), len(items)), dtype=np.float64)
    if not valid.any() or not len(items):
        return terms
    pooled = input_embeddings[slots[valid]].astype(np.float64)
    weights = position_weights[: len(slots)][valid].astype(np.float64)
    dots = pooled @ output_embeddings[np.asarray(items)].astype(np.float64).T
    terms[valid] = weights[:, None] * dots / valid.sum()
    return terms


def top_events(
    terms: np.ndarray, slot_items: Sequence[str], top: int = TOP_EVENTS
) -> list[list[Because]]:
    """Per item (column of ``terms``), the earlier visits with the largest positive terms.

    ``slot_items[j]`` is the id of window slot ``j``. An item visited more than once counts
    once, its terms summed, at its most recent visit; the item being viewed (slot 0) is not
    named, even where it was visited before. Ties go to the more recent visit.
    """
    current = slot_items[0] if slot_items else None
    explained: list[list[Because]] = []
    for column in terms.T:
        by_item: dict[str, tuple[float, int]] = {}
        for j in range(1, min(len(column), len(slot_items))):
            item = slot_items[j]
            if item != current:
                weight, latest = by_item.get(item, (0.0, j))
                by_item[item] = (weight + float(column[j]), latest)
        ranked = sorted(by_item.items(), key=lambda entry: (-entry[1][0], entry[1][1]))
        explained.append(
            [Because(item, latest, weight) for item, (weight, latest) in ranked[:top] if weight > 0]
        )
    return explained
