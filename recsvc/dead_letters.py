"""The dead-letter topic: where ingest puts the messages that break the Event contract.

A dead letter is a JSON object that says why and where a message was refused, with a
bounded prefix of its value, so that no message, however large or however badly encoded,
makes a letter the broker refuses (a non-UTF-8 value once became six bytes of ``\\ufffd``
escape per bad byte, over Kafka's 1 MB limit, and stalled its partition for good)::

    {"reason": "not_utf8", "detail": "...", "topic": "recsvc.events", "partition": 0,
     "offset": 41, "size": 307200, "encoding": "base64", "value": "/9j/...",
     "truncated": true}

``value`` is the first :data:`VALUE_PREFIX_BYTES` bytes of the message: as text when they
are UTF-8, else base64 (``encoding`` says which; ``null`` for a tombstone). ``size`` is the
whole value's length in bytes. The original key is kept when it is at most
:data:`MAX_KEY_BYTES` long; a longer one is left out and ``key_size`` gives its length.

A letter the broker still refuses for what it holds (the record-level errors of
:data:`UNDELIVERABLE`) is not retried: it is skipped, counted and logged, and its partition
moves on. Any other send error is returned for the caller to retry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from recsvc.exceptions import InvalidEvent

#: Bytes of a refused value kept in its letter: at most 6x this once JSON-escaped.
VALUE_PREFIX_BYTES = 64 * 1024
#: Longest key copied onto a letter.
MAX_KEY_BYTES = 1024
#: Longest ``detail`` kept, in characters.
MAX_DETAIL_CHARS = 500
#: Send errors that are about the letter itself: sending it again cannot succeed.
UNDELIVERABLE = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
)
SEND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Rejected:
    """A message that broke the Event contract."""

    record: Any  # kafka ConsumerRecord
    error: InvalidEvent

    def dlq_value(self) -> bytes:
        """The letter's JSON (see the module docstring); never much over 400 KB."""
        raw: bytes | None = self.record.value
        letter: dict[str, Any] = {
            "reason": self.error.reason,
            "detail": self.error.detail[:MAX_DETAIL_CHARS],
            "topic": self.record.topic,
            "partition": self.record.partition,
            "offset": self.record.offset,
            "size": None if raw is None else len(raw),
        }
        letter.update(_encoded_prefix(raw))
        if self.key is None and self.record.key is not None:
            letter["key_size"] = len(self.record.key)
        return json.dumps(letter).encode()

    @property
    def key(self) -> bytes | None:
        """The original key, if short enough to copy onto the letter."""
        key: bytes | None = self.record.key
        return key if key is not None and len(key) <= MAX_KEY_BYTES else None


def _encoded_prefix(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {"encoding": None, "value": None, "truncated": False}
    prefix = raw[:VALUE_PREFIX_BYTES]
    truncated = len(prefix) < len(raw)
    # A cut through a multi-byte character leaves at most 3 stray bytes at the end.
    for stray in range(4 if truncated else 1):
        try:
            text = prefix[: len(prefix) - stray].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return {"encoding": "utf-8", "value": text, "truncated": truncated}
    encoded = base64.b64encode(prefix).decode("ascii")
    return {"encoding": "base64", "value": encoded, "truncated": truncated}


@dataclass
class Delivery:
    """What one :meth:`DeadLetterQueue.send` did with each letter."""

    delivered: list[Rejected] = field(default_factory=list)
    undeliverable: list[tuple[Rejected, KafkaError]] = field(default_factory=list)
    #: Letters to send again, and the error that stopped them (None when there are none).
    retry: list[Rejected] = field(default_factory=list)
    error: KafkaError | None = None

    def refused(self, letter: Rejected, error: KafkaError) -> None:
        """Sort a letter the producer or the broker refused, by why."""
        if isinstance(error, UNDELIVERABLE):
            self.undeliverable.append((letter, error))
        else:
            self.retry.append(letter)
            self.error = self.error or error


class DeadLetterQueue:
    """Sends :class:`Rejected` messages to the dead-letter topic (blocking calls)."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    def send(self, rejected: Sequence[Rejected]) -> Delivery:
        """Send each letter and wait for the broker; sort them by outcome.

        Letters the broker refused for what they hold are ``undeliverable``; on any other
        error the letters not yet delivered are in ``retry``, with the first such error.
        """
        outcome = Delivery()
        sent: list[tuple[Rejected, Any]] = []
        for letter in rejected:
            try:
                future = self.producer.send(
                    self.topic,
                    value=letter.dlq_value(),
                    key=letter.key,
                    headers=[("reason", letter.error.reason.encode())],
                )
            except KafkaError as exc:
                outcome.refused(letter, exc)
            else:
                sent.append((letter, future))
        if sent:
            self.producer.flush(timeout=SEND_TIMEOUT_S)
        for letter, future in sent:
            try:
                future.get(timeout=SEND_TIMEOUT_S)
            except KafkaError as exc:
                outcome.refused(letter, exc)
            else:
                outcome.delivered.append(letter)
        return outcome
