"""Session stores: each user's last events, written by ingest and read by the server.

One abstract base, :class:`SessionStore`, with a Redis implementation for production and
an in-memory one for unit tests. Appends are
idempotent: an event already in the session (the same event id, item, type and time) is
not added twice, so a Kafka message replayed after a crash counts once.

Redis layout: one sorted set per user, ``recsvc:session:<user_id>``, scored by event time,
whose members are the compact JSON of (event id, item, type). An append groups its events by
user and, in one Lua script per chunk of events (atomic, one round trip for all chunks),
gives each user one ZADD of all their new members, then trims the set to the newest
``length`` members and renews its TTL. Adding all members and then trimming keeps the same
newest ``length`` as adding and trimming one by one. A key Redis refuses (e.g. one holding
another type) fails only its own user's events.
"""

from __future__ import annotations

import abc
import json
import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import redis.asyncio as redis_asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recsvc.events import Event
from recsvc.exceptions import ConfigError, RecsvcError, SessionStoreError
from recsvc.multiplexed_redis import MultiplexedRedis, RedisReplyError
from recsvc.redact import redact_url

log = logging.getLogger(__name__)
KEY_PREFIX = "recsvc:session:"
#: Events per script call: bounds how long one call holds Redis, which serves no other
#: client meanwhile; 500 events took 2-10 ms of Redis time on the (busy) benchmark machine.
SCRIPT_CHUNK = 500
#: KEYS: the users' keys. ARGV: length, ttl, and one newline-separated payload holding, per
#: key in order, its member count n and n (score, member) pairs (members are JSON, which
#: never holds a raw newline). Returns {events added, then (key position, error) per key
#: holding another type}; any other error (out of memory, read-only replica) fails the call.
APPEND_SCRIPT = """
local length, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local token = string.gmatch(ARGV[3], '[^\\n]+')
local added, out = 0, {0}
for i, key in ipairs(KEYS) do
  local n = 2 * tonumber(token())
  local args = {}
  for k = 1, n do args[k] = token() end
  local err = nil
  for first = 1, n, 400 do
    local r = redis.pcall('ZADD', key, unpack(args, first, math.min(first + 399, n)))
    if type(r) == 'table' then
      if string.sub(r.err, 1, 9) ~= 'WRONGTYPE' then return redis.error_reply(r.err) end
      err = r.err
      break
    end
    added = added + r
  end
  if err then
    out[#out + 1] = i
    out[#out + 1] = err
  else
    redis.call('ZREMRANGEBYRANK', key, 0, -length - 1)
    redis.call('EXPIRE', key, ttl)
  end
end
out[1] = added
return out
"""


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


class SessionEvent(NamedTuple):
    """One event of a user's session (a tuple: built per request, so cheaply)."""

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
    """Compact JSON of (event id, item, type): the same text for the same event, always."""
    ids = event.event_id + event.item_id + event.type
    if ids.isascii() and ids.isprintable() and '"' not in ids and "\\" not in ids:
        # Nothing to escape: the f-string is exactly json.dumps's text, five times faster.
        return f'["{event.event_id}","{event.item_id}","{event.type}"]'
    return json.dumps([event.event_id, event.item_id, event.type], separators=(",", ":"))


def _chunks(events: Sequence[Event], size: int) -> Iterator[Sequence[Event]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def _parse_member(member: str | bytes, ts: float | bytes) -> SessionEvent | None:
    try:
        event_id, item_id, kind = json.loads(member)
        return SessionEvent(str(event_id), str(item_id), str(kind), float(ts))
    except (ValueError, TypeError):
        return None


def _parse_rows(flat: Sequence[bytes]) -> tuple[list[SessionEvent], int]:
    """Events of a ``ZRANGE ... WITHSCORES`` reply ``[member, score, ...]``, and how many
    members could not be read. All members go through one ``json.loads``; only when that
    fails is each parsed alone, to skip just the bad ones."""
    members, scores = flat[0::2], flat[1::2]
    try:
        rows = json.loads(b"[" + b",".join(members) + b"]")
        return [
            SessionEvent(str(event_id), str(item_id), str(kind), float(ts))
            for (event_id, item_id, kind), ts in zip(rows, scores, strict=True)
        ], 0
    except (ValueError, TypeError):
        events = [_parse_member(member, ts) for member, ts in zip(members, scores, strict=True)]
        good = [e for e in events if e is not None]
        return good, len(events) - len(good)


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
        # Like the Redis store: all of a user's events added, then one trim per user.
        added = 0
        touched: set[str] = set()
        for event in events:
            members = self._sessions.setdefault(event.user_id, {})
            member = _member(event)
            if member not in members:
                added += 1
            members[member] = event.ts
            touched.add(event.user_id)
        for user in touched:
            members = self._sessions[user]
            if len(members) > self.length:
                keep = sorted(members.items(), key=lambda kv: (kv[1], kv[0]))[-self.length :]
                self._sessions[user] = dict(keep)
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
                # One retry layer: the caller's (the ingest loop's Backoff, which counts
                # its retries); redis-py retrying inside it would hide failures.
                retry=Retry(NoBackoff(), 0),
            )
            # The server's one read per request goes over a shared, multiplexed connection.
            self._reads = MultiplexedRedis(url, timeout_s)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {redact_url(url)!r}: {exc}") from exc
        self._sha: str | None = None
        self._scripted = True

    async def recent(self, user_id: str) -> list[SessionEvent]:
        try:
            flat = await self._reads.execute(
                "ZRANGE", KEY_PREFIX + user_id, -self.length, -1, "WITHSCORES"
            )
        except RedisReplyError as exc:
            # This user's key is unusable (e.g. another type): no session, but the store
            # is fine, so this must not count against it.
            log.warning("unreadable session key", extra={"user_id": user_id, "error": str(exc)})
            return []
        except OSError as exc:
            raise SessionStoreError(f"session read failed: {exc}") from exc
        events, unreadable = _parse_rows(flat)
        if unreadable:
            log.warning(
                "skipped unreadable session members",
                extra={"user_id": user_id, "skipped": unreadable},
            )
        return events

    async def append(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        if not self._scripted:
            return await self._append_pipelined(events)
        try:
            added, refused = await self._run_script(events)
        except redis.exceptions.NoScriptError:
            self._sha = None  # Redis restarted and lost its script cache: load it again
            try:
                added, refused = await self._run_script(events)
            except (redis.exceptions.RedisError, OSError) as exc:
                raise SessionStoreError(f"session write failed: {exc}") from exc
        except (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError) as exc:
            raise SessionStoreError(f"session write failed: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            # Scripting refused (disabled, not permitted, a cluster): plain commands from now.
            log.warning("Lua scripts refused; appending with pipelines", extra={"error": str(exc)})
            self._scripted = False
            return await self._append_pipelined(events)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"session write failed: {exc}") from exc
        if refused:
            raise SessionWriteRejected(added, refused)
        return added

    async def _run_script(self, events: Sequence[Event]) -> tuple[int, list[tuple[Event, str]]]:
        """Run the append script over ``events`` in chunks, pipelined in one round trip."""
        if self._sha is None:
            self._sha = await self._client.script_load(APPEND_SCRIPT)
        chunks = list(_chunks(events, SCRIPT_CHUNK))
        head = [str(self.length).encode(), str(self.ttl_s).encode()]
        calls: list[list[list[Event]]] = []
        async with self._client.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                by_user: dict[str, list[Event]] = {}
                for event in chunk:
                    by_user.setdefault(event.user_id, []).append(event)
                tokens: list[str] = []
                for user_events in by_user.values():
                    tokens.append(str(len(user_events)))
                    for event in user_events:
                        tokens.append(repr(event.ts))
                        tokens.append(_member(event))
                keys = [(KEY_PREFIX + user).encode() for user in by_user]
                pipe.evalsha(self._sha, len(keys), *keys, *head, "\n".join(tokens).encode())
                calls.append(list(by_user.values()))
            results = await pipe.execute()
        added, refused = 0, []
        for groups, result in zip(calls, results, strict=True):
            added += int(result[0])
            for position, error in zip(result[1::2], result[2::2], strict=True):
                reason = error.decode() if isinstance(error, bytes) else str(error)
                refused += [(event, reason) for event in groups[int(position) - 1]]
        return added, refused

    async def _append_pipelined(self, events: Sequence[Event]) -> int:
        """Append with plain commands in one transaction, for a Redis that refuses scripts."""
        try:
            added, refused = await self._write(events)
        except redis.exceptions.ResponseError:
            # Redis refused the whole transaction: find which events, one transaction each;
            # the append is idempotent, so repeating the others is safe.
            return await self._write_one_by_one(events)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"session write failed: {exc}") from exc
        if refused:
            raise SessionWriteRejected(added, refused)
        return added

    async def _write(self, events: Sequence[Event]) -> tuple[int, list[tuple[Event, str]]]:
        async with self._client.pipeline(transaction=True) as pipe:
            for event in events:
                key = KEY_PREFIX + event.user_id
                pipe.zadd(key, {_member(event): event.ts})
                pipe.zremrangebyrank(key, 0, -self.length - 1)
                pipe.expire(key, self.ttl_s)
            results = await pipe.execute(raise_on_error=False)
        added, refused = 0, []
        for event, zadd in zip(events, results[0::3], strict=True):
            if isinstance(zadd, redis.exceptions.ResponseError):
                refused.append((event, str(zadd)))  # e.g. the key holds another type
            elif isinstance(zadd, Exception):
                raise zadd
            else:
                added += int(zadd)
        return added, refused

    async def _write_one_by_one(self, events: Sequence[Event]) -> int:
        added, refused = 0, []
        for event in events:
            try:
                one_added, one_refused = await self._write([event])
                added += one_added
                refused += one_refused
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
            raise SessionStoreError(f"Redis at {redact_url(self.url)} unreachable: {exc}") from exc

    async def aclose(self) -> None:
        await self._reads.aclose()
        await self._client.aclose()


def open_store(url: str, length: int, ttl_s: int, timeout_s: float = 1.0) -> SessionStore:
    """The production store for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return RedisSessionStore(url, length, ttl_s, timeout_s)
