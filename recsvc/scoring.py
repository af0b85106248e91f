"""Weighted-pooling personalized scoring, shared by the server and offline evaluation.

Both score one case at a time with the same two functions, so a served ranking equals the
offline one to the last bit.

The user vector for a window of recent items ``v_0`` (the current item), ``v_1`` ... is
``u = (1/n) * sum_j w_j * v_j`` over the ``n`` valid slots, with learned position weights
``w``; a candidate ``c`` scores ``u . o_c`` with the separate output embedding ``o``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def user_vector(
    window: Sequence[int], input_embeddings: np.ndarray, position_weights: np.ndarray
) -> np.ndarray:
    """Pool one window into the user vector.

    Parameters
    ----------
    window : ints
        Item indices, slot 0 the current item, then older ones; -1 marks an empty slot
        (padding, or an item the model never saw).
    input_embeddings : float32 array, shape (n_items, d)
    position_weights : float32 array, shape (w_max,) with ``w_max >= len(window)``

    Returns
    -------
    float32 array, shape (d,); all zeros for a window with no valid slot.
    """
    slots = [slot for slot, item in enumerate(window) if item >= 0]
    if not slots:
        return np.zeros(input_embeddings.shape[1], dtype=np.float32)
    items = [window[slot] for slot in slots]
    pooled = position_weights[slots] @ input_embeddings[items]
    return (pooled / np.float32(len(slots))).astype(np.float32, copy=False)


def pool_scores(
    user: np.ndarray,
    pool: np.ndarray,
    output_embeddings: np.ndarray,
    scorable: np.ndarray | None = None,
) -> np.ndarray:
    """Dot-product scores of one pool's candidates for a user vector.

    Written for one request at a time, with as few numpy calls as the maths allows: on a
    busy server each call runs with cold caches, so calls, not flops, are the cost.

    Parameters
    ----------
    user : float32 array, shape (d,)
    pool : int array, shape (c,), -1 padded
    output_embeddings : float32 array, shape (n_items, d)
    scorable : bool array, shape (n_items,), optional
        Items the model can score; others get ``-inf``.

    Returns
    -------
    float32 array, shape (c,); ``-inf`` for padding and unscorable items.
    """
    valid = pool >= 0
    safe = np.where(valid, pool, 0)
    scores = (output_embeddings[safe] @ user).astype(np.float32, copy=False)
    if scorable is not None:
        valid &= scorable[safe]
    scores[~valid] = -np.inf
    return scores


def case_scores(
    windows: np.ndarray,
    pools: np.ndarray,
    input_embeddings: np.ndarray,
    output_embeddings: np.ndarray,
    position_weights: np.ndarray,
    scorable: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`pool_scores` of many cases, one by one, exactly as the server scores each.

    Parameters
    ----------
    windows : int array, shape (n, w), -1 for empty or unknown slots
    pools : int array, shape (n, c), -1 padded

    Returns
    -------
    float32 array, shape (n, c)
    """
    scores = np.empty(pools.shape, dtype=np.float32)
    for n, window in enumerate(np.asarray(windows).tolist()):
        user = user_vector(window, input_embeddings, position_weights)
        scores[n] = pool_scores(user, pools[n], output_embeddings, scorable)
    return scores


def session_window(current: T, history: Sequence[T], window: int) -> list[T]:
    """The items of one request's scoring window, as the offline cases build it.

    Parameters
    ----------
    current
        The item being viewed.
    history : sequence
        Items of the session's click and add-to-cart events, oldest first.
    window : int
        Slots of the window.

    Returns
    -------
    list of at most ``window`` items: ``current``, then the earlier *visits*, newest first.
    Runs of the same item are one visit, and a trailing visit of ``current`` is the current
    view itself, so it is not counted again.
    """
    visits: list[T] = []
    for item in history:
        if not visits or visits[-1] != item:
            visits.append(item)
    if visits and visits[-1] == current:
        visits.pop()
    return [current, *visits[::-1][: window - 1]]
