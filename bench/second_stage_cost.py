"""What the second stage costs per Recommend: the ranking call with and without it.

    python -m bench.second_stage_cost --bundle .local/bundles/taobao

Replays held-out cases of ``--bundle`` (one with a ``ranker/model``) through
``Ranker.rank`` as the server calls it, and prints one JSON line with microseconds per call,
best of ``--rounds``: the whole ranking with the second stage, its two parts (candidates
and features; the trees), and the first stage alone on the same bundle (``recsvc serve
--second-stage 0``: the item's pool ranked by the model). One process, one thread: a ratio
between rows is what to compare. ``--cold`` evicts the caches before every call, which is
closer to what a request costs inside a busy server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from offline.evaluation.evaluate import cases_from_bundle
from offline.evaluation.served import case_session
from recsvc.bundle import load_bundle
from recsvc.exceptions import RecsvcError
from recsvc.ranking import Ranker

#: Bytes touched between two calls with ``--cold``: more than the machine's caches, as the
#: requests, Redis and the load generator of a busy server are.
COLD_BYTES = 32 << 20


def best_of(rounds: int, calls: list[Callable[[], object]], cold: bool = False) -> float:
    """Microseconds per call, the mean over ``calls``, best of ``rounds``; with ``cold``
    each call starts after touching every cache line of :data:`COLD_BYTES` (not timed)."""
    junk = np.ones(COLD_BYTES // 4, dtype=np.float32) if cold else None
    best = float("inf")
    for _ in range(rounds):
        total = 0.0
        for call in calls:
            if junk is not None:
                junk[::16] += 1.0  # one float per 64-byte line
            started = time.perf_counter()
            call()
            total += time.perf_counter() - started
        best = min(best, total)
    return round(best / len(calls) * 1e6, 1)


def measure(bundle_dir: Path, cases: int, rounds: int, k: int, cold: bool = False) -> dict:
    bundle = load_bundle(bundle_dir)
    second, first = Ranker(bundle), Ranker(bundle, second_stage=False)
    stage = second.second_stage
    if stage is None:
        raise RecsvcError(f"{bundle_dir} has no second stage (ranker/model)")
    held_out = cases_from_bundle(bundle)
    ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    step = max(1, len(held_out) // cases)
    picked = range(0, len(held_out), step)
    requests = [(ids[int(held_out.current[n])], case_session(held_out, n, ids)) for n in picked]
    rows = [second.candidate_features(item, session) for item, session in requests]
    features = [found.features for found in rows if found is not None]

    def each(call: Callable[..., object], args: list) -> list[Callable[[], object]]:
        return [lambda a=a: call(*a) for a in args]

    return {
        "bundle": str(bundle_dir),
        "calls": len(requests),
        "cold": cold,
        "candidates_mean": round(float(np.mean([len(f) for f in features])), 1),
        "trees": stage.n_trees,
        "first_stage_us": best_of(rounds, each(first.rank, [(i, k, s) for i, s in requests]), cold),
        "second_stage_us": best_of(
            rounds, each(second.rank, [(i, k, s) for i, s in requests]), cold
        ),
        "features_us": best_of(rounds, each(second.candidate_features, requests), cold),
        "trees_us": best_of(rounds, each(stage.scores, [(f,) for f in features]), cold),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.second_stage_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, type=Path, help="bundle with ranker/model")
    parser.add_argument("--cases", type=int, default=2000, help="held-out cases (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="repeats, best kept (default 3)")
    parser.add_argument("--k", type=int, default=20, help="items per answer (default 20)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="touch 32 MB between calls, so that each starts with cold caches as in a server",
    )
    args = parser.parse_args(argv)
    if args.cases < 1 or args.rounds < 1 or args.k < 1:
        parser.error("--cases, --rounds and --k must be >= 1")
    try:
        print(json.dumps(measure(args.bundle, args.cases, args.rounds, args.k, args.cold)))
    except RecsvcError as exc:
        print(f"second_stage_cost: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
