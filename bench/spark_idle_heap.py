"""The Spark driver's memory while it is idle, with and without its idle-heap options.

    python -m bench.spark_idle_heap --rows 30000000

For each setting of the driver JVM's options (``offline.spark.session.DRIVER_JAVA_OPTIONS``
and none), a fresh child process starts the pipeline's Spark session, runs one job
(``--rows`` rows grouped by a million keys and collected, and the rows themselves
collected), waits ``--idle-s`` seconds while printing the JVM's resident memory, and times
the same grouping once more. This is the situation of a pipeline run between its Spark
stages, while the driver trains. One JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil

from offline.spark.session import DRIVER_JAVA_OPTIONS

#: The settings compared: the session's default options, and none.
SETTINGS = {"idle_heap_options": DRIVER_JAVA_OPTIONS, "none": ""}


def jvm_mib() -> float:
    """Resident memory of this process's children (the driver JVM), MiB."""
    children = psutil.Process().children(recursive=True)
    return round(sum(child.memory_info().rss for child in children) / 2**20, 1)


def measure(rows: int, idle_s: float, every_s: float) -> dict[str, Any]:
    """One job, the JVM's memory through ``idle_s`` idle seconds, then the job again."""
    from pyspark.sql import functions as F

    from offline.spark.session import spark_session

    with spark_session() as spark:
        frame = spark.range(rows).withColumn("key", (F.col("id") * 7919) % 1_000_003)
        frame = frame.withColumn("value", F.rand(1))

        def grouped() -> int:
            return frame.groupBy("key").agg(F.sum("value")).toArrow().num_rows

        started = time.perf_counter()
        grouped()
        frame.select("id", "value").toArrow()
        first_s = time.perf_counter() - started
        idle = [{"s": 0.0, "jvm_mib": jvm_mib()}]
        waited = 0.0
        while waited < idle_s:
            time.sleep(every_s)
            waited += every_s
            idle.append({"s": waited, "jvm_mib": jvm_mib()})
        started = time.perf_counter()
        grouped()
        again_s = time.perf_counter() - started
        after = jvm_mib()
    return {
        "rows": rows,
        "first_job_s": round(first_s, 1),
        "idle": idle,
        "second_job_s": round(again_s, 1),
        "jvm_mib_after_second_job": after,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.spark_idle_heap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=30_000_000, help="rows of the job")
    parser.add_argument("--idle-s", type=float, default=40.0, help="idle seconds measured")
    parser.add_argument("--every-s", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.idle_s < 0 or args.every_s <= 0:
        parser.error("--rows must be at least 1, --idle-s at least 0, --every-s above 0")
    if args.child is not None:
        result = measure(args.rows, args.idle_s, args.every_s)
        print(json.dumps({"setting": args.child, **result}), flush=True)
        return 0
    for name, options in SETTINGS.items():
        env = {**os.environ, "RECSVC_SPARK_DRIVER_JAVA_OPTIONS": options}
        command = [sys.executable, "-m", "bench.spark_idle_heap", "--child", name]
        command += ["--rows", str(args.rows), "--idle-s", str(args.idle_s)]
        command += ["--every-s", str(args.every_s)]
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"bench.spark_idle_heap: the {name} run exited with {done.returncode}")
            return 1
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
