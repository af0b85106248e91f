"""Server CPU per Recommend, split into the steps of the session read and the ranking.

Starts one one-process ``recsvc serve`` on the bundle, with a counter of thread CPU time
(``time.thread_time_ns``) around each step below, and drives it with the open-loop
generator of ``make capacity`` at one fixed rate. Sessions of 8 clicks on popular items
are written for ``--users`` shoppers by the ingest path's own append, with the live
co-visits when the server reads them. Each round prints the server process's CPU per
request and each step's, averaged over the round's requests; the last line is the median
over the rounds, with the server's settings.

The server's settings come from the usual ``RECSVC_*`` variables (``RECSVC_SECOND_STAGE=0``,
``RECSVC_LIVE=0``, ...), except those this command sets: the port, one worker, no metrics
port, the Redis URL, no bundle watching, warning logs.

Steps (nested ones are inside ``rank``; a step that did not run costs 0):

- ``session_parse``: the session's events parsed from the Redis reply;
- ``live_parse``: the live neighbours parsed from the same reply;
- ``rank``: all of ``Ranker.rank``, of which:
  ``live_gather`` the live neighbours mapped to bundle items, ``session_knn`` V-SKNN,
  ``candidates`` the merge, ``features`` the second stage's feature rows (new live items'
  included), ``model`` its trees, ``first_stage`` the personalized model over candidates
  beyond the pool (``window_scores``), ``answer`` the best k.

Each counted call costs about 1 µs more for its counter. Use a Redis database of its own
(the default): the sessions are deleted at the end, and so are the co-visit keys that the
seeding created, but co-visits it added to keys that were there before stay (for the live
TTL).

    python -m loadtest.request_stages --bundle .local/bundles/taobao --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import platform
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import redis

from loadtest.capacity import METHOD, Server, answer_kind, free_port, random_requests
from loadtest.latency import delete_keys, forget_sessions, seed_sessions
from loadtest.openloop import LoadGenerator
from recsvc import settings as recsvc_settings
from recsvc.bundle import load_bundle
from recsvc.client import popular_items
from recsvc.exceptions import ConfigError, RecsvcError
from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX

#: step -> the functions counted as it, as (module, attribute path).
STEPS: dict[str, tuple[tuple[str, str], ...]] = {
    "session_parse": (("recsvc.sessions", "_parse_rows"),),
    "live_parse": (("recsvc.sessions", "_live_read"),),
    "rank": (("recsvc.ranking", "Ranker.rank"),),
    "live_gather": (("recsvc.ranking", "gather"),),
    "session_knn": (("recsvc.candidates", "CandidateBuilder.session_scores"),),
    "candidates": (("recsvc.candidates", "CandidateBuilder.build"),),
    "features": (
        ("recsvc.features", "FeatureBuilder.build"),
        ("recsvc.features", "FeatureBuilder.new_item_rows"),
    ),
    "model": (("recsvc.second_stage", "SecondStage.scores"),),
    "first_stage": (("recsvc.ranking", "window_scores"),),
    "answer": (("recsvc.ranking", "Ranker._answer"),),
}


def _counted(
    function: Callable[..., Any], step: str, spent: Counter[str], calls: Counter[str]
) -> Callable[..., Any]:
    clock = time.thread_time_ns

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return function(*args, **kwargs)
        finally:
            spent[step] += clock() - started
            calls[step] += 1

    return counted


def serve_counted(report: Path, serve_args: list[str]) -> NoReturn:
    """Run ``recsvc serve`` with the step counters (the child process). Each SIGUSR2 writes
    ``{"cpu_s", "requests", step: ns, ...}`` since the one before to ``report``, and
    starts the counts again."""
    from recsvc import cli

    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for step, functions in STEPS.items():
        for module_name, path in functions:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            setattr(owner, name, _counted(getattr(owner, name), step, spent, calls))
    started = [time.process_time()]

    def write(*_: object) -> None:
        # Runs between two bytecodes of the event loop's thread, which is the only one that
        # counts, so no count is torn.
        now = time.process_time()
        counts = {"cpu_s": now - started[0], "requests": calls["rank"], **spent}
        spent.clear()
        calls.clear()
        started[0] = now
        tmp = report.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(report)

    signal.signal(signal.SIGUSR2, write)
    sys.exit(cli.main(["serve", *serve_args]))


def _counters(server: Server, report: Path) -> dict[str, float]:
    """The server's counts since the last call (the first call's cover the start-up)."""
    report.unlink(missing_ok=True)
    if server.proc.poll() is not None:
        raise SystemExit(f"the server exited ({server.proc.returncode}); see {server.log}")
    os.kill(server.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not report.exists():
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise SystemExit(f"the server wrote no counters; see {server.log}")
        time.sleep(0.05)
    return json.loads(report.read_text())


def _live_keys(items: list[str]) -> list[str]:
    return [prefix + item for item in items for prefix in (NEIGHBOURS_PREFIX, BASE_PREFIX)]


def _absent(redis_url: str, keys: list[str]) -> list[str]:
    """Those of ``keys`` that Redis does not hold."""
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [key for key, held in zip(keys, pipe.execute(), strict=True) if not held]
    finally:
        client.close()


def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    items = popular_items(args.bundle, 1000)
    users = [f"stages-{uuid.uuid4().hex[:8]}-{n}" for n in range(args.users)]
    requests = random_requests(users, items, args.k, 5000, args.seed + 1)
    report = workdir / f"request-stages-{os.getpid()}.json"
    port = free_port()
    command = [
        sys.executable, "-m", "loadtest.request_stages", "--serve-report", str(report),
        "--port", str(port), "--bundle", args.bundle, "--redis-url", args.redis_url,
    ]  # fmt: skip
    live = args.settings.live_settings()
    created = _absent(args.redis_url, _live_keys(items)) if live is not None else []
    rows = []
    try:
        asyncio.run(seed_sessions(args.redis_url, users, items, args.seed, live))
        with ExitStack() as stack:
            server = Server(command, f"127.0.0.1:{port}", workdir / "request-stages.log")
            stack.callback(server.stop)
            generator = LoadGenerator(
                f"127.0.0.1:{port}", METHOD, requests, processes=1, inspect=answer_kind
            )
            stack.callback(generator.close)
            if args.warmup_s > 0:
                generator.step(args.rate, args.warmup_s, warmup_s=0)
            _counters(server, report)  # start-up and warm-up: not measured
            for _ in range(args.rounds):
                result = generator.step(args.rate, args.seconds, warmup_s=0)
                counters = _counters(server, report)
                n = max(counters.pop("requests"), 1)
                row = {
                    "requests": int(n),
                    "errors": result.errors,
                    "second_stage_share": round(
                        sum(kind[1] for kind in result.inspected) / max(len(result.inspected), 1),
                        3,
                    ),
                    "cpu_us_per_request": round(counters.pop("cpu_s") * 1e6 / n, 1),
                    **{step: round(counters.get(step, 0) / 1e3 / n, 1) for step in STEPS},
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        for path in (report, report.with_suffix(".tmp")):
            path.unlink(missing_ok=True)
        forget_sessions(args.redis_url, users)
        delete_keys(args.redis_url, created, "seeded co-visit keys")
    print(
        json.dumps(
            {
                "median": {key: float(np.median([r[key] for r in rows])) for key in rows[0]},
                "rate": args.rate,
                "rounds": args.rounds,
                "bundle_version": load_bundle(args.bundle).version,
                "second_stage": args.settings.second_stage,
                "live": args.settings.live,
                "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "machine": f"{platform.node()} cpus={os.cpu_count()}",
            }
        ),
        flush=True,
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle to serve")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/11",
        help="Redis of the sessions and co-visits: a database of its own",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--users", type=int, default=2000, help="shoppers with 8-click sessions")
    parser.add_argument("--k", type=int, default=30, help="items per Recommend")
    parser.add_argument(
        "--workdir", default=".local/request-stages", help="the server's log and counter file"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_report is not None:
        serve_counted(
            args.serve_report,
            [
                "--bundle", args.bundle, "--port", str(args.port), "--metrics-port", "0",
                "--workers", "1", "--redis-url", args.redis_url, "--watch-interval-s", "0",
                "--log-level", "warning",
            ],
        )  # fmt: skip
    if min(args.rate, args.seconds) <= 0 or min(args.rounds, args.users, args.k) < 1:
        parser.error("--rate and --seconds must be positive, --rounds, --users and --k >= 1")
    if args.warmup_s < 0:
        parser.error("--warmup-s must be >= 0")
    if not Path(args.bundle).exists():
        parser.error(f"no bundle at {args.bundle} (make bundle builds one)")
    try:
        args.settings = recsvc_settings.load()
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        measure(args)
    except (RecsvcError, redis.RedisError) as exc:
        raise SystemExit(f"request_stages: {exc}") from None


if __name__ == "__main__":
    main()
