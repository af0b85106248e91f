"""Ranking metrics from the rank of the one relevant item, and paired bootstrap intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Rank given to a target that is not in the ranked list at all.
MISS = np.iinfo(np.int64).max


def target_ranks(scores: np.ndarray, candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target among its candidates; ``MISS`` where it is absent.

    Candidates are ordered by score, highest first; equal scores keep the candidates'
    own order (the pool's offline order), so ties are broken the same way everywhere.

    Parameters
    ----------
    scores : float array, shape (n, c); ``-inf`` for candidates the method cannot score
    candidates : int array, shape (n, c), -1 padded
    targets : int array, shape (n,)

    Returns
    -------
    int64 array, shape (n,)
    """
    found = candidates == targets[:, None]
    present = found.any(axis=1)
    position = found.argmax(axis=1)
    rows = np.arange(len(targets))
    target_score = scores[rows, position][:, None]
    columns = np.arange(candidates.shape[1])[None, :]
    valid = candidates >= 0
    ahead = valid & (
        (scores > target_score) | ((scores == target_score) & (columns < position[:, None]))
    )
    ranks = ahead.sum(axis=1).astype(np.int64) + 1
    ranks[~present] = MISS
    return ranks


def hit_ratio(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per case: 1.0 when the target is in the top ``k``."""
    return (ranks <= k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per case NDCG@k with one relevant item: ``1 / log2(rank + 1)`` inside the top k."""
    inside = ranks <= k
    gains = np.zeros(len(ranks))
    gains[inside] = 1.0 / np.log2(ranks[inside] + 1.0)
    return gains


def reciprocal_rank(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per case reciprocal rank, 0 outside the top ``k`` (MRR@k once averaged)."""
    inside = ranks <= k
    values = np.zeros(len(ranks))
    values[inside] = 1.0 / ranks[inside]
    return values


def summarize(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``hr@k`` for each k, ``ndcg@10``, ``mrr@20`` and ``coverage`` (targets in the ranked
    candidates: the ceiling of every hit ratio) as fractions in [0, 1]."""
    out = {f"hr@{k}": float(hit_ratio(ranks, k).mean()) for k in ks}
    out["ndcg@10"] = float(ndcg(ranks, 10).mean())
    out["mrr@20"] = float(reciprocal_rank(ranks, 20).mean())
    out["coverage"] = float((ranks != MISS).mean())
    return out


@dataclass(frozen=True)
class Difference:
    """``metric(a) - metric(b)`` with a 95 % bootstrap interval."""

    a: str
    b: str
    metric: str
    cases: int
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "cases": self.cases,
            "diff": self.value,
            "ci95": [self.low, self.high],
        }


def paired_bootstrap(
    per_case_a: np.ndarray,
    per_case_b: np.ndarray,
    clusters: np.ndarray,
    *,
    rounds: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Difference of means of two per-case metrics with a 95 % percentile interval.

    Cases of one user are not independent, so whole clusters (users) are resampled.

    Parameters
    ----------
    per_case_a, per_case_b : float arrays, shape (n,), the same cases under two methods
    clusters : int array, shape (n,), the user of each case

    Returns
    -------
    (difference, low, high)
    """
    if len(per_case_a) == 0:
        return float("nan"), float("nan"), float("nan")
    _, cluster = np.unique(clusters, return_inverse=True)
    n_clusters = int(cluster.max()) + 1
    diff_sum = np.bincount(cluster, weights=per_case_a - per_case_b, minlength=n_clusters)
    case_count = np.bincount(cluster, minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    samples = np.empty(rounds)
    step = max(1, (1 << 22) // n_clusters)  # resamples per block: about 32 MiB of picks
    for start in range(0, rounds, step):
        picks = rng.integers(0, n_clusters, size=(min(step, rounds - start), n_clusters))
        samples[start : start + len(picks)] = diff_sum[picks].sum(axis=1) / case_count[picks].sum(
            axis=1
        )
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(diff_sum.sum() / case_count.sum()), float(low), float(high)
