"""``recsvc serve --workers 2``: one port, one metrics endpoint, and no half-dead server."""

from __future__ import annotations

import signal
import socket
from contextlib import suppress
from pathlib import Path
from urllib.request import urlopen

import psutil
from conftest import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from recsvc.client import recommend, wait_serving


def samples(metrics_port: int, name: str) -> list[tuple[dict[str, str], float]]:
    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def workers_of(server) -> list[psutil.Process]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = psutil.Process(server.proc.pid).children()
    return [p for p in children if "spawn_main" in " ".join(p.cmdline())]


def start(tiny_bundle: Path, redis_url: str, processes, tmp_path: Path):
    port, metrics_port = free_port(), free_port()
    args = ["serve", "--bundle", str(tiny_bundle), "--redis-url", redis_url]
    args += ["--port", str(port), "--metrics-port", str(metrics_port), "--workers", "2"]
    server = processes([*args, "--watch-interval-s", "0"], tmp_path / "serve.log")
    assert wait_serving(f"127.0.0.1:{port}", 60), server.output()
    wait_for(lambda: len(workers_of(server)) == 2, what="two workers")
    return server, port, metrics_port


def test_workers_share_the_port_and_report_through_one_endpoint(
    tiny_bundle: Path, redis_url: str, processes, tmp_path: Path
) -> None:
    server, port, metrics_port = start(tiny_bundle, redis_url, processes, tmp_path)
    for n in range(30):  # a new connection each time, spread over the workers by the kernel
        assert recommend(f"127.0.0.1:{port}", f"worker-test-{n}", "a", 2).items

    served = samples(metrics_port, "recsvc_request_latency_seconds_count")
    assert sum(value for _, value in served) == 30
    serving = {labels["pid"] for labels, value in samples(metrics_port, "recsvc_bundle_info")}
    workers = workers_of(server)
    assert serving == {str(p.pid) for p in workers}

    assert server.stop() == 0
    for worker in workers:
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_a_worker_that_dies_stops_the_whole_server(
    tiny_bundle: Path, redis_url: str, processes, tmp_path: Path
) -> None:
    server, _, _ = start(tiny_bundle, redis_url, processes, tmp_path)
    first, second = workers_of(server)
    first.send_signal(signal.SIGKILL)
    wait_for(lambda: server.proc.poll() is not None, timeout_s=30, what="the supervisor to exit")
    assert server.proc.returncode == 1
    assert "a worker exited" in server.output()
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE


def test_a_taken_metrics_port_is_a_clear_error_and_leaves_no_worker(
    tiny_bundle: Path, redis_url: str, processes, tmp_path: Path
) -> None:
    seen: set[int] = set()

    def exited() -> bool:
        with suppress(psutil.NoSuchProcess):
            seen.update(p.pid for p in workers_of(server))
        return server.proc.poll() is not None

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["serve", "--bundle", str(tiny_bundle), "--redis-url", redis_url]
        args += ["--port", str(free_port()), "--metrics-port", str(taken.getsockname()[1])]
        server = processes([*args, "--workers", "2"], tmp_path / "serve.log")
        wait_for(exited, timeout_s=30, what="the supervisor to exit")
    assert server.proc.returncode == 2
    assert "cannot serve metrics" in server.output()
    for pid in seen:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
