"""What the HTTP gateway adds to a Recommend call, measured against direct gRPC.

Against a running server and gateway (``make run`` starts both): seeds ``--users``
sessions of 8 clicks on popular items straight into Redis, then sends the same requests
one at a time, in alternating rounds, over gRPC to the server and over HTTP (one keep-alive
connection) to the gateway. Each pair of answers must list the same items, since the
gateway is only a client of the server. Prints the latency percentiles of both paths,
measured at the client, and what the gateway adds at p50 and p99.

    python -m loadtest.gateway_latency --bundle .local/bundles/taobao --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import time
import uuid
from urllib.parse import urlencode

import grpc
import numpy as np

from loadtest.latency import seed_sessions
from recsvc.client import popular_items
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms)
    return {
        "calls": len(values),
        **{f"p{q}_ms": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)},
        "mean_ms": round(float(values.mean()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gRPC server")
    parser.add_argument("--gateway", default="127.0.0.1:8080", help="the gateway, host:port")
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="the served bundle")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="its Redis")
    parser.add_argument("--requests", type=int, default=2000, help="calls per path")
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the paths")
    parser.add_argument("--users", type=int, default=500, help="sessions to seed")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.requests < args.rounds or args.rounds < 1 or args.users < 1 or args.k < 1:
        parser.error("--requests >= --rounds >= 1, --users >= 1 and --k >= 1")

    items = popular_items(args.bundle, 500)
    users = [f"gateway-bench-{uuid.uuid4().hex[:8]}-{u}" for u in range(args.users)]
    asyncio.run(seed_sessions(args.redis_url, users, items, args.seed))
    rng = np.random.default_rng(args.seed + 1)
    asks = [(str(rng.choice(users)), str(rng.choice(items))) for _ in range(args.requests)]

    host, _, port = args.gateway.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    direct_ms: list[float] = []
    gateway_ms: list[float] = []
    mismatches = 0
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        warm = urlencode({"user_id": users[0], "item_id": items[0], "k": args.k})
        for _ in range(3):  # warm both paths' connections
            stub.Recommend(pb.RecommendRequest(user_id=users[0], item_id=items[0], k=args.k))
            connection.request("GET", f"/v1/recommend?{warm}")
            connection.getresponse().read()
        for block in np.array_split(np.arange(len(asks)), args.rounds):
            direct: dict[int, list[str]] = {}
            for i in block:
                user, item = asks[i]
                started = time.perf_counter()
                reply = stub.Recommend(
                    pb.RecommendRequest(user_id=user, item_id=item, k=args.k), timeout=5
                )
                direct_ms.append((time.perf_counter() - started) * 1000)
                direct[i] = [ranked.item_id for ranked in reply.items]
            for i in block:
                user, item = asks[i]
                query = urlencode({"user_id": user, "item_id": item, "k": args.k})
                started = time.perf_counter()
                connection.request("GET", f"/v1/recommend?{query}")
                response = connection.getresponse()
                body = response.read()
                gateway_ms.append((time.perf_counter() - started) * 1000)
                if response.status != 200:
                    raise SystemExit(f"gateway: HTTP {response.status}: {body[:200]!r}")
                answer = [ranked["item_id"] for ranked in json.loads(body)["items"]]
                mismatches += answer != direct[i]
    connection.close()
    grpc_figures, http_figures = percentiles(direct_ms), percentiles(gateway_ms)
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} {platform.machine()} cpus={len(os.sched_getaffinity(0))}",
        "k": args.k,
        "grpc_direct": grpc_figures,
        "http_gateway": http_figures,
        "added_p50_ms": round(http_figures["p50_ms"] - grpc_figures["p50_ms"], 3),
        "added_p99_ms": round(http_figures["p99_ms"] - grpc_figures["p99_ms"], 3),
        "answers_differing": mismatches,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
