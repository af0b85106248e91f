"""Item attributes from a catalogue file of their own (``--item-attributes``), as shops ship
them, instead of a category column repeated on every event row.

The file is delimited with a header line; one column names the item, another its category.
Every row is kept or counted under the reason it was skipped (too few fields, an empty item
id, an item listed again: the first row of an item wins). Items of the log that the file
does not list get the empty category, and their count is reported.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from offline.data.events import EventLog
from offline.data.skips import SkipReport
from recsvc.exceptions import DataError


@dataclass(frozen=True)
class AttributeSpec:
    """Where the item id and the category are in the attribute file (names in its header,
    or positions from 0)."""

    path: Path
    item: int | str = "item_id"
    category: int | str = "category"
    delimiter: str = ","


def load_item_categories(spec: AttributeSpec) -> tuple[dict[str, str], SkipReport]:
    """Item id -> category of every usable row, and the report of the file.

    Raises
    ------
    DataError
        The file cannot be read, a named column is not in its header, or no row is usable.
    """
    report = SkipReport(str(spec.path))
    categories: dict[str, str] = {}
    try:
        handle = spec.path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read item attributes {spec.path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        try:
            header = [name.strip() for name in next(reader, [])]
            item_at, category_at = (_position(header, c, spec) for c in (spec.item, spec.category))
            width = max(item_at, category_at) + 1
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                report.read += 1
                where = f"line {reader.line_num}"
                if len(row) < width:
                    report.skip(where, "too few fields", f"{len(row)} < {width}")
                    continue
                item = row[item_at].strip()
                if not item:
                    report.skip(where, "empty item id")
                elif item in categories:
                    report.skip(where, "item listed again", repr(item[:20]))
                else:
                    categories[item] = row[category_at].strip()
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{spec.path}: unreadable at line {reader.line_num}: {exc}") from exc
    report.loaded = len(categories)
    if not categories:
        raise DataError(f"no usable item attributes in {spec.path}\n{report.summary()}")
    return categories, report


def with_categories(log: EventLog, categories: dict[str, str]) -> tuple[EventLog, int]:
    """``log`` with each event's category taken from its item's, and how many of the log's
    items the attributes do not list (they get the empty category). Works on the
    vocabulary: one lookup per item, none per event."""
    items = log.item_vocab.tolist()
    of_item = np.array([categories.get(item, "") for item in items], dtype=str)
    listed = np.array([item in categories for item in items], dtype=bool)
    used = np.zeros(len(items), dtype=bool)
    used[log.item_codes] = True
    unlisted = int(np.sum(used & ~listed))
    names, codes = np.unique(of_item, return_inverse=True)
    per_event = codes.astype(np.int32)[log.item_codes]
    return replace(log, category_codes=per_event, category_vocab=names), unlisted


def _position(header: list[str], column: int | str, spec: AttributeSpec) -> int:
    if isinstance(column, int):
        if column < 0:
            raise DataError(f"item attribute column must be >= 0, got {column}")
        return column
    if column not in header:
        raise DataError(f"column {column!r} is not in the header of {spec.path}: {header}")
    return header.index(column)
