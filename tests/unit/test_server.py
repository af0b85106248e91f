"""The gRPC server over loopback with an in-memory session store (Redis: tests/integration)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import serving, tiny_bundle_arrays, unpopular_first, with_sessions

from recsvc.bundle import write_bundle
from recsvc.events import Event
from recsvc.exceptions import SessionStoreError
from recsvc.second_stage import MODEL_ARRAY, model_array
from recsvc.server import LogThrottle, method_handlers
from recsvc.sessions import InMemorySessionStore, SessionEvent
from recsvc.v1 import recommender_pb2 as pb

METHOD = "/recsvc.v1.Recommender/Recommend"
#: Status details a client can always receive (metadata soft limit: 8 KB) and a person read.
SHORT_DETAILS = 300


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


class SlowStore(InMemorySessionStore):
    """Answers reads after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def recent(self, user_id: str) -> list[SessionEvent]:
        await asyncio.sleep(self.delay_s)
        return await super().recent(user_id)


class DownStore(InMemorySessionStore):
    """Fails every read, like Redis refusing connections; counts the attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def recent(self, user_id: str) -> list[SessionEvent]:
        self.reads += 1
        raise SessionStoreError("connection refused")


def click(event_id: str, user: str, item: str, ts: float) -> Event:
    return Event(event_id, user, item, "click", ts)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]


def test_personalized_answer_follows_the_session(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = InMemorySessionStore()
        async with serving(tiny_bundle, store) as (stub, _):
            before = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=4))
            await store.append([click("1", "u", "b", 10.0)])
            after = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=4))
        # No session yet: the current item alone is the window.
        assert before.personalized and before.session_events_used == 0
        assert before.fallback_reason == pb.FALLBACK_REASON_UNSPECIFIED
        assert ids(after) == ["e", "b", "c", "d"]  # worked out in tiny_bundle_arrays
        assert after.personalized and after.fallback_reason == pb.FALLBACK_REASON_UNSPECIFIED
        assert after.session_events_used == 1
        assert after.ranked_by == pb.RANKED_BY_FIRST_STAGE  # the bundle has no second stage
        assert [round(i.score, 6) for i in after.items] == [1.0, 0.25, 0.25, -0.25]
        assert list(after.items[2].sources) == [pb.SOURCE_ITEMCF, pb.SOURCE_ITEM2VEC]
        assert after.bundle_version == before.bundle_version != ""

    run(scenario)


def test_explain_names_the_earlier_visits_behind_each_item(tiny_bundle: Path) -> None:
    """Session c, b then the view of a: the terms of tests/unit/test_explanations.py."""

    async def scenario() -> None:
        store = InMemorySessionStore()
        await store.append([click("1", "u", "c", 10.0), click("2", "u", "b", 11.0)])
        async with serving(tiny_bundle, store) as (stub, _):
            plain = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=4))
            asked = pb.RecommendRequest(user_id="u", item_id="a", k=4, explain=True)
            explained = await stub.Recommend(asked)
        assert not any(item.because for item in plain.items)  # only when asked
        assert ids(explained) == ids(plain) == ["e", "b", "c", "d"]
        because = {
            item.item_id: [(b.item_id, b.clicks_ago, round(b.weight, 6)) for b in item.because]
            for item in explained.items
        }
        assert because == {
            "e": [("c", 2, round(1 / 6, 6))],
            "b": [("b", 1, round(1 / 6, 6)), ("c", 2, round(1 / 12, 6))],
            "c": [],
            "d": [("b", 1, round(1 / 6, 6))],
        }

    run(scenario)


def test_filters_and_default_k(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = InMemorySessionStore()
        await store.append([click("1", "u", "b", 10.0)])
        async with serving(tiny_bundle, store) as (stub, _):
            default = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a"))
            unseen = await stub.Recommend(
                pb.RecommendRequest(user_id="u", item_id="a", exclude_seen=True)
            )
            in_y = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", category="y"))
            anonymous = await stub.Recommend(pb.RecommendRequest(item_id="a", k=2))
        assert ids(default) == ["e", "b", "c", "d"]  # k defaults to 30; the pool has 4
        assert ids(unseen) == ["e", "c", "d"]
        assert ids(in_y) == ["c", "d"]
        assert ids(anonymous) == ["b", "c"]
        assert anonymous.fallback_reason == pb.FALLBACK_REASON_NO_USER
        assert anonymous.ranked_by == pb.RANKED_BY_POOL_ORDER

    run(scenario)


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.RecommendRequest(user_id="u", item_id="zzz"), grpc.StatusCode.NOT_FOUND, "zzz"),
        (pb.RecommendRequest(user_id="u"), grpc.StatusCode.INVALID_ARGUMENT, "item_id"),
        (pb.RecommendRequest(item_id="a", k=5), grpc.StatusCode.INVALID_ARGUMENT, "k must"),
        (
            pb.RecommendRequest(item_id="a", category="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "category 'nope'",
        ),
    ],
)
def test_bad_requests_get_the_right_status(
    tiny_bundle: Path, request_: pb.RecommendRequest, code: grpc.StatusCode, words: str
) -> None:
    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (stub, _):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request_)
        assert caught.value.code() == code
        assert words in caught.value.details()

    run(scenario)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff",  # not protobuf at all
        b"\x12\x02\xff\xfe",  # item_id with invalid UTF-8
        b"\x12\x05ab",  # item_id cut short
    ],
)
def test_undecodable_bytes_get_invalid_argument_without_a_traceback(
    tiny_bundle: Path, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (stub, server):
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            raw = channel.unary_unary(METHOD, response_deserializer=pb.RecommendResponse.FromString)
            with caplog.at_level(logging.WARNING):
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await raw(payload)
                    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "not a valid RecommendRequest" in caught.value.details()
                    assert len(caught.value.details()) < SHORT_DETAILS
            await channel.close()
            assert (await stub.Recommend(pb.RecommendRequest(item_id="a", k=1))).items

    run(scenario)
    # grpc's teardown may log "Event loop is closed" when the loop ends first: not a request.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if "Event loop is closed" not in r.getMessage()]
    # Our own line about them, rate-limited: one for the three calls.
    ours = [r for r in caplog.records if r.name == "recsvc.server" and r.levelno >= logging.WARNING]
    assert len(ours) == 1


@pytest.mark.parametrize("field", ["item_id", "user_id", "category"])
def test_a_huge_field_is_quoted_short_with_its_length(tiny_bundle: Path, field: str) -> None:
    huge = "\u00e9" + "x" * (2**20 - 1)
    request = pb.RecommendRequest(item_id="a", user_id="u")
    setattr(request, field, huge)

    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (stub, _):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Recommend(request)
        code, details = caught.value.code(), caught.value.details()
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), details
        assert len(details) < SHORT_DETAILS
        assert field in details and "1048576" in details and "\u00e9xxx" in details

    run(scenario)


def test_the_log_throttle_says_how_many_lines_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = LogThrottle(logging.getLogger("throttled"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for step in (0, 1, 1, 5, 4, 0):  # at 100, 101, 102, 107, 111, 111
            now[0] += step
            throttle.warning("bad request", size=step)
    assert [(r.msg, r.suppressed, r.size) for r in caplog.records] == [
        ("bad request", 0, 0),
        ("bad request", 3, 4),
    ]


def test_the_service_handlers_cover_every_rpc_of_the_proto() -> None:
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    assert set(method_handlers(Mock())) == set(service.methods_by_name)


def test_slow_session_read_is_abandoned_within_the_budget(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = SlowStore(delay_s=5.0)
        async with serving(tiny_bundle, store, budget_ms=100, store_cooldown_s=0) as (stub, srv):
            response = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=4))
            latency = srv.metrics.request_latency.labels(outcome="fallback", variant="default")
            samples = latency._sum.get()
        assert response.fallback_reason == pb.FALLBACK_REASON_BUDGET_EXCEEDED
        assert ids(response) == ["b", "c", "d", "e"]
        # Time inside the server, by the server: the 5 s read was abandoned. (Not compared
        # with the 100 ms budget itself: a busy machine may add scheduling delay.)
        assert samples < 1.0

    run(scenario)


def test_a_shorter_client_deadline_is_honoured(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = SlowStore(delay_s=5.0)
        # The read stops a scoring reserve before the client's deadline. The production
        # reserve is a few ms: a starved process (seen in a CI run beside a long job at a
        # higher priority) answered after the deadline, so this one leaves 1 s to answer.
        settings = {"budget_ms": 5000, "scoring_reserve_ms": 1000, "store_cooldown_s": 0}
        async with serving(tiny_bundle, store, **settings) as (stub, _):
            response = await stub.Recommend(
                pb.RecommendRequest(user_id="u", item_id="a", k=4), timeout=3.0
            )  # under the 5 s budget and store delay: the client's deadline decides
        assert response.fallback_reason == pb.FALLBACK_REASON_BUDGET_EXCEEDED

    run(scenario)


def test_store_outage_opens_the_breaker_then_recovers(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = DownStore()
        await InMemorySessionStore.append(store, [click("1", "u", "b", 10.0)])
        async with serving(tiny_bundle, store, store_cooldown_s=0.3) as (stub, srv):
            request = pb.RecommendRequest(user_id="u", item_id="a", k=4)
            down = [await stub.Recommend(request) for _ in range(5)]
            assert store.reads == 3  # open after 3 failures: the other two kept away
            store.recent = lambda user: InMemorySessionStore.recent(store, user)  # type: ignore
            await asyncio.sleep(0.35)
            back = await stub.Recommend(request)
        reasons = {r.fallback_reason for r in down}
        assert reasons == {pb.FALLBACK_REASON_SESSION_STORE_UNAVAILABLE}
        assert back.personalized
        fallbacks = srv.metrics.fallbacks.labels(
            reason="session_store_unavailable", variant="default"
        )
        assert fallbacks._value.get() == 5

    run(scenario)


def test_bundle_reload_swaps_without_failing_requests(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = InMemorySessionStore()
        async with serving(tiny_bundle, store) as (stub, server):
            first = server.bundles.ranker.version
            request = pb.RecommendRequest(item_id="a", k=4)
            stream = [asyncio.ensure_future(stub.Recommend(request)) for _ in range(200)]
            arrays = tiny_bundle_arrays()
            arrays["pools"][0] = [4, 3, 2, 1]
            write_bundle(tiny_bundle, arrays, {"source": "tests"})
            swapped = await server.bundles.reload()
            later = await stub.Recommend(request)
            answers = await asyncio.gather(*stream)
        assert swapped
        assert {a.bundle_version for a in answers} <= {first, later.bundle_version}
        assert later.bundle_version != first
        assert ids(later) == ["e", "d", "c", "b"]

    run(scenario)


def test_a_broken_new_bundle_keeps_the_old_one(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (stub, server):
            first = server.bundles.ranker.version
            version = write_bundle(tiny_bundle, tiny_bundle_arrays(), {"source": "tests"})
            (version / "pools.npy").write_bytes(b"garbage")
            assert not await server.bundles.reload()
            response = await stub.Recommend(pb.RecommendRequest(item_id="a", k=4))
        assert response.bundle_version == first
        assert (
            server.metrics.bundle_swaps.labels(result="failed", variant="default")._value.get() == 1
        )

    run(scenario)


def test_health_and_reflection_are_on(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        async with (
            serving(tiny_bundle, InMemorySessionStore()) as (_, server),
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(
                health_pb2.HealthCheckRequest(service="recsvc.v1.Recommender")
            )
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            services = [s.name async for a in answers for s in a.list_services_response.service]
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert "recsvc.v1.Recommender" in services

    run(scenario)


def test_a_callers_tight_deadline_does_not_trip_the_breaker_for_others(tiny_bundle: Path) -> None:
    async def scenario() -> None:
        store = SlowStore(delay_s=0.05)
        await InMemorySessionStore.append(store, [click("1", "u", "b", 10.0)])
        async with serving(tiny_bundle, store, budget_ms=2000, store_cooldown_s=60) as (stub, _):
            request = pb.RecommendRequest(user_id="u", item_id="a", k=4)
            hurried = await stub.Recommend(request, timeout=0.04)
            patient = await stub.Recommend(request)
        assert hurried.fallback_reason == pb.FALLBACK_REASON_BUDGET_EXCEEDED
        assert patient.personalized  # the breaker stayed closed

    run(scenario)


def test_a_bundle_without_a_version_is_refused_and_the_next_good_one_swaps_in(
    tiny_bundle: Path,
) -> None:
    async def scenario() -> None:
        async with serving(tiny_bundle, InMemorySessionStore()) as (_, server):
            first = server.bundles.ranker.version
            broken = write_bundle(tiny_bundle, tiny_bundle_arrays(), {"source": "tests"})
            manifest = json.loads((broken / "manifest.json").read_text())
            del manifest["version"]
            (broken / "manifest.json").write_text(json.dumps(manifest))
            assert not await server.bundles.reload()
            assert not await server.bundles.reload()  # the watch does not retry the same one
            assert (
                server.metrics.bundle_swaps.labels(result="failed", variant="default")._value.get()
                == 1
            )
            assert server.bundles.ranker.version == first
            fixed = write_bundle(tiny_bundle, tiny_bundle_arrays(), {"source": "tests"})
            assert await server.bundles.reload()
            assert server.bundles.ranker.version == fixed.name

    run(scenario)


def test_a_session_knn_candidate_is_marked_in_the_reply(tmp_path: Path) -> None:
    # The bundle's extra candidates are gathered for its second stage.
    manifest = {"parameters": {"candidates": {"knn_items": 5}}}
    arrays = with_sessions(tiny_bundle_arrays()) | {"item_fit_events": np.full(5, 9)}
    arrays[MODEL_ARRAY] = model_array(unpopular_first())
    write_bundle(tmp_path / "bundles", arrays, manifest)

    async def scenario() -> None:
        async with serving(tmp_path / "bundles", InMemorySessionStore()) as (stub, _):
            reply = await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="d", k=2))
        assert reply.ranked_by == pb.RANKED_BY_SECOND_STAGE
        assert {(i.item_id, tuple(i.sources)) for i in reply.items} == {
            ("a", (pb.SOURCE_ITEMCF,)),
            ("e", (pb.SOURCE_SESSION_KNN,)),
        }

    run(scenario)
