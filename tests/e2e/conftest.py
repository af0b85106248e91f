"""The real-data slice and the bundle built from it, shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL

from recsvc.cli import main


@pytest.fixture(scope="session")
def taobao_slice(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The complete histories of the first 150 users of the real log (it is grouped by user)."""
    users: list[str] = []
    lines = []
    with (shared / "data/taobao/UserBehavior_head.csv").open() as handle:
        for line in handle:
            user = line.split(",", 1)[0]
            if user not in users:
                if len(users) == 150:
                    break
                users.append(user)
            lines.append(line)
    path = tmp_path_factory.mktemp("data") / "taobao_slice.csv"
    path.write_text("".join(lines) + "77,88,99,pv\n")  # plus a truncated row, like the real file
    return path


@pytest.fixture(scope="session")
def taobao_bundle(taobao_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root built by ``recsvc pipeline`` from the slice."""
    out = tmp_path_factory.mktemp("taobao") / "bundles"
    code = main(
        ["pipeline", "--format", "taobao", "--events", str(taobao_slice), "--out", str(out), *SMALL]
    )
    assert code == 0
    return out
