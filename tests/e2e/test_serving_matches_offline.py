"""What the server ranks for a session is what offline evaluation ranks for the same session.

The bundle comes from ``recsvc pipeline`` on the real Taobao slice; sessions go through the
real Redis (started by ``make test``) and answers through gRPC.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from offline.evaluation.evaluate import cases_from_bundle, method_scores
from offline.evaluation.served import case_session, served_answer
from recsvc.bundle import load_bundle
from recsvc.events import Event
from recsvc.ranking import Ranker
from recsvc.server import RecommendServer
from recsvc.sessions import RedisSessionStore
from recsvc.settings import Settings
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
CASES = 60


async def replies_over_grpc(
    bundle: Path, store: RedisSessionStore, requests: list[pb.RecommendRequest], **settings: Any
) -> list[pb.RecommendResponse]:
    """The server's replies to ``requests``, one by one over gRPC, sessions from ``store``."""
    config = Settings(bundle=bundle, port=0, metrics_port=0, watch_interval_s=0, **settings)
    server = RecommendServer(config, store)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            return [await stub.Recommend(request) for request in requests]
    finally:
        await server.stop(0)


@pytest.mark.parametrize("model", ["personalized", "personalized_cart"])
def test_served_rankings_equal_the_offline_ones(
    taobao_bundle: Path, redis_url: str, model: str
) -> None:
    bundle = load_bundle(taobao_bundle)
    cases = cases_from_bundle(bundle)
    known = np.asarray(bundle[f"models/{model}/known"])
    modelled = (known[np.maximum(cases.windows, 0)] & (cases.windows >= 0)).sum(axis=1)
    history = (cases.windows[:, 1:] >= 0).sum(axis=1)
    # Cases with two or more earlier visits, of which the model knows some item.
    chosen = np.flatnonzero((history >= 2) & (modelled > 0))[:CASES]
    assert len(chosen) == CASES
    subset = cases.select(chosen)
    pools = np.asarray(bundle["pools"])[subset.current]
    offline = method_scores(bundle, model, subset, pools)
    item_ids = np.asarray(bundle["item_ids"]).astype(str)
    run = uuid.uuid4().hex

    async def serve_all() -> list[pb.RecommendResponse]:
        store = RedisSessionStore(redis_url, length=20, ttl_s=600)
        for n, window in enumerate(subset.windows):
            # The session the frontend would have sent: earlier visits, then this view.
            visits = [i for i in window[::-1] if i >= 0]
            await store.append(
                [
                    Event(f"{run}-{n}-{t}", f"{run}-{n}", item_ids[i], "click", 1000.0 + t)
                    for t, i in enumerate(visits)
                ]
            )
        requests = [
            pb.RecommendRequest(user_id=f"{run}-{n}", item_id=item_ids[c], k=pools.shape[1])
            for n, c in enumerate(subset.current)
        ]
        # The first stage alone: the item's pool ranked by the model.
        return await replies_over_grpc(taobao_bundle, store, requests, model=model, second_stage=0)

    answers = asyncio.run(serve_all())
    for n, answer in enumerate(answers):
        assert answer.personalized, answer.fallback_reason
        pool = pools[n]
        order = np.argsort(-offline[n], kind="stable")
        order = order[pool[order] >= 0]
        assert [i.item_id for i in answer.items] == item_ids[pool[order]].tolist()
        finite = np.isfinite(offline[n][order])
        served = np.array([i.score for i in answer.items])
        np.testing.assert_allclose(served[finite], offline[n][order][finite], rtol=1e-5, atol=1e-6)
        assert [i.unscored for i in answer.items] == (~finite).tolist()
        assert (served[~finite] == np.finfo(np.float32).min).all()


SERVED_CASES = 300


def test_the_server_answers_what_eval_scores_as_served(taobao_bundle: Path, redis_url: str):
    """``recsvc eval``'s ``served`` method against gRPC answers over the real Redis, on the
    first cases of the test day (first views with empty sessions included)."""
    bundle = load_bundle(taobao_bundle)
    cases = cases_from_bundle(bundle)
    item_ids = np.asarray(bundle["item_ids"]).astype(str).tolist()
    ranker = Ranker(bundle)
    expected = [served_answer(ranker, cases, n, item_ids) for n in range(SERVED_CASES)]
    assert any(e.session_events_used == 0 for e in expected)
    assert any(e.session_events_used >= 2 for e in expected)
    run = uuid.uuid4().hex

    async def serve_all() -> list[pb.RecommendResponse]:
        store = RedisSessionStore(redis_url, length=20, ttl_s=600)
        for n in range(SERVED_CASES):
            events = [e._replace(event_id=f"{run}-{e.event_id}") for e in
                      case_session(cases, n, item_ids)]  # fmt: skip
            await store.append(
                [Event(e.event_id, f"{run}-{n}", e.item_id, e.type, e.ts) for e in events]
            )
        requests = [
            pb.RecommendRequest(
                user_id=f"{run}-{n}", item_id=item_ids[cases.current[n]], k=ranker.pool_size
            )
            for n in range(SERVED_CASES)
        ]
        return await replies_over_grpc(taobao_bundle, store, requests)

    for answer, want in zip(asyncio.run(serve_all()), expected, strict=True):
        assert [i.item_id for i in answer.items] == want.items
        assert answer.personalized == want.personalized
        assert answer.session_events_used == want.session_events_used
        finite = np.isfinite(want.scores)
        served = np.array([i.score for i in answer.items])
        np.testing.assert_allclose(served[finite], np.array(want.scores)[finite], rtol=1e-6)
