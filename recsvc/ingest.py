"""``recsvc ingest``: events from Kafka into the users' Redis sessions, nothing lost.

Each polled batch is handled in three steps, each retried with backoff until it succeeds:
invalid messages are sent to the dead-letter topic with their reason (:mod:`recsvc.dead_letters`;
one the topic can never take is skipped, counted and logged); valid events are appended to the
session store; then the batch's offsets are committed. Offsets are committed
only after Redis (and the DLQ) hold the batch, so a crash replays at most the two batches in
hand (the one being written and the next one, polled meanwhile), and the session store's
idempotent append makes a replayed event count once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError, UnsupportedVersionError
from kafka.structs import OffsetAndMetadata

from recsvc.dead_letters import DeadLetterQueue, Rejected
from recsvc.events import Event, parse_event
from recsvc.exceptions import ConfigError, InvalidEvent, SessionStoreError
from recsvc.kafka_login import check_sasl_login
from recsvc.metrics import Metrics
from recsvc.redact import redact_url
from recsvc.reloader import BundleReloader
from recsvc.retry import Backoff
from recsvc.sessions import SessionStore, SessionWriteRejected
from recsvc.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = (KafkaError, SessionStoreError, OSError)
Polled = Mapping[TopicPartition, list[Any]]
LAG_INTERVAL_S = 10.0
#: How often the live state held in Redis is counted (a SCAN of every item's key).
LIVE_HELD_INTERVAL_S = 60.0


class StopRequested(Exception):
    """Stopping was asked for while a batch was still waiting for Redis or Kafka."""


@dataclass(frozen=True)
class Batch:
    """One poll's messages, validated, and the offsets to commit once they are stored."""

    valid: list[tuple[Any, Event]]
    rejected: list[Rejected]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    size: int


def split_batch(
    records: Sequence[Any], known_item: Callable[[str], bool] | None
) -> tuple[list[tuple[Any, Event]], list[Rejected]]:
    """(record, event) of the valid messages and the rejected ones, each in offset order;
    with ``known_item``, an event of an item it does not know is rejected."""
    valid: list[tuple[Any, Event]] = []
    rejected: list[Rejected] = []
    for record in records:
        try:
            valid.append((record, parse_event(record.value, known_item)))
        except InvalidEvent as exc:
            rejected.append(Rejected(record, exc))
        except Exception as exc:  # a message must never stall the partition
            log.exception("unexpected error parsing a message", extra={"offset": record.offset})
            rejected.append(Rejected(record, InvalidEvent("unparsable", repr(exc)[:200])))
    return valid, rejected


class Ingestor:
    """The consume → dead-letter → append → commit loop (see the module docstring)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        store: SessionStore,
        known_item: Callable[[str], bool] | None,
        metrics: Metrics,
        dlq_topic: str,
        backoff: Callable[[], Backoff] = Backoff,
        stopping: asyncio.Event | None = None,
        rewind: Rewind | None = None,
    ) -> None:
        self.consumer = consumer
        self.store = store
        self.known_item = known_item
        self.metrics = metrics
        self.dlq = DeadLetterQueue(producer, dlq_topic)
        self.backoff = backoff
        self.stopping = stopping or asyncio.Event()
        self.rewind = rewind
        self._lag_checked = 0.0
        self._live_seen = dataclasses.replace(store.live_counts)

    async def run(self) -> None:
        """Consume until ``stopping`` is set.

        Batches are pipelined: while one batch is being written to Redis, the next is
        polled and validated; a batch's offsets are committed once its write is done, and
        at most one batch is in flight, so a crash still replays at most two batches.
        """
        pending: asyncio.Task[Batch] | None = None
        try:
            while not self.stopping.is_set():
                batch = await self._poll()
                if pending is not None:
                    await self._finish(pending)
                    pending = None
                if batch is not None:
                    pending = asyncio.create_task(self._apply(batch))
                if time.monotonic() - self._lag_checked > LAG_INTERVAL_S:
                    await self._report_lag()
            if pending is not None:
                await self._finish(pending)
                pending = None
        except StopRequested:
            log.info("stopped with a batch not yet stored; its offsets stay uncommitted")
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _poll(self, timeout_ms: int = 500) -> Batch | None:
        """The next polled batch, validated; None when the poll returned nothing."""
        polled = await asyncio.to_thread(self._poll_now, timeout_ms)
        records = [r for part in polled.values() for r in part]
        if not records:
            return None
        valid, rejected = split_batch(records, self.known_item)
        offsets = {
            tp: OffsetAndMetadata(part[-1].offset + 1, "", -1)
            for tp, part in polled.items()
            if part
        }
        return Batch(valid, rejected, offsets, len(records))

    def _poll_now(self, timeout_ms: int) -> Polled:
        """One poll (on a worker thread: it blocks), rewound when a rebuild asks for it."""
        polled: Polled = self.consumer.poll(timeout_ms)
        return self.rewind.apply(self.consumer, polled) if self.rewind is not None else polled

    async def _apply(self, batch: Batch) -> Batch:
        """Dead-letter the invalid messages and store the valid ones.

        This runs while the next batch is polled, so it must not touch the consumer.
        """
        if batch.rejected:
            await self._retrying("kafka", self._dead_letter, batch.rejected)
        if batch.valid:
            await self._store(batch.valid)
        return batch

    async def _finish(self, pending: asyncio.Task[Batch]) -> None:
        """Wait for a batch to be stored, then commit its offsets."""
        batch = await pending
        await self._commit(batch.offsets)
        log.debug("batch", extra={"messages": batch.size, "rejected": len(batch.rejected)})

    async def _store(self, valid: Sequence[tuple[Any, Event]]) -> None:
        """Append the events, dead-lettering any the store refuses for good."""
        events = [event for _, event in valid]
        refused: list[Rejected] = []
        try:
            added = await self._retrying("redis", self.store.append, events)
        except SessionWriteRejected as exc:
            added = exc.added
            record_of = {event: record for record, event in valid}
            refused = [
                Rejected(record_of[event], InvalidEvent("rejected_by_store", reason))
                for event, reason in exc.rejected
            ]
            await self._retrying("kafka", self._dead_letter, refused)
        self.metrics.ingest_events.labels(result="applied").inc(added)
        duplicates = len(events) - added - len(refused)
        self.metrics.ingest_events.labels(result="duplicate").inc(duplicates)
        self._count_live()

    def _count_live(self) -> None:
        """Add the store's live co-visit counts since the last batch to the metrics."""
        now, last = self.store.live_counts, self._live_seen
        for result, value, before in (
            ("applied", now.updates, last.updates),
            ("refused", now.refused, last.refused),
        ):
            if value > before:
                self.metrics.live_updates.labels(result=result).inc(value - before)
        if now.evictions > last.evictions:
            self.metrics.live_evictions.inc(now.evictions - last.evictions)
        self._live_seen = dataclasses.replace(now)

    async def _dead_letter(self, rejected: Sequence[Rejected]) -> None:
        """Send letters until each is delivered, or is one the broker can never take."""
        remaining = list(rejected)

        async def attempt() -> None:
            nonlocal remaining
            outcome = await asyncio.to_thread(self.dlq.send, remaining)
            for r in outcome.delivered:
                self.metrics.dlq_events.labels(reason=r.error.reason).inc()
                log.info("dead-lettered", extra=_letter_fields(r))
            for r, exc in outcome.undeliverable:
                log.error(
                    "skipped a message the dead-letter topic refuses",
                    extra={**_letter_fields(r), "error": str(exc)[:300]},
                )
            self.metrics.ingest_events.labels(result="dead_lettered").inc(len(outcome.delivered))
            self.metrics.ingest_events.labels(result="skipped").inc(len(outcome.undeliverable))
            remaining = outcome.retry
            if outcome.error is not None:
                raise outcome.error

        await self._retrying("kafka", attempt)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await self._retrying("kafka", asyncio.to_thread, self.consumer.commit, offsets)
        except CommitFailedError as exc:
            # The group rebalanced: another member will get these messages again, and the
            # idempotent append makes that harmless.
            log.warning("commit failed after a rebalance", extra={"error": str(exc)})

    async def _retrying(self, dependency: str, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``call(*args)`` until it succeeds, backing off on retryable errors.

        Raises
        ------
        StopRequested
            ``stopping`` was set while waiting to retry.
        """
        backoff = self.backoff()
        while True:
            try:
                return await call(*args)
            except CommitFailedError:
                raise
            except RETRYABLE as exc:
                delay = backoff.next_delay()
                self.metrics.ingest_retries.labels(dependency=dependency).inc()
                log.warning(
                    f"{dependency} call failed; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 3)},
                )
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except TimeoutError:
                    continue
                raise StopRequested from exc

    async def _report_lag(self) -> None:
        self._lag_checked = time.monotonic()
        assigned = list(self.consumer.assignment())
        if not assigned:
            return
        try:
            ends = await asyncio.to_thread(self.consumer.end_offsets, assigned)
            for tp in assigned:
                position = await asyncio.to_thread(self.consumer.position, tp)
                self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                    max(ends[tp] - position, 0)
                )
        except KafkaError as exc:
            log.debug("lag check failed", extra={"error": str(exc)})


def _letter_fields(rejected: Rejected) -> dict[str, Any]:
    return {
        "reason": rejected.error.reason,
        "detail": rejected.error.detail[:300],
        "partition": rejected.record.partition,
        "offset": rejected.record.offset,
        "size": 0 if rejected.record.value is None else len(rejected.record.value),
    }


def kafka_clients(settings: Settings) -> tuple[KafkaConsumer, KafkaProducer]:
    """The consumer (manual commits, from the earliest offset) and the DLQ producer.

    A crashed member keeps its partitions until its session times out
    (``--ingest-session-timeout-ms``, not kafka-python's 45 s). A static member
    (``--group-instance-id``) restarted with the same id takes them back at once; it never
    leaves the group on close (kafka-python sends no LeaveGroup for static members), so the
    partitions of one stopped for good wait for the session timeout.
    """
    servers = [s.strip() for s in settings.kafka_bootstrap.split(",")]
    security = settings.kafka_options(os.environ)
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        **security,
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id or None,
        session_timeout_ms=settings.ingest_session_timeout_ms,
        heartbeat_interval_ms=settings.ingest_session_timeout_ms // 3,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.ingest_max_poll_records,
        check_crcs=bool(settings.ingest_check_crcs),
        client_id="recsvc-ingest",
    )
    consumer.subscribe([settings.events_topic])
    # kafka-python 3 makes producers idempotent by default; this one opts out. An idempotent
    # producer treats a refused record (too large for the topic) as fatal and then fails
    # every later send, so one poison letter would silence the dead-letter topic until a
    # restart. A retried letter may be written twice instead.
    producer = KafkaProducer(
        bootstrap_servers=servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        client_id="recsvc-ingest-dlq",
        **security,
    )
    return consumer, producer


class Rewind:
    """``--rebuild-sessions``: the first time this process is given a partition, its
    position moves back to the first message at or after ``since`` (Unix seconds).

    It runs on ingest's polling thread, right after a poll (kafka-python's rebalance
    listeners may not block), and drops what that poll returned for the partitions it
    moved, uncommitted. A partition whose position is already at or before that message
    stays where it is. Consumption then goes on from there as usual: every event since
    then is appended again, which changes nothing where Redis still holds it (the
    idempotent append) and restores what it lost; the committed offsets move back, then
    forward past where the group was. A crash during the rebuild loses nothing: a restart
    (with the flag again, or without it) goes on from the last commit.
    """

    def __init__(self, since: float) -> None:
        self.since_ms = int(since * 1000)
        self.rewound: set[TopicPartition] = set()

    def apply(self, consumer: KafkaConsumer, polled: Polled) -> Polled:
        """``polled`` without the records of the partitions just moved back."""
        fresh = [tp for tp in consumer.assignment() if tp not in self.rewound]
        if not fresh:
            return polled
        try:
            found = consumer.offsets_for_times({tp: self.since_ms for tp in fresh})
        except UnsupportedVersionError:
            raise ConfigError(
                "--rebuild-sessions needs a broker that looks offsets up by time "
                "(Kafka 0.10.1 or later)"
            ) from None
        except KafkaError as exc:  # tried again after the next poll
            log.warning("cannot look offsets up by time yet", extra={"error": str(exc)})
            return polled
        moved = set()
        for tp in fresh:
            at = found.get(tp)
            # Nothing since then, or the group is further back still (a backlog, or down
            # longer than that): its own position stands, and nothing is skipped.
            if at is None or at.offset >= consumer.position(tp):
                continue
            consumer.seek(tp, at.offset)
            moved.add(tp)
            log.info(
                "rebuilding sessions",
                extra={"topic": tp.topic, "partition": tp.partition, "from_offset": at.offset},
            )
        self.rewound.update(fresh)
        return {tp: records for tp, records in polled.items() if tp not in moved}


async def report_live_held(
    store: SessionStore, metrics: Metrics, interval_s: float, stopping: asyncio.Event
) -> None:
    """Count the live state the store holds every ``interval_s`` until ``stopping``, into
    the ``recsvc_live_*_held`` gauges; a failed count is logged and tried again later."""
    while not stopping.is_set():
        try:
            held = await store.live_held()
        except SessionStoreError as exc:
            log.warning("live state not counted", extra={"error": str(exc)})
        else:
            metrics.live_items_held.set(held.items)
            metrics.live_neighbours_held.set(held.neighbours)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval_s)


async def ingest(settings: Settings, store: SessionStore) -> None:
    """Run ingest until SIGTERM or SIGINT (the bundle only tells which items exist, and
    only with ``live`` 0)."""
    metrics = Metrics()
    metrics.serve(settings.metrics_port, settings.metrics_host)
    bundles = BundleReloader(settings.bundle, settings.model, metrics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    backoff = Backoff()
    while not stopping.is_set():
        try:
            await asyncio.to_thread(check_sasl_login, settings, os.environ)
            consumer, producer = await asyncio.to_thread(kafka_clients, settings)
            break
        except KafkaError as exc:
            delay = backoff.next_delay()
            log.warning(
                "Kafka unreachable; retrying", extra={"error": str(exc), "retry_in_s": delay}
            )
            await asyncio.sleep(delay)
    else:
        return
    since = settings.rebuild_seconds()
    ingestor = Ingestor(
        consumer,
        producer,
        store,
        # Live co-visits need the events of items the bundle does not know yet.
        None if settings.live else lambda item: bundles.ranker.has_item(item),
        metrics,
        settings.dlq_topic,
        stopping=stopping,
        rewind=Rewind(time.time() - since) if since is not None else None,
    )
    watch = (
        asyncio.create_task(bundles.watch(settings.watch_interval_s))
        if settings.watch_interval_s
        else None
    )
    held = (
        asyncio.create_task(report_live_held(store, metrics, LIVE_HELD_INTERVAL_S, stopping))
        if store.live is not None
        else None
    )
    log.info(
        "ingesting",
        extra={
            "topic": settings.events_topic,
            "group": settings.group_id,
            "group_instance_id": settings.group_instance_id,
            "redis": redact_url(settings.redis_url),
        },
    )
    try:
        await ingestor.run()
    finally:
        for task in (watch, held):
            if task:
                task.cancel()
        await asyncio.to_thread(consumer.close)
        await asyncio.to_thread(producer.close, 10)
        await store.aclose()
        log.info("ingest stopped")
