"""Cosine neighbour search over a catalogue split into partitions, one annoy index each (PSS §3.2).

The catalogue is split into ``P`` partitions (contiguous ranges of the dense item index, or a
given partition id per item) and each gets an angular annoy index from
:func:`offline.ann.search.build_index` over its rows: annoy id ``j`` of partition ``p`` is
global item ``members[p][j]``. :func:`query_partitioned` asks every partition for its best ``fetch``
candidates of each query (one worker process per partition, the ``.ann`` file mmap-loaded in
the worker), maps them to global ids and heap-merges the per-partition lists
(:func:`merge_top_k`) into the global top ``k`` by cosine, the query item excluded, shaped like
:func:`offline.ann.search.query_neighbours`' answer.

Attribute post-filter: with key attributes per item (e.g. a category id), candidates whose
attributes differ from the query item's are dropped before the merge truncates to ``k``. Each
partition then returns ``k * overfetch + 1`` candidates so that usually ``k`` survive; a query
whose category is rarer than that gets a short row (-1 padded), never other-category items.
Raise ``overfetch`` until recall against a filtered exact search is good enough.

Saved layout, read by the worker processes: ``part-PPP.ann`` and ``part-PPP.items.npy``
(members) per partition.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from tqdm.auto import tqdm

from offline.ann.search import build_index, usable_rows
from offline.sources.base import Neighbours
from recsvc.exceptions import ConfigError, DataError

#: Per-partition over-fetch factor when an attribute post-filter is given and none is set.
FILTER_OVERFETCH = 4

#: (ids, scores) of one partition for a batch of queries, shape (m, fetch) each.
Candidates = tuple[np.ndarray, np.ndarray]


@dataclass
class PartitionedIndex:
    """Annoy indexes over the partitions of one catalogue.

    Attributes
    ----------
    members : tuple of P int64 arrays, shape (n_p,) each
        Global item index of each partition row (= annoy id); disjoint, covering every item.
    usable : bool array, shape (n_items,)
        Items present in some index (see :func:`offline.ann.search.usable_rows`).
    dim, n_trees, seed : int
    directory : Path or None
        Where the indexes are saved; process workers need it.
    """

    members: tuple[np.ndarray, ...]
    usable: np.ndarray
    dim: int
    n_trees: int
    seed: int
    directory: Path | None = None
    _indexes: list[AnnoyIndex | None] = field(default_factory=list, repr=False)

    @property
    def n_partitions(self) -> int:
        return len(self.members)

    def index(self, p: int) -> AnnoyIndex:
        """Annoy index of partition ``p`` (mmap-loaded from ``directory`` on first use)."""
        annoy = self._indexes[p]
        if annoy is None:
            annoy = self._indexes[p] = _load_index(self.saved_in(), p, self.dim)
        return annoy

    def saved_in(self) -> Path:
        """The directory of the saved indexes; ConfigError when the index is in memory only."""
        if self.directory is None:
            msg = "partitioned index not saved: build it with directory=, or query with workers=0"
            raise ConfigError(msg)
        return self.directory


def partition_members(
    n_items: int, n_partitions: int | None = None, partition_ids: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """Global item indices of each partition.

    Parameters
    ----------
    n_items : int
    n_partitions : int, optional
        Number of contiguous, near-equal ranges; with ``partition_ids``, the number of
        partitions (default ``partition_ids.max() + 1``). ``1 <= P <= n_items``.
    partition_ids : int array, shape (n_items,), optional
        Partition of each item, in ``[0, P)``.

    Returns
    -------
    tuple of P int64 arrays, ascending item indices each
    """
    if partition_ids is None:
        if n_partitions is None:
            raise ConfigError("give n_partitions or partition_ids")
        _check_count(n_partitions, n_items)
        return tuple(np.array_split(np.arange(n_items, dtype=np.int64), n_partitions))
    ids = np.asarray(partition_ids)
    if ids.shape != (n_items,) or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"partition_ids must be ints, shape ({n_items},); got {ids.shape}")
    count = n_partitions if n_partitions is not None else int(ids.max(initial=0)) + 1
    _check_count(count, n_items)
    if ids.min() < 0 or ids.max() >= count:
        raise DataError(f"partition_ids must lie in [0, {count}), got {ids.min()}..{ids.max()}")
    order = np.argsort(ids, kind="stable").astype(np.int64)
    return tuple(np.split(order, np.searchsorted(ids[order], np.arange(1, count))))


def build_partitioned(
    embeddings: np.ndarray,
    usable: np.ndarray | None = None,
    *,
    n_partitions: int | None = None,
    partition_ids: np.ndarray | None = None,
    n_trees: int = 50,
    seed: int = 0,
    directory: str | Path | None = None,
    progress: bool | None = None,
) -> PartitionedIndex:
    """Build one angular annoy index per partition, and save them if asked.

    Parameters
    ----------
    embeddings : float array, shape (n_items, d)
    usable : bool array, shape (n_items,), optional
        Items to index (non-finite and zero rows are dropped too).
    n_partitions, partition_ids
        See :func:`partition_members`.
    n_trees, seed : int
        As in :func:`offline.ann.search.build_index`, for every partition.
    directory : str or Path, optional
        Save the indexes there (created if missing); process workers query saved indexes.
    progress : bool or None

    Returns
    -------
    PartitionedIndex
    """
    embeddings = np.asarray(embeddings)
    usable = usable_rows(embeddings, usable)
    members = partition_members(len(embeddings), n_partitions, partition_ids)
    out = Path(directory) if directory is not None else None
    result = PartitionedIndex(members, usable, embeddings.shape[1], n_trees, seed, out)
    if out is not None:
        _save_members(result)
    for p, rows in enumerate(tqdm(members, "annoy partitions", disable=_off(progress))):
        annoy = build_index(
            embeddings[rows], usable[rows], n_trees=n_trees, seed=seed, progress=False
        )
        if out is not None:
            annoy.save(str(_ann_path(out, p)))  # annoy then serves from the file (mmap)
        result._indexes.append(annoy)
    return result


def query_partitioned(
    index: PartitionedIndex,
    embeddings: np.ndarray,
    k: int,
    *,
    items: np.ndarray | None = None,
    search_k: int = -1,
    workers: int | None = None,
    attributes: np.ndarray | None = None,
    overfetch: int | None = None,
    batch: int = 2048,
    progress: bool | None = None,
) -> Neighbours:
    """Approximate top-``k`` cosine neighbours, merged over every partition.

    Parameters
    ----------
    index : PartitionedIndex
    embeddings : float array, shape (n_items, d)
        The vectors the index was built from (queries are their rows).
    k : int
    items : int array, shape (m,), optional
        Items to query (default: every usable item); other rows stay padding.
    search_k : int
        Annoy's nodes to inspect per query and partition, -1 for its default.
    workers : int or None
        Worker processes (None: ``min(P, os.cpu_count())``, needs a saved index); 0 queries
        in this process.
    attributes : array, shape (n_items,) or (n_items, a), optional
        Key attributes; a candidate is kept only if all of them equal the query item's.
    overfetch : int or None
        Each partition returns ``k * overfetch + 1`` candidates (None: 1 without a filter,
        :data:`FILTER_OVERFETCH` with one).
    batch : int
        Queries per round; memory is bounded by ``batch * P * fetch`` candidates.
    progress : bool or None

    Returns
    -------
    Neighbours with arrays of shape (n_items, k)
        int32 items (-1 padded) and float32 cosines (NaN padded), best first, equal scores
        to the lower item index; self excluded.
    """
    embeddings = np.asarray(embeddings)
    n_items = len(index.usable)
    if embeddings.shape != (n_items, index.dim):
        raise DataError(f"embeddings of shape {embeddings.shape}, index ({n_items}, {index.dim})")
    if k < 0 or batch < 1 or (overfetch is not None and overfetch < 1):
        raise ConfigError(f"need k >= 0, batch >= 1, overfetch >= 1; got {k}, {batch}, {overfetch}")
    keys = None if attributes is None else np.asarray(attributes)
    if keys is not None and (keys.ndim not in (1, 2) or len(keys) != n_items):
        raise DataError(
            f"attributes of shape {keys.shape}, expected ({n_items},) or ({n_items}, a)"
        )
    if keys is not None and keys.ndim == 1:
        keys = keys[:, None]
    fetch = k * (overfetch or (1 if keys is None else FILTER_OVERFETCH)) + 1
    queries = np.flatnonzero(index.usable) if items is None else np.asarray(items, dtype=np.int64)
    if queries.ndim != 1 or ((queries < 0) | (queries >= n_items)).any():
        raise DataError(f"query items must be a 1-D array of indices in [0, {n_items})")
    queries = queries[index.usable[queries]]
    workers = min(index.n_partitions, os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    directory = index.saved_in() if workers else None  # ConfigError if not saved
    out_items = np.full((n_items, k), -1, dtype=np.int32)
    out_scores = np.full((n_items, k), np.nan, dtype=np.float32)
    with _pool(workers) if workers else contextlib.nullcontext() as pool:
        starts = range(0, len(queries) if k else 0, batch)
        for lo in tqdm(starts, "partitioned query", unit="batch", disable=_off(progress)):
            chunk = queries[lo : lo + batch]
            vectors = np.asarray(embeddings[chunk], dtype=np.float32)
            if pool is None:
                parts = enumerate(index.members)
                blocks = [_search(index.index(p), m, vectors, fetch, search_k) for p, m in parts]
            else:
                args = (directory, index.dim, vectors, fetch, search_k)
                futures = [pool.submit(_search_saved, p, *args) for p in range(index.n_partitions)]
                blocks = [future.result() for future in futures]
            out_items[chunk], out_scores[chunk] = _merge_batch(chunk, blocks, k, keys)
    return Neighbours(out_items, out_scores)


def merge_top_k(lists: Sequence[Iterable[tuple[float, int]]], k: int) -> list[tuple[float, int]]:
    """Heap-merge per-partition ranked lists into the global top ``k``.

    Parameters
    ----------
    lists : sequence of P iterables of (score, item) pairs
        Each sorted best first: score descending, equal scores by item ascending.
    k : int

    Returns
    -------
    list of at most ``k`` (score, item) pairs, in the same order
    """
    return list(islice(heapq.merge(*lists, key=_rank), k))


def same_attributes(queries: np.ndarray, candidates: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which candidates share every key attribute with their query item.

    Parameters
    ----------
    queries : int array, shape (m,)
    candidates : int array, shape (m, c), -1 padded
    keys : array, shape (n_items, a)

    Returns
    -------
    bool array, shape (m, c); False at padding
    """
    real = candidates >= 0
    equal = keys[np.where(real, candidates, 0)] == keys[queries][:, None, :]  # (m, c, a)
    return real & equal.all(axis=-1)


def _rank(pair: tuple[float, int]) -> tuple[float, int]:
    return -pair[0], pair[1]


def _search(
    annoy: AnnoyIndex, members: np.ndarray, vectors: np.ndarray, fetch: int, search_k: int
) -> Candidates:
    """One partition's best ``fetch`` for query vectors (m, d): global int64 ids (-1 padded)
    and float32 cosines (NaN padded), (m, fetch) each, sorted as :func:`merge_top_k` needs."""
    ids = np.full((len(vectors), fetch), -1, dtype=np.int64)
    scores = np.full((len(vectors), fetch), np.nan, dtype=np.float32)
    for row, vector in enumerate(vectors.tolist()):
        local, distances = annoy.get_nns_by_vector(vector, fetch, search_k, include_distances=True)
        if local:
            found = np.asarray(members[np.asarray(local)], dtype=np.int64)
            cos = np.clip(1.0 - np.square(distances) / 2.0, -1.0, 1.0).astype(np.float32)
            order = np.lexsort((found, -cos))
            ids[row, : len(found)] = found[order]
            scores[row, : len(found)] = cos[order]
    return ids, scores


def _search_saved(
    p: int, directory: Path, dim: int, vectors: np.ndarray, fetch: int, search_k: int
) -> Candidates:
    """:func:`_search` in a worker process over partition ``p``'s saved files (mmap)."""
    members = np.load(_items_path(directory, p), mmap_mode="r")
    return _search(_load_index(directory, p, dim), members, vectors, fetch, search_k)


def _merge_batch(
    queries: np.ndarray, blocks: list[Candidates], k: int, keys: np.ndarray | None
) -> Candidates:
    """Drop self and filtered candidates, heap-merge each query's lists: (m, k) each."""
    items = np.full((len(queries), k), -1, dtype=np.int32)
    scores = np.full((len(queries), k), np.nan, dtype=np.float32)
    lists = []
    for ids, cos in blocks:
        keep = (ids >= 0) & (ids != queries[:, None])
        if keys is not None:
            keep &= same_attributes(queries, ids, keys)
        rows = zip(ids, cos, keep, strict=True)
        lists.append([list(zip(c[m].tolist(), i[m].tolist(), strict=True)) for i, c, m in rows])
    for row in range(len(queries)):
        top = merge_top_k([part[row] for part in lists], k)
        if top:
            scores[row, : len(top)], items[row, : len(top)] = zip(*top, strict=True)
    return items, scores


def _load_index(directory: Path, p: int, dim: int) -> AnnoyIndex:
    annoy = AnnoyIndex(dim, "angular")
    try:
        annoy.load(str(_ann_path(directory, p)))
    except OSError as exc:
        raise DataError(f"cannot load partition {p} from {directory}: {exc}") from exc
    return annoy


def _save_members(index: PartitionedIndex) -> None:
    directory = index.saved_in()
    directory.mkdir(parents=True, exist_ok=True)
    for p, members in enumerate(index.members):
        np.save(_items_path(directory, p), members)


def _check_count(n_partitions: int, n_items: int) -> None:
    if not 1 <= n_partitions <= n_items:
        raise ConfigError(f"need 1 <= partitions <= n_items ({n_items}), got {n_partitions}")


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: workers start clean (no forked threads or parent state) on every platform.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _ann_path(directory: Path, p: int) -> Path:
    return directory / f"part-{p:03d}.ann"


def _items_path(directory: Path, p: int) -> Path:
    return directory / f"part-{p:03d}.items.npy"


def _off(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
