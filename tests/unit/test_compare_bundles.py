from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle_arrays

from offline.data.interactions import CART, CLICK
from offline.evaluation.compare_bundles import compare_bundles, main
from recsvc.bundle import load_bundle, write_bundle
from recsvc.exceptions import RecsvcError


def bundle_with_cases(root: Path, pool_of_a: list[int]) -> Path:
    """The tiny bundle plus one held-out case: user 0 saw c (training), then a, then e.

    The case's window is (a, c), so u = (1*[1,0] + 0.5*[1,1]) / 2 = [0.75, 0.25]; in a's
    pool b, c, d, e score 0.25, 0.5, -0.5, 1.5 and the target e ranks first. User 1's case
    (b, then a carted) has the target a at rank 1 of b's pool (a, c).
    """
    arrays = tiny_bundle_arrays()
    arrays["pools"] = arrays["pools"].copy()
    arrays["pools"][0] = pool_of_a
    arrays["pool_sources"] = arrays["pool_sources"].copy()
    arrays["pool_sources"][0] = np.where(np.array(pool_of_a) >= 0, arrays["pool_sources"][0], 0)
    arrays.update(
        {
            "eval/users": np.array([0, 0, 0, 1, 1], np.int32),
            "eval/items": np.array([2, 0, 4, 1, 0], np.int32),
            "eval/types": np.array([CLICK, CLICK, CLICK, CLICK, CART], np.int8),
            "eval/is_holdout": np.array([False, True, True, True, True]),
        }
    )
    return write_bundle(root, arrays, {"source": "tests"})


def test_the_target_dropped_from_a_pool_is_one_miss_in_two_cases(tmp_path: Path) -> None:
    base = load_bundle(bundle_with_cases(tmp_path / "base", [1, 2, 3, 4]))
    other = load_bundle(bundle_with_cases(tmp_path / "other", [1, 2, 3, -1]))
    comparison = compare_bundles(base, other, "personalized", ("without", "with"))
    assert comparison.result["cases"] == {"click": 2, "cart": 1}
    without, with_ = (comparison.result["methods"][label] for label in ("without", "with"))
    assert without["click"]["hr@5"] == 1.0 and without["click"]["mrr@20"] == 1.0
    assert with_["click"]["hr@5"] == 0.5  # only user 1's case still hits
    assert with_["cart"] == without["cart"]
    click, cart = comparison.differences
    assert (click.a, click.b, click.metric, click.cases) == ("with", "without", "click hr@10", 2)
    assert click.value == -0.5
    assert (cart.metric, cart.cases, cart.value, cart.low, cart.high) == ("cart hr@10", 1, 0, 0, 0)


def test_bundles_of_different_held_out_events_are_refused(tmp_path: Path, capsys) -> None:
    base = bundle_with_cases(tmp_path / "base", [1, 2, 3, 4])
    arrays = tiny_bundle_arrays()
    arrays.update(
        {
            "eval/users": np.array([0, 0], np.int32),
            "eval/items": np.array([2, 0], np.int32),
            "eval/types": np.array([CLICK, CLICK], np.int8),
            "eval/is_holdout": np.array([True, True]),
        }
    )
    other = write_bundle(tmp_path / "other", arrays, {"source": "tests"})
    assert main(["--base", str(base), "--other", str(other)]) == 2
    assert "hold different held-out events" in capsys.readouterr().err
    with pytest.raises(
        RecsvcError, match="no method 'pss'; it has popular, fallback, personalized"
    ):
        compare_bundles(load_bundle(base), load_bundle(base), "pss")


def test_bundles_of_other_items_or_without_cases_are_refused(tmp_path: Path) -> None:
    base = load_bundle(bundle_with_cases(tmp_path / "base", [1, 2, 3, 4]))
    arrays = tiny_bundle_arrays()
    arrays["item_ids"] = np.array(["a", "b", "c", "d", "z"])
    renamed = load_bundle(write_bundle(tmp_path / "renamed", arrays, {"source": "tests"}))
    with pytest.raises(RecsvcError, match="list different items"):
        compare_bundles(base, renamed, "personalized")
    arrays = tiny_bundle_arrays()
    arrays.update(
        {
            "eval/users": np.array([0, 0], np.int32),
            "eval/items": np.array([2, 0], np.int32),
            "eval/types": np.array([CLICK, CLICK], np.int8),
            "eval/is_holdout": np.array([False, False]),  # nothing held out: no case
        }
    )
    empty = load_bundle(write_bundle(tmp_path / "empty", arrays, {"source": "tests"}))
    with pytest.raises(RecsvcError, match="no held-out case"):
        compare_bundles(empty, empty, "personalized")


def test_served_live_replays_the_held_out_stream_on_both_bundles(tmp_path: Path) -> None:
    def bundle(root: Path, pool_of_a: list[int]) -> Path:
        # As bundle_with_cases, and user 2 went from a to e before user 0 did.
        arrays = dict(load_bundle(bundle_with_cases(root / "cases", pool_of_a)).arrays)
        arrays["eval/users"] = np.array([0, 0, 0, 1, 1, 2, 2], np.int32)
        arrays["eval/items"] = np.array([2, 0, 4, 1, 0, 0, 4], np.int32)
        arrays["eval/types"] = np.array([CLICK] * 4 + [CART] + [CLICK] * 2, np.int8)
        arrays["eval/is_holdout"] = np.array([False] + [True] * 6)
        arrays["eval/ts"] = np.array([0.0, 10, 11, 20, 21, 1, 2])
        return write_bundle(root, arrays, {"source": "tests"})

    base = load_bundle(bundle(tmp_path / "base", [1, 2, 3, 4]))
    other = load_bundle(bundle(tmp_path / "other", [1, 2, 3, -1]))
    # Click cases c -> a (user 0), a -> e (user 0 at 10 s), a -> e (user 2 at 1 s).
    served = compare_bundles(base, other, "served", ("without", "with"))
    assert served.result["methods"]["with"]["click"]["hr@10"] == 1 / 3  # e left a's pool
    live = compare_bundles(base, other, "served_live", ("without", "with"))
    assert live.result["methods"]["without"]["click"]["hr@10"] == 1.0
    # User 0's a -> e comes after user 2's co-visit of a and e: e is a live candidate again.
    assert live.result["methods"]["with"]["click"]["hr@10"] == 2 / 3
    with pytest.raises(RecsvcError, match="served_live"):
        compare_bundles(base, other, "nonsense")
