"""Ingest throughput: events per second from Kafka into the Redis sessions, on one core.

Creates a fresh events topic and DLQ topic, produces ``--events`` events (item ids from the
bundle, users spread over ``--users`` ids, a ``--dlq-share`` of them invalid) and only
then starts the real ``recsvc ingest`` pinned to one core (``taskset -c --cpu``), so the
figures measure consumption, not production. It watches the ingest counters on the metrics
port every 0.1 s and the group's lag (end offsets minus committed offsets) every 0.5 s,
until every event is applied or dead-lettered. Then it checks Redis (the sum of ZCARD over
the users' keys equals the valid events: sessions are made long enough that none is
trimmed) and the DLQ topic, and deletes the topics, the group and the keys. With ``--live 1``
(ingest's default) each append also counts the live co-visits (:mod:`recsvc.live`), and the
JSON says how many; an event of an item the bundle does not know is then valid, so that
kind of invalid message is not sent.

    python -m loadtest.ingest_bench --events 200000 --users 20000 --partitions 3

Prints one JSON line of figures, then one JSON line with the lag series ``[[s, lag], ...]``
(seconds since ingest was started). ``events_per_s`` counts from the first sample that saw an
event handled to the one that saw the last, so the start-up (bundle load, group join:
``startup_s``) is left out; ``ingest_cpu_us_per_event`` is the ingest process's CPU over the
same window, and ``ingest_runqueue_wait_s_window`` how long its threads waited for a core (a
busy machine lowers events/s, not CPU per event). ``all_accounted_for`` is true when Redis
holds every valid event, and the DLQ every invalid one; the exit status is 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from tqdm import tqdm

from loadtest.processes import stop_process
from recsvc.client import popular_items
from recsvc.events import Event
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX
from recsvc.sessions import KEY_PREFIX

REPO = Path(__file__).resolve().parents[1]
COUNTER = re.compile(r'^recsvc_ingest_events_total\{result="(\w+)"\} ([0-9.e+]+)$', re.M)
LIVE_COUNTER = re.compile(
    r'^recsvc_live_(?:covisit_updates_total\{result="(\w+)"\}|neighbours_(evicted)_total) '
    r"([0-9.e+]+)$",
    re.M,
)
#: The one invalid message that live ingest accepts: items need not be in the bundle.
UNKNOWN_ITEM = 3
#: Invalid messages for ``--dlq-share``, each breaking the contract in its own way.
INVALID = (
    b"{not json",
    b'["an", "array"]',
    b'{"event_id": "x", "user_id": "u", "item_id": "i", "type": "click"}',
    b'{"event_id": "x", "user_id": "u", "item_id": "no-such-item", "type": "click", "ts": 1.0}',
    b'{"event_id": "x", "user_id": "u", "item_id": "i", "type": "view", "ts": 1.0}',
    b"\xff\xfe",
)


@dataclass
class Run:
    """Names of the bench's own topics, group and users (all deleted at the end)."""

    run_id: str
    events_topic: str
    dlq_topic: str
    group: str
    users: list[str]
    valid: int = 0
    invalid: int = 0
    lag: list[tuple[float, int | None]] = field(default_factory=list)  # (s, behind)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def produce(args: argparse.Namespace, run: Run, items: list[str]) -> float:
    """Send the events; returns the seconds it took (values are encoded beforehand)."""
    rng = np.random.default_rng(args.seed)
    item_pick = rng.integers(0, len(items), args.events)
    bad = rng.random(args.events) < args.dlq_share
    kinds = ("click", "click", "click", "cart", "fav", "buy")
    messages: list[tuple[bytes, bytes]] = []
    base_ts = 1_700_000_000.0
    for n in range(args.events):
        user = run.users[n % len(run.users)]
        if bad[n]:
            invalid = (
                INVALID if not args.live else INVALID[:UNKNOWN_ITEM] + INVALID[UNKNOWN_ITEM + 1 :]
            )
            value = invalid[run.invalid % len(invalid)]
            run.invalid += 1
        else:
            event = Event(
                f"{run.run_id}-{n}", user, items[item_pick[n]], kinds[n % len(kinds)], base_ts + n
            )
            value = event.to_json()
            run.valid += 1
        messages.append((user.encode(), value))
    producer = KafkaProducer(
        bootstrap_servers=args.kafka,
        acks=1,
        linger_ms=50,
        batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    start = time.perf_counter()
    try:
        for key, value in tqdm(messages, desc="produce", unit="ev", mininterval=1, leave=False):
            producer.send(run.events_topic, value=value, key=key)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return time.perf_counter() - start


def end_offsets(kafka: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return consumer.end_offsets(parts)
    finally:
        consumer.close()


def counters(port: int, counter: re.Pattern[str] = COUNTER) -> dict[str, float]:
    """``recsvc_ingest_events_total`` (or another ``counter``) by result, from the
    ingest's /metrics (empty if down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    # The last group is the value, the first one that matched the name.
    return {next(g for g in m.groups() if g): float(m.groups()[-1]) for m in counter.finditer(text)}


def committed(admin: KafkaAdminClient, group: str) -> int:
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    except KafkaError:
        return -1
    return sum(max(o.offset, 0) for o in offsets.values())


def start_ingest(args: argparse.Namespace, run: Run, port: int, length: int, log: Path) -> Any:
    profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    command = [
        sys.executable,
        *profile,
        "-m",
        "recsvc.cli",
        "ingest",
        "--bundle",
        str(Path(args.bundle).resolve()),
        "--kafka-bootstrap",
        args.kafka,
        "--events-topic",
        run.events_topic,
        "--dlq-topic",
        run.dlq_topic,
        "--group-id",
        run.group,
        "--redis-url",
        args.redis_url,
        "--metrics-port",
        str(port),
        "--session-length",
        str(length),
        "--session-ttl-s",
        "3600",
        "--watch-interval-s",
        "0",
        "--live",
        str(args.live),
        "--log-level",
        "warning",
        *args.ingest_arg,
    ]
    if args.cpu >= 0:
        command = ["taskset", "-c", str(args.cpu), *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    return subprocess.Popen(
        command, cwd=args.source, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def watch(
    args: argparse.Namespace, run: Run, proc: subprocess.Popen, port: int, total_lag: int
) -> dict[str, Any]:
    """Sample until every message is applied or dead-lettered; returns the timings."""
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    ps = psutil.Process(proc.pid)
    spawned = time.perf_counter()
    first: tuple[float, float, float] | None = None  # time, handled, cpu
    last_lag = 0.0
    bar = tqdm(total=args.events, desc="ingest", unit="ev", mininterval=1, leave=False)
    try:
        while True:
            now = time.perf_counter()
            if proc.poll() is not None:
                raise SystemExit(f"recsvc ingest exited with {proc.returncode}; see its log")
            if now - spawned > args.timeout_s:
                raise SystemExit(f"not all events ingested after {args.timeout_s} s")
            seen = counters(port)
            handled = sum(seen.values())
            cpu = sum(ps.cpu_times()[:2])
            if first is None and handled > 0:
                first = (now, handled, cpu)
                waited0 = runqueue_wait_s(proc.pid)
            if now - last_lag >= 0.5:
                last_lag = now
                done = committed(admin, run.group)
                # None: the broker could not say yet (e.g. no group coordinator on a new broker).
                run.lag.append((round(now - spawned, 2), total_lag - done if done >= 0 else None))
            bar.update(int(handled) - bar.n)
            if handled >= args.events and first is not None:
                break
            time.sleep(0.1)
        end_cpu = sum(ps.cpu_times()[:2])
        waited = runqueue_wait_s(proc.pid) - waited0
        # The last commit follows the last store: wait for it so the lag series ends at 0.
        deadline = time.perf_counter() + 10
        while committed(admin, run.group) < total_lag and time.perf_counter() < deadline:
            time.sleep(0.1)
        run.lag.append(
            (round(time.perf_counter() - spawned, 2), total_lag - committed(admin, run.group))
        )
    finally:
        bar.close()
        admin.close()
    t0, h0, c0 = first
    window = now - t0
    return {
        "startup_s": round(t0 - spawned, 2),
        "window_s": round(window, 3),
        "events_in_window": int(handled - h0),
        "events_per_s": round((handled - h0) / window) if window > 0 else None,
        "wall_s_from_spawn": round(now - spawned, 2),
        "ingest_cpu_s_window": round(end_cpu - c0, 2),
        "ingest_cpu_us_per_event": round((end_cpu - c0) / max(handled - h0, 1) * 1e6, 1),
        "ingest_cpu_share": round((end_cpu - c0) / window, 2) if window > 0 else 0.0,
        "ingest_runqueue_wait_s_window": round(waited, 2),
        "ingest_cpu_s_total": round(end_cpu, 2),
        "counters": seen,
    }


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a core (Linux)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def zcard_total(client: redis.Redis, users: list[str]) -> int:
    total = 0
    for start in range(0, len(users), 5000):
        pipe = client.pipeline(transaction=False)
        for user in users[start : start + 5000]:
            pipe.zcard(KEY_PREFIX + user)
        total += sum(pipe.execute())
    return total


def cleanup(args: argparse.Namespace, run: Run, client: redis.Redis) -> None:
    for start in range(0, len(run.users), 5000):
        client.delete(*[KEY_PREFIX + u for u in run.users[start : start + 5000]])
    # The live co-visits of the bench's items, in the bench's own db.
    live_keys = list(client.scan_iter(f"{NEIGHBOURS_PREFIX}*", count=5000))
    live_keys += list(client.scan_iter(f"{BASE_PREFIX}*", count=5000))
    for start in range(0, len(live_keys), 5000):
        client.delete(*live_keys[start : start + 5000])
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    try:
        admin.delete_topics([run.events_topic, run.dlq_topic], raise_errors=False)
        with contextlib.suppress(KafkaError):
            admin.delete_groups([run.group])
    finally:
        admin.close()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    run = Run(
        run_id,
        f"recsvc.bench.{run_id}",
        f"recsvc.bench.{run_id}.dlq",
        f"recsvc-bench-{run_id}",
        [f"bench-{run_id}-u{n}" for n in range(min(args.users, args.events))],
    )
    items = popular_items(args.bundle, args.items)
    length = max(20, math.ceil(args.events / len(run.users)))
    client = redis.Redis.from_url(args.redis_url)
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20_000)
    try:
        admin.create_topics(
            {
                run.events_topic: {"num_partitions": args.partitions, "replication_factor": 1},
                run.dlq_topic: {"num_partitions": 1, "replication_factor": 1},
            },
            timeout_ms=20_000,
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    log_dir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    proc = None
    try:
        produce_s = produce(args, run, items)
        ends = end_offsets(args.kafka, run.events_topic)
        total = sum(ends.values())
        if total != args.events:
            raise SystemExit(f"the topic holds {total} messages, expected {args.events}")
        port = free_port()
        proc = start_ingest(args, run, port, length, log_dir / "ingest.log")
        timings = watch(args, run, proc, port, total)
        live = counters(port, LIVE_COUNTER)
        in_redis = zcard_total(client, run.users)
        dlq = sum(end_offsets(args.kafka, run.dlq_topic).values())
        seen = timings.pop("counters")
        ok = (
            in_redis == run.valid
            and seen.get("applied", 0) == run.valid
            and seen.get("dead_lettered", 0) == run.invalid == dlq
        )
        return {
            "events": args.events,
            "valid": run.valid,
            "invalid": run.invalid,
            "partitions": args.partitions,
            "users": len(run.users),
            "produce_events_per_s": round(args.events / produce_s),
            **timings,
            "applied": int(seen.get("applied", 0)),
            "duplicate": int(seen.get("duplicate", 0)),
            "dead_lettered": int(seen.get("dead_lettered", 0)),
            "live": args.live,
            "live_covisit_updates": int(live.get("applied", 0)),
            "live_neighbours_evicted": int(live.get("evicted", 0)),
            "in_redis_zcard_sum": in_redis,
            "dlq_topic_messages": dlq,
            "all_accounted_for": ok,
            "ingest_cpu": args.cpu,
            "ingest_args": args.ingest_arg,
            "machine": f"{platform.node()} cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}",
            "lag_series": run.lag,
        }
    except BaseException:
        log = log_dir / "ingest.log"
        if log.exists():
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        if proc is not None:
            stop_process(proc, 20)
        cleanup(args, run, client)
        client.close()
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to produce")
    parser.add_argument("--users", type=int, default=20_000, help="distinct user ids")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the topic")
    parser.add_argument("--dlq-share", type=float, default=0.0, help="share of invalid events")
    parser.add_argument("--items", type=int, default=5000, help="popular bundle items to use")
    parser.add_argument(
        "--bundle", default=".local/bundles/taobao/current", help="events use its items"
    )
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka bootstrap server")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="Redis db for the sessions"
    )
    parser.add_argument("--cpu", type=int, default=1, help="core to pin ingest to; -1: none")
    parser.add_argument(
        "--live",
        type=int,
        choices=(0, 1),
        default=1,
        help="1 (recsvc ingest's default): ingest counts live co-visits with each append; 0: off",
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up after this")
    parser.add_argument("--seed", type=int, default=0, help="seed of items and invalid picks")
    parser.add_argument(
        "--source",
        default=str(REPO),
        help="directory whose recsvc package runs ingest (to compare with another checkout)",
    )
    parser.add_argument("--profile", help="run ingest under cProfile, writing stats here")
    parser.add_argument(
        "--ingest-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for recsvc ingest (repeat; e.g. --ingest-arg=--verbose)",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.users < 1 or args.partitions < 1 or args.items < 1:
        parser.error("--events, --users, --partitions and --items must be positive")
    if not 0 <= args.dlq_share < 1:
        parser.error("--dlq-share must be in [0, 1)")
    if args.cpu >= len(os.sched_getaffinity(0)) or args.cpu < -1:
        parser.error(f"--cpu {args.cpu}: this machine has cores 0..{os.cpu_count() - 1}")
    if not (Path(args.source) / "recsvc" / "cli.py").exists():
        parser.error(f"--source {args.source} holds no recsvc/cli.py")
    if not Path(args.bundle).exists():
        parser.error(f"--bundle {args.bundle} does not exist")
    try:
        summary = bench(args)
    except (KafkaError, redis.RedisError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    lag = summary.pop("lag_series")
    print(json.dumps(summary))
    print(json.dumps({"lag_series": lag}))
    return 0 if summary["all_accounted_for"] else 1


if __name__ == "__main__":
    sys.exit(main())
