"""Ingest against a broker's TLS listeners. SSL (mutual TLS): ``--kafka-security-protocol SSL``
with ``--kafka-ssl-cafile`` (and a client certificate) reaches both of ingest's Kafka clients,
and a client that cannot check the broker's certificate, or has none of its own, is refused
with the TLS error in its log. SASL_SSL: the same CA and a password, which, when wrong, stops
ingest at start with the broker's reason (exit status 2)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import trustme
from conftest import PrivateKafka, Topics, free_port, wait_for
from cryptography.hazmat.primitives import serialization
from kafka import KafkaConsumer, KafkaProducer

from recsvc.events import Event
from recsvc.sessions import KEY_PREFIX

USER, PASSWORD = "recsvc-ingest", f"pw-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class SslBroker:
    broker: PrivateKafka
    topics: Topics
    bootstrap: str  # the SSL listener
    sasl_bootstrap: str  # the SASL_SSL listener
    ca: Path
    client_cert: Path
    client_key: Path


def pkcs8(private_key_pem: bytes) -> bytes:
    """The key as unencrypted PKCS#8, the PEM form Kafka's keystores read."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def ssl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SslBroker]:
    """One broker for the module's tests (each reads with a consumer group of its own)."""
    pems = tmp_path_factory.mktemp("pems")
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    client = authority.issue_cert("recsvc-ingest")
    files = {
        "ca.pem": authority.cert_pem.bytes(),
        "server.pem": server.cert_chain_pems[0].bytes(),
        "server.key": pkcs8(server.private_key_pem.bytes()),
        "client.pem": client.cert_chain_pems[0].bytes(),
        "client.key": client.private_key_pem.bytes(),
    }
    for name, data in files.items():
        (pems / name).write_bytes(data)
    run = uuid.uuid4().hex[:10]
    topics = Topics(f"ssl.{run}.events", f"ssl.{run}.dlq", f"ssl-{run}")
    broker = PrivateKafka(tmp_path_factory.mktemp("kafka"), topics)
    ssl_port, sasl_port = free_port(), free_port()
    broker.env |= {
        "KAFKA_SSL_PORT": str(ssl_port),
        "KAFKA_SSL_CERT": str(pems / "server.pem"),
        "KAFKA_SSL_KEY": str(pems / "server.key"),
        "KAFKA_SSL_CA": str(pems / "ca.pem"),  # the SSL listener requires client certificates
        "KAFKA_SASL_PORT": str(sasl_port),
        "KAFKA_SASL_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USER": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }
    broker.start()
    try:
        yield SslBroker(
            broker,
            topics,
            f"127.0.0.1:{ssl_port}",
            f"127.0.0.1:{sasl_port}",
            pems / "ca.pem",
            pems / "client.pem",
            pems / "client.key",
        )
    finally:
        broker.stop()


def ingest_args(
    bundle: Path, redis_url: str, kafka: SslBroker, group: str, protocol: str, *tls: str
) -> list[str]:
    bootstrap = kafka.bootstrap if protocol == "SSL" else kafka.sasl_bootstrap
    return [
        "ingest", "--bundle", str(bundle), "--redis-url", redis_url,
        "--kafka-bootstrap", bootstrap, "--events-topic", kafka.topics.events,
        "--dlq-topic", kafka.topics.dlq, "--group-id", group, "--metrics-port", "0",
        "--watch-interval-s", "0", "--live", "0", "--session-ttl-s", "60",
        "--kafka-security-protocol", protocol, *tls,
    ]  # fmt: skip


def send_over_ssl(kafka: SslBroker, *values: bytes) -> None:
    """Produce on the SSL listener, with the client certificate."""
    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap,
        security_protocol="SSL",
        ssl_cafile=str(kafka.ca),
        ssl_certfile=str(kafka.client_cert),
        ssl_keyfile=str(kafka.client_key),
        acks="all",
    )
    for value in values:
        producer.send(kafka.topics.events, value=value)
    producer.flush()
    producer.close()


def read_dead_letters(kafka: SslBroker, expected: int, timeout_s: float = 30.0) -> list[bytes]:
    """The first ``expected`` dead letters, read on the broker's plaintext listener."""
    consumer = KafkaConsumer(
        kafka.topics.dlq,
        bootstrap_servers=kafka.broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            values += [record.value for record in consumer]
    finally:
        consumer.close()
    return values


def test_ingest_consumes_and_dead_letters_over_ssl_and_a_client_without_the_ca_is_refused(
    tiny_bundle: Path, ssl_kafka: SslBroker, redis_url: str, processes, tmp_path: Path
) -> None:
    kafka = ssl_kafka
    user = f"ssl-shopper-{uuid.uuid4().hex[:8]}"
    send_over_ssl(kafka, Event(f"{user}-0", user, "a", "click", time.time()).to_json())
    send_over_ssl(kafka, b"{not json")
    client = redis.Redis.from_url(redis_url)
    key = KEY_PREFIX + user
    group = kafka.topics.group
    ca = ["--kafka-ssl-cafile", str(kafka.ca)]
    certificate = ["--kafka-ssl-certfile", str(kafka.client_cert)]
    certificate += ["--kafka-ssl-keyfile", str(kafka.client_key)]
    try:
        # Each from the start of the topic (a group of its own): neither gets anything.
        refused = {
            # Only the system's CAs: the broker's certificate cannot be checked.
            ("CERTIFICATE_VERIFY_FAILED",): processes(
                ingest_args(tiny_bundle, redis_url, kafka, f"{group}-no-ca", "SSL"),
                tmp_path / "no-ca.log",
            ),
            # The CA, but no certificate of its own for the broker to check (the alert
            # depends on the TLS version).
            ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"): processes(
                ingest_args(tiny_bundle, redis_url, kafka, f"{group}-no-cert", "SSL", *ca),
                tmp_path / "no-cert.log",
            ),
        }
        for errors, process in refused.items():
            wait_for(
                lambda p=process, e=errors: any(error in p.output() for error in e),
                what=f"{' or '.join(errors)} in the log",
            )
            assert process.proc.poll() is None  # it retries, as when Kafka is down
        assert client.zcard(key) == 0
        for process in refused.values():
            process.proc.kill()  # SIGTERM waits for kafka-python's bootstrap to give up (30 s)

        ingest = processes(
            ingest_args(tiny_bundle, redis_url, kafka, group, "SSL", *ca, *certificate),
            tmp_path / "ingest.log",
        )
        wait_for(lambda: client.zcard(key) == 1, what="the event through the SSL listener")
        # The dead-letter producer goes over SSL too; read back on the plaintext listener.
        dead = [json.loads(v) for v in read_dead_letters(kafka, expected=1)]
        assert [(d["reason"], d["value"]) for d in dead] == [("not_json", "{not json")]
        assert ingest.stop() == 0
    finally:
        client.delete(key)
        client.close()


def test_ingest_logs_in_over_sasl_ssl_and_a_wrong_password_stops_it_at_start(
    tiny_bundle: Path, ssl_kafka: SslBroker, redis_url: str, processes, tmp_path: Path
) -> None:
    kafka = ssl_kafka
    user = f"sasl-ssl-shopper-{uuid.uuid4().hex[:8]}"
    send_over_ssl(kafka, Event(f"{user}-0", user, "b", "click", time.time()).to_json())
    group = f"{kafka.topics.group}-sasl"
    args = ingest_args(
        tiny_bundle, redis_url, kafka, group, "SASL_SSL", "--kafka-ssl-cafile", str(kafka.ca),
        "--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", USER,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    key = KEY_PREFIX + user
    try:
        wrong = f"wrong-{uuid.uuid4().hex}"
        refused = processes(args, tmp_path / "wrong.log", env={"RECSVC_KAFKA_SASL_PASSWORD": wrong})
        assert refused.proc.wait(timeout=30) == 2, refused.output()
        assert (
            f"recsvc ingest: error: Kafka at {kafka.sasl_bootstrap} refused the SASL PLAIN login "
            f"of user '{USER}': Authentication failed: Invalid username or password; check "
            "--kafka-sasl-username and $RECSVC_KAFKA_SASL_PASSWORD"
        ) in refused.output()
        assert client.zcard(key) == 0

        ingest = processes(
            args, tmp_path / "right.log", env={"RECSVC_KAFKA_SASL_PASSWORD": PASSWORD}
        )
        wait_for(lambda: client.zcard(key) == 1, what="the event through the SASL_SSL listener")
        assert ingest.stop() == 0
        for process in (refused, ingest):
            assert wrong not in process.output() and PASSWORD not in process.output()
    finally:
        client.delete(key)
        client.close()
