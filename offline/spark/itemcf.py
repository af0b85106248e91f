"""Item-CF neighbours on Spark: the co-occurrence self-join per user and the top-k per item.

:class:`SparkItemCF` is :class:`~offline.sources.itemcf.ItemCF` with :meth:`neighbours`
computed by Spark: every pair of distinct items that some user clicked both, counted once
per user, scored with the same Jaccard and ``alpha`` in the same double arithmetic (so the
float32 scores are the same bits), ranked by the float32 score, then the lower item index,
as the local sort does. The pair scores of the pools (:meth:`ItemCF.pair_scores`) stay
local: they look up only ``n_items x pool_size`` pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from offline.data.interactions import Interactions
from offline.sources.base import Neighbours
from offline.sources.itemcf import ItemCF
from offline.spark.session import collect, frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


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
        ranked = collect(self._top(k))
        items = np.full((self.n_items, k), -1, dtype=np.int32)
        scores = np.full((self.n_items, k), np.nan, dtype=np.float32)
        rows = ranked.column("i").to_numpy()
        slots = ranked.column("rank").to_numpy() - 1
        items[rows, slots] = ranked.column("j").to_numpy()
        scores[rows, slots] = ranked.column("score").to_numpy()
        return Neighbours(items, scores)

    def _clicks(self) -> DataFrame:
        """The distinct (user, item) clicks, from the binary click matrix."""
        matrix = self.user_item
        users = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), np.diff(matrix.indptr))
        table = pa.table({"user": users, "item": matrix.indices.astype(np.int32)})
        return frame(self._spark, table)

    def _top(self, k: int) -> DataFrame:
        """(i, rank from 1, j, float score) of every item's ``k`` best neighbours."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        clicks = self._clicks()
        items = frame(
            self._spark,
            pa.table(
                {
                    "item": np.arange(self.n_items, dtype=np.int32),
                    "users": self.item_users,
                    "category": self._category,
                }
            ),
        )
        # Co-occurrence is symmetric: count each unordered pair once (half the rows of the
        # self-join and of its shuffle), then emit it in both directions.
        counted = (
            clicks.alias("a")
            .join(clicks.alias("b"), "user")
            .where(F.col("a.item") < F.col("b.item"))
            .groupBy(F.col("a.item").alias("low"), F.col("b.item").alias("high"))
            .agg(F.count("*").alias("co"))
        )
        directions = F.array(
            F.struct(F.col("low").alias("i"), F.col("high").alias("j"), "co"),
            F.struct(F.col("high").alias("i"), F.col("low").alias("j"), "co"),
        )
        pairs = counted.select(F.explode(directions).alias("pair")).select("pair.*")
        left = items.select(*(F.col(c).alias(f"{c}_i") for c in ("item", "users", "category")))
        right = items.select(*(F.col(c).alias(f"{c}_j") for c in ("item", "users", "category")))
        joined = pairs.join(F.broadcast(left), F.col("i") == F.col("item_i")).join(
            F.broadcast(right), F.col("j") == F.col("item_j")
        )
        # The arithmetic of ItemCF._similarity, operation for operation, in doubles.
        union = F.col("users_i") + F.col("users_j") - F.col("co")
        csim = F.col("co").cast("double") / F.greatest(union, F.lit(1)).cast("double")
        known_i, known_j = F.col("category_i") >= 0, F.col("category_j") >= 0
        shared = F.when(known_i & (F.col("category_i") == F.col("category_j")), 1).otherwise(0)
        attr_union = known_i.cast("long") + known_j.cast("long") - shared
        fsim = F.when(
            attr_union > 0, shared.cast("double") / F.greatest(attr_union, F.lit(1)).cast("double")
        ).otherwise(F.lit(0.0))
        score = (F.lit(self.alpha) * csim + F.lit(1.0 - self.alpha) * fsim).cast("float")
        order = Window.partitionBy("i").orderBy(F.col("score").desc(), F.col("j").asc())
        return (
            joined.select("i", "j", score.alias("score"))
            .withColumn("rank", F.row_number().over(order))
            .where(F.col("rank") <= k)
        )
