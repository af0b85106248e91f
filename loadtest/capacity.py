"""Capacity: the highest Recommend rate whose p99 stays under a target, against the ceiling.

One run does everything, on this machine's loopback:

1. sessions for ``--users`` shoppers are produced to Kafka (a topic of the run's own) and
   a real ``recsvc ingest`` writes them to Redis, so the server's personalized path is
   what gets measured;
2. ``recsvc serve --workers N`` and an empty handler served the same way (same process
   model, same generator: the ceiling of gRPC and Python here) are started, and an
   open-loop generator (:mod:`loadtest.openloop`) searches each for the highest rate at
   which p99 < ``--p99-ms`` with no errors (rates rise by ``--growth`` until a step
   fails twice, then bisect), one step of each in turn so that both see the same
   spells of a shared machine; each best rate is then run again for ``--confirm-s``,
   and a failed final run is tried again at ``--confirm-backoff`` times its rate, up to
   ``--confirm-tries`` runs (the same rule for both servers): a 15 s run meets more of a
   shared machine's stalls than a 5 s step, so the search's best can sit just past the knee;
3. it prints one JSON line: ``{"rps", "p50_ms", "p99_ms", "ceiling_rps", "ratio",
   "errors", ...}`` with the server's CPU per request, and removes what it created. A
   ceiling below recsvc's rate is a stalled machine, not a capacity: it exits 1 saying so.

    python -m loadtest.capacity --bundle .local/bundles/taobao --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from loadtest.openloop import LoadGenerator, StepResult
from loadtest.processes import stop_process
from recsvc.client import popular_items, wait_serving
from recsvc.events import Event
from recsvc.v1 import recommender_pb2 as pb

METHOD = "/recsvc.v1.Recommender/Recommend"
SESSION_CLICKS = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_requests(users: list[str], items: list[str], k: int, n: int, seed: int) -> list[bytes]:
    """``n`` serialized Recommend requests, each for a random user and item."""
    rng = np.random.default_rng(seed)
    return [
        pb.RecommendRequest(
            user_id=str(rng.choice(users)), item_id=str(rng.choice(items)), k=k
        ).SerializeToString()
        for _ in range(n)
    ]


def personalized(reply: bytes) -> bool:
    """Whether a sampled Recommend reply was personalized (runs in the client processes)."""
    return pb.RecommendResponse.FromString(reply).personalized


def answer_kind(reply: bytes) -> tuple[bool, bool]:
    """(personalized, ranked by the second stage) of a sampled Recommend reply (runs in the
    client processes)."""
    answer = pb.RecommendResponse.FromString(reply)
    return answer.personalized, answer.ranked_by == pb.RANKED_BY_SECOND_STAGE


@dataclass
class Step:
    """One step of the search, with the server's CPU time over it."""

    result: StepResult
    server_cpu_s: float
    p99_target_ms: float

    @property
    def passed(self) -> bool:
        return self.result.errors == 0 and self.result.percentile(99) < self.p99_target_ms

    def summary(self) -> dict[str, float]:
        r = self.result
        return {
            "rate": round(r.rate, 1),
            "p50_ms": round(r.percentile(50), 2),
            "p99_ms": round(r.percentile(99), 2),
            "errors": r.errors,
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / max(r.requests, 1), 3),
        }


class Process:
    """A process tree started here, logging to a file, with its CPU time."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def cpu_seconds(self) -> float:
        total = 0.0
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self._log.close()


class Server(Process):
    """A gRPC server process, started and waited for until its health check says SERVING."""

    def __init__(
        self, args: list[str], target: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(args, log, env)
        if not wait_serving(target, 60):
            self.stop()
            raise SystemExit(f"{' '.join(args)} did not start; see {log}")


def timed_step(
    generator: LoadGenerator, server: Process, rate: float, duration_s: float, p99_ms: float
) -> Step:
    before = server.cpu_seconds()
    result = generator.step(rate, duration_s)
    return Step(result, server.cpu_seconds() - before, p99_ms)


class RateSearch:
    """Raise the rate by ``growth`` until a step fails, then bisect ``refine`` times between
    the best pass and the lowest failure. A step that fails is run once more before it
    counts as failed, so one stall of a shared machine does not end the search."""

    def __init__(self, start: float, growth: float, refine: int) -> None:
        self.rate = start
        self.growth = growth
        self.refine = refine
        self.best: Step | None = None
        self.failed_at: float | None = None
        self.steps: list[Step] = []
        self.done = False
        self._retried = False

    def record(self, step: Step) -> None:
        self.steps.append(step)
        if not step.passed and not self._retried:
            self._retried = True  # same rate once more
            return
        self._retried = False
        if step.passed:
            self.best = step
        if self.failed_at is None and step.passed:
            self.rate *= self.growth
            return
        if self.failed_at is None and self.best is None and self.rate > 50:
            self.rate /= self.growth**2  # the first rate was already too high
            return
        if not step.passed:
            self.failed_at = self.rate if self.failed_at is None else min(self.failed_at, self.rate)
        if self.best is None or self.refine == 0:
            self.done = True
            return
        self.refine -= 1
        self.rate = (self.best.result.rate + self.failed_at) / 2


@contextmanager
def sessions_through_kafka(
    args: argparse.Namespace, users: list[str], items: list[str], workdir: Path
) -> Iterator[None]:
    """Produce each user's clicks to a fresh topic and run ingest until Redis has them all."""
    import redis
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    run = uuid.uuid4().hex[:8]
    topic, dlq = f"recsvc.capacity.{run}", f"recsvc.capacity.{run}.dlq"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    admin.create_topics([NewTopic(topic, 2, 1), NewTopic(dlq, 1, 1)])
    client = redis.Redis.from_url(args.redis_url)
    ingest = None
    try:
        producer = KafkaProducer(bootstrap_servers=args.kafka, linger_ms=20, acks=1)
        rng = np.random.default_rng(args.seed)
        now = time.time()
        for user in users:
            for n, item in enumerate(rng.choice(items, size=SESSION_CLICKS)):
                event = Event(f"{user}-{n}", user, str(item), "click", now - 60 + n)
                producer.send(topic, key=user.encode(), value=event.to_json())
        producer.flush()
        producer.close()
        ingest = Process(
            [
                sys.executable, "-m", "recsvc.cli", "ingest", "--bundle", args.bundle,
                "--kafka-bootstrap", args.kafka, "--events-topic", topic, "--dlq-topic", dlq,
                "--group-id", f"recsvc-capacity-{run}", "--redis-url", args.redis_url,
                "--metrics-port", "0", "--watch-interval-s", "0", "--log-level", "warning",
            ],
            workdir / "ingest.log",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        keys = [f"recsvc:session:{u}" for u in users]
        while True:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zcard(key)
            if all(n >= SESSION_CLICKS for n in pipe.execute()):
                break
            if time.monotonic() > deadline or ingest.proc.poll() is not None:
                raise SystemExit(f"sessions did not reach Redis; see {ingest.log}")
            time.sleep(0.5)
        ingest.stop()
        ingest = None
        yield
    finally:
        if ingest is not None:
            ingest.stop()
        for start in range(0, len(users), 1000):
            client.delete(*[f"recsvc:session:{u}" for u in users[start : start + 1000]])
        with suppress(Exception):
            admin.delete_topics([topic, dlq])
        admin.close()
        client.close()


@dataclass
class Target:
    """One server under test, its load generator and its search."""

    name: str
    server: Server
    generator: LoadGenerator
    search: RateSearch


def measure_both(
    args: argparse.Namespace, commands: dict[str, tuple[list[str], int]], requests: list[bytes]
) -> dict[str, tuple[Step | None, list[Step]]]:
    """Search every server's best rate, one step of each in turn, so that a slow spell of
    the machine falls on all of them; then run each best rate again for ``--confirm-s``,
    backing off after a failed run (see the module docstring).

    Returns, per name, the confirmation step (None when no rate passed) and all steps.
    """
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    targets: list[Target] = []
    try:
        for name, (command, port) in commands.items():
            say(f"{name}: {' '.join(command)}")
            server = Server(command, f"127.0.0.1:{port}", Path(args.workdir) / f"{name}.log")
            generator = LoadGenerator(
                f"127.0.0.1:{port}",
                METHOD,
                requests,
                args.clients,
                answer_kind,
                timeout_s=1.0,
                connections=args.connections,
            )
            targets.append(Target(name, server, generator, RateSearch(
                args.start_rate, args.growth, args.refine
            )))  # fmt: skip
            generator.step(args.start_rate / 2, 2.0, warmup_s=0.0)  # warm both ends up
        while not all(t.search.done for t in targets):
            for t in targets:
                if t.search.done:
                    continue
                step = timed_step(t.generator, t.server, t.search.rate, args.step_s, args.p99_ms)
                say(f"  {t.name} {'pass' if step.passed else 'FAIL'} {json.dumps(step.summary())}")
                t.search.record(step)
        results: dict[str, tuple[Step | None, list[Step]]] = {}
        for t in targets:
            best = t.search.best
            if best is None:
                results[t.name] = (None, t.search.steps)
                continue
            rate = best.result.rate
            for _ in range(args.confirm_tries):
                confirm = timed_step(t.generator, t.server, rate, args.confirm_s, args.p99_ms)
                verdict = "pass" if confirm.passed else "FAIL"
                say(f"  {t.name} confirm {verdict} {json.dumps(confirm.summary())}")
                if confirm.passed:
                    break
                rate *= args.confirm_backoff
            results[t.name] = (confirm, t.search.steps)
        return results
    finally:
        for t in targets:
            t.generator.close()
            t.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle to serve")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--kafka", default="127.0.0.1:9092", help="Kafka bootstrap server")
    parser.add_argument("--workers", type=int, default=2, help="server processes (both runs)")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--connections", type=int, default=8, help="TCP connections per generator process"
    )
    parser.add_argument("--users", type=int, default=2000, help="shoppers with sessions")
    parser.add_argument("--p99-ms", type=float, default=20.0, help="p99 target (ms)")
    parser.add_argument("--start-rate", type=float, default=500.0, help="first rate tried")
    parser.add_argument("--growth", type=float, default=1.4, help="rate factor per step")
    parser.add_argument("--refine", type=int, default=4, help="bisection steps after")
    parser.add_argument("--step-s", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument(
        "--confirm-s", type=float, default=15.0, help="seconds of the final run at the best rate"
    )
    parser.add_argument(
        "--confirm-tries",
        type=int,
        default=3,
        help="final runs at most; a failed one is run again at --confirm-backoff times its rate",
    )
    parser.add_argument(
        "--confirm-backoff", type=float, default=0.95, help="rate factor after a failed final run"
    )
    parser.add_argument("--k", type=int, default=30, help="items per Recommend")
    parser.add_argument("--workdir", default=".local/capacity", help="logs of the servers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.workers, args.clients, args.connections, args.users, args.refine + 1) < 1:
        parser.error("--workers, --clients, --connections and --users must be >= 1")
    if args.growth <= 1:
        parser.error("--growth must be more than 1")
    if min(args.p99_ms, args.start_rate, args.step_s, args.confirm_s) <= 0:
        parser.error("--p99-ms, --start-rate, --step-s and --confirm-s must be positive")
    if args.confirm_tries < 1:
        parser.error("--confirm-tries must be at least 1")
    if not 0 < args.confirm_backoff < 1:
        parser.error("--confirm-backoff must be between 0 and 1")
    if not Path(args.bundle).exists():
        parser.error(f"no bundle at {args.bundle} (make bundle builds one)")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    items = popular_items(args.bundle, 1000)
    run = uuid.uuid4().hex[:8]
    users = [f"capacity-{run}-{n}" for n in range(args.users)]
    requests = random_requests(users, items, args.k, 20000, args.seed + 1)
    recsvc_port, empty_port = free_port(), free_port()
    serve = [
        sys.executable, "-m", "recsvc.cli", "serve", "--bundle", args.bundle,
        "--port", str(recsvc_port), "--metrics-port", str(free_port()),
        "--workers", str(args.workers), "--redis-url", args.redis_url,
        "--watch-interval-s", "0", "--log-level", "warning",
    ]  # fmt: skip
    empty = [
        sys.executable, "-m", "loadtest.empty_server",
        "--port", str(empty_port), "--workers", str(args.workers),
    ]  # fmt: skip
    with sessions_through_kafka(args, users, items, Path(args.workdir)):
        results = measure_both(
            args, {"recsvc": (serve, recsvc_port), "empty": (empty, empty_port)}, requests
        )
    (best, steps), (ceiling, ceiling_steps) = results["recsvc"], results["empty"]
    if best is None or ceiling is None:
        raise SystemExit("no rate met the target; try a lower --start-rate")
    kinds = [tuple(x) for x in best.result.inspected]
    report = {
        "rps": round(best.result.rate, 1),
        "p50_ms": round(best.result.percentile(50), 2),
        "p99_ms": round(best.result.percentile(99), 2),
        "ceiling_rps": round(ceiling.result.rate, 1),
        "ratio": round(best.result.rate / ceiling.result.rate, 3),
        "errors": best.result.errors,
        "confirmed": best.passed and ceiling.passed,
        "server_cpu_ms_per_request": best.summary()["server_cpu_ms_per_request"],
        "ceiling_cpu_ms_per_request": ceiling.summary()["server_cpu_ms_per_request"],
        "personalized_share": round(sum(k[0] for k in kinds) / max(len(kinds), 1), 3),
        "second_stage_share": round(sum(k[1] for k in kinds) / max(len(kinds), 1), 3),
        "p99_target_ms": args.p99_ms,
        "workers": args.workers,
        "clients": args.clients,
        "connections": args.clients * args.connections,
        "steps": len(steps) + len(ceiling_steps),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.node()} cpus={os.cpu_count()}",
    }
    print(json.dumps(report))
    doubt = disturbed_ceiling(best.result.rate, ceiling.result.rate)
    if doubt is not None:
        raise SystemExit(doubt)


def disturbed_ceiling(rps: float, ceiling_rps: float) -> str | None:
    """Why the ceiling's run cannot be trusted, or None. The empty handler does less than
    recsvc for every request on the same machine, so a ceiling below recsvc's rate means a
    stall of the machine fell on its run, not a capacity."""
    if ceiling_rps >= rps:
        return None
    return (
        f"the empty handler's best rate ({ceiling_rps:.0f}/s) is below recsvc's ({rps:.0f}/s): "
        "its run met a busy or stalled machine, so the ratio means nothing; run again when "
        "the machine is quiet"
    )


if __name__ == "__main__":
    main()
