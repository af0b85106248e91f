"""Test data and contract checks shared by the unit and integration tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsvc.events import Event
from recsvc.live import LiveRead
from recsvc.sessions import SessionEvent, SessionStore

if TYPE_CHECKING:
    from recsvc.server import RecommendServer
    from recsvc.v1 import recommender_pb2_grpc as pb_grpc

#: ``recsvc pipeline`` settings that keep the end-to-end runs on the real-data slice fast.
SMALL = [
    "--param",
    "item2vec.epochs=2",
    "--param",
    "personalized.epochs=2",
    "--param",
    "annoy_trees=5",
    "--param",
    "annoy_search_k=2000",  # the default, 20,000, reads the whole slice's catalogue per query
    "--param",
    "recall_sample=100",
    "--param",
    "pss.enabled=true",
    "--param",
    "pss.epochs=2",
    "--param",
    "pss.width=64",
    "--param",
    "pss.labelled_anchors=2000",
]
#: For a test of something else than the learned second stage: its training (a first-stage
#: bundle built on the fit period minus its last day) doubles a pipeline's time.
NO_SECOND_STAGE = ["--param", "ranker.enabled=false"]


def tiny_bundle_arrays(weights: tuple[float, ...] = (1.0, 0.5, 0.25)) -> dict[str, np.ndarray]:
    """Five items a..e with 2-d embeddings whose rankings are worked out by hand in the tests.

    Item a's pool is b, c, d, e (offline order). With the session [b] and the view of a, the
    window is (a, b) and u = (1*[1,0] + 0.5*[0,1]) / 2 = [0.5, 0.25]; the output embeddings
    then score b 0.25, c 0.25, d -0.25, e 1.0, so the personalized order is e, b, c, d.
    """
    position_weights = np.zeros(8, dtype=np.float32)
    position_weights[: len(weights)] = weights
    model = {
        "input_embeddings": np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], np.float32),
        "output_embeddings": np.array([[1, 0], [0, 1], [1, -1], [-1, 1], [2, 0]], np.float32),
        "position_weights": position_weights,
        "known": np.ones(5, dtype=bool),
        "scorable": np.ones(5, dtype=bool),
    }
    arrays = {
        "item_ids": np.array(["a", "b", "c", "d", "e"]),
        "item_category": np.array([0, 0, 1, 1, 0], np.int32),
        "category_names": np.array(["x", "y"]),
        "item_popularity": np.array([5, 4, 3, 2, 1], np.int64),
        "item_first_seen": np.zeros(5),
        "pools": np.array(
            [[1, 2, 3, 4], [0, 2, -1, -1], [0, 1, 3, -1], [0, -1, -1, -1], [0, 1, 2, 3]], np.int32
        ),
        "pool_sources": np.array(
            [[1, 3, 2, 16], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.uint8
        ),
    }
    arrays.update({f"models/personalized/{k}": v for k, v in model.items()})
    return arrays


def with_sessions(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tiny_bundle_arrays`` plus training sessions {d, e} and {a, b}: V-SKNN proposes e
    after d, which d's pool (just a) lacks."""
    from recsvc.session_knn import build_session_index

    index = build_session_index(
        np.array([0, 0, 1, 1]), np.array([3, 4, 0, 1]), np.array([2.0, 2, 1, 1]), n_items=5
    )
    return {**arrays, **index.to_arrays()}


def unpopular_first(names: tuple[str, ...] | None = None) -> str:
    """The text of a LambdaRank model over the second stage's features (or ``names``) that
    learned to put the least popular candidate first."""
    # log1p of a share per million, as recsvc.features computes it: 0 to about 14.
    return one_column_ranker("log_popularity", 15.0, lowest_first=True, names=names)


def most_covisited_first() -> str:
    """The same for the candidate with the largest share of the viewed item's co-visits."""
    return one_column_ranker("live_current", 1.0, lowest_first=False)


def one_column_ranker(
    column: str, top: float, lowest_first: bool, names: tuple[str, ...] | None = None
) -> str:
    """A LambdaRank model that learned to rank by ``column`` alone (values 0..``top``)."""
    import lightgbm

    from recsvc.features import FEATURES

    names = names or FEATURES
    at = names.index(column)
    rng = np.random.default_rng(0)
    groups, size = 200, 5
    # Every other column missing: the model can only learn from this one.
    features = np.full((groups * size, len(names)), np.nan, dtype=np.float32)
    features[:, at] = rng.uniform(0.0, top, size=groups * size)
    values = features[:, at].reshape(groups, size)
    best = values.min(axis=1, keepdims=True) if lowest_first else values.max(axis=1, keepdims=True)
    labels = (values == best).astype(float).ravel()
    data = lightgbm.Dataset(features, labels, group=[size] * groups, feature_name=list(names))
    params = {"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 5, "seed": 0}
    text: str = lightgbm.train(params, data, num_boost_round=40).model_to_string()
    return text


def event(n: int, user: str = "u", kind: str = "click") -> Event:
    return Event(f"e{n}", user, f"i{n}", kind, 1000.0 + n)


async def check_store_contract(store: SessionStore, user: str = "u") -> None:
    """What every store must do; ``store`` has length 8 and ``user`` starts empty."""
    assert await store.recent(user) == []
    assert await store.append([event(n, user) for n in (3, 1, 2)]) == 3
    assert await store.append([event(2, user), event(4, user, "cart")]) == 1  # e2 replayed
    recent = await store.recent(user)
    assert [e.event_id for e in recent] == ["e1", "e2", "e3", "e4"]  # by time, not arrival
    assert recent[-1] == SessionEvent("e4", "i4", "cart", 1004.0)
    await store.append([event(n, user) for n in range(5, 15)])
    assert [e.event_id for e in await store.recent(user)] == [f"e{n}" for n in range(7, 15)]
    assert await store.recent(user + "-other") == []
    await store.ping()


async def check_grouped_append(store: SessionStore, user: str = "g") -> None:
    """Many events per user in one append: counts, order, trim and replays as one by one.

    ``store`` has length 8; ``user`` and ``user + "-b"`` start empty.
    """
    other = user + "-b"
    mine = [event(n, user) for n in range(30)]
    theirs = [event(n, other, "cart") for n in range(5)]
    order = [17, 3, 29, 0, 11, 25, 8, 21, 14, 5, 28, 1, 19, 9, 26, 2, 23, 12, 6, 27]
    order += [4, 16, 10, 24, 7, 18, 13, 22, 15, 20]
    batch = [mine[n] for n in order]
    batch[3:3] = theirs  # another user's events interleaved
    batch.append(mine[27])  # the same event twice in one batch counts once
    assert await store.append(batch) == 35
    assert [e.event_id for e in await store.recent(user)] == [f"e{n}" for n in range(22, 30)]
    assert [e.event_id for e in await store.recent(other)] == [f"e{n}" for n in range(5)]
    # A replay of what the sessions still hold adds nothing and changes nothing.
    assert await store.append(mine[22:] + theirs) == 0
    assert [e.event_id for e in await store.recent(user)] == [f"e{n}" for n in range(22, 30)]
    # Events older than a full session are counted, then trimmed away at once.
    assert await store.append([event(n, user) for n in range(30, 33)] + mine[:2]) == 5
    assert [e.event_id for e in await store.recent(user)] == [f"e{n}" for n in range(25, 33)]


@dataclass(frozen=True)
class Record:
    """The fields of a kafka-python ConsumerRecord that ingest reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@asynccontextmanager
async def serving(
    bundle: Path, store: SessionStore, **settings: Any
) -> AsyncIterator[tuple[pb_grpc.RecommenderStub, RecommendServer]]:
    """A :class:`RecommendServer` on a free loopback port, and a stub connected to it.

    The budget is 10 s unless a test sets ``budget_ms``: answers are compared with what the
    ranker gives, and on a busy machine a read past the production budget (100 ms) would
    turn them into pool fallbacks. Tests of the budget itself set it."""
    # Imported here: every test loads this module (conftest), most never serve.
    import grpc

    from recsvc.server import RecommendServer
    from recsvc.settings import Settings
    from recsvc.v1 import recommender_pb2_grpc as pb_grpc

    settings.setdefault("budget_ms", 10_000.0)
    config = Settings(bundle=bundle, port=0, metrics_port=0, watch_interval_s=0, **settings)
    server = RecommendServer(config, store)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.RecommenderStub(channel), server
    finally:
        await server.stop(0)


@contextmanager
def serving_in_thread(bundle: Path, store: SessionStore, **settings: Any) -> Iterator[str]:
    """:func:`serving` on an event loop in a thread of its own, for blocking clients (e.g.
    under hypothesis); yields the server's address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    served = serving(bundle, store, **settings)
    try:
        _, server = asyncio.run_coroutine_threadsafe(served.__aenter__(), loop).result(30)
        try:
            yield f"127.0.0.1:{server.port}"
        finally:
            asyncio.run_coroutine_threadsafe(served.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def live_read(**lists: list[tuple[str, float]]) -> LiveRead:
    """A live read with these neighbour lists (item -> [(neighbour, count)]), one time base."""
    return LiveRead(
        {
            item: (0.0, [n for n, _ in pairs], [c for _, c in pairs])
            for item, pairs in lists.items()
        },
        3600.0,
    )
