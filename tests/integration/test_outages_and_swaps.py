"""Redis going away under the server and ingest, and bundle swaps under load."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
from conftest import PrivateRedis, free_port, wait_for
from helpers import tiny_bundle_arrays
from kafka import KafkaProducer
from test_stream_to_recommend import online_args, session_ids

from recsvc.bundle import write_bundle
from recsvc.events import Event
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

BUDGET_S = 0.1


def test_redis_outage_degrades_inside_the_budget_and_loses_nothing(
    tiny_bundle: Path,
    private_redis: PrivateRedis,
    topics,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    user = f"shopper-{uuid.uuid4().hex}"
    port = free_port()
    args = online_args(tiny_bundle, private_redis.url, topics)
    server = processes(
        ["serve", *args, "--port", str(port), "--store-cooldown-s", "0.5"], tmp_path / "serve.log"
    )
    processes(["ingest", *args], tmp_path / "ingest.log")
    wait_for(lambda: "serving" in server.output(), what="the server")

    def send(n: int, item: str) -> None:
        event = Event(f"{user}-{n}", user, item, "click", 1000.0 + n)
        producer.send(topics.events, key=user.encode(), value=event.to_json()).get(timeout=10)

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.RecommenderStub(channel)
    request = pb.RecommendRequest(user_id=user, item_id="a", k=4)
    send(0, "b")
    wait_for(lambda: len(session_ids(private_redis.url, user)) == 1, what="the first event")
    assert stub.Recommend(request, timeout=5).personalized

    private_redis.stop()
    # The client gives up after the budget: each answer must come back inside it.
    answers = [stub.Recommend(request, timeout=BUDGET_S) for _ in range(20)]
    assert {a.fallback_reason for a in answers} == {pb.FALLBACK_REASON_SESSION_STORE_UNAVAILABLE}
    assert [i.item_id for i in answers[0].items] == ["b", "c", "d", "e"]  # the offline order
    for n, item in enumerate(
        ["c", "d", "e"], start=1
    ):  # ingest must hold these until Redis is back
        send(n, item)
    time.sleep(2)

    private_redis.start()  # with its append-only file: the first event is still there
    wait_for(lambda: len(session_ids(private_redis.url, user)) == 4, what="ingest to catch up")
    assert session_ids(private_redis.url, user) == [f"{user}-{n}" for n in (0, 1, 2, 3)]
    wait_for(lambda: stub.Recommend(request, timeout=5).personalized, what="the server")
    channel.close()


def test_bundle_swaps_under_a_stream_of_requests_fail_none(
    tiny_bundle: Path, redis_url: str, topics, processes, tmp_path: Path
) -> None:
    port = free_port()
    server = processes(
        ["serve", *online_args(tiny_bundle, redis_url, topics, port), "--watch-interval-s", "0.2"],
        tmp_path / "serve.log",
    )
    wait_for(lambda: "serving" in server.output(), what="the server")

    versions: list[str] = []
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def stream() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            while not stop.is_set():
                try:
                    reply = stub.Recommend(pb.RecommendRequest(item_id="a", k=4), timeout=5)
                    versions.append(reply.bundle_version)
                except grpc.RpcError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    written = []
    for swap in range(4):
        time.sleep(0.5)
        arrays = tiny_bundle_arrays()
        arrays["pools"][0] = [[4, 3, 2, 1], [2, 3, 4, 1]][swap % 2]
        written.append(write_bundle(tiny_bundle, arrays, {"source": "swap"}).name)
        if swap % 2:
            server.signal(signal.SIGHUP)  # the other swaps are found by the watch
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(versions) > 100
    assert versions[-1] == written[-1]
    assert set(written) & set(versions)  # the stream saw the new versions as they came


def test_ingest_rides_out_a_kafka_restart_without_loss(
    tiny_bundle: Path, redis_url: str, private_kafka, processes, tmp_path: Path
) -> None:
    broker, topics = private_kafka
    user = f"shopper-{uuid.uuid4().hex}"
    args = online_args(tiny_bundle, redis_url, topics)
    processes(["ingest", *args, "--kafka-bootstrap", broker.bootstrap], tmp_path / "ingest.log")

    def produce(numbers: range) -> None:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        for n in numbers:
            event = Event(f"{user}-{n}", user, "bcde"[n % 4], "click", 1000.0 + n)
            producer.send(topics.events, key=user.encode(), value=event.to_json())
        producer.flush()
        producer.close()

    produce(range(0, 4))
    wait_for(lambda: len(session_ids(redis_url, user)) == 4, what="the first events")
    broker.stop()
    time.sleep(3)  # ingest loses the broker and retries
    broker.start()
    produce(range(4, 9))
    wait_for(lambda: len(session_ids(redis_url, user)) == 9, timeout_s=60, what="the rest")
    assert session_ids(redis_url, user) == [f"{user}-{n}" for n in range(9)]


def test_ingest_stopped_during_a_redis_outage_loses_nothing(
    tiny_bundle: Path,
    private_redis: PrivateRedis,
    topics,
    producer: KafkaProducer,
    processes,
    tmp_path: Path,
) -> None:
    user = f"shopper-{uuid.uuid4().hex}"
    args = ["ingest", *online_args(tiny_bundle, private_redis.url, topics)]
    first = processes(args, tmp_path / "ingest-1.log")
    private_redis.stop()
    for n, item in enumerate("bcd"):
        event = Event(f"{user}-{n}", user, item, "click", 1000.0 + n)
        producer.send(topics.events, key=user.encode(), value=event.to_json()).get(timeout=10)
    wait_for(lambda: "retrying" in first.output(), what="ingest to meet the outage")
    started = time.monotonic()
    assert first.stop() == 0
    assert time.monotonic() - started < 10  # SIGTERM is not stuck behind the retries
    assert "offsets stay uncommitted" in first.output()

    private_redis.start()
    processes(args, tmp_path / "ingest-2.log")  # the same group picks the batch up again
    wait_for(lambda: len(session_ids(private_redis.url, user)) == 3, what="the second ingest")
    assert session_ids(private_redis.url, user) == [f"{user}-{n}" for n in range(3)]
