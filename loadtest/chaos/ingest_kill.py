"""``ingest-kill``: ingest killed with SIGKILL again and again while it consumes a replay.

``--events`` events of ``--users`` shoppers are produced to a topic of the run's own, then a
real ``recsvc ingest`` (live co-visits on, static group membership) writes them to an empty
Redis database (``--redis-url``) while it is killed with SIGKILL ``--kills`` times, each at a
random moment while it consumes, and started again each time. At the end, each shopper's
session must hold exactly the last events the session keeps (``lost``: events missing,
``extra``: members that are no event of the run), and the live co-visit counts must equal
those of the in-memory twin that applied every event once (``double_counted``: items whose
counts differ; a replayed batch counted twice shows here). Items are picked from ``--items``
popular ones, enough that no item's neighbours reach the cap: which neighbours a cap keeps
depends on the order in which the partitions' events arrive, so with evictions
(``evictions`` > 0) the counts cannot be compared and the run fails.
``restart_to_consuming_s`` is, per restart, the time from the new process's start to the
first event it stored or batch it committed.

    python -m loadtest.chaos --scenario ingest-kill --events 200000 --kills 5
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from loadtest.chaos.common import (
    Ingest,
    counting_failures,
    empty_database,
    new_run,
    produce,
    remove_from_kafka,
    verify,
    wait,
)
from loadtest.ingest_bench import committed, end_offsets, zcard_total
from loadtest.processes import stop_process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of ingest, at most")
    parser.add_argument(
        "--kill-after-s",
        type=float,
        default=2.0,
        help="each kill comes at a random time up to this long after the last (re)started "
        "ingest made progress",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.kills < 0 or args.kill_after_s <= 0:
        return "--kills must be >= 0 and --kill-after-s > 0"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = empty_database(args.redis_url)
    tag, topic, group, users, events = new_run(args)
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, request_timeout_ms=20_000)
    admin.create_topics([NewTopic(topic, 3, 1), NewTopic(f"{topic}.dlq", 1, 1)])
    rng = random.Random(args.seed)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ingest = Ingest(args, topic, group, workdir / f"{tag}-ingest.log", args.redis_url)
    proc: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        produce(args.kafka, topic, events)
        total = sum(end_offsets(args.kafka, topic).values())
        restarts: list[float] = []
        proc = ingest.start()
        first = wait(lambda: zcard_total(client, users) > 0, args.timeout_s, "ingest storing")
        for _ in range(args.kills):
            # Killed while it consumes: some time after its last start made progress.
            time.sleep(rng.uniform(0.0, args.kill_after_s))
            if committed(admin, group) >= total:
                break  # all done before this kill: nothing left to interrupt
            proc.kill()
            proc.wait()
            before = (zcard_total(client, users), committed(admin, group))
            proc = ingest.start()

            def progress(b: tuple[int, int] = before) -> bool:
                """The new process stored an event or committed a batch (one replayed
                after the kill stores nothing new), or nothing is left to do."""
                done = committed(admin, group)
                return zcard_total(client, users) > b[0] or done > b[1] or done >= total

            restarts.append(wait(progress, args.timeout_s, "a restarted ingest consuming"))
        wait(lambda: committed(admin, group) >= total, args.timeout_s, "the whole topic")
        stop_process(proc, 20)
        proc = None
        return {
            "scenario": "ingest-kill",
            "events": len(events),
            "users": len(users),
            "kills": len(restarts),
            **verify(client, users, events),
            "start_to_consuming_s": round(first, 2),
            "restart_to_consuming_s": [round(s, 2) for s in restarts],
            "max_restart_to_consuming_s": round(max(restarts, default=0.0), 2),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if proc is not None:
            stop_process(proc, 20)
        client.flushdb()
        client.close()
        remove_from_kafka(admin, [topic, f"{topic}.dlq"], group)


def failures(figures: dict[str, Any]) -> list[str]:
    return counting_failures(figures)
