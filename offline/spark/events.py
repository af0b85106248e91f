"""Event files read by Spark into the local engine's :class:`~offline.data.events.EventLog`.

The rules are those of :mod:`offline.data.events`, written as Spark SQL so that the rows are
parsed and checked by the executors: the same skip reasons in the same order of precedence,
the same counts, the same first examples by line (or row) number, the kept rows in file
order, the ids as codes into sorted vocabularies (Spark orders strings by UTF-8 bytes,
which is numpy's code-point order). The driver reads the first lines (the header, the
time format) and collects the codes, 21 bytes per kept row.

A delimited file is read as lines (Spark's text source), each parsed by ``from_csv`` with
the csv module's quoting; a line's number comes from its file block and its place in the
block (:func:`line_index`), so no row passes through Python. A missing
trailing field and an empty one both parse as null in Spark, so each line gets a marker
field appended: a row whose marker lands among the columns the spec reads has too few
fields. Differences from the local loader, all on malformed input: a quoted field with a
line break inside is two lines here, ``float()`` spellings with non-ASCII digits are
unparsable here, and ISO-8601 times are read by Spark's timestamp cast (a date, then an
optional time and offset).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from offline.data.events import (
    SAMPLE_ROWS,
    SKIP_REASONS,
    TYPE_CODES,
    ColumnSpec,
    EventLog,
    resolve_columns,
)
from offline.data.skips import MAX_EXAMPLES, SkipReport
from offline.data.times import TIME_FORMATS, accepted, check_range, detect_format
from offline.spark.session import collect, frame
from recsvc.contract import EVENT_TYPES, LATEST_TIMESTAMP
from recsvc.exceptions import DataError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

#: A field appended to every line: where it lands tells the line's number of fields.
MARKER = "\u0001"
#: Reason codes of the ``reason`` column: 0 kept, then SKIP_REASONS from 1, then these.
TOO_FEW, BLANK = len(SKIP_REASONS) + 1, len(SKIP_REASONS) + 2
REASON_NAMES = {i + 1: name for i, name in enumerate(SKIP_REASONS)} | {TOO_FEW: "too few fields"}
#: What Python's ``float()`` reads (ASCII digits, underscores between them; inf and nan).
PYTHON_FLOAT = (
    r"^[+-]?(?:(?:[0-9](?:_?[0-9])*)?\.[0-9](?:_?[0-9])*|[0-9](?:_?[0-9])*\.?)"
    r"(?:[eE][+-]?[0-9](?:_?[0-9])*)?$|^[+-]?(?i:inf|infinity|nan)$"
)
#: ISO-8601 as the local loader reads it: a full date first.
ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"


@dataclass(frozen=True)
class _Source:
    """One file's rows as Spark columns: ``index`` (0-based place), ``text`` (the line, for
    examples; empty for Parquet), ``blank``, ``too_few``, the stripped text of each event
    field, and ``ts`` (Unix seconds, null where the time does not read). ``width``: the
    fields a delimited row needs, for the "too few fields" detail (a Parquet row always
    has its columns)."""

    frame: DataFrame
    unit: str
    width: int
    example: tuple[int, str] | None
    time_format: str


def load_events(spark: SparkSession, path: str | Path, spec: ColumnSpec) -> EventLog:
    """The :class:`EventLog` of an event file, read by Spark as the local loader reads it.

    Raises
    ------
    DataError
        The file cannot be read, a column is not in it, or no row is usable.
    """
    name = str(path)
    source = _parquet(spark, name, spec) if spec.parquet else _delimited(spark, name, spec)
    return _finish(source, name, spec)


def line_index(lines: DataFrame) -> DataFrame:
    """``lines`` (Spark's text source) with ``index``: each line's 0-based place in the
    file, files in path order.

    A partition reads its file blocks in order, so ``monotonically_increasing_id`` grows
    along each block; the lines of the blocks before it (counted once, per block, on the
    driver) give a block's first index.
    """
    from pyspark.sql import functions as F

    placed = lines.select(
        "value",
        F.col("_metadata.file_path").alias("file"),
        F.col("_metadata.file_block_start").alias("block"),
        F.monotonically_increasing_id().alias("id"),
    )
    blocks = placed.groupBy("file", "block").agg(
        F.count("*").alias("n"), F.min("id").alias("first")
    )
    starts, before = [], 0
    for block in sorted(blocks.collect(), key=lambda b: (b["file"], b["block"])):
        starts.append((block["file"], block["block"], before - int(block["first"])))
        before += int(block["n"])
    offsets = lines.sparkSession.createDataFrame(starts, "file STRING, block LONG, shift LONG")
    return placed.join(F.broadcast(offsets), ["file", "block"]).select(
        "value", (F.col("id") + F.col("shift")).alias("index")
    )


def _strip(column: Column) -> Column:
    """``str.strip()``: Unicode white space off both ends (Spark's ``trim`` takes spaces)."""
    from pyspark.sql import functions as F

    return F.regexp_replace(column, r"(?U)^\s+|\s+$", "")


def _seconds(text: Column, fmt: str) -> Column:
    """Unix seconds of stripped time text in ``fmt``, null where it does not read."""
    from pyspark.sql import functions as F

    if fmt == "iso":
        stamp = F.try_to_timestamp(text)
        return F.when(text.rlike(ISO_DATE) & stamp.isNotNull(), F.unix_micros(stamp) / 1e6)
    number = F.regexp_replace(text, "_", "").try_cast("double")
    return F.when(text.rlike(PYTHON_FLOAT), number / 1000.0 if fmt == "ms" else number)


def _spark_failure(what: str, exc: Exception) -> DataError:
    """A :class:`DataError` with the first line of a Spark or py4j error."""
    text = str(exc).strip()
    return DataError(f"{what}: {text.splitlines()[0][:300] if text else type(exc).__name__}")


def _delimited(spark: SparkSession, path: str, spec: ColumnSpec) -> _Source:
    from pyspark.sql import functions as F

    try:
        lines = line_index(spark.read.text(path))
        head = [
            r["value"]
            for r in lines.where(F.col("index") <= SAMPLE_ROWS).orderBy("index").collect()
        ]
    except Exception as exc:  # a missing or unreadable file, as Spark reports it
        raise _spark_failure(f"cannot read event file {path}", exc) from None
    positions = resolve_columns(spec, csv.reader(head, delimiter=spec.delimiter))
    width = max(p for p in positions.values() if p is not None) + 1
    at = positions["timestamp"]
    assert at is not None  # a ColumnSpec always names it
    first = 1 + int(spec.header)
    rows = csv.reader(head[first - 1 :], delimiter=spec.delimiter)
    times = [(line, row[at].strip()) for line, row in enumerate(rows, first) if len(row) >= width]
    fmt = detect_format([t for _, t in times]) if spec.time_format == "auto" else spec.time_format
    schema = ", ".join(f"f{i} STRING" for i in range(width))
    options = {"sep": spec.delimiter, "quote": '"', "escape": '"', "mode": "PERMISSIVE"}
    marked = F.concat(F.col("value"), F.lit(spec.delimiter + MARKER))
    cells = [F.col(f"row.f{i}") for i in range(width)]
    too_few = F.lit(False)
    for cell in cells:
        too_few = too_few | F.coalesce(cell == MARKER, F.lit(False))
    text = F.col("text")
    blank = text.rlike(r"(?U)^\s*$") & ~text.contains(spec.delimiter)
    fields = {
        n: F.coalesce(_strip(cells[p]), F.lit("")) for n, p in positions.items() if p is not None
    }
    frame = (
        lines.where(F.col("index") >= first - 1)
        .select(
            "index", F.col("value").alias("text"), F.from_csv(marked, schema, options).alias("row")
        )
        .select(
            "index",
            "text",
            blank.alias("blank"),
            too_few.alias("too_few"),
            *(value.alias(name) for name, value in fields.items()),
        )
        .withColumn("ts", _seconds(F.col("timestamp"), fmt))
    )
    return _Source(frame, "line", width, times[0] if times else None, fmt)


def _parquet(spark: SparkSession, path: str, spec: ColumnSpec) -> _Source:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    try:
        table = spark.read.parquet(path)
    except Exception as exc:
        raise _spark_failure(f"cannot read Parquet file {path}", exc) from None
    names = table.columns
    columns: dict[str, str] = {}
    for name, column in spec.columns().items():
        if column is None:
            continue
        if isinstance(column, int) and 0 <= column < len(names):
            columns[name] = names[column]
        elif isinstance(column, str) and column in names:
            columns[name] = column
        else:
            raise DataError(f"column {column!r} for {name} is not in {path}'s columns {names}")
    raw = table.select(
        F.col("_metadata.row_index").alias("index"),
        *(F.col(f"`{c}`").alias(name) for name, c in columns.items()),
    )
    sample = raw.where(F.col("index") < SAMPLE_ROWS).orderBy("index").collect()
    values = [
        (int(r["index"]) + 1, str(r["timestamp"])) for r in sample if r["timestamp"] is not None
    ]
    fmt = spec.time_format
    if fmt == "auto":
        fmt = detect_format([v for _, v in values])
    stamp, kind = F.col("timestamp"), table.schema[columns["timestamp"]].dataType
    if isinstance(kind, T.TimestampType | T.TimestampNTZType):
        ts = F.unix_micros(stamp.cast("timestamp")) / 1e6
    elif isinstance(kind, T.DateType):
        ts = F.unix_date(stamp).cast("double") * 86400.0
    elif isinstance(kind, T.NumericType):
        ts = stamp.cast("double") / 1000.0 if fmt == "ms" else stamp.cast("double")
    else:
        ts = _seconds(_strip(stamp.cast("string")), fmt)
    fields = {name: F.coalesce(_strip(F.col(name).cast("string")), F.lit("")) for name in columns}
    frame = raw.select(
        "index",
        F.lit("").alias("text"),
        F.lit(False).alias("blank"),
        F.lit(False).alias("too_few"),
        *(value.alias(name) for name, value in fields.items()),
        ts.alias("ts"),
    )
    return _Source(frame, "row", len(names), values[0] if values else None, fmt)


def _finish(source: _Source, path: str, spec: ColumnSpec) -> EventLog:
    """Each row's reason, the report, and the kept rows' codes (``_Rows.finish`` of the
    local loader)."""
    from pyspark.sql import functions as F

    lookup = {**{t: t for t in EVENT_TYPES}, **spec.type_map}
    frame = source.frame
    if "event_type" in frame.columns:
        pairs = [F.lit(x) for name, kind in lookup.items() for x in (name, TYPE_CODES[kind])]
        type_code = F.create_map(*pairs)[F.col("event_type")]
    else:
        type_code = F.lit(TYPE_CODES[spec.default_type])
    ts = F.col("ts")
    reason = (
        F.when(F.col("blank"), BLANK)
        .when(F.col("too_few"), TOO_FEW)
        .when((F.col("user") == "") | (F.col("item") == ""), 1)
        .when(ts.isNull(), 2)
        .when(~((ts >= 0) & (ts < LATEST_TIMESTAMP)), 3)
        .when(type_code.isNull(), 4)
        .otherwise(0)
    )
    rows = frame.select("*", type_code.cast("byte").alias("type"), reason.alias("reason"))
    rows = rows.persist()
    try:
        counted = rows.groupBy("reason").count().collect()
        counts = {int(r["reason"]): int(r["count"]) for r in counted}
        report = _report(rows, counts, source, path, spec)
        if not report.loaded:
            shown = source.example
            where = f" ({source.unit} {shown[0]}: {shown[1]!r})" if shown else ""
            raise DataError(
                f"no usable events in {path}\n{report.summary()}\ntimes were read as "
                f"{TIME_FORMATS[source.time_format]}{where}; --time-format takes {accepted()}"
            )
        log = _encoded(rows.where(F.col("reason") == 0), report, "category" in frame.columns)
    finally:
        rows.unpersist()
    check_range(log.ts, source.time_format, source.example, path, source.unit)
    return log


def _report(
    rows: DataFrame, counts: dict[int, int], source: _Source, path: str, spec: ColumnSpec
) -> SkipReport:
    """Rows read and skipped, with the first :data:`MAX_EXAMPLES` bad ones in file order."""
    from pyspark.sql import functions as F

    report = SkipReport(path)
    report.read = sum(n for code, n in counts.items() if code != BLANK)
    report.loaded = counts.get(0, 0)
    bad = rows.where((F.col("reason") > 0) & (F.col("reason") != BLANK))
    shown: Counter[str] = Counter()
    for row in bad.orderBy("index").limit(MAX_EXAMPLES).collect():
        code, detail = int(row["reason"]), ""
        if code == TOO_FEW:
            fields = next(csv.reader([row["text"]], delimiter=spec.delimiter), [])
            detail = f"{len(fields)} < {source.width}"
        elif code == 3 and row["ts"] is not None and row["ts"] >= LATEST_TIMESTAMP * 100:
            detail = "milliseconds?"
        elif code == 4:
            detail = repr(row["event_type"][:20])
        report.skip(f"{source.unit} {int(row['index']) + 1}", REASON_NAMES[code], detail)
        shown[REASON_NAMES[code]] += 1
    totals = Counter({REASON_NAMES[c]: n for c, n in counts.items() if c in REASON_NAMES})
    report.skipped.update(totals - shown)
    return report


def _vocabulary(kept: DataFrame, column: str) -> tuple[np.ndarray, DataFrame]:
    """The sorted distinct values of ``column`` (on the driver), and a frame of
    (value, ``{column}_code``) to join them back with."""
    from pyspark.sql import functions as F

    distinct = kept.select(F.col(column).alias("value")).distinct().orderBy("value")
    values = distinct.toArrow().column("value").to_numpy(zero_copy_only=False).astype(str)
    table = pa.table({"value": values, f"{column}_code": np.arange(len(values), dtype=np.int32)})
    return values, frame(kept.sparkSession, table)


def _encoded(kept: DataFrame, report: SkipReport, has_category: bool) -> EventLog:
    """The kept rows in file order, their ids as codes into sorted vocabularies."""
    from pyspark.sql import functions as F

    kinds = ["user", "item", *(["category"] if has_category else [])]
    vocabularies = {}
    coded = kept.select("index", "type", "ts", *kinds)
    for kind in kinds:
        vocabularies[kind], codes = _vocabulary(kept, kind)
        coded = coded.join(codes, F.col(kind) == F.col("value")).drop("value", kind)
    table = collect(coded.orderBy("index"))

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    return EventLog(
        user_codes=column("user_code", np.int32),
        item_codes=column("item_code", np.int32),
        types=column("type", np.int8),
        ts=column("ts", np.float64),
        category_codes=column("category_code", np.int32) if has_category else None,
        user_vocab=vocabularies["user"],
        item_vocab=vocabularies["item"],
        category_vocab=vocabularies.get("category"),
        report=report,
    )
