"""The pool merge on Spark: :func:`offline.pools.merge_pools`, as joins and a window.

Every source's neighbours and every rule's list become (row, candidate, key, bit) rows with
the local merge's keys (a source's n-th pick at ``n / weight``, the rules after all sources,
the source's place in the list breaking ties), computed in the same double arithmetic. The
rules are not expanded per item on the driver: the category rule joins each item to its
category's list, the newest-items rule is one list crossed with every item. A candidate
keeps its best key and the bits of every source that proposed it (or the bit of the rule
that added it); each pool is its ``size`` best keys, equal keys by candidate index.

As in the local merge, only the pools the sources leave short (fewer than ``size`` distinct
candidates) meet the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from offline.data.interactions import Catalogue
from offline.pools import TIER, Pools, category_top, newest_items
from offline.sources.base import Neighbours
from offline.spark.session import collect, frame
from recsvc.contract import SOURCE_BITS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _ranked(spark: SparkSession, items: np.ndarray, group: str) -> DataFrame:
    """(``group``, rank from 0, cand) of a 2-D array of candidates, -1 padded."""
    rows, rank = np.nonzero(items >= 0)
    table = pa.table(
        {
            group: rows.astype(np.int32),
            "rank": rank.astype(np.int32),
            "cand": items[rows, rank].astype(np.int32),
        }
    )
    return frame(spark, table)


def merge_pools(
    spark: SparkSession,
    sources: Mapping[str, Neighbours],
    weights: Mapping[str, float],
    catalogue: Catalogue,
    popularity: np.ndarray,
    size: int = 200,
) -> Pools:
    """The pools :func:`offline.pools.merge_pools` makes from ``sources`` and the rules
    :func:`offline.pools.category_fill` and :func:`offline.pools.newest_fill`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    unknown = set(sources) - set(weights)
    if unknown:
        raise ValueError(f"no weight for sources {sorted(unknown)}")
    n_items = catalogue.n_items
    parts = []
    for order, (name, neighbours) in enumerate(sources.items()):
        ranked = _ranked(spark, np.asarray(neighbours.items), "row")
        key = (F.col("rank") + 1) / F.lit(float(weights[name])) + F.lit(order * 1e-6)
        parts.append(ranked.select("row", "cand", key.alias("key"), F.lit(SOURCE_BITS[name])))
    order = len(sources)
    proposed = parts[0]
    for part in parts[1:]:
        proposed = proposed.union(part)
    proposed = proposed.toDF("row", "cand", "key", "bit").where(F.col("cand") != F.col("row"))
    # Only the pools the sources leave short meet the rules, as in the local merge.
    full = (
        proposed.groupBy("row").agg(F.count_distinct("cand").alias("n")).where(F.col("n") >= size)
    )
    # The rules, in RULES order, each a tier after the sources (offline.pools.merge_pools).
    top = category_top(catalogue, popularity, size)
    categories = frame(
        spark,
        pa.table(
            {
                "row": np.arange(n_items, dtype=np.int32),
                "category": np.asarray(catalogue.item_category, dtype=np.int32),
            }
        ),
    ).where(F.col("category") >= 0)
    by_category = categories.join(_ranked(spark, top, "category"), "category")
    newest = _ranked(spark, newest_items(catalogue, size)[None, :], "list").drop("list")
    every_row = spark.range(n_items).select(F.col("id").cast("int").alias("row"))
    short = every_row.join(full, "row", "left_anti")
    entries = proposed
    rules = (("category", by_category.join(short, "row")), ("new", short.crossJoin(newest)))
    for tier, (name, rows) in enumerate(rules, start=1):
        key = F.lit(tier * TIER) + (F.col("rank") + 1) / F.lit(1.0) + F.lit(order * 1e-6)
        added = rows.select("row", "cand", key.alias("key"), F.lit(SOURCE_BITS[name]).alias("bit"))
        entries = entries.union(added.where(F.col("cand") != F.col("row")))
        order += 1
    from_sources = F.when(F.col("key") < TIER, F.col("bit")).otherwise(0)
    merged = entries.groupBy("row", "cand").agg(
        F.min("key").alias("key"),
        F.bit_or(from_sources).alias("sources"),
        F.min_by("bit", "key").alias("first_bit"),
    )
    flags = F.when(F.col("sources") > 0, F.col("sources")).otherwise(F.col("first_bit"))
    best = Window.partitionBy("row").orderBy("key", "cand")
    pools = collect(
        merged.select(
            "row", "cand", flags.alias("flags"), F.row_number().over(best).alias("slot")
        ).where(F.col("slot") <= size)
    )
    items = np.full((n_items, size), -1, dtype=np.int32)
    bits = np.zeros((n_items, size), dtype=np.uint8)
    rows = pools.column("row").to_numpy()
    slots = pools.column("slot").to_numpy() - 1
    items[rows, slots] = pools.column("cand").to_numpy()
    bits[rows, slots] = pools.column("flags").to_numpy()
    return Pools(items, bits)
