"""The second stage's model in a bundle: round trip, refusal when broken, and ranking by it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle_arrays, unpopular_first, with_sessions

from recsvc.bundle import load_bundle, write_bundle
from recsvc.exceptions import BundleError
from recsvc.features import FEATURES
from recsvc.ranking import RankedBy, Ranker
from recsvc.second_stage import MODEL_ARRAY, SecondStage, model_array


def bundle_with(tmp_path: Path, model: np.ndarray) -> Path:
    # Clicks far apart on the log scale: a 100k, b 3000, c 100, d 3, e 0.
    popularity = np.array([100_000, 3000, 100, 3, 0], dtype=np.int64)
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_popularity": popularity}
    arrays |= {"item_fit_events": np.full(5, 9), MODEL_ARRAY: model}
    return write_bundle(tmp_path, arrays, {})


def test_the_model_round_trips_through_the_bundle_and_ranks(tmp_path: Path) -> None:
    text = unpopular_first()
    bundle = load_bundle(bundle_with(tmp_path, model_array(text)))
    stage = SecondStage.from_bundle(bundle, FEATURES)
    assert stage is not None and stage.features == FEATURES
    # a's pool is b, c, d, e, in falling popularity: the model reverses it, scoring
    # the items the personalized model cannot tell apart as well.
    ranking = Ranker(bundle).rank("a", 4, [])
    assert ranking.items == ["e", "d", "c", "b"] and ranking.personalized
    assert ranking.ranked_by == RankedBy.SECOND_STAGE
    assert all(np.isfinite(ranking.scores))


def test_a_model_from_before_the_live_columns_reads_its_prefix(tmp_path: Path) -> None:
    bundle = load_bundle(bundle_with(tmp_path, model_array(unpopular_first(FEATURES[:-2]))))
    stage = SecondStage.from_bundle(bundle, FEATURES)
    assert stage is not None and stage.n_columns == len(FEATURES) - 2
    assert stage.uses("log_popularity") and not stage.uses("live_current")
    # Only that older layout: a model of some other prefix is refused.
    other = load_bundle(bundle_with(tmp_path / "other", model_array(unpopular_first(FEATURES[:9]))))
    with pytest.raises(BundleError, match="trained on the features"):
        SecondStage.from_bundle(other, FEATURES)
    rows = np.random.default_rng(0).uniform(0, 15, (6, len(FEATURES))).astype(np.float32)
    ones = rows.copy()
    ones[:, -2:] = 1.0  # the columns it was not trained on change nothing
    assert stage.scores(rows).tolist() == stage.scores(ones).tolist()
    assert Ranker(bundle).rank("a", 4, []).items == ["e", "d", "c", "b"]


def test_the_first_stage_alone_when_asked_or_for_another_model(tmp_path: Path) -> None:
    bundle = load_bundle(bundle_with(tmp_path, model_array(unpopular_first())))
    alone = Ranker(bundle, second_stage=False)
    assert alone.second_stage is None
    without_a_model = load_bundle(write_bundle(
        tmp_path / "plain", {**with_sessions(tiny_bundle_arrays()),
                             "item_popularity": np.array([5, 4, 3, 2, 1])}, {}
    ))  # fmt: skip
    first = alone.rank("a", 4, [])
    assert first.ranked_by == RankedBy.FIRST_STAGE
    # the same answer as the bundle without a second stage gives
    assert first.items == Ranker(without_a_model).rank("a", 4, []).items
    # the second stage's features hold the click model's scores: another model ranks alone
    arrays = {**bundle.arrays}
    for name, array in bundle.arrays.items():
        if name.startswith("models/personalized/"):
            arrays[name.replace("/personalized/", "/personalized_cart/")] = array
    with_cart = load_bundle(write_bundle(tmp_path / "cart", arrays, {}))
    assert Ranker(with_cart, "personalized_cart").second_stage is None
    assert Ranker(with_cart).second_stage is not None


def test_a_bundle_without_a_model_ranks_as_before(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert SecondStage.from_bundle(bundle, FEATURES) is None


@pytest.mark.parametrize(
    "broken",
    [
        lambda text: model_array(text[: len(text) // 3]),  # cut short
        lambda text: model_array("not a model at all"),
        lambda text: np.frombuffer(b"\xff\xfe\x00", dtype=np.uint8).copy(),  # not UTF-8
    ],
)
def test_a_broken_model_is_refused_with_the_bundle(tmp_path: Path, broken) -> None:
    bundle = load_bundle(bundle_with(tmp_path, broken(unpopular_first())))
    with pytest.raises(BundleError, match="ranker/model"):
        Ranker(bundle)


def test_a_model_of_other_features_is_refused(tmp_path: Path) -> None:
    names = (*FEATURES[:-1], "something_else")
    bundle = load_bundle(bundle_with(tmp_path, model_array(unpopular_first(names))))
    with pytest.raises(BundleError, match="trained on the features"):
        Ranker(bundle)


def test_items_without_a_fit_period_event_are_never_scored(tmp_path: Path) -> None:
    # e has no event before the held-out period: it is in the catalogue only because the
    # held-out period clicks it, so even a model that likes it must leave it last.
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_fit_events": np.array([9, 9, 9, 9, 0])}
    arrays |= {"item_popularity": np.array([100_000, 3000, 100, 3, 0]), MODEL_ARRAY: model_array(
        unpopular_first())}  # fmt: skip
    ranking = Ranker(load_bundle(write_bundle(tmp_path, arrays, {}))).rank("a", 4, [])
    assert ranking.items == ["d", "c", "b", "e"] and ranking.scores[-1] == -np.inf


@pytest.mark.parametrize("missing", ["sessions/items", "item_fit_events"])
def test_a_model_without_the_arrays_its_features_need_is_refused(
    tmp_path: Path, missing: str
) -> None:
    version = bundle_with(tmp_path, model_array(unpopular_first()))
    arrays = dict(load_bundle(version).arrays)
    arrays = {name: np.asarray(a) for name, a in arrays.items() if name != missing}
    if missing == "sessions/items":
        arrays = {n: a for n, a in arrays.items() if not n.startswith("sessions/")}
    bundle = load_bundle(write_bundle(tmp_path / "without", arrays, {}))
    with pytest.raises(BundleError, match="ranker model needs"):
        Ranker(bundle)


def test_a_model_uses_only_the_columns_its_trees_split_on(tmp_path: Path) -> None:
    # Trained with every column but popularity missing (as ranker.live=false leaves the
    # live columns): it names all 24, and uses one.
    stage = SecondStage.from_bundle(load_bundle(bundle_with(tmp_path, model_array(
        unpopular_first()))), FEATURES)  # fmt: skip
    assert stage is not None and stage.n_columns == len(FEATURES)
    assert stage.uses("log_popularity")
    assert not stage.uses("live_current") and not stage.uses("live_session")
    assert not stage.uses("no_such_feature")
