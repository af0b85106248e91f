"""MultiplexedRedis against a real Redis: replies reach their own callers, whatever happens."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis
from conftest import PrivateRedis

from recsvc.multiplexed_redis import MultiplexedRedis, RedisConnectionError, RedisReplyError

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_concurrent_calls_each_get_their_own_reply(redis_url: str) -> None:
    prefix = f"test:mux:{uuid.uuid4().hex}:"
    plain = redis.Redis.from_url(redis_url)
    for n in range(300):
        plain.set(prefix + str(n), f"value-{n}", ex=60)

    async def read_all() -> list[bytes]:
        client = MultiplexedRedis(redis_url)
        try:
            return await asyncio.gather(
                *(client.execute("GET", prefix + str(n)) for n in range(300))
            )
        finally:
            await client.aclose()

    assert run(read_all()) == [f"value-{n}".encode() for n in range(300)]


def test_a_refused_command_fails_only_its_own_call(redis_url: str) -> None:
    key = f"test:mux:{uuid.uuid4().hex}"
    redis.Redis.from_url(redis_url).set(key, "a string", ex=60)

    async def calls() -> tuple[object, ...]:
        client = MultiplexedRedis(redis_url)
        try:
            return tuple(
                await asyncio.gather(
                    client.execute("PING"),
                    client.execute("ZRANGE", key, 0, -1),  # WRONGTYPE
                    client.execute("GET", key),
                    return_exceptions=True,
                )
            )
        finally:
            await client.aclose()

    pong, refused, value = run(calls())
    assert pong == b"PONG"
    assert isinstance(refused, RedisReplyError) and "WRONGTYPE" in str(refused)
    assert value == b"a string"


def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_url: str) -> None:
    """BLPOP holds the connection; its caller leaves; the next caller gets its own reply."""
    key = f"test:mux:{uuid.uuid4().hex}"

    async def calls() -> tuple[bytes, bytes]:
        client = MultiplexedRedis(redis_url, timeout_s=2.0)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.execute("BLPOP", key + ":empty", 0.3)
            first = await client.execute("ECHO", "mine")
            second = await client.execute("ECHO", "also mine")
            return first, second
        finally:
            await client.aclose()

    assert run(calls()) == (b"mine", b"also mine")


def test_a_stalled_connection_is_replaced(redis_url: str) -> None:
    key = f"test:mux:{uuid.uuid4().hex}"

    async def calls() -> bytes:
        client = MultiplexedRedis(redis_url, timeout_s=0.2)
        try:
            with pytest.raises(RedisConnectionError):
                await client.execute("BLPOP", key, 2)  # longer than the client's timeout
            return await client.execute("ECHO", "fresh connection")
        finally:
            await client.aclose()

    assert run(calls()) == b"fresh connection"


def test_database_and_password_come_from_the_url(private_redis: PrivateRedis) -> None:
    plain = redis.Redis(port=private_redis.port)
    plain.select(3)
    plain.set("where", "db 3")
    plain.config_set("requirepass", "s3cret")
    authed = f"redis://:s3cret@127.0.0.1:{private_redis.port}/3"
    wrong = f"redis://:wrong@127.0.0.1:{private_redis.port}/3"

    async def read(url: str) -> bytes:
        client = MultiplexedRedis(url)
        try:
            return await client.execute("GET", "where")
        finally:
            await client.aclose()

    try:
        assert run(read(authed)) == b"db 3"
        with pytest.raises(RedisConnectionError):
            run(read(wrong))
    finally:
        redis.Redis(port=private_redis.port, password="s3cret").config_set("requirepass", "")


def test_reconnects_after_a_restart(private_redis: PrivateRedis) -> None:
    async def scenario() -> bytes:
        client = MultiplexedRedis(private_redis.url, timeout_s=0.5)
        try:
            assert await client.execute("PING") == b"PONG"
            private_redis.stop()
            with pytest.raises(RedisConnectionError):
                await client.execute("PING")
            private_redis.start()
            return await client.execute("PING")
        finally:
            await client.aclose()

    assert run(scenario()) == b"PONG"


def test_a_busy_connection_that_keeps_answering_is_kept(redis_url: str) -> None:
    """The stuck check looks at the oldest unanswered call, not at how long the
    connection has been busy: calls for three times the timeout never close it."""

    async def calls() -> tuple[int, int]:
        client = MultiplexedRedis(redis_url, timeout_s=0.2)
        try:
            await client.execute("PING")
            first = client._connection
            loop = asyncio.get_running_loop()
            end, answered = loop.time() + 0.6, 0
            while loop.time() < end:
                replies = await asyncio.gather(*(client.execute("PING") for _ in range(20)))
                answered += replies.count(b"PONG")
                await asyncio.sleep(0.01)
            return answered, int(client._connection is first)
        finally:
            await client.aclose()

    answered, same_connection = run(calls())
    assert answered > 200 and same_connection == 1
