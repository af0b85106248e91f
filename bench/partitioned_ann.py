"""Benchmark of partitioned annoy search against brute force on a synthetic catalogue.

    python -m bench.partitioned_ann            # 200,000 x 64-d, 4 partitions, top-200

Generates a seeded two-level Gaussian mixture (topics, each with sub-clusters, so that an
item's 200 nearest neighbours span several sub-clusters rather than one clear-cut blob),
builds one annoy index per partition (saved to a temporary directory) and one index over the
whole catalogue, queries a seeded sample of items for their top ``k`` with the partitioned
search (worker processes), with the single index and with exact brute force in blocks, and
prints build and query times and the mean overlap of each top ``k`` with the exact one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from offline.ann.partitioned import build_partitioned, query_partitioned
from offline.ann.search import build_index, exact_neighbours, query_neighbours, recall_at_k
from offline.sources.base import Neighbours
from recsvc.exceptions import RecsvcError


def synthetic_catalogue(
    n: int, dim: int, seed: int, topics: int = 200, per_topic: int = 25
) -> np.ndarray:
    """Seeded two-level Gaussian mixture.

    Returns
    -------
    float32 array, shape (n, dim)
        ``topic centre + 0.7 * sub-cluster offset + 0.6 * noise`` per item, in random order.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim))
    subs = centres.repeat(per_topic, axis=0) + 0.7 * rng.normal(size=(topics * per_topic, dim))
    which = rng.integers(0, len(subs), size=n)
    return (subs[which] + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)


def _rows(neighbours: Neighbours, items: np.ndarray) -> Neighbours:
    """Only the queried rows, shape (m, k), to keep memory small."""
    return Neighbours(neighbours.items[items].copy(), neighbours.scores[items].copy())


def run(args: argparse.Namespace) -> dict[str, float]:
    """Build, query and compare; returns the figures printed by :func:`main`."""
    vectors = synthetic_catalogue(args.items, args.dim, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    sample = np.sort(rng.choice(args.items, args.queries, replace=False))
    own = np.arange(len(sample))
    figures: dict[str, float] = {}

    started = time.perf_counter()
    exact = _rows(exact_neighbours(vectors, None, args.k, items=sample), sample)
    figures["exact_query_s"] = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="partitioned-ann-") as directory:
        started = time.perf_counter()
        index = build_partitioned(
            vectors,
            n_partitions=args.partitions,
            n_trees=args.trees,
            seed=args.seed,
            directory=directory,
        )
        figures["partitioned_build_s"] = time.perf_counter() - started
        started = time.perf_counter()
        merged = query_partitioned(
            index, vectors, args.k, items=sample, search_k=args.search_k, workers=args.workers
        )
        figures["partitioned_query_s"] = time.perf_counter() - started
    figures["partitioned_overlap"] = recall_at_k(_rows(merged, sample), exact, own)
    del merged

    started = time.perf_counter()
    single = build_index(vectors, n_trees=args.trees, seed=args.seed)
    figures["single_build_s"] = time.perf_counter() - started
    known = np.ones(args.items, dtype=bool)
    for label, search_k in (("single", args.search_k), ("single_4x", 4 * args.search_k)):
        started = time.perf_counter()
        found = query_neighbours(single, known, args.k, items=sample, search_k=search_k)
        figures[f"{label}_query_s"] = time.perf_counter() - started
        figures[f"{label}_overlap"] = recall_at_k(_rows(found, sample), exact, own)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--trees", type=int, default=10)
    parser.add_argument("--search-k", type=int, default=10_000, help="per query and partition")
    parser.add_argument("--workers", type=int, default=None, help="default min(P, cpus)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        figures = run(args)
    except RecsvcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m = args.queries
    print(
        f"\n{args.items:,} items x {args.dim}-d, {args.partitions} partitions, "
        f"{m} sampled queries, top-{args.k}, n_trees={args.trees}, "
        f"search_k={args.search_k} per query and index, seed={args.seed}\n"
    )
    print("| search | build s | query s | ms/query | overlap with exact |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("partitioned (merged)", "partitioned", figures["partitioned_build_s"]),
        (f"single index, search_k={args.search_k}", "single", figures["single_build_s"]),
        (f"single index, search_k={4 * args.search_k}", "single_4x", figures["single_build_s"]),
        ("exact brute force (float64, blocks)", "exact", None),
    ]
    for label, key, build in rows:
        query = figures[f"{key}_query_s"]
        overlap = figures.get(f"{key}_overlap", 1.0)
        built = "-" if build is None else f"{build:.1f}"
        print(f"| {label} | {built} | {query:.1f} | {1000 * query / m:.2f} | {overlap:.2%} |")
    ok = figures["partitioned_overlap"] >= 0.95
    print(f"\npartitioned overlap {'>=' if ok else '<'} 95 %")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
