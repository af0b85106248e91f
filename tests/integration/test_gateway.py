"""``recsvc gateway`` in front of the real ``recsvc serve``, ``recsvc ingest``, Kafka and Redis."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Process, free_port, read_topic, wait_for
from test_stream_to_recommend import online_args


def call(method: str, url: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    """(status, JSON body) of one HTTP request, errors included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if data is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ready(base: str) -> bool:
    try:
        return call("GET", f"{base}/readyz")[0] == 200
    except OSError:
        return False


def start_stack(
    bundle: Path,
    redis_url: str,
    topics: Any,
    processes: Callable[..., Process],
    logs: Path,
    server_env: dict[str, str] | None = None,
) -> tuple[str, Process]:
    """``recsvc serve``, ``ingest`` and ``gateway`` on free ports, waited for until the
    gateway is ready; (the gateway's base URL, its process)."""
    grpc_port, http_port = free_port(), free_port()
    online = online_args(bundle, redis_url, topics)
    processes(["serve", *online, "--port", str(grpc_port)], logs / "serve.log", env=server_env)
    processes(["ingest", *online], logs / "ingest.log")
    gateway = processes(
        ["gateway", *online, "--gateway-port", str(http_port),
         "--gateway-grpc-target", f"127.0.0.1:{grpc_port}"],
        logs / "gateway.log",
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: ready(base), what="the gateway to be ready")
    return base, gateway


def test_recommend_and_events_over_http_end_to_end(
    tiny_bundle: Path, redis_url: str, topics, processes, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex
    # The server takes bearer tokens; the gateway passes the caller's header on.
    base, gateway = start_stack(tiny_bundle, redis_url, topics, processes, tmp_path,
                                {"RECSVC_AUTH_TOKENS": token})  # fmt: skip
    assert call("GET", f"{base}/healthz") == (200, {"status": "ok"})

    user = f"shopper-{uuid.uuid4().hex}"
    url = f"{base}/v1/recommend?user_id={user}&item_id=a&k=3"
    assert call("GET", url)[0] == 401  # no token: the server's UNAUTHENTICATED
    status, before = call("GET", url, token=token)
    assert status == 200 and len(before["items"]) == 3
    assert before["session_events_used"] == 0 and before["bundle_version"]

    # The server's own refusals come back as HTTP statuses with a JSON error.
    status, body = call("GET", f"{base}/v1/recommend?user_id={user}&item_id=ghost", token=token)
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    status, body = call("GET", f"{base}/v1/recommend?item_id=a&k=999", token=token)
    assert status == 400 and "k must be at most the pool size" in body["error"]["message"]

    # Events through the gateway reach Kafka, then ingest and Redis, then the ranking.
    sent = []
    for n, item in enumerate(["c", "d", "b"]):
        event = {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": "click",
                 "ts": 1000.0 + n}  # fmt: skip
        status, body = call("POST", f"{base}/v1/events", event)
        assert status == 202 and body["event_id"] == f"{user}-{n}"
        assert body["topic"] == topics.events and body["offset"] >= 0
        sent.append(event)
    status, body = call("POST", f"{base}/v1/events", {"user_id": user, "item_id": "b", "type": "x"})
    assert status == 400 and "unknown_type" in body["error"]["message"]
    on_topic = [json.loads(v) for v in read_topic(topics.events, expected=3)]
    assert on_topic == sent  # exactly the valid events, as the stream's JSON

    def personalized_by_three() -> bool:
        return call("GET", url, token=token)[1]["session_events_used"] == 3

    wait_for(personalized_by_three, what="the clicks to personalize the answer")
    after = call("GET", url, token=token)[1]
    # The window (a, b, d, c) puts b before c: e, b, c against e, c, b for a alone.
    assert after["personalized"] and [i["item_id"] for i in after["items"]] == ["e", "b", "c"]
    assert [i["item_id"] for i in before["items"]] == ["e", "c", "b"]
    status, explained = call("GET", f"{url}&explain=true", token=token)
    named = {b["item_id"] for item in explained["items"] for b in item["because"]}
    assert status == 200 and named and named <= {"b", "c", "d"}  # the shopper's clicks

    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    assert 'recsvc_gateway_requests_total{code="202",route="/v1/events"} 3.0' in metrics
    assert 'code="401",route="/v1/recommend"' in metrics
    assert gateway.stop() == 0  # SIGTERM: a clean stop
    assert "gateway: stopped" in gateway.output()


def test_a_gateway_without_its_server_and_broker_says_so(
    tiny_bundle: Path, processes, tmp_path: Path
) -> None:
    http_port, nothing = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    processes(
        ["gateway", "--gateway-port", str(http_port), "--gateway-grpc-target",
         f"127.0.0.1:{nothing}", "--kafka-bootstrap", f"127.0.0.1:{nothing}",
         "--gateway-timeout-s", "0.5"],
        tmp_path / "gateway.log",
    )  # fmt: skip

    def up() -> bool:
        try:
            return call("GET", f"{base}/healthz")[0] == 200
        except OSError:
            return False

    wait_for(up, what="the gateway")
    status, body = call("GET", f"{base}/readyz")
    assert status == 503 and body == {"grpc": "not serving", "kafka": "not connected"}
    status, body = call("GET", f"{base}/v1/recommend?user_id=u&item_id=a")
    assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
    status, body = call("POST", f"{base}/v1/events", {"user_id": "u", "item_id": "a",
                                                     "type": "click"})  # fmt: skip
    assert status == 503 and "Kafka" in body["error"]["message"]
