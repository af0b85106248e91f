"""Weighted-pooling personalized scoring, shared by the server and offline evaluation.

The user vector for a window of recent items ``v_0`` (the current item), ``v_1`` ... is
``u = (1/n) * sum_j w_j * v_j`` over the ``n`` valid slots, with learned position weights
``w``; a candidate ``c`` scores ``u . o_c`` with the separate output embedding ``o``.
"""

from __future__ import annotations

import numpy as np


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
