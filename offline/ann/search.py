"""Cosine neighbour search over item embeddings: annoy for scale, brute force to check it.

The annoy index uses the dense item index as its item id and holds only usable items (known,
finite, non-zero rows; see :func:`usable_rows`). Builds are deterministic: a fixed seed and a
single build thread. ``n_trees`` trades build time and index size for recall; ``search_k``
(nodes inspected per query, -1 = annoy's default of ``n_trees * n``) trades query time for
recall. :func:`recall_at_k` against :func:`exact_neighbours` on a sample of items is how to
pick them.

A catalogue too large for one index is split into partitions queried in parallel with the
per-partition top-k merged by a heap (PSS §3.2): :mod:`offline.ann.partitioned`.
"""

from __future__ import annotations

import numpy as np
from annoy import AnnoyIndex
from tqdm.auto import tqdm

from offline.sources.base import Neighbours
from recsvc.exceptions import DataError


def usable_rows(embeddings: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Rows that can take part in cosine search.

    Parameters
    ----------
    embeddings : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
        Items the embedding was trained on (all when omitted).

    Returns
    -------
    bool array, shape (n_items,)
        ``known`` and the row is finite with a non-zero norm (cosine is undefined otherwise).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise DataError(f"embeddings must be 2-D (n_items, d), got shape {embeddings.shape}")
    usable = np.isfinite(embeddings).all(axis=1) & (np.abs(embeddings).max(axis=1, initial=0) > 0)
    if known is not None:
        known = np.asarray(known, dtype=bool)
        if known.shape != (len(embeddings),):
            raise DataError(f"known has shape {known.shape}, expected ({len(embeddings)},)")
        usable &= known
    return usable


def unit_rows(embeddings: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """L2-normalized copy of the embeddings, zero rows where not usable.

    Parameters
    ----------
    embeddings : float array, shape (n_items, d)
    usable : bool array, shape (n_items,)

    Returns
    -------
    float32 array, shape (n_items, d)
    """
    unit = np.zeros(embeddings.shape, dtype=np.float32)
    rows = np.asarray(embeddings[usable], dtype=np.float64)
    unit[usable] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def build_index(
    embeddings: np.ndarray,
    known: np.ndarray | None = None,
    *,
    n_trees: int = 50,
    seed: int = 0,
    progress: bool | None = None,
) -> AnnoyIndex:
    """Build an angular annoy index over the usable rows.

    Parameters
    ----------
    embeddings : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
    n_trees : int
        More trees: higher recall, bigger index, slower build.
    seed : int
        Seed of annoy's random hyperplanes; same inputs and seed give the same index.
    progress : bool or None
        Show a tqdm bar while adding items (None: only on a terminal).

    Returns
    -------
    AnnoyIndex
        Item ids are the dense item indices; unusable items are absent.
    """
    usable = usable_rows(embeddings, known)
    index = AnnoyIndex(embeddings.shape[1], "angular")
    index.set_seed(seed)
    items = np.flatnonzero(usable)
    for item in tqdm(items, desc="annoy add", unit="item", disable=_disable(progress)):
        index.add_item(int(item), embeddings[item].tolist())
    index.build(n_trees, n_jobs=1)
    return index


def query_neighbours(
    index: AnnoyIndex,
    known: np.ndarray,
    k: int,
    *,
    items: np.ndarray | None = None,
    search_k: int = -1,
    progress: bool | None = None,
) -> Neighbours:
    """Approximate top-``k`` cosine neighbours from an annoy index.

    Parameters
    ----------
    index : AnnoyIndex
        From :func:`build_index`.
    known : bool array, shape (n_items,)
        The items in the index (``usable_rows`` of what it was built from).
    k : int
    items : int array, shape (m,), optional
        Items to query (default: every item in the index); other rows stay padding.
    search_k : int
        Annoy's nodes to inspect per query, -1 for its default.
    progress : bool or None

    Returns
    -------
    Neighbours with arrays of shape (n_items, k)
        Self excluded; score = cosine = ``1 - d**2 / 2`` for annoy's angular distance ``d``.
    """
    known = np.asarray(known, dtype=bool)
    out_items = np.full((len(known), k), -1, dtype=np.int32)
    out_scores = np.full((len(known), k), np.nan, dtype=np.float32)
    queries = np.flatnonzero(known) if items is None else np.asarray(items)
    queries = queries[known[queries]]
    for item in tqdm(queries, desc="annoy query", unit="item", disable=_disable(progress)):
        ids, distances = index.get_nns_by_item(
            int(item), k + 1, search_k=search_k, include_distances=True
        )
        found = [(j, d) for j, d in zip(ids, distances, strict=True) if j != item][:k]
        if found:
            ids_k, dist_k = zip(*found, strict=True)
            out_items[item, : len(found)] = ids_k
            out_scores[item, : len(found)] = 1.0 - np.square(dist_k) / 2.0
    np.clip(out_scores, -1.0, 1.0, out=out_scores)
    return Neighbours(out_items, out_scores)


def exact_neighbours(
    embeddings: np.ndarray,
    known: np.ndarray | None,
    k: int,
    items: np.ndarray | None = None,
    *,
    block_floats: int = 1 << 24,
) -> Neighbours:
    """Exact top-``k`` cosine neighbours by brute force, in blocks of queries.

    Parameters
    ----------
    embeddings : float array, shape (n_items, d)
    known : bool array, shape (n_items,), optional
    k : int
    items : int array, shape (m,), optional
        Items to query (default: every usable item); other rows stay padding.
    block_floats : int
        Size bound of one (queries x usable items) similarity block.

    Returns
    -------
    Neighbours with arrays of shape (n_items, k)
        Self excluded; equal scores go to the lower item index.
    """
    usable = usable_rows(embeddings, known)
    # float64 so that the ranking does not depend on how BLAS blocks the product.
    unit = unit_rows(embeddings, usable).astype(np.float64)
    pool = np.flatnonzero(usable)
    pool_unit = unit[pool]
    position = np.full(len(usable), -1, dtype=np.int64)
    position[pool] = np.arange(len(pool))
    out_items = np.full((len(usable), k), -1, dtype=np.int32)
    out_scores = np.full((len(usable), k), np.nan, dtype=np.float32)
    queries = pool if items is None else np.asarray(items, dtype=np.int64)
    queries = queries[usable[queries]]
    if len(queries) == 0 or k == 0:
        return Neighbours(out_items, out_scores)
    kk = min(k, len(pool))
    block = max(1, block_floats // max(len(pool), 1))
    for lo in range(0, len(queries), block):
        chunk = queries[lo : lo + block]
        sims = unit[chunk] @ pool_unit.T  # (b, n_pool)
        sims[np.arange(len(chunk)), position[chunk]] = -np.inf
        top = _top_columns(sims, kk)
        values = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -values), axis=-1)
        top = np.take_along_axis(top, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        real = np.isfinite(values)
        out_items[chunk, :kk] = np.where(real, pool[top], -1)
        out_scores[chunk, :kk] = np.where(real, np.clip(values, -1.0, 1.0), np.nan)
    return Neighbours(out_items, out_scores)


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` largest scores of each row, equal scores to the lower column.

    Parameters
    ----------
    scores : float array, shape (b, n), no NaN
    k : int, ``1 <= k <= n``

    Returns
    -------
    int64 array, shape (b, k), ascending column order within a row (not sorted by score).
    """
    b, n = scores.shape
    if k == n:
        return np.broadcast_to(np.arange(n), (b, n))
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (b, 1) k-th largest
    above = scores > kth
    at = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    take = above | (at & (np.cumsum(at, axis=1) <= room))
    return np.nonzero(take)[1].reshape(b, k)


def recall_at_k(
    approx: Neighbours, exact: Neighbours, items: np.ndarray, k: int | None = None
) -> float:
    """Mean share of each item's exact neighbours that the approximate search found.

    Parameters
    ----------
    approx, exact : Neighbours, arrays of shape (n_items, k_a) and (n_items, k_e)
    items : int array, shape (m,)
        The sampled query items.
    k : int, optional
        Compare only the first ``k`` columns of each (default: all).

    Returns
    -------
    float
        Mean over the items with at least one exact neighbour of
        ``|approx ∩ exact| / |exact|``; NaN when no item has one.
    """
    items = np.asarray(items, dtype=np.int64)
    found = approx.items[items, :k]
    truth = exact.items[items, :k]
    sizes = (truth >= 0).sum(axis=1)
    hits = np.zeros(len(items), dtype=np.int64)
    step = max(1, (1 << 24) // max(found.shape[1] * truth.shape[1], 1))
    for lo in range(0, len(items), step):
        f, t = found[lo : lo + step], truth[lo : lo + step]
        match = (f[:, :, None] == t[:, None, :]) & (t[:, None, :] >= 0)
        hits[lo : lo + step] = match.any(axis=1).sum(axis=1)
    scored = sizes > 0
    if not scored.any():
        return float("nan")
    return float(np.mean(hits[scored] / sizes[scored]))


def _disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag (None: show only on a terminal)."""
    return None if progress is None else not progress
