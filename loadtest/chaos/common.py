"""What the chaos scenarios share: the shoppers' events, the producer, the ``recsvc ingest``
process, and the check of what Redis holds against applying each event once."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from loadtest.capacity import Server
from loadtest.ingest_bench import REPO, free_port
from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX, LiveSettings
from recsvc.sessions import KEY_PREFIX, InMemorySessionStore

SESSION_LENGTH = 20


def empty_database(url: str) -> redis.Redis:
    """A client of the database at ``url``, which must be empty: the run flushes it at the
    end."""
    client = redis.Redis.from_url(url)
    if client.dbsize():
        raise SystemExit(f"chaos: {url} is not empty; give a database of its own")
    return client


def remove_from_kafka(admin: KafkaAdminClient, topics: list[str], group: str) -> None:
    """Delete a run's topics and its consumer group, and close ``admin``; what cannot be
    deleted is only reported (it does not stop the next scenario)."""
    try:
        admin.delete_topics(topics)  # raises what it could not delete
    except KafkaError as exc:
        print(f"chaos: could not delete the topics {topics}: {exc!r}", file=sys.stderr)
    try:
        refused = {
            g: e for g, e in admin.delete_groups([group]).items() if e not in (None, "OK")
        }  # says, not raises
    except KafkaError as exc:
        refused = {group: repr(exc)}
    finally:
        admin.close()
    if refused:
        print(f"chaos: could not delete the consumer group: {refused}", file=sys.stderr)


class Run(NamedTuple):
    """One scenario run's names and events: a topic, a group and shoppers of its own."""

    tag: str
    topic: str
    group: str
    users: list[str]
    events: list[Event]


def new_run(args: argparse.Namespace, users: int | None = None) -> Run:
    """A run of ``args.events`` events of ``users`` shoppers (default ``args.users``, at
    most one per event) on the bundle's ``args.items`` most popular items."""
    tag = f"chaos-{uuid.uuid4().hex[:8]}"
    count = min(args.users, args.events) if users is None else users
    items = popular_items(args.bundle, args.items)
    events = shopper_events(tag, count, args.events, items, args.seed)
    return Run(tag, f"recsvc.{tag}", f"recsvc-{tag}", [f"{tag}-u{n}" for n in range(count)],
               events)  # fmt: skip


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
        with self.log.open("ab") as out:
            return subprocess.Popen(
                command, env=without_recsvc_settings(), stdout=out, stderr=subprocess.STDOUT
            )


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
    until its health says SERVING, and its address. It logs JSON lines and ignores the
    ``RECSVC_*`` environment; ``extra`` adds flags. The caller stops it (``Server.stop``:
    SIGTERM, then SIGKILL after 15 s)."""
    port = free_port()
    command = [
        sys.executable, "-m", "recsvc.cli", "serve", "--bundle", args.bundle,
        "--redis-url", redis_url, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--metrics-port", "0", "--log-level", "warning",
        "--log-format", "json", *extra,
    ]  # fmt: skip
    target = f"127.0.0.1:{port}"
    return Server(command, target, log, env=without_recsvc_settings()), target


def without_recsvc_settings() -> dict[str, str]:
    """This environment without the ``RECSVC_*`` settings, so that the processes a scenario
    starts run with its flags and the defaults only."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}


class PrivateKafka:
    """A Kafka broker of the scenario's own, started and stopped with
    scripts/services/kafka.sh (its data kept across a stop and start); ``topics`` are
    created at each start as kafka.sh's RECSVC_TOPICS, ``"name:partitions ..."``."""

    def __init__(self, directory: Path, topics: str) -> None:
        self.directory = directory
        self.bootstrap = f"127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": self.bootstrap.rsplit(":", 1)[1],
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DIR": str(directory),
            "RECSVC_TOPICS": topics,
        }

    def run(self, action: str) -> float:
        """``kafka.sh start`` (returns once the broker serves) or ``stop``; its seconds."""
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(REPO / "scripts/services/kafka.sh"), action],
            env=self.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"chaos: kafka.sh {action} failed: {done.stderr.strip()[-2000:]}")
        return time.monotonic() - started


def metric_samples(port: int, name: str) -> dict[str, float]:
    """The samples of the counter or gauge ``name`` on the /metrics of a process on
    ``port``, by the values of their labels (comma-joined in order; '' for none); empty
    when it is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    label_value = re.compile(r'\w+="([^"]*)"')
    return {
        ",".join(label_value.findall(labels)): float(value)
        for labels, value in pattern.findall(text)
    }
