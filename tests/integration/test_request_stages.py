"""The per-step CPU benchmark, small, against real Redis: the steps it counts ran."""

import json
import subprocess
import sys
from pathlib import Path

import redis

from recsvc.live import BASE_PREFIX, NEIGHBOURS_PREFIX
from recsvc.sessions import KEY_PREFIX

REPO = Path(__file__).resolve().parents[2]


def run(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.request_stages", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_steps_of_a_live_request_are_counted_inside_the_server(
    tiny_bundle: Path, redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    live_before = set(client.keys(NEIGHBOURS_PREFIX + "*")) | set(client.keys(BASE_PREFIX + "*"))
    done = run(
        "--bundle", str(tiny_bundle), "--redis-url", redis_url, "--rate", "40",
        "--seconds", "1", "--rounds", "2", "--warmup-s", "0.5", "--users", "20", "--k", "3",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    *rounds, summary = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert len(rounds) == 2
    for row in rounds:
        assert row["requests"] == 40 and row["errors"] == 0
        # Sessions with co-visits were read, and the live neighbours ranked by the model
        # (the tiny bundle has no second stage).
        for step in ("session_parse", "live_parse", "live_gather", "first_stage", "answer"):
            assert row[step] > 0, step
        assert row["features"] == row["model"] == row["second_stage_share"] == 0
        inside = row["live_gather"] + row["candidates"] + row["first_stage"] + row["answer"]
        assert inside <= row["rank"] + 0.5  # nested in rank (each rounded to 0.1 µs)
        assert row["rank"] < row["cpu_us_per_request"]
    assert summary["median"]["requests"] == 40 and summary["rounds"] == 2
    assert summary["live"] == 1 and summary["second_stage"] == 1  # the defaults
    # The run's sessions, the co-visit keys it created and its counter files are removed.
    assert not client.keys(KEY_PREFIX + "stages-*")
    live_after = set(client.keys(NEIGHBOURS_PREFIX + "*")) | set(client.keys(BASE_PREFIX + "*"))
    assert live_after <= live_before
    client.close()
    assert not list(tmp_path.glob("request-stages-*"))


def test_bad_numbers_and_a_missing_bundle_are_refused(tmp_path: Path) -> None:
    done = run("--rate", "0")
    assert done.returncode == 2 and "--rate and --seconds must be positive" in done.stderr
    done = run("--warmup-s", "-1")
    assert done.returncode == 2 and "--warmup-s must be >= 0" in done.stderr
    done = run("--bundle", str(tmp_path / "none"))
    assert done.returncode == 2 and "no bundle at" in done.stderr
