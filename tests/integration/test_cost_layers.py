"""The per-layer CPU benchmark, small, against real Redis: each layer answers as it says."""

import json
import subprocess
import sys
from pathlib import Path

import redis

from recsvc.sessions import KEY_PREFIX

REPO = Path(__file__).resolve().parents[2]
#: ``loadtest`` is run from the repository root, not installed: the layers, in building order.
LAYERS = ["empty", "serialize", "build", "rank", "handler", "redis"]


def run(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.cost_layers", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_every_layer_answers_and_only_the_ranking_ones_personalize(
    tiny_bundle: Path, redis_url: str, tmp_path: Path
) -> None:
    done = run(
        "--bundle", str(tiny_bundle), "--redis-url", redis_url,
        "--layers", "redis,empty,serialize,build,rank,handler,empty",
        "--rate", "40", "--seconds", "1", "--rounds", "2", "--warmup-s", "0.5", "--users", "20",
        "--k", "3",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    *rows, summary = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert [row["layer"] for row in rows] == LAYERS  # each once, in building order
    assert all(row["requests"] == 2 * 40 and row["errors"] == 0 for row in rows)
    # Only the empty reply is not personalized: the fixed one comes from a real ranking.
    assert [row["personalized_share"] for row in rows] == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for row in rows:
        low, high = row["cpu_us_min_max"]
        assert 0 < low <= row["cpu_us_per_request"] <= high
    assert rows[2]["added_us"] == round(
        rows[2]["cpu_us_per_request"] - rows[1]["cpu_us_per_request"], 1
    )
    assert list(summary["cpu_us_per_request"]) == LAYERS
    # The run's own sessions and files are removed.
    client = redis.Redis.from_url(redis_url)
    assert not client.keys(KEY_PREFIX + "cost-*")
    client.close()
    assert not list(tmp_path.glob("*users*"))


def test_unknown_layers_and_bad_numbers_are_refused() -> None:
    done = run("--layers", "empty,gpu")
    assert done.returncode == 2 and "--layers: give some of empty, serialize" in done.stderr
    done = run("--rate", "0")
    assert done.returncode == 2 and "--rate must be positive" in done.stderr
    done = run("--warmup-s", "-1")
    assert done.returncode == 2 and "--warmup-s must not be negative" in done.stderr
