"""A Redis connection that every concurrent caller of one process shares, for hot reads.

redis-py checks a connection out of a pool for each command, which costs more CPU than the
server's whole ranking step. Redis answers the commands of one connection in the order it
received them, so one connection can carry any number of calls at once: each call writes
its command and waits on a future queued in send order, and a single reader task hands
each reply to the oldest waiting future (the multiplexing that redis-rs and
StackExchange.Redis use). Replies are parsed by hiredis.

A caller that gives up (its deadline passed) just leaves; its reply is read and dropped
when it comes, so the order stays right. A call that outlives the connection's own
timeout means the connection is stuck, so it is closed and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

import hiredis
from redis.connection import SSLConnection, parse_url


class RedisReplyError(Exception):
    """Redis answered the command with an error (e.g. WRONGTYPE); the connection is fine."""


class RedisConnectionError(OSError):
    """The connection could not be opened, was lost, or stopped answering."""


def encode_command(args: tuple[str | bytes | int | float, ...]) -> bytes:
    """The RESP array of bulk strings for one command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class MultiplexedRedis:
    """Commands from any number of tasks over one connection (see the module docstring).

    Parameters
    ----------
    url : ``redis://[[user]:password@]host:port/db``, ``rediss://...`` or ``unix://path?db=N``
    timeout_s : seconds to connect, and the longest a call may wait for its reply
    """

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        options = parse_url(url)
        self._host = options.get("host", "localhost")
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._tls = options.get("connection_class") is SSLConnection
        self.timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
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
        writer = self._writer if self._writer is not None else await self._connect()
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(reply)
        writer.write(encode_command(args))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await reply
        except TimeoutError:
            self._drop(writer, RedisConnectionError("no reply within the timeout"))
            raise RedisConnectionError(f"no reply from Redis within {self.timeout_s} s") from None

    async def aclose(self) -> None:
        if self._writer is not None:
            self._drop(self._writer, RedisConnectionError("connection closed"))
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:  # another caller connected meanwhile
                return self._writer
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self._path:
                        reader, writer = await asyncio.open_unix_connection(self._path)
                    else:
                        context = ssl.create_default_context() if self._tls else None
                        reader, writer = await asyncio.open_connection(
                            self._host, self._port, ssl=context
                        )
                    await self._handshake(reader, writer)
            except (OSError, TimeoutError, RedisReplyError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
            self._pending.clear()
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_replies(reader, writer))
            return writer

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """AUTH and SELECT, one at a time, before the connection is shared."""
        commands: list[tuple[str | bytes | int | float, ...]] = []
        if self._password is not None:
            auth = ("AUTH", self._username) if self._username else ("AUTH",)
            commands.append((*auth, self._password))
        if self._db:
            commands.append(("SELECT", self._db))
        parser = hiredis.Reader(replyError=RedisReplyError)
        for command in commands:
            writer.write(encode_command(command))
            reply = False
            while reply is False:
                data = await reader.read(4096)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
                reply = parser.gets()
            if isinstance(reply, RedisReplyError):
                raise reply

    async def _read_replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = hiredis.Reader(replyError=RedisReplyError)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    waiter = self._pending.popleft()
                    if waiter.done():  # its caller gave up
                        continue
                    if isinstance(reply, RedisReplyError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except (OSError, hiredis.ProtocolError, IndexError) as exc:
            self._drop(writer, RedisConnectionError(f"Redis connection lost: {exc!r}"))

    def _drop(self, writer: asyncio.StreamWriter, error: Exception) -> None:
        """Close ``writer``'s connection and fail the calls waiting on it."""
        if self._writer is not writer:
            return
        self._writer = None
        writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(error)
