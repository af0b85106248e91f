"""The Spark scratch folders that runs killed outright leave behind are removed by the
next session on the machine, and no other folder is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from offline.spark.session import (
    OWNER_FILE,
    SCRATCH_PREFIX,
    folder_bytes,
    remove_abandoned_scratch,
    spark_session,
)
from recsvc.exceptions import ConfigError


def finished_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def scratch(parent: Path, name: str, owner: str | None) -> Path:
    folder = parent / name
    (folder / "blockmgr-1" / "0a").mkdir(parents=True)
    (folder / "blockmgr-1" / "0a" / "shuffle_0_0_0.data").write_bytes(b"x" * 4096)
    if owner is not None:
        (folder / OWNER_FILE).write_text(owner)
    return folder


def test_only_the_folders_of_ended_runs_on_this_host_are_removed(tmp_path: Path, caplog):
    host, dead = socket.gethostname(), finished_pid()
    abandoned = scratch(tmp_path, f"{SCRATCH_PREFIX}a", f"{host} {dead}\n")
    kept = [
        scratch(tmp_path, f"{SCRATCH_PREFIX}live", f"{host} {os.getpid()}\n"),
        scratch(tmp_path, f"{SCRATCH_PREFIX}elsewhere", f"another-{host} {dead}\n"),
        scratch(tmp_path, f"{SCRATCH_PREFIX}older", None),  # from before owner files
        scratch(tmp_path, f"{SCRATCH_PREFIX}garbled", "not an owner"),
        scratch(tmp_path, f"{SCRATCH_PREFIX}zero", f"{host} 0\n"),
        scratch(tmp_path, "someone-else", f"{host} {dead}\n"),  # not a scratch folder
    ]
    assert remove_abandoned_scratch(tmp_path) == [abandoned]
    assert not abandoned.exists() and all(folder.exists() for folder in kept)
    assert f"removed {abandoned} (0.0 GiB)" in caplog.text and f"process {dead}" in caplog.text
    assert remove_abandoned_scratch(tmp_path) == []


def test_a_scratch_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RECSVC_SPARK_SCRATCH", str(tmp_path / "missing"))
    error = r"scratch folder in .*missing \(\$RECSVC_SPARK_SCRATCH\): No such file"
    with pytest.raises(ConfigError, match=error), spark_session("local[1]"):
        pass


def test_folder_bytes_counts_the_files_below_and_nothing_for_a_missing_folder(tmp_path: Path):
    folder = scratch(tmp_path, f"{SCRATCH_PREFIX}a", "host 1\n")
    assert folder_bytes(folder) == 4096 + len("host 1\n")
    assert folder_bytes(tmp_path / "gone") == 0
