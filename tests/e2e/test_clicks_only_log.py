"""End to end on the real YooChoose sample: a clicks-only log with sessions as users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SMALL

from bench.second_stage_cost import measure
from recsvc.bundle import load_bundle
from recsvc.cli import main
from recsvc.live import LiveSettings

pytestmark = pytest.mark.slow


def test_a_clicks_only_log_gets_a_second_stage_the_baselines_and_no_cart_model(
    shared: Path, tmp_path: Path, capsys
) -> None:
    data = shared / "data/yoochoose"
    columns = ["--delimiter", "tab", "--header", "--user-col", "SessionId", "--item-col",
               "ItemId", "--time-col", "Time"]  # fmt: skip
    out = tmp_path / "bundles"
    code = main(
        ["pipeline", "--format", "csv", *columns, "--events", str(data / "train.tsv"),
         "--test-events", str(data / "test.tsv"), "--out", str(out), *SMALL]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "personalized_cart: not trained: no next visit" in printed
    # The first stage of the second stage's training queries fits on the time before the
    # fit period's last 24 hours and never sees the test file.
    assert "second stage, first stage split (UTC): fit on " in printed
    bundle = load_bundle(out)
    assert not [name for name in bundle.arrays if name.startswith("models/personalized_cart/")]
    assert bundle.manifest["parameters"]["fallback_order"] == "itemcf"
    trained = bundle.manifest["metrics"]["second_stage"]
    assert 0 < trained["queries"] <= trained["cases"] and trained["best_iteration"] >= 1
    assert trained["valid_ndcg10"] > max(trained["baseline_ndcg10"].values())
    assert trained["live"] == LiveSettings().as_dict()  # what the replay counted with
    assert "ranker/model" in bundle

    assert main(["eval", "--bundle", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    methods = json.loads((tmp_path / "eval.json").read_text())["methods"]
    assert {"sknn", "vsknn", "served", "fallback", "personalized"} <= set(methods)
    assert "personalized_cart" not in methods
    click = {name: result["click"] for name, result in methods.items()}
    # The stored pool order is item-CF's.
    assert click["fallback"]["hr@10"] == click["itemcf"]["hr@10"]
    for result in click.values():
        assert result["hr@20"] <= result["coverage"]
    # More candidates than the pool, ranked by the learned model.
    assert click["served"]["coverage"] > click["personalized"]["coverage"]
    assert click["served"]["hr@20"] > click["popular"]["hr@20"]

    # The cost benchmark runs on it (figures are for docs/BENCHMARKS.md, not asserted).
    cost = measure(out, cases=50, rounds=1, k=20)
    assert cost["calls"] >= 50 and cost["trees"] == trained["best_iteration"]
    assert min(cost[k] for k in ("second_stage_us", "features_us", "trees_us")) > 0
    cold = measure(out, cases=20, rounds=1, k=20, cold=True)
    assert cold["cold"] and cold["calls"] >= 20 and cold["first_stage_us"] > 0
