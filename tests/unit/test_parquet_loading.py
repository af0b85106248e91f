"""Parquet event files (``--format parquet``): the same events, checks and report as text."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.cli import add_event_arguments
from offline.data.events import ColumnSpec, load_delimited, load_events, load_parquet
from offline.pipeline import column_spec
from recsvc.exceptions import DataError

T = 1511544000
ROWS = [  # user, item, category, type, time
    ("u1", "i1", "c1", "pv", T + 1),
    ("u1", "i2", "c1", "cart", T + 2),
    ("u2", "", "c2", "pv", T + 3),  # empty item id
    ("u2", "i1", "c1", "like", T + 4),  # unknown type
    ("u3", "i3", "c2", "pv", T + 5),
]
SPEC = {"user": "user", "item": "item", "category": "cat", "event_type": "kind",
        "timestamp": "ts", "type_map": {"pv": "click"}}  # fmt: skip


def write_parquet(path: Path, columns: dict[str, pa.Array | list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def test_a_parquet_file_loads_as_its_text_twin_does(tmp_path: Path) -> None:
    users, items, cats, kinds, times = (list(c) for c in zip(*ROWS, strict=True))
    parquet = write_parquet(tmp_path / "events.parquet",
                            {"user": users, "item": items, "cat": cats, "kind": kinds,
                             "ts": times})  # fmt: skip
    text = tmp_path / "events.csv"
    text.write_text("user,item,cat,kind,ts\n" + "".join(",".join(map(str, r)) + "\n" for r in ROWS))
    from_parquet = load_events(parquet, ColumnSpec(**SPEC, parquet=True))
    from_text = load_delimited(text, ColumnSpec(**SPEC, header=True))
    for name in ("user_codes", "item_codes", "category_codes", "types", "ts", "user_vocab",
                 "item_vocab", "category_vocab"):  # fmt: skip
        assert np.array_equal(getattr(from_parquet, name), getattr(from_text, name)), name
    assert from_parquet.report.skipped == from_text.report.skipped
    # The text counts lines after the header; Parquet counts rows.
    assert from_parquet.report.examples == [
        "row 3: empty user or item id",
        "row 4: unknown event type ('like')",
    ]
    assert from_text.report.examples[0] == "line 4: empty user or item id"


def test_typed_columns_nulls_and_bad_times_are_read_or_counted(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "typed.parquet", {
        "user": pa.array([1, 2, None, 4, 5], pa.int64()),
        "item": pa.array([10, 11, 12, 13, 14], pa.int32()),
        "ts": pa.array([T * 1000, T * 1000 + 500, T * 1000, None, T * 1000], pa.int64()),
    })  # fmt: skip
    log = load_parquet(path, ColumnSpec(user=0, item=1, timestamp=2, parquet=True))
    assert log.user_ids.tolist() == ["1", "2", "5"]  # ids as text; milliseconds told apart
    assert log.ts.tolist() == [T, T + 0.5, T]
    assert log.report.examples == ["row 3: empty user or item id", "row 4: unparsable timestamp"]
    stamps = pa.array([T * 10**6, (T + 1) * 10**6], pa.timestamp("us", tz="UTC"))
    dated = write_parquet(tmp_path / "dated.parquet", {"u": ["a", "b"], "i": ["x", "y"],
                                                       "t": stamps})  # fmt: skip
    assert load_parquet(
        dated, ColumnSpec(user="u", item="i", timestamp="t", parquet=True)
    ).ts.tolist() == [T, T + 1]


def test_a_missing_column_or_a_file_that_is_not_parquet_is_a_clear_error(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "e.parquet", {"user": ["a"], "item": ["b"], "ts": [T]})
    with pytest.raises(DataError, match=r"column 'time' for timestamp is not in .*\['user'"):
        load_parquet(path, ColumnSpec(user="user", item="item", timestamp="time", parquet=True))
    text = tmp_path / "e.csv"
    text.write_text("a,b,1511544000\n")
    with pytest.raises(DataError, match="cannot read Parquet file"):
        load_parquet(text, ColumnSpec(user=0, item=1, timestamp=2, parquet=True))


def test_the_format_flag_names_parquet_columns_without_a_header_flag() -> None:
    parser = argparse.ArgumentParser()
    add_event_arguments(parser)
    args = parser.parse_args(["--format", "parquet", "--events", "e.parquet", "--user-col",
                              "user", "--item-col", "item", "--time-col", "ts"])  # fmt: skip
    spec = column_spec(args)
    assert spec.parquet and (spec.user, spec.item, spec.timestamp) == ("user", "item", "ts")


def test_the_time_shown_in_an_error_is_named_by_its_own_row(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "early.parquet",
                         {"u": ["a", "b", "c"], "i": ["x", "y", "z"],
                          "t": pa.array([None, 4517, 9034], pa.int64())})  # fmt: skip
    with pytest.raises(DataError, match="row 2: '4517' became 1970-01-01 01:15:17 UTC"):
        load_parquet(path, ColumnSpec(user="u", item="i", timestamp="t", parquet=True))
