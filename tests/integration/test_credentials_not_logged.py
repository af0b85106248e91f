"""The Redis password never reaches a real ``recsvc ingest``'s output, whatever happens."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from conftest import Process, Topics, free_port, wait_for
from kafka import KafkaProducer
from test_stream_to_recommend import online_args

from recsvc.events import Event

PASSWORD = "s3cret-pass"


def test_ingest_never_logs_the_redis_password(
    tiny_bundle: Path,
    topics: Topics,
    producer: KafkaProducer,
    processes: Callable[..., Process],
    tmp_path: Path,
) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there: every Redis call fails
    redis_url = f"redis://someuser:{PASSWORD}@{address}/0"
    ingest = processes(
        ["ingest", *online_args(tiny_bundle, redis_url, topics)],
        tmp_path / "ingest.log",
        env={"RECSVC_LOG_FORMAT": "json"},  # the JSON lines carry every extra field
    )
    user = f"shopper-{uuid.uuid4().hex}"
    event = Event(f"{user}-0", user, "b", "click", 1000.0)
    producer.send(topics.events, key=user.encode(), value=event.to_json()).get(timeout=10)
    wait_for(lambda: "redis call failed; retrying" in ingest.output(), what="a Redis error")
    assert ingest.stop() == 0

    output = ingest.output()
    assert '"msg": "ingesting"' in output
    assert PASSWORD not in output
    assert f"redis://someuser:***@{address}/0" in output  # the start-up line
    assert address in output.split('"msg": "redis call failed; retrying"', 1)[1]
