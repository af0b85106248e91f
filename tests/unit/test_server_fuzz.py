"""Fuzzing ``Recommend`` over a real loopback channel: no request, typed or raw bytes, gets
INTERNAL or UNKNOWN, and every error comes with short details."""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import serving_in_thread
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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

#: Any character a proto string can hold (no lone surrogates).
chars = st.characters(codec="utf-8")
#: Ids past every length limit: 257 characters (ingest's limit + 1) up to a megabyte.
huge_text = st.builds(operator.mul, chars, st.sampled_from([257, 9000, 2**18]))


def ids(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(known), st.text(chars, max_size=40), huge_text)


def request_of(**fields: Any) -> pb.RecommendRequest:
    return pb.RecommendRequest(**{name: v for name, v in fields.items() if v is not None})


#: Requests the tiny bundle can answer (k up to its pool size), half of the typed ones.
answerable = st.builds(
    request_of,
    user_id=st.sampled_from(USERS),
    item_id=st.sampled_from(ITEMS),
    k=st.integers(0, 4),
    exclude_seen=st.none() | st.booleans(),
    category=st.none() | st.sampled_from(CATEGORIES),
)
typed_requests = answerable | st.builds(
    request_of,
    user_id=ids(USERS),
    item_id=ids(["", *ITEMS]),
    k=st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)),
    exclude_seen=st.none() | st.booleans(),
    category=st.one_of(
        st.none(), st.sampled_from(["", *CATEGORIES]), st.text(chars, max_size=10), huge_text
    ),
)


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def length_delimited(field: int, data: bytes) -> bytes:
    """Field ``field`` as bytes on the wire (for string fields: any bytes, not just UTF-8)."""
    return varint(field << 3 | 2) + varint(len(data)) + data


small_requests = typed_requests.filter(lambda r: r.ByteSize() < 2000)
raw_payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda r, tail: r.SerializeToString() + tail, small_requests, st.binary(max_size=20)),
    st.builds(lambda r, cut: r.SerializeToString()[:cut], small_requests, st.integers(0, 60)),
    st.lists(
        st.builds(length_delimited, st.integers(1, 8), st.binary(max_size=40)), max_size=4
    ).map(b"".join),
)


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
        @given(typed_requests)
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
        @given(raw_payloads)
        def recommend(payload: bytes) -> None:
            check(*outcome(raw, payload), None)

        recommend()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.name.startswith("grpc")]
    # Undecodable payloads are logged, but rate-limited: a line or two for the whole run.
    assert len([r for r in caplog.records if r.name == "recsvc.server"]) <= 3
