"""Server CPU per Recommend, split into the steps of the session read and the ranking.

Starts one one-process ``recsvc serve`` on the bundle, with a counter of thread CPU time
(``time.thread_time_ns``) around each step below, and drives it with the open-loop
generator of ``make capacity`` at one fixed rate. Sessions of 8 clicks are written for
``--users`` shoppers by the ingest path's own append, so the live co-visits are there too.
Each round prints the server process's CPU per request and each step's, averaged over the
round's requests; the last line is the median over the rounds. Server settings come from
the usual environment (``RECSVC_SECOND_STAGE=0``, ``RECSVC_LIVE=0``, ...), as for
``recsvc serve``.

Steps (nested ones are inside ``rank``; a step is counted on every call, and a step that
did not run costs 0):

- ``session_parse``: the session's events parsed from the Redis reply;
- ``live_parse``: the live neighbours parsed from the same reply;
- ``rank``: all of ``Ranker.rank``, of which:
  ``live_gather`` the live neighbours mapped to bundle items, ``session_knn`` V-SKNN,
  ``candidates`` the merge, ``features`` the second stage's feature rows, ``model`` its
  trees, ``first_stage`` the personalized model over extra candidates (numpy), ``answer``
  the best k.

The counters themselves cost about 1 µs per counted call. The co-visits written expire
with the live TTL; the sessions are deleted at the end.

    python -m loadtest.request_stages --bundle .local/bundles/taobao --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.capacity import METHOD, Server, answer_kind, free_port, random_requests
from loadtest.cost_layers import _forget_sessions
from loadtest.latency import seed_sessions
from loadtest.openloop import LoadGenerator
from recsvc.client import popular_items
from recsvc.live import LiveSettings

#: step -> (module, attribute path) of the function counted.
STEPS = {
    "session_parse": ("recsvc.sessions", "_parse_rows"),
    "live_parse": ("recsvc.sessions", "_live_read"),
    "rank": ("recsvc.ranking", "Ranker.rank"),
    "live_gather": ("recsvc.ranking", "gather"),
    "session_knn": ("recsvc.candidates", "CandidateBuilder.session_scores"),
    "candidates": ("recsvc.candidates", "CandidateBuilder.build"),
    "features": ("recsvc.features", "FeatureBuilder.build"),
    "model": ("recsvc.second_stage", "SecondStage.scores"),
    "first_stage": ("recsvc.ranking", "window_scores"),
    "answer": ("recsvc.ranking", "Ranker._answer"),
}


def _counted(
    function: Callable[..., Any], step: str, spent: Counter[str], calls: Counter[str]
) -> Callable[..., Any]:
    clock = time.thread_time_ns

    def counted(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return function(*args, **kwargs)
        finally:
            spent[step] += clock() - started
            calls[step] += 1

    return counted


def serve_counted(report: Path, serve_args: list[str]) -> None:
    """Run ``recsvc serve`` with the step counters (the child process). SIGUSR1 zeroes
    them; SIGUSR2 writes ``{"cpu_s", "requests", step: ns, ...}`` to ``report``."""
    import importlib

    from recsvc import cli

    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for step, (module_name, path) in STEPS.items():
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, _counted(getattr(owner, name), step, spent, calls))
    started = [time.process_time()]

    def zero(*_: object) -> None:
        spent.clear()
        calls.clear()
        started[0] = time.process_time()

    def write(*_: object) -> None:
        tmp = report.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"cpu_s": time.process_time() - started[0], "requests": calls["rank"], **spent}
            )
        )
        tmp.replace(report)

    signal.signal(signal.SIGUSR1, zero)
    signal.signal(signal.SIGUSR2, write)
    sys.exit(cli.main(["serve", *serve_args]))


def _read_report(server: Server, report: Path) -> dict[str, float]:
    report.unlink(missing_ok=True)
    os.kill(server.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not report.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the server wrote no counters; see {server.log}")
        time.sleep(0.05)
    return json.loads(report.read_text())


def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    items = popular_items(args.bundle, 1000)
    users = [f"stages-{uuid.uuid4().hex[:8]}-{n}" for n in range(args.users)]
    requests = random_requests(users, items, args.k, 5000, args.seed)
    report = workdir / f"request-stages-{os.getpid()}.json"
    port = free_port()
    command = [
        sys.executable, "-m", "loadtest.request_stages", "--serve-report", str(report), "--",
        "--bundle", args.bundle, "--port", str(port), "--metrics-port", "0", "--workers", "1",
        "--redis-url", args.redis_url, "--watch-interval-s", "0", "--log-level", "warning",
    ]  # fmt: skip
    rows = []
    asyncio.run(seed_sessions(args.redis_url, users, items, args.seed, LiveSettings()))
    try:
        server = Server(command, f"127.0.0.1:{port}", workdir / "request-stages.log")
        generator = LoadGenerator(
            f"127.0.0.1:{port}", METHOD, requests, processes=1, inspect=answer_kind
        )
        try:
            if args.warmup_s > 0:
                generator.step(args.rate, args.warmup_s, warmup_s=0)
            for _ in range(args.rounds):
                os.kill(server.proc.pid, signal.SIGUSR1)
                result = generator.step(args.rate, args.seconds, warmup_s=0)
                counters = _read_report(server, report)
                n = max(counters.pop("requests"), 1)
                kinds = [tuple(k) for k in result.inspected]
                row = {
                    "requests": int(n),
                    "errors": result.errors,
                    "second_stage_share": round(sum(k[1] for k in kinds) / max(len(kinds), 1), 3),
                    "cpu_us_per_request": round(counters.pop("cpu_s") * 1e6 / n, 1),
                    **{step: round(counters.get(step, 0) / 1e3 / n, 1) for step in STEPS},
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            generator.close()
            server.stop()
    finally:
        report.unlink(missing_ok=True)
        _forget_sessions(args.redis_url, users)
    median = {key: float(np.median([r[key] for r in rows])) for key in rows[0]}
    print(json.dumps({"median": median, "rate": args.rate, "rounds": args.rounds}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-report"] and "--" in argv:
        split = argv.index("--")
        serve_counted(Path(argv[1]), argv[split + 1 :])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=".local/bundles/taobao", help="bundle to serve")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--users", type=int, default=2000, help="shoppers with 8-click sessions")
    parser.add_argument("--k", type=int, default=30, help="items per Recommend")
    parser.add_argument("--workdir", default=".local/request-stages", help="server log")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.rate, args.seconds, args.rounds, args.users, args.k) <= 0 or args.warmup_s < 0:
        parser.error("--rate, --seconds, --rounds, --users and --k must be positive")
    if not Path(args.bundle).exists():
        parser.error(f"no bundle at {args.bundle} (make bundle builds one)")
    measure(args)


if __name__ == "__main__":
    main()
