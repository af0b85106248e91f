"""The session store contract (helpers.check_store_contract) on the in-memory store."""

from __future__ import annotations

import asyncio

from helpers import check_store_contract

from recsvc.sessions import InMemorySessionStore


def test_in_memory_store_keeps_the_contract() -> None:
    asyncio.run(check_store_contract(InMemorySessionStore(length=8)))
