"""Run a server as several processes sharing one port, so it uses every core.

Python runs one request at a time per process, so a 2-core machine needs two server
processes to use both cores. Each worker is a fresh interpreter (``spawn``: no forked
gRPC or asyncio state) that binds the same port; the kernel spreads new connections over
them (``SO_REUSEPORT``, on by default in gRPC on Linux). The supervisor forwards SIGTERM,
SIGINT and SIGHUP to every worker, and when one dies on its own it stops the others and
exits non-zero, so the orchestrator (systemd, Kubernetes) restarts the whole server rather
than leaving it at partial capacity unnoticed.

Metrics: the workers write Prometheus samples to files in a shared directory
(prometheus_client's multiprocess mode) and the supervisor serves their sum on the metrics
port, so one scrape still sees the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from recsvc.exceptions import ConfigError

log = logging.getLogger(__name__)
#: prometheus_client reads this at import time; it must be set before a worker starts.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(
    workers: int,
    target: Callable[..., Any],
    args: tuple[Any, ...] = (),
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    stop_timeout_s: float = 10.0,
) -> int:
    """Run ``target(*args)`` in ``workers`` processes until a signal or a worker exits.

    Returns the exit status for the supervisor: 0 after a requested stop, 1 when a worker
    ended on its own.
    """
    metrics_dir = tempfile.mkdtemp(prefix="recsvc-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=args, name=f"recsvc-worker-{n}", daemon=False)
        for n in range(workers)
    ]
    stopping = False  # a stop was asked for (not a worker's own exit)

    def signal_all(signum: int) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        signal_all(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        for process in processes:
            process.start()
        if metrics_port:
            _serve_metrics(metrics_dir, metrics_port, metrics_host)
        log.info("workers started", extra={"workers": workers, "pids": _pids(processes)})
        while not stopping and all(p.is_alive() for p in processes):
            time.sleep(0.2)
        if not stopping:
            dead = [p for p in processes if not p.is_alive()]
            log.error(
                "a worker exited; stopping the others",
                extra={"pids": _pids(dead), "exitcodes": [p.exitcode for p in dead]},
            )
        return 0 if stopping else 1
    finally:
        # Also when start-up failed (e.g. the metrics port is taken): leave no worker behind.
        signal_all(signal.SIGTERM)
        for process in processes:
            if process.pid is None:
                continue
            process.join(stop_timeout_s)
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(MULTIPROC_ENV, None)


def _serve_metrics(metrics_dir: str, port: int, host: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        message = f"--metrics-port: cannot serve metrics on {host}:{port}: {exc}"
        raise ConfigError(message) from exc


def _pids(processes: list[Any]) -> list[int | None]:
    return [p.pid for p in processes]
