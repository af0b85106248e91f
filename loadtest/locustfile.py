"""Shoppers browsing a shop that shows recsvc's recommendations beside every item.

Run from the repository root against a running server and ingest (``make run``)::

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --csv .local/locust/run --html .local/locust/run.html

Each Locust user is a browser tab that a stream of shoppers use one after another. A
visit: a shopper (drawn from a pool where a few users come back often) lands on an item
drawn by training popularity; every item view asks Recommend for the items to show beside
it, then produces the view's ``click`` to Kafka (the page's view beacon). After a think
time the shopper may add the item to the cart (``--cart-rate``), then leaves
(``--leave-rate``) or views the next item: one of the recommendations (``--follow-rate``,
top positions clicked more) or another popular item, as from search. Clicks reach the
shopper's Redis session through ``recsvc ingest``, so the share of replies personalized by
session events grows during the run; it is printed at the end (and written to
``<--csv>_personalized.json``), with the reasons of the other replies: the fallback reasons,
or ``ITEM_ONLY`` for a reply the model ranked from the viewed item alone (no session event
it knows yet).

Statistics: ``grpc``/``Recommend`` for the gRPC calls (a reply without items fails), and
``kafka``/``click``, ``kafka``/``cart`` for the events, timed until the broker acknowledged.
The target is Locust's ``--host`` (``host:port``, default 127.0.0.1:50051). Locust's
``--help`` does not show a locustfile's options: ``python -m loadtest.locustfile --help``
does.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from locust import TaskSet, events, task
from locust.runners import MasterRunner, WorkerRunner

from loadtest.grpc_user import GrpcUser
from loadtest.shoppers import (
    Catalogue,
    EventProducer,
    PersonalizationTracker,
    ShopperPool,
    pick_shown,
    run_prefix,
)
from recsvc.exceptions import BundleError
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger("loadtest.shoppers")
DEFAULT_TARGET = "127.0.0.1:50051"
#: Why a reply the model ranked did not use the session: no session event the model knows
#: (a first view, or only unknown items), so the viewed item alone filled the window.
ITEM_ONLY = "ITEM_ONLY"
#: Made at import, before ``--processes`` forks, so the processes of a run share it.
RUN_PREFIX = run_prefix()


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("recsvc shoppers")
    group.add_argument(
        "--bundle",
        default=".local/bundles/taobao",
        help="bundle version dir or root: item ids and popularity (default %(default)s)",
    )
    group.add_argument(
        "--kafka", default="127.0.0.1:9092", help="Kafka bootstrap servers (default %(default)s)"
    )
    group.add_argument(
        "--topic", default="recsvc.events", help="events topic (default %(default)s)"
    )
    group.add_argument(
        "--k", type=int, default=0, help="items asked per Recommend; 0: the server's default (30)"
    )
    group.add_argument(
        "--cart-rate",
        type=float,
        default=0.1,
        help="chance a viewed item is added to the cart (default %(default)s)",
    )
    group.add_argument(
        "--follow-rate",
        type=float,
        default=0.7,
        help="chance the next view is a recommended item, else a popular one (default %(default)s)",
    )
    group.add_argument(
        "--leave-rate",
        type=float,
        default=0.2,
        help="chance the shopper leaves after a view (default %(default)s)",
    )
    group.add_argument(
        "--max-views", type=int, default=20, help="views per visit at most (default 20)"
    )
    group.add_argument(
        "--user-pool", type=int, default=2000, help="distinct shoppers (default %(default)s)"
    )
    group.add_argument(
        "--user-skew",
        type=float,
        default=1.0,
        help="Zipf exponent of how often shoppers return; 0: uniform (default %(default)s)",
    )
    group.add_argument(
        "--user-prefix",
        default="",
        help="user id prefix (default: a new locust-<hex>- per run, so sessions start empty; "
        "give one to workers on other machines)",
    )
    group.add_argument(
        "--think-min", type=float, default=1.0, help="seconds between actions, min (default 1)"
    )
    group.add_argument(
        "--think-max", type=float, default=5.0, help="seconds between actions, max (default 5)"
    )
    group.add_argument(
        "--grpc-timeout", type=float, default=1.0, help="Recommend deadline, s (default 1)"
    )
    group.add_argument(
        "--exclude-seen", action="store_true", help="ask Recommend to leave out seen items"
    )
    group.add_argument(
        "--share-interval",
        type=float,
        default=10.0,
        help="window of the personalized-share report, s (default 10)",
    )
    group.add_argument("--seed", type=int, default=None, help="random seed (default: none)")


@dataclass
class Shop:
    """Everything the shoppers of one process share."""

    options: Any
    catalogue: Catalogue
    pool: ShopperPool
    producer: EventProducer
    tracker: PersonalizationTracker
    rng: random.Random


def check_options(options: Any) -> None:
    """Raises ValueError naming the first bad option."""
    for name in ("cart_rate", "follow_rate", "leave_rate"):
        value = getattr(options, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if not 0 <= options.k <= 200:
        raise ValueError(f"--k must be in 0..200, got {options.k}")
    if options.max_views < 1:
        raise ValueError(f"--max-views must be at least 1, got {options.max_views}")
    if not 0 <= options.think_min <= options.think_max:
        raise ValueError("--think-min and --think-max must satisfy 0 <= min <= max")
    if options.grpc_timeout <= 0 or options.share_interval <= 0:
        raise ValueError("--grpc-timeout and --share-interval must be positive")


@events.init.add_listener
def on_init(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library: the caller sets Shopper.shop
        return
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        check_options(options)
        pool = ShopperPool(options.user_prefix or RUN_PREFIX, options.user_pool, options.user_skew)
        catalogue = Catalogue.from_bundle(options.bundle)
    except (ValueError, BundleError) as exc:
        sys.stderr.write(f"locustfile: {exc}\n")
        sys.exit(2)
    tracker = PersonalizationTracker(interval_s=options.share_interval)
    producer = EventProducer(options.kafka, options.topic, environment.events.request)
    Shopper.shop = Shop(options, catalogue, pool, producer, tracker, random.Random(options.seed))
    ShopperUser.timeout_s = options.grpc_timeout
    log.info(
        "shoppers: %d items by popularity from %s, %d users '%s<n>' (skew %.2f), target %s",
        len(catalogue),
        options.bundle,
        pool.size,
        pool.prefix,
        options.user_skew,
        environment.host or "the user class's host",
    )

    if isinstance(environment.runner, WorkerRunner):

        @events.report_to_master.add_listener
        def send_counts(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
            data["recsvc_shoppers"] = tracker.take()

    if isinstance(environment.runner, MasterRunner):

        @events.worker_report.add_listener
        def add_counts(client_id: str, data: dict[str, Any], **_kw: Any) -> None:
            tracker.merge(data.get("recsvc_shoppers", {}))


@events.test_start.add_listener
def open_producer(environment: Any, **_kwargs: Any) -> None:
    shop = Shopper.shop
    if shop is not None:
        shop.tracker.start()
        kafka = any(getattr(c, "sends_to_kafka", False) for c in environment.user_classes)
        if kafka and not isinstance(environment.runner, MasterRunner):
            shop.producer.connect()


@events.test_stop.add_listener
def close_producer(environment: Any, **_kwargs: Any) -> None:
    shop = Shopper.shop
    if shop is not None:
        shop.producer.close()


@events.quitting.add_listener
def report_personalization(environment: Any, **_kwargs: Any) -> None:
    shop = Shopper.shop
    if shop is None or isinstance(environment.runner, WorkerRunner):
        return
    summary = {"user_prefix": shop.pool.prefix, **shop.tracker.summary()}
    print("recsvc shoppers: " + json.dumps(summary), flush=True)
    prefix = getattr(shop.options, "csv_prefix", None)
    if prefix:
        path = Path(f"{prefix}_personalized.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")


def has_items(response: pb.RecommendResponse) -> None:
    if not response.items:
        raise ValueError("empty reply")


class Visit(TaskSet):
    """One shopper's visit: land on an item, browse, maybe add to cart, leave."""

    def on_start(self) -> None:
        shop = self.user.shop
        self.user_id = shop.pool.draw(shop.rng)
        self.views = 0
        self.item = ""
        self.shown: list[str] = []
        self.carted: set[str] = set()

    def view(self, item: str) -> None:
        """The shopper opens ``item``: the page asks Recommend, then reports the click.

        The page is rendered with its recommendations and then sends its page-view beacon,
        so a reply is personalized by the shopper's earlier clicks only: its share shows
        that they went through Kafka, ingest and Redis in time.
        """
        shop: Shop = self.user.shop
        reply = self.user.recommend(self.user_id, item)
        self.item, self.views = item, self.views + 1
        shop.tracker.count("views")
        self.shown = reply.items if reply is not None else []
        if reply is not None:
            shop.tracker.record(reply.session_events_used > 0, reply.reason)
        self.user.send_event(self.user_id, item, "click")

    @task
    def next_step(self) -> None:
        """Arrive, or act on the item in view; a think time follows each step."""
        shop: Shop = self.user.shop
        rng = shop.rng
        if not self.item:  # the shopper arrives
            shop.tracker.count("visits")
            self.view(shop.catalogue.draw(rng))
            return
        if self.item not in self.carted and rng.random() < shop.options.cart_rate:
            self.user.send_event(self.user_id, self.item, "cart")
            self.carted.add(self.item)
            shop.tracker.count("carts")
        if self.views >= shop.options.max_views or rng.random() < shop.options.leave_rate:
            self.interrupt(reschedule=False)  # the next shopper comes after a think time
        if self.shown and rng.random() < shop.options.follow_rate:
            shop.tracker.count("follows")
            self.view(pick_shown(self.shown, rng))
        else:
            self.view(shop.catalogue.draw(rng))


@dataclass(frozen=True)
class Reply:
    """What a shopper's page takes from a Recommend reply, over gRPC or HTTP alike."""

    items: list[str]
    session_events_used: int
    #: the fallback reason, ``ITEM_ONLY``, or ``UNSPECIFIED`` (personalized by the session)
    reason: str


def reply_reason(personalized: bool, session_events_used: int, fallback: str) -> str:
    """The tracker's reason for a reply (see ``ITEM_ONLY``); ``fallback`` without prefix."""
    return ITEM_ONLY if personalized and not session_events_used else fallback


class Shopper:
    """What the shoppers of both transports share: the shop, their pace and the visit.

    A subclass is a Locust ``User`` that implements ``recommend`` and ``send_event``.
    """

    tasks: ClassVar[list[type[TaskSet]]] = [Visit]
    shop: Shop | None = None  # set by on_init for every Shopper class
    #: Whether its events go to Kafka straight from this process (the test start connects).
    sends_to_kafka = True

    def wait_time(self) -> float:
        assert self.shop is not None
        options = self.shop.options
        return self.shop.rng.uniform(options.think_min, options.think_max)

    def recommend(self, user_id: str, item: str) -> Reply | None:
        raise NotImplementedError

    def send_event(self, user_id: str, item: str, kind: str) -> None:
        raise NotImplementedError


class ShopperUser(Shopper, GrpcUser):
    """A browser tab used by one shopper after another (see ``Visit``), whose page server
    calls recsvc over gRPC and produces the events to Kafka."""

    stub_class = pb_grpc.RecommenderStub
    host = DEFAULT_TARGET

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if self.shop is None:
            raise RuntimeError("Shopper.shop is not set (run through locust -f)")

    def recommend(self, user_id: str, item: str) -> Reply | None:
        assert self.shop is not None
        request = pb.RecommendRequest(user_id=user_id, item_id=item, k=self.shop.options.k)
        if self.shop.options.exclude_seen:
            request.exclude_seen = True
        response = self.client.Recommend(request, check=has_items)
        if response is None:
            return None
        fallback = pb.FallbackReason.Name(response.fallback_reason).removeprefix("FALLBACK_REASON_")
        return Reply(
            [ranked.item_id for ranked in response.items],
            response.session_events_used,
            reply_reason(response.personalized, response.session_events_used, fallback),
        )

    def send_event(self, user_id: str, item: str, kind: str) -> None:
        assert self.shop is not None
        self.shop.producer.send(user_id, item, kind)


if __name__ == "__main__":  # Locust's --help does not load locustfiles: show ours here
    import argparse

    parser = argparse.ArgumentParser(
        prog="locust -f loadtest/locustfile.py",
        description=__doc__.split("\n\n")[0]
        + " Options of this locustfile (besides Locust's own: -u, -r, -t, -H, --csv, --html).",
    )
    add_options(parser)
    parser.parse_args()
    parser.print_help()
