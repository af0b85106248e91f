"""Item-CF neighbours on Spark: tasks that each rank a block of the co-occurrence matrix.

The co-occurrence counts are ``C = X.T @ X`` with ``X`` the binary (user x item) click
matrix: the self-join of the clicks on the user, summed per pair. :class:`SparkItemCF` cuts
the items into the local engine's chunks (each expands about ``chunk_pairs`` paths), and
Spark tasks, with the click matrix broadcast to the executors, compute each chunk's rows of
``C``, score them and keep their top ``k``. Only those ``n_items x k`` rows leave the
executors. A self-join with a row per (user, item, item) instead shuffles every co-clicked
pair: at 64M events it took two hours on this 2-core machine and 41 GiB of scratch disk
(docs/BENCHMARKS.md). Each task runs the local engine's own
:meth:`~offline.sources.itemcf.ItemCF.top_of_chunk`, so the neighbours and their float32
scores are the local engine's bits.

What bounds it: every executor's Python worker holds the click matrix and its transpose,
16 bytes per distinct (user, item) click, and the executors need recsvc installed. The pair
scores of the pools (:meth:`ItemCF.pair_scores`) stay local: they look up only
``n_items x pool_size`` pairs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from offline.data.interactions import Interactions
from offline.sources.base import Neighbours
from offline.sources.itemcf import ItemCF

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import SparkSession

#: Tasks per core of the session's default parallelism: a few, so a slow task is not the
#: stage's tail, and so a cluster's executors share the chunks evenly.
TASKS_PER_CORE = 4

#: The item-CF that a Python worker rebuilt from a broadcast, by the broadcast's token: a
#: worker runs many tasks, and rebuilding costs a transpose of the click matrix. Spark
#: stops a worker that has been idle for a minute, and the memory goes with it.
_rebuilt: dict[str, ItemCF] = {}


class SparkItemCF(ItemCF):
    """Item-CF whose :meth:`neighbours` Spark computes (the category is its one attribute).

    Parameters
    ----------
    spark : SparkSession
    interactions, item_category, alpha
        As for :class:`~offline.sources.itemcf.ItemCF`.
    """

    def __init__(
        self,
        spark: SparkSession,
        interactions: Interactions,
        item_category: np.ndarray,
        *,
        alpha: float = 0.9,
    ) -> None:
        super().__init__(interactions, item_category, alpha=alpha)
        self._spark = spark
        self._category = np.asarray(item_category, dtype=np.int32)

    def neighbours(self, k: int) -> Neighbours:
        """Top-``k`` co-clicked items of every item by ``sim``; equal scores: lower index first."""
        from pyspark import StorageLevel

        context = self._spark.sparkContext
        chunks = self.chunks()
        tasks = max(1, min(len(chunks), context.defaultParallelism * TASKS_PER_CORE))
        shared = context.broadcast(self._for_tasks())

        def rank(part: Iterator[tuple[int, int]]) -> Iterator[tuple[np.ndarray, ...]]:
            itemcf = _rebuild(shared)
            for start, stop in part:
                rows, ranks, cols, scores = itemcf.top_of_chunk(start, stop, k)
                yield rows.astype(np.int32), ranks.astype(np.int32), cols.astype(np.int32), scores

        # Kept on the executors' disks, so that every task runs at once, and then read back
        # a task's output at a time: no limit on the results' size bounds the driver.
        ranked = context.parallelize(chunks, tasks).mapPartitions(rank)
        ranked.persist(StorageLevel.DISK_ONLY)
        items = np.full((self.n_items, k), -1, dtype=np.int32)
        scores = np.full((self.n_items, k), np.nan, dtype=np.float32)
        try:
            ranked.count()
            for rows, ranks, cols, chunk_scores in ranked.toLocalIterator():
                items[rows, ranks] = cols
                scores[rows, ranks] = chunk_scores
        finally:
            ranked.unpersist()
            shared.destroy()
        return Neighbours(items, scores)

    def _for_tasks(self) -> dict[str, Any]:
        """What a task needs to rebuild this item-CF: the click matrix's structure (its
        values are all 1), the categories and the scores' parameters."""
        return {
            "token": uuid.uuid4().hex,
            "shape": self.user_item.shape,
            "indptr": self.user_item.indptr,
            "indices": self.user_item.indices,
            "category": self._category,
            "alpha": self.alpha,
            "chunk_pairs": self.chunk_pairs,
        }


def _rebuild(shared: Broadcast) -> ItemCF:
    """The item-CF of a broadcast :meth:`SparkItemCF._for_tasks`, once per worker process."""
    parts = shared.value  # unpickled once per worker process
    key = parts["token"]
    if key not in _rebuilt:
        _rebuilt.clear()  # an earlier call's item-CF: free it first
        ones = np.ones(len(parts["indices"]), dtype=np.int32)
        user_item = sp.csr_array((ones, parts["indices"], parts["indptr"]), shape=parts["shape"])
        _rebuilt[key] = ItemCF.from_click_matrix(
            user_item, parts["category"], alpha=parts["alpha"], chunk_pairs=parts["chunk_pairs"]
        )
    return _rebuilt[key]
