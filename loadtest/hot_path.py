"""CPU per call of the pieces of a Recommend, one at a time (``time.process_time``).

- the session read with redis-py (a pool checkout per call) and with the server's
  :class:`~recsvc.multiplexed_redis.MultiplexedRedis`, one call at a time and 50 at once;
- ``Ranker.rank`` with warm caches, and with 16 MB touched between calls, as gRPC and
  asyncio do between two requests of a running server;
- building the response message.

    python -m loadtest.hot_path --bundle .local/bundles/taobao
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import numpy as np
import redis.asyncio as redis_asyncio

from loadtest.latency import seed_sessions
from recsvc.bundle import load_bundle
from recsvc.client import popular_items
from recsvc.multiplexed_redis import MultiplexedRedis
from recsvc.ranking import Ranker
from recsvc.server import RecommenderService
from recsvc.sessions import KEY_PREFIX, RedisSessionStore
from recsvc.variants import DEFAULT


async def per_call_us(call: Callable[[int], Awaitable[object]], n: int, together: int) -> float:
    start = time.process_time()
    for first in range(0, n, together):
        await asyncio.gather(*(call(i) for i in range(first, first + together)))
    return round((time.process_time() - start) / n * 1e6, 1)


async def measure(args: argparse.Namespace) -> dict[str, float]:
    items = popular_items(args.bundle, 1000)
    users = [f"hot-path-{n}" for n in range(500)]
    await seed_sessions(args.redis_url, users, items, 0)
    keys = [KEY_PREFIX + u for u in users]
    pooled = redis_asyncio.Redis.from_url(args.redis_url)
    shared = MultiplexedRedis(args.redis_url)
    store = RedisSessionStore(args.redis_url)
    report: dict[str, float] = {}
    try:
        for together in (1, 50):
            report[f"read_redis_py_x{together}_us"] = await per_call_us(
                lambda i: pooled.zrange(keys[i % 500], -20, -1, withscores=True), args.n, together
            )
            report[f"read_multiplexed_x{together}_us"] = await per_call_us(
                lambda i: shared.execute("ZRANGE", keys[i % 500], -20, -1, "WITHSCORES"),
                args.n,
                together,
            )
        sessions = [await store.recent(u) for u in users]
    finally:
        await pooled.delete(*keys)
        await pooled.aclose()
        await shared.aclose()
        await store.aclose()

    ranker = Ranker(load_bundle(args.bundle))
    rng = np.random.default_rng(0)
    calls = [(str(rng.choice(items)), sessions[rng.integers(500)]) for _ in range(args.n)]
    junk = np.ones(4_000_000, dtype=np.float32)  # 16 MB
    for label, thrash in (("warm", False), ("cold", True)):
        total = 0.0
        for item, session in calls:
            if thrash:
                junk += 1.0
            start = time.process_time()
            ranking = ranker.rank(item, 30, session)
            total += time.process_time() - start
        report[f"rank_{label}_us"] = round(total / args.n * 1e6, 1)
    start = time.process_time()
    for _ in range(args.n):
        RecommenderService._response(ranking, ranker.version, DEFAULT)
    report["response_us"] = round((time.process_time() - start) / args.n * 1e6, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle to rank with")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=3000, help="calls per figure")
    args = parser.parse_args()
    if args.n < 50:
        parser.error("--n must be at least 50")
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
