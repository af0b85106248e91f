"""Loading event logs (Taobao UserBehavior, any delimited file) onto the Event contract.

Every row either becomes an event or is counted under the reason it was skipped; the
report (:class:`offline.data.skips.SkipReport`) says how many rows of each kind there were and
shows the first skipped ones by line number.

Files are read by pyarrow's CSV reader, block by block: ids become int32 codes into
vocabularies as they are read, and no Python object is made per row. The rules are those of
Python's csv module with ``str.strip`` and ``float``: rows without the file's usual number of
fields (the most common one among its first rows) come to Python one by one (too few fields,
extra ones, a line of spaces), and timestamps that pyarrow does not read as ``float()`` does
go through ``float()``. pyarrow gives a blank line as a row of empty fields, so the lines of
such rows are looked up in the file (one more pass, up to the last of them). Known
differences from the csv module: a quoted field with a line break inside counts as one line
(later line numbers are one lower per such break), a UTF-8 byte-order mark before the first
row is dropped, and invalid UTF-8 is only noticed in the columns that are read.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from offline.data.arrow_columns import (
    DictionaryColumn,
    concatenated,
    position_of,
    sorted_vocabulary,
)
from offline.data.skips import MAX_EXAMPLES, SkipReport
from offline.data.times import (
    TIME_FORMATS,
    accepted,
    check_range,
    detect_format,
    is_typed_time,
    parse_column,
    parse_one,
    parse_typed,
)
from recsvc.contract import EVENT_TYPES, LATEST_TIMESTAMP
from recsvc.exceptions import DataError

#: Taobao UserBehavior names for the contract's event types.
TAOBAO_TYPES = {"pv": "click", "cart": "cart", "fav": "fav", "buy": "buy"}


@dataclass(frozen=True)
class ColumnSpec:
    """Where each Event field is in a delimited or Parquet file.

    Columns are 0-based positions, or names when the file has a header (a Parquet file,
    ``parquet``, always has one, and ``delimiter`` and ``header`` do not apply). Without an event
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
    time_format: str = "auto"
    parquet: bool = False

    def __post_init__(self) -> None:
        bad = {v for v in [*self.type_map.values(), self.default_type] if v not in EVENT_TYPES}
        if bad:
            raise DataError(
                f"event type mapping targets {sorted(bad)}, expected some of {list(EVENT_TYPES)}"
            )
        if self.time_format not in TIME_FORMATS:
            raise DataError(
                f"time format {self.time_format!r} is none of {', '.join(TIME_FORMATS)}"
            )
        named = [c for c in self.columns().values() if isinstance(c, str)]
        if named and not (self.header or self.parquet):
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
    """Events in file order, their ids as int32 codes into sorted vocabularies.

    Each vocabulary is a sorted str array without duplicates (``np.unique`` order), so code
    order is id order; a loaded log uses every entry, a :meth:`select` may leave some unused.

    Attributes
    ----------
    user_codes, item_codes : int32 arrays, shape (n,), into ``user_vocab`` and ``item_vocab``
    types : int8 array, shape (n,), index into ``EVENT_TYPES``
    ts : float64 array, shape (n,), Unix seconds
    category_codes : int32 array, shape (n,), into ``category_vocab``; None without categories
    user_vocab, item_vocab : str arrays
    category_vocab : str array, or None when the file has no category column
    report : SkipReport
    """

    user_codes: np.ndarray
    item_codes: np.ndarray
    types: np.ndarray
    ts: np.ndarray
    category_codes: np.ndarray | None
    user_vocab: np.ndarray
    item_vocab: np.ndarray
    category_vocab: np.ndarray | None
    report: SkipReport

    @classmethod
    def from_ids(
        cls,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        types: np.ndarray,
        ts: np.ndarray,
        categories: np.ndarray | None,
        report: SkipReport,
    ) -> EventLog:
        """A log from external string ids (one per row)."""
        user_vocab, users = _vocabulary(user_ids)
        item_vocab, items = _vocabulary(item_ids)
        cat_vocab, cats = (None, None) if categories is None else _vocabulary(categories)
        return cls(users, items, types, ts, cats, user_vocab, item_vocab, cat_vocab, report)

    def __len__(self) -> int:
        return len(self.user_codes)

    @property
    def user_ids(self) -> np.ndarray:
        """Each row's user id, decoded (a str array as large as the log: for small uses)."""
        return self.user_vocab[self.user_codes]

    @property
    def item_ids(self) -> np.ndarray:
        """Each row's item id, decoded (for small uses)."""
        return self.item_vocab[self.item_codes]

    @property
    def categories(self) -> np.ndarray | None:
        """Each row's category, decoded (for small uses); None without categories."""
        if self.category_codes is None or self.category_vocab is None:
            return None
        return self.category_vocab[self.category_codes]

    def select(self, mask: np.ndarray) -> EventLog:
        """The rows where ``mask`` is true, same vocabularies (the load report stays the file's)."""
        cats = None if self.category_codes is None else self.category_codes[mask]
        return EventLog(self.user_codes[mask], self.item_codes[mask], self.types[mask],
                        self.ts[mask], cats, self.user_vocab, self.item_vocab,
                        self.category_vocab, self.report)  # fmt: skip


def _vocabulary(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vocab, codes = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    return vocab, codes.astype(np.int32)


def load_taobao(path: str | Path) -> EventLog:
    """Load Taobao UserBehavior (``user,item,category,behavior,timestamp``, no header)."""
    return load_delimited(path, TAOBAO_SPEC)


#: Bytes per block read by pyarrow: the transient memory of a load, whatever the file's size.
_BLOCK_BYTES = 16 << 20
#: Rows read by the csv module to learn the file's usual number of fields.
SAMPLE_ROWS = 1000
#: Skip reasons of rows with all fields, in order of precedence (codes 1.. in ``_Rows.finish``).
SKIP_REASONS = (
    "empty user or item id",
    "unparsable timestamp",
    "timestamp out of range",
    "unknown event type",
)
_BLANK = len(SKIP_REASONS) + 1
TYPE_CODES = {name: i for i, name in enumerate(EVENT_TYPES)}


def load_events(path: str | Path, spec: ColumnSpec) -> EventLog:
    """Load an event file, Parquet or delimited as ``spec`` says (see those loaders)."""
    return load_parquet(path, spec) if spec.parquet else load_delimited(path, spec)


def load_parquet(path: str | Path, spec: ColumnSpec) -> EventLog:
    """Load a Parquet event file; bad rows are counted in the report as ``row N``, as the
    delimited loader counts its lines. Ids and categories may be of any type (they are
    read as text); times are text in ``spec.time_format``, numbers (seconds or
    milliseconds), or Parquet timestamps and dates. A null id is an empty one.

    Raises
    ------
    DataError
        The file cannot be read, a column is not in it, or no row is usable.
    """
    path = Path(path)
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from exc
    names = file.schema_arrow.names
    positions: dict[str, int | None] = {}
    for name, column in spec.columns().items():
        if column is None:
            positions[name] = None
        elif isinstance(column, int) and 0 <= column < len(names):
            positions[name] = column
        elif isinstance(column, str) and column in names:
            positions[name] = names.index(column)
        else:
            raise DataError(f"column {column!r} for {name} is not in {path}'s columns {names}")
    columns = {name: names[p] for name, p in positions.items() if p is not None}
    batches = file.iter_batches(batch_size=1 << 20, columns=list(dict.fromkeys(columns.values())))
    try:
        first = next(batches, None)
        sample = [] if first is None else first.column(columns["timestamp"])[:SAMPLE_ROWS]
        values = sample.to_pylist() if len(sample) else []
        rows_times = [(n, str(v)) for n, v in enumerate(values, 1) if v is not None]
        times = [text for _, text in rows_times]
        fmt = detect_format(times) if spec.time_format == "auto" else spec.time_format
        example = rows_times[0] if rows_times else None
        rows = _Rows(path, replace(spec, header=False), positions, 0, fmt, example, "row")
        for batch in itertools.chain([first] if first is not None else [], batches):
            rows.add(_as_text(batch, columns), columns)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from exc
    log = rows.finish()
    check_range(log.ts, fmt, rows.example, str(path), rows.unit)
    return log


def _as_text(batch: pa.RecordBatch, columns: dict[str, str]) -> pa.RecordBatch:
    """``batch`` with the id columns as dictionary-encoded text, nulls as empty text, and
    the time column as text unless it is numeric, a timestamp or a date."""
    out = {}
    for name, column_name in columns.items():
        column = batch.column(column_name)
        if name == "timestamp" and is_typed_time(column.type):
            out[column_name] = column
            continue
        text = pc.fill_null(column.cast(pa.string()), "")
        out[column_name] = text if name == "timestamp" else text.dictionary_encode()
    return pa.record_batch(list(out.values()), names=list(out))


def load_delimited(path: str | Path, spec: ColumnSpec) -> EventLog:
    """Load a delimited event file; bad rows are counted in the report, not raised.

    Raises
    ------
    DataError
        The file cannot be read, is not UTF-8, a named column is missing from the header,
        or no row is usable.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read event file {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        try:
            positions = resolve_columns(spec, reader)
            first = [(reader.line_num, row) for row in itertools.islice(reader, SAMPLE_ROWS)]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(path, exc) from exc
    width = max(p for p in positions.values() if p is not None) + 1
    # Rows with the most common field count are parsed by pyarrow, all others in Python.
    sample = [len(row) for _, row in first if row]
    n_fields = max(Counter(sample).most_common(1)[0][0] if sample else 0, width, 2)
    at = positions["timestamp"]
    assert at is not None  # a ColumnSpec always names it
    times = [(line, row[at].strip()) for line, row in first if len(row) >= width]
    fmt = spec.time_format
    if fmt == "auto":
        fmt = detect_format([text for _, text in times])
    rows = _Rows(path, spec, positions, width, fmt, times[0] if times else None)
    columns = {name: f"f{p}" for name, p in positions.items() if p is not None}
    dictionary = pa.dictionary(pa.int32(), pa.string())
    # Ids are dictionary-encoded as read; a timestamp column that is also an id is decoded.
    column_types = {col: dictionary for name, col in columns.items() if name != "timestamp"}
    column_types.setdefault(columns["timestamp"], pa.string())
    try:
        batches = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=[f"f{i}" for i in range(n_fields)],
                skip_rows=int(spec.header),
                block_size=_BLOCK_BYTES,
                use_threads=False,  # else the invalid-row handler gets no line numbers
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=spec.delimiter,
                ignore_empty_lines=False,
                invalid_row_handler=rows.odd_row,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=column_types, include_columns=list(dict.fromkeys(columns.values()))
            ),
        )
        for batch in batches:
            rows.add(batch, columns)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" not in str(exc):
            raise _unreadable(path, exc) from exc
    if rows.error is not None:
        raise rows.error
    log = rows.finish()
    check_range(log.ts, fmt, rows.example, str(path), rows.unit)
    return log


class _Rows:
    """The rows of one file as they are read: pyarrow's batches and, in Python, the rows it
    hands over (another number of fields than the usual)."""

    def __init__(
        self,
        path: Path,
        spec: ColumnSpec,
        positions: dict[str, int | None],
        width: int,
        time_format: str,
        example: tuple[int, str] | None,
        unit: str = "line",
    ) -> None:
        self.path, self.spec, self.positions, self.width = path, spec, positions, width
        #: What a report calls a row's place: ``line`` in a text file, ``row`` in Parquet.
        self.unit = unit
        #: How the times read (``s``, ``ms`` or ``iso``), and a (line, time text) to show.
        self.time_format, self.example = time_format, example
        self.first_line = 1 + int(spec.header)
        self.type_lookup = {**{t: t for t in EVENT_TYPES}, **spec.type_map}
        self.ids = {name: DictionaryColumn() for name in ("user", "item", "category", "event_type")}
        self.stamps: list[np.ndarray] = []
        self.unparsable: list[np.ndarray] = []
        self.n = 0
        # Rows handed over: every line number; the kept ones (line, pyarrow rows before it,
        # user, item, type code, timestamp, category); the skipped ones, counted.
        self.odd_lines: list[int] = []
        self.odd_kept: list[tuple[int, int, str, str, int, float, str]] = []
        self.odd_skipped: Counter[str] = Counter()
        self.odd_examples: list[tuple[int, str, str]] = []
        self.odd_blank = 0
        self.error: DataError | None = None

    def add(self, batch: pa.RecordBatch, columns: dict[str, str]) -> None:
        for name, codes in self.ids.items():
            if name in columns:
                codes.add(batch.column(columns[name]))
        stamps = batch.column(columns["timestamp"])
        if isinstance(stamps, pa.DictionaryArray):
            stamps = stamps.dictionary_decode()
        values, unparsable = (
            parse_typed(stamps, self.time_format)
            if is_typed_time(stamps.type)
            else parse_column(stamps, self.time_format)
        )
        self.stamps.append(values)
        self.unparsable.append(unparsable)
        self.n += batch.num_rows

    def odd_row(self, row: pa_csv.InvalidRow) -> str:
        """pyarrow's invalid-row handler: parse the row as the csv module does."""
        self.odd_lines.append(row.number)
        try:
            fields = next(csv.reader([row.text], delimiter=self.spec.delimiter), [])
        except csv.Error as exc:
            message = f"{self.path}: unreadable at line {row.number}: {exc}"
            self.error = self.error or DataError(message)
            return "skip"
        outcome = self._check(fields)
        if outcome is None:
            self.odd_blank += 1
        elif len(outcome) == 2:
            reason, detail = outcome
            self.odd_skipped[reason] += 1
            if len(self.odd_examples) < MAX_EXAMPLES:
                self.odd_examples.append((row.number, reason, detail))
        else:
            before = row.number - self.first_line - (len(self.odd_lines) - 1)
            self.odd_kept.append((row.number, before, *outcome))
        return "skip"

    def _check(self, row: list[str]) -> tuple[str, str] | tuple[str, str, int, float, str] | None:
        """None for a blank row, (reason, detail) for a bad one, else (user, item, type
        code, timestamp, category): the rules of the csv-module loader, row by row."""
        if not row or (len(row) == 1 and not row[0].strip()):
            return None
        pos = self.positions
        if len(row) < self.width:
            return "too few fields", f"{len(row)} < {self.width}"
        user, item = row[pos["user"]].strip(), row[pos["item"]].strip()  # type: ignore[index]
        if not user or not item:
            return "empty user or item id", ""
        try:
            stamp = parse_one(row[pos["timestamp"]], self.time_format)  # type: ignore[index]
        except ValueError:
            return "unparsable timestamp", ""
        if not math.isfinite(stamp) or not 0 <= stamp < LATEST_TIMESTAMP:
            return (
                "timestamp out of range",
                "milliseconds?" if stamp >= LATEST_TIMESTAMP * 100 else "",
            )
        kind = self.spec.default_type
        if pos["event_type"] is not None:
            raw = row[pos["event_type"]].strip()
            if raw not in self.type_lookup:
                return "unknown event type", repr(raw[:20])
            kind = self.type_lookup[raw]
        category = "" if pos["category"] is None else row[pos["category"]].strip()
        return user, item, TYPE_CODES[kind], stamp, category

    def finish(self) -> EventLog:
        """The log of the rows read: checks, the report, sorted vocabularies, file order."""
        n, kept = self.n, self.odd_kept
        users, user_vocab = self.ids["user"].finish([row[2] for row in kept])
        items, item_vocab = self.ids["item"].finish([row[3] for row in kept])
        stamps = concatenated(self.stamps, np.dtype(np.float64))
        unparsable = concatenated(self.unparsable, np.dtype(bool))
        type_codes, type_names = self.ids["event_type"].finish([])
        if self.positions["event_type"] is None:
            types = np.full(n, TYPE_CODES[self.spec.default_type], dtype=np.int8)
        else:
            names = type_names.to_pylist()
            codes = [TYPE_CODES.get(self.type_lookup.get(t, ""), -1) for t in names]
            types = np.array(codes, dtype=np.int8)[type_codes]
        no_id = users[:n] == position_of(user_vocab, "")
        no_id |= items[:n] == position_of(item_vocab, "")
        reason = np.zeros(n, dtype=np.int8)  # 0 kept, else 1 + index in SKIP_REASONS, or _BLANK
        reason[types < 0] = 4
        reason[~((stamps >= 0) & (stamps < LATEST_TIMESTAMP))] = 3
        reason[unparsable] = 2
        reason[no_id] = 1
        # A blank line reaches pyarrow as a row of empty fields: the candidates' text tells.
        candidates = np.flatnonzero(no_id & unparsable)
        if len(candidates) and self.unit == "line":
            reason[candidates[_blank_lines(self.path, self._lines(candidates))]] = _BLANK
        del no_id, unparsable
        report = self._report(reason, stamps, type_codes, type_names)
        del type_codes
        # Keep the good rows, with the ones handed over put back in file order.
        good = reason == 0
        before = np.array([row[1] for row in kept], dtype=np.int64)
        at = before - np.searchsorted(np.flatnonzero(reason), before)
        del reason

        def merge(column: np.ndarray, odd: object) -> np.ndarray:
            kept_rows = column[:n][good]
            if not len(at):
                return kept_rows
            return np.insert(kept_rows, at, np.asarray(odd, dtype=column.dtype))

        report.loaded = int(good.sum()) + len(kept)
        if not report.loaded:
            raise DataError(f"no usable events in {self.path}\n{report.summary()}{self._times()}")
        user_codes, user_names = sorted_vocabulary(merge(users, users[n:]), user_vocab)
        del users
        item_codes, item_names = sorted_vocabulary(merge(items, items[n:]), item_vocab)
        del items
        category_codes = category_names = None
        if self.positions["category"] is not None:
            cats, cat_vocab = self.ids["category"].finish([row[6] for row in kept])
            category_codes, category_names = sorted_vocabulary(merge(cats, cats[n:]), cat_vocab)
        return EventLog(
            user_codes=user_codes,
            item_codes=item_codes,
            types=merge(types, [row[4] for row in kept]),
            ts=merge(stamps, [row[5] for row in kept]),
            category_codes=category_codes,
            user_vocab=user_names,
            item_vocab=item_names,
            category_vocab=category_names,
            report=report,
        )

    def _times(self) -> str:
        """What to say of the times when no row was usable."""
        shown = f" ({self.unit} {self.example[0]}: {self.example[1]!r})" if self.example else ""
        return (
            f"\ntimes were read as {TIME_FORMATS[self.time_format]}{shown}; "
            f"--time-format takes {accepted()}"
        )

    def _lines(self, rows: np.ndarray) -> np.ndarray:
        """Physical line of each of pyarrow's ``rows``: the lines handed over fill the gaps."""
        odd = np.array(self.odd_lines, dtype=np.int64)
        gaps = odd - self.first_line - np.arange(len(odd))
        return self.first_line + rows + np.searchsorted(gaps, rows, side="right")

    def _report(
        self, reason: np.ndarray, stamps: np.ndarray, type_codes: np.ndarray, type_names: pa.Array
    ) -> SkipReport:
        """Rows read and skipped, pyarrow's and Python's together, examples in file order."""
        counts = np.bincount(reason, minlength=_BLANK + 1)
        report = SkipReport(str(self.path))
        report.read = self.n - int(counts[_BLANK]) + len(self.odd_lines) - self.odd_blank
        examples = list(self.odd_examples)
        first = np.flatnonzero((reason > 0) & (reason < _BLANK))[:MAX_EXAMPLES]
        for row, line in zip(first, self._lines(first), strict=True):
            code, detail = int(reason[row]), ""
            if code == 3 and stamps[row] >= LATEST_TIMESTAMP * 100:
                detail = "milliseconds?"
            elif code == 4:
                detail = repr(type_names[int(type_codes[row])].as_py()[:20])
            examples.append((int(line), SKIP_REASONS[code - 1], detail))
        shown = sorted(examples)[:MAX_EXAMPLES]
        for line, why, detail in shown:
            report.skip(f"{self.unit} {line}", why, detail)
        totals = self.odd_skipped + Counter(
            {why: int(counts[i + 1]) for i, why in enumerate(SKIP_REASONS)}
        )
        report.skipped.update(totals - Counter(why for _, why, _ in shown))
        return report


def _blank_lines(path: Path, lines: np.ndarray) -> np.ndarray:
    """Which of ``lines`` (increasing line numbers) are empty in the file."""
    blank = dict.fromkeys(lines.tolist(), False)
    last = int(lines[-1])
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, 1):
            if number in blank:
                blank[number] = not text.strip("\r\n")
            if number >= last:
                break
    return np.array(list(blank.values()), dtype=bool)


def _unreadable(path: Path, exc: Exception) -> DataError:
    """The error for a file that cannot be parsed, at its first line that is not UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(f"{path}: unreadable at line {number}: {bad}")
    return DataError(f"{path}: unreadable: {exc}")


def resolve_columns(spec: ColumnSpec, reader: Iterator[list[str]]) -> dict[str, int | None]:
    """Each event field's 0-based column (None when absent), the header read from ``reader``
    when ``spec`` has one.

    Raises
    ------
    DataError
        A named column is not in the header, or the header is missing.
    """
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
