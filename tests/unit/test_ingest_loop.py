"""The pipelined ingest loop, with in-memory stand-ins for the Kafka clients and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import Record
from kafka import TopicPartition
from kafka.errors import MessageSizeTooLargeError, UnsupportedVersionError
from kafka.structs import OffsetAndTimestamp

from recsvc import settings
from recsvc.events import Event
from recsvc.exceptions import ConfigError, SessionStoreError
from recsvc.ingest import Ingestor, Rewind
from recsvc.metrics import Metrics
from recsvc.retry import Backoff
from recsvc.sessions import InMemorySessionStore

TP = TopicPartition("events", 0)


class FakeConsumer:
    """Hands out ``batches`` one per poll, then stops the ingestor; logs every call."""

    def __init__(self, batches: list[list[Record]], log: list[tuple], stopping: asyncio.Event):
        self.batches = batches
        self.log = log
        self.stopping = stopping
        self.loop = asyncio.get_running_loop()

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        if not self.batches:
            self.loop.call_soon_threadsafe(self.stopping.set)
            return {}
        batch = self.batches.pop(0)
        self.log.append(("poll", batch[-1].offset))
        return {TP: batch}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.log.append(("commit", offsets[TP].offset))

    def assignment(self) -> set[TopicPartition]:
        return set()


class FakeProducer:
    """Takes every letter, or with ``refuse`` none, as a broker refuses a too-large one."""

    def __init__(self, refuse: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.refuse = refuse

    def send(self, topic: str, value: bytes, key: bytes | None, headers: list) -> Any:
        if self.refuse:
            raise MessageSizeTooLargeError("The message is 1800282 bytes when serialized")
        self.sent.append((topic, value))
        return type("Done", (), {"get": lambda self, timeout: None})()

    def flush(self, timeout: float) -> None:
        return None


class LoggingStore(InMemorySessionStore):
    def __init__(self, log: list[tuple], fail: bool = False) -> None:
        super().__init__(length=50)
        self.log = log
        self.fail = fail

    async def append(self, events: Sequence[Event]) -> int:
        await asyncio.sleep(0.01)  # the next poll overlaps this write
        if self.fail:
            raise SessionStoreError("Redis is down")
        self.log.append(("append", events[-1].event_id))
        return await super().append(events)


def records(start: int, count: int, bad: tuple[int, ...] = ()) -> list[Record]:
    out = []
    for offset in range(start, start + count):
        event = Event(f"e{offset}", f"u{offset % 3}", "i1", "click", 1000.0 + offset)
        value = b"{broken" if offset in bad else event.to_json()
        out.append(Record("events", 0, offset, None, value))
    return out


def run_ingestor(
    batches: list[list[Record]], fail: bool = False, refuse_letters: bool = False
) -> tuple[list, Any, Any]:
    log: list[tuple] = []

    async def scenario() -> tuple[Any, Any]:
        stopping = asyncio.Event()
        store = LoggingStore(log, fail)
        producer = FakeProducer(refuse_letters)
        metrics = Metrics()
        ingestor = Ingestor(
            FakeConsumer(batches, log, stopping),  # type: ignore[arg-type]
            producer,  # type: ignore[arg-type]
            store,
            {"i1"}.__contains__,
            metrics,
            "events.dlq",
            backoff=lambda: Backoff(base_s=0.01, cap_s=0.01),
            stopping=stopping,
        )
        if fail:  # as on SIGTERM while Redis is down
            asyncio.get_running_loop().call_later(0.3, stopping.set)
        await ingestor.run()
        return store, producer, metrics

    store, producer, metrics = asyncio.run(scenario())
    return log, (store, producer), metrics


def counter(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("recsvc_ingest_events_total", {"result": result})


def test_each_batch_is_committed_after_it_is_stored_while_the_next_is_polled() -> None:
    log, (store, producer), metrics = run_ingestor(
        [records(0, 4, bad=(2,)), records(4, 3), records(7, 5)]
    )
    assert log == [
        ("poll", 3),
        ("poll", 6),  # polled while the first batch is written
        ("append", "e3"),
        ("commit", 4),
        ("poll", 11),
        ("append", "e6"),
        ("commit", 7),
        ("append", "e11"),
        ("commit", 12),
    ]
    assert [topic for topic, _ in producer.sent] == ["events.dlq"]
    assert counter(metrics, "applied") == 11
    assert counter(metrics, "dead_lettered") == 1
    stored = [asyncio.run(store.recent(f"u{n}")) for n in range(3)]
    assert sorted(e.event_id for session in stored for e in session) == sorted(
        f"e{n}" for n in range(12) if n != 2
    )


def test_a_batch_redis_never_takes_is_not_committed_when_stopping() -> None:
    log, _, metrics = run_ingestor([records(0, 3), records(3, 3)], fail=True)
    assert not [entry for entry in log if entry[0] in ("commit", "append")]
    assert counter(metrics, "applied") is None
    assert metrics.registry.get_sample_value("recsvc_ingest_retries_total", {"dependency": "redis"})


def test_a_letter_the_dead_letter_topic_refuses_is_skipped_and_counted() -> None:
    log, (_, producer), metrics = run_ingestor(
        [records(0, 3, bad=(1,)), records(3, 2)], refuse_letters=True
    )
    assert producer.sent == []
    assert counter(metrics, "skipped") == 1
    assert counter(metrics, "dead_lettered") == 0
    assert counter(metrics, "applied") == 4
    assert [entry for entry in log if entry[0] == "commit"] == [("commit", 3), ("commit", 5)]
    assert (
        metrics.registry.get_sample_value("recsvc_ingest_retries_total", {"dependency": "kafka"})
        is None
    )


def test_ingest_settings_are_checked() -> None:
    assert settings.load(environ={}).ingest_check_crcs == 1  # cheap with crc32c installed
    loaded = settings.load(environ={"RECSVC_INGEST_MAX_POLL_RECORDS": "5000"})
    assert loaded.ingest_max_poll_records == 5000
    for name, value in [("INGEST_CHECK_CRCS", "2"), ("INGEST_MAX_POLL_RECORDS", "0")]:
        with pytest.raises(ConfigError, match=f"RECSVC_{name}"):
            settings.load(environ={f"RECSVC_{name}": value})


def test_a_rebuild_rewinds_each_partition_once_to_the_time_asked() -> None:
    p0, p1, p2 = (TopicPartition("t", n) for n in range(3))

    class Consumer:
        def __init__(self) -> None:
            self.assigned = {p0, p1}
            self.asked: list[dict[TopicPartition, int]] = []
            self.seeks: list[tuple[TopicPartition, int]] = []

        def assignment(self) -> set[TopicPartition]:
            return self.assigned

        def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict:
            self.asked.append(times)
            # partition 1 has nothing since then
            return {
                tp: None if tp.partition == 1 else OffsetAndTimestamp(40 + tp.partition, 0, None)
                for tp in times
            }

        def seek(self, tp: TopicPartition, offset: int) -> None:
            self.seeks.append((tp, offset))

        def position(self, tp: TopicPartition) -> int:
            return 30 if tp.partition == 3 else 100  # p3's group is behind the time asked

    consumer = Consumer()
    rewind = Rewind(since=1000.0)
    polled = {p0: ["r0"], p1: ["r1"]}
    # p0 moves back: what the poll brought of it is dropped (it comes again, uncommitted);
    # p1 has nothing since then and keeps the group's position and its records.
    assert rewind.apply(consumer, polled) == {p1: ["r1"]}  # type: ignore[arg-type]
    assert consumer.asked == [{p0: 1_000_000, p1: 1_000_000}]
    assert consumer.seeks == [(p0, 40)]
    assert rewind.apply(consumer, polled) == polled  # type: ignore[arg-type]
    # A rebalance gives p2 too: only p2 is rewound; p0 goes on from where it is.
    consumer.assigned = {p0, p1, p2}
    assert rewind.apply(consumer, {p0: ["r0"], p2: ["r2"]}) == {p0: ["r0"]}  # type: ignore[arg-type]
    assert consumer.asked[1] == {p2: 1_000_000} and consumer.seeks[1:] == [(p2, 42)]
    # A group further back than the time asked (offset 43 > position 30) is not moved
    # forward: that would skip events for good.
    p3 = TopicPartition("t", 3)
    consumer.assigned = {p0, p1, p2, p3}
    assert rewind.apply(consumer, {p3: ["r3"]}) == {p3: ["r3"]}  # type: ignore[arg-type]
    assert consumer.seeks[2:] == []


def test_a_broker_that_cannot_look_offsets_up_by_time_stops_the_rebuild_plainly() -> None:
    class OldBroker:
        def assignment(self) -> set[TopicPartition]:
            return {TopicPartition("t", 0)}

        def offsets_for_times(self, times: dict[TopicPartition, int]) -> dict:
            raise UnsupportedVersionError("ListOffsetsRequest v1")

    # Not a warning after every poll for ever: the flag cannot work against this broker.
    with pytest.raises(ConfigError, match=r"Kafka 0\.10\.1"):
        Rewind(since=1000.0).apply(OldBroker(), {})  # type: ignore[arg-type]
