"""Event times in the forms real exports use: Unix seconds, Unix milliseconds and ISO-8601.

``--time-format auto`` looks at the first rows of a file: numbers are seconds, unless their
median is at least :data:`MILLISECONDS_FROM` (a date in 5138 read as seconds; 1973 read as
milliseconds), then milliseconds; text that ISO-8601 reads is ISO-8601. Naive ISO times
(without ``Z`` or an offset) are UTC. Whatever the form, a file whose times land before 2000
or after tomorrow is an error that shows a value and the date it became: milliseconds since
the session start read as seconds, say, would otherwise load as a day of January 1970.
"""

from __future__ import annotations

import math
import statistics
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from offline.data.arrow_columns import parse_timestamps
from recsvc.exceptions import DataError

#: ``--time-format`` values and what each reads.
TIME_FORMATS = {
    "auto": "seconds, milliseconds or ISO-8601, told from the first rows",
    "s": "Unix seconds",
    "ms": "Unix milliseconds",
    "iso": "ISO-8601 date or date and time, UTC unless it has an offset",
}
#: Median of a numeric time column from which ``auto`` reads milliseconds.
MILLISECONDS_FROM = 1e11
#: The earliest time a log may hold: 2000-01-01 UTC.
EARLIEST_TIME = 946_684_800.0
#: How far past the clock a log's times may go (clocks differ).
FUTURE_SLACK_S = 86_400.0


def accepted() -> str:
    """The ``--time-format`` values, for error messages."""
    return "; ".join(f"{name}: {what}" for name, what in TIME_FORMATS.items())


def detect_format(samples: list[str]) -> str:
    """``s``, ``ms`` or ``iso`` for a column whose first values are ``samples`` (``s`` when
    nothing reads: the rows are then skipped as unparsable)."""
    numbers = []
    for text in samples:
        try:
            numbers.append(float(text))
        except ValueError:
            continue
    finite = [x for x in numbers if math.isfinite(x)]
    if finite and len(numbers) * 2 >= len(samples):
        return "ms" if statistics.median(finite) >= MILLISECONDS_FROM else "s"
    if sum(_iso_or_none(text) is not None for text in samples) * 2 >= len(samples) > 0:
        return "iso"
    return "s"


def parse_one(text: str, fmt: str) -> float:
    """Unix seconds of one value in ``fmt`` (``s``, ``ms`` or ``iso``).

    Raises
    ------
    ValueError
        It does not read in that format.
    """
    if fmt == "iso":
        seconds = _iso_or_none(text)
        if seconds is None:
            raise ValueError(f"not ISO-8601: {text!r}")
        return seconds
    value = float(text)
    return value / 1000.0 if fmt == "ms" else value


def parse_column(column: pa.Array, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of every value in ``fmt`` (NaN where it does not read) and where it did
    not: :func:`parse_one` on each, vectorised."""
    if fmt != "iso":
        seconds, unparsable = parse_timestamps(column)
        return (seconds / 1000.0 if fmt == "ms" else seconds), unparsable
    for unit in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):  # naive, then with zones
        try:
            micros = pc.cast(column, unit).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if micros.null_count == 0:
            return micros.to_numpy() / 1e6, np.zeros(len(column), dtype=bool)
    # Mixed forms or bad values: each one as Python reads it.
    parsed = [None if v is None else _iso_or_none(v) for v in column.to_pylist()]
    seconds = np.array([math.nan if v is None else v for v in parsed], dtype=np.float64)
    return seconds, np.isnan(seconds)


def is_typed_time(kind: pa.DataType) -> bool:
    """Whether a column of this type holds times as numbers, timestamps or dates (not text)."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date(kind)
    )


def parse_typed(column: pa.Array, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of a typed time column (:func:`is_typed_time`) and where it is null.
    Numbers are seconds, or milliseconds with ``fmt`` ``ms``; timestamps without a zone are
    UTC."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        zone = getattr(column.type, "tz", None) or None
        micros = pc.cast(column, pa.timestamp("us", tz=zone)).cast(pa.int64())
        seconds = pc.divide(micros.cast(pa.float64()), 1e6)
    else:
        seconds = column.cast(pa.float64())
        if fmt == "ms":
            seconds = pc.divide(seconds, 1000.0)
    values = seconds.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    return values, np.isnan(values) & np.asarray(column.is_null())


def check_range(
    ts: np.ndarray, fmt: str, example: tuple[int, str] | None, source: str, unit: str = "line"
) -> None:
    """Refuse a log whose times (most of them: the median) are before 2000 or in the future.

    ``example`` is (place, text) of a value of the file, shown with the date it became; the
    place is a ``unit`` (``line`` of a text file, ``row`` of a Parquet file).

    Raises
    ------
    DataError
        The times are out of that range.
    """
    if not len(ts):
        return
    middle = float(np.median(ts))
    latest = time.time() + FUTURE_SLACK_S
    if EARLIEST_TIME <= middle <= latest:
        return
    shown = ""
    if example is not None:
        line, text = example
        try:
            shown = f" ({unit} {line}: {text!r} became {_date(parse_one(text, fmt))})"
        except ValueError:
            shown = f" ({unit} {line}: {text!r})"
    raise DataError(
        f"{source}: the times read as {TIME_FORMATS[fmt]} land around {_date(middle)}, "
        f"outside 2000-01-01 to now{shown}; check --time-col and --time-format "
        f"({accepted()})"
    )


def _date(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:g} s"


def _iso_or_none(text: str) -> float | None:
    """Unix seconds of an ISO-8601 text (naive is UTC), None when it is not one."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
