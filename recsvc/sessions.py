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

With live settings the same script also counts the live co-visits of the events it adds
(:mod:`recsvc.live`), and the server's read is one script too, which returns the session and
the live neighbours of the viewed item and the session's newest visits in one round trip.
A Redis that refuses scripts gets plain commands and no live co-visits.
"""

from __future__ import annotations

import abc
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import redis.asyncio as redis_asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recsvc.contract import VISIT_TYPES
from recsvc.events import Event
from recsvc.exceptions import ConfigError, RecsvcError, SessionStoreError
from recsvc.live import (
    BASE_PREFIX,
    EMPTY_READ,
    NEIGHBOURS_PREFIX,
    REBASE_HALF_LIVES,
    LiveCovisits,
    LiveHeld,
    LiveRead,
    LiveSettings,
    Visit,
    covisit_pairs,
)
from recsvc.multiplexed_redis import MultiplexedRedis, RedisReplyError
from recsvc.redact import redact_url

log = logging.getLogger(__name__)
KEY_PREFIX = "recsvc:session:"
#: Events per script call: bounds how long one call holds Redis, which serves no other
#: client meanwhile; 500 events took 2-10 ms of Redis time on the (busy) benchmark machine.
SCRIPT_CHUNK = 500
#: The same with live co-visits, which cost Redis about 30 us per event (docs/BENCHMARKS.md):
#: 100 events hold it about 3 ms, well inside a Recommend's budget.
LIVE_SCRIPT_CHUNK = 100
#: KEYS: the users' keys. ARGV: length, ttl, one newline-separated payload holding, per key in
#: order, its member count n and n (score, member) pairs (members are JSON, which never holds
#: a raw newline), then the live co-visit settings: half-life (empty: off), cap, TTL, the
#: rebase threshold in half-lives (:mod:`recsvc.live`) and the latest pair time counted.
#: Returns {events added, co-visit updates, neighbours evicted, co-visit updates refused, then
#: (key position, error) per key holding another type}; any other error (out of memory, a
#: read-only replica) fails the call.
APPEND_SCRIPT = """
local length, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local token = string.gmatch(ARGV[3], '[^\\n]+')
local half, cap, live_ttl, rebase = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local latest = tonumber(ARGV[8])
local VISIT = __VISIT_TYPES__
local added, out = 0, {0, 0, 0, 0}

local function number(x) return string.format('%.17g', x) end

local function bump(item, neighbour, ts)
  local zk, bk = '__NEIGHBOURS__' .. item, '__BASE__' .. item
  local t = tonumber(ts)
  local stored = redis.call('GET', bk)
  local base = t
  if not stored then
    redis.call('SET', bk, ts, 'EX', live_ttl)
  else
    base = tonumber(stored)
    if t - base > rebase * half then
      redis.call('ZUNIONSTORE', zk, 1, zk, 'WEIGHTS', number(2 ^ ((base - t) / half)))
      base = t
      redis.call('SET', bk, ts, 'EX', live_ttl)
    else
      redis.call('EXPIRE', bk, live_ttl)
    end
  end
  redis.call('ZINCRBY', zk, number(2 ^ ((t - base) / half)), neighbour)
  local over = redis.call('ZCARD', zk) - cap
  if over > 0 then
    redis.call('ZREMRANGEBYRANK', zk, 0, over - 1)
    out[3] = out[3] + over
  end
  redis.call('EXPIRE', zk, live_ttl)
  out[2] = out[2] + 1
end

local function pair(earlier, later, ts)
  if latest and tonumber(ts) > latest then
    out[4] = out[4] + 2  -- too far past ingest's clock: it would freeze both items' scores
    return
  end
  for _, p in ipairs({{earlier, later}, {later, earlier}}) do
    if not pcall(bump, p[1], p[2], ts) then out[4] = out[4] + 1 end
  end
end

-- A member's item and whether it is a visit (nil, false when it does not parse).
local function visit_of(member)
  local ok, m = pcall(cjson.decode, member)
  if ok and type(m) == 'table' and type(m[2]) == 'string' then return m[2], VISIT[m[3]] end
  return nil, false
end

-- The visits of a session after its append and before its trim, each marked new or not,
-- from the nearest visit before the first new member that the trim keeps to the end (no
-- other can pair); the pairs are recsvc.live.covisit_pairs.
local function covisit(key, new)
  -- Only the members the trim keeps pair: a replayed event older than all of them is added
  -- and trimmed again, and must not count twice.
  local keep_from = math.max(redis.call('ZCARD', key) - length, 0)
  local start = nil
  for member in pairs(new) do
    local rank = redis.call('ZRANK', key, member)
    if rank and rank >= keep_from and (not start or rank < start) then start = rank end
  end
  if not start then return end
  while start > keep_from do
    start = start - 1
    local _, is_visit = visit_of(redis.call('ZRANGE', key, start, start)[1])
    if is_visit then break end
  end
  local flat = redis.call('ZRANGE', key, start, -1, 'WITHSCORES')
  local visits = {}
  for j = 1, #flat, 2 do
    local item, is_visit = visit_of(flat[j])
    if is_visit then visits[#visits + 1] = {item, flat[j + 1], new[flat[j]] == true} end
  end
  for j, v in ipairs(visits) do
    if v[3] then
      local before, after = visits[j - 1], visits[j + 1]
      if before and before[1] ~= v[1] then pair(before[1], v[1], v[2]) end
      if after and not after[3] and after[1] ~= v[1] then pair(v[1], after[1], after[2]) end
    end
  end
end

for i, key in ipairs(KEYS) do
  local n = 2 * tonumber(token())
  local args = {}
  for k = 1, n do args[k] = token() end
  local new = nil
  if half then
    local members = {}
    for k = 2, n, 2 do members[#members + 1] = args[k] end
    local scores = redis.pcall('ZMSCORE', key, unpack(members))
    if type(scores) == 'table' and scores.err and string.sub(scores.err, 1, 9) ~= 'WRONGTYPE' then
      -- Not this key's fault (Redis before 6.2, an ACL): no co-visit could ever count.
      return redis.error_reply('LIVEREFUSED ' .. scores.err)
    end
    if type(scores) == 'table' and not scores.err then
      new = {}
      for k, score in ipairs(scores) do
        if not score then new[members[k]] = true end
      end
    end
  end
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
    if new and next(new) then covisit(key, new) end
    redis.call('ZREMRANGEBYRANK', key, 0, -length - 1)
    redis.call('EXPIRE', key, ttl)
  end
end
out[1] = added
return out
"""
# The visit types as a Lua set, from the contract.
_LUA_VISITS = "{" + ", ".join(f"{kind} = true" for kind in VISIT_TYPES) + "}"


def _filled(script: str) -> str:
    """A script with the contract's visit types and the live key prefixes put in."""
    return (
        script.replace("__VISIT_TYPES__", _LUA_VISITS)
        .replace("__NEIGHBOURS__", NEIGHBOURS_PREFIX)
        .replace("__BASE__", BASE_PREFIX)
    )


APPEND_SCRIPT = _filled(APPEND_SCRIPT)

#: A co-visit at a time further than this past ingest's clock is refused, not counted: an
#: item's scores are on the base of its latest co-visit, so one event from the future would
#: make every real co-visit after it count for nothing until the item expired.
MAX_AHEAD_S = 3600.0
#: Error replies that mean Redis will never run the read script (no permission, a cluster,
#: scripting switched off); any other error fails one read only.
SCRIPTS_REFUSED = ("NOPERM", "CROSSSLOT", "MOVED", "ASK ", "ERR unknown command")
#: The append script's error reply when Redis will not run ZMSCORE for it (before 6.2, or
#: an ACL): with live settings, ingest stops with a configuration error rather than
#: appending sessions whose co-visits can never count.
LIVE_REFUSED = "LIVEREFUSED "
#: KEYS: the user's session key. ARGV: length, the viewed item, how many items to read
#: neighbours of (the viewed item and the newest distinct visits, as ``live_items``), and how
#: many neighbours each. Returns {session as ZRANGE WITHSCORES, then per item read: its id,
#: its base ('' for none) and its neighbours as ZREVRANGE WITHSCORES}.
READ_SCRIPT = """
local flat = redis.call('ZRANGE', KEYS[1], -tonumber(ARGV[1]), -1, 'WITHSCORES')
local count, top = tonumber(ARGV[3]), tonumber(ARGV[4])
local VISIT = __VISIT_TYPES__
local items, seen = {ARGV[2]}, {[ARGV[2]] = true}
for j = #flat - 1, 1, -2 do
  if #items >= count then break end
  local ok, m = pcall(cjson.decode, flat[j])
  if ok and type(m) == 'table' and VISIT[m[3]] and type(m[2]) == 'string' and not seen[m[2]] then
    items[#items + 1] = m[2]
    seen[m[2]] = true
  end
end
local out = {flat}
for _, item in ipairs(items) do
  local okb, base = pcall(redis.call, 'GET', '__BASE__' .. item)
  local okn, ranked = pcall(
    redis.call, 'ZREVRANGE', '__NEIGHBOURS__' .. item, 0, top - 1, 'WITHSCORES')
  if okb and okn and base then
    out[#out + 1] = item
    out[#out + 1] = base
    out[#out + 1] = ranked
  end
end
return out
"""
READ_SCRIPT = _filled(READ_SCRIPT)


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


@dataclass
class LiveCounts:
    """What appends did to the live co-visits since the store was made (cumulative)."""

    updates: int = 0
    evictions: int = 0
    refused: int = 0


class SessionStore(abc.ABC):
    """Bounded, expiring per-user event history, and with ``live`` settings the items'
    live co-visits (:mod:`recsvc.live`), updated by the same appends."""

    def __init__(self, length: int, ttl_s: int, live: LiveSettings | None = None) -> None:
        self.length = length
        self.ttl_s = ttl_s
        self.live = live
        self.live_counts = LiveCounts()

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

    async def read(self, user_id: str, item_id: str) -> tuple[list[SessionEvent], LiveRead]:
        """The user's session (as :meth:`recent`) and the live neighbours of ``item_id``
        and of the session's newest visits (``live.read_items`` items in all), read
        together. Without live settings the neighbours are empty."""
        return await self.recent(user_id), EMPTY_READ

    async def live_held(self) -> LiveHeld:
        """The live co-visit state held now (zero without live settings).

        Raises
        ------
        SessionStoreError
            The store could not be read.
        """
        return LiveHeld(0, 0)

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


def script_chunk(live: LiveSettings | None) -> int:
    """Events per append script call (the in-memory store chunks alike)."""
    return SCRIPT_CHUNK if live is None else LIVE_SCRIPT_CHUNK


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
    """A dict of sorted lists; for tests, single-process demos and ``recsvc eval --replay``.

    Appends run in chunks of :func:`script_chunk` events, as the Redis store's do, so that
    the live co-visits come out the same. Nothing expires."""

    def __init__(
        self, length: int = 20, ttl_s: int = 86400, live: LiveSettings | None = None
    ) -> None:
        super().__init__(length, ttl_s, live)
        self._sessions: dict[str, dict[str, float]] = {}
        self.covisits = LiveCovisits(live) if live is not None else None

    async def recent(self, user_id: str) -> list[SessionEvent]:
        return self.recent_now(user_id)

    def recent_now(self, user_id: str) -> list[SessionEvent]:
        """:meth:`recent` without the event loop."""
        ordered = self._ordered(user_id)[-self.length :]
        return [e for m, ts in ordered if (e := _parse_member(m, ts)) is not None]

    def _ordered(self, user_id: str) -> list[tuple[str, float]]:
        members = self._sessions.get(user_id, {})
        return sorted(members.items(), key=lambda kv: (kv[1], kv[0].encode()))

    async def append(self, events: Sequence[Event]) -> int:
        return self.append_now(events)

    def append_now(self, events: Sequence[Event]) -> int:
        """:meth:`append` without the event loop."""
        size = script_chunk(self.live)
        return sum(self._append_chunk(chunk) for chunk in _chunks(events, size))

    def _append_chunk(self, events: Sequence[Event]) -> int:
        # Like the Redis script: per user, all events added, co-visits, then one trim.
        added: dict[str, set[str]] = {}
        for event in events:
            members = self._sessions.setdefault(event.user_id, {})
            new = added.setdefault(event.user_id, set())
            member = _member(event)
            if member not in members:
                new.add(member)
            members[member] = event.ts
        for user, new in added.items():
            if self.covisits is not None and new:
                before = (self.covisits.updates, self.covisits.evictions)
                self.covisits.add_pairs(covisit_pairs(self._visits(user, new)))
                self.live_counts.updates += self.covisits.updates - before[0]
                self.live_counts.evictions += self.covisits.evictions - before[1]
            if len(self._sessions[user]) > self.length:
                self._sessions[user] = dict(self._ordered(user)[-self.length :])
        return sum(len(new) for new in added.values())

    def _visits(self, user_id: str, new: set[str]) -> list[Visit]:
        """The members the trim keeps, as the pairing sees them."""
        visits = []
        for member, ts in self._ordered(user_id)[-self.length :]:
            event = _parse_member(member, ts)
            if event is not None:
                visits.append(Visit(event.item_id, event.type, ts, member in new))
        return visits

    async def read(self, user_id: str, item_id: str) -> tuple[list[SessionEvent], LiveRead]:
        session = await self.recent(user_id)  # through recent(), which tests override
        return session, self._read_live(item_id, session)

    def read_now(self, user_id: str, item_id: str) -> tuple[list[SessionEvent], LiveRead]:
        """:meth:`read` without the event loop."""
        session = self.recent_now(user_id)
        return session, self._read_live(item_id, session)

    def _read_live(self, item_id: str, session: Sequence[SessionEvent]) -> LiveRead:
        if self.covisits is None or self.live is None:
            return EMPTY_READ
        return self.covisits.read(live_items(item_id, session, self.live.read_items))

    async def live_held(self) -> LiveHeld:
        return self.covisits.held() if self.covisits is not None else LiveHeld(0, 0)

    async def ping(self) -> None:
        return None


def live_items(item_id: str, session: Sequence[SessionEvent], count: int) -> list[str]:
    """The items whose live neighbours a request reads: ``item_id``, then the session's
    newest distinct visits, ``count`` items in all (the read script's rule)."""
    items = [item_id]
    for event in reversed(session):
        if len(items) >= count:
            break
        if event.type in VISIT_TYPES and event.item_id not in items:
            items.append(event.item_id)
    return items


class RedisSessionStore(SessionStore):
    """Sessions in Redis sorted sets (see the module docstring)."""

    def __init__(
        self,
        url: str,
        length: int = 20,
        ttl_s: int = 86400,
        timeout_s: float = 1.0,
        live: LiveSettings | None = None,
    ) -> None:
        super().__init__(length, ttl_s, live)
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
        self._read_sha: str | None = None
        self._read_scripted = live is not None

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

    async def read(self, user_id: str, item_id: str) -> tuple[list[SessionEvent], LiveRead]:
        live = self.live
        if live is None or not self._read_scripted:
            return await self.recent(user_id), EMPTY_READ
        args = (KEY_PREFIX + user_id, self.length, item_id, live.read_items, live.read_top)
        try:
            if self._read_sha is None:
                self._read_sha = await self._reads.execute("SCRIPT", "LOAD", READ_SCRIPT)
            try:
                reply = await self._reads.execute("EVALSHA", self._read_sha, 1, *args)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # Redis restarted and lost its script cache: load it again.
                self._read_sha = await self._reads.execute("SCRIPT", "LOAD", READ_SCRIPT)
                reply = await self._reads.execute("EVALSHA", self._read_sha, 1, *args)
        except RedisReplyError as exc:
            message = str(exc)
            if "WRONGTYPE" in message:
                log.warning("unreadable session key", extra={"user_id": user_id, "error": message})
                return [], EMPTY_READ
            if not message.startswith(SCRIPTS_REFUSED):
                # LOADING after a restart, BUSY, MASTERDOWN...: this read fails, not the next.
                raise SessionStoreError(f"session read failed: {message}") from exc
            # Scripts refused for good (not permitted, a cluster): sessions without live.
            log.warning("Lua scripts refused; reading without live", extra={"error": message})
            self._read_scripted = False
            return await self.recent(user_id), EMPTY_READ
        except OSError as exc:
            raise SessionStoreError(f"session read failed: {exc}") from exc
        events, unreadable = _parse_rows(reply[0])
        if unreadable:
            log.warning(
                "skipped unreadable session members",
                extra={"user_id": user_id, "skipped": unreadable},
            )
        return events, _live_read(reply[1:], live.half_life_s)

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
            if LIVE_REFUSED in str(exc):  # redis-py prefixes where in the pipeline
                said = str(exc).split(LIVE_REFUSED, 1)[1]
                raise ConfigError(
                    "live co-visits need Redis 6.2 or later and the right to run ZMSCORE; "
                    f"{redact_url(self.url)} refused it ({said}): upgrade Redis, grant the "
                    "command, or run with --live 0"
                ) from None
            if self.live is not None:
                # Plain commands cannot count co-visits once per event: no live state.
                raise ConfigError(
                    f"live co-visits need Lua scripts, which {redact_url(self.url)} refused "
                    f"({exc}): allow EVALSHA and SCRIPT LOAD, or run with --live 0"
                ) from None
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
        chunks = list(_chunks(events, script_chunk(self.live)))
        head = [str(self.length).encode(), str(self.ttl_s).encode()]
        live = self.live
        tail = (
            [
                repr(live.half_life_s),
                str(live.cap),
                str(live.ttl_s),
                str(REBASE_HALF_LIVES),
                repr(time.time() + MAX_AHEAD_S),
            ]
            if live is not None
            else ["", "", "", "", ""]
        )
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
                payload = "\n".join(tokens).encode()
                pipe.evalsha(self._sha, len(keys), *keys, *head, payload, *tail)
                calls.append(list(by_user.values()))
            results = await pipe.execute()
        added, refused = 0, []
        counts = self.live_counts
        for groups, result in zip(calls, results, strict=True):
            added += int(result[0])
            counts.updates += int(result[1])
            counts.evictions += int(result[2])
            counts.refused += int(result[3])
            for position, error in zip(result[4::2], result[5::2], strict=True):
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

    async def live_held(self, batch: int = 1000) -> LiveHeld:
        """Counted with SCAN over the neighbour keys and ZCARD of each, ``batch`` keys a
        round trip: O(live items) work for Redis, done in small steps."""
        if self.live is None:
            return LiveHeld(0, 0)
        items = neighbours = 0
        keys: list[bytes] = []
        try:
            async for key in self._client.scan_iter(match=NEIGHBOURS_PREFIX + "*", count=batch):
                keys.append(key)
                if len(keys) >= batch:
                    found, held = await self._cardinalities(keys)
                    items, neighbours, keys = items + found, neighbours + held, []
            found, held = await self._cardinalities(keys)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"live state not counted: {exc}") from exc
        return LiveHeld(items + found, neighbours + held)

    async def _cardinalities(self, keys: list[bytes]) -> tuple[int, int]:
        """(keys that still exist, their members): a key may expire after SCAN saw it."""
        if not keys:
            return 0, 0
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zcard(key)
            sizes = await pipe.execute(raise_on_error=False)
        counted = [n for n in sizes if isinstance(n, int) and n > 0]
        return len(counted), sum(counted)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise SessionStoreError(f"Redis at {redact_url(self.url)} unreachable: {exc}") from exc

    async def aclose(self) -> None:
        await self._reads.aclose()
        await self._client.aclose()


def _live_read(flat: Sequence[object], half_life_s: float) -> LiveRead:
    """The read script's (item, base, neighbours) triples as a :class:`LiveRead`; an entry
    that does not parse is skipped."""
    lists: dict[str, tuple[float, list[str], list[float]]] = {}
    for item, base, ranked in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
        if not (isinstance(item, bytes) and isinstance(base, bytes) and isinstance(ranked, list)):
            continue
        try:
            names = [name.decode() for name in ranked[0::2]]
            scores = [float(score) for score in ranked[1::2]]
            if len(names) == len(scores):
                lists[item.decode()] = (float(base), names, scores)
        except (AttributeError, TypeError, ValueError, UnicodeDecodeError):
            continue
    return LiveRead(lists, half_life_s)


def open_store(
    url: str,
    length: int,
    ttl_s: int,
    timeout_s: float = 1.0,
    live: LiveSettings | None = None,
) -> SessionStore:
    """The production store for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return RedisSessionStore(url, length, ttl_s, timeout_s, live)
