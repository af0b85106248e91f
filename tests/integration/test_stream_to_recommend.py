"""Kafka → ``recsvc ingest`` → Redis → ``recsvc serve``, all real, end to end."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import grpc
from conftest import KAFKA, free_port, read_topic, wait_for
from kafka import KafkaProducer

from recsvc.events import Event
from recsvc.sessions import RedisSessionStore
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


def recommend(port: int, user: str, item: str = "a", k: int = 4) -> pb.RecommendResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        return stub.Recommend(pb.RecommendRequest(user_id=user, item_id=item, k=k), timeout=5)


def session_ids(redis_url: str, user: str) -> list[str]:
    async def read() -> list[str]:
        store = RedisSessionStore(redis_url, length=20, ttl_s=60)
        try:
            return [e.event_id for e in await store.recent(user)]
        finally:
            await store.aclose()

    return asyncio.run(read())


def online_args(bundle: Path, redis_url: str, topics, port: int | None = None) -> list[str]:
    args = [
        "--bundle",
        str(bundle),
        "--redis-url",
        redis_url,
        "--kafka-bootstrap",
        KAFKA,
        "--events-topic",
        topics.events,
        "--dlq-topic",
        topics.dlq,
        "--group-id",
        topics.group,
        "--metrics-port",
        "0",
        "--watch-interval-s",
        "0",
        # These tests check what is answered, not how fast: on a starved machine the first
        # read (a TLS handshake, say) once took a call past the default 100 ms budget. A
        # caller's deadline still bounds the server's (test_outages_and_swaps).
        "--budget-ms",
        "10000",
    ]
    return args + (["--port", str(port)] if port else [])


def test_events_become_personalized_answers_and_bad_ones_go_to_the_dlq(
    tiny_bundle: Path, redis_url: str, topics, producer: KafkaProducer, processes, tmp_path: Path
) -> None:
    user = f"shopper-{uuid.uuid4().hex}"
    port = free_port()
    # Without live co-visits, ingest knows items from the bundle alone: "ghost" is refused.
    off = ["--live", "0"]
    server = processes(
        ["serve", *online_args(tiny_bundle, redis_url, topics, port), *off],
        tmp_path / "serve.log",
    )
    processes(
        ["ingest", *online_args(tiny_bundle, redis_url, topics), *off], tmp_path / "ingest.log"
    )
    wait_for(lambda: "serving" in server.output(), what="the server")
    before = recommend(port, user)
    assert before.personalized and before.session_events_used == 0  # the item alone

    good = [
        Event(f"{user}-{n}", user, item, "click", 1000.0 + n)
        for n, item in enumerate(["c", "d", "b"])
    ]
    others = [Event(f"other-{n}", f"other-{user}", "e", "cart", 1000.0 + n) for n in range(5)]
    bad = [
        b"{this is not json",
        json.dumps(
            {"event_id": "x", "user_id": user, "item_id": "ghost", "type": "click", "ts": 1001.5}
        ).encode(),
        json.dumps(
            {"event_id": "y", "user_id": user, "item_id": "b", "type": "view", "ts": 1001.6}
        ).encode(),
    ]
    messages = [good[0].to_json(), bad[0], good[1].to_json(), bad[1], bad[2], good[2].to_json()]
    for value in messages:
        producer.send(topics.events, key=user.encode(), value=value)
    for event in others:
        producer.send(topics.events, key=event.user_id.encode(), value=event.to_json())
    producer.send(topics.events, key=user.encode(), value=good[1].to_json())  # a replay
    producer.flush()

    wait_for(lambda: len(session_ids(redis_url, user)) == 3, what="the session in Redis")
    wait_for(lambda: len(session_ids(redis_url, f"other-{user}")) == 5, what="the other user")
    assert session_ids(redis_url, user) == [e.event_id for e in good]  # the replay counted once

    after = recommend(port, user)
    assert after.personalized
    assert after.session_events_used == 3  # b, d, c before the view of a
    assert [i.item_id for i in after.items] != [i.item_id for i in before.items]

    dead = [json.loads(v) for v in read_topic(topics.dlq, expected=3)]
    assert [d["reason"] for d in dead] == ["not_json", "unknown_item", "unknown_type"]
    assert dead[0]["value"] == "{this is not json"
    assert "ghost" in dead[1]["detail"]


def test_events_redis_refuses_go_to_the_dlq_and_the_rest_are_applied(
    tiny_bundle: Path, redis_url: str, topics, producer: KafkaProducer, processes, tmp_path: Path
) -> None:
    import redis

    run = uuid.uuid4().hex
    broken, fine = f"broken-{run}", f"fine-{run}"
    # Something else wrote a plain string under the broken user's session key: every ZADD
    # on it fails with WRONGTYPE, which no retry can fix.
    redis.Redis.from_url(redis_url).set(f"recsvc:session:{broken}", "not a sorted set")
    processes(["ingest", *online_args(tiny_bundle, redis_url, topics)], tmp_path / "ingest.log")
    for n, user in enumerate([fine, broken, fine]):
        event = Event(f"{run}-{n}", user, "b", "click", 1000.0 + n)
        producer.send(topics.events, key=b"same-partition", value=event.to_json())
    producer.flush()

    wait_for(lambda: len(session_ids(redis_url, fine)) == 2, what="the good events")
    dead = [json.loads(v) for v in read_topic(topics.dlq, expected=1)]
    assert [(d["reason"], d["offset"]) for d in dead] == [("rejected_by_store", 1)]
    assert "WRONGTYPE" in dead[0]["detail"]
    assert session_ids(redis_url, broken) == []  # read as no session, not as a store failure


def test_an_item_new_to_the_bundle_is_recommended_once_the_stream_co_visits_it(
    tiny_bundle: Path, redis_url: str, topics, producer: KafkaProducer, processes, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:12]
    new, ghost = f"new-{run}", f"ghost-{run}"
    port = free_port()
    server = processes(
        ["serve", *online_args(tiny_bundle, redis_url, topics, port)], tmp_path / "serve.log"
    )
    processes(["ingest", *online_args(tiny_bundle, redis_url, topics)], tmp_path / "ingest.log")
    wait_for(lambda: "serving" in server.output(), what="the server")
    shopper = f"shopper-{run}"
    assert new not in [i.item_id for i in recommend(port, shopper, "b").items]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        for item in (new, ghost):
            try:
                stub.Recommend(pb.RecommendRequest(user_id=shopper, item_id=item, k=2), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            else:
                raise AssertionError(f"{item} was found before any event named it")

    # Two other shoppers view b and then the new item; the ghost is clicked alone. Times of
    # now: b's older co-visits from earlier runs weigh less (forward decay), so the cap of
    # neighbours kept cannot drop this run's.
    now = time.time()
    events = [
        Event(f"{run}-{user}-{n}", f"{user}-{run}", item, "click", now + n)
        for user in ("x", "y")
        for n, item in enumerate(("b", new))
    ] + [Event(f"{run}-ghost", f"z-{run}", ghost, "click", now)]
    sent = time.monotonic()
    for event in events:
        producer.send(topics.events, key=event.user_id.encode(), value=event.to_json())
    producer.flush()

    answers: list[pb.RecommendResponse] = []

    def live_answer() -> bool:
        answers.append(recommend(port, shopper, "b"))
        return new in [i.item_id for i in answers[-1].items]

    wait_for(live_answer, what="the new item in b's answer")
    answer = answers[-1]
    print(f"new item recommended {time.monotonic() - sent:.1f} s after its clicks were sent")
    item = next(i for i in answer.items if i.item_id == new)
    assert pb.SOURCE_LIVE in item.sources
    # The new item itself is no longer NOT_FOUND: it has live candidates (b at least).
    assert "b" in [i.item_id for i in recommend(port, shopper, new).items]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        try:
            stub.Recommend(pb.RecommendRequest(user_id=shopper, item_id=ghost, k=2), timeout=5)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND  # seen, but co-visited with nothing
        else:
            raise AssertionError("an item with no co-visit was found")
    # The events are replayed (as after a crash): the co-visit counts stay as they were.
    before = neighbours(redis_url, "b")
    for event in events:
        producer.send(topics.events, key=event.user_id.encode(), value=event.to_json())
    producer.flush()
    marker = Event(f"{run}-marker", f"marker-{run}", "a", "click", now + 10)
    producer.send(topics.events, key=marker.user_id.encode(), value=marker.to_json())
    producer.flush()
    wait_for(lambda: session_ids(redis_url, marker.user_id) == [marker.event_id], what="marker")
    assert neighbours(redis_url, "b") == before


def neighbours(redis_url: str, item: str) -> list[tuple[bytes, float]]:
    import redis

    return redis.Redis.from_url(redis_url).zrange(f"recsvc:live:n:{item}", 0, -1, withscores=True)
