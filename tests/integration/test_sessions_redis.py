"""The session store contract, against the real Redis."""

import asyncio
import uuid

from helpers import check_store_contract

from recsvc.sessions import RedisSessionStore


def test_redis_store_keeps_the_contract(redis_url: str) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_url, length=8, ttl_s=60)
        try:
            await check_store_contract(store, user=f"contract-{uuid.uuid4().hex}")
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_sessions_expire(redis_url: str) -> None:
    async def scenario() -> None:
        from helpers import event

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
