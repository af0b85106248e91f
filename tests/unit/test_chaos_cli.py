"""The ``make chaos`` command line, with stand-in scenarios (no servers)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from loadtest.chaos import cli


def stand_in(name: str, run: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = f"``{name}``: a stand-in."
    module.run = run  # type: ignore[attr-defined]
    module.failures = lambda figures: [] if figures.get("ok") else ["not ok"]  # type: ignore[attr-defined]
    return module


def test_a_scenario_that_raises_is_reported_failed_and_the_next_still_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def breaks(args: Any) -> dict[str, Any]:
        raise SystemExit("chaos: the broker did not start")

    for name, run in (("breaks", breaks), ("passes", lambda args: {"ok": True})):
        monkeypatch.setitem(sys.modules, f"stand_in_{name}", stand_in(name, run))
    monkeypatch.setattr(
        cli, "SCENARIOS", {"breaks": "stand_in_breaks", "passes": "stand_in_passes"}
    )
    assert cli.main(["--bundle", str(tmp_path)]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["scenario"] for line in lines] == ["breaks", "passes"]
    assert lines[0]["failed"] == ["did not finish: chaos: the broker did not start"]
    assert lines[1]["failed"] == [] and lines[1]["ok"] is True
