"""The short versions of ``make chaos``'s grpc-fuzz and bundle-swap scenarios, against a
real ``recsvc serve`` of the tiny bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.chaos.cli import main


def figures_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture
def url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/14"  # a database of these tests' own


def test_a_thousand_fuzzed_calls_get_no_internal_or_unknown_and_the_server_serves_on(
    tiny_bundle: Path, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, figures = figures_of(
        ["--scenario", "grpc-fuzz", "--bundle", str(tiny_bundle), "--redis-url", url,
         "--fuzz-calls", "1000", "--timeout-s", "60", "--workdir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert figures["failed"] == [] and code == 0
    assert figures["calls"] == figures["asked"] == 1000
    statuses = figures["statuses"]
    assert not {"INTERNAL", "UNKNOWN"} & {s for counts in statuses.values() for s in counts}
    # Every kind was sent, and each met both answers and refusals where it can.
    assert set(figures["calls_by_kind"]) == {"typed", "raw", "health", "reflection",
                                             "unknown_method"}  # fmt: skip
    assert statuses["typed"]["OK"] > 0 and statuses["typed"]["INVALID_ARGUMENT"] > 0
    assert statuses["typed"]["NOT_FOUND"] > 0  # unknown items
    assert statuses["raw"]["INVALID_ARGUMENT"] > 0 and statuses["raw"]["RESOURCE_EXHAUSTED"] >= 1
    assert statuses["health"]["OK"] > 0 and statuses["health"]["INVALID_ARGUMENT"] > 0
    assert statuses["reflection"]["OK"] > 0 and statuses["reflection"]["INVALID_ARGUMENT"] > 0
    assert statuses["unknown_method"] == {
        "UNIMPLEMENTED": figures["calls_by_kind"]["unknown_method"]
    }
    assert figures["server_errors_logged"] == figures["long_details"] == 0
    assert figures["personalized"] > 0  # sessions were read from Redis
    assert figures["still_serving"] is True


def test_tampered_and_truncated_bundles_are_refused_under_load_and_good_ones_taken(
    tiny_bundle: Path, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, figures = figures_of(
        ["--scenario", "bundle-swap", "--bundle", str(tiny_bundle), "--redis-url", url,
         "--swap-clients", "3", "--swap-watch-s", "0.2", "--swap-settle-s", "0.5",
         "--timeout-s", "30", "--workdir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert figures["failed"] == [] and code == 0
    assert figures["calls"] > 100 and figures["failed_calls"] == 0
    assert figures["versions_served"] == ["base", "good-1", "good-2"]
    publishes = {p["publish"]: p for p in figures["publishes"]}
    assert [p["in_service"] for p in figures["publishes"]] == ["good-1"] * 3 + ["good-2"]
    assert publishes["good-1"]["taken"] and publishes["good-2"]["taken"]
    assert publishes["tampered"]["refusals"] == publishes["truncated"]["refusals"] == 2
    assert (
        figures["swaps_taken"] == 2 and figures["swaps_refused"] == figures["refusals_logged"] == 4
    )
    # Each refused for what was done to it: the checksum, and the cut file's length.
    errors = figures["refusal_errors"]
    assert len(errors) == 2 and "does not match its sha256" in errors[0]
    assert "pools.npy" in errors[1] and "sha256" not in errors[1]
    # The run's copy is gone; the fixture's bundle root was left as it was.
    assert not list(tmp_path.glob("*-bundles"))
    assert [p.name for p in tiny_bundle.iterdir() if not p.is_symlink()] == [
        (tiny_bundle / "current").resolve().name
    ]
