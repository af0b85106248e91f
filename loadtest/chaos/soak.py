"""``soak``: the whole stack at half its capacity for 20 minutes, its memory sampled.

A Redis of the run's own, a real ``recsvc ingest`` and ``recsvc serve --workers 2`` run
together. Sessions for ``--soak-users`` shoppers and their co-visits are filled first, with
as many clicks as the soak will send (the state held is then about what the soak keeps, so a
leak is not hidden by growth). Then, for ``--soak-minutes``:

- an open-loop generator sends Recommend calls at ``--soak-rate`` per second. By default
  that is half the highest rate whose p99 stays under 20 ms with no error, found first on
  the same server by ``make capacity``'s search (``capacity_rps`` in the figures);
- a producer sends ``--soak-event-rate`` clicks per second of the same shoppers, which
  ingest applies while the server reads them.

Every ``--soak-sample-s`` it samples the server's resident memory (all its processes),
ingest's, Redis's ``used_memory`` and the consumer lag (events produced but not yet
committed), with the calls, errors and p99 of that interval. Memory is compared between the
first sample after ``--soak-warmup-s`` and the last one: ``server_rss_growth``,
``ingest_rss_growth`` and ``redis_memory_growth`` are relative changes. The run fails on
any failed call, on any growth above ``--soak-max-growth`` (0.10), or on a lag left 60 s
after the end.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
import uuid
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from loadtest.capacity import METHOD, RateSearch, Server, answer_kind, timed_step
from loadtest.chaos.common import Ingest, PrivateRedis, remove_from_kafka, serve, wait
from loadtest.ingest_bench import committed, end_offsets, free_port
from loadtest.openloop import LoadGenerator
from loadtest.processes import stop_process
from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.v1 import recommender_pb2 as pb

P99_TARGET_MS = 20.0
#: The memory figures whose growth is checked: figure name -> sample key.
GROWTHS = {
    "server_rss": "server_rss_mib",
    "ingest_rss": "ingest_rss_mib",
    "redis_memory": "redis_used_mib",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--soak-minutes", type=float, default=20.0, help="length of the soak")
    parser.add_argument(
        "--soak-rate",
        type=float,
        default=0.0,
        help="Recommend calls per second; 0: half of the capacity found first (the default)",
    )
    parser.add_argument("--soak-event-rate", type=float, default=100.0, help="clicks per second")
    parser.add_argument("--soak-users", type=int, default=2000, help="shoppers")
    parser.add_argument("--soak-k", type=int, default=30, help="items per Recommend")
    parser.add_argument("--soak-sample-s", type=float, default=30.0, help="sampling interval")
    parser.add_argument(
        "--soak-warmup-s",
        type=float,
        default=300.0,
        help="memory is compared from the first sample after this many seconds",
    )
    parser.add_argument(
        "--soak-max-growth", type=float, default=0.10, help="largest relative memory growth"
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if min(args.soak_minutes, args.soak_event_rate, args.soak_sample_s) <= 0:
        return "--soak-minutes, --soak-event-rate and --soak-sample-s must be positive"
    if args.soak_rate < 0 or args.soak_warmup_s < 0 or min(args.soak_users, args.soak_k) < 1:
        return "--soak-rate and --soak-warmup-s must be >= 0, --soak-users and --soak-k >= 1"
    if args.soak_warmup_s + 2 * args.soak_sample_s > 60 * args.soak_minutes:
        return "--soak-minutes must leave two samples after --soak-warmup-s"
    return None


class ClickStream:
    """Clicks of ``users`` on ``items`` at ``rate`` per second, in a thread of its own,
    until stopped or ``limit`` events have been sent."""

    def __init__(self, kafka: str, topic: str, users: list[str], items: list[str],
                 rate: float, limit: int, seed: int) -> None:  # fmt: skip
        self.producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=20)
        self.topic, self.users, self.items = topic, users, items
        self.rate, self.limit = rate, limit
        self.rng = np.random.default_rng(seed)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def send_now(self, count: int) -> None:
        """``count`` clicks as fast as the producer takes them (the fill before the soak)."""
        for _ in range(count):
            self._send()
        self.producer.flush(timeout=120)

    def start(self) -> None:
        self._thread.start()

    def _send(self) -> None:
        user = self.users[self.rng.integers(len(self.users))]
        item = self.items[self.rng.integers(len(self.items))]
        event = Event(f"{user}-{self.sent}", user, item, "click", time.time())
        self.producer.send(self.topic, key=user.encode(), value=event.to_json())
        self.sent += 1

    def _run(self) -> None:
        start, first = time.monotonic(), self.sent
        while not self._stop.is_set() and self.sent < self.limit:
            due = start + (self.sent - first) / self.rate
            if (wait_s := due - time.monotonic()) > 0:
                self._stop.wait(wait_s)
                continue
            self._send()

    def stop(self) -> None:
        """Stops sending and flushes what was sent; once only, later calls do nothing."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.producer.flush(timeout=60)
        self.producer.close(timeout=10)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, MiB."""
    total = 0
    with suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
    return total / 2**20


def capacity_rate(generator: LoadGenerator, server: Server) -> float:
    """The highest rate with p99 under 20 ms and no error, by ``make capacity``'s search."""
    search = RateSearch(start=400.0, growth=1.4, refine=3)
    while not search.done:
        search.record(timed_step(generator, server, search.rate, 5.0, P99_TARGET_MS))
    if search.best is None:
        raise SystemExit("chaos soak: no rate met p99 < 20 ms; give --soak-rate")
    return search.best.result.rate


def growth(samples: list[dict[str, Any]], key: str, warmup_s: float) -> float:
    """Relative change of ``key`` from the first sample after the warm-up to the last."""
    base = next(s[key] for s in samples if s["t_s"] >= warmup_s)
    return (samples[-1][key] - base) / base if base else 0.0


def drained(admin: KafkaAdminClient, group: str, produced: int, timeout_s: float) -> float | None:
    """Seconds until the group has committed ``produced`` events, None if not in time."""
    begin = time.monotonic()
    while committed(admin, group) < produced:
        if time.monotonic() - begin > timeout_s:
            return None
        time.sleep(0.2)
    return time.monotonic() - begin


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"chaos-soak-{uuid.uuid4().hex[:8]}"
    topic, group = f"recsvc.{tag}", f"recsvc-{tag}"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    service = PrivateRedis(free_port(), workdir / f"{tag}-redis")
    url = f"redis://127.0.0.1:{service.env['REDIS_PORT']}/0"
    users = [f"{tag}-u{n}" for n in range(args.soak_users)]
    items = popular_items(args.bundle, 1000)
    duration_s = 60.0 * args.soak_minutes
    events = int(args.soak_event_rate * duration_s)
    # Each step is undone, last first, even when one after it failed or a later undo raises.
    with ExitStack() as undo:
        admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20_000)
        undo.callback(remove_from_kafka, admin, [topic, f"{topic}.dlq"], group)
        admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}.dlq", 1, 1)])
        undo.callback(shutil.rmtree, service.directory, ignore_errors=True)
        undo.callback(service.run, "stop")
        service.run("start")
        client = undo.enter_context(redis.Redis.from_url(url))
        stream = ClickStream(args.kafka, topic, users, items, args.soak_event_rate,
                             2 * events, args.seed)  # fmt: skip
        undo.callback(stream.stop)
        stream.send_now(events)  # the state the soak keeps, before it starts
        ingest = Ingest(args, topic, group, workdir / f"{tag}-ingest.log", url).start()
        undo.callback(stop_process, ingest, 20)
        wait(lambda: committed(admin, group) >= events, args.timeout_s, "the fill applied")
        server, target = serve(args, url, workdir / f"{tag}-serve.log", "--watch-interval-s",
                               "0", workers=2)  # fmt: skip
        undo.callback(server.stop)
        rng = np.random.default_rng(args.seed + 1)
        requests = [
            pb.RecommendRequest(
                user_id=users[rng.integers(len(users))], item_id=items[rng.integers(len(items))],
                k=args.soak_k,
            ).SerializeToString()
            for _ in range(20_000)
        ]  # fmt: skip
        generator = LoadGenerator(target, METHOD, requests, 2, answer_kind, timeout_s=1.0)
        undo.callback(generator.close)
        capacity = None if args.soak_rate else capacity_rate(generator, server)
        rate = args.soak_rate or capacity / 2  # type: ignore[operator]
        stream.start()
        samples: list[dict[str, Any]] = []
        kinds: list[tuple[bool, bool]] = []
        began = time.monotonic()
        while time.monotonic() - began < duration_s - 1e-3:
            step = generator.step(rate, min(args.soak_sample_s, duration_s), warmup_s=0.0)
            kinds += [tuple(x) for x in step.inspected]
            produced = sum(end_offsets(args.kafka, topic).values())
            samples.append({
                "t_s": round(time.monotonic() - began, 1),
                "calls": step.requests,
                "errors": step.errors,
                "p99_ms": round(step.percentile(99), 2),
                "server_rss_mib": round(rss_mib(server.proc.pid), 1),
                "ingest_rss_mib": round(rss_mib(ingest.pid), 1),
                "redis_used_mib": round(client.info("memory")["used_memory"] / 2**20, 2),
                "lag": produced - committed(admin, group),
            })  # fmt: skip
        stream.stop()
        drain_s = drained(admin, group, sum(end_offsets(args.kafka, topic).values()), 60.0)
        return {
            "minutes": args.soak_minutes,
            "capacity_rps": round(capacity, 1) if capacity else None,
            "rate": round(rate, 1),
            "event_rate": args.soak_event_rate,
            "calls": sum(s["calls"] for s in samples),
            "errors": sum(s["errors"] for s in samples),
            "max_p99_ms": max(s["p99_ms"] for s in samples),
            "personalized_share": round(sum(k[0] for k in kinds) / max(len(kinds), 1), 3),
            "events": stream.sent,
            **{
                f"{name}_growth": round(growth(samples, key, args.soak_warmup_s), 4)
                for name, key in GROWTHS.items()
            },
            "max_growth": args.soak_max_growth,
            "max_lag": max(s["lag"] for s in samples),
            "lag_drained_s": None if drain_s is None else round(drain_s, 1),
            "samples": samples,
        }


def failures(figures: dict[str, Any]) -> list[str]:
    found = ["errors"] if figures["errors"] else []
    limit = figures["max_growth"]
    found += [
        f"{name}_growth above {limit:.0%}" for name in GROWTHS if figures[f"{name}_growth"] > limit
    ]
    if figures["lag_drained_s"] is None:
        found.append("consumer lag not drained within 60 s of the end")
    return found
