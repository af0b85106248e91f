"""Shared test fixtures: where ../shared is, and small real-data slices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import tiny_bundle_arrays

REPO = Path(__file__).resolve().parent.parent


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
