"""Credentials never reach a log line or an error message: redact_url, the log formatters'
safety net, and the settings and session store errors that name the Redis URL."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsvc import logs
from recsvc.exceptions import ConfigError, SessionStoreError
from recsvc.redact import redact_url, scrub_credentials
from recsvc.sessions import RedisSessionStore


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("rediss://user:pw@cache.example.com:6380/1", "rediss://user:***@cache.example.com:6380/1"),
        ("unix://user:pw@/var/run/redis.sock?db=0", "unix://user:***@/var/run/redis.sock?db=0"),
        ("redis://host:6379/0?password=pw&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///tmp/redis.sock?db=2&password=pw", "unix:///tmp/redis.sock?db=2&password=***"),
        ("rediss://h?ssl_password=pw&Password=pw", "rediss://h?ssl_password=***&Password=***"),
        ("redis://u:pw@h:1/0?password=pw", "redis://u:***@h:1/0?password=***"),
        ("redis://user:p%40ss%3Aw@host", "redis://user:***@host"),  # percent-encoded
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("redis://u:pw@[::1]:6379", "redis://u:***@[::1]:6379"),
    ],
)
def test_the_password_is_hidden_and_the_rest_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "unix:///tmp/redis.sock", "localhost:6379", "redis://user@host"],
)
def test_urls_without_a_password_are_unchanged(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Unencoded '@', '/', '#', '?' or '://' in the password: still hidden, all of it.
        ("redis://user:p@ss@host:6379", "redis://user:***@host:6379"),
        ("redis://:pa/ss@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pa#ss@host", "redis://user:***@host"),
        ("redis://user:pa?ss@host", "redis://user:***@host"),
        ("redis://user:x://y@host", "redis://user:***@host"),
        ("redis://to/ken@host", "redis://***@host"),
        # No scheme, or one redis-py refuses.
        ("user:pw@host:6379", "user:***@host:6379"),
        ("http://user:pw@host", "http://user:***@host"),
        ("redis://u:pw@[::1:6379", "redis://u:***@[::1:6379"),  # urlsplit raises on this
    ],
)
def test_malformed_urls_lose_whatever_looks_like_a_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(password=st.text(min_size=1).map(lambda s: "Zq" + s), user=st.sampled_from(["", "user"]))
def test_no_password_survives(password: str, user: str) -> None:
    for url in (
        f"redis://{user}:{password}@127.0.0.1:6379/0",
        f"unix://{user}:{password}@/tmp/redis.sock?db=0",
        f"redis://127.0.0.1:6379/0?password={password}",
    ):
        assert password not in redact_url(url)


@given(st.text())
def test_never_raises(text: str) -> None:
    assert isinstance(redact_url(text), str)
    assert isinstance(scrub_credentials(text), str)


def test_scrub_hides_url_credentials_inside_free_text() -> None:
    text = "to redis://u:pw1@h:1/0 or 'rediss://:pw2@h2' (amqp://guest:pw3@mq/v) redis://h?password=pw4"
    assert scrub_credentials(text) == (
        "to redis://u:***@h:1/0 or 'rediss://:***@h2' (amqp://guest:***@mq/v) redis://h?password=***"
    )
    assert scrub_credentials("no secrets user@example.com a:b") == (
        "no secrets user@example.com a:b"
    )


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("third.party", logging.ERROR, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_logs_scrub_the_message_and_string_fields() -> None:
    record = _record("lost %s", "redis://u:s3cret@h:1/0", redis="rediss://:s3cret@h:2", attempts=3)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert "s3cret" not in json.dumps(entry)
    assert entry["msg"] == "lost redis://u:***@h:1/0"
    assert entry["redis"] == "rediss://:***@h:2"
    assert entry["attempts"] == 3


def test_text_logs_scrub_the_line() -> None:
    line = logs.TextFormatter().format(_record("lost %s", "redis://u:s3cret@h:1/0"))
    assert "s3cret" not in line
    assert line.endswith("third.party: lost redis://u:***@h:1/0")


def test_text_logs_show_the_extra_fields_as_the_json_lines_do() -> None:
    record = _record("retrying", error="WRONGPASS for redis://:s3cret@h:2", attempts=3)
    line = logs.TextFormatter().format(record)
    assert line.endswith('third.party: retrying error="WRONGPASS for redis://:***@h:2" attempts=3')


def test_the_session_store_errors_do_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisSessionStore("redis://u:s3cret-pass@h:6379/0?socket_timeout=soon")
    assert "s3cret-pass" not in str(caught.value)
    assert "redis://u:***@h:6379/0" in str(caught.value)

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        store = RedisSessionStore(f"redis://u:s3cret-pass@127.0.0.1:{port}/0")

        async def ping() -> None:
            try:
                await store.ping()
            finally:
                await store.aclose()

        with pytest.raises(SessionStoreError) as unreachable:
            asyncio.run(ping())
    assert "s3cret-pass" not in str(unreachable.value)
    assert f"127.0.0.1:{port}" in str(unreachable.value)
