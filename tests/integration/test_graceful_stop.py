"""SIGTERM under load: health says NOT_SERVING, the server answers until the calls stop
coming (those in flight, those queued, those sent late), then it exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import redis
from conftest import PrivateRedis, Process, free_port, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

PAUSE_S = 2.0  # Redis holds every session read: the calls stay in flight (about 1 s, the
IN_FLIGHT = 20  # server's Redis timeout, after which they answer from the pool)
BACKLOG = 200  # calls sent to a stopped (SIGSTOP) server


async def answered_at(call: asyncio.Future[pb.RecommendResponse]) -> tuple[object, float]:
    """The call's answer (or error) and when it came."""
    try:
        answer: object = await call
    except grpc.aio.AioRpcError as exc:
        answer = exc
    return answer, time.monotonic()


def sent(stub: pb_grpc.RecommenderStub, n: int) -> list[asyncio.Future[tuple[object, float]]]:
    """``n`` Recommend calls sent now, each resolving to its answer and when it came."""
    return [
        asyncio.ensure_future(
            answered_at(
                stub.Recommend(pb.RecommendRequest(user_id=f"u{i}", item_id="a"), timeout=20)
            )
        )
        for i in range(n)
    ]


def serving(
    processes: Callable[..., Process],
    bundle: Path,
    store: PrivateRedis,
    port: int,
    tmp_path: Path,
    *flags: str,
) -> Process:
    """A ``recsvc serve`` with an 8 s grace, up and serving."""
    server = processes(
        [
            "serve", "--bundle", str(bundle), "--redis-url", store.url, "--port", str(port),
            "--metrics-port", "0", "--watch-interval-s", "0", "--shutdown-grace-s", "8",
            *flags,
        ],
        tmp_path / "serve.log",
    )  # fmt: skip
    wait_for(lambda: "serving" in server.output(), what="the server")
    return server


def test_sigterm_drains_the_calls_in_flight(
    tiny_bundle: Path, private_redis: PrivateRedis, processes, tmp_path: Path
) -> None:
    port = free_port()
    server = serving(processes, tiny_bundle, private_redis, port, tmp_path, "--budget-ms", "10000")
    admin = redis.Redis.from_url(private_redis.url)

    async def scenario() -> tuple[list[object], list[int], grpc.StatusCode, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            await stub.Recommend(pb.RecommendRequest(user_id="warm", item_id="a"), timeout=5)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            statuses = [(await watch.read()).status]
            admin.client_pause(int(PAUSE_S * 1000))
            calls = sent(stub, IN_FLIGHT)
            await asyncio.sleep(0.5)  # every call is now waiting on Redis
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            statuses.append((await asyncio.wait_for(watch.read(), 5)).status)
            try:
                await stub.Recommend(pb.RecommendRequest(user_id="late", item_id="a"), timeout=5)
                late = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                late = exc.code()
            answers = await asyncio.gather(*calls)
            return answers, statuses, late, signalled

    answers, statuses, late, signalled = asyncio.run(scenario())
    admin.close()
    assert statuses == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    # Sent after NOT_SERVING but while calls were still running: answered, not refused.
    assert late == grpc.StatusCode.OK
    # Every call in flight at the signal was answered after it, not cut off.
    failed = [a for a, _ in answers if not isinstance(a, pb.RecommendResponse)]
    assert not failed, failed[:3]
    assert all(at > signalled for _, at in answers)
    assert all(a.items for a, _ in answers)  # type: ignore[attr-defined]
    assert server.proc.wait(timeout=15) == 0
    assert time.monotonic() - signalled < 8 + 5  # within the grace, not at its end
    assert "stopped" in server.output()


def test_sigterm_to_a_server_behind_on_its_calls_fails_none_of_them(
    tiny_bundle: Path, private_redis: PrivateRedis, processes, tmp_path: Path
) -> None:
    """Calls the transport has taken but the server has not started yet (a server behind on
    its work) are answered too, not cancelled by the stop."""
    port = free_port()
    server = serving(processes, tiny_bundle, private_redis, port, tmp_path)

    async def scenario() -> list[object]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            await stub.Recommend(pb.RecommendRequest(user_id="warm", item_id="a"), timeout=5)
            server.signal(signal.SIGSTOP)  # it takes no call from here: they queue up
            try:
                calls = sent(stub, BACKLOG)
                await asyncio.sleep(0.5)  # every call sent
                server.signal(signal.SIGTERM)  # delivered with the backlog, on SIGCONT
            finally:
                server.signal(signal.SIGCONT)
            return [answer for answer, _ in await asyncio.gather(*calls)]

    answers = asyncio.run(scenario())
    failed = [a for a in answers if not isinstance(a, pb.RecommendResponse)]
    assert not failed, failed[:3]
    assert server.proc.wait(timeout=15) == 0
