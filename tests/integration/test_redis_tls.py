"""Sessions in a Redis that serves TLS only and wants a password, through both of recsvc's
Redis clients: redis-py (ingest's writes) and the multiplexed reader (the server's reads).
One ``--redis-url`` serves both: ``rediss://:<password>@host:port/db?ssl_ca_certs=<CA file>``,
redis-py's query parameters, which the reader takes too."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import trustme
from conftest import Topics, free_port, wait_for
from kafka import KafkaProducer
from test_stream_to_recommend import online_args, recommend

from recsvc.events import Event
from recsvc.exceptions import SessionStoreError
from recsvc.sessions import KEY_PREFIX, RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb

PASSWORD = f"pw-{uuid.uuid4().hex}"


class TlsRedis:
    """A ``redis-server`` of the test's own that listens with TLS only (``--port 0``) and
    wants ``PASSWORD``; its certificate is for 127.0.0.1, signed by a CA made for the test.
    Client certificates are optional, but checked against that CA when given."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.authority = trustme.CA()
        leaf = self.authority.issue_cert("127.0.0.1", "localhost")
        self.ca = directory / "ca.pem"
        self.authority.cert_pem.write_to_path(str(self.ca))
        leaf.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
        leaf.private_key_pem.write_to_path(str(directory / "server.key"))
        self.port = free_port()
        # A config file, so that the password shows in no process list.
        config = directory / "redis.conf"
        config.write_text(
            f"port 0\ntls-port {self.port}\nbind 127.0.0.1\n"
            f"tls-cert-file {directory / 'server.pem'}\ntls-key-file {directory / 'server.key'}\n"
            f"tls-ca-cert-file {self.ca}\ntls-auth-clients optional\nrequirepass {PASSWORD}\n"
            f'save ""\nappendonly no\ndir {directory}\n'
        )
        self.log = directory / "redis.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["redis-server", str(config)], stdout=log, stderr=subprocess.STDOUT
            )

    def url(self, password: str = PASSWORD, query: str | None = None) -> str:
        """``rediss://`` with ``password``, and ``query`` (default: the test CA)."""
        if query is None:
            query = f"ssl_ca_certs={quote(str(self.ca))}"
        return f"rediss://:{password}@127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def client_certificate(self, name: str, authority: trustme.CA) -> str:
        """The query parameters of a client certificate ``authority`` signs."""
        leaf = authority.issue_cert(f"{name}@recsvc.test")
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return f"ssl_certfile={quote(str(cert))}&ssl_keyfile={quote(str(key))}"

    def answers(self) -> bool:
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path / "tls-redis")
    try:
        wait_for(
            lambda: server.proc.poll() is not None or server.answers(),
            timeout_s=15,
            what="redis-server with TLS",
        )
        if server.proc.poll() is not None:  # e.g. a redis-server built without TLS
            pytest.fail(f"redis-server did not start with TLS:\n{server.log.read_text()}")
        yield server
    finally:
        server.stop()


def store_calls(url: str, user: str) -> dict[str, object]:
    """What an append (redis-py) and a read (the multiplexed reader) of ``user``'s session
    through a store on ``url`` give: the result, or the SessionStoreError's message."""

    async def calls() -> dict[str, object]:
        store = RedisSessionStore(url, length=20, ttl_s=60, timeout_s=2.0)
        outcome: dict[str, object] = {}
        try:
            async with asyncio.timeout(20):  # a hang fails the test
                event = Event(f"{user}-0", user, "b", "click", time.time())
                for name, call in (
                    ("append", lambda: store.append([event])),
                    ("read", lambda: store.recent(user)),
                ):
                    try:
                        outcome[name] = await call()
                    except SessionStoreError as exc:
                        outcome[name] = str(exc)
        finally:
            await store.aclose()
        return outcome

    return asyncio.run(calls())


def json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_a_session_written_over_tls_is_read_back_personalized_through_the_server(
    tiny_bundle: Path,
    tls_redis: TlsRedis,
    topics: Topics,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    url = tls_redis.url()
    port = free_port()
    server = processes(
        ["serve", *online_args(tiny_bundle, url, topics, port)], tmp_path / "serve.log"
    )
    ingest = processes(["ingest", *online_args(tiny_bundle, url, topics)], tmp_path / "ingest.log")
    wait_for(lambda: "serving" in server.output(), what="the server")
    user = f"tls-shopper-{uuid.uuid4().hex}"
    before = recommend(port, user)
    # The session was read (over TLS), and is empty: the item alone, no fallback.
    assert before.personalized and before.session_events_used == 0
    assert before.fallback_reason == pb.FALLBACK_REASON_UNSPECIFIED

    for n, item in enumerate(["c", "d", "b"]):
        event = Event(f"{user}-{n}", user, item, "click", time.time())
        producer.send(topics.events, key=user.encode(), value=event.to_json())
    producer.flush()
    answers: list[pb.RecommendResponse] = []

    def personalized() -> bool:
        answers.append(recommend(port, user))
        return answers[-1].session_events_used == 3

    wait_for(personalized, what="the session, written and read over TLS")
    assert answers[-1].personalized
    assert answers[-1].fallback_reason == pb.FALLBACK_REASON_UNSPECIFIED
    client = redis.Redis.from_url(url)
    try:
        assert client.zcard(KEY_PREFIX + user) == 3  # in the TLS Redis
    finally:
        client.close()
    for process in (server, ingest):
        assert process.stop() == 0
        assert PASSWORD not in process.output()


def test_a_wrong_password_is_a_clear_error_not_a_crash_or_a_hang(
    tiny_bundle: Path,
    tls_redis: TlsRedis,
    topics: Topics,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    user = f"tls-wrong-{uuid.uuid4().hex}"
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = tls_redis.url(password=wrong)
    assert store_calls(url, user) == {
        "append": "session write failed: invalid username-password pair or user is disabled.",
        "read": "session read failed: cannot connect to Redis: "
        "RedisReplyError('WRONGPASS invalid username-password pair or user is disabled.')",
    }

    json_logs = {"RECSVC_LOG_FORMAT": "json"}  # with every extra field, the error among them
    port = free_port()
    server = processes(
        ["serve", *online_args(tiny_bundle, url, topics, port)], tmp_path / "serve.log", json_logs
    )
    ingest = processes(
        ["ingest", *online_args(tiny_bundle, url, topics)], tmp_path / "ingest.log", json_logs
    )
    wait_for(lambda: "serving" in server.output(), what="the server")
    # The server answers, unpersonalized, and says why.
    answer = recommend(port, user)
    assert answer.fallback_reason == pb.FALLBACK_REASON_SESSION_STORE_UNAVAILABLE
    assert len(answer.items) == 4
    unavailable = [
        e for e in json_lines(server.output()) if e["msg"] == "session store unavailable"
    ]
    assert "WRONGPASS invalid username-password pair" in str(unavailable[0]["error"])

    # Ingest keeps the event (uncommitted) and retries, saying why.
    event = Event(f"{user}-0", user, "b", "click", time.time())
    producer.send(topics.events, key=user.encode(), value=event.to_json()).get(timeout=10)
    wait_for(lambda: "redis call failed; retrying" in ingest.output(), what="a Redis error")
    retries = [e for e in json_lines(ingest.output()) if e["msg"] == "redis call failed; retrying"]
    assert retries[0]["error"] == (
        "session write failed: invalid username-password pair or user is disabled."
    )
    assert ingest.proc.poll() is None  # not a crash
    for process in (server, ingest):
        assert process.stop() == 0  # nor a hang: SIGTERM stops each
        assert wrong not in process.output() and PASSWORD not in process.output()


def test_a_client_without_the_ca_is_refused_and_both_clients_take_the_same_tls_parameters(
    tls_redis: TlsRedis,
) -> None:
    user = f"tls-no-ca-{uuid.uuid4().hex}"
    refused = store_calls(tls_redis.url(query=""), user)  # the system's CAs only
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused["append"])
    assert str(refused["read"]).startswith(
        "session read failed: cannot connect to Redis: SSLCertVerificationError("
    )
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused["read"])

    # The same parameters reach both clients: with the CA, told not to check at all, and
    # with a client certificate, which the server checks.
    ca = f"ssl_ca_certs={quote(str(tls_redis.ca))}"
    ours = tls_redis.client_certificate("ours", tls_redis.authority)
    for query in (ca, "ssl_cert_reqs=none", f"{ca}&{ours}"):
        fine = store_calls(tls_redis.url(query=query), user)
        assert isinstance(fine["append"], int), fine
        assert [e.event_id for e in fine["read"]] == [f"{user}-0"], fine
    stranger = tls_redis.client_certificate("stranger", trustme.CA())
    refused = store_calls(tls_redis.url(query=f"{ca}&{stranger}"), user)
    # Redis drops the connection after the handshake (TLS 1.3): the reason is in its log.
    assert str(refused["append"]).startswith("session write failed: "), refused
    assert str(refused["read"]).startswith("session read failed: cannot connect to Redis: ")


def test_tls_settings_that_cannot_work_stop_serve_and_ingest_at_start(
    tiny_bundle: Path, topics: Topics, processes, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"  # never reached: the settings fail first
    bad = {  # the URL: what the error says
        f"rediss://:{PASSWORD}@{address}/0?ssl_ca_certs={tmp_path / 'missing.pem'}": (
            "unusable TLS settings: [Errno 2] No such file or directory"
        ),
        f"rediss://:{PASSWORD}@{address}/0?ssl_ca_cert=/etc/ssl/ca.pem": (
            "unknown TLS parameter: "  # a typo of ssl_ca_certs
        ),
        f"redis://:{PASSWORD}@{address}/0?ssl_ca_certs=/etc/ssl/ca.pem": (
            "ssl_* parameters need a rediss:// URL"
        ),
    }
    started = []
    for n, (url, reason) in enumerate(bad.items()):
        for command in ("serve", "ingest"):
            args = [command, *online_args(tiny_bundle, url, topics)]
            started.append((processes(args, tmp_path / f"{command}-{n}.log"), command, url, reason))
    for process, command, url, reason in started:
        assert process.proc.wait(timeout=30) == 2, process.output()
        shown = url.replace(PASSWORD, "***")
        assert f"recsvc {command}: error: bad Redis URL '{shown}': {reason}" in process.output()
        assert PASSWORD not in process.output()
