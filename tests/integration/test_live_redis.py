"""Live co-visits in the real Redis: the same state as the in-memory twin, replays counted once."""

from __future__ import annotations

import asyncio
import random
import uuid

import redis

from recsvc.events import Event
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX, LiveSettings
from recsvc.sessions import InMemorySessionStore, RedisSessionStore

SETTINGS = LiveSettings(half_life_s=600.0, cap=5, ttl_s=120, read_items=3, read_top=8)


def random_stream(run: str, n: int, seed: int = 3) -> list[Event]:
    """Clicks, carts and buys of a few users over a few items, some late, some replayed, and
    long enough for rebasing (the stream spans far more than 16 half-lives)."""
    rng = random.Random(seed)
    events, ts = [], 1_500_000_000.0
    for k in range(n):
        ts += rng.choice([1.0, 7.5, 61.0, 0.1, 4000.0])
        late = rng.random() < 0.1
        events.append(
            Event(
                f"{run}-e{k}",
                f"{run}-u{rng.randrange(4)}",
                f"{run}-i{rng.randrange(12)}",
                rng.choice(["click", "click", "click", "cart", "buy"]),
                ts - 500.0 if late else ts,
            )
        )
    replayed = rng.sample(events, 30)
    return events + replayed


def test_redis_and_the_in_memory_twin_hold_the_same_co_visits(redis_url: str) -> None:
    run = uuid.uuid4().hex[:12]
    stream = random_stream(run, 600)
    memory = InMemorySessionStore(length=10, ttl_s=120, live=SETTINGS)

    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=10, ttl_s=120, live=SETTINGS)
        try:
            for start in range(0, len(stream), 37):  # batches as ingest sends them
                batch = stream[start : start + 37]
                assert await store.append(batch) == memory.append_now(batch)
            assert store.live_counts == memory.live_counts
            assert store.live_counts.evictions > 0
            compared = 0
            for user in range(4):
                for item in range(12):
                    ids = (f"{run}-u{user}", f"{run}-i{item}")
                    got = await store.read(*ids)
                    want = memory.read_now(*ids)
                    assert got[0] == want[0]
                    for read_item in want[1].items():
                        # the same floats: the script and the twin follow the same steps
                        assert got[1].neighbours(read_item) == want[1].neighbours(read_item)
                    assert got[1].items() == want[1].items()
                    compared += len(want[1].items())
            assert compared > 100
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_replayed_batch_leaves_the_co_visits_unchanged(redis_url: str) -> None:
    run = uuid.uuid4().hex[:12]
    batch = [
        Event(f"{run}-e{k}", f"{run}-u", f"{run}-i{k % 3}", "click", 1e9 + k) for k in range(9)
    ]
    plain = redis.Redis.from_url(redis_url)

    def snapshot() -> dict[str, object]:
        keys = sorted(plain.scan_iter(f"recsvc:live:*{run}*"))
        return {
            key.decode(): plain.zrange(key, 0, -1, withscores=True)
            if key.decode().startswith(NEIGHBOURS_PREFIX)
            else plain.get(key)
            for key in keys
        }

    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=20, ttl_s=120, live=SETTINGS)
        try:
            assert await store.append(batch) == 9
            before, updates = snapshot(), store.live_counts.updates
            assert await store.append(batch) == 0
            assert snapshot() == before
            assert store.live_counts.updates == updates == 16  # 8 pairs, both ways
            assert any(k.startswith(BASE_PREFIX) for k in before)
            assert 0 < plain.ttl(f"{NEIGHBOURS_PREFIX}{run}-i0") <= SETTINGS.ttl_s
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_without_live_settings_nothing_is_written(redis_url: str) -> None:
    run = uuid.uuid4().hex[:12]
    batch = [Event(f"{run}-e{k}", f"{run}-u", f"{run}-i{k}", "click", 1e9 + k) for k in range(3)]

    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=20, ttl_s=120)
        try:
            assert await store.append(batch) == 3
            session, live = await store.read(f"{run}-u", f"{run}-i0")
            assert len(session) == 3 and not live
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert list(redis.Redis.from_url(redis_url).scan_iter(f"recsvc:live:*{run}*")) == []
