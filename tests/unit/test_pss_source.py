import numpy as np
import pytest

from offline.data.pairs import Pairs
from offline.features.compound import Part
from offline.pss.stage import (
    PSSSettings,
    add_random_negatives,
    described_beyond_category,
    items_for_neighbours,
    positive_groups,
)
from recsvc.exceptions import ConfigError


def test_random_negatives_top_up_to_the_ratio() -> None:
    pairs = Pairs(
        np.array([0, 1, 2, 3], np.int32),
        np.array([1, 2, 3, 4], np.int32),
        np.array([1, 1, 1, 0], np.int8),
        "view_to_view",
    )
    topped = add_random_negatives(pairs, np.arange(100, 200), ratio=2.0, seed=0)
    assert (topped.n_positive, topped.n_negative) == (3, 6)  # 2 per positive: 1 had, 5 drawn
    new = slice(4, None)
    assert set(topped.left[new]) <= {0, 1, 2}  # anchors of positives
    assert set(topped.right[new]) <= set(range(100, 200))
    assert topped.task == "view_to_view"
    assert add_random_negatives(topped, np.arange(100, 200), ratio=2.0, seed=0) is topped


def test_positive_groups_join_items_linked_by_positives() -> None:
    # positives 0-1, 1-2 (one group of three), 4-5; the negative 3-6 links nothing
    pairs = Pairs(
        np.array([0, 1, 4, 3], np.int32),
        np.array([1, 2, 5, 6], np.int32),
        np.array([1, 1, 1, 0], np.int8),
        "view_to_purchase",
    )
    groups = positive_groups(pairs, 8)
    assert groups[0] == groups[1] == groups[2] >= 0
    assert groups[4] == groups[5] >= 0 and groups[4] != groups[0]
    assert groups[[3, 6, 7]].tolist() == [-1, -1, -1]


def test_hrms_settings_need_known_levels_and_one_value_per_level() -> None:
    settings = PSSSettings(hrms_levels="pairs,category", hrms_alphas="2,4")
    assert settings.levels() == ["pairs", "category"]
    assert settings.floats("hrms_alphas") == (2.0, 4.0)
    PSSSettings(hrms_levels="category", hrms_alphas="2", hrms_betas="50",
                hrms_epsilons="0.1", hrms_weights="1").validate()  # fmt: skip
    with pytest.raises(ConfigError, match="hrms_levels"):
        PSSSettings(hrms_levels="pairs,brand")
    one_level = PSSSettings(hrms_levels="category")  # the values follow in later --params
    with pytest.raises(ConfigError, match="needs one per level"):
        one_level.validate()
    with pytest.raises(ConfigError, match="not comma-separated numbers"):
        PSSSettings(hrms_weights="1,x").validate()


def test_items_described_beyond_category_have_a_nonzero_known_non_category_part() -> None:
    category = Part("category", np.ones((4, 2), np.float32), np.ones(4, bool))
    behaviour = Part(
        "behaviour", np.array([[1, 0], [0, 0], [0, 1], [1, 1]], np.float32),
        np.array([True, True, True, False]),
    )  # fmt: skip
    title = Part("title", np.array([[0, 0], [1, 0], [0, 0], [0, 0]], np.float32), np.ones(4, bool))
    assert described_beyond_category([behaviour, category]).tolist() == [
        True, False, True, False,
    ]  # fmt: skip
    assert described_beyond_category([behaviour, title, category]).tolist() == [
        True, True, True, False,
    ]  # fmt: skip
    assert not described_beyond_category([category]).any()


def test_category_only_items_join_the_source_only_when_asked() -> None:
    category = Part("category", np.ones((3, 2), np.float32), np.ones(3, bool))
    behaviour = Part("behaviour", np.array([[1, 0], [0, 0], [0, 1]], np.float32), np.ones(3, bool))
    known = np.array([True, True, False])
    parts = [behaviour, category]
    assert items_for_neighbours(parts, known, PSSSettings()).tolist() == [True, False, False]
    asked = PSSSettings(category_only_neighbours=True)
    assert items_for_neighbours(parts, known, asked).tolist() == [True, True, False]
