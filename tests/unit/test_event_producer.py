"""The gateway's Kafka producer over a stand-in factory: no broker needed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kafka.errors import KafkaTimeoutError

from recsvc.event_producer import EventProducer, EventsUnavailable
from recsvc.events import Event
from recsvc.settings import Settings

EVENT = Event("e1", "u", "a", "click", 1000.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_with_no_broker_the_calls_after_a_failure_fail_at_once_then_it_tries_again() -> None:
    attempts: list[dict[str, Any]] = []

    def no_broker(**options: Any) -> Any:
        attempts.append(options)
        time.sleep(0.2)  # as kafka-python waits for a broker
        raise KafkaTimeoutError("Unable to bootstrap")

    clock = Clock()
    producer = EventProducer(Settings(), {}, factory=no_broker, retry_after_s=5.0, clock=clock)

    async def scenario() -> list[float]:
        async def one() -> float:
            started = time.monotonic()
            try:
                await producer.send(EVENT)
            except EventsUnavailable as exc:
                assert "no Kafka broker" in str(exc)
                return time.monotonic() - started
            raise AssertionError("sent without a broker")

        return list(await asyncio.gather(*(one() for _ in range(10))))

    waits = asyncio.run(scenario())
    assert len(attempts) == 1  # one attempt; the nine waiting behind it failed with its reason
    assert max(waits) < 1.0  # not ten attempts in turn (2 s)
    assert attempts[0]["acks"] == "all" and attempts[0]["bootstrap_timeout_ms"] == 1000
    clock.now = 6.0
    assert not asyncio.run(producer.ready())
    assert len(attempts) == 2  # the cool-down over, it tried again
