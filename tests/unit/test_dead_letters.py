"""Dead letters stay small whatever they carry, and a refused one never blocks ingest."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from helpers import Record
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from recsvc.dead_letters import (
    MAX_KEY_BYTES,
    VALUE_PREFIX_BYTES,
    DeadLetterQueue,
    Rejected,
)
from recsvc.exceptions import InvalidEvent

#: Kafka's default largest record (message.max.bytes).
KAFKA_LIMIT = 1_048_588


def letter_of(value: bytes | None, key: bytes | None = None, reason: str = "not_utf8") -> dict:
    rejected = Rejected(Record("events", 3, 41, key, value), InvalidEvent(reason, "detail"))
    encoded = rejected.dlq_value()
    assert len(encoded) < KAFKA_LIMIT
    return json.loads(encoded)


def test_a_large_non_utf8_message_makes_a_small_letter_with_its_first_bytes() -> None:
    value = bytes(range(128, 256)) * 2400  # 300 KB, no byte of it UTF-8
    letter = letter_of(value)
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("events", 3, 41)
    assert (letter["reason"], letter["size"], letter["truncated"]) == ("not_utf8", 307200, True)
    assert letter["encoding"] == "base64"
    assert base64.b64decode(letter["value"]) == value[:VALUE_PREFIX_BYTES]


def test_text_is_kept_as_text_and_cut_between_characters() -> None:
    value = ("é" * VALUE_PREFIX_BYTES).encode()  # two bytes a character
    letter = letter_of(value, reason="not_json")
    assert letter["encoding"] == "utf-8"
    assert letter["truncated"] and letter["size"] == 2 * VALUE_PREFIX_BYTES
    assert letter["value"] == "é" * (VALUE_PREFIX_BYTES // 2)


def test_control_characters_cannot_grow_a_letter_past_the_limit() -> None:
    letter = letter_of(b"\x01" * 2_000_000, reason="not_json")  # each one escapes to \u0001
    assert letter["value"] == "\x01" * VALUE_PREFIX_BYTES


def test_a_short_message_is_kept_whole() -> None:
    letter = letter_of(b"{broken", key=b"user-1", reason="not_json")
    assert (letter["encoding"], letter["value"], letter["truncated"]) == ("utf-8", "{broken", False)
    assert "key_size" not in letter
    assert letter_of(b"ab\xff")["value"] == base64.b64encode(b"ab\xff").decode()
    assert letter_of(None)["value"] is None


def test_a_long_key_is_left_off_and_its_size_said() -> None:
    key = b"k" * (MAX_KEY_BYTES + 1)
    rejected = Rejected(Record("events", 0, 1, key, b"x"), InvalidEvent("not_json"))
    assert rejected.key is None
    assert json.loads(rejected.dlq_value())["key_size"] == MAX_KEY_BYTES + 1
    short = Rejected(Record("events", 0, 1, b"u1", b"x"), InvalidEvent("not_json"))
    assert short.key == b"u1"


class Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


class Producer:
    """Answers each send as ``plan`` says, by the letter's offset."""

    def __init__(self, plan: dict[int, str]) -> None:
        self.plan = plan

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Any:
        offset = json.loads(value)["offset"]
        what = self.plan.get(offset, "ok")
        if what == "too_large_now":
            raise MessageSizeTooLargeError("The message is 1800282 bytes when serialized")
        return Future(
            {"ok": None, "too_large": MessageSizeTooLargeError(), "timeout": KafkaTimeoutError()}[
                what
            ]
        )

    def flush(self, timeout: float) -> None:
        return None


@pytest.mark.parametrize("refusal", ["too_large_now", "too_large"])
def test_letters_are_sorted_into_delivered_undeliverable_and_retry(refusal: str) -> None:
    letters = [
        Rejected(Record("events", 0, n, None, b"x"), InvalidEvent("not_json")) for n in range(4)
    ]
    outcome = DeadLetterQueue(Producer({1: refusal, 2: "timeout"}), "dlq").send(letters)  # type: ignore[arg-type]
    assert [r.record.offset for r in outcome.delivered] == [0, 3]
    assert [r.record.offset for r, _ in outcome.undeliverable] == [1]
    assert [r.record.offset for r in outcome.retry] == [2]
    assert isinstance(outcome.error, KafkaTimeoutError)
