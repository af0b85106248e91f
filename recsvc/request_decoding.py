"""Request parsing that never raises: bytes that are not the method's request message get
INVALID_ARGUMENT with a short reason, where grpc would answer UNKNOWN with the parser's text
and log a traceback at ERROR for every such call."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc

from recsvc.v1 import recommender_pb2 as pb


@dataclasses.dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """What :func:`decode_request` gives for bytes that are not a ``RecommendRequest``."""

    size: int
    error: str

    @classmethod
    def of(cls, data: bytes, exc: Exception) -> UndecodableRequest:
        return cls(len(data), str(exc).rpartition(": ")[2][:80])


#: What ``Recommend`` is called with: a decoded request, or why it could not be decoded.
RequestOrError = pb.RecommendRequest | UndecodableRequest


def decode_request(data: bytes) -> RequestOrError:
    """``RecommendRequest.FromString`` that never raises (invalid UTF-8 in a string field is
    a decode error too): grpc would answer UNKNOWN with the exception's text and log its
    traceback, where ``Recommend`` answers INVALID_ARGUMENT."""
    try:
        return pb.RecommendRequest.FromString(data)
    except Exception as exc:  # whatever the parser says, the caller's bytes are at fault
        return UndecodableRequest.of(data, exc)


def tolerant(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a request parser that never raises: bytes that are not its request
    get INVALID_ARGUMENT, as ``Recommend``'s do, where grpc would answer UNKNOWN with the
    parser's text and log a traceback at ERROR (for the health and reflection services;
    health is open to callers without a token). Those services have no stream-unary method,
    nor does this take one."""
    parse = handler.request_deserializer
    inner: Any = handler  # its behaviours are grpc.aio ones, which the type stubs do not know

    def decode(data: bytes) -> Any:
        try:
            return parse(data) if parse is not None else data
        except Exception as exc:  # as in decode_request
            return UndecodableRequest.of(data, exc)

    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, UndecodableRequest):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid message ({request.size} bytes): {request.error}",
            )
        return request

    async def each_checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield await checked(request, context)

    async def replies(running: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Run a streaming behaviour: one that writes its replies, or an async generator."""
        if not inspect.isasyncgen(running):
            await running
            return
        async for reply in running:
            await context.write(reply)

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await inner.unary_unary(await checked(request, context), context)

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await replies(inner.unary_stream(await checked(request, context), context), context)

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await replies(inner.stream_stream(each_checked(requests, context), context), context)

    shapes: dict[tuple[bool, bool], tuple[Any, Any]] = {
        (False, False): (grpc.unary_unary_rpc_method_handler, unary_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, unary_stream),
        (True, True): (grpc.stream_stream_rpc_method_handler, stream_stream),
    }
    make, behaviour = shapes[handler.request_streaming, handler.response_streaming]
    return make(behaviour, decode, handler.response_serializer)  # type: ignore[no-any-return]


class TolerantRegistration:
    """Stands for the server in a generated ``add_*Servicer_to_server``: registers the
    service's handlers :func:`tolerant`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Left out: the same handlers come, by name, to the method below."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        handlers = {name: tolerant(handler) for name, handler in handlers.items()}
        generic = grpc.method_handlers_generic_handler(service, handlers)
        self.server.add_generic_rpc_handlers((generic,))
        self.server.add_registered_method_handlers(service, handlers)
