"""``redis-restart``: Redis restarted with its data, then emptied and rebuilt from the topic.

The same events as ``ingest-kill`` are written by ingest into a Redis of the run's own (AOF
on, as ``make up`` runs it). It is restarted with its data: the same checks must find
nothing missing (``restart_lost``, ``restart_double_counted``). Then it is restarted with
its data deleted (``members_after_emptying``: what is left, 0), and ``recsvc ingest
--rebuild-sessions ttl`` must bring every session and co-visit count back (``lost``,
``extra``, ``double_counted``; ``rebuild_s``: until every session member is back).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from loadtest.chaos.common import (
    SESSION_LENGTH,
    Ingest,
    PrivateRedis,
    counting_failures,
    new_run,
    produce,
    remove_from_kafka,
    verify,
    wait,
)
from loadtest.ingest_bench import committed, end_offsets, free_port, zcard_total
from loadtest.processes import stop_process


def run(args: argparse.Namespace) -> dict[str, Any]:
    """A Redis of the run's own (``scripts/services/redis.sh``, AOF on) is filled by
    ingest, restarted with its data, then restarted emptied and rebuilt from the topic."""
    tag, topic, group, users, events = new_run(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    service = PrivateRedis(port, workdir / f"{tag}-redis")
    url = f"redis://127.0.0.1:{port}/0"
    expected = sum(min(n, SESSION_LENGTH) for n in Counter(e.user_id for e in events).values())
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20_000)
    admin.create_topics([NewTopic(topic, 3, 1), NewTopic(f"{topic}.dlq", 1, 1)])
    ingest = Ingest(args, topic, group, workdir / f"{tag}-ingest.log", url)
    proc: subprocess.Popen[bytes] | None = None
    service.run("start")
    client = redis.Redis.from_url(url)
    started = time.monotonic()
    try:
        produce(args.kafka, topic, events)
        total = sum(end_offsets(args.kafka, topic).values())
        proc = ingest.start()
        wait(lambda: committed(admin, group) >= total, args.timeout_s, "the whole topic")
        stop_process(proc, 20)
        proc = None
        # 1. Restarted with its data (SHUTDOWN writes the AOF): nothing may be missing.
        service.run("stop")
        service.run("start")
        kept = verify(client, users, events)
        # 2. Restarted empty (its data gone, as on a host that lost its disk): the server
        # sees empty sessions; ingest --rebuild-sessions takes them back from the topic.
        service.run("stop")
        shutil.rmtree(service.directory / "appendonlydir", ignore_errors=True)
        service.run("start")
        emptied = zcard_total(client, users)
        proc = ingest.start("--rebuild-sessions", "ttl")
        rebuilt_s = wait(lambda: zcard_total(client, users) >= expected, args.timeout_s,
                         "the sessions rebuilt")  # fmt: skip
        wait(lambda: committed(admin, group) >= total, args.timeout_s, "the rebuild's commits")
        stop_process(proc, 20)
        proc = None
        rebuilt = verify(client, users, events)
        return {
            "scenario": "redis-restart",
            "events": len(events),
            "users": len(users),
            "session_members": expected,
            "restart_lost": kept["lost"],
            "restart_double_counted": kept["double_counted"],
            "members_after_emptying": emptied,
            "rebuild_s": round(rebuilt_s, 2),
            **rebuilt,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if proc is not None:
            stop_process(proc, 20)
        client.close()
        service.run("stop")
        remove_from_kafka(admin, [topic, f"{topic}.dlq"], group)


def failures(figures: dict[str, Any]) -> list[str]:
    found = counting_failures(figures)
    found += [k for k in ("restart_lost", "restart_double_counted") if figures.get(k)]
    if figures.get("members_after_emptying"):
        found.append("members_after_emptying")  # the restart did not empty it: nothing tested
    return found
