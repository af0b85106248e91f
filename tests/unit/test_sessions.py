"""The session store contract (helpers.check_store_contract) on the in-memory store."""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import check_grouped_append, check_store_contract

from recsvc.events import Event
from recsvc.exceptions import ConfigError
from recsvc.sessions import (
    InMemorySessionStore,
    RedisSessionStore,
    SessionStoreError,
    _member,
    open_store,
)


def test_in_memory_store_keeps_the_contract() -> None:
    asyncio.run(check_store_contract(InMemorySessionStore(length=8)))


def test_in_memory_store_groups_a_batch_like_one_by_one() -> None:
    asyncio.run(check_grouped_append(InMemorySessionStore(length=8)))


@pytest.mark.parametrize(
    "ids",
    [
        ("e1", "i1", "click"),
        ("ev-9 x", "1234567", "buy"),
        ('quo"te', "i", "cart"),
        ("back\\slash", "i", "fav"),
        ("caf\u00e9", "\u5546\u54c1", "click"),
        ("tab\there", "i", "click"),
        ("~!#$%&'()*+,-./:;<=>?@[]^_`{|}", "i", "buy"),
    ],
)
def test_session_members_are_the_compact_json_of_the_event(ids: tuple[str, str, str]) -> None:
    event_id, item_id, kind = ids
    member = _member(Event(event_id, "u", item_id, kind, 1.0))
    assert member == json.dumps([event_id, item_id, kind], separators=(",", ":"))


def test_a_failed_write_is_tried_once_so_the_caller_owns_the_retries() -> None:
    """redis-py must not retry inside the ingest loop's own backoff (which counts retries)."""

    async def scenario() -> int:
        connections = 0

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
        with pytest.raises(SessionStoreError):
            await store.append([Event("e1", "u1", "i1", "click", 1.0)])
        server.close()
        return connections

    assert asyncio.run(scenario()) == 1


@pytest.mark.parametrize(
    ("query", "refused"),
    [("?sockettimeout=1", "sockettimeout"), ("?socket_timeout=1&health_check_interval=5", None)],
)
def test_a_misspelt_url_parameter_is_refused_at_start(query: str, refused: str | None) -> None:
    # redis-py itself takes any name and fails with a TypeError at the first connection.
    url = f"redis://127.0.0.1:6379/0{query}"
    if refused is None:
        open_store(url, 8, 60)
        return
    with pytest.raises(ConfigError, match=f"unknown URL parameters.*{refused}"):
        open_store(url, 8, 60)
