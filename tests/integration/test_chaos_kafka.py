"""The short versions of the Kafka scenarios of ``make chaos``: broker-restart and
malformed-storm (loadtest/chaos/), with their counts asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.chaos.cli import main
from loadtest.chaos.malformed_storm import DUPLICATE_KIND, KINDS, SKIPPED


def run_scenario(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_broker_restarted_while_producing_and_consuming_loses_and_double_counts_nothing(
    tiny_bundle: Path, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of this test's own
    code, figures = run_scenario(
        ["--scenario", "broker-restart", "--bundle", str(tiny_bundle), "--redis-url", url,
         "--events", "20000", "--users", "2000", "--broker-restarts", "1",
         "--broker-restart-after-s", "0.2", "--timeout-s", "90", "--workdir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert figures["failed"] == [] and code == 0
    assert figures["scenario"] == "broker-restart" and figures["events"] == 20000
    # The restart in the middle of producing: every send acknowledged, each event once.
    assert figures["produce_restart"] is True
    assert figures["produce_failed"] == 0 and figures["produce_acked"] == 20000
    assert figures["topic_messages"] == 20000
    # The restart while ingest consumed: nothing lost, added or counted twice.
    assert figures["restarts"] == 1 and len(figures["restart_to_committing_s"]) == 1
    assert figures["lost"] == figures["extra"] == figures["double_counted"] == 0
    assert figures["live_items"] > 0 and figures["ingest_exit_code"] == 0


def test_a_storm_of_malformed_messages_is_dead_lettered_or_skipped_and_counted(
    tiny_bundle: Path, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/8"
    rounds = 3
    code, figures = run_scenario(
        ["--scenario", "malformed-storm", "--bundle", str(tiny_bundle), "--redis-url", url,
         "--events", "5000", "--storm-rounds", str(rounds), "--timeout-s", "60",
         "--workdir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert figures["failed"] == [] and code == 0
    kinds = figures["kinds"]
    assert len(kinds) == len(KINDS) + 1 >= 12
    for kind, (_, outcome) in KINDS.items():
        if outcome == SKIPPED:  # the poison: its letter is over the dead-letter topic's limit
            assert kinds[kind] == {"sent": rounds, "dead_lettered": 0, "skipped": rounds}
        else:
            assert kinds[kind] == {
                "sent": rounds, "dead_lettered": rounds, "skipped": 0, "reason": outcome
            }  # fmt: skip
    assert kinds[DUPLICATE_KIND]["duplicate"] == rounds
    poison = sum(outcome == SKIPPED for _, outcome in KINDS.values())
    assert figures["metrics"] == {
        "applied": 5000,
        "duplicate": rounds,
        "dead_lettered": (len(KINDS) - poison) * rounds,
        "skipped": poison * rounds,
    }
    assert figures["skips_logged"] == poison * rounds
    assert (
        sum(figures["dlq_by_reason"].values())
        == figures["letters"]
        == (len(KINDS) - poison) * rounds
    )
    # The good events, those behind a skipped message too, are all applied, each once.
    assert figures["lost"] == figures["extra"] == figures["double_counted"] == 0
    assert figures["after_poison_events"] > 0 and figures["after_poison_lost"] == 0
    assert figures["ingest_exited"] is None and figures["ingest_exit_code"] == 0
    assert figures["kafka_retries"] == 0
