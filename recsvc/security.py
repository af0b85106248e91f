"""Who may call the gRPC server: TLS (and mTLS) credentials, and bearer tokens.

Both are off by default, which is right on loopback (``make run``); each is one setting to
turn on:

- ``--tls-cert`` and ``--tls-key`` (PEM files) serve gRPC over TLS; ``--tls-client-ca``
  also requires a client certificate signed by that CA (mutual TLS).
- ``--auth-tokens-file`` (one token per line, ``#`` comments) and the environment variable
  ``RECSVC_AUTH_TOKENS`` (comma-separated; deliberately no flag, so that no token shows in
  a process list) give the accepted bearer tokens. A call must then carry the metadata
  ``authorization: Bearer <token>``, or it ends ``UNAUTHENTICATED`` before any handler
  runs. The health service stays open (load balancers and orchestrators probe it without
  credentials); reflection needs a token like the service.

Tokens are compared in constant time and never logged; a refused call is counted in
``recsvc_unauthenticated_calls_total``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from recsvc.exceptions import ConfigError

TOKENS_ENV = "RECSVC_AUTH_TOKENS"
#: Shorter than this, a token is too easy to guess to stand for a secret.
MIN_TOKEN_LENGTH = 16
#: Methods every caller may use: the standard health service.
OPEN_METHODS = ("/grpc.health.v1.Health/",)
REFUSED = "a valid 'authorization: Bearer <token>' metadata entry is required"


def read_tokens(path: str, environ: Mapping[str, str]) -> frozenset[str]:
    """The accepted tokens from the file ``path`` (when given) and ``RECSVC_AUTH_TOKENS``.

    Raises
    ------
    ConfigError
        The file cannot be read, or a token is too short or holds whitespace. The message
        never quotes a token.
    """
    found: list[tuple[str, str]] = []
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--auth-tokens-file: cannot read {path}: {exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            token = line.strip()
            if token and not token.startswith("#"):
                found.append((token, f"--auth-tokens-file {path}, line {number}"))
    from_env = [part.strip() for part in environ.get(TOKENS_ENV, "").split(",")]
    if TOKENS_ENV in environ and not any(from_env):
        # Set but empty (an unset variable in a deploy script, say): not "no auth".
        raise ConfigError(f"${TOKENS_ENV} is set but holds no token")
    for number, token in enumerate(from_env, 1):
        if token:
            found.append((token, f"${TOKENS_ENV}, token {number}"))
    for token, origin in found:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"{origin}: a token must have at least {MIN_TOKEN_LENGTH} characters, "
                f"this one has {len(token)}"
            )
        if any(c.isspace() for c in token):
            raise ConfigError(f"{origin}: a token must not contain whitespace")
    if path and not found:
        raise ConfigError(f"--auth-tokens-file {path} holds no token")
    return frozenset(token for token, _ in found)


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """TLS credentials from PEM files (None without a certificate); with ``client_ca``,
    clients must present a certificate it signed.

    Raises
    ------
    ConfigError
        A file that cannot be read or holds no PEM block.
    """
    if not cert:
        return None
    chain, private_key = _pem(cert, "--tls-cert"), _pem(key, "--tls-key")
    roots = _pem(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def _pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag}: {path} holds no PEM block")
    return data


Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]


class BearerTokens(grpc.aio.ServerInterceptor):
    """Ends every call without an accepted bearer token ``UNAUTHENTICATED``, except
    :data:`OPEN_METHODS`; ``on_refused`` is called once per refused call."""

    def __init__(self, tokens: frozenset[str], on_refused: Callable[[], None]) -> None:
        if not tokens:
            raise ValueError("no tokens: leave the interceptor out instead")
        self._tokens = [token.encode() for token in sorted(tokens)]
        self._on_refused = on_refused

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_METHODS):
            return handler
        if self._accepted(handler_call_details.invocation_metadata or ()):
            return handler
        self._on_refused()
        return _refusing(handler)

    def _accepted(self, metadata: Any) -> bool:
        return any(
            key == "authorization"
            and isinstance(value, str)
            and bearer_accepted(value, self._tokens)
            for key, value in metadata
        )


def bearer_accepted(authorization: str, tokens: Sequence[bytes]) -> bool:
    """Whether an ``authorization`` value, ``Bearer <token>``, carries one of ``tokens``."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode()
    # Every token is compared, so the time taken does not tell which one came close.
    matches = [hmac.compare_digest(given, known) for known in tokens]
    return any(matches)


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSED)


def _refusing(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind and serializers as ``handler`` that refuses the call."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        _refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
