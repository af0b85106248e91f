"""Open-loop Recommend load for the chaos scenarios that run a ``recsvc serve``, with a
record of every call.

:class:`CallLoad` sends as :mod:`loadtest.openloop` does: each call at its scheduled time
whether or not earlier ones have returned, its latency counted from that time (no
coordinated omission), pre-serialized requests through a raw method, several client
processes with several connections each. Unlike ``openloop.LoadGenerator``, which reports
a step's latencies and error count, it keeps each call's scheduled time, latency, status
code and (by ``inspect``) what its reply said, so that a scenario can cut the calls by
what happened when (before, during and after a fault) and count errors by status. It also
takes channel options, e.g. a service config that balances over several servers
(:func:`balanced`), and a step can be started, left running while the scenario breaks
something, and ended early.

:func:`fill_sessions` writes shoppers' sessions through the session store's own append,
and :func:`recommend_requests` makes calls for those shoppers.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

import grpc
import numpy as np

from loadtest.chaos.common import SESSION_LENGTH, metric_samples, shopper_events
from recsvc.live import LiveSettings
from recsvc.sessions import RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb

METHOD = "/recsvc.v1.Recommender/Recommend"
#: Events per shopper that :func:`fill_sessions` writes (as capacity's sessions).
SESSION_EVENTS = 8
#: Events per append call: a few script round trips, well inside the store's timeout.
APPEND_SLICE = 2000
#: A method that takes and gives bytes: no protobuf work in the client per call.
BytesMethod = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
#: Status code value -> name, for :meth:`Calls.errors`.
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def fill_sessions(redis_url: str, tag: str, users: int, items: list[str], seed: int) -> list[str]:
    """Sessions of ``users`` shoppers (``SESSION_EVENTS`` clicks and carts each, on
    ``items``), written with :meth:`RedisSessionStore.append` and the default live settings,
    as ingest writes them; returns the shoppers' ids."""
    events = shopper_events(tag, users, users * SESSION_EVENTS, items, seed)

    async def append() -> None:
        store = RedisSessionStore(
            redis_url, length=SESSION_LENGTH, timeout_s=10.0, live=LiveSettings()
        )
        try:
            for start in range(0, len(events), APPEND_SLICE):
                await store.append(events[start : start + APPEND_SLICE])
        finally:
            await store.aclose()

    asyncio.run(append())
    return sorted({event.user_id for event in events})


def recommend_requests(
    users: Sequence[str], items: Sequence[str], count: int, seed: int, k: int = 0
) -> list[bytes]:
    """``count`` serialized Recommend requests, each of a random one of ``users`` viewing a
    random one of ``items`` (``k`` 0: the server's default)."""
    rng = np.random.default_rng(seed)
    pick_users = rng.integers(0, len(users), count)
    pick_items = rng.integers(0, len(items), count)
    return [
        pb.RecommendRequest(user_id=users[u], item_id=items[i], k=k).SerializeToString()
        for u, i in zip(pick_users, pick_items, strict=True)
    ]


def reply_kind(reply: bytes) -> tuple[bool, int]:
    """(personalized, fallback reason as the proto's enum value) of a Recommend reply
    (runs in the client processes)."""
    answer = pb.RecommendResponse.FromString(reply)
    return answer.personalized, int(answer.fallback_reason)


def balanced(targets: Sequence[str], health_service: str) -> tuple[str, list[tuple[str, Any]]]:
    """The target and channel options of a client that spreads calls over ``targets``
    (``host:port``, IPv4) with gRPC's ``round_robin`` policy, and stops picking a server
    as soon as its health (the ``grpc.health.v1`` Watch of ``health_service``) says it is
    not SERVING: client-side health checking, asked for by the service config's
    ``healthCheckConfig``."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": health_service},
    }
    return "ipv4:" + ",".join(targets), [("grpc.service_config", json.dumps(config))]


def served_calls(metrics_port: int) -> int | None:
    """The Recommend calls a ``recsvc serve`` (one process) has answered, whatever the
    outcome, by its /metrics on ``metrics_port``; None when that cannot be read."""
    samples = metric_samples(metrics_port, "recsvc_request_latency_seconds_count")
    return round(sum(samples.values())) if samples else None


@dataclass
class Calls:
    """Every call of a step, in the order scheduled.

    ``scheduled``: wall-clock time (``time.time()``) each was due; ``latency_ms``: from
    then until it answered or failed; ``status``: its gRPC status code's value (0: OK);
    ``replies``: ``inspect`` of each answer (None for a failed call, or without inspect).
    """

    scheduled: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    replies: list[Any]

    def __len__(self) -> int:
        return len(self.scheduled)

    @property
    def ok(self) -> np.ndarray:
        answered: np.ndarray = self.status == 0
        return answered

    @property
    def done(self) -> np.ndarray:
        """Wall-clock time each call answered or failed."""
        return self.scheduled + self.latency_ms / 1000

    def between(self, start: float, end: float) -> Calls:
        """The calls scheduled in [``start``, ``end``)."""
        keep = (self.scheduled >= start) & (self.scheduled < end)
        return self.select(keep)

    def select(self, keep: np.ndarray) -> Calls:
        replies = [r for r, k in zip(self.replies, keep, strict=True) if k]
        return Calls(self.scheduled[keep], self.latency_ms[keep], self.status[keep], replies)

    def errors(self) -> dict[str, int]:
        """Failed calls by status code name."""
        codes, counts = np.unique(self.status[~self.ok], return_counts=True)
        return {
            STATUS_NAMES.get(int(c), str(c)): int(n) for c, n in zip(codes, counts, strict=True)
        }

    def not_within(self, ms: float) -> int:
        """How many calls were not answered (status OK) within ``ms``."""
        return int(np.sum(~(self.ok & (self.latency_ms <= ms))))

    def share_within(self, ms: float) -> float | None:
        """The share of the calls answered (status OK) within ``ms``; None without calls."""
        if not len(self):
            return None
        return float(np.mean(self.ok & (self.latency_ms <= ms)))

    def percentile(self, q: float) -> float | None:
        """The ``q`` percentile of the answered calls' latency (ms); None without any."""
        answered = self.latency_ms[self.ok]
        return float(np.percentile(answered, q)) if len(answered) else None

    @staticmethod
    def joined(parts: Sequence[Calls]) -> Calls:
        """The calls of several parts, in the order scheduled."""
        scheduled = np.concatenate([p.scheduled for p in parts])
        order = np.argsort(scheduled, kind="stable")
        replies = [r for p in parts for r in p.replies]
        return Calls(
            scheduled[order],
            np.concatenate([p.latency_ms for p in parts])[order],
            np.concatenate([p.status for p in parts])[order],
            [replies[i] for i in order],
        )


class CallLoad:
    """``processes`` client processes sending ``requests`` to ``method`` at ``target`` over
    ``connections`` channels each (with ``options``; each its own connections).

    ``inspect`` (a picklable top-level function, e.g. :func:`reply_kind`) turns each
    answer's bytes into what :attr:`Calls.replies` holds. ``timeout_s`` is each call's
    deadline.
    """

    def __init__(
        self,
        target: str,
        requests: Sequence[bytes],
        *,
        method: str = METHOD,
        processes: int = 2,
        connections: int = 4,
        options: Sequence[tuple[str, Any]] = (),
        inspect: Callable[[bytes], Any] | None = reply_kind,
        timeout_s: float = 1.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._running = False
        channel_options = [("grpc.use_local_subchannel_pool", 1), *options]
        for n in range(processes):
            mine, theirs = context.Pipe()
            client = _Client(
                target, method, list(requests[n::processes]), channel_options, connections,
                inspect, timeout_s,
            )  # fmt: skip
            proc = context.Process(target=client.main, args=(theirs, self._stop), daemon=True)
            proc.start()
            theirs.close()  # the child's end: so that a child that dies is an EOFError here
            self._pipes.append(mine)
            self._procs.append(proc)
        for pipe in self._pipes:
            try:
                status = pipe.recv()
            except EOFError:
                status = "a client process died at start"
            if status != "ready":
                self.close()
                raise RuntimeError(f"load could not reach {target}: {status}")

    def start(self, rate: float, duration_s: float) -> float:
        """Start sending at ``rate`` per second for at most ``duration_s``; returns the
        wall-clock time of the first call. :meth:`finish` collects the calls."""
        if self._running:
            raise RuntimeError("a step is already running")
        self._stop.clear()
        start = time.time() + 0.2
        for n, pipe in enumerate(self._pipes):
            # The processes' calls interleave: process n sends calls n, n + P, n + 2P, ...
            pipe.send(("step", rate, duration_s, start, n, len(self._pipes)))
        self._running = True
        return start

    def finish(self, early: bool = False) -> Calls:
        """The calls of the running step, after it ended (``early``: end it now)."""
        if early:
            self._stop.set()
        parts = [pipe.recv() for pipe in self._pipes]
        self._running = False
        return Calls.joined(parts)

    def step(self, rate: float, duration_s: float) -> Calls:
        """Send at ``rate`` per second for ``duration_s``; the calls."""
        self.start(rate, duration_s)
        return self.finish()

    def close(self) -> None:
        self._stop.set()
        for pipe in self._pipes:
            with suppress(BrokenPipeError, OSError):
                pipe.send(("stop",))
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


@dataclass
class _Client:
    """What one client process runs: its channels and the steps it is sent."""

    target: str
    method: str
    requests: list[bytes]
    options: list[tuple[str, Any]]
    connections: int
    inspect: Callable[[bytes], Any] | None
    timeout_s: float

    def main(self, pipe: Connection, stop: EventType) -> None:
        asyncio.run(self._loop(pipe, stop))

    async def _loop(self, pipe: Connection, stop: EventType) -> None:
        loop = asyncio.get_running_loop()
        channels = [
            grpc.aio.insecure_channel(self.target, options=self.options)
            for _ in range(self.connections)
        ]
        try:
            calls: list[BytesMethod] = [channel.unary_unary(self.method) for channel in channels]
            try:
                for call in calls:  # connected and warm before the first step
                    for _ in range(3):
                        await call(self.requests[0], timeout=10.0)
            except grpc.RpcError as exc:
                pipe.send(f"{exc.code().name}: {exc.details()}")
                return
            pipe.send("ready")
            while True:
                message = await loop.run_in_executor(None, pipe.recv)
                if message[0] == "stop":
                    return
                _, rate, duration_s, start_wall, offset, every = message
                pipe.send(
                    await self._send(calls, stop, rate, duration_s, start_wall, offset, every)
                )
        finally:
            for channel in channels:
                await channel.close()

    async def _send(
        self,
        calls: list[BytesMethod],
        stop: EventType,
        rate: float,
        duration_s: float,
        start_wall: float,
        offset: int,
        every: int,
    ) -> Calls:
        loop = asyncio.get_running_loop()
        start = loop.time() + (start_wall - time.time())
        total = max(0, -(-(int(rate * duration_s) - offset) // every))  # n = offset mod every
        latency = np.full(total, np.nan)
        status = np.zeros(total, dtype=np.int16)
        replies: list[Any] = [None] * total

        async def one(i: int, due: float) -> None:
            try:
                reply = await calls[i % len(calls)](
                    self.requests[i % len(self.requests)], timeout=self.timeout_s
                )
            except grpc.RpcError as exc:
                known = isinstance(exc, grpc.aio.AioRpcError)
                status[i] = (exc.code() if known else grpc.StatusCode.UNKNOWN).value[0]
            else:
                if self.inspect is not None:
                    replies[i] = self.inspect(reply)
            latency[i] = (loop.time() - due) * 1000

        tasks = []
        for i in range(total):
            if stop.is_set():
                break
            due = start + (offset + i * every) / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        sent = len(tasks)
        scheduled = start_wall + (offset + np.arange(sent) * every) / rate
        return Calls(scheduled, latency[:sent], status[:sent], replies[:sent])
