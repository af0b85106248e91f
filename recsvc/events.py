"""The Event contract of the ``recsvc.events`` stream, and its validation.

``{"event_id": str, "user_id": str, "item_id": str, "type": "click"|"cart"|"fav"|"buy",
"ts": float}`` with ``ts`` in Unix seconds. Every way a message can break the contract has
a fixed reason label, used for the dead-letter queue and its counters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from recsvc.contract import EVENT_TYPES, LATEST_TIMESTAMP, MAX_ID_LENGTH
from recsvc.exceptions import InvalidEvent

FIELDS = {"event_id": str, "user_id": str, "item_id": str, "type": str, "ts": float}

#: Every reason an event is rejected.
REASONS = (
    "not_utf8",
    "not_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "bad_id",
    "unknown_type",
    "bad_ts",
    "unknown_item",
    "unparsable",
    "rejected_by_store",
)


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "event_id": self.event_id,
                "user_id": self.user_id,
                "item_id": self.item_id,
                "type": self.type,
                "ts": self.ts,
            },
            separators=(",", ":"),
        ).encode()


def parse_event(raw: bytes | None, known_item: Callable[[str], bool] | None = None) -> Event:
    """Decode and check one message value.

    Raises
    ------
    InvalidEvent
        With ``reason`` one of ``REASONS`` and a detail naming the field.
    """
    if raw is None:
        raise InvalidEvent("not_json", "empty message (tombstone)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", str(exc)) from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent("not_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"got {type(data).__name__}")
    for name, kind in FIELDS.items():
        if name not in data:
            raise InvalidEvent("missing_field", name)
        value = data[name]
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind)
        )
        if not ok:
            raise InvalidEvent("wrong_type", f"{name} must be {kind.__name__}")
    for name in ("event_id", "user_id", "item_id"):
        value = data[name]
        if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise InvalidEvent("bad_id", f"{name} must be 1..{MAX_ID_LENGTH} printable characters")
    if data["type"] not in EVENT_TYPES:
        raise InvalidEvent("unknown_type", f"{data['type']!r} is not one of {EVENT_TYPES}")
    try:
        ts = float(data["ts"])
    except OverflowError:
        ts = math.inf
    if not math.isfinite(ts) or not 0 <= ts < LATEST_TIMESTAMP:
        raise InvalidEvent("bad_ts", f"{str(data['ts'])[:40]} is not Unix seconds (milliseconds?)")
    if known_item is not None and not known_item(data["item_id"]):
        raise InvalidEvent("unknown_item", f"{data['item_id']!r} is not in the bundle")
    return Event(data["event_id"], data["user_id"], data["item_id"], data["type"], ts)
