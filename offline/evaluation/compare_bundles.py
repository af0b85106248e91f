"""One method's hit ratios on two bundles of the same held-out cases, with the paired difference.

    python -m offline.evaluation.compare_bundles --base .local/results/taobao \\
        --other .local/results/taobao-pss --method personalized

Use it to see what a change to the pools (e.g. adding the PSS source) does to a ranking
method: both bundles must hold the same held-out events, so every case is scored twice and
the difference gets a user-level bootstrap interval, as ``recsvc eval`` gives between methods.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from offline.evaluation.evaluate import EVAL_ARRAYS, available_methods, evaluate
from offline.evaluation.metrics import Difference, paired_bootstrap
from offline.evaluation.report import format_differences, format_table
from recsvc.bundle import Bundle, load_bundle
from recsvc.exceptions import RecsvcError
from recsvc.live import LiveSettings

#: The method that replays the held-out stream first (the live co-visits' defaults).
REPLAYED = "served_live"


@dataclass(frozen=True)
class Comparison:
    """One method on two bundles: a ``recsvc eval`` result whose "methods" are the two
    bundles' labels, and the hr@k differences, other - base."""

    result: dict[str, Any]
    differences: list[Difference]


def compare_bundles(
    base: Bundle,
    other: Bundle,
    method: str,
    labels: tuple[str, str] = ("base", "other"),
    ks: Sequence[int] = (5, 10, 20),
    metric_k: int = 10,
    seed: int = 0,
) -> Comparison:
    """Score ``method`` on both bundles' cases and bootstrap the hr@``metric_k`` differences.

    Raises
    ------
    RecsvcError
        The bundles hold different items or held-out events, hold no held-out case, or one of
        them lacks the method.
    """
    if not np.array_equal(np.asarray(base["item_ids"]), np.asarray(other["item_ids"])):
        raise RecsvcError(f"bundles {base.version} and {other.version} list different items")
    for name in EVAL_ARRAYS:
        if not np.array_equal(np.asarray(base[name]), np.asarray(other[name])):
            raise RecsvcError(
                f"bundles {base.version} and {other.version} hold different held-out events "
                f"({name} differs); compare bundles built from the same split"
            )
    # served_live is served with the held-out stream replayed (recsvc eval --replay).
    scored = "served" if method == REPLAYED else method
    for bundle in (base, other):
        if scored not in available_methods(bundle):
            raise RecsvcError(
                f"bundle {bundle.version} has no method {method!r}; it has "
                f"{', '.join([*available_methods(bundle), REPLAYED])}"
            )
    replay = LiveSettings() if method == REPLAYED else None
    # served_live alone: the plain served ranking would double the cost and is not compared.
    asked = [] if method == REPLAYED else [method]
    runs = [evaluate(bundle, ks, asked, replay=replay) for bundle in (base, other)]
    cases = runs[0].cases
    if len(cases) == 0:
        raise RecsvcError(f"bundle {base.version} has no held-out case to compare on")
    results = [run.result() for run in runs]
    methods = {label: r["methods"][method] for label, r in zip(labels, results, strict=True)}
    differences = []
    for subset, mask in (("click", np.ones(len(cases), dtype=bool)), ("cart", cases.is_cart)):
        if not mask.any():
            continue
        hits = [(run.ranks[method][mask] <= metric_k).astype(np.float64) for run in runs]
        value, low, high = paired_bootstrap(hits[1], hits[0], cases.users[mask], seed=seed)
        metric, n = f"{subset} hr@{metric_k}", int(mask.sum())
        differences.append(Difference(labels[1], labels[0], metric, n, value, low, high))
    return Comparison({"cases": results[0]["cases"], "methods": methods}, differences)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="bundle (root or version) to compare to")
    parser.add_argument(
        "--other", required=True, help="bundle with the change, built from the same split"
    )
    parser.add_argument(
        "--method",
        default="personalized",
        help="a method of recsvc eval that both bundles have: popular, fallback, itemcf, "
        "item2vec, image, pss, personalized, personalized_cart, sknn, vsknn, served, "
        "or served_live (served with the held-out stream replayed, as recsvc eval --replay "
        "does, with the default live settings) (default: personalized)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    try:
        base, other = load_bundle(args.base), load_bundle(args.other)
        labels = (f"base {base.version}", f"other {other.version}")
        comparison = compare_bundles(base, other, args.method, labels, seed=args.seed)
    except RecsvcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.method}: hit ratios (%) on the same held-out cases")
    print(format_table(comparison.result, (5, 10, 20)), end="")
    print(format_differences(comparison.differences), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
