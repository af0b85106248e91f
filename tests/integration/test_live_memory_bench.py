"""``bench.live_memory``: a short synthetic day through the real Redis, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[2]
URL = "redis://127.0.0.1:6379/12"


def run(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.live_memory", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_synthetic_day_leaves_live_items_and_an_empty_db(redis_url: str) -> None:
    done = run("--synthetic", "20000", "--redis-url", URL)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["events"] == 20000
    assert 0 < figures["live_items"] <= figures["live_neighbours"]
    assert figures["sessions"] > 0 and figures["bytes_per_live_item"] > 0
    assert redis.Redis.from_url(URL).dbsize() == 0


def test_a_database_in_use_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(URL)
    client.set("someone-elses-key", "1", ex=60)
    try:
        done = run("--synthetic", "100", "--redis-url", URL)
        assert done.returncode != 0 and "is not empty" in done.stderr
        assert client.get("someone-elses-key") == b"1"
    finally:
        client.delete("someone-elses-key")
    missing = run("--bundle", "/nonexistent", "--redis-url", URL)
    assert missing.returncode != 0 and "--bundle:" in missing.stderr
