"""The gRPC ``Recommender`` service (grpc.aio), with health checks and reflection.

Per call: check the request, find the item's pool, read the user's session from the store
within what is left of the time budget, and rank. Whatever goes wrong with the session read
(no user, store down, too slow) is answered with the pool in its offline order, marked not
personalized with the reason. gRPC status codes are set here and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from recsvc._wire import ranked_items
from recsvc.contract import MAX_ID_LENGTH, SOURCE_BITS
from recsvc.exceptions import (
    ConfigError,
    InvalidRequest,
    ItemNotFound,
    LiveUnavailable,
    SessionStoreError,
)
from recsvc.features import LIVE_FEATURES
from recsvc.live import EMPTY_READ, LiveRead, training_mismatch
from recsvc.metrics import Metrics
from recsvc.ranking import Fallback, RankedBy, Ranker, Ranking
from recsvc.redact import clip
from recsvc.reloader import BundleReloader
from recsvc.request_decoding import (
    RequestOrError,
    TolerantRegistration,
    UndecodableRequest,
    decode_request,
)
from recsvc.retry import CircuitBreaker
from recsvc.security import BearerTokens, read_tokens, server_credentials
from recsvc.sessions import SessionEvent, SessionStore
from recsvc.settings import Settings
from recsvc.store_watch import EmptiedStoreWatch
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from recsvc.variants import DEFAULT, Variant, VariantPicker, load_variants

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
#: The health "service" that says whether the session store looks intact: NOT_SERVING
#: while it looks freshly emptied (:mod:`recsvc.store_watch`); the service stays SERVING.
SESSIONS_HEALTH = "recsvc.sessions"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
DEFAULT_K = 30
#: At most one log line per this many seconds about requests that are not protobuf.
UNDECODABLE_LOG_INTERVAL_S = 10.0
#: A stop first goes on answering until no Recommend has started for this long (see
#: :meth:`RecommendServer.stop`), checking this often.
DRAIN_QUIET_S = 0.1
DRAIN_POLL_S = 0.01
#: Exception -> gRPC status: the one place codes are chosen.
STATUS = {
    ItemNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    LiveUnavailable: grpc.StatusCode.UNAVAILABLE,
}
#: Fallback reason and pool-source bit -> proto enum, by the names the proto gives them.
#: (Keyed by ``str | None`` for lookups of ``Ranking.fallback``, None when personalized.)
FALLBACK_PROTO: dict[str | None, pb.FallbackReason] = {
    reason: cast(pb.FallbackReason, pb.FallbackReason.Value(f"FALLBACK_REASON_{reason.upper()}"))
    for name, reason in vars(Fallback).items()
    if not name.startswith("_")
}
RANKED_BY_PROTO: dict[str, pb.RankedBy] = {
    stage: cast(pb.RankedBy, pb.RankedBy.Value(f"RANKED_BY_{stage.upper()}"))
    for name, stage in vars(RankedBy).items()
    if not name.startswith("_")
}
#: Fallbacks that mean the store was not read.
UNREAD = (Fallback.SESSION_STORE_UNAVAILABLE, Fallback.BUDGET_EXCEEDED)
SOURCE_PROTO = {bit: pb.Source.Value(f"SOURCE_{name.upper()}") for name, bit in SOURCE_BITS.items()}
#: Pool source flags -> the proto enums they stand for, for every value a uint8 can hold
#: (bits no source has are ignored).
SOURCES_BY_FLAGS = [
    tuple(proto for bit, proto in SOURCE_PROTO.items() if flags & bit) for flags in range(256)
]
#: Field numbers for :func:`recsvc._wire.ranked_items`, read from the generated code.
ITEM_FIELDS = (
    pb.RecommendResponse.DESCRIPTOR.fields_by_name["items"].number,
    *(
        pb.RankedItem.DESCRIPTOR.fields_by_name[f].number
        for f in ("item_id", "score", "sources", "unscored")
    ),
)


def method_handlers(
    service: RecommenderService,
) -> dict[str, grpc.RpcMethodHandler[RequestOrError, pb.RecommendResponse]]:
    """The handlers the generated ``add_RecommenderServicer_to_server`` registers, but
    decoding requests with :func:`decode_request`."""
    return {
        "Recommend": grpc.unary_unary_rpc_method_handler(
            service.Recommend,
            request_deserializer=decode_request,
            response_serializer=pb.RecommendResponse.SerializeToString,
        )
    }


class LogThrottle:
    """At most one warning per ``interval_s``, with how many were held back before it."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._next = float("-inf")
        self._held_back = 0

    def warning(self, msg: str, **fields: object) -> None:
        now = self.clock()
        if now < self._next:
            self._held_back += 1
            return
        self._next = now + self.interval_s
        self.logger.warning(msg, extra={**fields, "suppressed": self._held_back})
        self._held_back = 0


class RecommenderService(pb_grpc.RecommenderServicer):
    """``Recommend``: the item's pool ranked for the user, inside the time budget."""

    def __init__(
        self,
        variants: dict[str, BundleReloader],
        store: SessionStore,
        settings: Settings,
        metrics: Metrics,
        breaker: CircuitBreaker | None = None,
        store_watch: EmptiedStoreWatch | None = None,
        picker: VariantPicker | None = None,
    ) -> None:
        if not variants or (len(variants) > 1 and picker is None):
            raise ConfigError("a service needs one variant, or several and their picker")
        self.variants = variants
        self.picker = picker
        self._only = next(iter(variants)) if len(variants) == 1 else None
        self.store = store
        self.store_watch = store_watch
        self.budget_s = settings.budget_ms / 1000
        self.reserve_s = settings.scoring_reserve_ms / 1000
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker(settings.store_cooldown_s)
        # Each histogram child, looked up once: labels() costs more than observe().
        outcomes = ("error", "personalized", "fallback", *(c.name.lower() for c in STATUS.values()))
        self._latency = {
            (v, o): metrics.request_latency.labels(outcome=o, variant=v)
            for v in variants
            for o in outcomes
        }
        self._undecodable_log = LogThrottle(log, UNDECODABLE_LOG_INTERVAL_S)
        # Recommend calls started, and running now: a stop waits for them to settle.
        self.calls_started = 0
        self.calls_running = 0

    async def Recommend(
        self,
        request: RequestOrError,
        context: grpc.aio.ServicerContext[RequestOrError, pb.RecommendResponse],
    ) -> pb.RecommendResponse:
        started = time.perf_counter()
        self.calls_started += 1
        self.calls_running += 1
        client_left = context.time_remaining()
        limit = self.budget_s if client_left is None else min(self.budget_s, client_left)
        outcome, variant = "error", self._only or next(iter(self.variants))
        try:
            request = self._decoded(request)
            variant = self._variant(request)
            # One bundle for the whole call, even across a swap.
            ranker = self.variants[variant].ranker
            k = self._check(request, ranker.pool_size)
            known = ranker.has_item(request.item_id)
            if self.store.live is None:
                ranker.index(request.item_id)  # NOT_FOUND before any read
            session, live, fallback = await self._session(
                request.user_id, request.item_id, known, started, limit
            )
            if not known and fallback in UNREAD:
                raise LiveUnavailable(
                    f"item {clip(request.item_id)} is not in bundle {ranker.version}, and its "
                    f"live co-visits could not be read ({fallback}); retry"
                )
            ranking = ranker.rank(
                request.item_id,
                k,
                session,
                fallback=fallback,
                exclude_seen=request.exclude_seen,
                category=request.category if request.HasField("category") else None,
                live=live,
            )
            outcome = "personalized" if ranking.personalized else "fallback"
            if ranking.fallback:
                self.metrics.fallbacks.labels(reason=ranking.fallback, variant=variant).inc()
            response = self._response(ranking, ranker.version, variant)
            if request.explain:
                explained = ranker.explain(request.item_id, session, ranking)
                for item, reasons in zip(response.items, explained, strict=True):
                    for reason in reasons:
                        item.because.add(
                            item_id=reason.item_id,
                            clicks_ago=reason.clicks_ago,
                            weight=reason.weight,
                        )
            return response
        except tuple(STATUS) as exc:
            outcome = STATUS[type(exc)].name.lower()
            await context.abort(STATUS[type(exc)], str(exc))
        except Exception:
            item_id = request.item_id if isinstance(request, pb.RecommendRequest) else ""
            log.exception("Recommend failed", extra={"item_id": clip(item_id)})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            self.calls_running -= 1
            elapsed = time.perf_counter() - started
            self._latency[variant, outcome].observe(elapsed)

    def _variant(self, request: pb.RecommendRequest) -> str:
        """The request's named variant, else the one its user is dealt."""
        if request.HasField("variant"):
            if request.variant not in self.variants:
                raise InvalidRequest(
                    f"variant {clip(request.variant)} is not served here "
                    f"(served: {', '.join(self.variants)})"
                )
            return request.variant
        if self._only is not None:
            return self._only
        assert self.picker is not None
        return self.picker.pick(request.user_id)

    def _decoded(self, request: RequestOrError) -> pb.RecommendRequest:
        """The request, or :class:`InvalidRequest` for bytes that were not one."""
        if not isinstance(request, UndecodableRequest):
            return request
        self._undecodable_log.warning("undecodable request", size=request.size, error=request.error)
        raise InvalidRequest(
            f"request is not a valid RecommendRequest ({request.size} bytes): {request.error}"
        )

    @staticmethod
    def _check(request: pb.RecommendRequest, pool_size: int) -> int:
        if not request.item_id:
            raise InvalidRequest("item_id is required")
        # Ids are at most the length ingest accepts on the event stream (recsvc.events): a
        # longer one is a client's bug, refused before it reaches the session store.
        for field, value in (("item_id", request.item_id), ("user_id", request.user_id)):
            if len(value) > MAX_ID_LENGTH:
                raise InvalidRequest(
                    f"{field} must be at most {MAX_ID_LENGTH} characters, got {clip(value)}"
                )
        k = request.k or min(DEFAULT_K, pool_size)
        if k > pool_size:
            raise InvalidRequest(f"k must be at most the pool size {pool_size}, got {k}")
        if request.HasField("category") and not request.category:
            raise InvalidRequest("category, when given, must not be empty")
        return k

    async def _session(
        self, user_id: str, item_id: str, known: bool, started: float, limit: float
    ) -> tuple[Sequence[SessionEvent], LiveRead, str | None]:
        """The user's session and the live neighbours of the item and the session, read
        together, or why there is no session to use. Without a user, the live neighbours
        are read only for an item the bundle does not know (``known`` false): a known item
        is then answered from its pool alone."""
        if not user_id and (self.store.live is None or known):
            return (), EMPTY_READ, Fallback.NO_USER
        if not self.breaker.allow():
            return (), EMPTY_READ, Fallback.SESSION_STORE_UNAVAILABLE
        elapsed = time.perf_counter() - started
        timeout = limit - elapsed - self.reserve_s
        if timeout <= 0:
            return (), EMPTY_READ, Fallback.BUDGET_EXCEEDED
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, no task per call
                session, live = await self.store.read(user_id, item_id)
        except TimeoutError:
            # Only a read that had the server's whole budget says the store is slow; one
            # cut short by a caller's tight deadline must not switch others off.
            if timeout >= self.budget_s - elapsed - self.reserve_s:
                self.breaker.failure()
            return (), EMPTY_READ, Fallback.BUDGET_EXCEEDED
        except SessionStoreError as exc:
            self.breaker.failure()
            log.warning("session store unavailable", extra={"error": str(exc)})
            return (), EMPTY_READ, Fallback.SESSION_STORE_UNAVAILABLE
        self.breaker.success()
        if self.store.live is not None:
            self.metrics.live_neighbours_read.observe(live.count())
        if not user_id:
            return (), live, Fallback.NO_USER
        if self.store_watch is not None:
            self.store_watch.record(bool(session))
        return session, live, None

    @staticmethod
    def _response(ranking: Ranking, version: str, variant: str) -> pb.RecommendResponse:
        response = pb.RecommendResponse(
            bundle_version=version,
            variant=variant,
            personalized=ranking.personalized,
            fallback_reason=FALLBACK_PROTO.get(ranking.fallback, pb.FALLBACK_REASON_UNSPECIFIED),
            session_events_used=ranking.session_events_used,
            ranked_by=RANKED_BY_PROTO[ranking.ranked_by],
        )
        # The items as wire bytes, written in C and parsed by upb: a tenth of the cost of
        # adding 30 RankedItem messages one by one.
        response.MergeFromString(
            ranked_items(
                ranking.items, ranking.scores, ranking.sources, SOURCES_BY_FLAGS, ITEM_FIELDS
            )
        )
        return response


class RecommendServer:
    """The gRPC server with the service, health checks, reflection and bundle watching."""

    def __init__(
        self, settings: Settings, store: SessionStore, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        specs, picker = [Variant(DEFAULT, settings.bundle, 1.0, settings.model,
                                 bool(settings.second_stage))], None  # fmt: skip
        if settings.variants:
            specs, salt = load_variants(
                Path(settings.variants), settings.model, bool(settings.second_stage)
            )
            picker = VariantPicker(specs, salt)
        #: Each variant's bundle, hot-swapped on its own.
        self.variants = {
            spec.name: BundleReloader(
                spec.bundle,
                spec.model,
                self.metrics,
                spec.second_stage,
                on_load=self._check_live_training,
                variant=spec.name,
            )
            for spec in specs
        }
        #: The first variant's (the only one without --variants).
        self.bundles = next(iter(self.variants.values()))
        self.health = health.aio.HealthServicer()
        watch = EmptiedStoreWatch(self._store_emptied, self.metrics.session_hit_ratio.set)
        self.service = RecommenderService(
            self.variants, store, settings, self.metrics, store_watch=watch, picker=picker
        )
        self._credentials = server_credentials(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca
        )
        tokens = read_tokens(settings.auth_tokens_file, os.environ)
        if tokens and self._credentials is None and settings.host not in LOOPBACK:
            log.warning(
                "bearer tokens without TLS on a non-loopback address: they cross the network "
                "in the clear (set --tls-cert and --tls-key)",
                extra={"host": settings.host},
            )
        # Without tokens no interceptor at all: it would cost every call a Python hop.
        self._authenticated = bool(tokens)
        interceptors = (
            [BearerTokens(tokens, self.metrics.unauthenticated_calls.inc)] if tokens else []
        )
        self._server = grpc.aio.server(interceptors=interceptors)
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        handlers = method_handlers(self.service)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        self._server.add_registered_method_handlers(SERVICE_NAME, handlers)
        # Health and reflection as their own modules register them, but with parsers that
        # never raise (tolerant): undecodable bytes are INVALID_ARGUMENT, as for Recommend.
        registration = cast(grpc.aio.Server, TolerantRegistration(self._server))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registration)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
            reflection.aio.ReflectionServicer(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            registration,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        if self._credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._credentials)
        if not self.port:
            raise OSError(f"cannot bind the gRPC port at {address}")
        await self._server.start()
        for name in ("", SERVICE_NAME, SESSIONS_HEALTH):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.watch_interval_s:
            for reloader in self.variants.values():
                self._tasks.append(
                    asyncio.create_task(reloader.watch(self.settings.watch_interval_s))
                )
        log.info(
            "serving",
            extra={
                "address": f"{self.settings.host}:{self.port}",
                "bundle": self.bundles.ranker.version,
                "variants": {name: r.ranker.version for name, r in self.variants.items()},
                "tls": "mutual" if self.settings.tls_client_ca else bool(self._credentials),
                "auth": "bearer tokens" if self._authenticated else "none",
            },
        )
        return self.port

    async def reload_all(self) -> None:
        """Load every variant's bundle again (SIGHUP), each on its own."""
        for reloader in self.variants.values():
            await reloader.reload(force=True)

    def _check_live_training(self, ranker: Ranker) -> None:
        """Warn when the live co-visits this server reads are not those the bundle's second
        stage learned on (the pipeline records them)."""
        second = ranker.second_stage
        if second is None or not any(second.uses(name) for name in LIVE_FEATURES):
            return
        metrics = ranker.bundle.manifest.get("metrics")
        learned = metrics.get("second_stage") if isinstance(metrics, dict) else None
        trained = learned.get("live") if isinstance(learned, dict) else None
        if not isinstance(trained, dict):
            return  # a bundle that did not record them (built before it did)
        problem = training_mismatch(trained, self.settings.live_settings())
        if problem is not None:
            log.warning(problem, extra={"version": ranker.version})

    def _store_emptied(self, emptied: bool, hit_ratio: float) -> None:
        """The session store looks freshly emptied (or full again): say so in a metric, a
        log line and the health of :data:`SESSIONS_HEALTH`. Answers go on, unpersonalized
        where sessions are missing, so the service itself stays SERVING."""
        self.metrics.session_store_emptied.set(int(emptied))
        details = {"session_hit_ratio": round(hit_ratio, 4)}
        if emptied:
            log.warning(
                "the session store looks freshly emptied (the share of reads that find a "
                "session fell suddenly); recsvc ingest --rebuild-sessions restores it",
                extra=details,
            )
        else:
            log.info("the session store holds sessions again", extra=details)
        status = health_pb2.HealthCheckResponse
        self._tasks.append(
            asyncio.ensure_future(
                self.health.set(SESSIONS_HEALTH, status.NOT_SERVING if emptied else status.SERVING)
            )
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Say NOT_SERVING (to health watchers) and go on answering until the calls stop
        coming (:meth:`_drain`, at most half of ``grace_s``); then refuse new calls, give
        those in flight the rest of ``grace_s`` (the ones still running then are cancelled),
        and close.

        gRPC's stop cancels the calls its transport has taken but the server has not started
        yet, so a server behind on its work would fail them; the first phase works them off
        while clients that watch the health move elsewhere."""
        began = time.monotonic()
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await self._drain(began + grace_s / 2)
        await self._server.stop(max(0.0, grace_s - (time.monotonic() - began)))
        await self.store.aclose()

    async def _drain(self, deadline: float) -> None:
        """Return once no Recommend is running and none has started for
        :data:`DRAIN_QUIET_S`, or at ``deadline`` (``time.monotonic``)."""
        service = self.service
        seen, quiet_since = service.calls_started, time.monotonic()
        while (now := time.monotonic()) < deadline:
            if service.calls_started != seen or service.calls_running:
                seen, quiet_since = service.calls_started, now
            elif now - quiet_since >= DRAIN_QUIET_S:
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def serve(settings: Settings, store: SessionStore) -> None:
    """Run the server until SIGTERM or SIGINT; SIGHUP reloads every variant's bundle."""
    metrics = Metrics()
    server = RecommendServer(settings, store, metrics)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    await server.start()
    # Everything loaded so far lives as long as the process: keep the cyclic GC from
    # walking it again (a full collection of it took ~14 ms, a p99 of its own).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(server.reload_all()))
    await stopping.wait()
    log.info("stopping", extra={"grace_s": settings.shutdown_grace_s})
    await server.stop(settings.shutdown_grace_s)
    log.info("stopped")


def run_worker(settings: Settings) -> None:
    """One process of ``recsvc serve --workers N`` (see :mod:`recsvc.workers`).

    Its metrics go to the supervisor's shared directory, which serves them; so the worker
    itself opens no metrics port.
    """
    from recsvc import logs
    from recsvc.sessions import open_store

    logs.configure(settings.log_level, settings.log_format)
    store = open_store(
        settings.redis_url,
        settings.session_length,
        settings.session_ttl_s,
        live=settings.live_settings(),
    )
    asyncio.run(serve(dataclasses.replace(settings, metrics_port=0), store))
