"""One method's hit ratios on two bundles of the same held-out cases, with the paired difference.

    python -m offline.compare_bundles --base .local/results/taobao \\
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

import numpy as np

from offline.evaluate import EVAL_ARRAYS, available_methods, evaluate
from offline.metrics import paired_bootstrap, summarize
from recsvc.bundle import Bundle, load_bundle
from recsvc.exceptions import RecsvcError


@dataclass(frozen=True)
class Comparison:
    """Summaries of one method on both bundles and the hr@k differences (other - base)."""

    method: str
    base: dict[str, dict[str, float]]
    other: dict[str, dict[str, float]]
    cases: dict[str, int]
    differences: dict[str, tuple[float, float, float]]


def compare_bundles(
    base: Bundle, other: Bundle, method: str, ks: Sequence[int] = (5, 10, 20), seed: int = 0
) -> Comparison:
    """Score ``method`` on both bundles' cases and bootstrap the hr@10 differences.

    Raises
    ------
    RecsvcError
        The bundles hold different held-out events, or one of them lacks the method.
    """
    for name in EVAL_ARRAYS:
        if not np.array_equal(np.asarray(base[name]), np.asarray(other[name])):
            raise RecsvcError(
                f"bundles {base.version} and {other.version} hold different held-out events "
                f"({name} differs); compare bundles built from the same split"
            )
    if not np.array_equal(np.asarray(base["item_ids"]), np.asarray(other["item_ids"])):
        raise RecsvcError(f"bundles {base.version} and {other.version} list different items")
    for bundle in (base, other):
        if method not in available_methods(bundle):
            raise RecsvcError(f"bundle {bundle.version} has no method {method!r}")
    runs = [evaluate(bundle, ks, methods=[method]) for bundle in (base, other)]
    cases = runs[0].cases
    subsets = {"click": np.ones(len(cases), dtype=bool), "cart": cases.is_cart}
    subsets = {name: mask for name, mask in subsets.items() if mask.any()}
    summaries = [{n: summarize(r.ranks[method][m], ks) for n, m in subsets.items()} for r in runs]
    differences = {}
    for name, mask in subsets.items():
        hits = [(r.ranks[method][mask] <= 10).astype(np.float64) for r in runs]
        differences[f"{name} hr@10"] = paired_bootstrap(
            hits[1], hits[0], cases.users[mask], seed=seed
        )
    counts = {name: int(mask.sum()) for name, mask in subsets.items()}
    return Comparison(method, summaries[0], summaries[1], counts, differences)


def format_comparison(comparison: Comparison, base_label: str, other_label: str) -> str:
    lines = [f"{comparison.method}: hit ratios (%) on the same cases"]
    for subset, n in comparison.cases.items():
        lines.append(f"  {subset} (n={n})")
        for label, summary in ((base_label, comparison.base), (other_label, comparison.other)):
            metrics = "  ".join(f"{k} {100 * v:6.2f}" for k, v in summary[subset].items())
            lines.append(f"    {label:<40.40} {metrics}")
    lines.append("Paired differences, other - base (points, 95% user-level bootstrap interval):")
    for metric, (value, low, high) in comparison.differences.items():
        lines.append(f"  {metric}: {100 * value:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="bundle (root or version) to compare to")
    parser.add_argument("--other", required=True, help="bundle with the change")
    parser.add_argument("--method", default="personalized", help="default: personalized")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    try:
        base, other = load_bundle(args.base), load_bundle(args.other)
        comparison = compare_bundles(base, other, args.method, seed=args.seed)
    except RecsvcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(comparison, f"base {base.version}", f"other {other.version}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
