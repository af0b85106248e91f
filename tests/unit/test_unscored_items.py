"""Candidates the model cannot score are served last, with a finite score and a marker."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
from helpers import serving, tiny_bundle_arrays

from recsvc.bundle import write_bundle
from recsvc.events import Event
from recsvc.sessions import InMemorySessionStore
from recsvc.v1 import recommender_pb2 as pb

LOWEST_FLOAT = float(np.finfo(np.float32).min)


def test_unscorable_candidates_come_last_marked_and_with_finite_scores(tmp_path: Path) -> None:
    arrays = tiny_bundle_arrays()
    arrays["models/personalized/scorable"][[2, 4]] = False  # c and e: in a's pool b, c, d, e
    root = tmp_path / "bundles"
    write_bundle(root, arrays, {"source": "tests"})

    async def scenario() -> pb.RecommendResponse:
        store = InMemorySessionStore()
        await store.append([Event("e1", "u", "b", "click", 10.0)])
        async with serving(root, store) as (stub, _):
            return await stub.Recommend(pb.RecommendRequest(user_id="u", item_id="a", k=4))

    answer = asyncio.run(scenario())
    assert answer.personalized
    assert [(i.item_id, i.unscored) for i in answer.items] == [
        ("b", False),  # 0.25
        ("d", False),  # -0.25
        ("c", True),  # pool order among the unscored
        ("e", True),
    ]
    scores = [i.score for i in answer.items]
    assert all(math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert scores[2:] == [LOWEST_FLOAT, LOWEST_FLOAT]
