"""The Spark session of one ``--engine spark`` run.

``local[*]`` (every core of this machine) unless ``--spark-master`` names a cluster; the
same code runs under ``spark-submit``, which sets the master itself. The session is quiet
(warnings and errors only, no web UI) and its scratch files go under a temporary folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
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
    scratch = tempfile.mkdtemp(prefix="recsvc-spark-", dir=os.environ.get("RECSVC_SPARK_SCRATCH"))
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
        # shuffle's into a few. With 8, the 64M-event self-join's aggregation read 3.3 GiB
        # per task and ran out of a 4 GiB heap; with 200 a task reads a 25th of that.
        .config("spark.sql.adaptive.enabled", "true")
    )
    if master is not None or "PYSPARK_SUBMIT_ARGS" not in os.environ:
        builder = builder.master(master or LOCAL_MASTER)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start: py4j raises plain exceptions
        shutil.rmtree(scratch, ignore_errors=True)
        raise ConfigError(f"Spark did not start (master {master or LOCAL_MASTER}): {exc}") from exc
    session.conf.set(SCRATCH_SETTING, scratch)
    session.sparkContext.setLogLevel("ERROR")
    # PySpark logs each failed query's plan as JSON on stderr; recsvc reports the error.
    logging.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)
    logger.info("spark %s, master %s", session.version, session.sparkContext.master)
    try:
        yield session
    finally:
        session.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def frame(spark: SparkSession, table: pa.Table) -> DataFrame:
    """``table`` (driver memory) as a Spark frame, through a Parquet file in the session's
    scratch folder: Spark reads a file in parallel, where ``createDataFrame`` of the same
    rows costs several times longer."""
    folder = Path(spark.conf.get(SCRATCH_SETTING)) / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.parquet"
    pq.write_table(table, path)
    return spark.read.parquet(str(path))


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
