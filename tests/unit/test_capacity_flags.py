"""The capacity benchmark refuses flags it cannot run with, before it starts anything, and
a ceiling that cannot be one."""

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.capacity import disturbed_ceiling

REPO = Path(__file__).resolve().parents[2]  # loadtest/ is run from here, not installed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--confirm-tries", "0"], "--confirm-tries must be at least 1"),
        (["--confirm-backoff", "1.0"], "--confirm-backoff must be between 0 and 1"),
        (["--confirm-s", "0"], "must be positive"),
    ],
)
def test_bad_flags_are_refused(flags: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.capacity", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_a_ceiling_below_recsvcs_rate_is_not_a_capacity() -> None:
    assert disturbed_ceiling(731.5, 653.1) is not None  # a real run of 2026-12-07 03:17
    assert "653/s" in disturbed_ceiling(731.5, 653.1)
    assert disturbed_ceiling(1083.5, 2912.3) is None
    assert disturbed_ceiling(500.0, 500.0) is None
