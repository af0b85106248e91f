"""The Locust shoppers' population: popularity-weighted items, returning users, the tally."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsvc.exceptions import BundleError


def _shoppers_module():
    # loadtest/ is a folder of scripts, not an installed package: load it by path.
    path = Path(__file__).resolve().parents[2] / "loadtest" / "shoppers.py"
    spec = importlib.util.spec_from_file_location("loadtest_shoppers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


shoppers = _shoppers_module()
Catalogue, PersonalizationTracker = shoppers.Catalogue, shoppers.PersonalizationTracker
ShopperPool, pick_shown = shoppers.ShopperPool, shoppers.pick_shown


def test_items_are_viewed_in_proportion_to_their_popularity_and_unclicked_ones_never():
    catalogue = Catalogue(np.array(["a", "b", "c", "d"]), np.array([6, 3, 0, 1]))
    rng = random.Random(1)
    views = Counter(catalogue.draw(rng) for _ in range(20_000))
    assert len(catalogue) == 3 and "c" not in views
    assert views["a"] / 20_000 == pytest.approx(0.6, abs=0.02)
    assert views["b"] / 20_000 == pytest.approx(0.3, abs=0.02)
    assert views["d"] / 20_000 == pytest.approx(0.1, abs=0.02)


def test_a_catalogue_needs_one_positive_weight_per_item():
    with pytest.raises(ValueError, match="positive"):
        Catalogue(np.array(["a", "b"]), np.array([0, 0]))
    with pytest.raises(ValueError, match="one non-negative weight per item"):
        Catalogue(np.array(["a", "b"]), np.array([1]))


def test_the_catalogue_comes_from_the_bundle(tiny_bundle: Path, tmp_path: Path):
    catalogue = Catalogue.from_bundle(tiny_bundle)
    assert catalogue.item_ids == ["a", "b", "c", "d", "e"]
    assert catalogue.weights.tolist() == [5, 4, 3, 2, 1]
    with pytest.raises(BundleError, match="no bundle"):
        Catalogue.from_bundle(tmp_path / "missing")


def test_a_few_shoppers_come_back_often_and_the_skew_can_be_turned_off():
    skewed = ShopperPool("u-", size=100, skew=1.0)
    rng = random.Random(2)
    visits = Counter(skewed.draw(rng) for _ in range(20_000))
    assert set(visits) <= {f"u-{n}" for n in range(1, 101)}
    assert visits["u-1"] > 10 * visits["u-50"]
    assert visits["u-1"] / 20_000 == pytest.approx(skewed.shares[0], abs=0.015)
    uniform = ShopperPool("u-", size=4, skew=0.0)
    assert uniform.shares.tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="at least one user"):
        ShopperPool("u-", size=0, skew=1.0)


def test_top_recommendations_are_clicked_more_often():
    rng = random.Random(3)
    clicks = Counter(pick_shown(["x", "y", "z"], rng) for _ in range(11_000))
    assert clicks["x"] > clicks["y"] > clicks["z"]
    assert clicks["x"] / 11_000 == pytest.approx(6 / 11, abs=0.02)  # 1 : 1/2 : 1/3


def test_the_personalized_share_is_counted_per_window_and_adds_up_across_processes():
    now = [100.0]
    worker = PersonalizationTracker(interval_s=10.0, clock=lambda: now[0])
    worker.start()
    worker.record(False, "NO_SESSION")
    worker.record(True, "UNSPECIFIED")
    now[0] = 125.0
    worker.record(True, "UNSPECIFIED")
    worker.count("views")
    master = PersonalizationTracker(interval_s=10.0)
    master.merge(worker.take())
    assert worker.windows == {} and not worker.counts  # taken
    master.merge({"windows": {"2": [1, 0]}, "reasons": {"NO_SESSION": 1}, "counts": {"views": 2}})
    summary = master.summary()
    assert summary["recommend_replies"] == 4
    assert summary["personalized_share"] == 0.5
    assert summary["share_by_window"] == [
        {"from_s": 0.0, "replies": 2, "personalized_share": 0.5},
        {"from_s": 20.0, "replies": 2, "personalized_share": 0.5},
    ]
    assert summary["fallback_reasons"] == {"NO_SESSION": 2}
    assert summary["views"] == 3
