"""The Event contract of the Kafka stream (recsvc.events)."""

import json

import pytest

from recsvc.events import Event, parse_event
from recsvc.exceptions import InvalidEvent

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1512230400}


def encode(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_good_event_round_trips() -> None:
    event = parse_event(encode(), known_item={"i1"}.__contains__)
    assert event == Event("e1", "u1", "i1", "click", 1512230400.0)
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (None, "not_json"),
        (b"[1, 2]", "not_an_object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "ts"}).encode(), "missing_field"),
        (encode(user_id=7), "wrong_type"),
        (encode(ts="yesterday"), "wrong_type"),
        (encode(ts=True), "wrong_type"),
        (encode(item_id=""), "bad_id"),
        (encode(user_id="a\nb"), "bad_id"),
        (encode(type="pv"), "unknown_type"),
        (encode(ts=1512230400000), "bad_ts"),
        (encode(ts=-1), "bad_ts"),
        (encode(item_id="ghost"), "unknown_item"),
        (encode(ts=int("9" * 400)), "bad_ts"),  # overflows a float
        (b"[" * 100_000, "not_json"),  # nested past the recursion limit
    ],
)
def test_each_broken_message_has_its_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, known_item={"i1"}.__contains__)
    assert caught.value.reason == reason
