"""Fuzzing ``Recommend`` over a real loopback channel: no request, typed or raw bytes, gets
INTERNAL or UNKNOWN, and every error comes with short details."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import serving_in_thread
from hypothesis import HealthCheck, event, given, settings

from loadtest.chaos.fuzz_requests import raw_payloads, typed_requests
from recsvc.events import Event
from recsvc.sessions import InMemorySessionStore
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

METHOD = "/recsvc.v1.Recommender/Recommend"
ITEMS = ["a", "b", "c", "d", "e"]  # tiny_bundle's catalogue
CATEGORIES = ["x", "y"]
#: Users with a session in the store, some of its items unknown to the bundle.
SESSIONS = {
    "u": [("b", "click")],
    "v": [("a", "click"), ("zz", "cart"), ("c", "buy"), ("e", "fav"), ("b", "cart")],
    "\x00é\U0001f600": [("d", "click"), ("\x00", "click"), ("a", "cart")],
}
USERS = ["", "nobody", *SESSIONS]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SHORT_DETAILS = 300
FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TYPED = typed_requests(ITEMS, USERS, CATEGORIES, pool_size=4)
RAW = raw_payloads(TYPED)


def outcome(call: Callable[..., pb.RecommendResponse], request: Any) -> tuple[Any, str]:
    """(the response, "") or (the status code, its details)."""
    try:
        return call(request, timeout=10), ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def check(result: Any, details: str, k: int | None) -> None:
    if isinstance(result, pb.RecommendResponse):
        event("personalized" if result.personalized else "not personalized")
        assert len(result.items) <= (k or 30)
        return
    event(result.name)
    assert result not in NEVER, details[:1000]
    assert len(details) < SHORT_DETAILS, (result, details[:1000])


@pytest.fixture
def address(tiny_bundle: Path) -> Iterator[str]:
    store = InMemorySessionStore()
    events = [
        Event(f"{user}-{n}", user, item, kind, 1000.0 + n)
        for user, visits in SESSIONS.items()
        for n, (item, kind) in enumerate(visits)
    ]
    asyncio.run(store.append(events))
    with serving_in_thread(tiny_bundle, store) as target:
        yield target


def test_no_typed_request_gets_internal_or_unknown(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(address) as channel, caplog.at_level(logging.WARNING):
        stub = pb_grpc.RecommenderStub(channel)

        @FUZZ
        @given(TYPED)
        def recommend(request: pb.RecommendRequest) -> None:
            check(*outcome(stub.Recommend, request), request.k)

        recommend()
        known = outcome(stub.Recommend, pb.RecommendRequest(user_id="u", item_id="a", k=4))
    assert [i.item_id for i in known[0].items] == ["e", "b", "c", "d"]  # still serving
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.name.startswith("grpc")]


def test_no_raw_bytes_get_internal_or_unknown(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(address) as channel, caplog.at_level(logging.WARNING):
        raw = channel.unary_unary(METHOD, response_deserializer=pb.RecommendResponse.FromString)

        @FUZZ
        @given(RAW)
        def recommend(payload: bytes) -> None:
            check(*outcome(raw, payload), None)

        recommend()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.name.startswith("grpc")]
    # Undecodable payloads are logged, but rate-limited: a line or two for the whole run.
    assert len([r for r in caplog.records if r.name == "recsvc.server"]) <= 3
