"""The ingest benchmark end to end, small: every event lands in Redis or the DLQ."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_ingest_bench_accounts_for_every_event(tiny_bundle: Path, redis_url: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.ingest_bench",
            "--events",
            "3000",
            "--users",
            "100",
            "--dlq-share",
            "0.1",
            "--bundle",
            str(tiny_bundle),
            "--redis-url",
            redis_url,
            "--cpu",
            "-1",
            "--timeout-s",
            "120",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary, lag = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert summary["all_accounted_for"] is True
    assert summary["valid"] + summary["invalid"] == 3000
    assert 0 < summary["invalid"] == summary["dead_lettered"] == summary["dlq_topic_messages"]
    assert summary["in_redis_zcard_sum"] == summary["applied"] == summary["valid"]
    # Everything was produced first, so the lag only falls, to 0; a new broker may not know
    # the group's offsets at first (null samples).
    known = [behind for _, behind in lag["lag_series"] if behind is not None]
    assert known and known[-1] == 0 and all(0 <= behind <= 3000 for behind in known)
    assert known == sorted(known, reverse=True)


def test_the_ingest_bench_rejects_bad_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.ingest_bench", "--dlq-share", "1.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--dlq-share must be in [0, 1)" in done.stderr
    assert "Traceback" not in done.stderr
