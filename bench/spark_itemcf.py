"""Seconds of Spark's item-CF neighbours on a synthetic log, for this checkout or another.

    python -m bench.spark_itemcf --log .local/synthetic/2M.csv
    python -m bench.spark_itemcf --log .local/synthetic/2M.csv --code /tmp/old-checkout

The log is a Taobao-format file (``python -m offline.data.synthetic --events 2000000
--out ...``). Each run times ``SparkItemCF.neighbours(--k)`` over every event (or, with
``--engine local``, the local engine's ``ItemCF.neighbours``, for the ratio), in a child
process whose ``sys.path`` starts at ``--code`` (default: this checkout), so the code
before a change (a ``git worktree`` of an older commit) and after it run the same
measurement. Alternate the two on a quiet machine; compare the checksums, which equal
neighbours give equal. One JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: What the child runs: load, time the neighbours, print one JSON line.
CHILD = """
import json, sys, time
import numpy as np
from offline.data.events import TAOBAO_SPEC, load_events
from offline.data.interactions import Interactions
from offline.sources.itemcf import ItemCF
from offline.spark.itemcf import SparkItemCF
from offline.spark.session import spark_session

log = load_events(sys.argv[1], TAOBAO_SPEC)
order = np.lexsort((log.ts, log.user_codes))
n_items = len(log.item_vocab)
fit = Interactions(log.user_codes[order], log.item_codes[order], log.types[order],
                   log.ts[order], len(log.user_vocab), n_items)
category = np.full(n_items, -1, np.int32)
category[log.item_codes] = log.category_codes
if sys.argv[3] == "local":
    start = time.perf_counter()
    found = ItemCF(fit, category, progress=False).neighbours(int(sys.argv[2]))
    seconds = time.perf_counter() - start
else:
    with spark_session() as spark:
        start = time.perf_counter()
        found = SparkItemCF(spark, fit, category).neighbours(int(sys.argv[2]))
        seconds = time.perf_counter() - start
print(json.dumps({"seconds": round(seconds, 1), "filled": int((found.items >= 0).sum()),
                  "items_checksum": int(found.items.sum()),
                  "scores_checksum": round(float(np.nansum(found.scores)), 6)}))
"""


def run(log: Path, code: Path, k: int, engine: str = "spark") -> dict[str, object]:
    """One timing in a child process with ``code`` first on its path."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(log), str(k), engine],
        cwd=code, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench.spark_itemcf: the run in {code} failed:\n{done.stderr[-2000:]}")
    return {"code": str(code), "engine": engine, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="a Taobao-format event file")
    parser.add_argument("--code", type=Path, default=Path.cwd(), help="checkout to time")
    parser.add_argument("--k", type=int, default=200, help="neighbours per item (200)")
    parser.add_argument(
        "--engine", choices=["spark", "local"], default="spark", help="what to time (spark)"
    )
    args = parser.parse_args(argv)
    if not args.log.is_file():
        parser.error(f"--log {args.log}: no such file")
    print(json.dumps(run(args.log, args.code.resolve(), args.k, args.engine)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
