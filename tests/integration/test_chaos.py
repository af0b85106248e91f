"""The short version of ``make chaos`` (loadtest/chaos/): the same scenarios, smaller."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.chaos.cli import main


def test_ingest_killed_again_and_again_loses_and_double_counts_nothing(
    tiny_bundle: Path, redis_url: str, tmp_path: Path, capsys
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/9"  # a database of this test's own
    code = main(
        ["--scenario", "ingest-kill", "--bundle", str(tiny_bundle), "--redis-url", url,
         "--events", "20000", "--users", "2000", "--kills", "3", "--kill-after-s", "0.3",
         "--timeout-s", "60", "--workdir", str(tmp_path)]
    )  # fmt: skip
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert figures["scenario"] == "ingest-kill" and figures["events"] == 20000
    assert figures["lost"] == figures["extra"] == figures["double_counted"] == 0
    assert figures["live_items"] > 0
    assert figures["kills"] >= 1 and len(figures["restart_to_consuming_s"]) == figures["kills"]


def test_redis_restarted_keeps_everything_and_emptied_is_rebuilt_from_the_topic(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    code = main(
        ["--scenario", "redis-restart", "--bundle", str(tiny_bundle), "--events", "6000",
         "--users", "600", "--timeout-s", "60", "--workdir", str(tmp_path)]
    )  # fmt: skip
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and figures["scenario"] == "redis-restart"
    assert figures["restart_lost"] == figures["restart_double_counted"] == 0
    assert figures["members_after_emptying"] == 0  # the restart really lost it all
    assert figures["lost"] == figures["extra"] == figures["double_counted"] == 0
    assert figures["session_members"] == 6000 and figures["live_items"] > 0
