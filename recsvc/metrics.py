"""Prometheus metrics of the server and ingest, and the HTTP endpoint that exposes them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from recsvc.exceptions import ConfigError

#: Latency buckets around the 100 ms budget (seconds).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)


class Metrics:
    """Every metric recsvc exports, in one registry (a fresh one per instance in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "recsvc_request_latency_seconds",
            "Recommend latency inside the server, by outcome and A/B variant",
            ["outcome", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "recsvc_fallbacks_total",
            "Answers not personalized, by reason and A/B variant",
            ["reason", "variant"],
            registry=r,
        )
        self.session_hit_ratio = Gauge(
            "recsvc_session_hit_ratio",
            "Share of the last minute's session reads (of requests with a user) that found a "
            "session",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.session_store_emptied = Gauge(
            "recsvc_session_store_emptied",
            "1 while the session store looks freshly emptied (the hit ratio fell suddenly)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.unauthenticated_calls = Counter(
            "recsvc_unauthenticated_calls_total",
            "Calls refused for want of an accepted bearer token (--auth-tokens-file)",
            registry=r,
        )
        self.bundle_version = Gauge(
            "recsvc_bundle_info",
            "The bundle each A/B variant serves (value 1; 0 for one served before)",
            ["version", "variant"],
            registry=r,
            multiprocess_mode="liveall",  # one sample per live worker of `serve --workers`
        )
        self._bundles: dict[str, str] = {}  # variant -> version
        self.bundle_swaps = Counter(
            "recsvc_bundle_swaps_total",
            "Bundle loads while serving, by result and A/B variant",
            ["result", "variant"],
            registry=r,
        )
        self.ingest_events = Counter(
            "recsvc_ingest_events_total",
            "Stream events by result: applied, duplicate, dead_lettered, skipped (invalid and "
            "refused by the dead-letter topic too)",
            ["result"],
            registry=r,
        )
        self.dlq_events = Counter(
            "recsvc_dlq_events_total",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "recsvc_consumer_lag",
            "Messages behind the end of each partition",
            ["partition"],
            registry=r,
        )
        self.ingest_retries = Counter(
            "recsvc_ingest_retries_total",
            "Retries of Redis or Kafka calls by ingest",
            ["dependency"],
            registry=r,
        )
        self.live_updates = Counter(
            "recsvc_live_covisit_updates_total",
            "Live co-visit counts written by ingest (each pair counts in both directions), "
            "by result: applied, refused (Redis refused the item's key, or the co-visit was "
            "over an hour past ingest's clock)",
            ["result"],
            registry=r,
        )
        self.live_evictions = Counter(
            "recsvc_live_neighbours_evicted_total",
            "Live neighbours dropped by the per-item cap (--live-cap)",
            registry=r,
        )
        self.live_items_held = Gauge(
            "recsvc_live_items_held",
            "Items with live neighbours in Redis, counted by ingest every minute",
            registry=r,
        )
        self.live_neighbours_held = Gauge(
            "recsvc_live_neighbours_held",
            "Live neighbours in Redis over all items, counted with recsvc_live_items_held",
            registry=r,
        )
        self.live_neighbours_read = Histogram(
            "recsvc_live_neighbours_read",
            "Live neighbours a Recommend read with its session (all items read, together)",
            buckets=(0, 1, 5, 10, 20, 40, 80),
            registry=r,
        )

    def set_bundle(self, version: str, variant: str = "default") -> None:
        old = self._bundles.get(variant)
        if old is not None and old != version:
            # Zeroed before removal: worker processes keep their samples in files.
            self.bundle_version.labels(version=old, variant=variant).set(0)
            self.bundle_version.remove(old, variant)
        self.bundle_version.labels(version=version, variant=variant).set(1)
        self._bundles[variant] = version

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP (port 0: do nothing)."""
        if not port:
            return
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            message = f"--metrics-port: cannot serve metrics on {host}:{port}: {exc}"
            raise ConfigError(message) from exc
