"""Loading event logs (Taobao UserBehavior, any delimited file) onto the Event contract.

Every row either becomes an event or is counted under the reason it was skipped; the
report (:class:`offline.data.skips.SkipReport`) says how many rows of each kind there were and
shows the first skipped ones by line number.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from offline.data.skips import SkipReport
from recsvc.contract import EVENT_TYPES, LATEST_TIMESTAMP
from recsvc.exceptions import DataError

#: Taobao UserBehavior names for the contract's event types.
TAOBAO_TYPES = {"pv": "click", "cart": "cart", "fav": "fav", "buy": "buy"}


@dataclass(frozen=True)
class ColumnSpec:
    """Where each Event field is in a delimited file.

    Columns are 0-based positions, or names when the file has a header. Without an event
    type column every row is ``default_type``; ``type_map`` maps the file's type names onto
    the contract's (``click``, ``cart``, ``fav``, ``buy``); names absent from it must already
    be contract names.
    """

    user: int | str
    item: int | str
    timestamp: int | str
    event_type: int | str | None = None
    category: int | str | None = None
    delimiter: str = ","
    header: bool = False
    type_map: dict[str, str] = field(default_factory=dict)
    default_type: str = "click"

    def __post_init__(self) -> None:
        bad = {v for v in [*self.type_map.values(), self.default_type] if v not in EVENT_TYPES}
        if bad:
            raise DataError(
                f"event type mapping targets {sorted(bad)}, expected some of {list(EVENT_TYPES)}"
            )
        named = [c for c in self.columns().values() if isinstance(c, str)]
        if named and not self.header:
            raise DataError(f"columns {named} are named, but the file is read without a header")

    def columns(self) -> dict[str, int | str | None]:
        """Event field name → column (position or header name), None when absent."""
        return {
            "user": self.user,
            "item": self.item,
            "timestamp": self.timestamp,
            "event_type": self.event_type,
            "category": self.category,
        }


TAOBAO_SPEC = ColumnSpec(
    user=0, item=1, category=2, event_type=3, timestamp=4, type_map=TAOBAO_TYPES
)


@dataclass(frozen=True)
class EventLog:
    """Events with external string ids, in file order.

    Attributes
    ----------
    user_ids, item_ids : str arrays, shape (n,)
    types : int8 array, shape (n,), index into ``EVENT_TYPES``
    ts : float64 array, shape (n,), Unix seconds
    categories : str array, shape (n,), or None when the file has no category column
    report : SkipReport
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    types: np.ndarray
    ts: np.ndarray
    categories: np.ndarray | None
    report: SkipReport

    def __len__(self) -> int:
        return len(self.user_ids)

    def select(self, mask: np.ndarray) -> EventLog:
        """The rows where ``mask`` is true (the load report stays the file's)."""
        categories = None if self.categories is None else self.categories[mask]
        return EventLog(self.user_ids[mask], self.item_ids[mask], self.types[mask],
                        self.ts[mask], categories, self.report)  # fmt: skip


def load_taobao(path: str | Path) -> EventLog:
    """Load Taobao UserBehavior (``user,item,category,behavior,timestamp``, no header)."""
    return load_delimited(path, TAOBAO_SPEC)


def load_delimited(path: str | Path, spec: ColumnSpec) -> EventLog:
    """Load a delimited event file; bad rows are counted in the report, not raised.

    Raises
    ------
    DataError
        The file cannot be read, a named column is missing from the header, or no row
        is usable.
    """
    path = Path(path)
    report = SkipReport(str(path))
    type_codes = {name: i for i, name in enumerate(EVENT_TYPES)}
    type_lookup = {**{t: t for t in EVENT_TYPES}, **spec.type_map}
    users: list[str] = []
    items: list[str] = []
    types: list[int] = []
    stamps: list[float] = []
    cats: list[str] = []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read event file {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        try:
            positions = _resolve_columns(spec, reader)
            width = max(p for p in positions.values() if p is not None) + 1
            for row in reader:
                line_no = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                report.read += 1
                if len(row) < width:
                    report.skip(f"line {line_no}", "too few fields", f"{len(row)} < {width}")
                    continue
                user = row[positions["user"]].strip()
                item = row[positions["item"]].strip()
                if not user or not item:
                    report.skip(f"line {line_no}", "empty user or item id")
                    continue
                try:
                    stamp = float(row[positions["timestamp"]])
                except ValueError:
                    report.skip(f"line {line_no}", "unparsable timestamp")
                    continue
                if not math.isfinite(stamp) or not 0 <= stamp < LATEST_TIMESTAMP:
                    hint = "milliseconds?" if stamp >= LATEST_TIMESTAMP * 100 else ""
                    report.skip(f"line {line_no}", "timestamp out of range", hint)
                    continue
                if positions["event_type"] is None:
                    kind = spec.default_type
                else:
                    raw = row[positions["event_type"]].strip()
                    kind = type_lookup.get(raw)
                    if kind is None:
                        report.skip(f"line {line_no}", "unknown event type", repr(raw[:20]))
                        continue
                users.append(user)
                items.append(item)
                types.append(type_codes[kind])
                stamps.append(stamp)
                if positions["category"] is not None:
                    cats.append(row[positions["category"]].strip())
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: unreadable at line {reader.line_num}: {exc}") from exc
    report.loaded = len(users)
    if not users:
        raise DataError(f"no usable events in {path}\n{report.summary()}")
    return EventLog(
        user_ids=np.array(users, dtype=str),
        item_ids=np.array(items, dtype=str),
        types=np.array(types, dtype=np.int8),
        ts=np.array(stamps, dtype=np.float64),
        categories=np.array(cats, dtype=str) if positions["category"] is not None else None,
        report=report,
    )


def _resolve_columns(spec: ColumnSpec, reader: Iterator[list[str]]) -> dict[str, int | None]:
    columns = spec.columns()
    header: list[str] = []
    if spec.header:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise DataError("the file is empty (expected a header line)")
    positions: dict[str, int | None] = {}
    for field_name, column in columns.items():
        if column is None:
            positions[field_name] = None
        elif isinstance(column, int):
            if column < 0:
                raise DataError(f"column for {field_name} must be >= 0, got {column}")
            positions[field_name] = column
        elif column in header:
            positions[field_name] = header.index(column)
        else:
            raise DataError(f"column {column!r} for {field_name} is not in the header {header}")
    return positions
