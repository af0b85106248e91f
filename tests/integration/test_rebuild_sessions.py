"""``recsvc ingest --rebuild-sessions``: an emptied Redis gets its sessions and live
co-visits back from the topic, each event counted once, and ingest goes on from there."""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import redis
from conftest import PrivateRedis, free_port, wait_for
from kafka import KafkaProducer
from test_stream_to_recommend import online_args

from loadtest.ingest_bench import counters
from recsvc.events import Event
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX, LiveSettings

USERS, CLICKS = 6, 5
REFERENCE = time.time()  # the time co-visit counts are compared at


def state(url: str) -> dict[bytes, object]:
    """Every session and live key with its contents (scores as Redis holds them)."""
    client = redis.Redis.from_url(url)
    try:
        held: dict[bytes, object] = {}
        for key in client.scan_iter("recsvc:*"):
            kind = client.type(key)
            if kind == b"zset":
                held[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"string":
                held[key] = client.get(key)
        return held
    finally:
        client.close()


def same_state(got: dict[bytes, object], want: dict[bytes, object]) -> bool:
    """The same keys, the same sessions, and the same co-visit counts. Ingest takes the
    partitions' batches in any interleaving, so an item's time base (its first co-visit's
    time) and the order of its float sums may differ: counts are compared at one time."""
    if got.keys() != want.keys():
        return False
    for key, value in want.items():
        if not key.startswith(NEIGHBOURS_PREFIX.encode()):
            if key.startswith(BASE_PREFIX.encode()):
                continue
            if got[key] != value:
                return False
            continue
        item = key[len(NEIGHBOURS_PREFIX) :]
        counts = [at_one_time(state, item) for state in (got, want)]
        if counts[0].keys() != counts[1].keys():
            return False
        if any(not math.isclose(counts[0][n], counts[1][n], rel_tol=1e-9) for n in counts[0]):
            return False
    return True


def at_one_time(state: dict[bytes, object], item: bytes) -> dict[bytes, float]:
    base = float(state[BASE_PREFIX.encode() + item])  # type: ignore[arg-type]
    factor = 2.0 ** ((base - REFERENCE) / LiveSettings().half_life_s)
    pairs = state[NEIGHBOURS_PREFIX.encode() + item]
    return {member: score * factor for member, score in pairs}  # type: ignore[attr-defined]


def produce(producer: KafkaProducer, topic: str, events: list[Event]) -> None:
    for event in events:
        producer.send(topic, key=event.user_id.encode(), value=event.to_json())
    producer.flush()


def test_an_emptied_redis_is_rebuilt_from_the_topic_once(
    tiny_bundle: Path,
    private_redis: PrivateRedis,
    topics,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:8]
    items = "abcde"
    now = time.time()
    events = [
        Event(f"{run}-{u}-{n}", f"{run}-u{u}", items[(u + 2 * n) % 5], "click", now - 600 + n)
        for u in range(USERS)
        for n in range(CLICKS)
    ]
    produce(producer, topics.events, events)
    args = ["ingest", *online_args(tiny_bundle, private_redis.url, topics)]
    first = processes(args, tmp_path / "ingest-1.log")
    sessions = [f"recsvc:session:{run}-u{u}".encode() for u in range(USERS)]
    wait_for(
        lambda: all(len(state(private_redis.url).get(k) or []) == CLICKS for k in sessions),
        what="the sessions",
    )
    assert first.stop() == 0
    before = state(private_redis.url)
    assert any(key.startswith(b"recsvc:live:n:") for key in before)  # co-visits counted

    # Redis loses everything (a restart without persistence, say).
    redis.Redis.from_url(private_redis.url).flushall()
    # A plain restart goes on from the group's offsets: nothing comes back.
    plain = processes(args, tmp_path / "ingest-2.log")
    time.sleep(3)
    assert state(private_redis.url) == {}
    assert plain.stop() == 0

    rebuilding = processes([*args, "--rebuild-sessions", "1h"], tmp_path / "ingest-3.log")
    wait_for(lambda: same_state(state(private_redis.url), before), what="the rebuilt state")
    # Then it goes on with the group's consumption: a new event counts once.
    later = Event(f"{run}-late", f"{run}-u0", "e", "click", now)
    produce(producer, topics.events, [later])
    key = f"recsvc:session:{run}-u0".encode()
    wait_for(lambda: len(state(private_redis.url)[key]) == CLICKS + 1, what="the new event")
    assert rebuilding.stop() == 0
    assert "rebuilding sessions" in rebuilding.output()

    # Restarted with the rebuild again over an intact Redis: nothing changes (each event
    # is appended again and counts once, co-visits included).
    settled = state(private_redis.url)
    port = free_port()
    again = processes(
        [*args, "--rebuild-sessions", "ttl", "--metrics-port", str(port)],
        tmp_path / "ingest-4.log",
    )
    # Every event of the topic came again, and each was a duplicate.
    replayed = lambda: counters(port).get("duplicate", 0) >= len(events) + 1  # noqa: E731
    wait_for(replayed, what="the second rebuild's replay")
    assert counters(port).get("applied", 0) == 0
    assert again.stop() == 0
    assert same_state(state(private_redis.url), settled)
