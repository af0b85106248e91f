"""Weighted-pooling personalized scoring, shared by the server and offline evaluation.

The user vector for a window of recent items ``v_0`` (the current item), ``v_1`` ... is
``u = (1/n) * sum_j w_j * v_j`` over the ``n`` valid slots, with learned position weights
``w``; a candidate ``c`` scores ``u . o_c`` with the separate output embedding ``o``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def user_vectors(
    windows: np.ndarray, input_embeddings: np.ndarray, position_weights: np.ndarray
) -> np.ndarray:
    """Pool each window into a user vector.

    Parameters
    ----------
    windows : int array, shape (b, w)
        Item indices, slot 0 the current item, then older ones; -1 marks an empty slot
        (padding, or an item the model never saw).
    input_embeddings : float array, shape (n_items, d)
    position_weights : float array, shape (w_max,) with ``w_max >= w``

    Returns
    -------
    float32 array, shape (b, d); all zeros for a window with no valid slot.
    """
    windows = np.asarray(windows)
    valid = windows >= 0
    vectors = input_embeddings[np.where(valid, windows, 0)]  # (b, w, d)
    weights = position_weights[: windows.shape[1]] * valid  # (b, w)
    counts = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    pooled = np.einsum("bw,bwd->bd", weights, vectors) / counts
    return pooled.astype(np.float32, copy=False)


def candidate_scores(
    users: np.ndarray,
    candidates: np.ndarray,
    output_embeddings: np.ndarray,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """Dot-product scores of candidates for each user vector.

    Parameters
    ----------
    users : float array, shape (b, d)
    candidates : int array, shape (b, c), -1 padded
    output_embeddings : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
        Items the model was trained on; others score ``-inf``.

    Returns
    -------
    float32 array, shape (b, c); ``-inf`` for padding and unknown items.
    """
    candidates = np.asarray(candidates)
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    if known is not None:
        valid &= known[safe]
    scores = np.einsum("bd,bcd->bc", users, output_embeddings[safe]).astype(np.float32)
    scores[~valid] = -np.inf
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
