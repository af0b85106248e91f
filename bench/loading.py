"""Loading alone: rows per second and memory per million rows of the Taobao loader.

    python -m bench.loading --rows 16000000
    python -m bench.loading --rows 16M --code /tmp/old-loader   # another checkout's loader

Writes (or reuses) a synthetic Taobao-format log of ``--rows`` events with
:mod:`offline.data.synthetic` at the paper's ratios, as ``bench.scaling`` does, under
``--workdir``; then loads it with ``load_taobao`` in a fresh child process and prints one
JSON line: rows, seconds, rows/s, the child's peak RSS, and the peak above the interpreter's
baseline (RSS once the loader module and its imports are in) per million rows. Peaks are
the kernel's (``getrusage``), so nothing between samples is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.scaling import label, parse_size
from offline.data.synthetic import SyntheticSpec, default_sizes, write_log
from recsvc.exceptions import RecsvcError

#: Run in the child: argv is the CSV and the folder to import ``offline`` from ("" for this one).
CHILD = """
import json, resource, sys, time
if sys.argv[2]:
    sys.path.insert(0, sys.argv[2])
from offline.data import events
def rss_mib():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20
baseline = rss_mib()
started = time.perf_counter()
log = events.load_taobao(sys.argv[1])
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"loader": events.__file__, "rows": len(log), "seconds": seconds,
                  "baseline_mib": baseline, "peak_mib": peak, "skipped": log.report.n_skipped}))
"""


def synthetic_log(rows: int, workdir: Path, seed: int) -> Path:
    """The synthetic Taobao log of ``rows`` events in ``workdir``, written if missing."""
    path = workdir / f"synthetic_{label(rows)}_seed{seed}.csv"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        write_log(
            SyntheticSpec(events=rows, seed=seed, **default_sizes(rows)), path, progress=False
        )
    return path


def measure(csv: Path, code: Path | None) -> dict[str, Any]:
    """Load ``csv`` in a child process; its figures.

    Raises
    ------
    RecsvcError
        The child failed (its stderr says why).
    """
    command = [sys.executable, "-c", CHILD, str(csv), str(code or "")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RecsvcError(f"the loading child exited with {done.returncode}:\n{done.stderr}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    above = child["peak_mib"] - child["baseline_mib"]
    return {
        "rows": child["rows"],
        "seconds": round(child["seconds"], 2),
        "rows_per_s": round(child["rows"] / child["seconds"]),
        "peak_rss_mib": round(child["peak_mib"], 1),
        "baseline_mib": round(child["baseline_mib"], 1),
        "mib_per_million_rows": round(above / (child["rows"] / 1e6), 1),
        "skipped": child["skipped"],
        "csv_mib": round(csv.stat().st_size / 2**20, 1),
        "loader": child["loader"],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loading",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=parse_size, default=16_000_000, help="e.g. 16M")
    parser.add_argument("--workdir", type=Path, default=Path(".local/loading"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--code",
        type=Path,
        help="import offline.data.events from this folder (e.g. a git worktree of older code)",
    )
    args = parser.parse_args(argv)
    try:
        csv = synthetic_log(args.rows, args.workdir, args.seed)
        print(json.dumps(measure(csv, args.code)), flush=True)
    except RecsvcError as exc:
        print(f"bench.loading: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
