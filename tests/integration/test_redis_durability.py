"""Sessions survive a restart of the project's Redis (scripts/services/redis.sh stop, start).

Against a real Redis of the test's own, started and stopped by the script, over real
connections: sessions are written and read through the project's own store.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import redis
from conftest import PrivateRedis

from recsvc.contract import EVENT_TYPES
from recsvc.events import Event
from recsvc.sessions import KEY_PREFIX, SessionEvent, open_store

SESSION_LENGTH = 50
SESSION_TTL_S = 3600


def make_events(user_ids: list[str], per_user: int, batch: int = 0) -> list[Event]:
    """``per_user`` new events for each user, interleaved as a stream would deliver them;
    distinct ``batch`` numbers give distinct, later events."""
    return [
        Event(f"{user}-b{batch}-e{n}", user, f"i{n}", EVENT_TYPES[n % 4], 1000.0 + 100 * batch + n)
        for n in range(per_user)
        for user in user_ids
    ]


async def write_sessions(url: str, batches: list[list[Event]]) -> None:
    """Append each batch, in order, waiting for Redis to acknowledge each one."""
    store = open_store(url, SESSION_LENGTH, SESSION_TTL_S)
    try:
        for batch in batches:
            await store.append(batch)
    finally:
        await store.aclose()


async def read_sessions(url: str, user_ids: list[str]) -> dict[str, list[SessionEvent]]:
    """Every user's session, read through a new store (new connections)."""
    store = open_store(url, SESSION_LENGTH, SESSION_TTL_S)
    try:
        return {user: await store.recent(user) for user in user_ids}
    finally:
        await store.aclose()


def restart(server: PrivateRedis) -> None:
    server.stop()
    server.start()


def new_user_ids(count: int) -> list[str]:
    run = uuid.uuid4().hex[:10]
    return [f"durable-{run}-{n}" for n in range(count)]


def test_sessions_and_their_ttl_survive_a_restart(private_redis: PrivateRedis) -> None:
    """After redis.sh stop and start, every session holds the same events, still expiring."""
    users = new_user_ids(5)
    asyncio.run(write_sessions(private_redis.url, [make_events(users, per_user=7)]))
    before = asyncio.run(read_sessions(private_redis.url, users))
    assert all(len(session) == 7 for session in before.values())

    restart(private_redis)

    assert asyncio.run(read_sessions(private_redis.url, users)) == before
    with redis.Redis.from_url(private_redis.url) as plain:
        ttls = [plain.ttl(KEY_PREFIX + user) for user in users]
    assert all(0 < ttl <= SESSION_TTL_S for ttl in ttls), ttls


def test_writes_acknowledged_just_before_a_graceful_stop_survive(
    private_redis: PrivateRedis,
) -> None:
    """A stop right after the last acknowledged append (well within the one-second fsync
    interval) keeps every acknowledged event, the last batch included."""
    users = new_user_ids(20)
    batches = [make_events(users, per_user=1, batch=number) for number in range(30)]
    asyncio.run(write_sessions(private_redis.url, batches))
    private_redis.stop()  # at once: no wait for a background fsync
    private_redis.start()

    sessions = asyncio.run(read_sessions(private_redis.url, users))
    last_batch_ids = {e.event_id for e in batches[-1]}
    stored_ids = {e.event_id for session in sessions.values() for e in session}
    assert all(len(session) == len(batches) for session in sessions.values()), {
        user: len(session) for user, session in sessions.items()
    }
    assert last_batch_ids <= stored_ids


def test_the_restarted_redis_reloads_its_append_only_file(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """The data comes back from the AOF (fsync every second), the bound the README states."""
    users = new_user_ids(1)
    asyncio.run(write_sessions(private_redis.url, [make_events(users, per_user=3)]))
    restart(private_redis)

    with redis.Redis.from_url(private_redis.url, decode_responses=True) as plain:
        assert plain.config_get("appendonly") == {"appendonly": "yes"}
        assert plain.config_get("appendfsync") == {"appendfsync": "everysec"}
    log = (tmp_path / "redis" / "redis.log").read_text(errors="replace")
    assert "DB loaded from append only file" in log
