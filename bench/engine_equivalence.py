"""Do ``--engine local`` and ``--engine spark`` write the same bundle? Both, and a diff.

    python -m bench.engine_equivalence --workdir .local/engines/taobao -- \\
        --format taobao --events ../shared/data/taobao/UserBehavior_head.csv --seed 7

Everything after ``--`` goes to ``recsvc pipeline`` for both runs (give ``--seed``: the
comparison is meaningful only for one seed). Each run is a child process; the bundles go to
``WORKDIR/local`` and ``WORKDIR/spark``. Prints one JSON line: the arrays compared, those
that differ (with the largest absolute difference of a float array), whether the manifests'
split, source files and metrics agree, and each run's wall seconds and stage timings.
Exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.bundle import Bundle, load_bundle

#: Manifest parts that must agree (timings, peak memory, the engine and the version differ).
MANIFEST_PARTS = ("split", "source", "parameters", "sources_ran", "metrics")


def build(engine: str, out: Path, pipeline_args: list[str]) -> float:
    """Wall seconds of one ``recsvc pipeline`` run with ``engine`` into ``out``."""
    command = [sys.executable, "-m", "recsvc.cli", "pipeline", *pipeline_args,
               "--engine", engine, "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return round(time.perf_counter() - started, 1)


def differences(a: Bundle, b: Bundle) -> dict[str, Any]:
    """The arrays of ``a`` and ``b`` that differ (or that only one has), and the manifest
    parts that do."""
    names = sorted(set(a.arrays) | set(b.arrays))
    differ: dict[str, object] = {}
    for name in names:
        if name not in a.arrays or name not in b.arrays:
            differ[name] = "in one bundle only"
            continue
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype != y.dtype or x.shape != y.shape:
            differ[name] = f"{x.dtype}{x.shape} against {y.dtype}{y.shape}"
        elif not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            gap = np.nanmax(np.abs(x.astype(np.float64) - y)) if x.dtype.kind == "f" else None
            differ[name] = "differs" if gap is None else f"largest difference {gap:.3g}"
    manifest = [part for part in MANIFEST_PARTS if a.manifest.get(part) != b.manifest.get(part)]
    return {"arrays": len(names), "arrays_differ": differ, "manifest_differs": manifest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pipeline_args = [a for a in args.pipeline_args if a != "--"]
    if not pipeline_args:
        parser.error("give the pipeline's arguments after --")
    seconds = {e: build(e, args.workdir / e, pipeline_args) for e in ("local", "spark")}
    local, spark = load_bundle(args.workdir / "local"), load_bundle(args.workdir / "spark")
    report = differences(local, spark)
    report["seconds"] = seconds
    report["timings"] = {"local": local.manifest["timings"], "spark": spark.manifest["timings"]}
    report["spark"] = spark.manifest["engine"]
    print(json.dumps(report))
    return 1 if report["arrays_differ"] or report["manifest_differs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
