"""How ingest splits a polled batch (the Kafka round trips are in tests/integration)."""

import json

from helpers import Record

from recsvc.events import Event
from recsvc.ingest import split_batch


def test_split_keeps_good_events_in_order_and_labels_the_bad() -> None:
    good = [Event(f"e{n}", "u", "i1", "click", 1000.0 + n) for n in range(3)]
    values = [good[0].to_json(), b"\xff", good[1].to_json(), None, good[2].to_json()]
    records = [Record("t", 2, 40 + n, b"u", v) for n, v in enumerate(values)]
    valid, rejected = split_batch(records, known_item={"i1"}.__contains__)
    assert [event for _, event in valid] == good
    assert [record.offset for record, _ in valid] == [40, 42, 44]
    assert [r.error.reason for r in rejected] == ["not_utf8", "not_json"]
    letter = json.loads(rejected[0].dlq_value())
    assert letter["reason"] == "not_utf8"
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("t", 2, 41)
    assert (letter["encoding"], letter["value"], letter["size"]) == ("base64", "/w==", 1)
    assert json.loads(rejected[1].dlq_value())["value"] is None


def test_an_unexpected_error_is_dead_lettered_not_raised() -> None:
    def broken_lookup(item: str) -> bool:
        raise RuntimeError("lookup table gone")

    good = Event("e1", "u", "i1", "click", 1000.0)
    records = [Record("t", 0, 7, None, good.to_json())]
    valid, rejected = split_batch(records, known_item=broken_lookup)
    assert valid == []
    assert rejected[0].error.reason == "unparsable"
    assert "lookup table gone" in rejected[0].error.detail
