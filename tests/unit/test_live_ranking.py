"""Ranking with live neighbours: known ones join the candidates, new ones get live scores."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    live_read,
    most_covisited_first,
    tiny_bundle_arrays,
    unpopular_first,
    with_sessions,
)

from recsvc.bundle import load_bundle, write_bundle
from recsvc.contract import SOURCE_BITS
from recsvc.exceptions import ItemNotFound
from recsvc.features import FEATURES
from recsvc.live import LiveSettings
from recsvc.live_candidates import gather
from recsvc.ranking import Fallback, RankedBy, Ranker
from recsvc.second_stage import MODEL_ARRAY, model_array
from recsvc.server import RecommendServer
from recsvc.sessions import InMemorySessionStore, SessionEvent
from recsvc.settings import Settings

LIVE = SOURCE_BITS["live"]
INDEX = {name: i for i, name in enumerate("abcde")}


def clicks(*items: str) -> list[SessionEvent]:
    return [SessionEvent(f"e{n}", item, "click", float(n)) for n, item in enumerate(items)]


@pytest.fixture
def ranker(tiny_bundle: Path) -> Ranker:
    return Ranker(load_bundle(tiny_bundle))


def test_gather_splits_known_and_new_and_weighs_each_anchor():
    read = live_read(a=[("n", 2.0), ("c", 1.0)], b=[("n", 1.0), ("m", 0.5), ("a", 3.0)])
    got = gather(read, INDEX, viewed="a")
    assert got.known.tolist() == [2]  # c; a is the item viewed
    assert got.new == ["n", "m"]  # by summed count: n 3.0, m 0.5
    assert got.anchors.tolist() == [0, 1]
    assert got.weights.tolist() == [[2.0, 1.0], [0.0, 0.5]]
    # the live score is the count-weighted mean of the anchors' scores
    assert got.new_scores(np.array([1.0, 4.0])).tolist() == [2.0, 4.0]
    assert got.new_scores(np.array([-np.inf, 4.0])).tolist() == [4.0, 4.0]
    assert got.new_scores(np.array([-np.inf, -np.inf])).tolist() == [-np.inf, -np.inf]


def test_a_new_item_gets_the_score_of_the_item_it_was_co_visited_with(ranker: Ranker):
    # Window (a, b): u = [0.5, 0.25]; pool scores e 1.0, b .25, c .25, d -.25 (helpers);
    # n, seen only with a, scores as a would: u . out(a) = 0.5.
    ranking = ranker.rank("a", 4, clicks("b"), live=live_read(a=[("n", 1.0)]))
    assert ranking.items == ["e", "n", "b", "c"]
    assert ranking.scores[:2] == [1.0, 0.5]
    assert ranking.sources[1] == LIVE
    assert ranking.personalized and ranking.ranked_by == RankedBy.FIRST_STAGE


def test_a_known_live_neighbour_joins_the_pool_with_the_live_flag(ranker: Ranker):
    # b's pool is a, c; e was co-visited with b in the stream.
    ranking = ranker.rank("b", 4, clicks("a"), live=live_read(b=[("e", 1.0), ("a", 0.5)]))
    assert set(ranking.items) == {"a", "c", "e"}
    flags = dict(zip(ranking.items, ranking.sources, strict=True))
    assert flags["e"] == LIVE
    assert flags["a"] & LIVE and flags["a"] & SOURCE_BITS["itemcf"]


def test_a_view_of_an_item_only_the_stream_knows(ranker: Ranker):
    read = live_read(n=[("a", 1.0), ("m", 0.5)])
    personal = ranker.rank("n", 4, clicks("b"), live=read)
    assert personal.items == ["a", "m"]  # m has no known anchor: scored last
    assert personal.personalized and personal.session_events_used == 1
    assert personal.scores[1] == -np.inf
    anonymous = ranker.rank("n", 4, [], live=read)
    assert anonymous.items == ["a", "m"] and not anonymous.personalized
    assert anonymous.fallback == Fallback.ITEM_NOT_IN_MODEL
    assert anonymous.sources == [LIVE, LIVE]
    with pytest.raises(ItemNotFound, match="no live co-visits"):
        ranker.rank("ghost", 4, clicks("b"), live=live_read(b=[("a", 1.0)]))


def test_filters_apply_to_the_live_candidates_of_an_item_only_the_stream_knows(
    ranker: Ranker,
):
    read = live_read(n=[("a", 1.0), ("c", 0.5), ("m", 0.2)])
    # category y holds c and d: a (x) and the new m (no category) are filtered out
    assert ranker.rank("n", 4, clicks("b"), category="y", live=read).items == ["c"]
    seen = ranker.rank("n", 4, clicks("a", "b"), exclude_seen=True, live=read)
    assert "a" not in seen.items and "c" in seen.items


def test_filters_drop_new_items(ranker: Ranker):
    read = live_read(a=[("n", 1.0), ("m", 1.0)])
    assert "n" not in ranker.rank("a", 4, clicks("b"), category="x", live=read).items
    seen = ranker.rank("a", 4, [*clicks("b"), SessionEvent("s", "n", "click", 9.0)],
                       exclude_seen=True, live=read)  # fmt: skip
    assert "n" not in seen.items and "m" in seen.items


def test_without_live_neighbours_the_answer_is_unchanged(ranker: Ranker):
    plain = ranker.rank("a", 4, clicks("b"))
    assert ranker.rank("a", 4, clicks("b"), live=live_read()) == plain
    assert LIVE not in plain.sources


def test_the_second_stage_scores_new_items_too(tmp_path: Path):
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_fit_events": np.full(5, 9)}
    arrays[MODEL_ARRAY] = model_array(unpopular_first())
    ranker = Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))
    ranking = ranker.rank("b", 4, clicks("a"), live=live_read(b=[("n", 1.0)]))
    assert ranking.ranked_by == RankedBy.SECOND_STAGE
    assert "n" in ranking.items and np.isfinite(ranking.scores).all()
    assert ranking.sources[ranking.items.index("n")] == LIVE


def test_the_server_says_unavailable_for_a_new_item_it_could_not_look_up(tiny_bundle: Path):
    import grpc
    from helpers import serving

    from recsvc.exceptions import SessionStoreError
    from recsvc.live import LiveSettings
    from recsvc.sessions import InMemorySessionStore
    from recsvc.v1 import recommender_pb2 as pb

    class Down(InMemorySessionStore):
        reads = 0

        async def recent(self, user_id: str) -> list[SessionEvent]:
            Down.reads += 1
            raise SessionStoreError("connection refused")

    async def scenario() -> None:
        async with serving(tiny_bundle, Down(live=LiveSettings())) as (stub, _):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="new", k=2))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "could not be read" in caught.value.details()
            # A known item still gets its pool, marked; an anonymous one reads nothing.
            reads = Down.reads
            answer = await stub.Recommend(pb.RecommendRequest(item_id="a", k=2))
            assert answer.fallback_reason == pb.FALLBACK_REASON_NO_USER and Down.reads == reads
            answer = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=2))
            assert answer.fallback_reason == pb.FALLBACK_REASON_SESSION_STORE_UNAVAILABLE

    asyncio.run(scenario())


def test_a_new_item_without_an_anchor_is_not_scored_by_a_model_without_live_columns(
    tmp_path: Path,
):
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_fit_events": np.full(5, 9)}
    # A model trained before the live columns (their prefix): it never saw such a row.
    arrays[MODEL_ARRAY] = model_array(unpopular_first(FEATURES[:-2]))
    ranker = Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))
    # m was read only as a neighbour of n, which the bundle does not know: no anchor
    ranking = ranker.rank("b", 4, clicks("a"), live=live_read(n=[("m", 1.0)], b=[("n", 1.0)]))
    assert ranking.items[-1] == "m" and ranking.scores[-1] == -np.inf
    assert np.isfinite(ranking.scores[ranking.items.index("n")])


@pytest.mark.parametrize("learned_live", [True, False], ids=["learned live", "never split"])
def test_only_a_model_that_learned_the_live_columns_scores_a_new_item_without_anchor(
    tmp_path: Path, learned_live: bool
) -> None:
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_fit_events": np.full(5, 9)}
    # Both models name all 24 columns; only the first splits on a live one (a model trained
    # with ranker.live=false names them too, and never does).
    model = most_covisited_first() if learned_live else unpopular_first()
    arrays[MODEL_ARRAY] = model_array(model)
    ranker = Ranker(load_bundle(write_bundle(tmp_path, arrays, {})))
    # m was read only as a neighbour of n, which the bundle does not know: no anchor
    ranking = ranker.rank("b", 4, clicks("a"), live=live_read(n=[("m", 1.0)], b=[("n", 1.0)]))
    assert np.isfinite(ranking.scores[ranking.items.index("m")]) == learned_live


@pytest.mark.parametrize(
    ("live", "warned"),
    [(1, None), (0, "--live 0"), ("read_top", "read_top 10 in training, 20 here")],
)
def test_a_server_warns_when_its_live_reads_are_not_those_the_second_stage_learned_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, live: int | str, warned: str | None
) -> None:
    arrays = {**with_sessions(tiny_bundle_arrays()), "item_fit_events": np.full(5, 9)}
    arrays[MODEL_ARRAY] = model_array(most_covisited_first())  # splits on a live column
    learned = {"second_stage": {"live": LiveSettings().as_dict()}}
    bundle = write_bundle(tmp_path, arrays, {"metrics": learned})
    reads = {"live_read_top": 20} if live == "read_top" else {"live": live}
    settings = Settings(bundle=bundle, port=0, metrics_port=0, watch_interval_s=0, **reads)

    async def construct() -> None:  # a server is made on its event loop
        RecommendServer(settings, InMemorySessionStore())

    with caplog.at_level(logging.WARNING, logger="recsvc.server"):
        asyncio.run(construct())
    told = [r.getMessage() for r in caplog.records if "second stage learned" in r.getMessage()
            or "live co-visits read here" in r.getMessage()]  # fmt: skip
    assert len(told) == (warned is not None)
    assert warned is None or warned in told[0]
