"""``--engine spark`` against the local engine, on a real Spark in local mode.

The Spark loader must give the local loader's log and report, row for row, on files with
every kind of bad row; Spark's item-CF the local neighbours and scores, bit for bit; its
training rows the local ones, in the same order; its pool merge the local pools.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.data.events import TAOBAO_SPEC, ColumnSpec, EventLog, load_events
from offline.data.interactions import Catalogue, Interactions
from offline.pools import category_fill, merge_pools, newest_fill
from offline.sources.base import Neighbours
from offline.sources.itemcf import ItemCF
from offline.spark import events as spark_events
from offline.spark import pools as spark_pools
from offline.spark import sequences
from offline.spark.itemcf import SparkItemCF
from offline.spark.session import DRIVER_JAVA_OPTIONS, collect, frame, spark_session
from recsvc.exceptions import DataError
from training.item2vec import skipgram_pairs
from training.personalized import build_examples

FIELDS = ("user_codes", "item_codes", "types", "ts", "category_codes", "user_vocab",
          "item_vocab", "category_vocab")  # fmt: skip

# Good rows, then one of each way a row can be bad, in the Taobao layout.
TAOBAO_ROWS = """\
1,10,100,pv,1511658000
1,11,100,pv,1511658060
2,10,100,cart,1511658001
2,12,101,pv,1511658002
3, 11 ,101, pv ,1_511_658_100
"4","12","101","buy","1511658001.5"
4,13,102,fav,1511658003,an extra field
1,2

{spaces}
5,,7,pv,1511658000
5,6,7,zz,1511658000
5,6,7,pv,abc
5,6,7,pv,1511658000000
5,6,7,pv,nan
5,6,7,pv,-5
,
6,14,,pv,1511658200
""".format(spaces="  ")  # a line of spaces: blank, as an empty line is


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    with spark_session("local[2]", app="recsvc-tests") as session:
        yield session


def assert_same_log(local: EventLog, spark: EventLog) -> None:
    for name in FIELDS:
        a, b = getattr(local, name), getattr(spark, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype.kind == b.dtype.kind and a.shape == b.shape, name
            assert (a == b).all(), name
    assert local.report.as_dict() == spark.report.as_dict()


def test_the_spark_loader_reads_a_delimited_file_as_the_local_one(spark, tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(TAOBAO_ROWS)
    local = load_events(path, TAOBAO_SPEC)
    assert_same_log(local, spark_events.load_events(spark, path, TAOBAO_SPEC))
    # Every reason is there, so the check above covers each one.
    assert set(local.report.skipped) == {
        "too few fields", "empty user or item id", "unparsable timestamp",
        "timestamp out of range", "unknown event type",
    }  # fmt: skip
    assert len(local) == 8


@pytest.mark.parametrize("stamps", ["ms", "iso"])
def test_milliseconds_and_iso_times_with_a_header_and_named_columns(
    spark, tmp_path: Path, stamps: str
) -> None:
    path = tmp_path / "log.tsv"
    rows = ["session\titem\ttime"]
    for n in range(40):
        seconds = 1_600_000_000 + 37 * n
        text = str(seconds * 1000 + n) if stamps == "ms" else f"2020-09-13T12:{n % 60:02d}:00Z"
        rows.append(f"s{n % 7}\ti{n % 11}\t{text}")
    rows += ["s1\t\t1", "s2\ti3\tnot a time"]
    path.write_text("\n".join(rows) + "\n")
    spec = ColumnSpec(user="session", item="item", timestamp="time", delimiter="\t", header=True)
    assert_same_log(load_events(path, spec), spark_events.load_events(spark, path, spec))


def test_the_spark_loader_reads_parquet_as_the_local_one(spark, tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    table = pa.table(
        {
            "user": pa.array([1, 2, None, 2, 3, 4], pa.int64()),
            "item": ["a", "b", "c", "", "d", "a"],
            "time": pa.array(
                [1_600_000_000, 1_600_000_005, 1_600_000_007, 1_600_000_009, None, 1_600_000_011]
            ),
            "kind": ["click", "cart", "click", "click", "click", "wat"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    spec = ColumnSpec(user="user", item="item", timestamp="time", event_type="kind", parquet=True)
    local = load_events(path, spec)
    assert_same_log(local, spark_events.load_events(spark, path, spec))
    assert local.report.n_skipped == 4


def test_a_missing_file_a_missing_column_and_no_usable_row_are_errors(
    spark, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match="cannot read event file"):
        spark_events.load_events(spark, tmp_path / "absent.csv", TAOBAO_SPEC)
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\n1,2,1600000000\n")
    named = ColumnSpec(user="user", item="product", timestamp="ts", header=True)
    with pytest.raises(DataError, match="'product' for item is not in the header"):
        spark_events.load_events(spark, path, named)
    path.write_text("1,2,soon\n3,4,later\n")
    with pytest.raises(DataError, match="no usable events") as error:
        spark_events.load_events(spark, path, ColumnSpec(user=0, item=1, timestamp=2))
    assert "unparsable timestamp: 2" in str(error.value)


def clicks_with_ties(seed: int, n_users: int, n_items: int) -> Interactions:
    """Zipf-popular clicks, a block of equal scores and a cart."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, n_users, 900), rng.zipf(1.5, 900) % n_items
    rows = [
        (int(u), int(i), 0, float(t)) for t, (u, i) in enumerate(zip(users, items, strict=True))
    ]
    # A clicks-only block of equal scores: ties go to the lower item index.
    rows += [(n_users + u, i, 0, 1e6 + u) for u in range(3) for i in (30, 31, 32, 33)]
    rows += [(n_users + 3, 1, 1, 2e6)]  # a cart, which item-CF does not count
    return Interactions.from_rows(rows, n_items)


@pytest.mark.parametrize("chunk_pairs", [None, 50])
def test_spark_item_cf_gives_the_local_neighbours_and_scores(spark, chunk_pairs) -> None:
    # Two logs in one session: the Python workers that ranked the first must not rank the
    # second with the first's click matrix.
    for seed, n_users, n_items in [(3, 60, 40), (4, 90, 55)]:
        fit = clicks_with_ties(seed, n_users, n_items)
        category = np.random.default_rng(seed).integers(-1, 4, n_items).astype(np.int32)
        local = ItemCF(fit, category, alpha=0.7).neighbours(12)
        on_spark = SparkItemCF(spark, fit, category, alpha=0.7)
        if chunk_pairs is not None:  # many chunks, so every task ranks several
            on_spark.chunk_pairs = chunk_pairs
            assert len(on_spark.chunks()) > 20
        found = on_spark.neighbours(12)
        assert (local.items == found.items).all()
        assert np.array_equal(local.scores, found.scores, equal_nan=True)
        assert (local.items >= 0).sum() > n_items * 5  # most rows have neighbours


def shopping_log(rng: np.random.Generator, n_events: int = 3000) -> Interactions:
    """Events of every type, with repeats (reloads), carts before and after views, and
    purchases, for the sequence rules to meet each case."""
    users = np.sort(rng.integers(0, 80, n_events))
    items = rng.integers(0, 60, n_events)
    repeat = rng.random(n_events) < 0.2
    items[1:][repeat[1:]] = items[:-1][repeat[1:]]
    types = rng.choice(4, n_events, p=[0.75, 0.12, 0.05, 0.08]).astype(np.int8)
    ts = np.arange(n_events, dtype=np.float64)
    return Interactions(users.astype(np.int32), items.astype(np.int32), types, ts, 80, 60)


@pytest.mark.parametrize("conversion", ["cart", "buy", "both"])
def test_spark_writes_the_local_training_examples_in_their_order(
    spark, tmp_path: Path, conversion: str
) -> None:
    events = shopping_log(np.random.default_rng(5))
    frame = sequences.events_frame(spark, events)
    local = build_examples(events, window=8, conversion=conversion)
    columns = [f"w{j}" for j in range(8)] + ["target", "is_cart"]
    rows = sequences.next_item_examples(frame, 8, conversion)
    assert sequences.write_shards(rows, ["user", "visit"], columns, tmp_path) == len(local)
    windows, targets, is_cart = sequences.examples_from_shards(tmp_path, 8)
    assert np.array_equal(windows, local.windows)
    assert np.array_equal(targets, local.targets)
    assert np.array_equal(is_cart, local.is_cart)
    assert 0 < local.is_cart.sum() < len(local)


def test_spark_writes_item2vecs_pairs_in_their_order(spark, tmp_path: Path) -> None:
    events = shopping_log(np.random.default_rng(6))
    centres, contexts = skipgram_pairs(events, 3)
    frame = sequences.events_frame(spark, events)
    order = ["offset", "direction", "user", "visit"]
    rows = sequences.skipgram_pairs(frame, 3)
    assert sequences.write_shards(rows, order, ["centre", "context"], tmp_path) == len(centres)
    mapped = sequences.mapped_columns(tmp_path, {"centre": np.int32, "context": np.int32})
    assert np.array_equal(mapped["centre"], centres)
    assert np.array_equal(mapped["context"], contexts)


def test_spark_examples_free_the_cached_events_once_the_last_rows_are_written(
    spark, tmp_path: Path
) -> None:
    from offline.pipeline import SparkExamples

    events = shopping_log(np.random.default_rng(7))
    examples = SparkExamples(spark, events, tmp_path)
    try:
        centres, _ = examples.pairs(3)
        assert np.array_equal(centres, skipgram_pairs(events, 3)[0])
        assert examples._events.storageLevel.useMemory  # kept for the examples still to come
        got = examples.next_items(8, "cart")
        assert not examples._events.storageLevel.useMemory
        assert np.array_equal(got.windows, build_examples(events, 8, "cart").windows)
    finally:
        examples.close()
    assert not list(tmp_path.iterdir())  # the shards' scratch folder is gone


def test_spark_merges_the_local_pools(spark) -> None:
    rng = np.random.default_rng(8)
    n_items, size = 50, 12

    def neighbours(k: int) -> Neighbours:
        items = np.stack([rng.permutation(n_items)[:k] for _ in range(n_items)]).astype(np.int32)
        items[rng.random(items.shape) < 0.4] = -1  # short lists, so the rules fill them
        return Neighbours(items, np.zeros(items.shape, np.float32))

    sources = {"itemcf": neighbours(9), "item2vec": neighbours(7)}
    weights = {"itemcf": 2.0, "item2vec": 1.0}
    catalogue = Catalogue(
        item_ids=np.array([f"i{j}" for j in range(n_items)]),
        item_category=rng.integers(-1, 5, n_items).astype(np.int32),
        category_names=np.array([f"c{j}" for j in range(5)]),
        first_seen=rng.integers(0, 20, n_items).astype(np.float64),
    )
    popularity = rng.integers(0, 9, n_items)
    rules = {
        "category": category_fill(catalogue, popularity, size),
        "new": newest_fill(catalogue, size),
    }
    local = merge_pools(sources, weights, rules, size)
    on_spark = spark_pools.merge_pools(spark, sources, weights, catalogue, popularity, size)
    assert np.array_equal(local.items, on_spark.items)
    assert np.array_equal(local.sources, on_spark.sources)
    counts = local.source_counts()
    assert counts["category"] > 0 and counts["new"] > 0 and counts["itemcf"] > 0


def test_the_driver_jvm_runs_with_the_options_that_return_idle_heap(spark) -> None:
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    arguments = list(runtime.getInputArguments())
    assert set(DRIVER_JAVA_OPTIONS.split()) <= set(arguments), arguments


def test_collect_brings_back_more_than_the_driver_result_limit_in_order(spark) -> None:
    from pyspark.sql import functions as F

    # 1,000,000 shuffled rows over 8 partitions, sorted by Spark: about 15 MiB of results,
    # where the sort's sampling job returns about 2 MiB.
    rng = np.random.default_rng(3)
    n = 1_000_000
    table = pa.table({"key": rng.permutation(n).astype(np.int64), "value": rng.random(n)})
    rows = frame(spark, table).repartition(8).orderBy("key")
    conf = spark.sparkContext._jsc.sc().conf()  # the live SparkConf tasks are scheduled with
    limit = conf.get("spark.driver.maxResultSize", "1g")
    conf.set("spark.driver.maxResultSize", "4m")
    try:
        with pytest.raises(Exception, match="maxResultSize"):
            rows.toArrow()  # what the engine did before
        got = collect(rows)
    finally:
        conf.set("spark.driver.maxResultSize", limit)
    assert got.num_rows == n
    assert np.array_equal(got.column("key").to_numpy(), np.arange(n))  # sorted, all there
    by_key = np.argsort(table.column("key").to_numpy())
    assert np.array_equal(got.column("value").to_numpy(), table.column("value").to_numpy()[by_key])
    empty = collect(rows.where(F.col("key") < 0))
    assert empty.num_rows == 0 and empty.column_names == ["key", "value"]
