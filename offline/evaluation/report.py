"""Presenting an evaluation: the paper-shaped table, the JSON file and the bar chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from offline.data.sequences import CONVERSION_NAMES
from offline.evaluation.metrics import Difference

CASE_TITLES = {"click": "Click hit ratio (%)", "cart": "Add-to-cart hit ratio (%)"}


def case_titles(result: dict) -> dict[str, str]:
    """``CASE_TITLES`` with the ``cart`` rows named after the result's conversion events."""
    name = CONVERSION_NAMES[result.get("conversion", "cart")]
    return {**CASE_TITLES, "cart": f"{name[0].upper()}{name[1:]} hit ratio (%)"}


def format_table(result: dict, ks: Sequence[int]) -> str:
    """The evaluation as fixed-width text: one block per case set, one row per method."""
    columns = [f"hr@{k}" for k in ks] + ["ndcg@10", "mrr@20", "coverage"]
    width = max([len(m) for m in result["methods"]] + [12])
    lines = []
    for subset, title in case_titles(result).items():
        n = result["cases"].get(subset, 0)
        rows = [(m, v[subset]) for m, v in result["methods"].items() if subset in v]
        if not rows:
            continue
        header = f"{title + f'  n={n}':<{width + 20}}"
        lines.append(header)
        lines.append(f"  {'method':<{width}}" + "".join(f"{c.upper():>9}" for c in columns))
        for method, metrics in rows:
            values = "".join(f"{100 * metrics[c]:>9.2f}" for c in columns)
            lines.append(f"  {method:<{width}}{values}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_differences(differences: Sequence[Difference]) -> str:
    """One line per comparison: difference in points with its 95 % bootstrap interval."""
    if not differences:
        return ""
    lines = ["Paired differences (percentage points, 95% user-level bootstrap interval):"]
    for d in differences:
        lines.append(
            f"  {d.a} - {d.b} on {d.metric} (n={d.cases}): {100 * d.value:+.2f} "
            f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        )
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def plot_hit_ratios(result: dict, ks: Sequence[int], path: str | Path, title: str = "") -> None:
    """Grouped bars of hr@K per method, one panel per case set (click, add-to-cart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    titles = case_titles(result)
    subsets = [s for s in titles if any(s in v for v in result["methods"].values())]
    fig, axes = plt.subplots(1, len(subsets), figsize=(6 * len(subsets), 4), squeeze=False)
    for ax, subset in zip(axes[0], subsets, strict=True):
        methods = [m for m, v in result["methods"].items() if subset in v]
        x = np.arange(len(ks))
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            values = [100 * result["methods"][method][subset][f"hr@{k}"] for k in ks]
            ax.bar(x + i * width - 0.4 + width / 2, values, width, label=method)
        ax.set_xticks(x, [f"HR@{k}" for k in ks])
        ax.set_ylabel("%")
        ax.set_title(f"{titles[subset]}, n={result['cases'].get(subset, 0)}")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
