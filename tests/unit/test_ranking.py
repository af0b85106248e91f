from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_bundle_arrays, unpopular_first, with_sessions

from recsvc.bundle import load_bundle, write_bundle
from recsvc.candidates import CandidateSettings
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import BundleError, InvalidRequest, ItemNotFound
from recsvc.ranking import Fallback, Ranker
from recsvc.scoring import session_window
from recsvc.second_stage import MODEL_ARRAY, model_array
from recsvc.sessions import SessionEvent


def visit(item: str, kind: str = "click", ts: float = 0.0) -> SessionEvent:
    return SessionEvent(f"{item}{ts}", item, kind, ts)


def test_session_window_counts_visits_newest_first() -> None:
    assert session_window("a", ["b", "b", "c", "a", "a"], 8) == ["a", "c", "b"]
    assert session_window("a", ["a", "b"], 8) == ["a", "b", "a"]
    assert session_window("z", list("abcdefghij"), 4) == ["z", "j", "i", "h"]
    assert session_window("a", [], 8) == ["a"]


def test_ranks_by_the_pooled_user_vector(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle))
    session = [visit("b", ts=1), visit("d", "fav", ts=2), visit("a", ts=3)]
    ranking = ranker.rank("a", 4, session)  # fav is not a visit; the trailing a is this view
    assert ranking.items == ["e", "b", "c", "d"]
    assert ranking.personalized and ranking.session_events_used == 1


def test_an_empty_session_ranks_by_the_current_item_alone(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle))
    alone = ranker.rank("a", 4)
    only_favs = ranker.rank("a", 4, [visit("b", "fav")])  # a favourite is not a visit
    assert alone.personalized and alone.session_events_used == 0
    assert only_favs == alone


@pytest.mark.parametrize("second_stage", [False, True])
def test_recommend_before_the_click_equals_recommend_after_it(
    tiny_bundle: Path, tmp_path: Path, second_stage: bool
) -> None:
    bundle = load_bundle(tiny_bundle)
    if second_stage:
        arrays = with_sessions(dict(bundle.arrays)) | {"item_fit_events": np.full(5, 9)}
        arrays[MODEL_ARRAY] = model_array(unpopular_first())
        bundle = load_bundle(write_bundle(tmp_path, arrays, {}))
    ranker = Ranker(bundle)
    assert (ranker.second_stage is not None) == second_stage
    earlier = [visit("b", ts=1), visit("c", ts=2)]
    before = ranker.rank("a", 4, earlier)  # the view's click has not reached the session
    after = ranker.rank("a", 4, [*earlier, visit("a", ts=3)])  # it has
    assert before == after and before.session_events_used == 2
    assert ranker.rank("a", 4, []) == ranker.rank("a", 4, [visit("a")])


def test_falls_back_to_the_offline_order(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle))
    down = ranker.rank("a", 4, [visit("b")], fallback=Fallback.SESSION_STORE_UNAVAILABLE)
    assert down.items == ["b", "c", "d", "e"] and not down.personalized


def test_items_the_model_never_saw(tmp_path: Path) -> None:
    arrays = tiny_bundle_arrays()
    arrays["models/personalized/known"][:] = [False, False, True, True, True]
    ranker = Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))
    ranking = ranker.rank("a", 4, [visit("b")])
    assert ranking.fallback == Fallback.ITEM_NOT_IN_MODEL and ranking.items == ["b", "c", "d", "e"]
    assert ranker.rank("a", 4, [visit("c")]).personalized  # c is known: u = 0.5 * [1, 1] / 2


def test_errors(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle))
    with pytest.raises(ItemNotFound):
        ranker.rank("nope", 4)
    with pytest.raises(InvalidRequest):
        ranker.rank("a", 0)
    with pytest.raises(BundleError, match="no model 'personalized_cart'"):
        Ranker(load_bundle(tiny_bundle), "personalized_cart")


def test_errors_quote_long_values_short(tiny_bundle: Path) -> None:
    ranker = Ranker(load_bundle(tiny_bundle))
    huge = "z" * 2**20
    with pytest.raises(ItemNotFound) as missing:
        ranker.rank(huge, 4)
    with pytest.raises(InvalidRequest) as no_category:
        ranker.rank("a", 4, category=huge)
    for caught in (missing, no_category):
        assert len(str(caught.value)) < 200 and "(1048576 characters)" in str(caught.value)
    with pytest.raises(ItemNotFound, match="item 'nope' is not in bundle"):
        ranker.index("nope")


def test_a_bundle_with_an_item_id_twice_is_refused(tmp_path: Path) -> None:
    arrays = tiny_bundle_arrays()
    arrays["item_ids"] = np.array(["a", "b", "c", "d", "a"])
    with pytest.raises(BundleError, match="more than once"):
        Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))


def test_a_bundle_without_models_serves_the_offline_order(tmp_path: Path) -> None:
    from helpers import tiny_bundle_arrays

    arrays = {k: v for k, v in tiny_bundle_arrays().items() if not k.startswith("models/")}
    ranker = Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))
    ranking = ranker.rank("e", 3, [visit("b")])
    assert ranking.fallback == Fallback.NO_MODEL
    assert ranking.items == ["a", "b", "c"] and np.allclose(ranking.scores, [1.0, 0.75, 0.5])


def test_an_earlier_visits_pool_adds_candidates_when_configured(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    # d's pool is just a. With the session [b], b's pool adds c. The window (d, b) gives
    # u = (1*[0,0] + 0.5*[0,1]) / 2 = [0, 0.25]: a scores 0, c scores -0.25.
    plain = Ranker(bundle).rank("d", 2, [visit("b")])
    joined = Ranker(bundle, candidates=CandidateSettings(session_pools=1)).rank(
        "d", 2, [visit("b")]
    )
    assert plain.items == ["a"]
    assert joined.items == ["a", "c"] and joined.scores == [0.0, -0.25]
    assert joined.sources == [1, 1] and joined.personalized


@pytest.mark.parametrize("category", [None, "x"])
def test_the_python_candidate_path_ranks_a_lone_pool_as_the_compiled_one(
    tiny_bundle: Path, category: str | None
) -> None:
    bundle = load_bundle(tiny_bundle)
    compiled = Ranker(bundle)  # adds nothing to pools: PoolRanker ranks in C
    joined = Ranker(bundle, candidates=CandidateSettings(session_pools=1))
    for session in ([], [visit("a")], [visit("a"), visit("b", "fav")]):
        want = compiled.rank("a", 4, session, category=category)
        assert joined.rank("a", 4, session, category=category) == want


def test_session_knn_candidates_carry_their_flag(tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path, with_sessions(tiny_bundle_arrays()), {}))
    ranker = Ranker(bundle, candidates=CandidateSettings(knn_items=5))
    # The window (d) pools to u = [0, 0]: every score ties, so the candidates keep their order.
    ranking = ranker.rank("d", 2, [])
    assert ranking.items == ["a", "e"] and ranking.sources == [1, SOURCE_BITS["session_knn"]]
    assert Ranker(bundle).rank("d", 2, []).items == ["a"]  # off by default


def test_a_manifest_with_bad_candidate_settings_is_a_bundle_error(tmp_path: Path) -> None:
    for bad in ({"knn": {"k": 5, "colour": 1}}, {"knn": 3}, {"cap": 0}, ["cap"]):
        version = write_bundle(tmp_path / str(len(str(bad))), tiny_bundle_arrays(),
                               {"parameters": {"candidates": bad}})  # fmt: skip
        with pytest.raises(BundleError, match="manifest: "):
            Ranker(load_bundle(version))
