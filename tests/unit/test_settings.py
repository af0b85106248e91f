import argparse
from pathlib import Path

import pytest

from recsvc import settings
from recsvc.exceptions import ConfigError


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return parser.parse_args(list(flags))


def test_defaults_then_environment_then_flags() -> None:
    env = {
        "RECSVC_PORT": "6000",
        "RECSVC_BUDGET_MS": "80",
        "RECSVC_SHARED": "../shared",
        "RECSVC_TOPICS": "recsvc.events:3",
    }  # read by scripts/services/kafka.sh
    loaded = settings.load(parse("--port", "7000", "--bundle", "/b"), env)
    assert loaded.port == 7000  # the flag wins over the environment
    assert loaded.budget_ms == 80.0
    assert loaded.bundle == Path("/b")
    assert loaded.session_length == 20  # default


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RECSVC_PORT": "http"}, "RECSVC_PORT must be a whole number, got 'http'"),
        ({"RECSVC_PORT": "70000"}, "--port / RECSVC_PORT: 70000 is not a usable port"),
        ({"RECSVC_SESSION_LENGTH": "5"}, "5 < 8"),
        ({"RECSVC_REDIS_URL": "localhost:6379"}, "expected redis://"),
        ({"RECSVC_KAFKA_BOOTSTRAP": "localhost"}, "expected host:port"),
        ({"RECSVC_MODEL": "popular"}, "'popular' is not one of"),
        ({"RECSVC_DLQ_TOPIC": "recsvc.events"}, "must differ from the events topic"),
        ({"RECSVC_SCORING_RESERVE_MS": "100"}, "must be in [0, budget_ms)"),
        ({"RECSVC_BUGDET_MS": "50"}, "unknown setting(s) in the environment: RECSVC_BUGDET_MS"),
        ({"RECSVC_METRICS_PORT": "50051"}, "must differ from the gRPC port"),
        ({"RECSVC_STORE_COOLDOWN_S": "nan"}, "must be a finite number, got 'nan'"),
        ({"RECSVC_BUDGET_MS": "inf"}, "must be a finite number"),
        ({"RECSVC_WORKERS": "0"}, "--workers / RECSVC_WORKERS: must be at least 1"),
        ({"RECSVC_WORKERS": "2", "RECSVC_PORT": "0"}, "needs a fixed --port"),
        ({"RECSVC_REBUILD_SESSIONS": "yesterday"}, "like 90m, 24h, 2d or 3600s, got 'yest"),
        ({"RECSVC_REBUILD_SESSIONS": "31d"}, "31d is outside (0, 30d]"),
        ({"RECSVC_REBUILD_SESSIONS": "0h"}, "0h is outside (0, 30d]"),
        ({"RECSVC_SHUTDOWN_GRACE_S": "-1"}, "-1.0 is outside 0..600 seconds"),
        ({"RECSVC_TLS_KEY": "k.pem"}, "--tls-cert and --tls-key come together"),
        ({"RECSVC_AUTH_TOKENS_FIL": "t"}, "unknown setting(s) in the environment"),
        ({"RECSVC_KAFKA_SASL_PASSWD": "x"}, "unknown setting(s) in the environment"),
        ({"RECSVC_KAFKA_SECURITY_PROTOCOL": "TLS"}, "'TLS' is not one of PLAINTEXT, SSL"),
        ({"RECSVC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_SSL needs one of PLAIN,"),
        (
            {"RECSVC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECSVC_KAFKA_SASL_MECHANISM": "PLAIN"},
            "SASL_SSL needs a user",
        ),
    ],
)
def test_bad_values_fail_with_the_setting_named(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.load(None, env)
    assert words in str(caught.value)


def test_help_lists_every_setting_with_its_variable() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    text = parser.format_help()
    for name in ("RECSVC_REDIS_URL", "RECSVC_KAFKA_BOOTSTRAP", "RECSVC_BUDGET_MS", "--group-id"):
        assert name in text


def test_a_bad_redis_url_fails_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        settings.load(None, {"RECSVC_REDIS_URL": "http://admin:s3cret-pass@cache:6379/0"})
    assert "s3cret-pass" not in str(caught.value)
    assert "got 'http://admin:***@cache:6379/0'" in str(caught.value)


def test_ingest_group_membership_settings() -> None:
    loaded = settings.load(
        parse("--group-instance-id", "recsvc-ingest-0"),
        {"RECSVC_INGEST_SESSION_TIMEOUT_MS": "9000"},
    )
    assert (loaded.group_instance_id, loaded.ingest_session_timeout_ms) == ("recsvc-ingest-0", 9000)
    defaults = settings.load(None, {})
    assert (defaults.group_instance_id, defaults.ingest_session_timeout_ms) == ("", 6000)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RECSVC_GROUP_INSTANCE_ID": "x" * 250}, "250 characters; at most 249"),
        ({"RECSVC_GROUP_INSTANCE_ID": ".."}, "must not be '.' or '..'"),
        ({"RECSVC_GROUP_INSTANCE_ID": "pod 0"}, "only ASCII letters, digits, '.', '_' and '-'"),
        ({"RECSVC_GROUP_INSTANCE_ID": "pod\n0"}, "got 'pod\\n0'"),
        ({"RECSVC_INGEST_SESSION_TIMEOUT_MS": "5999"}, "group.min.session.timeout.ms"),
        ({"RECSVC_INGEST_SESSION_TIMEOUT_MS": "300001"}, "outside 6000..300000"),
    ],
)
def test_bad_group_membership_values_fail_with_the_reason(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.load(None, env)
    assert words in str(caught.value)


def test_how_far_back_sessions_are_rebuilt() -> None:
    assert settings.load(None, {}).rebuild_seconds() is None
    env = {"RECSVC_REBUILD_SESSIONS": "ttl", "RECSVC_SESSION_TTL_S": "7200"}
    assert settings.load(None, env).rebuild_seconds() == 7200.0
    for text, seconds in (("90m", 5400.0), ("1.5h", 5400.0), ("2d", 172800.0), ("30s", 30.0)):
        loaded = settings.load(None, {"RECSVC_REBUILD_SESSIONS": text})
        assert loaded.rebuild_seconds() == seconds


def test_kafka_security_options_take_the_password_from_the_environment_only() -> None:
    assert settings.load(None, {}).kafka_options({}) == {"security_protocol": "PLAINTEXT"}
    env = {
        "RECSVC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RECSVC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RECSVC_KAFKA_SASL_USERNAME": "ingest",
        "RECSVC_KAFKA_SSL_CAFILE": "/etc/ca.pem",
        "RECSVC_KAFKA_SASL_PASSWORD": "hunter2-hunter2",  # not a setting: no flag
    }
    loaded = settings.load(None, env)
    assert loaded.kafka_options(env) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/ca.pem",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "ingest",
        "sasl_plain_password": "hunter2-hunter2",
    }
    assert "hunter2" not in repr(loaded)
    with pytest.raises(ConfigError, match="needs the password in"):
        loaded.kafka_options({})
