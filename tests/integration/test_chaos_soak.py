"""The short version of ``make chaos``'s soak (loadtest/chaos/soak.py): 15 s instead of 20
minutes, at a fixed rate instead of half the capacity searched first."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.chaos.cli import main


def test_a_short_soak_fails_no_call_drains_its_lag_and_samples_memory(
    tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    code = main(
        ["--scenario", "soak", "--bundle", str(tiny_bundle), "--workdir", str(tmp_path),
         "--soak-minutes", "0.25", "--soak-rate", "100", "--soak-event-rate", "50",
         "--soak-users", "100", "--soak-k", "4", "--soak-sample-s", "5", "--soak-warmup-s", "5",
         "--soak-max-growth", "0.5", "--timeout-s", "60"]
    )  # fmt: skip
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["scenario"] == "soak" and figures["failed"] == [] and code == 0
    assert figures["errors"] == 0 and figures["calls"] >= 0.9 * 100 * 15
    assert len(figures["samples"]) == 3
    assert figures["events"] >= 0.9 * 50 * 15 * 2  # the fill, then the stream
    assert figures["lag_drained_s"] is not None
    assert figures["personalized_share"] > 0.5
    assert all(s["server_rss_mib"] > 0 and s["redis_used_mib"] > 0 for s in figures["samples"])
