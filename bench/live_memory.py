"""Redis memory of the live co-visits after a day of events, written as ingest writes them.

    python -m bench.live_memory --bundle .local/bundles/taobao       # its held-out day
    python -m bench.live_memory --synthetic 1000000                   # a synthetic day

Plays the events in time order, in batches of 2,000 (ingest's default batch), through
:class:`recsvc.sessions.RedisSessionStore` with ``recsvc serve``'s live settings: the same
Lua script that ingest runs, without Kafka. The sessions and the co-visits land in a Redis
database of their own (``--redis-url``, by default db 12), which must be empty at the start
and is emptied at the end. Prints one JSON line: events per second, Redis ``used_memory``
before and after, the live items and neighbours held, and the bytes per live item; then the
same after the sessions are deleted, so that the co-visits' share is known.

The synthetic day is one day of :mod:`offline.data.synthetic` at the paper's shape per day:
12.5 events per user, 700,000 items per 25 million daily events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np
import redis

from offline.data.synthetic import (
    BEHAVIORS,
    SyntheticSpec,
    build_catalogue,
    chunk_bounds,
    generate_chunk,
    user_event_counts,
)
from offline.evaluation.replay import held_out_events
from recsvc.bundle import load_bundle
from recsvc.events import Event
from recsvc.exceptions import RecsvcError
from recsvc.live import NEIGHBOURS_PREFIX, LiveSettings
from recsvc.sessions import KEY_PREFIX, RedisSessionStore

BATCH = 2000
TYPES = {"pv": "click", "cart": "cart", "fav": "fav", "buy": "buy"}


def synthetic_day(events: int, seed: int) -> list[Event]:
    """One day of synthetic events in time order (see the module docstring)."""
    spec = SyntheticSpec(
        events=events,
        users=max(1, round(events / 12.5)),
        items=max(2, round(events * 700_000 / 25_000_000)),
        categories=max(1, round(events * 700_000 / 25_000_000 / 40)),
        days=1,
        seed=seed,
    )
    catalogue = build_catalogue(spec)
    counts = user_event_counts(spec)
    parts = []
    for index, (start, stop) in enumerate(chunk_bounds(counts, spec.chunk_events)):
        parts.append(generate_chunk(spec, catalogue, counts[start:stop], start, index))
    users = np.concatenate([p.users for p in parts])
    items = np.concatenate([p.items for p in parts])
    types = np.concatenate([p.types for p in parts])
    ts = np.concatenate([p.ts for p in parts])
    order = np.argsort(ts, kind="stable")
    return [
        Event(f"s{n}", f"u{users[n]}", f"i{items[n]}", TYPES[BEHAVIORS[types[n]]], float(ts[n]))
        for n in order.tolist()
    ]


def live_state(client: redis.Redis) -> tuple[int, int]:
    """(live items, neighbours held) in the database."""
    items = neighbours = 0
    keys = list(client.scan_iter(f"{NEIGHBOURS_PREFIX}*", count=10_000))
    for start in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 5000]:
            pipe.zcard(key)
        sizes = pipe.execute()
        items += len(sizes)
        neighbours += sum(sizes)
    return items, neighbours


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


async def play(url: str, events: Sequence[Event], live: LiveSettings) -> float:
    """Append ``events`` in batches; returns the seconds it took."""
    store = RedisSessionStore(url, length=20, ttl_s=86400, live=live)
    try:
        started = time.perf_counter()
        for start in range(0, len(events), BATCH):
            await store.append(events[start : start + BATCH])
        return time.perf_counter() - started
    finally:
        await store.aclose()


def measure(args: argparse.Namespace) -> dict[str, object]:
    if args.bundle:
        try:
            bundle = load_bundle(args.bundle)
        except RecsvcError as exc:
            raise SystemExit(f"--bundle: {exc}") from None
        if "eval/ts" not in bundle:
            raise SystemExit(f"--bundle: {bundle.path} has no held-out events with times")
        events = held_out_events(bundle, np.asarray(bundle["item_ids"]).astype(str).tolist())
        source = f"held-out day of {bundle.path}"
    else:
        events = synthetic_day(args.synthetic, args.seed)
        source = f"synthetic day of {args.synthetic} events"
    client = redis.Redis.from_url(args.redis_url)
    if client.dbsize():
        raise SystemExit(f"{args.redis_url} is not empty: give --redis-url an unused database")
    try:
        before = used_memory(client)
        seconds = asyncio.run(play(args.redis_url, events, LiveSettings()))
        after = used_memory(client)
        items, neighbours = live_state(client)
        sessions = list(client.scan_iter(f"{KEY_PREFIX}*", count=10_000))
        for start in range(0, len(sessions), 5000):
            client.delete(*sessions[start : start + 5000])
        live_only = used_memory(client)
        return {
            "source": source,
            "events": len(events),
            "events_per_s": round(len(events) / seconds),
            "used_memory_mib_before": round(before / 2**20, 1),
            "used_memory_mib_after": round(after / 2**20, 1),
            "sessions": len(sessions),
            "live_items": items,
            "live_neighbours": neighbours,
            "live_only_mib": round((live_only - before) / 2**20, 1),
            "bytes_per_live_item": round((live_only - before) / max(items, 1)),
            "machine": f"{platform.node()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}",
        }
    finally:
        client.flushdb()
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="play this bundle's held-out events (eval/*)")
    source.add_argument("--synthetic", type=int, help="play a synthetic day of this many events")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="an empty db")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic day")
    args = parser.parse_args(argv)
    if args.synthetic is not None and args.synthetic < 1:
        parser.error("--synthetic must be at least 1")
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
