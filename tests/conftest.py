"""Shared test fixtures: where ../shared is, and small real-data slices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
from helpers import tiny_bundle_arrays

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("RECSVC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
FOLDER_MARKERS = ("integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration or tests/e2e gets that folder's marker."""
    for item in items:
        for name in FOLDER_MARKERS:
            if REPO / "tests" / name in item.path.parents:
                item.add_marker(name)


def shared_dir() -> Path:
    return Path(os.environ.get("RECSVC_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "data").is_dir():
        pytest.fail(f"../shared is missing at {path}: set RECSVC_SHARED")
    return path


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A bundle root with one version of ``tiny_bundle_arrays`` and a ``current`` link."""
    from recsvc.bundle import write_bundle

    root = tmp_path / "bundles"
    write_bundle(root, tiny_bundle_arrays(), {"source": "tests"})
    return root


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {REDIS_URL} ({exc}); `make up` starts one")
    return REDIS_URL
