"""``sigterm-drain``: one of two servers sent SIGTERM under load; its calls move, none fails.

Two ``recsvc serve`` processes (``--shutdown-grace-s`` = ``--sigterm-grace-s``) read the
sessions of ``--users`` shoppers from ``--redis-url``. The load's client spreads
its calls over both as a gRPC client in front of a pair of servers would: the
``round_robin`` policy with client-side health checking, asked for by the service config's
``healthCheckConfig`` (the ``grpc.health.v1`` Watch of the Recommender service;
:func:`loadtest.chaos.load.balanced`). grpcio supports it: the channel stops picking a
server as soon as its Watch says NOT_SERVING. A call that reaches a server after it stopped
accepting is refused before the server reads it (HTTP/2 GOAWAY, REFUSED_STREAM), and gRPC's
transparent retry sends it to the other; no retry policy is configured.

Each of ``--sigterm-rounds`` rounds starts a fresh server beside the one that stays, and
open-loop load (:mod:`loadtest.chaos.load`, a 2 s client deadline) at ``--sigterm-rate``
over both. After ``--sigterm-before-s`` the fresh server gets SIGTERM: it says NOT_SERVING,
refuses new calls, finishes those in flight within the grace and exits (recsvc/server.py);
the load goes on ``--sigterm-after-s`` after it exited, on the other server alone.

Figures, a list per round where it says so: ``calls``; ``failed_calls``, by status code;
``in_flight_at_sigterm``, the calls due before the signal and not answered by then (to
either server: a reply does not say which server answered), and ``in_flight_answered``,
how many of them were answered; ``signalled_answered`` (per round), the calls the
signalled server had answered before the signal (its /metrics, warm-up calls left out), so
that it did take its share; ``exit_s`` (per round), from the signal to the process's exit,
with ``exit_codes``.

The run fails on any failed call, on a signalled server that answered no call (nothing to
drain), and on one that did not exit with status 0 within the grace plus
``EXIT_MARGIN_S``.

    python -m loadtest.chaos --scenario sigterm-drain --sigterm-rounds 5 --sigterm-rate 200
"""

from __future__ import annotations

import argparse
import math
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.capacity import Server
from loadtest.chaos.common import empty_database, serve
from loadtest.chaos.load import (
    CallLoad,
    Calls,
    balanced,
    fill_sessions,
    recommend_requests,
    served_calls,
)
from loadtest.ingest_bench import free_port
from recsvc.client import popular_items
from recsvc.server import SERVICE_NAME

#: How much later than the grace a signalled server may exit (the interpreter's exit,
#: closing the store) before the run fails.
EXIT_MARGIN_S = 3.0
CALL_TIMEOUT_S = 2.0
REQUESTS = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sigterm-rounds", type=int, default=5, help="servers sent SIGTERM")
    parser.add_argument("--sigterm-rate", type=float, default=200.0, help="calls a second")
    parser.add_argument(
        "--sigterm-grace-s", type=float, default=5.0, help="the servers' --shutdown-grace-s"
    )
    parser.add_argument(
        "--sigterm-before-s",
        type=float,
        default=3.0,
        help="seconds of load over both servers before the signal",
    )
    parser.add_argument(
        "--sigterm-after-s",
        type=float,
        default=3.0,
        help="seconds of load after the signalled server exited",
    )


def check_arguments(args: argparse.Namespace) -> str | None:
    if args.sigterm_rounds < 1 or args.sigterm_rate <= 0 or args.sigterm_grace_s < 0:
        return "--sigterm-rounds must be >= 1, --sigterm-rate > 0 and --sigterm-grace-s >= 0"
    if min(args.sigterm_before_s, args.sigterm_after_s) <= 0:
        return "--sigterm-before-s and --sigterm-after-s must be > 0"
    return None


def wait_exit(server: Server, deadline_s: float) -> float | None:
    """Seconds until ``server`` exited, or None if it had not after ``deadline_s``."""
    start = time.monotonic()
    while server.proc.poll() is None:
        if time.monotonic() - start > deadline_s:
            return None
        time.sleep(0.01)
    return time.monotonic() - start


def drain_round(
    args: argparse.Namespace, stays: str, requests: list[bytes], log: Path
) -> dict[str, Any]:
    """One fresh server beside ``stays``, load over both, SIGTERM to the fresh one."""
    metrics_port = free_port()
    # The later --metrics-port wins over serve()'s "--metrics-port 0".
    server, target = serve(
        args, args.redis_url, log, "--watch-interval-s", "0",
        "--shutdown-grace-s", str(args.sigterm_grace_s), "--metrics-port", str(metrics_port),
    )  # fmt: skip
    load: CallLoad | None = None
    try:
        address, options = balanced([stays, target], SERVICE_NAME)
        load = CallLoad(address, requests, options=options, inspect=None, timeout_s=CALL_TIMEOUT_S)
        warm = served_calls(metrics_port) or 0
        longest = args.sigterm_before_s + args.sigterm_grace_s + EXIT_MARGIN_S
        first = load.start(args.sigterm_rate, longest + args.sigterm_after_s + args.timeout_s)
        time.sleep(max(0.0, first + args.sigterm_before_s - time.time()))
        answered = served_calls(metrics_port)
        signalled = time.time()
        server.proc.send_signal(signal.SIGTERM)
        exit_s = wait_exit(server, args.sigterm_grace_s + EXIT_MARGIN_S + 10.0)
        exited = time.time()
        time.sleep(args.sigterm_after_s)
        calls = load.finish(early=True)
    finally:
        if load is not None:
            load.close()
        server.stop()  # SIGKILL if it is still up after 15 s more
    in_flight = calls.select((calls.scheduled <= signalled) & (calls.done > signalled))
    return {
        "calls": calls,
        "in_flight": len(in_flight),
        "in_flight_answered": int(in_flight.ok.sum()),
        "signalled_answered": None if answered is None else answered - warm,
        "exit_s": None if exit_s is None else round(exit_s, 3),
        "exit_code": server.proc.returncode if exit_s is not None else None,
        "after_exit": len(calls.between(exited, math.inf)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Sessions, the server that stays, then ``--sigterm-rounds`` drain rounds."""
    client = empty_database(args.redis_url)
    tag = f"chaos-{uuid.uuid4().hex[:8]}"
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    items = popular_items(args.bundle, args.items)
    stays: Server | None = None
    started = time.monotonic()
    try:
        users = fill_sessions(args.redis_url, tag, args.users, items, args.seed)
        requests = recommend_requests(users, items, REQUESTS, args.seed + 1)
        stays, stays_target = serve(
            args, args.redis_url, workdir / f"{tag}-serve-stays.log",
            "--watch-interval-s", "0", "--shutdown-grace-s", str(args.sigterm_grace_s),
        )  # fmt: skip
        rounds = [
            drain_round(args, stays_target, requests, workdir / f"{tag}-serve-{n}.log")
            for n in range(args.sigterm_rounds)
        ]
    finally:
        client.flushdb()
        client.close()
        if stays is not None:
            stays.stop()
    calls = Calls.joined([r["calls"] for r in rounds])
    failed: Counter[str] = Counter()
    for r in rounds:
        failed.update(r["calls"].errors())
    exits = [r["exit_s"] for r in rounds]
    return {
        "scenario": "sigterm-drain",
        "users": len(users),
        "rounds": len(rounds),
        "rate": args.sigterm_rate,
        "grace_s": args.sigterm_grace_s,
        "calls": len(calls),
        "failed_calls": dict(failed),
        "p99_ms": None if (p99 := calls.percentile(99)) is None else round(p99, 2),
        "in_flight_at_sigterm": [r["in_flight"] for r in rounds],
        "in_flight_answered": [r["in_flight_answered"] for r in rounds],
        "signalled_answered": [r["signalled_answered"] for r in rounds],
        "calls_after_exit": [r["after_exit"] for r in rounds],
        "exit_s": exits,
        "max_exit_s": None if None in exits else float(np.max(exits)),
        "exit_codes": [r["exit_code"] for r in rounds],
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def failures(figures: dict[str, Any]) -> list[str]:
    found = [f"failed calls {figures['failed_calls']}"] if figures["failed_calls"] else []
    if not all(figures["signalled_answered"]):
        found.append(f"a signalled server answered no call: {figures['signalled_answered']}")
    limit = figures["grace_s"] + EXIT_MARGIN_S
    if any(s is None or s > limit for s in figures["exit_s"]):
        found.append(f"a server did not exit within {limit:g} s: {figures['exit_s']}")
    if any(code != 0 for code in figures["exit_codes"]):
        found.append(f"exit codes {figures['exit_codes']}")
    return found
