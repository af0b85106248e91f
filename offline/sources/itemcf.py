"""Item-to-item collaborative filtering: Jaccard of co-clicking users plus attribute Jaccard.

``sim(i, j) = alpha * Csim(i, j) + (1 - alpha) * Fsim(i, j)`` where ``Csim`` is the Jaccard
index of the sets of users who clicked ``i`` and ``j`` and ``Fsim`` the Jaccard index of the
items' attribute sets. Attributes live in a binary matrix ``A`` of shape
``(n_items, n_attribute_values)`` (one column per value of each attribute, e.g. one per
category), so adding brand or price bucket is adding columns; see :func:`attribute_matrix`.

Everything is sparse-matrix arithmetic over chunks of items: the co-occurrence counts of a
chunk are ``X_t[chunk] @ X`` with ``X`` the binary (user x item) click matrix, and chunks are
cut so that the number of (item, user, item) paths they expand stays under a budget. Memory
is therefore bounded by ``chunk_pairs`` however long the click log grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from offline.data.interactions import CLICK, Interactions
from offline.sources import ITEMCF
from offline.sources.base import CandidateSource, Neighbours
from recsvc.exceptions import ConfigError, DataError

#: Default budget of co-occurrence paths per chunk: about 100 bytes each, so ~100 MB; smaller
#: chunks stay in cache (faster), but each chunk also costs O(n_items) inside scipy.
DEFAULT_CHUNK_PAIRS = 1_000_000


def attribute_matrix(*columns: np.ndarray) -> sp.csr_array:
    """One-hot encode integer attribute columns into one binary attribute matrix.

    Parameters
    ----------
    *columns : int arrays, shape (n_items,)
        One array per attribute (category, brand, ...), values ``>= 0``; ``-1`` marks an
        unknown value, which contributes no attribute.

    Returns
    -------
    scipy.sparse.csr_array, int8, shape (n_items, n_attribute_values)
        Column blocks in the order of ``columns``; block ``b`` has ``max(columns[b]) + 1``
        columns. Rows have sorted indices.
    """
    if not columns:
        raise DataError("attribute_matrix needs at least one attribute column")
    n_items = len(columns[0])
    blocks = []
    for column in columns:
        values = np.asarray(column, dtype=np.int64)
        if values.shape != (n_items,):
            raise DataError(f"attribute columns must all have shape ({n_items},)")
        width = int(values.max(initial=-1)) + 1
        rows = np.flatnonzero(values >= 0)
        data = np.ones(len(rows), dtype=np.int8)
        blocks.append(sp.csr_array((data, (rows, values[rows])), shape=(n_items, width)))
    matrix = sp.hstack(blocks, format="csr")
    matrix.sort_indices()
    return matrix


def _chunk_bounds(weights: np.ndarray, budget: int) -> np.ndarray:
    """Cut ``range(len(weights))`` into contiguous chunks of about ``budget`` total weight.

    Parameters
    ----------
    weights : int array, shape (n,)
        Non-negative cost of each row.
    budget : int

    Returns
    -------
    int64 array, shape (n_chunks + 1,)
        Chunk ``c`` is ``[bounds[c], bounds[c + 1])``. A chunk exceeds ``budget`` by at most
        its first row's weight; every chunk holds at least one row.
    """
    n = len(weights)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    ends = np.cumsum(weights, dtype=np.int64)
    chunk_of_row = (ends - weights) // max(int(budget), 1)
    starts = np.flatnonzero(np.diff(chunk_of_row)) + 1
    return np.concatenate(([0], starts, [n])).astype(np.int64)


def _sorted_keys(matrix: sp.csr_array) -> np.ndarray:
    """Row-major keys ``row * n_cols + col`` of the stored entries, ascending.

    Parameters
    ----------
    matrix : csr_array, shape (n_rows, n_cols), with sorted indices

    Returns
    -------
    int64 array, shape (nnz,)
    """
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Values stored under ``query`` keys, 0 where a key is absent.

    Parameters
    ----------
    keys : int64 array, shape (m,), ascending
    values : array, shape (m,)
    query : int64 array, shape (n,)

    Returns
    -------
    array, shape (n,), dtype of ``values``
    """
    if len(keys) == 0:
        return np.zeros(len(query), dtype=values.dtype)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0)


def _row_overlap(
    matrix: sp.csr_array, keys: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """Number of columns that rows ``rows[p]`` and ``cols[p]`` of a binary matrix share.

    Parameters
    ----------
    matrix : csr_array, shape (n, m), binary with sorted indices
    keys : int64 array, shape (nnz,)
        ``_sorted_keys(matrix)``.
    rows, cols : int arrays, shape (p,)

    Returns
    -------
    int64 array, shape (p,)
    """
    starts = matrix.indptr[rows].astype(np.int64)
    lengths = matrix.indptr[rows + 1] - starts
    pair = np.repeat(np.arange(len(rows)), lengths)
    offset = np.arange(len(pair)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    columns = matrix.indices[starts[pair] + offset].astype(np.int64)
    wanted = cols[pair].astype(np.int64) * matrix.shape[1] + columns
    found = _lookup(keys, np.ones(len(keys), dtype=np.int64), wanted)
    return np.bincount(pair, weights=found, minlength=len(rows)).astype(np.int64)


class ItemCF(CandidateSource):
    """Item-CF similarity from training clicks and item attributes.

    Parameters
    ----------
    interactions : Interactions
        Training events; only clicks are used, and a user clicking an item several times
        counts once.
    item_category : int array, shape (n_items,)
        Category of each item, -1 when unknown.
    alpha : float
        Weight of the click Jaccard; ``1 - alpha`` goes to the attribute Jaccard.
    extra_attributes : sequence of int arrays, shape (n_items,)
        Further shown attributes (brand, price bucket, ...), -1 when unknown; each becomes
        a block of columns of the attribute matrix next to the category.
    chunk_pairs : int
        Budget of co-occurrence paths expanded per chunk; bounds memory, not the result.
    progress : bool or None
        tqdm ``disable`` is ``not progress``; None shows progress only on a terminal.

    Notes
    -----
    * Neighbours are only the items with at least one co-clicking user. Items that share
      just a category are left to the pool's same-category fill rule: adding them here
      would make every row of a big category dense.
    * ``Fsim`` is 0 when neither item has a known attribute (the Jaccard of two empty sets).
    * An item without training clicks has no ``Csim``; its pair scores are NaN so that
      evaluation treats it as unscorable instead of ranking it on attributes alone.
    """

    name = ITEMCF

    def __init__(
        self,
        interactions: Interactions,
        item_category: np.ndarray,
        *,
        alpha: float = 0.9,
        extra_attributes: Sequence[np.ndarray] = (),
        chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
        progress: bool | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"item-CF alpha must be in [0, 1], got {alpha}")
        n_items = interactions.n_items
        if len(item_category) != n_items:
            raise DataError(f"item_category has {len(item_category)} entries for {n_items} items")
        clicks = interactions.of_type(CLICK)
        ones = np.ones(len(clicks), dtype=np.int32)
        user_item = sp.csr_array(
            (ones, (clicks.users, clicks.items)), shape=(interactions.n_users, n_items)
        )
        user_item.sum_duplicates()
        user_item.data[:] = 1
        self._index(user_item, item_category, extra_attributes, alpha, chunk_pairs, progress)

    @classmethod
    def from_click_matrix(
        cls,
        user_item: sp.csr_array,
        item_category: np.ndarray,
        *,
        alpha: float,
        chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    ) -> ItemCF:
        """The item-CF of a binary (user x item) click matrix with sorted indices, such as
        another instance's :attr:`user_item`: how a Spark task rebuilds the driver's."""
        itemcf = cls.__new__(cls)
        itemcf._index(user_item, item_category, (), alpha, chunk_pairs, progress=False)
        return itemcf

    def _index(
        self,
        user_item: sp.csr_array,
        item_category: np.ndarray,
        extra_attributes: Sequence[np.ndarray],
        alpha: float,
        chunk_pairs: int,
        progress: bool | None,
    ) -> None:
        """Keep the settings, the click matrix and what the scores need of it and of the
        attributes."""
        self.alpha = float(alpha)
        self.chunk_pairs = int(chunk_pairs)
        self.progress = progress
        n_items = user_item.shape[1]
        #: binary click matrix, shape (n_users, n_items)
        self.user_item = user_item
        #: its transpose, shape (n_items, n_users), sorted indices
        self.item_user = sp.csr_array(user_item.T)
        self.item_user.sort_indices()
        #: distinct clicking users per item, int64 shape (n_items,)
        self.item_users = np.diff(self.item_user.indptr).astype(np.int64)
        #: binary attribute matrix, shape (n_items, n_attribute_values)
        self.attributes = attribute_matrix(item_category, *extra_attributes)
        self._attribute_keys = _sorted_keys(self.attributes)
        #: attributes per item, int64 shape (n_items,)
        self.item_attributes = np.diff(self.attributes.indptr).astype(np.int64)
        first = np.append(self.attributes.indices, -1)[self.attributes.indptr[:-1]]
        self._single_attribute = np.where(self.item_attributes == 1, first, -1)
        user_items = np.diff(user_item.indptr).astype(np.int64)
        #: co-occurrence paths per item (sum of its users' item counts), int64 (n_items,)
        self.item_paths = self.item_user @ user_items
        self.n_items = n_items

    def _similarity(self, rows: np.ndarray, cols: np.ndarray, co: np.ndarray) -> np.ndarray:
        """Exact ``sim`` for pairs with known co-click counts.

        Parameters
        ----------
        rows, cols : int arrays, shape (p,)
            Item pairs, both clicked in training.
        co : int array, shape (p,)
            Users who clicked both.

        Returns
        -------
        float64 array, shape (p,)
        """
        union = self.item_users[rows] + self.item_users[cols] - co
        csim = co / np.maximum(union, 1)
        shared = self._attribute_overlap(rows, cols)
        attr_union = self.item_attributes[rows] + self.item_attributes[cols] - shared
        fsim = np.where(attr_union > 0, shared / np.maximum(attr_union, 1), 0.0)
        return self.alpha * csim + (1.0 - self.alpha) * fsim

    def _attribute_overlap(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Attribute values shared by each pair, int64 array of shape (p,).

        Items with at most one attribute (the common case: a category only) take a fast
        path comparing that one column; the rest go through the sparse lookup.
        """
        single = self._single_attribute
        shared = ((single[rows] == single[cols]) & (single[rows] >= 0)).astype(np.int64)
        multi = (self.item_attributes[rows] > 1) | (self.item_attributes[cols] > 1)
        if multi.any():
            shared[multi] = _row_overlap(
                self.attributes, self._attribute_keys, rows[multi], cols[multi]
            )
        return shared

    def _co_occurrence(self, items: np.ndarray | slice) -> sp.csr_array:
        """Co-click counts of some items with every item.

        Returns
        -------
        csr_array, shape (len(items), n_items), sorted indices, int counts.
        """
        block = self.item_user[items] @ self.user_item
        block.sort_indices()
        return block

    def chunks(self) -> list[tuple[int, int]]:
        """The ``[start, stop)`` item ranges that :meth:`neighbours` ranks one at a time, each
        expanding about ``chunk_pairs`` co-occurrence paths."""
        return [
            (int(a), int(b)) for a, b in pairwise(_chunk_bounds(self.item_paths, self.chunk_pairs))
        ]

    def top_of_chunk(
        self, start: int, stop: int, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The top-``k`` neighbours of items ``start`` to ``stop - 1``, as flat arrays.

        Returns
        -------
        rows, ranks, cols : int64 arrays, shape (m,)
            Item, its neighbour's rank from 0, and the neighbour.
        scores : float32 array, shape (m,)
        """
        block = self._co_occurrence(slice(start, stop))
        local = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(block.indptr))
        rows = local + start
        cols = block.indices.astype(np.int64)
        co = block.data
        other = cols != rows
        local, rows, cols, co = local[other], rows[other], cols[other], co[other]
        score = self._similarity(rows, cols, co).astype(np.float32)
        # Sort by (row, score descending) on one int64 key: the bits of a non-negative
        # float32 order like its value. The stable sort keeps CSR's ascending column
        # order for equal scores, so ties go to the lower item index.
        descending = np.uint32(0xFFFFFFFF) - score.view(np.uint32)
        order = np.argsort((local << 32) | descending, kind="stable")
        local, cols, score = local[order], cols[order], score[order]
        per_row = np.bincount(local, minlength=stop - start)
        rank = np.arange(len(local)) - (np.cumsum(per_row) - per_row)[local]
        keep = rank < k
        return local[keep] + start, rank[keep], cols[keep], score[keep]

    def neighbours(self, k: int) -> Neighbours:
        """Top-``k`` co-clicked items of every item by ``sim``; equal scores: lower index first.

        Returns
        -------
        Neighbours with arrays of shape (n_items, k); rows of items without co-clicks are
        all padding.
        """
        out_items = np.full((self.n_items, k), -1, dtype=np.int32)
        out_scores = np.full((self.n_items, k), np.nan, dtype=np.float32)
        disable = None if self.progress is None else not self.progress
        chunks = tqdm(self.chunks(), desc="item-CF", unit="chunk", disable=disable)
        for start, stop in chunks:
            rows, ranks, cols, scores = self.top_of_chunk(start, stop, k)
            out_items[rows, ranks] = cols
            out_scores[rows, ranks] = scores
        return Neighbours(out_items, out_scores)

    def pair_scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact ``sim`` of each query to each candidate, top-k or not.

        Pairs without co-clicks get only the attribute part. The pair of an item with
        itself scores ``alpha + (1 - alpha) * Fsim(i, i)``.

        Parameters
        ----------
        queries : int array, shape (n,)
        candidates : int array, shape (n, c), -1 padded

        Returns
        -------
        float32 array, shape (n, c)
            NaN for padding and for any pair with an item that has no training clicks.
        """
        queries = np.asarray(queries, dtype=np.int64)
        candidates = np.asarray(candidates)
        n, c = candidates.shape
        out = np.full((n, c), np.nan, dtype=np.float32)
        seen = self.item_users > 0
        scorable = (queries >= 0) & (queries < self.n_items)
        scorable[scorable] = seen[queries[scorable]]
        rows = np.flatnonzero(scorable)
        if len(rows) == 0 or c == 0:
            return out
        # Group the rows by query item, so each distinct query's co-occurrence row is
        # computed once, in chunks of bounded (paths + pairs).
        unique_q, inverse = np.unique(queries[rows], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        rows, inverse = rows[order], inverse[order]
        rows_per_q = np.bincount(inverse, minlength=len(unique_q))
        bounds = _chunk_bounds(self.item_paths[unique_q] + rows_per_q * c, self.chunk_pairs)
        row_bounds = np.concatenate(([0], np.cumsum(rows_per_q)))[bounds]
        for b in range(len(bounds) - 1):
            chunk_rows = rows[row_bounds[b] : row_bounds[b + 1]]
            local_q = inverse[row_bounds[b] : row_bounds[b + 1]] - bounds[b]
            cand = candidates[chunk_rows].astype(np.int64)
            ok = (cand >= 0) & (cand < self.n_items)
            ok[ok] = seen[cand[ok]]
            local = np.broadcast_to(local_q[:, None], cand.shape)[ok]
            cand = cand[ok]
            block = self._co_occurrence(unique_q[bounds[b] : bounds[b + 1]])
            co = _lookup(_sorted_keys(block), block.data, local * self.n_items + cand)
            scores = np.full(ok.shape, np.nan, dtype=np.float32)
            scores[ok] = self._similarity(queries[chunk_rows][np.nonzero(ok)[0]], cand, co)
            out[chunk_rows] = scores
        return out
