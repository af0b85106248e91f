"""A crashed ``recsvc ingest`` (``kill -9``) that is restarted consumes again within seconds.

The dead member never leaves the group, so the broker waits for its session timeout before
handing its partitions to anyone: kafka-python's default of 45 s stalled every session that
long. A static member (``--group-instance-id``) takes its partitions back at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Process, Topics, wait_for
from kafka import KafkaProducer
from test_stream_to_recommend import online_args, session_ids

from recsvc.events import Event

RESTART_LIMIT_S = 10.0


def wait_for_session(
    redis_url: str, user: str, events: int, process: Process, timeout_s: float
) -> None:
    """Wait until ``user``'s session holds ``events`` events; fail at once if ``process`` dies."""

    def stored_or_exited() -> bool:
        return len(session_ids(redis_url, user)) >= events or process.proc.poll() is not None

    wait_for(stored_or_exited, timeout_s=timeout_s, what=f"event {events} in Redis")
    assert process.proc.poll() is None, f"ingest exited:\n{process.output()}"


@pytest.mark.parametrize("static_member", [False, True], ids=["session-timeout", "static"])
def test_a_killed_ingest_restarted_consumes_again_within_seconds(
    static_member: bool,
    tiny_bundle: Path,
    redis_url: str,
    topics: Topics,
    producer: KafkaProducer,
    processes: Callable[..., Process],
    tmp_path: Path,
) -> None:
    user = f"shopper-{uuid.uuid4().hex}"
    args = ["ingest", *online_args(tiny_bundle, redis_url, topics)]
    if static_member:
        args += ["--group-instance-id", f"{topics.group}-ingest-0"]

    def send(n: int) -> None:
        event = Event(f"{user}-{n}", user, "bcde"[n % 4], "click", 1000.0 + n)
        producer.send(topics.events, key=user.encode(), value=event.to_json()).get(timeout=10)

    first = processes(args, tmp_path / "ingest-1.log")
    send(0)
    wait_for_session(redis_url, user, 1, first, timeout_s=30)  # it holds the partitions
    first.proc.kill()
    first.proc.wait()

    restarted = time.monotonic()
    second = processes(args, tmp_path / "ingest-2.log")
    send(1)
    wait_for_session(redis_url, user, 2, second, timeout_s=2 * RESTART_LIMIT_S)
    seconds = time.monotonic() - restarted
    print(
        f"\n{'static member' if static_member else 'dynamic member'}: restart to event in "
        f"Redis {seconds:.1f} s"
    )
    assert seconds < RESTART_LIMIT_S
    assert session_ids(redis_url, user) == [f"{user}-0", f"{user}-1"]
