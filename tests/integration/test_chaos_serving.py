"""The short version of the ``make chaos`` scenarios with a ``recsvc serve`` under load
(loadtest/chaos/redis_down.py, sigterm_drain.py): the same scenarios, smaller. Latency is
not asserted (the machine is shared): a run may fail only on it."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.chaos.cli import main


def last_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_redis_stopped_under_load_answers_every_call_from_the_pool(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    code = main(
        ["--scenario", "redis-down", "--bundle", str(tiny_bundle), "--users", "200",
         "--redis-down-rate", "100", "--redis-down-s", "2", "--redis-down-before-s", "1",
         "--redis-down-after-s", "2", "--timeout-s", "60", "--workdir", str(tmp_path)]
    )  # fmt: skip
    figures = last_line(capsys.readouterr().out)
    assert figures["scenario"] == "redis-down"
    assert figures["errors"] == {}
    # Only the within-100-ms share may fail it here.
    assert code == 0 or all("within 100 ms" in reason for reason in figures["failed"])
    assert min(figures["calls_before"], figures["calls_outage"], figures["calls_after"]) > 50
    assert figures["before_personalized_share"] > 0.5  # the sessions were read
    # Redis really went away: most answers of the outage said so, none was an error.
    assert figures["outage_answers"]["SESSION_STORE_UNAVAILABLE"] > 0.5 * figures["calls_outage"]
    assert sum(figures["outage_answers"].values()) == figures["calls_outage"]
    assert figures["personalized_again_s"] is not None  # and came back
    assert figures["after_personalized_share"] > 0.5


def test_sigterm_to_one_of_two_servers_under_load_fails_no_call(
    tiny_bundle: Path, redis_url: str, tmp_path: Path, capsys
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/13"  # a database of this test's own
    code = main(
        ["--scenario", "sigterm-drain", "--bundle", str(tiny_bundle), "--users", "200",
         "--sigterm-rounds", "2", "--sigterm-rate", "100", "--sigterm-before-s", "1.5",
         "--sigterm-after-s", "1", "--redis-url", url, "--timeout-s", "60",
         "--workdir", str(tmp_path)]
    )  # fmt: skip
    figures = last_line(capsys.readouterr().out)
    assert figures["scenario"] == "sigterm-drain" and figures["rounds"] == 2
    assert figures["failed_calls"] == {}
    assert code == 0 or all("did not exit within" in reason for reason in figures["failed"])
    assert figures["calls"] > 400
    # Each signalled server had taken calls, and exited (0) while the load went on.
    assert all(n > 10 for n in figures["signalled_answered"])
    assert figures["exit_codes"] == [0, 0]
    assert all(n > 50 for n in figures["calls_after_exit"])
    assert figures["in_flight_answered"] == figures["in_flight_at_sigterm"]
