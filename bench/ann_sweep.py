"""Annoy settings against exact search: recall@k and time, as a Markdown table.

    python -m bench.ann_sweep --bundle .local/bundles/taobao --trees 10,25,50 \\
        --search-k -1,20000,50000

Reads an embedding matrix from a bundle (``embeddings/<name>`` and its ``_known`` mask),
samples query items, and for each (trees, search_k) pair reports the build time, the query
time per item and the recall of annoy's top-k against brute-force cosine search.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from offline.ann.search import build_index, exact_neighbours, query_neighbours, recall_at_k
from recsvc.bundle import load_bundle
from recsvc.exceptions import RecsvcError


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None


def sweep(
    embeddings: np.ndarray,
    known: np.ndarray,
    trees: Sequence[int],
    search_ks: Sequence[int],
    k: int,
    sample: int,
    seed: int,
) -> list[dict[str, float]]:
    """One row per (trees, search_k): build seconds, query ms per item, recall@k."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(known)
    items = np.sort(rng.choice(candidates, min(sample, len(candidates)), replace=False))
    exact = exact_neighbours(embeddings, known, k, items=items)
    rows = []
    for n_trees in trees:
        started = time.perf_counter()
        index = build_index(embeddings, known, n_trees=n_trees, seed=seed)
        built = time.perf_counter() - started
        for search_k in search_ks:
            started = time.perf_counter()
            approx = query_neighbours(index, known, k, items=items, search_k=search_k)
            queried = time.perf_counter() - started
            rows.append(
                {
                    "trees": n_trees,
                    "search_k": search_k,
                    "build_s": built,
                    "query_ms": 1000 * queried / len(items),
                    "recall": recall_at_k(approx, exact, items),
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ann_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", required=True, help="bundle version dir or root")
    parser.add_argument("--embedding", default="item2vec", help="embeddings/<NAME> in the bundle")
    parser.add_argument("--trees", type=_ints, default=[10, 25, 50])
    parser.add_argument("--search-k", type=_ints, default=[-1, 20000, 50000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--sample", type=int, default=500, help="query items (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        embeddings = np.asarray(bundle[f"embeddings/{args.embedding}"])
        known = np.asarray(bundle[f"embeddings/{args.embedding}_known"])
    except RecsvcError as exc:
        print(f"ann_sweep: error: {exc}", file=sys.stderr)
        return 1
    rows = sweep(embeddings, known, args.trees, args.search_k, args.k, args.sample, args.seed)
    print(
        f"{args.embedding}: {int(known.sum())} items x {embeddings.shape[1]} dims, "
        f"{min(args.sample, int(known.sum()))} sampled queries, recall@{args.k} vs exact"
    )
    print("| trees | search_k | build (s) | query (ms/item) | recall@k |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['trees']} | {r['search_k']} | {r['build_s']:.1f} | {r['query_ms']:.2f} "
            f"| {r['recall']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
