"""The ``conversion`` setting: which next-item events mark a conversion case (cart, buy, both).

Cases by hand, the setting's validation, and ``recsvc eval`` picking its conversion cases
from the bundle's recorded parameters. Training with it is in test_conversion_training.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle_arrays

from offline.config import PipelineConfig, apply_overrides
from offline.data.interactions import BUY, CART, CLICK, FAV
from offline.data.sequences import next_item_cases
from offline.evaluation.evaluate import cases_from_bundle, evaluate
from offline.evaluation.report import format_table
from recsvc.bundle import load_bundle, write_bundle
from recsvc.cli import main
from recsvc.exceptions import BundleError, ConfigError

# user, item, type, ts, held out
EVENTS = [
    (0, 1, CLICK, 1.0, True),  # case 1 -> 2
    (0, 2, CLICK, 2.0, True),  # case 2 -> 3
    (0, 2, BUY, 3.0, True),  # 2 bought inside its visit's span: case 1 -> 2 is a buy case
    (0, 3, CLICK, 4.0, True),  # case 3 -> 4
    (0, 3, CART, 5.0, True),  # 3 carted and bought in its visit: 2 -> 3 is both
    (0, 3, BUY, 6.0, True),
    (0, 4, CLICK, 7.0, True),  # case 4 -> 5
    (0, 4, CART, 7.5, True),  # 4 carted: 3 -> 4 is a cart case ...
    (0, 9, BUY, 8.0, True),  # ... and this purchase is of another item: not a buy case
    (0, 5, CLICK, 9.0, True),  # case 5 -> 4
    (0, 4, BUY, 10.0, True),  # 4 bought after the visit of 5 began: labels neither 3 -> 4
    (0, 4, CLICK, 11.0, True),  # nor 5 -> 4 (bought before this visit began); case 4 -> 6
    (0, 6, CLICK, 12.0, True),  # the user's last visit
    (0, 6, FAV, 12.5, True),  # a favourite is no conversion
    (0, 6, BUY, 13.0, True),  # bought after the last visit, in its span: 4 -> 6 is a buy
    (1, 7, CLICK, 1.0, True),  # case 7 -> 8
    (1, 8, CLICK, 2.0, True),
    (2, 8, BUY, 0.5, True),  # another user's purchase of 8, before their own first visit
    (2, 5, CLICK, 1.0, True),
]
TARGETS = [2, 3, 4, 5, 4, 6, 8]
BY_HAND = {
    "cart": [False, True, True, False, False, False, False],
    "buy": [True, True, False, False, False, True, False],
    "both": [True, True, True, False, False, True, False],
}


def columns() -> tuple[np.ndarray, ...]:
    users, items, types, _ts, hold = (np.array(c) for c in zip(*EVENTS, strict=True))
    return users, items, types.astype(np.int8), hold


@pytest.mark.parametrize("conversion", ["cart", "buy", "both"])
def test_conversion_cases_by_hand(conversion: str) -> None:
    users, items, types, hold = columns()
    cases = next_item_cases(users, items, types, hold, window=4, conversion=conversion)
    assert cases.target.tolist() == TARGETS  # the cases themselves never change
    assert cases.is_cart.tolist() == BY_HAND[conversion]


def test_the_default_is_cart() -> None:
    users, items, types, hold = columns()
    cases = next_item_cases(users, items, types, hold, window=4)
    assert cases.is_cart.tolist() == BY_HAND["cart"]
    assert PipelineConfig().conversion == "cart"


def test_purchases_outside_the_eligible_events_do_not_count() -> None:
    users, items, types, hold = columns()
    hold[2] = False  # the purchase of 2 during its visit is no longer held out
    cases = next_item_cases(users, items, types, hold, window=4, conversion="buy")
    assert cases.is_cart.tolist() == [False, True, False, False, False, True, False]


def test_an_unknown_conversion_is_refused() -> None:
    users, items, types, hold = columns()
    with pytest.raises(ConfigError, match="one of cart, buy, both"):
        next_item_cases(users, items, types, hold, conversion="purchase")


@pytest.mark.parametrize("value", ["cart", "buy", "both"])
def test_the_setting_is_a_param_and_goes_into_the_manifest_parameters(value: str) -> None:
    config = apply_overrides(PipelineConfig(), [f"conversion={value}"])
    assert config.conversion == value
    assert config.as_dict()["conversion"] == value


def test_a_bad_value_is_a_config_error_listing_the_values() -> None:
    with pytest.raises(ConfigError, match=r"conversion must be one of cart, buy, both .*'foo'"):
        apply_overrides(PipelineConfig(), ["conversion=foo"])


def test_the_pipeline_command_exits_2_on_a_bad_value(tmp_path: Path, capsys) -> None:
    argv = ["pipeline", "--format", "taobao", "--events", str(tmp_path / "none.csv"),
            "--out", str(tmp_path / "out"), "--param", "conversion=foo"]  # fmt: skip
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert "recsvc pipeline: error: conversion must be one of cart, buy, both" in printed.err
    assert "Traceback" not in printed.err + printed.out
    assert not (tmp_path / "out").exists()


def bundle_with_purchases(root: Path, parameters: dict | None) -> Path:
    """The tiny bundle plus held-out events: user 0 views a then e and buys e; user 1 views
    b, then a, which they add to cart. Case a -> e is a purchase case, b -> a a cart case."""
    arrays = tiny_bundle_arrays()
    arrays.update(
        {
            "eval/users": np.array([0, 0, 0, 1, 1, 1], np.int32),
            "eval/items": np.array([0, 4, 4, 1, 0, 0], np.int32),
            "eval/types": np.array([CLICK, CLICK, BUY, CLICK, CLICK, CART], np.int8),
            "eval/ts": np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0]),
            "eval/is_holdout": np.ones(6, dtype=bool),
        }
    )
    manifest = {"source": "tests"} if parameters is None else {"parameters": parameters}
    return write_bundle(root, arrays, manifest)


@pytest.mark.parametrize(
    ("conversion", "flags"),
    [("cart", [False, True]), ("buy", [True, False]), ("both", [True, True])],
)
def test_eval_uses_the_bundles_recorded_conversion(
    tmp_path: Path, conversion: str, flags: list[bool]
) -> None:
    parameters = PipelineConfig(conversion=conversion).as_dict()
    bundle = load_bundle(bundle_with_purchases(tmp_path, parameters))
    assert bundle.manifest["parameters"]["conversion"] == conversion
    cases = cases_from_bundle(bundle)
    assert cases.target.tolist() == [4, 0]
    assert cases.is_cart.tolist() == flags
    evaluation = evaluate(bundle, methods=["personalized"])
    result = evaluation.result()
    assert result["conversion"] == conversion
    assert result["cases"] == {"click": 2, "cart": sum(flags)}
    title = {"cart": "Add-to-cart", "buy": "Purchase", "both": "Add-to-cart or purchase"}
    assert f"{title[conversion]} hit ratio (%)  n={sum(flags)}" in format_table(result, (5, 10))


def test_buy_rows_are_named_after_purchases(tmp_path: Path) -> None:
    bundle = load_bundle(bundle_with_purchases(tmp_path, {"conversion": "buy"}))
    evaluation = evaluate(bundle, methods=["personalized", "fallback"])
    assert "Add-to-cart" not in format_table(evaluation.result(), (5,))
    # The tiny bundle has no cart model: the pool order stands in for it.
    evaluation.ranks["personalized_cart"] = evaluation.ranks["fallback"]
    metrics = {d.metric for d in evaluation.differences()}
    assert "buy hr@10" in metrics and "cart hr@10" not in metrics


def test_bundles_without_the_setting_count_carts(tmp_path: Path) -> None:
    bundle = load_bundle(bundle_with_purchases(tmp_path, None))
    assert cases_from_bundle(bundle).is_cart.tolist() == [False, True]
    assert evaluate(bundle, methods=["personalized"]).result()["conversion"] == "cart"


def test_a_bundle_with_an_unknown_conversion_is_refused(tmp_path: Path) -> None:
    bundle = load_bundle(bundle_with_purchases(tmp_path, {"conversion": "fav"}))
    with pytest.raises(BundleError, match="unknown conversion 'fav'"):
        cases_from_bundle(bundle)
