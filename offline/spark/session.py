"""The Spark session of one ``--engine spark`` run.

``local[*]`` (every core of this machine) unless ``--spark-master`` names a cluster; the
same code runs under ``spark-submit``, which sets the master itself. The session is quiet
(warnings and errors only, no web UI) and its scratch files go under a temporary folder,
which the session removes when it stops. A run killed outright (``SIGKILL``, the kernel's
out-of-memory killer) cannot; the next session on the same machine removes what it left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.exceptions import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: The master of a run without ``--spark-master``: every core of this machine.
LOCAL_MASTER = "local[*]"
#: The driver's heap unless ``$RECSVC_SPARK_DRIVER_MEMORY`` says otherwise. In local mode
#: the driver is also the only executor.
DRIVER_MEMORY = "4g"
#: The driver JVM's options unless ``$RECSVC_SPARK_DRIVER_JAVA_OPTIONS`` says otherwise: it
#: hands idle heap back to the system (a G1 collection after 10 s without one, and at most
#: 30 % of the heap left free). Without them a local run keeps the heap's high-water mark
#: (3 GiB after a 30M-row job in a 4g driver) through the hours the driver trains while
#: Spark is idle; with them that fell to 0.4 GiB within 35 s (``bench.spark_idle_heap``).
DRIVER_JAVA_OPTIONS = (
    "-XX:G1PeriodicGCInterval=10000 -XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=30"
)
#: The session setting that holds the folder of :func:`frame`'s files.
SCRATCH_SETTING = "recsvc.scratch"
#: The prefix of a session's scratch folder.
SCRATCH_PREFIX = "recsvc-spark-"
#: The file in a scratch folder that names the run using it: ``<host> <pid>``.
OWNER_FILE = "owner"

#: The scratch folders of this process's ended sessions. The JVM outlives a session and
#: keeps the first one's folder as its root: each later session makes a folder there
#: again, which the JVM's exit empties but leaves. Every session's end removes them.
_ended_scratch: list[str] = []


def require_pyspark() -> None:
    """Raise a :class:`ConfigError` that says how to install Spark when it is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--engine spark needs PySpark: pip install 'recsvc[spark]' (and Java 17 or newer)"
        ) from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ConfigError("--engine spark needs Java 17 or newer: no java on PATH, no JAVA_HOME")


@contextmanager
def spark_session(
    master: str | None = None, app: str = "recsvc-pipeline"
) -> Iterator[SparkSession]:
    """A Spark session for one run, stopped at the end.

    ``master`` is a Spark master URL (``local[2]``, ``spark://host:7077``, ``yarn``); None
    means ``local[*]``, or the master ``spark-submit`` set.

    Raises
    ------
    ConfigError
        PySpark or Java is missing, or the session does not start.
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    # $RECSVC_SPARK_SCRATCH: on a cluster, a folder every executor mounts.
    parent = Path(os.environ.get("RECSVC_SPARK_SCRATCH") or tempfile.gettempdir())
    remove_abandoned_scratch(parent)
    try:
        scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)
    except OSError as exc:
        raise ConfigError(
            f"cannot make Spark's scratch folder in {parent} ($RECSVC_SPARK_SCRATCH): "
            f"{exc.strerror}"
        ) from None
    builder = (
        SparkSession.builder.appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", scratch)
        # Naive ISO-8601 times are UTC, as the local loader reads them.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("RECSVC_SPARK_DRIVER_MEMORY", DRIVER_MEMORY))
        .config(
            "spark.driver.extraJavaOptions",
            os.environ.get("RECSVC_SPARK_DRIVER_JAVA_OPTIONS", DRIVER_JAVA_OPTIONS),
        )
        # Results come back to the driver as Arrow batches, not pickled rows.
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Shuffles keep Spark's 200 partitions, and adaptive execution merges a small
        # shuffle's into a few. With 8, item-CF's former self-join at 64M events read 3.3 GiB
        # per task and ran out of a 4 GiB heap; with 200 a task reads a 25th of that.
        .config("spark.sql.adaptive.enabled", "true")
    )
    if master is not None or "PYSPARK_SUBMIT_ARGS" not in os.environ:
        builder = builder.master(master or LOCAL_MASTER)
        if (master or LOCAL_MASTER).startswith("local"):
            # Python tasks run in this interpreter, not the first python3 on the PATH. A
            # cluster's executors have their own: PYSPARK_PYTHON, as spark-submit documents.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = None
    try:  # the folder goes however the run ends, Ctrl-C and SIGTERM included
        # Names the run, for the next session's clean-up if this one is killed outright.
        (Path(scratch) / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        # py4j logs each connection it opens and closes at INFO.
        logging.getLogger("py4j").setLevel(logging.WARNING)
        for name in PY4J_LOGGERS:
            logging.getLogger(name).addFilter(_no_py4j_interrupt_trace)
        try:
            with _interrupts_deferred():
                session = builder.getOrCreate()
        except Exception as exc:  # the JVM failed to start: py4j raises plain exceptions
            raise ConfigError(
                f"Spark did not start (master {master or LOCAL_MASTER}): {exc}"
            ) from exc
        session.conf.set(SCRATCH_SETTING, scratch)
        session.sparkContext.setLogLevel("ERROR")
        # PySpark logs each failed query's plan as JSON on stderr; recsvc reports the error.
        logging.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)
        logger.info("spark %s, master %s", session.version, session.sparkContext.master)
        yield session
    finally:
        if session is not None:
            _stop(session)
        for name in PY4J_LOGGERS:
            logging.getLogger(name).removeFilter(_no_py4j_interrupt_trace)
        _ended_scratch.append(scratch)
        for folder in _ended_scratch:
            shutil.rmtree(folder, ignore_errors=True)


#: The loggers py4j writes on: its own, and the root logger for its send errors.
PY4J_LOGGERS = ("", "py4j.clientserver", "py4j.java_gateway")


def _no_py4j_interrupt_trace(record: logging.LogRecord) -> bool:
    """Drop py4j's records, traces and all, of a Ctrl-C or SIGTERM that found it inside a
    call to the JVM: of the interrupt itself, and of the connection that it broke, which py4j
    then fails to close or to send on. The command reports the interrupt."""
    if record.getMessage().startswith("KeyboardInterrupt while sending command"):
        return False
    from_py4j = record.name.startswith("py4j") or f"{os.sep}py4j{os.sep}" in record.pathname
    return not (from_py4j and _follows_an_interrupt(record.exc_info))


def _follows_an_interrupt(exc_info: object) -> bool:
    """Whether the logged exception is a KeyboardInterrupt or was raised while handling one."""
    error = exc_info[1] if isinstance(exc_info, tuple) else None
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then arrive. Interrupted half-way,
    the JVM's start goes on making folders in the scratch folder, with no session yet to
    stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread takes signals
        return
    received: list[int] = []

    def defer(signum: int, frame: object) -> None:
        received.append(signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, defer) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is defer:  # PySpark may have set its own since
                signal.signal(number, handler)
    for number in dict.fromkeys(received):
        signal.raise_signal(number)


def _stop(session: SparkSession) -> None:
    """Stop ``session``; a failure to (the JVM gone, its connection broken by an interrupt)
    is logged, so that it hides neither the run's result nor the error that ended it."""
    try:
        session.stop()
    except Exception as exc:  # py4j raises plain exceptions
        logger.warning("Spark did not stop cleanly: %s", exc)


def frame(spark: SparkSession, table: pa.Table) -> DataFrame:
    """``table`` (driver memory) as a Spark frame, through a Parquet file in the session's
    scratch folder: Spark reads a file in parallel, where ``createDataFrame`` of the same
    rows costs several times longer."""
    folder = Path(spark.conf.get(SCRATCH_SETTING)) / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path)
    return spark.read.parquet(str(path))


def remove_abandoned_scratch(parent: Path) -> list[Path]:
    """Remove the scratch folders under ``parent`` that runs killed outright left behind
    (a 64M-event run's reached 39 GiB); returns them.

    A folder is abandoned when its owner file names this host and a process that no longer
    runs. Folders of running sessions, of other hosts (a shared ``$RECSVC_SPARK_SCRATCH``)
    and without an owner file are left alone.
    """
    removed = []
    host = socket.gethostname()
    for folder in sorted(parent.glob(f"{SCRATCH_PREFIX}*")):
        try:
            owner_host, pid = (folder / OWNER_FILE).read_text().split()
            if owner_host != host or _running(int(pid)):
                continue
        except (OSError, ValueError):  # no owner file, or not one of ours
            continue
        size = folder_bytes(folder)
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning(
            "removed %s (%.1f GiB), the scratch folder of process %s, which was killed",
            folder,
            size / 2**30,
            pid,
        )
        removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` (possibly another user's) runs on this host."""
    if pid <= 0:
        raise ValueError(f"not a process id: {pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as someone else
        pass
    return True


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 if it is gone), counting those that stay
    long enough to be counted: Spark adds and removes shuffle files as it goes."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def collect(rows: DataFrame) -> pa.Table:
    """``rows`` on the driver as one Arrow table, through Parquet files in the session's
    scratch folder. ``toArrow`` would hold every task's result in the driver JVM at once
    and stop at ``spark.driver.maxResultSize`` (1 GiB by default; a 64M-event log's codes
    are more). The files are read in partition order, so a sorted frame stays sorted."""
    spark = rows.sparkSession
    folder = Path(spark.conf.get(SCRATCH_SETTING)) / "collected" / uuid.uuid4().hex
    try:
        rows.write.parquet(str(folder))
        files = sorted(folder.glob("*.parquet"))
        if not files:
            return rows.limit(0).toArrow()
        return pa.concat_tables([pq.read_table(path) for path in files])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
