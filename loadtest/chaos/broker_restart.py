"""``broker-restart``: the Kafka broker restarted while events are produced and while ingest
consumes them.

The run starts a broker of its own (``scripts/services/kafka.sh`` on free ports, its data
in ``--workdir``; the shared broker is never touched) with a 3-partition topic. ``--events``
events of ``--users`` shoppers are produced with acks=all, idempotence and retries, and with
``--broker-produce-restart`` 1 the broker is stopped and started (its data kept) in the
middle: a third is sent before the stop, a third while it is down, a third after it is
back. ``produce_failed`` counts the sends that failed, ``topic_messages`` what the topic
holds (each event once: ``events``). Then a real ``recsvc ingest`` writes them to an empty
Redis database (``--redis-url``) while the broker is restarted ``--broker-restarts`` times,
each at a random moment up to ``--broker-restart-after-s`` after ingest last made progress.
The same checks as ``ingest-kill`` follow (``lost``, ``extra``, ``double_counted``).
Per restart: ``broker_down_s`` from the stop to the broker's port accepting connections
again, ``broker_start_to_listening_s`` the start's part of it (the JVM), and
``restart_to_committing_s`` from the port accepting connections to ingest storing new
events, which it does only once the batch before them is committed (or a fresh fetch came
in).

    python -m loadtest.chaos --scenario broker-restart --events 200000 --broker-restarts 3
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer

from loadtest.chaos.common import (
    Ingest,
    PrivateKafka,
    counting_failures,
    empty_database,
    new_run,
    verify,
    wait,
)
from loadtest.ingest_bench import committed, end_offsets, zcard_total
from loadtest.processes import stop_process
from recsvc.events import Event


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker-restarts", type=int, default=3, help="broker restarts while ingest consumes"
    )
    parser.add_argument(
        "--broker-restart-after-s",
        type=float,
        default=2.0,
        help="each restart comes at a random time up to this long after ingest last made progress",
    )
    parser.add_argument(
        "--broker-produce-restart",
        type=int,
        choices=(0, 1),
        default=1,
        help="1: one more restart while the events are produced",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.broker_restarts < 1 or args.broker_restart_after_s < 0:
        return "--broker-restarts must be >= 1 and --broker-restart-after-s >= 0"
    return None


class Sends:
    """The outcome of each send of a producer, counted by its callbacks."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error = ""

    def ok(self, _metadata: Any) -> None:
        self.acked += 1

    def error(self, exc: BaseException) -> None:
        self.failed += 1
        self.first_error = self.first_error or repr(exc)[:300]


def produce_through_a_restart(
    broker: PrivateKafka, topic: str, events: list[Event], restart: bool, timeout_s: float
) -> tuple[Sends, float | None]:
    """Send the events with acks=all, idempotence and retries; with ``restart``, a third
    before the broker stops, a third while it is down and the rest once it is back. The
    sends' outcome, and the broker's seconds down (None without a restart)."""
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=256 << 10,
        delivery_timeout_ms=int(timeout_s * 1000),
        max_block_ms=int(timeout_s * 1000),
    )
    sends = Sends()
    third = len(events) // 3
    down: float | None = None

    def send(part: list[Event]) -> None:
        for event in part:
            future = producer.send(topic, key=event.user_id.encode(), value=event.to_json())
            future.add_callback(sends.ok).add_errback(sends.error)

    try:
        send(events[:third])
        if restart:
            stopping = time.monotonic()
            broker.run("stop")
            send(events[third : 2 * third])  # into the producer's buffer: no broker
            broker.run("start")
            down = time.monotonic() - stopping
        else:
            send(events[third : 2 * third])
        send(events[2 * third :])
        producer.flush(timeout=timeout_s)
    finally:
        producer.close(timeout=10)
    return sends, down


def accepts(address: str) -> bool:
    """Whether ``host:port`` accepts a TCP connection."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
    except OSError:
        return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = empty_database(args.redis_url)
    tag, topic, group, users, events = new_run(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    broker = PrivateKafka(workdir / f"{tag}-kafka", f"{topic}:3 {topic}.dlq:1")
    on_broker = argparse.Namespace(**{**vars(args), "kafka": broker.bootstrap})
    ingest = Ingest(on_broker, topic, group, workdir / f"{tag}-ingest.log", args.redis_url)
    rng = random.Random(args.seed)
    proc: subprocess.Popen[bytes] | None = None
    admin: KafkaAdminClient | None = None
    started = time.monotonic()
    try:
        broker.run("start")  # in the try: a start that fails half-way is stopped too
        sends, produce_down = produce_through_a_restart(
            broker, topic, events, bool(args.broker_produce_restart), args.timeout_s
        )
        total = sum(end_offsets(broker.bootstrap, topic).values())
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5_000)
        proc = ingest.start()
        running = proc

        def living(check: Callable[[], bool]) -> Callable[[], bool]:
            """``check``, but ingest exiting ends the run: it must ride the restarts out."""

            def checked() -> bool:
                if running.poll() is not None:
                    raise SystemExit(f"chaos: ingest exited ({running.returncode}); see "
                                     f"{ingest.log}")  # fmt: skip
                return check()

            return checked

        def done() -> bool:
            return committed(admin, group) >= total

        first = wait(living(lambda: zcard_total(client, users) > 0), args.timeout_s,
                     "ingest storing")  # fmt: skip
        down_s: list[float] = []
        start_s: list[float] = []
        back_s: list[float] = []
        for _ in range(args.broker_restarts):
            time.sleep(rng.uniform(0.0, args.broker_restart_after_s))
            if done():
                break  # the replay ended before this restart: too few --events
            stopping = time.monotonic()
            broker.run("stop")
            stored = zcard_total(client, users)  # no more until a commit or fetch gets through
            with ThreadPoolExecutor(1) as pool:
                starting = pool.submit(broker.run, "start")  # returns after the topics' check
                # A start that failed ends the wait at once, and .result() says why.
                listening = wait(lambda s=starting: accepts(broker.bootstrap) or s.done(),
                                 args.timeout_s, "the broker listening")  # fmt: skip
                if starting.done():
                    starting.result()
                down_s.append(time.monotonic() - stopping)

                def progress(before: int = stored) -> bool:
                    return zcard_total(client, users) > before or done()

                back_s.append(wait(living(progress), args.timeout_s, "ingest committing again"))
                start_s.append(listening)
                starting.result()
        wait(living(done), args.timeout_s, "the whole topic")
        stop_process(proc, 20)
        exit_code, proc = proc.returncode, None
        return {
            "scenario": "broker-restart",
            "events": len(events),
            "users": len(users),
            "produce_restart": produce_down is not None,
            "produce_down_s": None if produce_down is None else round(produce_down, 2),
            "produce_acked": sends.acked,
            "produce_failed": sends.failed,
            "produce_error": sends.first_error or None,
            "topic_messages": total,
            "restarts": len(back_s),
            "restarts_asked": args.broker_restarts,
            **verify(client, users, events),
            "start_to_consuming_s": round(first, 2),
            "broker_down_s": [round(s, 2) for s in down_s],
            "broker_start_to_listening_s": [round(s, 2) for s in start_s],
            "restart_to_committing_s": [round(s, 2) for s in back_s],
            "max_restart_to_committing_s": round(max(back_s, default=0.0), 2),
            "ingest_exit_code": exit_code,
            "elapsed_s": round(time.monotonic() - started, 1),
        }
    finally:
        if proc is not None:
            stop_process(proc, 20)
        client.flushdb()
        client.close()
        if admin is not None:
            admin.close()
        broker.run("stop")
        shutil.rmtree(broker.directory / "data", ignore_errors=True)  # the logs stay


def failures(figures: dict[str, Any]) -> list[str]:
    found = counting_failures(figures)
    if figures["produce_failed"] or figures["produce_acked"] != figures["events"]:
        found.append("produce_failed (sends lost across the restart)")
    if figures["topic_messages"] != figures["events"]:
        found.append("topic_messages (the topic does not hold each event once)")
    if figures["restarts"] < figures["restarts_asked"]:
        found.append("restarts (the replay ended first: give more --events)")
    if figures["ingest_exit_code"] != 0:
        found.append("ingest_exit_code (ingest did not stop cleanly on SIGTERM)")
    return found
