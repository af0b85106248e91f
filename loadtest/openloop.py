"""An open-loop gRPC load generator in several client processes.

Each request is sent at its scheduled time whether or not earlier ones have returned, and
its latency counts from that scheduled time, so a server that falls behind shows its
queueing instead of slowing the generator down (no coordinated omission). Requests are
pre-serialized bytes sent through a raw ``unary_unary`` method, so the client does no
protobuf work per call; only a sample of replies is parsed, to report what they said.

The processes stay up between steps (connected channels, requests already loaded), so a
rate search pays the start-up once. Each process spreads its calls over several TCP
connections, as many shoppers' browsers would reach a frontend fleet.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np

#: Every this many replies, one is handed to the ``inspect`` function.
SAMPLE_EVERY = 50


@dataclass
class StepResult:
    """One fixed-rate step, over every client process."""

    rate: float
    latencies_ms: np.ndarray
    errors: int
    inspected: list[Any]
    seconds: float

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.errors

    def percentile(self, q: float) -> float:
        if not len(self.latencies_ms):
            return math.inf
        return float(np.percentile(self.latencies_ms, q))


class LoadGenerator:
    """``processes`` client processes sending ``requests`` (bytes) to ``method`` at ``target``.

    ``inspect`` (a picklable top-level function) turns a sampled reply's bytes into
    something small to report, e.g. whether it was personalized.
    """

    def __init__(
        self,
        target: str,
        method: str,
        requests: Sequence[bytes],
        processes: int = 2,
        inspect: Callable[[bytes], Any] | None = None,
        timeout_s: float = 1.0,
        connections: int = 8,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs = []
        for n in range(processes):
            mine, theirs = context.Pipe()
            share = list(requests[n::processes])
            proc = context.Process(
                target=_client_main,
                args=(theirs, target, method, share, inspect, timeout_s, connections),
                daemon=True,
            )
            proc.start()
            self._pipes.append(mine)
            self._procs.append(proc)
        for pipe in self._pipes:
            status = pipe.recv()
            if status != "ready":
                self.close()
                raise RuntimeError(f"load generator could not connect to {target}: {status}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def step(self, rate: float, duration_s: float, warmup_s: float = 1.0) -> StepResult:
        """Send at ``rate`` per second for ``warmup_s + duration_s``; report after warm-up."""
        start = time.time() + 0.2
        share = rate / len(self._pipes)
        for pipe in self._pipes:
            pipe.send(("step", share, duration_s, warmup_s, start))
        parts = [pipe.recv() for pipe in self._pipes]
        return StepResult(
            rate=rate,
            latencies_ms=np.concatenate([p["latencies_ms"] for p in parts]),
            errors=sum(p["errors"] for p in parts),
            inspected=[x for p in parts for x in p["inspected"]],
            seconds=duration_s,
        )

    def close(self) -> None:
        for pipe in self._pipes:
            with suppress(BrokenPipeError, OSError):
                pipe.send(("stop",))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def _client_main(
    pipe: Connection,
    target: str,
    method: str,
    requests: list[bytes],
    inspect: Callable[[bytes], Any] | None,
    timeout_s: float,
    connections: int,
) -> None:
    asyncio.run(_client_loop(pipe, target, method, requests, inspect, timeout_s, connections))


async def _client_loop(
    pipe: Connection,
    target: str,
    method: str,
    requests: list[bytes],
    inspect: Callable[[bytes], Any] | None,
    timeout_s: float,
    connections: int,
) -> None:
    loop = asyncio.get_running_loop()
    # Separate TCP connections (not one shared subchannel), so that a server of several
    # processes sharing the port gets its load spread by the kernel, as from many clients.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    try:
        calls = [channel.unary_unary(method) for channel in channels]  # bytes in, bytes out
        try:
            for call in calls:
                await call(requests[0], timeout=5.0)
        except grpc.RpcError as exc:
            pipe.send(f"{exc.code().name}: {exc.details()}")
            return
        pipe.send("ready")
        while True:
            message = await loop.run_in_executor(None, pipe.recv)
            if message[0] == "stop":
                return
            _, rate, duration_s, warmup_s, start_wall = message
            result = await _send_at_rate(
                calls, requests, rate, duration_s, warmup_s, start_wall, inspect, timeout_s
            )
            pipe.send(result)
    finally:
        for channel in channels:
            await channel.close()


async def _send_at_rate(
    calls: list[grpc.aio.UnaryUnaryMultiCallable],
    requests: list[bytes],
    rate: float,
    duration_s: float,
    warmup_s: float,
    start_wall: float,
    inspect: Callable[[bytes], Any] | None,
    timeout_s: float,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time() + (start_wall - time.time())
    total = int(rate * (warmup_s + duration_s))
    skip = int(rate * warmup_s)
    latencies = np.full(total, np.nan)
    failed = np.zeros(total, dtype=bool)
    inspected: list[Any] = []

    async def one(i: int, scheduled: float) -> None:
        try:
            call = calls[i % len(calls)]
            reply = await call(requests[i % len(requests)], timeout=timeout_s)
        except grpc.RpcError:
            failed[i] = True
            return
        latencies[i] = (loop.time() - scheduled) * 1000
        if inspect is not None and i >= skip and i % SAMPLE_EVERY == 0:
            inspected.append(inspect(reply))

    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    measured = latencies[skip:]
    return {
        "latencies_ms": measured[~np.isnan(measured)].astype(np.float32),
        "errors": int(failed[skip:].sum()),
        "inspected": inspected,
    }
