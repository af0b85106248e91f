"""Ingest against a broker that wants SASL/PLAIN: the settings reach kafka-python, the
password comes from the environment and shows in no log, and a login the broker refuses
stops ingest at start with the broker's reason (exit status 2) instead of retrying for ever."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis
from conftest import PrivateKafka, Topics, free_port, wait_for
from kafka import KafkaProducer

from recsvc.events import Event

USER, PASSWORD = "recsvc-ingest", f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def sasl_kafka(tmp_path: Path) -> tuple[PrivateKafka, Topics, str]:
    run = uuid.uuid4().hex[:10]
    topics = Topics(f"sasl.{run}.events", f"sasl.{run}.dlq", f"sasl-{run}")
    broker = PrivateKafka(tmp_path / "kafka", topics)
    port = free_port()
    broker.env |= {
        "KAFKA_SASL_PORT": str(port),
        "KAFKA_SASL_USER": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }
    broker.start()
    yield broker, topics, f"127.0.0.1:{port}"
    broker.stop()


def ingest_args(
    bundle: Path, redis_url: str, topics: Topics, bootstrap: str, mechanism: str = "PLAIN"
) -> list[str]:
    return [
        "ingest", "--bundle", str(bundle), "--redis-url", redis_url,
        "--kafka-bootstrap", bootstrap, "--events-topic", topics.events,
        "--dlq-topic", topics.dlq, "--group-id", topics.group, "--metrics-port", "0",
        "--watch-interval-s", "0", "--kafka-security-protocol", "SASL_PLAINTEXT",
        "--kafka-sasl-mechanism", mechanism, "--kafka-sasl-username", USER,
    ]  # fmt: skip


def test_ingest_reads_a_sasl_listener_with_the_password_from_the_environment(
    tiny_bundle: Path, sasl_kafka, redis_url: str, processes, tmp_path: Path
) -> None:
    broker, topics, sasl_bootstrap = sasl_kafka
    user = f"sasl-shopper-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send(topics.events, value=Event("e1", user, "a", "click", time.time()).to_json())
    producer.flush()
    producer.close()
    args = ingest_args(tiny_bundle, redis_url, topics, sasl_bootstrap)
    client = redis.Redis.from_url(redis_url)
    key = f"recsvc:session:{user}"
    try:
        # Refused logins, all at once: each stops at start with the broker's reason.
        wrong = "not-the-password"
        refusals = [  # (listener, mechanism, password, what the error says)
            (sasl_bootstrap, "PLAIN", wrong, "Authentication failed: Invalid username or "
             "password; check --kafka-sasl-username and $RECSVC_KAFKA_SASL_PASSWORD"),
            (sasl_bootstrap, "SCRAM-SHA-256", PASSWORD,
             "this listener takes PLAIN; check --kafka-sasl-mechanism"),
            (broker.bootstrap, "PLAIN", PASSWORD,
             "this listener takes no SASL login; check --kafka-security-protocol"),
        ]  # fmt: skip
        refused = [
            processes(
                ingest_args(tiny_bundle, redis_url, topics, listener, mechanism),
                tmp_path / f"refused-{n}.log",
                env={"RECSVC_KAFKA_SASL_PASSWORD": password},
            )
            for n, (listener, mechanism, password, _) in enumerate(refusals)
        ]
        for process, (listener, mechanism, _, reason) in zip(refused, refusals, strict=True):
            assert process.proc.wait(timeout=30) == 2, process.output()
            assert (
                f"recsvc ingest: error: Kafka at {listener} refused the SASL {mechanism} "
                f"login of user '{USER}': {reason}"
            ) in process.output()
            assert wrong not in process.output() and PASSWORD not in process.output()
        assert client.zcard(key) == 0  # nothing was read

        right = processes(
            args, tmp_path / "right.log", env={"RECSVC_KAFKA_SASL_PASSWORD": PASSWORD}
        )
        wait_for(lambda: client.zcard(key) == 1, what="the event through the SASL listener")
        right.stop()
        assert PASSWORD not in right.output()

        missing = processes(args, tmp_path / "missing.log")
        assert missing.proc.wait(timeout=30) == 2
        assert "needs the password in $RECSVC_KAFKA_SASL_PASSWORD" in missing.output()
    finally:
        client.delete(key)
        client.close()
