"""Compare a synthetic event log with a real one, statistic by statistic.

    python -m bench.synthetic_realism --synthetic .local/synthetic/1M.csv \\
        --real ../shared/data/taobao/UserBehavior_head.csv

Both files are read with the project's Taobao loader (:func:`offline.data.events.load_taobao`).
Prints a Markdown table of events per user, items per category, cart / favourite / buy
events per click, the repeat-view rate (share of clicks on an item the same user clicked
before), the share of events on the top 1 % of items, distinct items per user, and the
share of consecutive clicks of a user that stay in one category; then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from offline.data.events import EventLog, load_taobao
from offline.data.interactions import BUY, CART, CLICK, FAV
from recsvc.exceptions import RecsvcError


def _spread(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
    }


def log_stats(log: EventLog) -> dict[str, float]:
    """The realism statistics of one log (see the module docstring).

    Returns
    -------
    Flat dict: ``events_per_user_mean`` ... ``same_category_next_click``.
    """
    # Codes index sorted vocabularies: renumbered densely they are np.unique's inverse.
    _, users = np.unique(log.user_codes, return_inverse=True)
    item_names, items = np.unique(log.item_codes, return_inverse=True)
    n_items = len(item_names)
    types = log.types
    stats: dict[str, float] = {
        "events": float(len(log)),
        "users": float(users.max() + 1),
        "items": float(n_items),
    }
    for key, value in _spread(np.bincount(users)).items():
        stats[f"events_per_user_{key}"] = value
    if log.category_codes is not None:
        cat_names, cats = np.unique(log.category_codes, return_inverse=True)
        item_cat = np.zeros(n_items, dtype=np.int64)
        item_cat[items] = cats
        stats["categories"] = float(len(cat_names))
        for key, value in _spread(np.bincount(item_cat)).items():
            stats[f"items_per_category_{key}"] = value
    clicks = max(int((types == CLICK).sum()), 1)
    for name, code in (("cart", CART), ("fav", FAV), ("buy", BUY)):
        stats[f"{name}_per_click"] = float((types == code).sum() / clicks)
    popularity = np.sort(np.bincount(items))[::-1]
    top = max(1, n_items // 100)
    stats["top1pct_item_share"] = float(popularity[:top].sum() / popularity.sum())
    order = np.lexsort((log.ts, users))
    is_click = types[order] == CLICK
    u, it = users[order][is_click], items[order][is_click]
    pair = u.astype(np.int64) * n_items + it
    stats["repeat_view_rate"] = float(1 - len(np.unique(pair)) / max(len(pair), 1))
    distinct_pairs = np.unique(users.astype(np.int64) * n_items + items)
    for key, value in _spread(np.bincount(distinct_pairs // n_items)).items():
        stats[f"distinct_items_per_user_{key}"] = value
    if log.category_codes is not None:
        c = cats[order][is_click]
        same_user = u[1:] == u[:-1]
        stats["same_category_next_click"] = float((c[1:] == c[:-1])[same_user].mean())
    return stats


def table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row per statistic and one column per log."""
    names = list(columns)
    keys = [k for k in next(iter(columns.values())) if all(k in c for c in columns.values())]
    lines = ["| statistic | " + " | ".join(names) + " |", "|---" + "|---:" * len(names) + "|"]
    for key in keys:
        cells = [_fmt(columns[name][key]) for name in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synthetic_realism",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--synthetic",
        type=Path,
        action="append",
        required=True,
        help="synthetic Taobao CSV (repeatable: one column each)",
    )
    parser.add_argument("--real", type=Path, required=True, help="real Taobao CSV")
    args = parser.parse_args(argv)
    columns = {}
    try:
        named = [(f"synthetic {p.stem}", p) for p in args.synthetic] + [("real", args.real)]
        for name, path in named:
            log = load_taobao(path)
            print(f"{name}: {log.report.summary()}", file=sys.stderr)
            columns[name] = log_stats(log)
    except RecsvcError as exc:
        print(f"synthetic_realism: error: {exc}", file=sys.stderr)
        return 1
    print(table(columns))
    print(json.dumps(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
