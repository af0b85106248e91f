"""Session stores: each user's last events, written by ingest and read by the server.

One abstract base, :class:`SessionStore`, with a Redis implementation for production and
an in-memory one for unit tests. Appends are
idempotent: an event already in the session (the same event id, item, type and time) is
not added twice, so a Kafka message replayed after a crash counts once.

Redis layout: one sorted set per user, ``recsvc:session:<user_id>``, scored by event time,
whose members are the compact JSON of (event id, item, type). Each append trims the set to
the newest ``length`` members and renews its TTL, in one transaction.
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis_asyncio
import redis.exceptions

from recsvc.events import Event
from recsvc.exceptions import ConfigError, RecsvcError, SessionStoreError

log = logging.getLogger(__name__)
KEY_PREFIX = "recsvc:session:"


class SessionWriteRejected(RecsvcError):
    """The store refused some events for good (retrying cannot help); the rest are stored.

    Attributes
    ----------
    added : int, events newly stored
    rejected : list of (event, Redis's reason)
    """

    def __init__(self, added: int, rejected: list[tuple[Event, str]]) -> None:
        super().__init__(f"{len(rejected)} events refused by the session store")
        self.added = added
        self.rejected = rejected


@dataclass(frozen=True)
class SessionEvent:
    """One event of a user's session."""

    event_id: str
    item_id: str
    type: str
    ts: float


class SessionStore(abc.ABC):
    """Bounded, expiring per-user event history."""

    def __init__(self, length: int, ttl_s: int) -> None:
        self.length = length
        self.ttl_s = ttl_s

    @abc.abstractmethod
    async def recent(self, user_id: str) -> list[SessionEvent]:
        """The user's last ``length`` events, oldest first; empty when there is no session."""

    @abc.abstractmethod
    async def append(self, events: Sequence[Event]) -> int:
        """Add events to their users' sessions; returns how many were new (not replays).

        Raises
        ------
        SessionStoreError
            The store is unreachable: nothing can be assumed stored; retry.
        SessionWriteRejected
            The store refused some events for good; the others are stored.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise :class:`SessionStoreError` when the store cannot be reached."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _member(event: Event) -> str:
    return json.dumps([event.event_id, event.item_id, event.type], separators=(",", ":"))


def _parse_member(member: str | bytes, ts: float) -> SessionEvent | None:
    try:
        event_id, item_id, kind = json.loads(member)
        return SessionEvent(str(event_id), str(item_id), str(kind), float(ts))
    except (ValueError, TypeError):
        return None


class InMemorySessionStore(SessionStore):
    """A dict of sorted lists; for tests and single-process demos."""

    def __init__(self, length: int = 20, ttl_s: int = 86400) -> None:
        super().__init__(length, ttl_s)
        self._sessions: dict[str, dict[str, float]] = {}

    async def recent(self, user_id: str) -> list[SessionEvent]:
        members = self._sessions.get(user_id, {})
        ordered = sorted(members.items(), key=lambda kv: (kv[1], kv[0]))[-self.length :]
        return [e for m, ts in ordered if (e := _parse_member(m, ts)) is not None]

    async def append(self, events: Sequence[Event]) -> int:
        added = 0
        for event in events:
            members = self._sessions.setdefault(event.user_id, {})
            member = _member(event)
            if member not in members:
                members[member] = event.ts
                added += 1
            if len(members) > self.length:
                keep = sorted(members.items(), key=lambda kv: (kv[1], kv[0]))[-self.length :]
                self._sessions[event.user_id] = dict(keep)
        return added

    async def ping(self) -> None:
        return None


class RedisSessionStore(SessionStore):
    """Sessions in Redis sorted sets (see the module docstring)."""

    def __init__(
        self, url: str, length: int = 20, ttl_s: int = 86400, timeout_s: float = 1.0
    ) -> None:
        super().__init__(length, ttl_s)
        self.url = url
        try:
            self._client = redis_asyncio.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from exc

    async def recent(self, user_id: str) -> list[SessionEvent]:
        try:
            rows = await self._client.zrange(
                KEY_PREFIX + user_id, -self.length, -1, withscores=True
            )
        except redis.exceptions.ResponseError as exc:
            # This user's key is unusable (e.g. another type): no session, but the store
            # is fine, so this must not count against it.
            log.warning("unreadable session key", extra={"user_id": user_id, "error": str(exc)})
            return []
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"session read failed: {exc}") from exc
        events = [_parse_member(member, ts) for member, ts in rows]
        if None in events:
            log.warning("skipped unreadable session members", extra={"user_id": user_id})
        return [e for e in events if e is not None]

    async def append(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        try:
            return await self._write(events)
        except redis.exceptions.ResponseError:
            # Redis refused a command (e.g. a key holding another type): find which events,
            # one transaction each; the append is idempotent, so repeating the others is safe.
            return await self._write_one_by_one(events)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"session write failed: {exc}") from exc

    async def _write(self, events: Sequence[Event]) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            for event in events:
                key = KEY_PREFIX + event.user_id
                pipe.zadd(key, {_member(event): event.ts})
                pipe.zremrangebyrank(key, 0, -self.length - 1)
                pipe.expire(key, self.ttl_s)
            results = await pipe.execute()
        return int(sum(results[0::3]))

    async def _write_one_by_one(self, events: Sequence[Event]) -> int:
        added, refused = 0, []
        for event in events:
            try:
                added += await self._write([event])
            except redis.exceptions.ResponseError as exc:
                refused.append((event, str(exc)))
            except (redis.exceptions.RedisError, OSError) as exc:
                raise SessionStoreError(f"session write failed: {exc}") from exc
        if refused:
            raise SessionWriteRejected(added, refused)
        return added

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"Redis at {self.url} unreachable: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def open_store(url: str, length: int, ttl_s: int, timeout_s: float = 1.0) -> SessionStore:
    """The production store for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return RedisSessionStore(url, length, ttl_s, timeout_s)
