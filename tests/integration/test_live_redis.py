"""Live co-visits in the real Redis: the same state as the in-memory twin, replays counted once."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis
from helpers import serving

from recsvc.bundle import load_bundle
from recsvc.contract import SOURCE_BITS
from recsvc.events import Event
from recsvc.exceptions import ConfigError, ItemNotFound
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX, LiveSettings
from recsvc.ranking import Ranker
from recsvc.sessions import InMemorySessionStore, RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb

LIVE = SOURCE_BITS["live"]

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
            # Batches as ingest sends them, and one of several script calls (over 100 events).
            for start in [*range(0, 370, 37), 370]:
                batch = stream[start : start + 37] if start < 370 else stream[370:]
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


def test_the_server_answers_with_live_items_as_the_replay_ranks_them(
    redis_url: str, tiny_bundle: Path
) -> None:
    """One code path: the gRPC answers over the real Redis equal ``Ranker.rank`` with the
    in-memory twin's read, which is what ``recsvc eval --replay`` scores."""
    url = redis_url.rsplit("/", 1)[0] + "/11"  # a database of this test's own
    plain = redis.Redis.from_url(url)
    plain.flushdb()
    settings = LiveSettings(half_life_s=3600.0, read_items=3, read_top=4)
    stream = [
        Event(f"e{n}", user, item, "click", 1000.0 + n)
        for n, (user, item) in enumerate(
            [("x", "a"), ("x", "new1"), ("x", "b"), ("y", "b"), ("y", "new2"),
             ("y", "c"), ("z", "new1"), ("z", "d"), ("w", "a"), ("w", "new2")]
        )
    ]  # fmt: skip
    memory = InMemorySessionStore(length=20, live=settings)
    memory.append_now(stream)
    ranker = Ranker(load_bundle(tiny_bundle))

    async def scenario() -> None:
        store = RedisSessionStore(url, length=20, ttl_s=120, live=settings)
        try:
            await store.append(stream)
            # The gauges' count: the database holds this test's items only.
            held = memory.covisits.held() if memory.covisits is not None else None
            assert held is not None and held.items > 0 and held.neighbours > held.items
            assert await store.live_held() == held == await store.live_held(batch=2)
            answered_live = answered_new = 0
            async with serving(tiny_bundle, store) as (stub, _):
                for user in ("x", "y", "z", "w", "nobody"):
                    for item in ("a", "b", "c", "d", "new1", "new2", "ghost"):
                        session, live = memory.read_now(user, item)
                        try:
                            want = ranker.rank(item, 4, session, live=live)
                        except ItemNotFound:
                            want = None
                        request = pb.RecommendRequest(user_id=user, item_id=item, k=4)
                        try:
                            got = await stub.Recommend(request)
                        except grpc.aio.AioRpcError as exc:
                            assert want is None and exc.code() == grpc.StatusCode.NOT_FOUND
                            continue
                        assert want is not None, (user, item)
                        assert [i.item_id for i in got.items] == want.items, (user, item)
                        assert got.personalized == want.personalized
                        for answered, score, flags in zip(
                            got.items, want.scores, want.sources, strict=True
                        ):
                            assert answered.score == pytest.approx(score, rel=1e-6)
                            assert (pb.SOURCE_LIVE in answered.sources) == bool(flags & LIVE)
                            answered_live += bool(flags & LIVE)
                            answered_new += answered.item_id.startswith("new")
            assert answered_live > 10 and answered_new > 5
        finally:
            await store.aclose()

    asyncio.run(scenario())
    plain.flushdb()


def test_trimmed_replays_and_future_events_are_not_counted(redis_url: str) -> None:
    run = uuid.uuid4().hex[:12]
    old = [Event(f"{run}-e{k}", f"{run}-u", f"{run}-i{k}", "click", 1e9 + k) for k in range(5)]
    ahead = time.time() + 86400  # a day past ingest's clock
    future = [Event(f"{run}-f{k}", f"{run}-v", f"{run}-f{k}", "click", ahead + k) for k in range(2)]
    memory = InMemorySessionStore(length=3, live=SETTINGS)

    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=3, ttl_s=120, live=SETTINGS)
        try:
            await store.append(old)
            memory.append_now(old)
            updates = store.live_counts.updates
            assert updates == memory.live_counts.updates
            await store.append(old[:1])  # older than the 3 kept: trimmed again, not paired
            memory.append_now(old[:1])
            assert store.live_counts.updates == memory.live_counts.updates == updates
            await store.append(future)
            assert store.live_counts.refused == 2 and store.live_counts.updates == updates
            assert not (await store.read(f"{run}-v", f"{run}-f1"))[1]
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_redis_that_will_not_run_zmscore_stops_ingest_with_a_clear_error(
    redis_url: str,
) -> None:
    # As Redis before 6.2 would: here an ACL user who may run everything but ZMSCORE.
    user, password = f"recsvc-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"],
        commands=["+@all", "-zmscore"],
    )  # fmt: skip
    limited = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    run = uuid.uuid4().hex[:12]

    async def append(live: LiveSettings | None) -> int:
        store = RedisSessionStore(limited, live=live)
        try:
            return await store.append([Event(f"{run}-e{n}", f"{run}-u", f"{run}-i{n}", "click",
                                              1000.0 + n) for n in range(3)])  # fmt: skip
        finally:
            await store.aclose()

    try:
        with pytest.raises(ConfigError, match=r"Redis 6\.2 or later.*--live 0") as refused:
            asyncio.run(append(SETTINGS))
        assert password not in str(refused.value)
        assert admin.zcard(f"recsvc:session:{run}-u") == 0  # nothing half-written
        assert asyncio.run(append(None)) == 3  # without live, sessions need no ZMSCORE
        # A Redis that runs no scripts at all: sessions could be appended with plain
        # commands, co-visits could not (not once per event), so live ingest stops too.
        admin.acl_setuser(user, enabled=True, commands=["-evalsha", "-eval", "-script"])
        with pytest.raises(ConfigError, match=r"live co-visits need Lua scripts.*--live 0"):
            asyncio.run(append(SETTINGS))
    finally:
        admin.acl_deluser(user)
        admin.delete(f"recsvc:session:{run}-u")
        admin.close()
