"""Verification metrics of product embeddings on held-out pairs (PSS Tables 1-3).

- *Recall at precision p*: pairs are called similar when their cosine is at least a
  threshold; over all thresholds whose precision is at least p, the highest recall.
- *NDCG@10 and MAP@30*: each held-out anchor's positive and negative partners are ranked
  by cosine; binary relevance (positive = 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from recsvc.exceptions import DataError


def pair_cosines(embeddings: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """float64 (m,): cosine of each pair's rows (0 where a row is all zero)."""
    a = np.asarray(embeddings[left], dtype=np.float64)
    b = np.asarray(embeddings[right], dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-12), 0.0)


def recall_at_precision(scores: np.ndarray, labels: np.ndarray, precision: float) -> float:
    """Highest recall over thresholds whose precision is at least ``precision``.

    Parameters
    ----------
    scores : float array, shape (m,), higher = more similar
    labels : int or bool array, shape (m,), 1 for a true pair
    precision : float in (0, 1]

    Returns
    -------
    float in [0, 1]; 0 when no threshold reaches the precision.
    """
    labels = np.asarray(labels).astype(bool)
    if len(scores) != len(labels):
        raise DataError(f"{len(scores)} scores for {len(labels)} labels")
    if not labels.any():
        raise DataError("recall needs at least one positive pair")
    order = np.argsort(-np.asarray(scores), kind="stable")
    sorted_scores, sorted_labels = np.asarray(scores)[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    called = np.arange(1, len(order) + 1)
    # A threshold can only sit where the score changes: the last index of each score run.
    ends = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    reaches = (true_pos / called >= precision) & ends
    if not reaches.any():
        return 0.0
    return float(true_pos[reaches].max() / labels.sum())


def ranking_metrics(
    anchors: np.ndarray, scores: np.ndarray, labels: np.ndarray, ks: tuple[int, int] = (10, 30)
) -> dict[str, float]:
    """Mean NDCG@ks[0] and MAP@ks[1] over anchors with at least one positive.

    Parameters
    ----------
    anchors : int array, shape (m,), the anchor of each pair
    scores, labels : arrays, shape (m,)
    """
    ndcg_k, map_k = ks
    ndcgs, aps = [], []
    order = np.lexsort((-np.asarray(scores), anchors))
    sorted_anchors = np.asarray(anchors)[order]
    sorted_labels = np.asarray(labels).astype(bool)[order]
    bounds = np.flatnonzero(np.r_[True, sorted_anchors[1:] != sorted_anchors[:-1], True])
    for start, stop in itertools.pairwise(bounds):
        rel = sorted_labels[start:stop]
        if not rel.any():
            continue
        gains = rel[:ndcg_k] / np.log2(np.arange(2, min(len(rel), ndcg_k) + 2))
        ideal = np.sort(rel)[::-1][:ndcg_k] / np.log2(np.arange(2, min(len(rel), ndcg_k) + 2))
        ndcgs.append(gains.sum() / ideal.sum())
        top = rel[:map_k]
        hits = np.cumsum(top)
        precisions = hits[top] / (np.flatnonzero(top) + 1)
        aps.append(precisions.sum() / min(rel.sum(), map_k))
    return {f"ndcg@{ndcg_k}": float(np.mean(ndcgs)), f"map@{map_k}": float(np.mean(aps))}


def verification_table(
    embeddings: dict[str, np.ndarray],
    left: np.ndarray,
    right: np.ndarray,
    labels: np.ndarray,
    precisions: Sequence[float] = (0.8, 0.9, 0.95),
) -> dict[str, dict[str, float]]:
    """Recall at each precision, NDCG@10 and MAP@30 of every named embedding on the pairs."""
    table = {}
    for name, matrix in embeddings.items():
        scores = pair_cosines(matrix, left, right)
        row = {
            f"recall@p{round(p * 100)}": recall_at_precision(scores, labels, p) for p in precisions
        }
        row.update(ranking_metrics(left, scores, labels))
        table[name] = row
    return table
