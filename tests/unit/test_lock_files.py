"""The lock files `make install` and the Dockerfile install from are in step with their inputs.

requirements*.txt are edited by hand and `make lock` compiles them into requirements*.lock;
a pin edited without re-locking would otherwise be silently ignored by `make install`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(path: Path) -> dict[str, str]:
    """``name: version`` of every ``name==version`` line, names normalised as PEP 503 does."""
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


@pytest.mark.parametrize(
    ("inputs", "lock"),
    [
        (["requirements.txt", "requirements-serve.txt"], "requirements.lock"),
        (["requirements-serve.txt"], "requirements-serve.lock"),
        (["requirements-nodeps.txt"], "requirements-nodeps.lock"),
    ],
)
def test_every_pin_is_locked_at_its_version(inputs: list[str], lock: str) -> None:
    locked = pins(REPO / lock)
    for name in inputs:
        for package, version in pins(REPO / name).items():
            assert locked.get(package) == version, f"{name} pins {package}=={version}: make lock"


def test_the_serving_lock_has_the_versions_of_the_full_lock() -> None:
    full = pins(REPO / "requirements.lock")
    for package, version in pins(REPO / "requirements-serve.lock").items():
        assert full.get(package) == version, package


def test_the_nodeps_lock_holds_only_its_package() -> None:
    assert (
        pins(REPO / "requirements-nodeps.lock").keys()
        == pins(REPO / "requirements-nodeps.txt").keys()
    )
