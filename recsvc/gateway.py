"""``recsvc gateway``: HTTP/JSON in front of the gRPC server and the events topic.

A thin client, not a second ranking path: ``GET /v1/recommend`` is one ``Recommend`` call
on the gRPC server (its status mapped to HTTP by :mod:`recsvc.http_status`), and
``POST /v1/events`` checks the event against the stream's contract (:mod:`recsvc.events`)
and sends it to the events topic, answering once Kafka has acknowledged it. An
``Authorization`` header is passed on to the gRPC server as its metadata, so the server's
bearer tokens guard HTTP callers too; the gateway checks the same tokens (the server's
``--auth-tokens-file`` or ``$RECSVC_AUTH_TOKENS``) itself before it sends an event.

Also served: ``/openapi.json``, ``/healthz`` (the process is up), ``/readyz`` (the gRPC
server says SERVING and a Kafka broker is connected) and ``/metrics`` (Prometheus).
FastAPI's ``/docs`` pages are off: they load their scripts from a CDN.

For the demo storefront (``/demo``, one static page with its script inline): the items'
categories and photos (:mod:`recsvc.catalogue`) under ``/v1/items``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import grpc
import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from recsvc.catalogue import Catalogue
from recsvc.contract import EVENT_TYPES, MAX_ID_LENGTH
from recsvc.event_producer import EventProducer, EventsUnavailable, Sent
from recsvc.events import Event, parse_event
from recsvc.exceptions import BundleError, InvalidEvent
from recsvc.grpc_recommender import GrpcRecommender
from recsvc.http_status import error_body, http_status
from recsvc.metrics import LATENCY_BUCKETS
from recsvc.security import bearer_accepted, read_tokens
from recsvc.settings import Settings
from recsvc.v1 import recommender_pb2 as pb

log = logging.getLogger(__name__)
#: The demo storefront: one page, its style and script inline, nothing fetched elsewhere.
DEMO_PAGE = (resources.files("recsvc") / "static" / "demo.html").read_text(encoding="utf-8")

#: Routes counted by name in the metrics; anything else counts as "other".
ROUTES = (
    "/v1/recommend",
    "/v1/events",
    "/v1/items",
    "/v1/items/popular",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/demo",
)
#: Most items one ``/v1/items`` call describes.
MAX_ITEMS = 200


class Recommender(Protocol):
    """The gRPC server as the gateway sees it (:class:`GrpcRecommender`, or a test's)."""

    async def recommend(
        self, request: pb.RecommendRequest, authorization: str | None
    ) -> pb.RecommendResponse: ...

    async def serving(self) -> bool: ...


class EventSink(Protocol):
    """The events topic as the gateway sees it (:class:`~recsvc.event_producer.EventProducer`)."""

    async def send(self, event: Event) -> Sent: ...

    async def ready(self) -> bool: ...


class BecauseOut(BaseModel):
    item_id: str
    clicks_ago: int = Field(description="1: the visit just before the item being viewed")
    weight: float = Field(description="its term of the item's personalized score")


class RankedItemOut(BaseModel):
    item_id: str
    score: float
    sources: list[str] = Field(description="the candidate sources that proposed it")
    unscored: bool = Field(description="the model could not score it; placed by its sources")
    because: list[BecauseOut] | None = Field(
        default=None, description="with explain=true: the earlier visits behind it"
    )
    why: str | None = Field(
        default=None, description="with explain=true: the reason in words, for a page"
    )


class RecommendOut(BaseModel):
    items: list[RankedItemOut]
    bundle_version: str
    personalized: bool
    fallback_reason: str | None = Field(description="why the answer is not personalized")
    session_events_used: int
    ranked_by: str = Field(description="pool_order, first_stage or second_stage")
    variant: str = Field(description="the A/B variant that answered")


class EventIn(BaseModel):
    """One event of the stream; the gateway fills in a missing ``event_id`` and ``ts``."""

    model_config = ConfigDict(strict=True, extra="forbid")  # JSON types as the stream's

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(description=" | ".join(EVENT_TYPES))
    event_id: str | None = Field(default=None, description="default: a new UUID")
    ts: float | None = Field(default=None, description="Unix seconds; default: now")


class EventAccepted(BaseModel):
    event_id: str
    topic: str
    partition: int
    offset: int


class ItemOut(BaseModel):
    item_id: str
    category: str | None = Field(description="null for an item the bundle does not know")
    in_bundle: bool
    has_image: bool = Field(description="its photo is at /v1/items/{item_id}/image")


class ItemsOut(BaseModel):
    items: list[ItemOut]


class PopularOut(BaseModel):
    items: list[str]


class ErrorDetail(BaseModel):
    code: int
    status: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorDetail


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


#: A candidate source in words, for an item no earlier visit explains.
SOURCE_WORDS = {
    "itemcf": "often viewed with this item",
    "item2vec": "close to it in shopping sessions",
    "image": "looks like it",
    "pss": "a similar product",
    "category": "in the same category",
    "new": "new in the catalogue",
    "session_knn": "in sessions like yours",
    "live": "viewed with it in the last minutes",
}
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven")


def why(because: list[dict[str, Any]], sources: list[str]) -> str:
    """An item's reason in words: its earlier visits ("because you viewed 3769601 two clicks
    ago"), else its first source."""
    if because:
        visits = []
        for b in because:
            n = b["clicks_ago"]
            count = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
            visits.append(f"{b['item_id']} {count} click{'' if n == 1 else 's'} ago")
        return "because you viewed " + " and ".join(visits)
    if sources:
        return SOURCE_WORDS.get(sources[0], sources[0])
    return "from the item's candidates"


def _item_json(item: pb.RankedItem, explain: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "item_id": item.item_id,
        "score": item.score,
        "sources": [_enum_name(pb.Source, s, "SOURCE_") for s in item.sources],
        "unscored": item.unscored,
    }
    if explain:
        out["because"] = [
            {"item_id": b.item_id, "clicks_ago": b.clicks_ago, "weight": b.weight}
            for b in item.because
        ]
        out["why"] = why(out["because"], out["sources"])
    return out


def response_json(reply: pb.RecommendResponse, explain: bool = False) -> dict[str, Any]:
    """The JSON form of a ``RecommendResponse`` (:class:`RecommendOut`); each item has
    ``because`` when ``explain``."""
    return {
        "items": [_item_json(item, explain) for item in reply.items],
        "bundle_version": reply.bundle_version,
        "personalized": reply.personalized,
        "fallback_reason": (
            _enum_name(pb.FallbackReason, reply.fallback_reason, "FALLBACK_REASON_")
            if reply.fallback_reason
            else None
        ),
        "session_events_used": reply.session_events_used,
        "ranked_by": _enum_name(pb.RankedBy, reply.ranked_by, "RANKED_BY_"),
        "variant": reply.variant,
    }


def _well_formed(header: str) -> bool:
    """A header value gRPC metadata can carry: printable ASCII."""
    return header.isascii() and header.isprintable()


def _error(http: int, status: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(http, status, message), status_code=http)


class GatewayMetrics:
    """The gateway's requests by route and status, and their latency."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "recsvc_gateway_requests_total",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsvc_gateway_request_seconds",
            "HTTP request latency inside the gateway, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


def create_app(
    recommender: Recommender,
    events: EventSink,
    metrics: GatewayMetrics | None = None,
    catalogue: Catalogue | None = None,
    tokens: frozenset[str] = frozenset(),
) -> FastAPI:
    """The gateway's FastAPI application over the given gRPC client and event sink; the
    item routes and the demo page need a ``catalogue``; with ``tokens``, sending an event
    needs one of them as a bearer token."""
    metrics = metrics or GatewayMetrics()
    accepted = [token.encode() for token in sorted(tokens)]
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 429, 503, 504)
    }
    app = FastAPI(
        title="recsvc gateway",
        summary="Personalized similar products over HTTP/JSON",
        version="1",
        docs_url=None,
        redoc_url=None,
    )

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
        route = request.url.path if request.url.path in ROUTES else "other"
        started, code = time.perf_counter(), "500"  # unless a response comes back
        try:
            response = await call_next(request)
            code = str(response.status_code)
            return response
        finally:
            metrics.latency.labels(route).observe(time.perf_counter() - started)
            metrics.requests.labels(route, code).inc()

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("gateway request failed", exc_info=exc, extra={"path": request.url.path})
        return _error(500, "INTERNAL", "internal error; see the gateway log")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, "INVALID_ARGUMENT", problems)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        status = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "UNKNOWN")
        body = error_body(exc.status_code, status, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.get(
        "/v1/recommend",
        response_model=RecommendOut,
        responses=errors,
        summary="The item's similar products, ranked for the user",
    )
    async def recommend(
        item_id: str = Query(min_length=1, description="the item being viewed"),
        user_id: str = Query("", description="empty: not personalized"),
        k: int = Query(0, ge=0, le=1000, description="how many (0: the server's default)"),
        exclude_seen: bool | None = Query(None, description="leave out the session's items"),
        category: str | None = Query(None, description="only items of this category"),
        explain: bool = Query(False, description="say which earlier visits led to each item"),
        variant: str | None = Query(None, description="the A/B variant (default: the user's)"),
        authorization: str | None = Header(None),
    ) -> Any:
        if authorization is not None and not _well_formed(authorization):
            return _error(401, "UNAUTHENTICATED", "malformed Authorization header")
        request = pb.RecommendRequest(user_id=user_id, item_id=item_id, k=k, explain=explain)
        if variant:
            request.variant = variant
        if exclude_seen is not None:
            request.exclude_seen = exclude_seen
        if category is not None:
            request.category = category
        try:
            reply = await recommender.recommend(request, authorization)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return _error(http_status(code), code.name, exc.details() or code.name)
        return JSONResponse(response_json(reply, explain))

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=EventAccepted,
        responses=errors,
        summary="Send one event (a click, cart, fav or buy) to the stream",
    )
    async def send_event(body: EventIn, authorization: str | None = Header(None)) -> Any:
        if accepted and not (
            authorization and _well_formed(authorization)
            and bearer_accepted(authorization, accepted)
        ):  # fmt: skip
            return _error(401, "UNAUTHENTICATED", "an accepted bearer token is required")
        event_id = body.event_id if body.event_id is not None else uuid.uuid4().hex
        ts = body.ts if body.ts is not None else time.time()
        draft = Event(event_id, body.user_id, body.item_id, body.type, ts)
        try:
            event = parse_event(draft.to_json())  # the rules ingest applies
        except InvalidEvent as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        try:
            sent = await events.send(event)
        except EventsUnavailable as exc:
            return _error(503, "UNAVAILABLE", str(exc))
        return JSONResponse(
            {"event_id": event.event_id, "topic": sent.topic, "partition": sent.partition,
             "offset": sent.offset},
            status_code=202,
        )  # fmt: skip

    def catalogue_or_error() -> Catalogue | JSONResponse:
        if catalogue is None:
            return _error(503, "UNAVAILABLE", "the gateway was started without a catalogue")
        return catalogue

    @app.get(
        "/v1/items",
        response_model=ItemsOut,
        responses=errors,
        summary="The items' categories and whether they have a photo",
    )
    async def items(
        ids: str = Query(min_length=1, description=f"comma-separated, at most {MAX_ITEMS}"),
    ) -> Any:
        wanted = [i for i in ids.split(",") if i]
        if not 1 <= len(wanted) <= MAX_ITEMS:
            return _error(400, "INVALID_ARGUMENT", f"ids: give 1..{MAX_ITEMS} item ids")
        if any(len(i) > MAX_ID_LENGTH for i in wanted):
            return _error(400, "INVALID_ARGUMENT", f"ids: at most {MAX_ID_LENGTH} characters each")
        source = catalogue_or_error()
        if isinstance(source, JSONResponse):
            return source
        try:  # off the event loop: the first call, or one after a swap, reads the bundle
            described = await asyncio.to_thread(source.describe, wanted)
        except BundleError as exc:
            return _error(503, "UNAVAILABLE", str(exc))
        return JSONResponse({"items": [vars(item) for item in described]})

    @app.get(
        "/v1/items/popular",
        response_model=PopularOut,
        responses=errors,
        summary="The bundle's most popular items",
    )
    async def popular(n: int = Query(10, ge=1, le=100)) -> Any:
        source = catalogue_or_error()
        if isinstance(source, JSONResponse):
            return source
        try:
            return JSONResponse({"items": await asyncio.to_thread(source.popular, n)})
        except BundleError as exc:
            return _error(503, "UNAVAILABLE", str(exc))

    @app.get(
        "/v1/items/{item_id}/image",
        responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorOut}},
        summary="The item's photo",
    )
    async def image(item_id: str) -> Any:
        source = catalogue_or_error()
        if isinstance(source, JSONResponse):
            return source
        found = source.image(item_id)
        if found is None:
            return _error(404, "NOT_FOUND", f"no photo of item {item_id[:80]!r}")
        return FileResponse(found[0], media_type=found[1])

    @app.get("/demo", include_in_schema=False)
    async def demo(item: str | None = None) -> Any:
        if item is None and catalogue is not None:
            try:
                first = await asyncio.to_thread(catalogue.popular, 1)
            except BundleError as exc:
                return _error(503, "UNAVAILABLE", str(exc))
            if first:
                return RedirectResponse(f"/demo?{urlencode({'item': first[0]})}", 302)
        return HTMLResponse(DEMO_PAGE)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/demo", 302)

    @app.get("/healthz", summary="The gateway process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The gRPC server is SERVING and Kafka is connected")
    async def readyz() -> JSONResponse:
        grpc_ok, kafka_ok = await recommender.serving(), await events.ready()
        body = {
            "grpc": "serving" if grpc_ok else "not serving",
            "kafka": "connected" if kafka_ok else "not connected",
        }
        return JSONResponse(body, status_code=200 if grpc_ok and kafka_ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by :func:`serve_gateway`'s own signal handlers: uvicorn's
    would raise the signal again once it has shut down, so the process would end by
    SIGTERM before the producer is closed, not with status 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_gateway(settings: Settings) -> None:
    """Run the gateway on ``gateway_host:gateway_port`` until SIGINT or SIGTERM."""
    recommender = GrpcRecommender(settings.gateway_grpc_target, settings.gateway_timeout_s)
    producer = EventProducer(settings)
    images = Path(settings.gateway_images) if settings.gateway_images else None
    tokens = read_tokens(settings.auth_tokens_file, os.environ)
    app = create_app(
        recommender, producer, catalogue=Catalogue(settings.bundle, images), tokens=tokens
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_config=None,  # recsvc.logs formats every record
            access_log=False,  # /metrics counts the requests
            lifespan="off",
        )
    )
    log.info(
        "gateway: HTTP on %s:%d, gRPC server %s, events to %s",
        settings.gateway_host,
        settings.gateway_port,
        settings.gateway_grpc_target,
        settings.events_topic,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, setattr, server, "should_exit", True)
    try:
        await server.serve()
    finally:
        await producer.close()
        await recommender.close()
    log.info("gateway: stopped")
