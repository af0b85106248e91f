"""One typed settings object for ``recsvc serve``, ``recsvc ingest`` and ``recsvc gateway``.

Each setting comes from, in rising precedence, its default, the environment variable
``RECSVC_<NAME>``, and the flag ``--<name>``. Values are parsed and checked once, at
start-up; a wrong value is a :class:`~recsvc.exceptions.ConfigError` that names the setting
and where it came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recsvc.contract import MODELS
from recsvc.exceptions import ConfigError
from recsvc.live import LiveSettings
from recsvc.redact import redact_url

ENV_PREFIX = "RECSVC_"
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: The Kafka SASL password's variable (never a flag).
KAFKA_PASSWORD_ENV = "RECSVC_KAFKA_SASL_PASSWORD"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: What Kafka accepts as a ``group.instance.id`` (the rule for topic names).
GROUP_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]+")
#: ``RECSVC_*`` variables that are not settings of the online processes.
NOT_SETTINGS = (
    "RECSVC_SHARED",
    "RECSVC_TEST_",
    "RECSVC_TOPICS",
    "RECSVC_INGEST_METRICS_PORT",
)
#: Secrets read from the environment only, never flags; matched exactly, so that a typo
#: in one is an unknown setting, not a secret silently missing.
SECRETS = ("RECSVC_AUTH_TOKENS", "RECSVC_KAFKA_SASL_PASSWORD")


@dataclass(frozen=True)
class Settings:
    """Everything the online processes can be told; see ``recsvc serve --help``."""

    bundle: Path = field(
        default=Path(".local/bundles/taobao"),
        metadata={"help": "bundle version dir or root (its 'current' link is followed)"},
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address the gRPC server binds"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0: any free port)"})
    metrics_port: int = field(
        default=9464, metadata={"help": "Prometheus /metrics port (on --metrics-host); 0: off"}
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={"help": "address /metrics binds: loopback unless set (it has no auth)"},
    )
    tls_cert: str = field(
        default="",
        metadata={
            "help": "serve: PEM certificate chain; with --tls-key, gRPC is served over TLS. "
            "Empty: plaintext (right on loopback only)"
        },
    )
    tls_key: str = field(default="", metadata={"help": "serve: PEM private key of --tls-cert"})
    tls_client_ca: str = field(
        default="",
        metadata={
            "help": "serve: PEM CA certificates; clients must then present a certificate one "
            "of them signed (mutual TLS). Needs --tls-cert"
        },
    )
    auth_tokens_file: str = field(
        default="",
        metadata={
            "help": "serve: file of accepted bearer tokens, one per line ('#' comments); a call "
            "without 'authorization: Bearer <token>' metadata is UNAUTHENTICATED (the health "
            "service stays open). Tokens can also come from $RECSVC_AUTH_TOKENS "
            "(comma-separated), which has no flag so that no token shows in a process list"
        },
    )
    variants: str = field(
        default="",
        metadata={
            "help": "serve: JSON file of A/B variants, each a bundle (or the same bundle with "
            "another model or second_stage) and a weight; users are dealt to them by a stable "
            "hash (recsvc/variants.py). Empty: one variant, 'default', from --bundle"
        },
    )
    workers: int = field(
        default=1,
        metadata={"help": "serve: processes sharing the gRPC port, one per core (needs a port)"},
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={
            "help": "session store: redis://[[user]:password@]host:port/db, or rediss://... for "
            "TLS, whose redis-py query parameters serve ingest's writes and the server's reads "
            "alike: ?ssl_ca_certs=CA.pem to trust a private CA (default: the system's), "
            "&ssl_certfile=...&ssl_keyfile=... for a client certificate. A password is best "
            "given in $RECSVC_REDIS_URL, which no process list shows"
        },
    )
    kafka_bootstrap: str = field(
        default="127.0.0.1:9092", metadata={"help": "Kafka bootstrap servers, host:port[,...]"}
    )
    kafka_security_protocol: str = field(
        default="PLAINTEXT",
        metadata={"help": "ingest: Kafka's security.protocol: " + " | ".join(KAFKA_PROTOCOLS)},
    )
    kafka_ssl_cafile: str = field(
        default="", metadata={"help": "ingest: PEM CA file for Kafka's SSL (default: system)"}
    )
    kafka_ssl_certfile: str = field(
        default="", metadata={"help": "ingest: PEM client certificate for Kafka's SSL"}
    )
    kafka_ssl_keyfile: str = field(
        default="", metadata={"help": "ingest: PEM private key of --kafka-ssl-certfile"}
    )
    kafka_sasl_mechanism: str = field(
        default="",
        metadata={
            "help": "ingest: Kafka SASL mechanism for the SASL_* protocols: "
            + " | ".join(KAFKA_SASL_MECHANISMS)
        },
    )
    kafka_sasl_username: str = field(
        default="",
        metadata={
            "help": "ingest: Kafka SASL user; the password comes from $RECSVC_KAFKA_SASL_PASSWORD "
            "(no flag, so that it shows in no process list)"
        },
    )
    events_topic: str = field(default="recsvc.events", metadata={"help": "event stream topic"})
    dlq_topic: str = field(
        default="recsvc.events.dlq", metadata={"help": "where invalid events go, with a reason"}
    )
    group_id: str = field(default="recsvc-ingest", metadata={"help": "ingest consumer group"})
    group_instance_id: str = field(
        default="",
        metadata={
            "help": "ingest: Kafka static group membership (KIP-345): restarted with the same id, "
            "ingest gets its partitions back at once instead of after the session timeout. "
            "Must be unique per ingest process and stable across its restarts (e.g. a "
            "StatefulSet pod name); letters, digits, '.', '_', '-'. Empty: off"
        },
    )
    ingest_session_timeout_ms: int = field(
        default=6000,
        metadata={
            "help": "ingest: a member that stops heartbeating (crashed; or stopped, if static) "
            "keeps its partitions this long before the broker hands them on; heartbeats go "
            "every third of it (6000..300000)"
        },
    )
    ingest_max_poll_records: int = field(
        default=2000,
        metadata={"help": "ingest: most messages per batch (one Redis round trip, one commit)"},
    )
    ingest_check_crcs: int = field(
        default=1,
        metadata={
            "help": "ingest: 1 checks each fetched batch's CRC (in C with the crc32c package); "
            "0 relies on the broker's check on produce and on TCP"
        },
    )
    rebuild_sessions: str = field(
        default="",
        metadata={
            "help": "ingest: on start, replay the topic from this long ago (e.g. 24h, 90m, "
            "2d, 3600s; 'ttl': the session TTL) into Redis before going on from the group's "
            "offsets, to restore sessions an emptied Redis lost. The append is idempotent, so "
            "what Redis still holds counts once. Empty: off"
        },
    )
    model: str = field(
        default="personalized",
        metadata={"help": "bundle model that ranks: " + " | ".join(MODELS)},
    )
    second_stage: int = field(
        default=1,
        metadata={
            "help": "1 ranks with the bundle's learned second stage when it has one and the "
            "model is personalized; 0 ranks the item's pool by the model alone (the first "
            "stage, as a bundle without a second stage is served)"
        },
    )
    live: int = field(
        default=1,
        metadata={
            "help": "1 keeps live co-visits from the event stream: ingest counts them with "
            "each session append, and the server adds an item's live neighbours to its "
            "candidates, so items new since the bundle can be recommended (ingest then "
            "accepts events of items the bundle does not know); 0: off, and such events go "
            "to the dead-letter topic as unknown_item"
        },
    )
    live_half_life_s: float = field(
        default=6 * 3600.0, metadata={"help": "a co-visit counts half as much this much later"}
    )
    live_cap: int = field(default=50, metadata={"help": "live neighbours kept per item"})
    live_ttl_s: int = field(
        default=3 * 86400,
        metadata={"help": "an item's live neighbours expire this long after its last co-visit"},
    )
    live_read_items: int = field(
        default=3,
        metadata={
            "help": "serve: items whose live neighbours a request reads: the viewed item and "
            "the session's newest visits"
        },
    )
    live_read_top: int = field(
        default=10, metadata={"help": "serve: live neighbours read per item"}
    )
    budget_ms: float = field(
        default=100.0, metadata={"help": "answer every call within this many ms, end to end"}
    )
    scoring_reserve_ms: float = field(
        default=15.0,
        metadata={"help": "part of the budget kept for ranking after the session read"},
    )
    session_length: int = field(
        default=20, metadata={"help": "events kept per user session (at least 8)"}
    )
    session_ttl_s: int = field(
        default=86400, metadata={"help": "a session expires this long after its last event"}
    )
    store_cooldown_s: float = field(
        default=1.0,
        metadata={"help": "after 3 session store failures in a row, skip it this long"},
    )
    shutdown_grace_s: float = field(
        default=5.0,
        metadata={
            "help": "serve: on SIGTERM, health turns NOT_SERVING and calls are answered until "
            "they stop coming (at most half of this), then new calls are refused and those in "
            "flight get the rest of it before the process exits"
        },
    )
    watch_interval_s: float = field(
        default=5.0, metadata={"help": "check the bundle path for a new version this often; 0: off"}
    )
    gateway_host: str = field(
        default="127.0.0.1",
        metadata={"help": "gateway: address the HTTP gateway binds (it has no TLS of its own)"},
    )
    gateway_port: int = field(default=8080, metadata={"help": "gateway: HTTP port"})
    gateway_grpc_target: str = field(
        default="127.0.0.1:50051",
        metadata={"help": "gateway: the gRPC server it calls, host:port (plaintext)"},
    )
    gateway_images: str = field(
        default="",
        metadata={
            "help": "gateway: folder of item photos named <item_id>.<jpg|png|webp|bmp> (the "
            "layout of pipeline --item-images), shown by the demo page; empty: none"
        },
    )
    gateway_timeout_s: float = field(
        default=1.0,
        metadata={"help": "gateway: deadline of each gRPC call and of each event's Kafka ack"},
    )
    log_format: str = field(default="json", metadata={"help": " | ".join(LOG_FORMATS)})
    log_level: str = field(default="info", metadata={"help": " | ".join(LOG_LEVELS)})

    def __post_init__(self) -> None:
        _check(self)

    def kafka_options(self, environ: Mapping[str, str]) -> dict[str, Any]:
        """kafka-python's security options (for the consumer and the producer alike).

        Raises
        ------
        ConfigError
            A SASL protocol without its password in ``$RECSVC_KAFKA_SASL_PASSWORD``.
        """
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if "SSL" in self.kafka_security_protocol:
            for name in ("cafile", "certfile", "keyfile"):
                value = getattr(self, f"kafka_ssl_{name}")
                if value:
                    options[f"ssl_{name}"] = value
        if self.kafka_security_protocol.startswith("SASL_"):
            password = environ.get(KAFKA_PASSWORD_ENV, "")
            if not password:
                raise ConfigError(
                    f"--kafka-security-protocol {self.kafka_security_protocol} needs the "
                    f"password in ${KAFKA_PASSWORD_ENV}"
                )
            options |= {
                "sasl_mechanism": self.kafka_sasl_mechanism,
                "sasl_plain_username": self.kafka_sasl_username,
                "sasl_plain_password": password,
            }
        return options

    def rebuild_seconds(self) -> float | None:
        """How far back ``rebuild_sessions`` replays, in seconds; None when off."""
        if not self.rebuild_sessions:
            return None
        if self.rebuild_sessions == "ttl":
            return float(self.session_ttl_s)
        return parse_duration(self.rebuild_sessions)

    def live_settings(self) -> LiveSettings | None:
        """The live co-visit settings, or None when ``live`` is 0."""
        if not self.live:
            return None
        return LiveSettings(
            half_life_s=self.live_half_life_s,
            cap=self.live_cap,
            ttl_s=self.live_ttl_s,
            read_items=self.live_read_items,
            read_top=self.live_read_top,
        )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``90m``, ``24h``, ``2d`` or ``3600s``.

    Raises
    ------
    ValueError
        Not a number followed by one of s, m, h, d.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration like 90m, 24h, 2d or 3600s, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add a flag per setting; flags default to None so the environment can fill in."""
    group = parser.add_argument_group("settings (flag, or environment variable)")
    for f in dataclasses.fields(Settings):
        group.add_argument(
            flag_name(f.name),
            dest=f"setting_{f.name}",
            metavar=f.type.upper() if f.type in ("int", "float") else "VALUE",
            help=f"{f.metadata['help']} [${env_name(f.name)}, default {f.default}]",
        )


def load(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from defaults, then ``environ`` (default ``os.environ``), then flags.

    Raises
    ------
    ConfigError
        A value that does not parse or is out of range, naming the flag or variable.
    """
    environ = os.environ if environ is None else environ
    known = {env_name(f.name) for f in dataclasses.fields(Settings)}
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and name not in SECRETS
        and not name.startswith(NOT_SETTINGS)
    )
    if unknown:
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        flag_value = getattr(args, f"setting_{f.name}", None) if args is not None else None
        if flag_value is not None:
            raw, origin = flag_value, flag_name(f.name)
        elif env_name(f.name) in environ:
            raw, origin = environ[env_name(f.name)], env_name(f.name)
        else:
            continue
        # Field types are strings here: this module has `from __future__ import annotations`.
        assert isinstance(f.type, str)
        values[f.name] = _parse(f.type, raw, origin)
    return Settings(**values)


_PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "Path": Path, "str": str}


def _parse(type_name: str, raw: str, origin: str) -> Any:
    kind = {"int": "a whole number", "float": "a finite number"}.get(type_name, type_name)
    try:
        value = _PARSERS[type_name](raw.strip())
    except ValueError:
        raise ConfigError(f"{origin} must be {kind}, got {raw!r}") from None
    if type_name == "float" and not math.isfinite(value):
        raise ConfigError(f"{origin} must be {kind}, got {raw!r}")
    return value


def _check(s: Settings) -> None:
    def fail(name: str, message: str) -> None:
        raise ConfigError(f"{flag_name(name)} / {env_name(name)}: {message}")

    for name in ("port", "metrics_port", "gateway_port"):
        value = getattr(s, name)
        if not 0 <= value <= 65535:
            fail(name, f"{value} is not a usable port")
    if s.workers < 1:
        fail("workers", f"must be at least 1, got {s.workers}")
    if s.workers > 1 and s.port == 0:
        fail("workers", "more than one worker needs a fixed --port to share")
    if s.metrics_port and s.metrics_port == s.port:
        fail("metrics_port", "must differ from the gRPC port")
    if bool(s.tls_cert) != bool(s.tls_key):
        fail("tls_cert", "--tls-cert and --tls-key come together")
    if s.tls_client_ca and not s.tls_cert:
        fail("tls_client_ca", "client certificates need TLS: set --tls-cert and --tls-key")
    if urlparse(s.redis_url).scheme not in ("redis", "rediss", "unix"):
        fail("redis_url", f"expected redis://host:port/db, got {redact_url(s.redis_url)!r}")
    for server in s.kafka_bootstrap.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            fail("kafka_bootstrap", f"expected host:port[,host:port], got {s.kafka_bootstrap!r}")
    if s.kafka_security_protocol not in KAFKA_PROTOCOLS:
        fail("kafka_security_protocol", f"{s.kafka_security_protocol!r} is not one of "
             f"{', '.join(KAFKA_PROTOCOLS)}")  # fmt: skip
    sasl = s.kafka_security_protocol.startswith("SASL_")
    if sasl and s.kafka_sasl_mechanism not in KAFKA_SASL_MECHANISMS:
        fail("kafka_sasl_mechanism", f"{s.kafka_security_protocol} needs one of "
             f"{', '.join(KAFKA_SASL_MECHANISMS)}, got {s.kafka_sasl_mechanism!r}")  # fmt: skip
    if sasl and not s.kafka_sasl_username:
        fail("kafka_sasl_username", f"{s.kafka_security_protocol} needs a user")
    if bool(s.kafka_ssl_certfile) != bool(s.kafka_ssl_keyfile):
        fail("kafka_ssl_certfile", "--kafka-ssl-certfile and --kafka-ssl-keyfile come together")
    for name in ("events_topic", "dlq_topic", "group_id"):
        if not getattr(s, name).strip():
            fail(name, "must not be empty")
    _check_group_instance_id(s.group_instance_id, fail)
    if not 6000 <= s.ingest_session_timeout_ms <= 300_000:
        fail(
            "ingest_session_timeout_ms",
            f"{s.ingest_session_timeout_ms} is outside 6000..300000: Kafka brokers refuse "
            "session timeouts outside group.min.session.timeout.ms (default 6000) and "
            "group.max.session.timeout.ms, and a longer one only delays taking over a "
            "crashed member's partitions",
        )
    if not 1 <= s.ingest_max_poll_records <= 100_000:
        fail("ingest_max_poll_records", f"{s.ingest_max_poll_records} is outside 1..100000")
    if s.ingest_check_crcs not in (0, 1):
        fail("ingest_check_crcs", f"must be 0 or 1, got {s.ingest_check_crcs}")
    if s.events_topic == s.dlq_topic:
        fail("dlq_topic", "must differ from the events topic")
    if s.second_stage not in (0, 1):
        fail("second_stage", f"must be 0 or 1, got {s.second_stage}")
    if s.live not in (0, 1):
        fail("live", f"must be 0 or 1, got {s.live}")
    if not 0 < s.live_half_life_s < math.inf:
        fail("live_half_life_s", f"must be a positive number of seconds, got {s.live_half_life_s}")
    for name in ("live_cap", "live_ttl_s", "live_read_items", "live_read_top"):
        if getattr(s, name) < 1:
            fail(name, f"must be at least 1, got {getattr(s, name)}")
    if s.model not in MODELS:
        fail("model", f"{s.model!r} is not one of {', '.join(MODELS)}")
    if not 1 <= s.budget_ms <= 60_000:
        fail("budget_ms", f"{s.budget_ms} is outside 1..60000")
    if not 0 <= s.scoring_reserve_ms < s.budget_ms:
        fail("scoring_reserve_ms", f"{s.scoring_reserve_ms} must be in [0, budget_ms)")
    if s.session_length < 8:
        fail("session_length", f"{s.session_length} < 8: the model looks at 8 events")
    if s.session_ttl_s < 1:
        fail("session_ttl_s", "must be at least 1 second")
    for name in ("store_cooldown_s", "watch_interval_s"):
        if getattr(s, name) < 0:
            fail(name, "must not be negative")
    if s.rebuild_sessions and s.rebuild_sessions != "ttl":
        try:
            seconds = parse_duration(s.rebuild_sessions)
        except ValueError as exc:
            fail("rebuild_sessions", f"{exc}, or 'ttl'")
        if not 0 < seconds <= 30 * 86400:
            fail("rebuild_sessions", f"{s.rebuild_sessions} is outside (0, 30d]")
    if not 0 <= s.shutdown_grace_s <= 600:
        fail("shutdown_grace_s", f"{s.shutdown_grace_s} is outside 0..600 seconds")
    host, sep, port = s.gateway_grpc_target.rpartition(":")
    if not sep or not host or not port.isdigit():
        fail("gateway_grpc_target", f"expected host:port, got {s.gateway_grpc_target!r}")
    if not 0 < s.gateway_timeout_s <= 60:
        fail("gateway_timeout_s", f"{s.gateway_timeout_s} is outside (0, 60] seconds")
    if s.log_format not in LOG_FORMATS:
        fail("log_format", f"{s.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if s.log_level not in LOG_LEVELS:
        fail("log_level", f"{s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")


def _check_group_instance_id(value: str, fail: Callable[[str, str], None]) -> None:
    """Kafka's rule for a ``group.instance.id``, which kafka-python 3.0.12 does not check
    (its ``KafkaConsumer._validate_group_instance_id`` is never called)."""
    if not value:
        return
    if len(value) > 249:
        fail("group_instance_id", f"{len(value)} characters; at most 249")
    if value in (".", ".."):
        fail("group_instance_id", "must not be '.' or '..'")
    if not GROUP_INSTANCE_ID.fullmatch(value):
        fail(
            "group_instance_id",
            f"only ASCII letters, digits, '.', '_' and '-' are allowed, got {value!r}",
        )
