"""Fixtures for tests against the real Redis and Kafka that `make test` starts (`make up`).

Each test gets its own topics, consumer group and user ids, so tests never see each
other's data; processes are the real ``recsvc serve`` and ``recsvc ingest`` commands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError

REPO = Path(__file__).resolve().parents[2]
KAFKA = os.environ.get("RECSVC_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def admin() -> Iterator[KafkaAdminClient]:
    try:
        client = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10_000)
    except KafkaError as exc:
        pytest.fail(f"no Kafka at {KAFKA} ({exc}); `make up` starts one")
    yield client
    client.close()


@dataclass(frozen=True)
class Topics:
    events: str
    dlq: str
    group: str


@pytest.fixture
def topics(admin: KafkaAdminClient) -> Iterator[Topics]:
    run = uuid.uuid4().hex[:10]
    made = Topics(f"test.{run}.events", f"test.{run}.dlq", f"test-{run}")
    admin.create_topics([NewTopic(made.events, 3, 1), NewTopic(made.dlq, 1, 1)], timeout_ms=20_000)
    yield made
    admin.delete_topics([made.events, made.dlq], timeout_ms=20_000)


@pytest.fixture
def producer() -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=KAFKA, acks="all")
    yield client
    client.close(timeout=10)


def read_topic(topic: str, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """The first ``expected`` values of a topic, read from the beginning."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            values += [r.value for r in consumer]
    finally:
        consumer.close()
    return values


class Process:
    """A ``recsvc`` subcommand in a child process, stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsvc.cli", *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "RECSVC_LOG_FORMAT": "text", **(env or {})},
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """Start ``recsvc`` processes; all are stopped at the end of the test."""
    started: list[Process] = []

    def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        process = Process(args, log, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class PrivateService:
    """A server of the test's own, run by one of scripts/services/*.sh with ``env``."""

    script = ""
    env: dict[str, str]

    def _run(self, action: str) -> None:
        subprocess.run(
            ["bash", str(REPO / "scripts/services" / self.script), action],
            env=self.env,
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")


class PrivateRedis(PrivateService):
    """A Redis of the test's own, to stop and start at will."""

    script = "redis.sh"

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "REDIS_PORT": str(self.port), "REDIS_DIR": str(directory)}
        self.url = f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class PrivateKafka(PrivateService):
    """A Kafka broker of the test's own, to restart at will."""

    script = "kafka.sh"

    def __init__(self, directory: Path, topics: Topics) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DIR": str(directory),
            "RECSVC_TOPICS": f"{topics.events}:2 {topics.dlq}:1",
        }


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[tuple[PrivateKafka, Topics]]:
    run = uuid.uuid4().hex[:10]
    topics = Topics(f"own.{run}.events", f"own.{run}.dlq", f"own-{run}")
    broker = PrivateKafka(tmp_path / "kafka", topics)
    broker.start()
    yield broker, topics
    broker.stop()
