"""Server CPU per Recommend, with the server's pieces added one layer at a time.

Each layer runs as its own one-process gRPC server, built like ``recsvc serve`` builds its
server, and gets the same requests at the same fixed rate from :mod:`loadtest.openloop`.
CPU is the server process's user + system time over the measured seconds. All the servers
are up at once and are measured in turn, ``--rounds`` times; each layer's median is
reported, with its lowest and highest round, so a slow spell of a shared machine falls on
every layer alike. Each layer adds
one piece to the one before it, so the differences say what each piece costs inside a
running server: caches are cold there, so a piece costs more than it does in a loop
(:mod:`loadtest.hot_path`).

- ``empty``: an empty response;
- ``serialize``: one fixed, real ``k``-item response (gRPC serializes it and sends it);
- ``build``: that response built again from its ranking on every call;
- ``rank``: ``Ranker.rank`` on the request's item and the user's session (held in memory);
- ``handler``: the real ``Recommend``, with the sessions in an in-memory store (its read
  sorts and parses the session on every call, so it costs a little too);
- ``redis``: the real ``Recommend`` reading the sessions from Redis, as served; its step is
  the Redis read against the in-memory one.

    python -m loadtest.cost_layers --bundle .local/bundles/taobao --rate 300
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import grpc
import numpy as np

from loadtest.capacity import METHOD, Server, free_port, personalized, random_requests
from loadtest.latency import forget_sessions, seed_sessions
from loadtest.openloop import LoadGenerator, StepResult
from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.server import RecommendServer
from recsvc.sessions import InMemorySessionStore, RedisSessionStore
from recsvc.settings import Settings
from recsvc.v1 import recommender_pb2 as pb
from recsvc.variants import DEFAULT

LAYERS = ("empty", "serialize", "build", "rank", "handler", "redis")


async def serve_layer(args: argparse.Namespace) -> None:
    """Run the server of ``args.serve`` until SIGTERM (the child process of one layer)."""
    users = args.users_file.read_text().split()
    redis_store = RedisSessionStore(args.redis_url)
    sessions = {user: await redis_store.recent(user) for user in users}
    if args.serve == "redis":
        store = redis_store
    else:
        await redis_store.aclose()
        store = InMemorySessionStore()
        for user, events in sessions.items():
            await store.append([Event(e.event_id, user, e.item_id, e.type, e.ts) for e in events])
    settings = Settings(
        bundle=Path(args.bundle), port=args.port, metrics_port=0, watch_interval_s=0
    )
    server = RecommendServer(settings, store)
    service, ranker = server.service, server.bundles.ranker
    item, user = popular_items(args.bundle, 1)[0], users[0]
    ranking = ranker.rank(item, args.k, sessions[user])
    fixed = service._response(ranking, ranker.version, DEFAULT)

    async def empty(request: pb.RecommendRequest, context: object) -> pb.RecommendResponse:
        return pb.RecommendResponse()

    async def serialize(request: pb.RecommendRequest, context: object) -> pb.RecommendResponse:
        return fixed

    async def build(request: pb.RecommendRequest, context: object) -> pb.RecommendResponse:
        return service._response(ranking, ranker.version, DEFAULT)

    async def rank(request: pb.RecommendRequest, context: object) -> pb.RecommendResponse:
        scored = ranker.rank(request.item_id, request.k, sessions[request.user_id])
        return service._response(scored, ranker.version, DEFAULT)

    partial = {"empty": empty, "serialize": serialize, "build": build, "rank": rank}
    if args.serve in partial:
        service.Recommend = partial[args.serve]  # type: ignore[method-assign]
    await server.start()
    gc.collect()  # as recsvc.server.serve does after start-up
    gc.freeze()
    await server.wait()


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    items = popular_items(args.bundle, 1000)
    users = [f"cost-{uuid.uuid4().hex[:8]}-{n}" for n in range(args.users)]
    workdir = Path(args.workdir)
    users_file = workdir / "cost-layers-users.txt"
    asyncio.run(seed_sessions(args.redis_url, users, items, args.seed))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        users_file.write_text("\n".join(users))
        requests = random_requests(users, items, args.k, 5000, args.seed)
        with ExitStack() as stack:
            generators, servers = {}, {}
            for layer in args.layers:
                servers[layer], target = stack.enter_context(layer_server(args, layer, users_file))
                generators[layer] = LoadGenerator(
                    target, METHOD, requests, processes=1, inspect=personalized
                )
                stack.callback(generators[layer].close)
                generators[layer].step(args.rate, args.warmup_s, warmup_s=0)
            samples: dict[str, list[tuple[float, StepResult]]] = {name: [] for name in args.layers}
            for _ in range(args.rounds):
                for layer in args.layers:
                    before = servers[layer].cpu_seconds()
                    result = generators[layer].step(args.rate, args.seconds, warmup_s=0)
                    cpu = servers[layer].cpu_seconds() - before
                    samples[layer].append((cpu / max(result.requests, 1) * 1e6, result))
    finally:
        users_file.unlink(missing_ok=True)
        forget_sessions(args.redis_url, users)
    rows: list[dict[str, object]] = []
    previous = None
    for layer in args.layers:
        cpu_us = [c for c, _ in samples[layer]]
        results = [r for _, r in samples[layer]]
        inspected = [bool(x) for r in results for x in r.inspected]
        median = round(float(np.median(cpu_us)), 1)
        row: dict[str, object] = {
            "layer": layer,
            "requests": sum(r.requests for r in results),
            "errors": sum(r.errors for r in results),
            "p50_ms": round(float(np.median([r.percentile(50) for r in results])), 2),
            "personalized_share": round(sum(inspected) / max(len(inspected), 1), 3),
            "cpu_us_per_request": median,
            "cpu_us_min_max": [round(min(cpu_us), 1), round(max(cpu_us), 1)],
        }
        if previous is not None:
            row["added_us"] = round(median - previous, 1)
        previous = median
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


@contextmanager
def layer_server(
    args: argparse.Namespace, layer: str, users_file: Path
) -> Iterator[tuple[Server, str]]:
    """One layer's server process, up and SERVING, and its address; stopped on exit."""
    port = free_port()
    command = [
        sys.executable, "-m", "loadtest.cost_layers", "--serve", layer,
        "--port", str(port), "--bundle", args.bundle, "--redis-url", args.redis_url,
        "--users-file", str(users_file), "--k", str(args.k),
    ]  # fmt: skip
    target = f"127.0.0.1:{port}"
    server = Server(command, target, Path(args.workdir) / f"cost-layer-{layer}.log")
    try:
        yield server, target
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle to serve")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="where the run's sessions are written, read and deleted at the end",
    )
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per layer and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds over the layers (median reported)"
    )
    parser.add_argument(
        "--warmup-s", type=float, default=3.0, help="unmeasured seconds per layer before round 1"
    )
    parser.add_argument("--users", type=int, default=500, help="shoppers with 8-click sessions")
    parser.add_argument("--k", type=int, default=30, help="items per Recommend")
    parser.add_argument(
        "--layers", default=",".join(LAYERS), help=f"comma-separated, of {', '.join(LAYERS)}"
    )
    parser.add_argument(
        "--workdir", default=".local/capacity", help="logs of the servers, and a scratch file"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", choices=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--users-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with suppress(KeyboardInterrupt):
            asyncio.run(serve_layer(args))
        return
    asked = {layer.strip() for layer in args.layers.split(",") if layer.strip()}
    if not asked or asked - set(LAYERS):
        parser.error(f"--layers: give some of {', '.join(LAYERS)}, comma-separated")
    args.layers = [layer for layer in LAYERS if layer in asked]  # each builds on the last
    for flag in ("rate", "seconds", "rounds", "users", "k"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be positive")
    if args.warmup_s < 0:
        parser.error("--warmup-s must not be negative")
    if not Path(args.bundle).exists():
        parser.error(f"no bundle at {args.bundle} (make bundle builds one)")
    rows = measure(args)
    print(
        json.dumps(
            {
                "rate": args.rate,
                "k": args.k,
                "cpu_us_per_request": {r["layer"]: r["cpu_us_per_request"] for r in rows},
                "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": f"{platform.node()} cpus={os.cpu_count()}",
                "grpc": grpc.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
