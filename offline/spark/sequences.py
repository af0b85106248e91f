"""The training examples of the TensorFlow models, built by Spark and written as Parquet.

Two kinds, each the same rows as the local code's, in the same order:

- :func:`skipgram_pairs`: item2vec's (centre, context) pairs of the users' collapsed click
  sequences (:func:`training.item2vec.skipgram_pairs`, offset by offset, then direction,
  then position);
- :func:`next_item_examples`: the personalized models' windows, targets and conversion
  flags (:func:`offline.data.sequences.next_item_cases`, in visit order).

Both read the fit period's events as a frame of (``pos``, ``user``, ``item``, ``type``),
``pos`` being each event's place in the (user, time) order; visits, spans and windows are
window functions over each user's events ordered by ``pos``. :func:`write_shards` writes
the rows, sorted, as Parquet shards; :func:`mapped_columns` turns the shards into
memory-mapped numpy columns, group by group, for the training loop.

Why memory maps and not a ``tf.data`` stream: the training loop draws each epoch's order
with ``rng.permutation`` over all the rows (:func:`training.base.minibatches`); a stream
with a shuffle buffer would draw another order and train other models. Indexing the mapped
columns keeps the local engine's order, so both engines write the same bundle, and the
rows sit in the page cache, which the kernel can reclaim, not on the heap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline.data.interactions import CART, CLICK, Interactions
from offline.data.sequences import CONVERSIONS, check_conversion
from offline.spark.session import frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession, WindowSpec


def events_frame(spark: SparkSession, events: Interactions) -> DataFrame:
    """``events`` (sorted by user, time) as a frame of (pos, user, item, type)."""
    table = pa.table(
        {
            "pos": np.arange(len(events), dtype=np.int64),
            "user": events.users.astype(np.int32),
            "item": events.items.astype(np.int32),
            "type": events.types.astype(np.int8),
        }
    )
    return frame(spark, table)


def _by_user(order: str = "pos") -> WindowSpec:
    """Each user's rows, ordered by ``order``."""
    from pyspark.sql import Window

    return Window.partitionBy("user").orderBy(order)


def _visits(events: DataFrame, types: tuple[int, ...]) -> DataFrame:
    """Each user's visits over events of ``types``: runs of one item, as (user, visit: 0-based
    index among the user's visits, item, begin: the first event's pos, clicked)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kept = events.where(F.col("type").isin(*types))
    starts = F.lag("item").over(_by_user()).isNull() | (
        F.lag("item").over(_by_user()) != F.col("item")
    )
    so_far = _by_user().rowsBetween(Window.unboundedPreceding, 0)
    numbered = kept.withColumn("start", starts.cast("int")).withColumn(
        "visit", F.sum("start").over(so_far) - 1
    )
    return numbered.groupBy("user", "visit").agg(
        F.first("item").alias("item"),
        F.min("pos").alias("begin"),
        F.max((F.col("type") == CLICK).cast("int")).alias("clicked"),
    )


def skipgram_pairs(events: DataFrame, window: int) -> DataFrame:
    """item2vec's pairs as (offset, direction, seq, centre, context) rows; sorted by those
    three, they are :func:`training.item2vec.skipgram_pairs`'s order (``seq`` is the
    centre's place in the collapsed click sequences: user, then visit)."""
    from pyspark.sql import functions as F

    clicks = _visits(events, (CLICK,))
    parts = []
    for offset in range(1, window + 1):
        later = F.lead("item", offset).over(_by_user("visit"))
        pairs = clicks.select("user", "visit", F.col("item").alias("left"), later.alias("right"))
        pairs = pairs.where(F.col("right").isNotNull() & (F.col("right") != F.col("left")))
        for direction, (centre, context) in enumerate((("left", "right"), ("right", "left"))):
            parts.append(
                pairs.select(
                    F.lit(offset).alias("offset"),
                    F.lit(direction).alias("direction"),
                    "user",
                    "visit",
                    F.col(centre).alias("centre"),
                    F.col(context).alias("context"),
                )
            )
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def next_item_examples(events: DataFrame, window: int, conversion: str) -> DataFrame:
    """The personalized models' examples as (user, visit, w0 ... w{window-1}, target,
    is_cart) rows; sorted by (user, visit) they are
    :func:`training.personalized.build_examples`'s rows.

    Raises
    ------
    ConfigError
        An unknown ``conversion``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    check_conversion(conversion)
    visits = _visits(events, (CLICK, CART))
    # A conversion event belongs to the user's latest visit begun at or before it.
    begins = visits.select(
        "user",
        F.col("begin").alias("pos"),
        F.lit(0).alias("kind"),
        "visit",
        F.col("item").alias("visit_item"),
        F.lit(None).cast("int").alias("item"),
    )
    conversions = events.where(F.col("type").isin(*CONVERSIONS[conversion])).select(
        "user",
        "pos",
        F.lit(1).alias("kind"),
        F.lit(None).cast("long").alias("visit"),
        F.lit(None).cast("int").alias("visit_item"),
        "item",
    )
    ordered = _by_user().orderBy("pos", "kind").rowsBetween(Window.unboundedPreceding, 0)
    spans = begins.unionByName(conversions).select(
        "kind",
        "item",
        "user",
        F.last("visit", ignorenulls=True).over(ordered).alias("visit"),
        F.last("visit_item", ignorenulls=True).over(ordered).alias("visit_item"),
    )
    converted = (
        spans.where((F.col("kind") == 1) & (F.col("item") == F.col("visit_item")))
        .select("user", "visit")
        .distinct()
        .withColumn("converted", F.lit(True))
    )
    visits = visits.join(converted, ["user", "visit"], "left").fillna(False, ["converted"])
    by_visit = _by_user("visit")
    slots = [F.col("item").alias("w0")] + [
        F.coalesce(F.lag("item", j).over(by_visit), F.lit(-1)).alias(f"w{j}")
        for j in range(1, window)
    ]
    cases = visits.select(
        "user",
        "visit",
        "clicked",
        *slots,
        F.lead("item").over(by_visit).alias("target"),
        F.lead("converted").over(by_visit).alias("is_cart"),
    )
    return cases.where((F.col("clicked") == 1) & F.col("target").isNotNull()).drop("clicked")


def write_shards(rows: DataFrame, order: list[str], columns: list[str], out: Path) -> int:
    """Write ``rows`` sorted by ``order`` as Parquet shards of ``columns`` into ``out``;
    returns the row count. Shard file names sort in row order."""
    rows = rows.orderBy(*order).select(*columns)
    rows.write.mode("overwrite").parquet(str(out))
    return sum(pq.ParquetFile(path).metadata.num_rows for path in _shards(out))


def _shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.parquet"))


def mapped_columns(folder: Path, columns: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """The shards' ``columns`` as read-only memory-mapped arrays (``folder/NAME.npy``),
    written one row group at a time so that no column is ever held whole."""
    files = [pq.ParquetFile(path) for path in _shards(folder)]
    n = sum(file.metadata.num_rows for file in files)
    paths = {name: Path(folder) / f"{name}.npy" for name in columns}
    out = {
        name: np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype, shape=(n,))
        for name, dtype in columns.items()
    }
    start = 0
    for file in files:
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=list(columns))
            stop = start + table.num_rows
            for name in columns:
                out[name][start:stop] = table.column(name).to_numpy()
            start = stop
    for array in out.values():
        array.flush()
    del out
    return {name: np.load(paths[name], mmap_mode="r") for name in columns}


def examples_from_shards(folder: Path, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows int32 (m, window), targets int32 (m,), is_cart bool (m,)) of the shards
    :func:`next_item_examples` wrote, memory-mapped; the windows are one (m, window) file."""
    slots = {f"w{j}": np.dtype(np.int32) for j in range(window)}
    columns = mapped_columns(
        folder, {**slots, "target": np.dtype(np.int32), "is_cart": np.dtype(bool)}
    )
    path = Path(folder) / "windows.npy"
    n = len(columns["target"])
    windows = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n, window))
    step = 1 << 20
    for start in range(0, n, step):
        for j in range(window):
            windows[start : start + step, j] = columns[f"w{j}"][start : start + step]
    windows.flush()
    del windows
    for j in range(window):
        (Path(folder) / f"w{j}.npy").unlink()
    return np.load(path, mmap_mode="r"), columns["target"], columns["is_cart"]
