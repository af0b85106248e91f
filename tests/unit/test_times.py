"""Event times as exports write them: seconds, milliseconds, ISO-8601 (offline/data/times.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from offline.cli import add_event_arguments
from offline.data.events import ColumnSpec, load_delimited
from offline.data.times import detect_format, parse_one
from offline.pipeline import column_spec
from recsvc.exceptions import DataError

T = 1511544000  # 2017-11-24 17:20:00 UTC


def load(tmp_path: Path, lines: list[str], time_format: str = "auto", delimiter: str = ","):
    path = tmp_path / "events.csv"
    path.write_text("".join(f"{line}\n" for line in lines))
    spec = ColumnSpec(user=0, item=1, timestamp=2, delimiter=delimiter, time_format=time_format)
    return load_delimited(path, spec)


@pytest.mark.parametrize("time_format", ["auto", "ms"])
def test_milliseconds_are_read_as_such(tmp_path: Path, time_format: str) -> None:
    log = load(tmp_path, [f"u;i;{T}000", f"u;j;{T}500", "u;k;soon"], time_format, ";")
    assert log.ts.tolist() == [T, T + 0.5]
    assert log.report.skipped == {"unparsable timestamp": 1}


def test_iso_times_with_and_without_offsets_are_read_naive_as_utc(tmp_path: Path) -> None:
    lines = ["u,i,2017-11-24T17:20:00Z", "u,j,2017-11-24 18:20:01+01:00", "u,k,2017-11-24",
             "u,l,yesterday"]  # fmt: skip
    log = load(tmp_path, lines)
    assert log.ts.tolist() == [T, T + 1, T - (17 * 3600 + 20 * 60)]
    assert log.report.examples == ["line 4: unparsable timestamp"]
    # Naive and uniform: pyarrow's own parser reads the column.
    assert load(tmp_path, ["u,i,2017-11-24 17:20:00", "u,j,2017-11-24 17:20:02"]).ts.tolist() == [
        T,
        T + 2,
    ]


def test_auto_tells_the_forms_apart_from_the_first_rows() -> None:
    assert detect_format([str(T), str(T + 1)]) == "s"
    assert detect_format([f"{T}000", f"{T}001"]) == "ms"
    assert detect_format(["2017-11-24T17:20:00Z", "2017-11-24"]) == "iso"
    assert detect_format(["soon", "later"]) == "s"  # then every row is unparsable
    assert parse_one(" 1_500 ", "ms") == 1.5
    with pytest.raises(ValueError):
        parse_one("1511544000", "iso")


def test_times_that_land_in_1970_are_an_error_showing_a_value_and_its_date(tmp_path: Path) -> None:
    # Milliseconds since the session start, read as seconds: a full, meaningless table.
    with pytest.raises(DataError) as caught:
        load(tmp_path, ["u,i,4517", "u,j,9034", "v,i,120"], "s")
    message = str(caught.value)
    assert "land around 1970-01-01" in message
    assert "line 1: '4517' became 1970-01-01 01:15:17 UTC" in message
    assert "--time-format" in message and "ms: Unix milliseconds" in message


def test_milliseconds_read_as_seconds_are_skipped_with_the_hint_and_the_forms(
    tmp_path: Path,
) -> None:
    with pytest.raises(DataError, match="no usable events") as caught:
        load(tmp_path, [f"u,i,{T}000", f"u,j,{T}001"], "s")
    message = str(caught.value)
    assert "line 1: timestamp out of range (milliseconds?)" in message
    assert f"read as Unix seconds (line 1: '{T}000')" in message and "ms: Unix milli" in message


def test_a_file_without_one_readable_time_says_what_forms_are_taken(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable events") as caught:
        load(tmp_path, ["u,i,24/11/2017", "u,j,25/11/2017"])
    message = str(caught.value)
    assert "line 1: '24/11/2017'" in message
    assert "iso: ISO-8601" in message and "ms: Unix milliseconds" in message


def test_an_unknown_time_format_is_refused() -> None:
    with pytest.raises(DataError, match="time format 'minutes' is none of auto, s, ms, iso"):
        ColumnSpec(user=0, item=1, timestamp=2, time_format="minutes")


def test_the_readme_diginetica_example_loads_with_its_flags(tmp_path: Path) -> None:
    views = tmp_path / "views.csv"
    views.write_text(
        "sessionId;userId;itemId;timestamp;eventdate\n"
        "1;;81766;1462752060000;2016-05-09\n1;;31331;1462752095000;2016-05-09\n"
    )
    parser = argparse.ArgumentParser()
    add_event_arguments(parser)
    flags = ["--format", "csv", "--delimiter", ";", "--header", "--user-col", "sessionId",
             "--item-col", "itemId", "--events", str(views)]  # fmt: skip
    by_ms = load_delimited(views, column_spec(parser.parse_args(
        [*flags, "--time-col", "timestamp", "--time-format", "ms"])))  # fmt: skip
    assert by_ms.ts.tolist() == [1462752060.0, 1462752095.0]
    assert by_ms.item_ids.tolist() == ["81766", "31331"]
    by_date = load_delimited(views, column_spec(parser.parse_args(
        [*flags, "--time-col", "eventdate", "--time-format", "iso"])))  # fmt: skip
    assert by_date.ts.tolist() == [1462752000.0, 1462752000.0]
