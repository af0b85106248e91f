"""Candidate pools: up to ``size`` similar items per item, merged from every source.

Similarity sources are interleaved by weight (a source of weight 2 gets two places for
every one of a source of weight 1), duplicates are dropped, and each candidate keeps a
bit for every source that proposed it. Short pools are then filled by business rules:
items of the same category (most popular first), then the most recently first-seen items,
so items with no behaviour yet (new in the catalogue) are still reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from offline.data.interactions import Catalogue
from offline.sources.base import Neighbours
from recsvc.contract import SOURCE_BITS

RULES = ("category", "new")
#: Key offset that puts each rule after everything before it.
TIER = 1e9


@dataclass(frozen=True)
class Pools:
    """Merged candidate pools.

    Attributes
    ----------
    items : int32 array, shape (n_items, size), -1 padded, best first
    sources : uint8 array, shape (n_items, size), OR of ``SOURCE_BITS`` per candidate
    """

    items: np.ndarray
    sources: np.ndarray

    def source_counts(self) -> dict[str, int]:
        """How many pool entries each source or rule proposed."""
        return {name: int(((self.sources & bit) > 0).sum()) for name, bit in SOURCE_BITS.items()}


def category_top(catalogue: Catalogue, popularity: np.ndarray, size: int) -> np.ndarray:
    """The ``size + 1`` most popular items of each category (ties: newer first).

    Returns
    -------
    int32 array, shape (n_categories + 1, size + 1), -1 padded; the last row (unknown
    category) is empty.
    """
    n = catalogue.n_items
    cats = catalogue.item_category
    order = np.lexsort((-catalogue.first_seen, -popularity, cats))  # by category, then rank
    sorted_cats = cats[order]
    starts = np.searchsorted(sorted_cats, sorted_cats, side="left")
    rank = np.arange(n) - starts
    width = size + 1
    n_cats = len(catalogue.category_names)
    top = np.full((n_cats + 1, width), -1, dtype=np.int32)
    keep = (rank < width) & (sorted_cats >= 0)
    top[sorted_cats[keep], rank[keep]] = order[keep]
    return top


def category_fill(catalogue: Catalogue, popularity: np.ndarray, size: int) -> Neighbours:
    """Per item, the ``size + 1`` most popular items of its category (ties: newer first).

    Returns
    -------
    Neighbours with ``items`` of shape (n_items, size + 1); scores are the popularity.
    """
    cats = catalogue.item_category
    top = category_top(catalogue, popularity, size)
    items = top[np.where(cats >= 0, cats, len(top) - 1)]  # unknown category: no rule
    scores = np.where(items >= 0, popularity[np.maximum(items, 0)], np.nan).astype(np.float32)
    return Neighbours(items, scores)


def newest_items(catalogue: Catalogue, size: int) -> np.ndarray:
    """The ``size + 1`` most recently first-seen items (int32), newest first."""
    return np.argsort(-catalogue.first_seen, kind="stable")[: size + 1].astype(np.int32)


def newest_fill(catalogue: Catalogue, size: int) -> Neighbours:
    """The ``size + 1`` most recently first-seen items, the same list for every item."""
    newest = newest_items(catalogue, size)
    items = np.broadcast_to(newest, (catalogue.n_items, len(newest)))
    scores = np.broadcast_to(catalogue.first_seen[newest].astype(np.float32), items.shape)
    return Neighbours(items, scores)


def merge_pools(
    sources: Mapping[str, Neighbours],
    weights: Mapping[str, float],
    rules: Mapping[str, Neighbours],
    size: int = 200,
    chunk_rows: int = 8192,
) -> Pools:
    """Interleave the similarity sources by weight, then fill short pools with the rules.

    A candidate's flags name every similarity source that proposed it; a rule's bit marks
    only the entries that rule added (candidates no source proposed).

    Parameters
    ----------
    sources : name -> Neighbours of shape (n_items, k_s), in a fixed order
    weights : name -> positive weight, one per source
    rules : name -> Neighbours, applied in order after all sources (``RULES`` names)
    size : pool length

    Returns
    -------
    Pools of shape (n_items, size); an item never appears in its own pool.
    """
    unknown = set(sources) - set(weights)
    if unknown:
        raise ValueError(f"no weight for sources {sorted(unknown)}")
    similar = [(name, n, weights[name], 0) for name, n in sources.items()]
    filling = [(name, n, 1.0, t + 1) for t, (name, n) in enumerate(rules.items())]
    n_items = next(iter(n.items.shape[0] for _, n, _, _ in similar + filling))
    items = np.full((n_items, size), -1, dtype=np.int32)
    flags = np.zeros((n_items, size), dtype=np.uint8)

    def merge(tiers: list[tuple[str, Neighbours, float, int]], rows: np.ndarray) -> None:
        for begin in range(0, len(rows), chunk_rows):
            chunk = rows[begin : begin + chunk_rows]
            items[chunk], flags[chunk] = _merge_rows(tiers, chunk, size)

    # Most pools are full from the sources alone; only the short ones pay for the rules.
    merge(similar, np.arange(n_items))
    merge(similar + filling, np.flatnonzero(items[:, -1] < 0))
    return Pools(items, flags)


def _merge_rows(
    tiers: list[tuple[str, Neighbours, float, int]], rows: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merged pools of the given rows: int32 items and uint8 flags, shape (len(rows), size)."""
    if not tiers:
        return np.full((len(rows), size), -1, np.int32), np.zeros((len(rows), size), np.uint8)
    slots, cands, keys, bits = [], [], [], []
    for order, (name, neighbours, weight, tier) in enumerate(tiers):
        block = np.asarray(neighbours.items[rows])
        r, rank = np.nonzero(block >= 0)
        slots.append(r)
        cands.append(block[r, rank].astype(np.int64))
        # Weighted round robin: the n-th pick of a source lands at n / weight; the source's
        # position in the list breaks ties, so merging is deterministic.
        keys.append(tier * TIER + (rank + 1) / weight + order * 1e-6)
        bits.append(np.full(len(r), SOURCE_BITS[name], dtype=np.uint8))
    slot = np.concatenate(slots)
    cand = np.concatenate(cands)
    key = np.concatenate(keys)
    bit = np.concatenate(bits)
    valid = cand != rows[slot]
    slot, cand, key, bit = slot[valid], cand[valid], key[valid], bit[valid]
    # One entry per (row, candidate): the best key; the flags of every source proposing it,
    # or the bit of the rule that added it when no source did.
    pair = slot * (int(cand.max(initial=0)) + 1) + cand
    by_pair = np.lexsort((key, pair))
    pair, slot, cand, key, bit = (a[by_pair] for a in (pair, slot, cand, key, bit))
    first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    from_sources = np.where(key < TIER, bit, 0).astype(np.uint8)
    merged = np.bitwise_or.reduceat(from_sources, first) if len(first) else bit[:0]
    merged = np.where(merged > 0, merged, bit[first])
    slot, cand, key = slot[first], cand[first], key[first]
    by_rank = np.lexsort((key, slot))
    slot, cand, merged = slot[by_rank], cand[by_rank], merged[by_rank]
    position = np.arange(len(slot)) - np.searchsorted(slot, slot, side="left")
    keep = position < size
    out_items = np.full((len(rows), size), -1, dtype=np.int32)
    out_bits = np.zeros((len(rows), size), dtype=np.uint8)
    out_items[slot[keep], position[keep]] = cand[keep]
    out_bits[slot[keep], position[keep]] = merged[keep]
    return out_items, out_bits


#: Rows sorted at a time by :func:`order_pools`.
ORDER_BLOCK = 65536


def order_pools(
    pools: Pools, scores: dict[str, np.ndarray], by: str
) -> tuple[Pools, dict[str, np.ndarray]]:
    """Each pool sorted by the ``pool_scores`` of source ``by`` (best first; candidates it
    does not score keep their merge order after the ones it does), with every score array
    moved along, in place (no second copy of the pools). This stored order is what a
    fallback answer returns.
    """
    arrays = (pools.items, pools.sources, *scores.values())
    for lo in range(0, len(pools.items), ORDER_BLOCK):  # blocks bound the argsort's int64s
        rows = slice(lo, lo + ORDER_BLOCK)
        key = np.where(np.isnan(scores[by][rows]), -np.inf, scores[by][rows])
        order = np.argsort(-key, axis=1, kind="stable")
        for array in arrays:
            array[rows] = np.take_along_axis(array[rows], order, axis=1)
    return pools, scores
