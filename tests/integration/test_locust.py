"""The Locust shoppers against a real ``recsvc serve`` + ``recsvc ingest``, Kafka and Redis."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from conftest import KAFKA, REPO, free_port, wait_for
from test_gateway import start_stack
from test_stream_to_recommend import online_args

from recsvc.sessions import KEY_PREFIX


def locust_stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of Locust's ``<prefix>_stats.csv`` by (type, name)."""
    with Path(f"{prefix}_stats.csv").open(newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def run_locust(
    locustfile: str, host: str, report: Path, users: str, bundle: Path, *options: str
) -> str:
    """Six shoppers of ``users`` for 8 s with short think times; Locust's output."""
    run = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", locustfile, "--headless"),
            *("-u", "4", "-r", "4", "-t", "8s", "-H", host, "--csv", str(report)),
            *("--only-summary", "--bundle", str(bundle), "--user-prefix", users),
            *("--user-pool", "6", "--think-min", "0.1", "--think-max", "0.3"),
            *("--cart-rate", "0.3", "--seed", "3", *options),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    return output


def test_shoppers_are_reported_and_their_clicks_personalize_later_replies(
    tiny_bundle: Path, redis_url: str, topics, processes, tmp_path: Path
) -> None:
    port = free_port()
    server = processes(
        ["serve", *online_args(tiny_bundle, redis_url, topics, port)], tmp_path / "serve.log"
    )
    ingest = processes(
        ["ingest", *online_args(tiny_bundle, redis_url, topics)], tmp_path / "ingest.log"
    )
    wait_for(lambda: "serving" in server.output(), what="the server")
    users = f"locust-test-{uuid.uuid4().hex[:8]}-"
    report = tmp_path / "run"
    output = run_locust(
        "loadtest/locustfile.py", f"127.0.0.1:{port}", report, users, tiny_bundle,
        "--kafka", KAFKA, "--topic", topics.events,
    )  # fmt: skip

    stats = locust_stats(report)
    recommend, clicks = stats["grpc", "Recommend"], stats["kafka", "click"]
    assert int(recommend["Request Count"]) > 0
    assert int(recommend["Failure Count"]) == 0
    assert float(recommend["Average Content Size"]) > 0
    assert int(clicks["Request Count"]) > 0
    assert int(clicks["Failure Count"]) == 0

    # The clicks went through Kafka and ingest into the shoppers' Redis sessions ...
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: any(client.scan_iter(f"{KEY_PREFIX}{users}*")), timeout_s=10, what="sessions")
    sessions = list(client.scan_iter(f"{KEY_PREFIX}{users}*"))
    assert 0 < len(sessions) <= 6
    # ... and personalized the later replies.
    summary = json.loads(Path(f"{report}_personalized.json").read_text())
    assert summary["user_prefix"] == users
    assert 0 < summary["personalized"] < summary["recommend_replies"]  # the first views: none
    assert summary["fallback_reasons"]["ITEM_ONLY"] > 0
    assert "recsvc shoppers:" in output
    ingest.stop()  # nothing writes these sessions any more
    client.delete(*client.scan_iter(f"{KEY_PREFIX}{users}*"))


def test_the_same_shoppers_through_the_http_gateway(
    tiny_bundle: Path, redis_url: str, topics, processes, tmp_path: Path
) -> None:
    base, _ = start_stack(tiny_bundle, redis_url, topics, processes, tmp_path)
    users = f"locust-http-{uuid.uuid4().hex[:8]}-"
    report = tmp_path / "run"
    run_locust("loadtest/locustfile_http.py", base, report, users, tiny_bundle)

    stats = locust_stats(report)
    assert {t for t, _ in stats if t != ""} == {"GET", "POST"}  # no gRPC or Kafka rows
    recommend, clicks = stats["GET", "/v1/recommend"], stats["POST", "/v1/events click"]
    assert int(recommend["Request Count"]) > 0 and int(recommend["Failure Count"]) == 0
    assert int(clicks["Request Count"]) > 0 and int(clicks["Failure Count"]) == 0
    # The clicks sent through the gateway personalized the later replies.
    summary = json.loads(Path(f"{report}_personalized.json").read_text())
    assert 0 < summary["personalized"] < summary["recommend_replies"]
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.scan_iter(f"{KEY_PREFIX}{users}*"))
