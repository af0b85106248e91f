"""From loaded event logs to a dense-id dataset split into fit and holdout days."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from offline.data.events import EventLog
from offline.data.interactions import Catalogue, Interactions
from recsvc.exceptions import ConfigError, DataError

TRAIN, VALIDATION, TEST = 0, 1, 2
PHASE_NAMES = ("train", "validation", "test")
Holdout = Literal["validation", "test"]

_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$")


def parse_timezone(name: str) -> dt.tzinfo:
    """``UTC``, a fixed offset (``+08:00``, ``UTC+8``) or an IANA name (``Asia/Shanghai``)."""
    text = name.strip()
    if text.upper() in {"UTC", "GMT", "Z"}:
        return dt.UTC
    match = _OFFSET.match(text.upper())
    if match:
        sign, hours, minutes = match.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > dt.timedelta(hours=14):
            raise ConfigError(f"time zone offset {name!r} is beyond ±14:00")
        return dt.timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {name!r}: use UTC, an offset like +08:00, or an IANA name"
        ) from exc


def local_days(ts: np.ndarray, tz: dt.tzinfo) -> np.ndarray:
    """Calendar day (days since 1970-01-01 in ``tz``) of each timestamp.

    Offsets are looked up once per distinct UTC hour, so this stays vectorized for
    zones with daylight saving time.
    """
    hours = np.floor(ts / 3600.0).astype(np.int64)
    unique_hours, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array(
        [
            dt.datetime.fromtimestamp(int(h) * 3600, tz).utcoffset().total_seconds()  # type: ignore[union-attr]
            for h in unique_hours
        ],
        dtype=np.float64,
    )
    return np.floor((ts + offsets[inverse]) / 86400.0).astype(np.int64)


def day_name(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day))).isoformat()


def parse_day(text: str) -> int:
    try:
        return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days
    except ValueError as exc:
        raise ConfigError(f"--test-day must be YYYY-MM-DD, got {text!r}") from exc


@dataclass(frozen=True)
class Dataset:
    """Encoded events of the fit period and the holdout period, and the catalogue.

    Attributes
    ----------
    catalogue : Catalogue
        Items of the fit and holdout periods (holdout-only items have no behaviour yet
        but can be recommended by the pool's business rules).
    user_ids : str array, shape (n_users,)
    events : Interactions
        All kept events, sorted by (user, ts).
    is_holdout : bool array, shape (n_events,)
    split : dict
        Time zone, days, per-phase counts: goes into the bundle manifest.
    """

    catalogue: Catalogue
    user_ids: np.ndarray
    events: Interactions
    is_holdout: np.ndarray
    split: dict[str, object]

    @property
    def fit(self) -> Interactions:
        return self.events.select(~self.is_holdout)

    @property
    def holdout(self) -> Interactions:
        return self.events.select(self.is_holdout)


def assign_phases(
    log: EventLog, tz: dt.tzinfo, test_day: int | None, test_span: float | None
) -> tuple[np.ndarray, dict[str, object]]:
    """Phase of each row of the training log: the test day (default: the last day), the
    day before it for validation, earlier days for training; rows after the test day are
    dropped (phase -1). When the test period comes from another file (``test_span`` is its
    length in seconds), validation is the same length of time at the end of this log.
    """
    days = local_days(log.ts, tz)
    phase = np.full(len(days), TRAIN, dtype=np.int8)
    info: dict[str, object] = {"timezone": str(tz), "first_day": day_name(int(days.min()))}
    if test_span is not None:
        if test_day is not None:
            raise ConfigError("--test-day cannot be combined with --test-events")
        start = float(log.ts.max()) - max(test_span, 3600.0)
        phase[log.ts > start] = VALIDATION
        start_text = dt.datetime.fromtimestamp(start, tz).isoformat(timespec="seconds")
        info |= {"validation_day": f"after {start_text}", "test": "test file"}
        return phase, info
    test_day = int(days.max()) if test_day is None else test_day
    phase[days == test_day - 1] = VALIDATION
    phase[days == test_day] = TEST
    phase[days > test_day] = -1
    info |= {"validation_day": day_name(test_day - 1), "test": day_name(test_day)}
    return phase, info


def build_dataset(
    log: EventLog,
    test_log: EventLog | None = None,
    *,
    timezone: str = "UTC",
    test_day: str | None = None,
    holdout: Holdout = "test",
) -> Dataset:
    """Split by calendar day (or take ``test_log`` as the test period) and encode ids.

    With ``holdout="test"`` the fit period is train + validation days; with
    ``holdout="validation"`` it is the train days only and test rows are left out entirely,
    so nothing of the test period (not even its new items) leaks into tuning.
    """
    if holdout not in ("validation", "test"):
        raise ConfigError(f"holdout must be 'validation' or 'test', got {holdout!r}")
    tz = parse_timezone(timezone)
    test_span = float(np.ptp(test_log.ts)) if test_log is not None else None
    phase, info = assign_phases(log, tz, parse_day(test_day) if test_day else None, test_span)
    logs = [log]
    if test_log is not None:
        logs.append(test_log)
        phase = np.concatenate([phase, np.full(len(test_log), TEST, dtype=np.int8)])
    counts = {name: int((phase == i).sum()) for i, name in enumerate(PHASE_NAMES)}
    counts["after_test_day"] = int((phase == -1).sum())
    target = TEST if holdout == "test" else VALIDATION
    if counts[PHASE_NAMES[target]] == 0:
        raise DataError(f"no events in the {PHASE_NAMES[target]} period ({info})")
    if counts["train"] + (counts["validation"] if target == TEST else 0) == 0:
        raise DataError(f"no events before the {PHASE_NAMES[target]} period ({info})")
    keep = (phase >= 0) & (phase <= target)
    dataset = _encode(logs, keep, phase == target)
    split = {**info, "holdout": holdout, "events": counts}
    return Dataset(dataset[0], dataset[1], dataset[2], dataset[3], split)


def fit_period_log(
    log: EventLog,
    test_log: EventLog | None = None,
    *,
    timezone: str = "UTC",
    test_day: str | None = None,
    holdout: Holdout = "test",
) -> EventLog:
    """The rows of ``log`` that :func:`build_dataset` with the same arguments fits on.

    A time split inside them (their last day held out) trains the second-stage ranker on
    cases that the first-stage models never saw, and never on the held-out period.
    """
    tz = parse_timezone(timezone)
    test_span = float(np.ptp(test_log.ts)) if test_log is not None else None
    phase, _ = assign_phases(log, tz, parse_day(test_day) if test_day else None, test_span)
    target = TEST if holdout == "test" else VALIDATION
    return log.select((phase >= 0) & (phase < target))


def _concat(logs: list[EventLog], attr: str) -> np.ndarray:
    return np.concatenate([getattr(log, attr) for log in logs])


def _merged_codes(logs: list[EventLog], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One sorted vocabulary of the logs' ``kind`` (user, item, category) and every row's
    code in it."""
    vocabs = [getattr(log, f"{kind}_vocab") for log in logs]
    codes = [getattr(log, f"{kind}_codes") for log in logs]
    if len(logs) == 1:
        return vocabs[0], codes[0]
    vocab, inverse = np.unique(np.concatenate(vocabs), return_inverse=True)
    inverse = inverse.astype(np.int32)
    starts = np.cumsum([0, *map(len, vocabs)])[:-1]
    return vocab, np.concatenate([inverse[s + c] for s, c in zip(starts, codes, strict=True)])


def _dense(vocab: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vocabulary entries ``codes`` use and the codes renumbered into them: what
    ``np.unique(vocab[codes], return_inverse=True)`` gives, without a string per row."""
    used = np.zeros(len(vocab), dtype=bool)
    used[codes] = True
    renumber = np.cumsum(used, dtype=np.int32) - 1
    return vocab[used], renumber[codes]


def _encode(
    logs: list[EventLog], keep: np.ndarray, holdout: np.ndarray
) -> tuple[Catalogue, np.ndarray, Interactions, np.ndarray]:
    user_vocab, user_codes = _merged_codes(logs, "user")
    user_ids, users = _dense(user_vocab, user_codes[keep])
    item_vocab, item_codes = _merged_codes(logs, "item")
    item_ids, items = _dense(item_vocab, item_codes[keep])
    del user_codes, item_codes
    types = _concat(logs, "types")[keep]
    ts = _concat(logs, "ts")[keep]
    holdout = holdout[keep]
    has_categories = all(log.category_codes is not None for log in logs)
    n_items = len(item_ids)
    # The listing time of an item is its first fit-period event; an item first seen in the
    # held-out period counts as listed when that period begins, so the order of the held-out
    # events themselves never reaches the pools' newest-items rule.
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, items[~holdout], ts[~holdout])
    first_seen[np.isinf(first_seen)] = ts[holdout].min() if holdout.any() else np.inf
    if has_categories:
        cat_vocab, cat_codes = _merged_codes(logs, "category")
        category_names, cats = _dense(cat_vocab, cat_codes[keep])
        item_category = np.full(n_items, -1, dtype=np.int32)
        # The category of an item's first row (in time order) names it.
        by_item = np.lexsort((ts, items))
        first_rows = by_item[np.unique(items[by_item], return_index=True)[1]]
        item_category[items[first_rows]] = cats[first_rows]
    else:
        category_names = np.array([], dtype=str)
        item_category = np.full(n_items, -1, dtype=np.int32)
    order = np.lexsort((ts, users))
    events = Interactions(
        users=users[order].astype(np.int32),
        items=items[order].astype(np.int32),
        types=types[order],
        ts=ts[order],
        n_users=len(user_ids),
        n_items=n_items,
    )
    catalogue = Catalogue(item_ids, item_category, category_names, first_seen)
    return catalogue, user_ids, events, holdout[order]


def describe_split(split: dict[str, Any]) -> str:
    """One plain line: what the models are fitted on and what is held out."""
    n = split["events"]
    validation, test = split["validation_day"], split["test"]
    if split["holdout"] == "test":
        text = (
            f"fit on {n['train'] + n['validation']:,} events (everything before the test "
            f"period: {n['train']:,} training and {n['validation']:,} validation events); "
            f"held out: {n['test']:,} events of the test period ({test})"
        )
    else:
        text = (
            f"fit on {n['train']:,} training events; held out: {n['validation']:,} events of "
            f"the validation period ({validation}); the {n['test']:,} test events are left out"
        )
    if n["after_test_day"]:
        text += f"; {n['after_test_day']:,} events after the test day are dropped"
    return f"split ({split['timezone']}): {text}"
