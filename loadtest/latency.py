"""Latency of Recommend at a fixed request rate, for personalized sessions.

Seeds ``--users`` sessions of 8 clicks on popular items straight into Redis, then sends
requests open-loop at ``--rate`` per second for ``--duration`` seconds: each request is sent
at its scheduled time whether or not earlier ones have returned, so a slow server cannot
hide its queueing. Reports latency percentiles from the scheduled send time, and the
server's own view from its Prometheus histogram. The same schedule is then run against an
empty gRPC handler started here, the floor set by gRPC, Python and loopback on this
machine, and the report gives the ratio of the two.

    python -m loadtest.latency --bundle .local/bundles/taobao --rate 200 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import redis

from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.live import LiveSettings
from recsvc.sessions import KEY_PREFIX, RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


@dataclass
class Run:
    """Latencies (ms) of one fixed-rate run and how the calls ended."""

    latencies_ms: np.ndarray
    errors: int
    personalized: int
    seconds: float

    def summary(self) -> dict[str, float]:
        lat = self.latencies_ms
        return {
            "requests": int(len(lat) + self.errors),
            "achieved_rps": round((len(lat) + self.errors) / self.seconds, 1),
            "errors": self.errors,
            "personalized_share": round(self.personalized / max(len(lat), 1), 4),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 99)},
            "max_ms": round(float(lat.max()), 2),
        }


async def seed_sessions(
    redis_url: str,
    users: list[str],
    items: list[str],
    seed: int,
    live: LiveSettings | None = None,
) -> None:
    """8 clicks on random ``items`` for each user, appended as ingest appends them (with
    the co-visits too when ``live`` is given)."""
    rng = np.random.default_rng(seed)
    store = RedisSessionStore(redis_url, length=20, ttl_s=3600, live=live)
    now = time.time()
    try:
        for user in users:
            clicks = rng.choice(items, size=8)
            await store.append(
                [
                    Event(f"{user}-{n}", user, str(item), "click", now - 60 + n)
                    for n, item in enumerate(clicks)
                ]
            )
    finally:
        await store.aclose()


def forget_sessions(redis_url: str, users: list[str]) -> None:
    """Delete the run's sessions; if Redis is gone, say so (they expire within the hour)."""
    delete_keys(redis_url, [KEY_PREFIX + user for user in users], "sessions (they expire in 1 h)")


def delete_keys(redis_url: str, keys: list[str], what: str) -> None:
    """Delete ``keys`` in batches; if Redis is gone, say that the run's ``what`` stay."""
    client = redis.Redis.from_url(redis_url)
    try:
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    except redis.RedisError as exc:
        print(f"could not delete the run's {what}: {exc}", file=sys.stderr)
    finally:
        client.close()


async def fixed_rate(
    target: str, requests: list[pb.RecommendRequest], rate: float, timeout_s: float
) -> Run:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        await stub.Recommend(requests[0], timeout=5)  # connect before the clock starts
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        latencies, errors, personalized = [], 0, 0

        async def one(i: int, request: pb.RecommendRequest) -> None:
            nonlocal errors, personalized
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            try:
                reply = await stub.Recommend(request, timeout=timeout_s)
                personalized += reply.personalized
                latencies.append((loop.time() - scheduled) * 1000)
            except grpc.RpcError:
                errors += 1

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return Run(np.array(latencies), errors, personalized, loop.time() - start)


def server_side(metrics_url: str) -> dict[str, float]:
    """Count, sum and buckets of the server's own latency histogram, per outcome."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "recsvc_request_latency_seconds":
            continue
        for sample in family.samples:
            key = sample.name.rsplit("_", 1)[-1] + ":" + sample.labels.get("outcome", "")
            if "le" in sample.labels:
                key += ":" + sample.labels["le"]
            values[key] = sample.value
    return values


def server_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean in-server time and the share of calls under 10 ms and 100 ms, during the run."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    count = sum(v for k, v in delta.items() if k.startswith("count:"))
    total = sum(v for k, v in delta.items() if k.startswith("sum:"))
    under = {
        le: sum(v for k, v in delta.items() if k.startswith("bucket:") and k.endswith(":" + le))
        for le in ("0.01", "0.1")
    }
    return {
        "calls": int(count),
        "mean_ms": round(1000 * total / max(count, 1), 3),
        "share_under_10ms": round(under["0.01"] / max(count, 1), 4),
        "share_under_100ms": round(under["0.1"] / max(count, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the recsvc server")
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="the served bundle")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="its Redis")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    parser.add_argument("--users", type=int, default=1000, help="sessions to seed")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument(
        "--metrics-url", default="http://127.0.0.1:9464/metrics", help="the server's metrics"
    )
    parser.add_argument("--baseline-port", type=int, default=50061)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.users < 1:
        parser.error("--rate, --duration and --users must be positive")

    items = popular_items(args.bundle, 500)
    run_id = uuid.uuid4().hex[:8]
    users = [f"bench-{run_id}-{u}" for u in range(args.users)]
    asyncio.run(seed_sessions(args.redis_url, users, items, args.seed))
    rng = np.random.default_rng(args.seed + 1)
    n = int(args.rate * args.duration)
    requests = [
        pb.RecommendRequest(
            user_id=str(rng.choice(users)), item_id=str(rng.choice(items)), k=args.k
        )
        for _ in range(n)
    ]
    before = server_side(args.metrics_url)
    server = asyncio.run(fixed_rate(args.target, requests, args.rate, 1.0))
    inside = server_summary(before, server_side(args.metrics_url))
    empty = subprocess.Popen(
        [sys.executable, "-m", "loadtest.empty_server", "--port", str(args.baseline_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        empty.stdout.readline()  # ready
        floor = asyncio.run(fixed_rate(f"127.0.0.1:{args.baseline_port}", requests, args.rate, 1.0))
    finally:
        empty.terminate()
        empty.wait()
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} {platform.machine()} cpus={len(os.sched_getaffinity(0))}",
        "rate": args.rate,
        "duration_s": args.duration,
        "recsvc": server.summary(),
        "recsvc_inside_server": inside,
        "empty_handler": floor.summary(),
    }
    report["p50_ratio"] = round(report["recsvc"]["p50_ms"] / report["empty_handler"]["p50_ms"], 2)
    report["p99_ratio"] = round(report["recsvc"]["p99_ms"] / report["empty_handler"]["p99_ms"], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
