"""The session store contract, against the real Redis."""

import asyncio
import uuid

import pytest
import redis
from helpers import check_grouped_append, check_store_contract, event

from recsvc.sessions import KEY_PREFIX, RedisSessionStore, SessionWriteRejected


@pytest.mark.parametrize("scripted", [True, False], ids=["lua", "pipelined"])
def test_redis_store_keeps_the_contract(redis_url: str, scripted: bool) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=8, ttl_s=60)
        store._scripted = scripted  # False: the path for a Redis that refuses scripts
        run = uuid.uuid4().hex
        try:
            await check_store_contract(store, user=f"contract-{run}")
            await check_grouped_append(store, user=f"grouped-{run}")
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_sessions_expire(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=8, ttl_s=1)
        user = f"ttl-{uuid.uuid4().hex}"
        try:
            await store.append([event(1, user)])
            assert len(await store.recent(user)) == 1
            await asyncio.sleep(2.1)
            assert await store.recent(user) == []
        finally:
            await store.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize("scripted", [True, False], ids=["lua", "pipelined"])
def test_a_refused_key_fails_only_its_users_events(redis_url: str, scripted: bool) -> None:
    run = uuid.uuid4().hex
    good, bad = f"good-{run}", f"bad-{run}"
    plain = redis.Redis.from_url(redis_url)
    plain.set(KEY_PREFIX + bad, "not a sorted set", ex=60)

    async def scenario() -> SessionWriteRejected:
        store = RedisSessionStore(redis_url, length=8, ttl_s=60)
        store._scripted = scripted
        batch = [event(1, good), event(2, bad), event(3, good), event(4, bad), event(5, good)]
        try:
            with pytest.raises(SessionWriteRejected) as caught:
                await store.append(batch)
            assert [e.event_id for e in await store.recent(good)] == ["e1", "e3", "e5"]
        finally:
            await store.aclose()
        return caught.value

    try:
        refused = asyncio.run(scenario())
    finally:
        plain.delete(KEY_PREFIX + good, KEY_PREFIX + bad)
        plain.close()
    assert refused.added == 3
    assert [e.event_id for e, _ in refused.rejected] == ["e2", "e4"]
    assert all("WRONGTYPE" in reason for _, reason in refused.rejected)


def test_a_lost_script_cache_is_reloaded(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=8, ttl_s=60)
        user = f"noscript-{uuid.uuid4().hex}"
        try:
            assert await store.append([event(1, user)]) == 1
            store._sha = "0" * 40  # as after a Redis restart: EVALSHA answers NOSCRIPT
            assert await store.append([event(1, user), event(2, user)]) == 1
            assert store._scripted and store._sha != "0" * 40
            assert [e.event_id for e in await store.recent(user)] == ["e1", "e2"]
        finally:
            await store.aclose()

    asyncio.run(scenario())
