"""Events sent to the Kafka topic from asyncio code: the gateway's ``POST /v1/events``.

kafka-python's producer blocks (connecting, fetching a topic's metadata), so it is created
and called on a worker thread; the wait for the broker's acknowledgement is a callback that
resolves an asyncio future, with no thread held. An event is reported sent only once every
in-sync replica has it (``acks="all"``), keyed by user so that one user's events stay in
order on one partition, as ingest expects.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from recsvc.events import Event
from recsvc.settings import Settings


class EventsUnavailable(Exception):
    """Kafka did not take the event (down, too slow, or refused it); the reason is the text."""


@dataclass(frozen=True)
class Sent:
    """Where the broker wrote an event."""

    topic: str
    partition: int
    offset: int


class EventProducer:
    """Sends events to ``settings.events_topic`` and says whether Kafka is reachable.

    The producer is made on the first send or readiness check. After a failed attempt,
    the calls of the next ``retry_after_s`` fail at once with its reason (they would
    otherwise wait in turn, each for a full timeout); the first call after that tries
    again, so a gateway started before its broker recovers on its own.
    """

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        factory: Callable[..., Any] = KafkaProducer,
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic = settings.events_topic
        self._timeout_s = settings.gateway_timeout_s
        self._options: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",")],
            "acks": "all",
            "linger_ms": 1,
            # How long making the producer may wait for a broker, and send() or a readiness
            # check for the topic's metadata or buffer space.
            "bootstrap_timeout_ms": int(settings.gateway_timeout_s * 1000),
            "max_block_ms": int(settings.gateway_timeout_s * 1000),
            # Readiness reads the topic's metadata: cached no longer than this.
            "metadata_max_age_ms": 30_000,
            "client_id": "recsvc-gateway",
            **settings.kafka_options(os.environ if environ is None else environ),
        }
        self._factory = factory
        self._producer: Any = None
        self._lock = asyncio.Lock()
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._failure: tuple[float, str] | None = None  # (when, why) of the last attempt

    async def send(self, event: Event) -> Sent:
        """Send one event and wait for its acknowledgement.

        Raises
        ------
        EventsUnavailable
            No broker, no acknowledgement within the timeout, or a refusal.
        """
        producer = await self._get()
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[Any] = loop.create_future()

        def settle(outcome: Any, failed: bool) -> None:
            if acked.done():
                return
            if failed:
                acked.set_exception(EventsUnavailable(f"Kafka refused the event: {outcome}"))
            else:
                acked.set_result(outcome)

        try:
            record = await asyncio.to_thread(
                producer.send, self._topic, key=event.user_id.encode(), value=event.to_json()
            )
        except KafkaError as exc:
            raise EventsUnavailable(f"Kafka did not take the event: {exc}") from None
        record.add_callback(lambda meta: loop.call_soon_threadsafe(settle, meta, False))
        record.add_errback(lambda exc: loop.call_soon_threadsafe(settle, exc, True))
        try:
            meta = await asyncio.wait_for(acked, self._timeout_s)
        except TimeoutError:
            raise EventsUnavailable(
                f"Kafka did not acknowledge the event within {self._timeout_s:g} s"
            ) from None
        return Sent(meta.topic, meta.partition, meta.offset)

    async def ready(self) -> bool:
        """Whether a broker gave the events topic's partitions (metadata up to 30 s old)."""
        try:
            producer = await self._get()
            partitions = await asyncio.to_thread(producer.partitions_for, self._topic)
        except (EventsUnavailable, KafkaError):
            return False
        return bool(partitions)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await asyncio.to_thread(producer.close, self._timeout_s)

    async def _get(self) -> Any:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if self._failure is not None:
                when, why = self._failure
                if self._clock() - when < self._retry_after_s:
                    raise EventsUnavailable(why)
            try:
                self._producer = await asyncio.to_thread(self._factory, **self._options)
            except KafkaError as exc:
                self._failure = (self._clock(), f"no Kafka broker: {exc}")
                raise EventsUnavailable(self._failure[1]) from None
            self._failure = None
            return self._producer
