"""A small command-line client for trying a running recsvc, and for scripts.

    python -m recsvc.client recommend --user u1 --item 2333346
    python -m recsvc.client send --user u1 --item 2333346 --type click
    python -m recsvc.client wait --timeout 60

``recommend`` prints the response as JSON; ``send`` produces one Event to the events topic;
``wait`` blocks until the server's health check says SERVING.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Protocol, cast

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.contract import EVENT_TYPES
from recsvc.events import Event
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


class _RecommenderStub(Protocol):
    """What the generated (unannotated) ``RecommenderStub`` has."""

    Recommend: grpc.UnaryUnaryMultiCallable[pb.RecommendRequest, pb.RecommendResponse]


class _HealthStub(Protocol):
    """``HealthStub``'s ``Check``, which its type stubs leave out."""

    Check: grpc.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]


def recommend(
    target: str, user_id: str, item_id: str, k: int = 0, timeout_s: float = 1.0
) -> pb.RecommendResponse:
    with grpc.insecure_channel(target) as channel:
        stub: _RecommenderStub = pb_grpc.RecommenderStub(channel)
        return stub.Recommend(
            pb.RecommendRequest(user_id=user_id, item_id=item_id, k=k), timeout=timeout_s
        )


def send(bootstrap: str, topic: str, event: Event) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all")
    try:
        producer.send(topic, key=event.user_id.encode(), value=event.to_json()).get(timeout=10)
    finally:
        producer.close(timeout=10)


def wait_serving(target: str, timeout_s: float) -> bool:
    """Whether the server said SERVING within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = cast(_HealthStub, health_pb2_grpc.HealthStub(channel))
        while time.monotonic() < deadline:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    return False


def popular_items(bundle: str, count: int) -> list[str]:
    """Ids of the ``count`` most clicked items of ``bundle`` whose pools are full."""
    import numpy as np

    from recsvc.bundle import load_bundle

    loaded = load_bundle(bundle, verify=False)
    full = (np.asarray(loaded["pools"]) >= 0).all(axis=1)
    popularity = np.where(full, np.asarray(loaded["item_popularity"]), -1)
    top = np.argsort(-popularity, kind="stable")[:count]
    ids: list[str] = np.asarray(loaded["item_ids"]).astype(str)[top].tolist()
    return ids


def example(bundle: str, target: str, gateway: str = "127.0.0.1:8080") -> str:
    """Calls to paste, for the most popular item of ``bundle`` that has a full pool."""
    item, other = popular_items(bundle, 2)
    py = ".venv/bin/python -m recsvc.client"
    request = json.dumps({"user_id": "demo-user", "item_id": item, "k": 5})
    click = json.dumps({"user_id": "demo-user", "item_id": other, "type": "click"})
    return "\n".join(
        [
            "Try it:",
            f"  {py} recommend --user demo-user --item {item} --k 5",
            f"  {py} send --user demo-user --item {other} --type click   # a click, via Kafka",
            f"  {py} recommend --user demo-user --item {item} --k 5   # now personalized",
            "With grpcurl (reflection is on):",
            f"  grpcurl -plaintext -d '{request}' {target} recsvc.v1.Recommender/Recommend",
            "Over HTTP, through `recsvc gateway` (schema: /openapi.json):",
            f"  curl -s 'http://{gateway}/v1/recommend?user_id=demo-user&item_id={item}&k=5'",
            f"  curl -s -X POST http://{gateway}/v1/events -H 'content-type: application/json' "
            f"-d '{click}'",
            "Metrics: curl -s 127.0.0.1:9464/metrics | grep recsvc_",
            "Stop: make stop (server, ingest, gateway), make down (also Redis and Kafka)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsvc.client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="server host:port")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("recommend", help="call Recommend and print the answer")
    rec.add_argument("--user", default="", help="user id (empty: anonymous)")
    rec.add_argument("--item", required=True, help="the item being viewed")
    rec.add_argument("--k", type=int, default=0, help="how many (default 30)")
    snd = commands.add_parser("send", help="produce one event to Kafka")
    snd.add_argument("--user", required=True)
    snd.add_argument("--item", required=True)
    snd.add_argument("--type", choices=EVENT_TYPES, default="click")
    snd.add_argument("--bootstrap", default="127.0.0.1:9092")
    snd.add_argument("--topic", default="recsvc.events")
    ex = commands.add_parser("example", help="print ready-to-paste calls for a bundle's item")
    ex.add_argument("--bundle", required=True, help="bundle version dir or root")
    wait = commands.add_parser("wait", help="wait until the server is SERVING")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)

    if args.command == "recommend":
        try:
            response = recommend(args.target, args.user, args.item, args.k)
        except grpc.RpcError as exc:
            print(f"Recommend failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        print(
            json.dumps(MessageToDict(response, always_print_fields_with_no_presence=True), indent=1)
        )
    elif args.command == "send":
        event = Event(uuid.uuid4().hex, args.user, args.item, args.type, time.time())
        send(args.bootstrap, args.topic, event)
        print(f"sent {event.to_json().decode()}")
    elif args.command == "example":
        print(example(args.bundle, args.target))
    elif not wait_serving(args.target, args.timeout):
        print(f"{args.target} not SERVING after {args.timeout} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
