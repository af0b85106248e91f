"""A SASL login to the Kafka broker, tried once before ingest's clients start, so that a
refused one stops ingest with the broker's reason.

kafka-python 3.0.12 cannot tell a refused login from a network failure: the broker sends its
refusal and closes the connection at once, kafka-python drops data that arrives with the
close, and so it logs only "socket disconnected" and retries for ever. This module speaks
the two requests of the login itself (SaslHandshake v1 and SaslAuthenticate v1, as
kafka-python sends them), with kafka-python's own mechanisms for the tokens.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from collections.abc import Mapping
from typing import Any

from kafka.errors import KafkaError
from kafka.net.sasl import get_sasl_mechanism

from recsvc.exceptions import ConfigError
from recsvc.settings import KAFKA_PASSWORD_ENV, Settings

log = logging.getLogger(__name__)

#: Kafka API keys of the SASL login, sent at version 1.
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36


def check_sasl_login(
    settings: Settings, environ: Mapping[str, str], timeout_s: float = 10.0
) -> None:
    """With a SASL protocol, log in to the first bootstrap server that answers, as the Kafka
    clients are about to, and read the broker's answer (the module says why).

    Raises
    ------
    ConfigError
        The broker refused the login (a wrong user or password) or the mechanism. Anything
        else (no answer, a TLS failure) is left to the clients, which retry and log it.
    """
    options = settings.kafka_options(environ)
    mechanism = options.get("sasl_mechanism")
    if mechanism is None:
        return
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            refusal = _sasl_refusal(host, int(port), options, timeout_s)
        except (OSError, ValueError, struct.error, KafkaError) as exc:
            log.debug("SASL login not checked", extra={"server": server, "error": repr(exc)})
            continue
        if refusal is not None:
            raise ConfigError(
                f"Kafka at {server.strip()} refused the SASL {mechanism} login of user "
                f"{settings.kafka_sasl_username!r}: {refusal}"
            )
        return


def _sasl_refusal(host: str, port: int, options: Mapping[str, Any], timeout_s: float) -> str | None:
    """Why the broker refuses the SASL login of ``options`` (kafka-python's), or None when it
    accepts it; SaslHandshake v1 and SaslAuthenticate v1, as kafka-python sends them."""
    conn = socket.create_connection((host, port), timeout=timeout_s)
    try:
        if options["security_protocol"] == "SASL_SSL":
            context = ssl.create_default_context(cafile=options.get("ssl_cafile"))
            if "ssl_certfile" in options:
                context.load_cert_chain(options["ssl_certfile"], options["ssl_keyfile"])
            conn = context.wrap_socket(conn, server_hostname=host)
        name = options["sasl_mechanism"]
        error, body = _kafka_call(conn, SASL_HANDSHAKE, _kafka_string(name))
        if error:
            count, body = struct.unpack_from(">i", body)[0], body[4:]
            enabled = []
            for _ in range(max(count, 0)):
                mechanism, body = _read_kafka_string(body)
                enabled.append(str(mechanism))
            if not enabled:
                return "this listener takes no SASL login; check --kafka-security-protocol"
            return f"this listener takes {', '.join(enabled)}; check --kafka-sasl-mechanism"
        login = get_sasl_mechanism(name)(host=host, **options)
        while not login.is_done():
            token = login.auth_bytes()
            error, body = _kafka_call(
                conn, SASL_AUTHENTICATE, struct.pack(">i", len(token)) + token
            )
            message, body = _read_kafka_string(body)
            if error:
                reason = message or f"Kafka error code {error}"
                return f"{reason}; check --kafka-sasl-username and ${KAFKA_PASSWORD_ENV}"
            (size,) = struct.unpack_from(">i", body)
            login.receive(body[4 : 4 + max(size, 0)])
        return None if login.is_authenticated() else "the login did not complete"
    finally:
        conn.close()


def _kafka_call(conn: socket.socket, api_key: int, body: bytes) -> tuple[int, bytes]:
    """One request at version 1 (the API key is its correlation id): the error code that
    starts its response, and the rest of the response."""
    client = b"recsvc-ingest"
    header = struct.pack(">hhih", api_key, 1, api_key, len(client)) + client
    conn.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _receive(conn, 4))
    if not 6 <= size <= 1 << 20:
        raise ValueError(f"not a Kafka response: {size} bytes")
    response = _receive(conn, size)  # the correlation id, then the body
    return struct.unpack_from(">h", response, 4)[0], response[6:]


def _receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("Kafka closed the connection")
        data += chunk
    return data


def _kafka_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def _read_kafka_string(body: bytes) -> tuple[str | None, bytes]:
    """A Kafka (nullable) string at the start of ``body``, and what follows it."""
    (size,) = struct.unpack_from(">h", body)
    if size < 0:
        return None, body[2:]
    return body[2 : 2 + size].decode(errors="replace"), body[2 + size :]
