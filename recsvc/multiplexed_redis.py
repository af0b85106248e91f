"""A Redis connection that every concurrent caller of one process shares, for hot reads.

redis-py checks a connection out of a pool for each command, which costs more CPU than the
server's whole ranking step. Redis answers the commands of one connection in the order it
received them, so one connection can carry any number of calls at once: each call writes
its command and waits on a future queued in send order, and each reply, as it arrives, goes
to the oldest waiting future (the multiplexing that redis-rs and StackExchange.Redis use).
Replies are parsed by hiredis.

A caller that gives up (its deadline passed) just leaves; its reply is read and dropped
when it comes, so the order stays right. A call that outlives the connection's own
timeout means the connection is stuck, so it is closed and the next call opens a new one.

The per-call costs are kept to the minimum a hot read needs: replies are parsed in the
protocol's ``data_received`` callback (no reader task to wake), and the stuck-connection
check is one timer per connection, re-armed for the oldest call only when it fires, not a
timer per call.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import ssl
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.connection import SSLConnection, parse_url
from redis.exceptions import RedisError


class RedisReplyError(Exception):
    """Redis answered the command with an error (e.g. WRONGTYPE); the connection is fine."""


class RedisConnectionError(OSError):
    """The connection could not be opened, was lost, or stopped answering."""


#: What a URL's query may set: the connection's own settings (the ``ssl_*`` ones are checked
#: by :func:`tls_context`), and what ``parse_url`` takes from the URL's other parts.
URL_OPTIONS = {
    *inspect.signature(AbstractConnection.__init__).parameters,
    *inspect.signature(AsyncConnection.__init__).parameters,
    "path",
    "connection_class",
} - {"self", "kwargs"}


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context of a parsed ``rediss://`` URL, as redis-py's own connection builds it
    from the URL's ``ssl_*`` query parameters (``ssl_ca_certs``, ``ssl_cert_reqs``,
    ``ssl_check_hostname``, ``ssl_certfile``, ``ssl_keyfile`` ...) and its defaults (the
    system CAs; the certificate and the host name checked), so that one URL means the same
    to both clients. The files named are read now.

    Raises
    ------
    ValueError
        An unknown ``ssl_*`` parameter, a bad value, or a file that cannot be loaded.
    """
    tls = {name: value for name, value in options.items() if name.startswith("ssl_")}
    try:
        return AsyncSSLConnection(**tls).ssl_context.get()
    except TypeError as exc:  # an ssl_* name redis-py does not take
        raise ValueError(f"unknown TLS parameter: {exc}") from None
    except (OSError, RedisError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"unusable TLS settings: {exc}") from None


def encode_command(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """The RESP array of bulk strings for one command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One connection's transport, parser and queue of waiting calls."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._parser = hiredis.Reader(replyError=RedisReplyError)
        #: (future, loop time it was sent), in send order: Redis replies in that order.
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                waiter = self._pending.popleft()[0]
                if waiter.done():  # its caller gave up
                    continue
                if isinstance(reply, RedisReplyError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.close(RedisConnectionError(f"Redis connection lost: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError(f"Redis connection lost: {exc or 'closed by Redis'}"))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one command; the future gets its reply."""
        reply = self._loop.create_future()
        if self.lost is not None or self.transport is None:
            reply.set_exception(self.lost or RedisConnectionError("not connected"))
            return reply
        self._pending.append((reply, self._loop.time()))
        self.transport.write(command)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self.timeout_s, self._check_stuck)
        return reply

    def _check_stuck(self) -> None:
        """Close the connection if its oldest unanswered call has waited ``timeout_s``."""
        self._watchdog = None
        if not self._pending:
            return
        waited = self._loop.time() - self._pending[0][1]
        if waited >= self.timeout_s:
            self.close(RedisConnectionError("no reply within the timeout"))
        else:
            self._watchdog = self._loop.call_later(self.timeout_s - waited, self._check_stuck)

    def close(self, error: Exception) -> None:
        """Close the connection and fail the calls waiting on it."""
        if self.lost is not None:
            return
        self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.transport is not None:
            self.transport.abort()
        while self._pending:
            waiter = self._pending.popleft()[0]
            if not waiter.done():
                waiter.set_exception(error)


class MultiplexedRedis:
    """Commands from any number of tasks over one connection (see the module docstring).

    Parameters
    ----------
    url : ``redis://[[user]:password@]host:port/db``, ``rediss://...`` or ``unix://path?db=N``;
        a ``rediss://`` URL takes redis-py's ``ssl_*`` query parameters (:func:`tls_context`)
    timeout_s : seconds to connect, and the longest a call may wait for its reply

    Raises
    ------
    ValueError
        A URL redis-py would not take, or TLS settings that cannot be used.
    """

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        options = parse_url(url)
        self._host = options.get("host", "localhost")
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        unknown = sorted(set(options) - URL_OPTIONS)
        unknown = [name for name in unknown if not name.startswith("ssl_")]
        if unknown:  # redis-py would fail at the first connection, with a TypeError
            raise ValueError(f"unknown URL parameters {unknown}")
        tls = options.get("connection_class") is SSLConnection
        if not tls and any(name.startswith("ssl_") for name in options):
            raise ValueError("ssl_* parameters need a rediss:// URL")
        self._tls_context = tls_context(options) if tls else None
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply (bytes, int, list ...).

        Raises
        ------
        RedisReplyError
            Redis refused the command.
        RedisConnectionError
            No connection, or it broke or stalled before the reply.
        """
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        return await connection.send(encode_command(args))

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close(RedisConnectionError("connection closed"))
            self._connection = None

    async def _connect(self) -> _Connection:
        async with self._connecting:
            current = self._connection
            if current is not None and current.lost is None:  # another caller connected
                return current
            loop = asyncio.get_running_loop()
            connection = _Connection(self.timeout_s)
            connected = False
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self._path:
                        await loop.create_unix_connection(lambda: connection, self._path)
                    else:
                        await loop.create_connection(
                            lambda: connection, self._host, self._port, ssl=self._tls_context
                        )
                    await self._handshake(connection)
                connected = True
            except (OSError, TimeoutError, RedisReplyError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
            finally:
                if not connected:  # also when the caller was cancelled meanwhile
                    connection.close(RedisConnectionError("connection not completed"))
            self._connection = connection
            return connection

    async def _handshake(self, connection: _Connection) -> None:
        """AUTH and SELECT, one at a time, before the connection is shared."""
        if self._password is not None:
            auth = ("AUTH", self._username) if self._username else ("AUTH",)
            await connection.send(encode_command((*auth, self._password)))
        if self._db:
            await connection.send(encode_command(("SELECT", self._db)))
