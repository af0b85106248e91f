"""The compiled reply-items encoder writes what protobuf itself writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsvc._wire import ranked_items
from recsvc.server import ITEM_FIELDS, SOURCES_BY_FLAGS
from recsvc.v1 import recommender_pb2 as pb

LOWEST_FLOAT = float(np.finfo(np.float32).min)


def protobuf_bytes(ids: list[str], scores: list[float], flags: list[int]) -> bytes:
    """What protobuf writes for the items, an unscored one as the proto comment says."""
    items = [
        pb.RankedItem(
            item_id=i,
            score=s if math.isfinite(s) else LOWEST_FLOAT,
            sources=SOURCES_BY_FLAGS[f],
            unscored=not math.isfinite(s),
        )
        for i, s, f in zip(ids, scores, flags, strict=True)
    ]
    return pb.RecommendResponse(items=items).SerializeToString()


@pytest.mark.parametrize(
    ("ids", "scores", "flags"),
    [
        ([], [], []),
        (["1000001", "7"], [0.8125, -3.5], [1, 0]),
        (["a" * 300, "b"], [1e-30, 123456.789], [255, 6]),  # a length of two varint bytes
        (["tête-à-tête", "商品"], [0.0, -0.0], [3, 12]),  # UTF-8; the zeros protobuf omits
        (["x", "y", "z"], [0.5, -math.inf, -math.inf], [2, 1, 0]),  # unscored last
        (["x"], [math.nan], [2]),
        ([""], [0.25], [0]),
    ],
)
def test_the_bytes_are_protobufs_own(ids: list[str], scores: list[float], flags: list[int]) -> None:
    assert ranked_items(ids, scores, flags, SOURCES_BY_FLAGS, ITEM_FIELDS) == protobuf_bytes(
        ids, scores, flags
    )


def test_an_unscored_item_goes_out_as_the_lowest_float_and_marked() -> None:
    wire = ranked_items(["x", "y"], [0.25, -math.inf], [1, 1], SOURCES_BY_FLAGS, ITEM_FIELDS)
    scored, unscored = pb.RecommendResponse.FromString(wire).items
    assert (scored.score, scored.unscored) == (0.25, False)
    assert (unscored.score, unscored.unscored) == (LOWEST_FLOAT, True)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        ranked_items(["a", "b"], [1.0], [0, 0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(TypeError, match=r"item_ids\[0\] must be a str"):
        ranked_items([b"a"], [1.0], [0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(IndexError, match="flags\\[0\\] = 256 has no entry"):
        ranked_items(["a"], [1.0], [256], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(TypeError, match="must be lists"):
        ranked_items(("a",), [1.0], [0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(TypeError, match="tuples of ints"):
        ranked_items(["a"], [1.0], [0], [b""], ITEM_FIELDS)
    with pytest.raises(TypeError, match=r"scores\[0\] must be a float"):
        ranked_items(["a"], ["high"], [0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(TypeError, match=r"flags\[0\] must be an int"):
        ranked_items(["a"], [1.0], [1.0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    with pytest.raises(TypeError, match="tuples of ints"):
        ranked_items(["a"], [1.0], [0], [("1",)], ITEM_FIELDS)


def test_a_caller_object_cannot_change_the_lists_mid_call() -> None:
    """Only exact numbers are taken: an object's __float__ (which could empty the id list
    while the encoder holds pointers into it) is refused, never called."""
    ids = ["a", "b"]

    class Sneaky:
        def __float__(self) -> float:
            ids.clear()
            return 1.0

    with pytest.raises(TypeError, match="must be a float"):
        ranked_items(ids, [1.0, Sneaky()], [0, 0], SOURCES_BY_FLAGS, ITEM_FIELDS)
    assert ids == ["a", "b"]
    with pytest.raises(ValueError, match="field numbers"):
        ranked_items(["a"], [1.0], [0], SOURCES_BY_FLAGS, (1, 2, 3, 4, 0))
