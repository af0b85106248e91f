"""Fuzzed ``Recommend`` requests, typed and raw: hypothesis strategies shared by
tests/unit/test_server_fuzz.py (an in-process server) and the ``grpc-fuzz`` scenario (a real
``recsvc serve``), and :func:`drawn`, a seeded sample of a strategy outside a test."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from recsvc.v1 import recommender_pb2 as pb

T = TypeVar("T")

#: Any character a proto string can hold (no lone surrogates), control characters and NUL
#: included.
chars = st.characters(codec="utf-8")
#: Ids past every length limit: 257 characters (ingest's limit + 1) up to a megabyte.
huge_text = st.builds(operator.mul, chars, st.sampled_from([257, 9000, 2**18]))
#: Field numbers of ``RecommendRequest`` (user_id, item_id, k, exclude_seen, category).
FIELDS = (1, 2, 3, 4, 5)
K_FIELD, EXCLUDE_SEEN_FIELD = 3, 4
#: Varint values past every integer field: 2^32 (a uint32 overflows), 2^63, 2^64 - 1.
HUGE_VARINTS = (2**31 - 1, 2**32, 2**63, 2**64 - 1)


def ids(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(known), st.text(chars, max_size=40), huge_text)


def request_of(**fields: Any) -> pb.RecommendRequest:
    return pb.RecommendRequest(**{name: v for name, v in fields.items() if v is not None})


def typed_requests(
    items: list[str], users: list[str], categories: list[str], pool_size: int
) -> st.SearchStrategy[pb.RecommendRequest]:
    """Requests half of which the bundle can answer (known items and categories, k up to the
    pool size), half adversarial: any ids and categories, empty or huge, and k up to
    2^32 - 1."""
    answerable = st.builds(
        request_of,
        user_id=st.sampled_from(users),
        item_id=st.sampled_from(items),
        k=st.integers(0, pool_size),
        exclude_seen=st.none() | st.booleans(),
        category=st.none() | st.sampled_from(categories),
    )
    return answerable | st.builds(
        request_of,
        user_id=ids(users),
        item_id=ids(["", *items]),
        k=st.one_of(st.integers(0, pool_size + 2), st.integers(0, 2**32 - 1)),
        exclude_seen=st.none() | st.booleans(),
        category=st.one_of(
            st.none(), st.sampled_from(["", *categories]), st.text(chars, max_size=10), huge_text
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


def small(requests: st.SearchStrategy[pb.RecommendRequest]) -> st.SearchStrategy[bytes]:
    """Serializations of those of ``requests`` under 2,000 bytes."""
    return requests.filter(lambda r: r.ByteSize() < 2000).map(pb.RecommendRequest.SerializeToString)


def raw_payloads(requests: st.SearchStrategy[pb.RecommendRequest]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, serializations of ``requests`` with bytes added or cut off, and
    length-delimited fields of any bytes."""
    serialized = small(requests)
    return st.one_of(
        st.binary(max_size=300),
        st.builds(operator.add, serialized, st.binary(max_size=20)),
        st.builds(lambda data, cut: data[:cut], serialized, st.integers(0, 60)),
        st.lists(
            st.builds(length_delimited, st.integers(1, 8), st.binary(max_size=40)), max_size=4
        ).map(b"".join),
    )


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    """``data`` with the bits at ``positions`` (modulo its length in bits) flipped."""
    out = bytearray(data or b"\x00")
    for position in positions:
        bit = position % (len(out) * 8)
        out[bit // 8] ^= 1 << bit % 8
    return bytes(out)


def wrong_wire_type(data: bytes, field: int, wire_type: int, tail: bytes) -> bytes:
    """A tag of a request field with a wire type it does not have (6 and 7 exist for
    none), then ``tail``."""
    return data + varint(field << 3 | wire_type) + tail


def huge_length(data: bytes, field: int, length: int, tail: bytes) -> bytes:
    """A length-delimited field that claims ``length`` bytes and has ``tail``."""
    return data + varint(field << 3 | 2) + varint(length) + tail


def overlong_varint(data: bytes, field: int, extra: int) -> bytes:
    """A varint field of ``extra`` + 1 bytes (ten at most are valid)."""
    return data + varint(field << 3) + b"\xff" * extra + b"\x01"


def with_varint(field: int) -> Callable[[bytes, int], bytes]:
    """``(data, value) -> data`` with the varint ``field`` set to ``value`` (mod 2^64)."""
    return lambda data, value: data + varint(field << 3) + varint(value % 2**64)


def unknown_field(data: bytes, field: int, value: bytes) -> bytes:
    return data + length_delimited(field, value)


def field_zero(data: bytes, wire_type: int) -> bytes:
    """A tag of field number 0, which no message has, before ``data``."""
    return varint(wire_type) + data


def nested_groups(data: bytes, depth: int) -> bytes:
    """An unknown field 9 of groups nested ``depth`` deep (past the parser's limit)."""
    return data + varint(9 << 3 | 3) * depth + varint(9 << 3 | 4) * depth


def mutated_payloads(requests: st.SearchStrategy[pb.RecommendRequest]) -> st.SearchStrategy[bytes]:
    """Valid serializations of ``requests`` broken the ways a wire can break them: bits
    flipped, fields with the wrong wire type or a length prefix up to 2^64 - 1, varints past
    ten bytes, a negative k (its 10-byte two's complement) or one past 32 bits,
    ``exclude_seen`` neither 0 nor 1, unknown fields, field number 0, and groups nested too
    deep."""
    data = small(requests)
    fields = st.sampled_from(FIELDS)
    huge = st.sampled_from(HUGE_VARINTS)
    positions = st.lists(st.integers(0, 2**20), min_size=1, max_size=4)
    wire_types = st.sampled_from([0, 1, 3, 4, 5, 6, 7])
    return st.one_of(
        st.builds(flip_bits, data, positions),
        st.builds(wrong_wire_type, data, fields, wire_types, st.binary(max_size=12)),
        st.builds(huge_length, data, fields, huge, st.binary(max_size=20)),
        st.builds(overlong_varint, data, fields, st.integers(10, 20)),
        st.builds(with_varint(K_FIELD), data, st.integers(-(2**63), -1) | huge),
        st.builds(with_varint(EXCLUDE_SEEN_FIELD), data, st.integers(2, 2**64 - 1)),
        st.builds(unknown_field, data, st.integers(6, 2**29 - 1), st.binary(max_size=40)),
        st.builds(field_zero, data, st.integers(0, 5)),
        st.builds(nested_groups, data, st.integers(1, 5000)),
    )


def drawn(strategy: st.SearchStrategy[T], count: int, seed_: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones for the same ``count`` and
    ``seed_`` (``.example()`` cannot be seeded): hypothesis generates them as for a test.
    Should it stop short (a small strategy has few distinct examples), a next seed adds
    more, up to 20 times."""
    found: list[T] = []
    for attempt in range(20):

        @settings(
            max_examples=count - len(found),
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @seed(seed_ * 1000 + attempt)
        @given(strategy)
        def collect(example: T) -> None:
            found.append(example)

        collect()
        if len(found) >= count:
            break
    return found[:count]
