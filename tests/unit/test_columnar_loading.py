"""The columnar loader against a reference parse with the csv module, on messy files."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from offline.data.arrow_columns import WHITESPACE, parse_timestamps
from offline.data.events import TAOBAO_SPEC, ColumnSpec, load_delimited
from offline.data.skips import SkipReport
from recsvc.contract import EVENT_TYPES, LATEST_TIMESTAMP

STAMPS = ["1511544070", "1511544070.5", " 1511544071 ", "1_511_544_072", "1.5e9", "+1511544073",
          "inf", "-inf", "nan", "NaN", "nan(1)", "1511544070000", "-3", "", "soon", "1e999",
          "\u00a01511544074", "0x10", ".5", "١٢"]  # fmt: skip
TYPES = ["pv", "cart", "fav", "buy", " pv ", "like", "", "PV", "a-very-long-unknown-event-type"]
IDS = ["1", "2", "10", "u\u00e9", " 3 ", "4\t", "", "  ", "\u30005", '"6,7"', "9" * 12]


def reference(path: Path, spec: ColumnSpec) -> tuple[SkipReport, list[tuple]]:
    """The csv-module loader as it was before the columnar one, row by row."""
    report = SkipReport(str(path))
    lookup = {**{t: t for t in EVENT_TYPES}, **spec.type_map}
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        header = [name.strip() for name in next(reader)] if spec.header else []
        pos = {k: v if isinstance(v, int) or v is None else header.index(v)
               for k, v in spec.columns().items()}  # fmt: skip
        width = max(p for p in pos.values() if p is not None) + 1
        for row in reader:
            where = f"line {reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            report.read += 1
            if len(row) < width:
                report.skip(where, "too few fields", f"{len(row)} < {width}")
                continue
            user, item = row[pos["user"]].strip(), row[pos["item"]].strip()
            if not user or not item:
                report.skip(where, "empty user or item id")
                continue
            try:
                stamp = float(row[pos["timestamp"]])
            except ValueError:
                report.skip(where, "unparsable timestamp")
                continue
            if not math.isfinite(stamp) or not 0 <= stamp < LATEST_TIMESTAMP:
                hint = "milliseconds?" if stamp >= LATEST_TIMESTAMP * 100 else ""
                report.skip(where, "timestamp out of range", hint)
                continue
            kind = spec.default_type
            if pos["event_type"] is not None:
                raw = row[pos["event_type"]].strip()
                kind = lookup.get(raw)
                if kind is None:
                    report.skip(where, "unknown event type", repr(raw[:20]))
                    continue
            cat = row[pos["category"]].strip() if pos["category"] is not None else None
            rows.append((user, item, EVENT_TYPES.index(kind), stamp, cat))
    report.loaded = len(rows)
    return report, rows


def messy_line(rng: random.Random, fields: int) -> str:
    """One line of a Taobao-like file: mostly good, often bad in one or several ways."""
    kind = rng.random()
    if kind < 0.04:
        return ""
    if kind < 0.06:
        return rng.choice(["   ", "\t", '""', ",,,,", " , , , , ", ",,"])
    good = rng.random() < 0.6
    row = [
        rng.choice(IDS[:3]) if good else rng.choice(IDS),
        rng.choice(IDS[:4]) if good else rng.choice(IDS),
        rng.choice(["5", " 6", "cat\u00e9"]),
        rng.choice(TYPES[:5]) if good else rng.choice(TYPES),
        rng.choice(STAMPS[:2]) if good else rng.choice(STAMPS),
    ]
    row += ["extra"] * (fields - 5)
    if rng.random() < 0.08:
        row = row[: rng.randrange(1, 5)]
    elif rng.random() < 0.08:
        row += ["x"] * rng.randrange(1, 3)
    return ",".join(row)


def messy_file(path: Path, rows: int, seed: int, fields: int = 5, header: str = "") -> Path:
    rng = random.Random(seed)
    lines = [header] if header else []
    lines += [messy_line(rng, fields) for _ in range(rows)]
    ending = rng.choice(["\n", "\r\n"])
    path.write_text(ending.join(lines) + rng.choice(["", ending, ending * 3]), newline="")
    return path


def assert_same(path: Path, spec: ColumnSpec) -> None:
    want_report, want_rows = reference(path, spec)
    log = load_delimited(path, spec)
    assert log.report.as_dict() == want_report.as_dict()
    assert len(log.report.examples) == min(20, want_report.n_skipped)
    users, items, types, stamps, cats = zip(*want_rows, strict=True)
    assert log.user_ids.tolist() == list(users)
    assert log.item_ids.tolist() == list(items)
    assert log.types.tolist() == list(types)
    assert log.ts.tolist() == list(stamps)
    if spec.category is not None:
        assert log.categories is not None and log.categories.tolist() == list(cats)
    for codes, vocab in ((log.user_codes, log.user_vocab), (log.item_codes, log.item_vocab)):
        assert codes.dtype == np.int32
        assert np.array_equal(vocab, np.unique(vocab[codes]))  # sorted, every entry used


@pytest.mark.parametrize("seed", range(4))
def test_a_messy_file_loads_as_the_csv_module_reads_it(tmp_path, seed):
    assert_same(messy_file(tmp_path / "log.csv", 2000, seed), TAOBAO_SPEC)


def test_rows_with_an_extra_column_are_the_usual_and_shorter_rows_come_back_in_order(tmp_path):
    assert_same(messy_file(tmp_path / "log.csv", 2000, 7, fields=6), TAOBAO_SPEC)


def test_a_messy_file_with_a_header_and_named_columns(tmp_path):
    path = messy_file(tmp_path / "log.csv", 2000, 11, header="user,item,cat,kind,time")
    spec = ColumnSpec(
        user="user", item="item", timestamp="time", event_type="kind", category="cat",
        header=True, type_map={"pv": "click"},
    )  # fmt: skip
    assert_same(path, spec)


def test_blocks_of_pyarrow_meet_the_rows_handed_to_python(tmp_path, monkeypatch):
    monkeypatch.setattr("offline.data.events._BLOCK_BYTES", 4096)
    assert_same(messy_file(tmp_path / "log.csv", 2000, 3), TAOBAO_SPEC)


def test_timestamps_are_read_as_float_reads_them():
    values = [*STAMPS, "1e5", "-0", "infinity", "1.", "1e", "00012"]
    stamps, unparsable = parse_timestamps(pa.array(values))
    for text, stamp, bad in zip(values, stamps, unparsable, strict=True):
        try:
            want = float(text)
        except ValueError:
            assert bad and math.isnan(stamp), text
        else:
            assert not bad and (stamp == want or (math.isnan(want) and math.isnan(stamp))), text


def test_the_whitespace_stripped_is_what_str_strip_strips():
    assert set(WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
