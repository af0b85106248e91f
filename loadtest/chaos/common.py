"""What the chaos scenarios share: the shoppers' events, the producer, the ``recsvc ingest``
process, and the check of what Redis holds against applying each event once."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis
from kafka import KafkaProducer

from loadtest.capacity import Server
from loadtest.ingest_bench import REPO, free_port
from recsvc.events import Event
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX, LiveSettings
from recsvc.sessions import KEY_PREFIX, InMemorySessionStore

SESSION_LENGTH = 20


def shopper_events(run: str, users: int, events: int, items: list[str], seed: int) -> list[Event]:
    """Clicks and carts of ``users`` shoppers, a second apart, each user's in time order."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(items), events)
    kinds = ("click", "click", "click", "cart")
    start = time.time() - events - 60.0  # in the past: no co-visit is refused as future
    return [
        Event(f"{run}-{n}", f"{run}-u{n % users}", items[picks[n]], kinds[n % 4], start + n)
        for n in range(events)
    ]


def produce(kafka: str, topic: str, events: list[Event]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=50, batch_size=1 << 20)
    try:
        for event in events:
            producer.send(topic, key=event.user_id.encode(), value=event.to_json())
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)


def stored(client: redis.Redis, users: list[str]) -> dict[str, set[str]]:
    """Each user's session members' event ids."""
    found: dict[str, set[str]] = {}
    for start in range(0, len(users), 2000):
        chunk = users[start : start + 2000]
        pipe = client.pipeline(transaction=False)
        for user in chunk:
            pipe.zrange(KEY_PREFIX + user, 0, -1)
        for user, members in zip(chunk, pipe.execute(), strict=True):
            found[user] = {json.loads(m)[0] for m in members}
    return found


def live_counts(client: redis.Redis, half_life_s: float, at: float) -> dict[str, dict[str, float]]:
    """Every item's co-visit counts, brought to the time ``at`` (bases differ run to run)."""
    counts: dict[str, dict[str, float]] = {}
    for key in client.scan_iter(f"{NEIGHBOURS_PREFIX}*", count=2000):
        item = key.decode()[len(NEIGHBOURS_PREFIX) :]
        base = float(client.get(BASE_PREFIX + item) or 0.0)
        factor = 2.0 ** ((base - at) / half_life_s)
        pairs = client.zrange(key, 0, -1, withscores=True)
        counts[item] = {member.decode(): score * factor for member, score in pairs}
    return counts


def twin_counts(events: list[Event], at: float) -> tuple[dict[str, dict[str, float]], int]:
    """The same, from the in-memory twin of the store applying each event once, and how
    many neighbours its cap evicted."""
    twin = InMemorySessionStore(length=SESSION_LENGTH, live=LiveSettings())
    twin.append_now(events)
    assert twin.covisits is not None
    return twin.covisits.counts_at(at), twin.covisits.evictions


def verify(client: redis.Redis, users: list[str], events: list[Event]) -> dict[str, Any]:
    """What Redis holds against what applying each event once gives: ``lost`` and
    ``extra`` session members, and ``double_counted`` items (co-visit counts that differ
    from the in-memory twin's; None when the cap evicted neighbours, see the docstring)."""
    sessions = stored(client, users)
    by_user: dict[str, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    want = {u: {e.event_id for e in evs[-SESSION_LENGTH:]} for u, evs in by_user.items()}
    at = time.time()
    got = live_counts(client, LiveSettings().half_life_s, at)
    twin, evicted = twin_counts(events, at)
    # Which neighbours an item's cap keeps depends on the order the partitions' events came
    # in, so the counts are compared exactly only when the cap evicted none.
    double = (
        sum(
            1
            for item in set(got) | set(twin)
            if got.get(item, {}).keys() != twin.get(item, {}).keys()
            or any(not math.isclose(got[item][n], twin[item][n], rel_tol=1e-9) for n in twin[item])
        )
        if not evicted
        else None
    )
    return {
        "lost": sum(len(want[u] - sessions.get(u, set())) for u in want),
        "extra": sum(len(sessions.get(u, set()) - want[u]) for u in want),
        "double_counted": double,
        "live_items": len(twin),
        "evictions": evicted,
    }


class Ingest:
    """One ``recsvc ingest`` process of the scenario."""

    def __init__(
        self, args: argparse.Namespace, topic: str, group: str, log: Path, redis_url: str
    ) -> None:
        self.args, self.topic, self.group, self.log = args, topic, group, log
        self.redis_url = redis_url

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "recsvc.cli", "ingest", "--bundle", self.args.bundle,
            "--kafka-bootstrap", self.args.kafka, "--events-topic", self.topic,
            "--dlq-topic", f"{self.topic}.dlq", "--group-id", self.group,
            "--group-instance-id", f"{self.group}-0", "--redis-url", self.redis_url,
            "--metrics-port", "0", "--session-length", str(SESSION_LENGTH),
            "--watch-interval-s", "0", "--log-level", "warning", *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
        with self.log.open("ab") as out:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``check()``; SystemExit after ``timeout_s``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"chaos: {what} did not happen within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


class PrivateRedis:
    """A Redis of the scenario's own, started and stopped with scripts/services/redis.sh."""

    def __init__(self, port: int, directory: Path) -> None:
        self.directory = directory
        self.env = {**os.environ, "REDIS_PORT": str(port), "REDIS_DIR": str(directory)}

    def run(self, action: str) -> None:
        subprocess.run(
            ["bash", str(REPO / "scripts/services/redis.sh"), action],
            env=self.env, check=True, capture_output=True,
        )  # fmt: skip


def counting_failures(figures: dict[str, Any]) -> list[str]:
    """The counts of ``verify`` that say events were lost, added or double-counted; an
    uncomparable count (``double_counted`` None, the cap evicted) fails too."""
    found = [k for k in ("lost", "extra", "double_counted") if figures.get(k)]
    if "double_counted" in figures and figures["double_counted"] is None:
        found.append("double_counted (uncomparable: the cap evicted neighbours)")
    return found


def serve(
    args: argparse.Namespace, redis_url: str, log: Path, *extra: str, workers: int = 1
) -> tuple[Server, str]:
    """A ``recsvc serve`` of ``args.bundle`` on a free loopback port, started and waited for
    until its health says SERVING, and its address. ``extra`` adds flags; the caller stops
    it (``Server.stop``: SIGTERM, then SIGKILL after 15 s)."""
    port = free_port()
    command = [
        sys.executable, "-m", "recsvc.cli", "serve", "--bundle", args.bundle,
        "--redis-url", redis_url, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--metrics-port", "0", "--log-level", "warning", *extra,
    ]  # fmt: skip
    target = f"127.0.0.1:{port}"
    return Server(command, target, log), target
