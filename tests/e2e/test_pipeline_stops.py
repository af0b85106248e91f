"""``recsvc pipeline --engine spark`` stopped from outside: SIGTERM ends it cleanly, with
its Spark scratch folder removed, whether the JVM is still starting or a Spark job runs; a
run killed outright leaves its folder, and the next Spark session on the machine removes
it. A process that opens several sessions leaves no folder either."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import py4j
import pytest
from helpers import SMALL

from offline.spark.session import OWNER_FILE, SCRATCH_PREFIX, spark_session

pytestmark = pytest.mark.slow


def start(events: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The pipeline on Spark in a child process, with its stderr in a file."""
    command = [sys.executable, "-m", "recsvc.cli", "pipeline", "--format", "taobao",
               "--events", str(events), "--out", str(tmp_path / name), *SMALL,
               "--engine", "spark", "--spark-master", "local[1]"]  # fmt: skip
    env = {**os.environ, "RECSVC_SPARK_SCRATCH": str(tmp_path / "scratch")}
    err = tmp_path / f"{name}.err"
    with err.open("wb") as handle:
        run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=handle)
    return run, err


def wait_until(run: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing
    while not ready():
        if run.poll() is not None:
            pytest.fail(f"the run ended first, status {run.returncode}")
        if time.monotonic() > deadline:
            run.kill()
            pytest.fail("the run did not get there in 5 minutes")
        time.sleep(0.1)


def scratch_folders(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "scratch").glob(f"{SCRATCH_PREFIX}*"))


def jvm_starting(tmp_path: Path) -> Callable[[], bool]:
    """Spark's block manager has made its folder: the JVM is up, the session not yet."""
    return lambda: any(any(f.glob("blockmgr-*")) for f in scratch_folders(tmp_path))


def loading(err: Path) -> Callable[[], bool]:
    """The load stage began: a Spark job reads the log."""
    return lambda: "stage load ..." in err.read_text(errors="replace")


@pytest.mark.parametrize("moment", ["jvm_starting", "loading"])
def test_sigterm_stops_a_spark_run_cleanly(taobao_slice: Path, tmp_path: Path, moment: str):
    (tmp_path / "scratch").mkdir()
    run, err = start(taobao_slice, tmp_path, "stopped")
    wait_until(run, jvm_starting(tmp_path) if moment == "jvm_starting" else loading(err))
    (folder,) = scratch_folders(tmp_path)
    assert (folder / OWNER_FILE).read_text().split()[1] == str(run.pid)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) == 130
    printed = err.read_text(errors="replace")
    assert "recsvc pipeline: interrupted" in printed
    assert "Traceback" not in printed  # py4j's own trace of the interrupt included
    assert list((tmp_path / "scratch").iterdir()) == []
    assert not (tmp_path / "stopped").exists()


def test_the_folder_of_a_killed_run_goes_with_the_next_session(
    taobao_slice: Path, tmp_path: Path, monkeypatch
):
    (tmp_path / "scratch").mkdir()
    run, err = start(taobao_slice, tmp_path, "killed")
    wait_until(run, loading(err))
    # The driver and its JVM killed at once, as a container's out-of-memory kill does: no
    # clean-up runs (the JVM alone, orphaned, would still remove its block manager's files).
    tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    for process in tree:
        process.kill()
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive
    (folder,) = scratch_folders(tmp_path)
    assert (folder / OWNER_FILE).is_file() and any(folder.glob("blockmgr-*"))
    monkeypatch.setenv("RECSVC_SPARK_SCRATCH", str(tmp_path / "scratch"))
    with spark_session("local[1]", app="recsvc-tests") as session:
        assert not folder.exists()
        assert scratch_folders(tmp_path) == [Path(session.conf.get("recsvc.scratch"))]
    assert list((tmp_path / "scratch").iterdir()) == []


def broken_pipe(after_interrupt: bool) -> BrokenPipeError:
    """The error py4j meets on a connection, raised while handling an interrupt or not."""
    try:
        if not after_interrupt:
            raise BrokenPipeError(32, "Broken pipe")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise BrokenPipeError(32, "Broken pipe") from None
    except BrokenPipeError as error:
        return error


def py4j_root_record(message: str, error: BaseException) -> logging.LogRecord:
    """A record that py4j's gateway logs on the root logger (``logging.info``)."""
    gateway = str(Path(py4j.__file__).with_name("java_gateway.py"))
    exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("root", logging.INFO, gateway, 1, message, None, exc_info)


def test_py4js_traces_of_an_interrupt_are_dropped_while_a_session_is_open(caplog) -> None:
    """py4j logs a Ctrl-C that finds it inside a JVM call as an ERROR with a trace, on the
    root logger, and then the connection the interrupt broke, on its own logger and the
    root logger. A session drops those records, and only those, until it stops."""
    py4j_trace = "KeyboardInterrupt while sending command."
    shutdown = "Exception occurred while shutting down connection"
    sending = "Exception while sending command."

    def log_all() -> None:
        logging.error(py4j_trace)
        logging.error("another error")
        for after_interrupt in (True, False):
            error = broken_pipe(after_interrupt)
            logging.getLogger("py4j.clientserver").error(shutdown, exc_info=error)
            logging.getLogger().handle(py4j_root_record(sending, error))
        logging.getLogger("recsvc").error("ours", exc_info=broken_pipe(True))

    with caplog.at_level(logging.INFO), spark_session("local[1]", app="recsvc-tests"):
        log_all()
    during = [(r.name, r.getMessage()) for r in caplog.records if r.name != "offline.spark.session"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        log_all()
    after = [(r.name, r.getMessage()) for r in caplog.records]
    kept = [("root", "another error"), ("py4j.clientserver", shutdown), ("root", sending)]
    assert during == [*kept, ("recsvc", "ours")]
    dropped = [("root", py4j_trace), ("py4j.clientserver", shutdown), ("root", sending)]
    assert after == [dropped[0], kept[0], *dropped[1:], *kept[1:], ("recsvc", "ours")]


def test_a_process_that_opens_two_sessions_leaves_no_folder(tmp_path: Path) -> None:
    """The JVM outlives the first session and makes a folder under its path again while
    the second runs (the test processes open several sessions)."""
    opens_two = (
        "from offline.spark.session import spark_session\n"
        "for _ in range(2):\n"
        "    with spark_session('local[1]', app='recsvc-tests') as session:\n"
        "        session.range(10).count()\n"
    )
    env = {**os.environ, "RECSVC_SPARK_SCRATCH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", opens_two], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert list(tmp_path.iterdir()) == []
