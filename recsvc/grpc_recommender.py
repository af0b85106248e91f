"""An asyncio client of the gRPC server: one channel, ``Recommend`` and the health check."""

from __future__ import annotations

from typing import Protocol, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


class _RecommenderStub(Protocol):
    Recommend: grpc.aio.UnaryUnaryMultiCallable[pb.RecommendRequest, pb.RecommendResponse]


class _HealthStub(Protocol):
    Check: grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]


class GrpcRecommender:
    """Calls the server at ``target`` (plaintext) with a deadline of ``timeout_s`` per call.

    Make it inside the running event loop; :meth:`close` the channel when done.
    """

    def __init__(self, target: str, timeout_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = cast(_RecommenderStub, pb_grpc.RecommenderStub(self._channel))
        self._health = cast(_HealthStub, health_pb2_grpc.HealthStub(self._channel))
        self._timeout_s = timeout_s

    async def recommend(
        self, request: pb.RecommendRequest, authorization: str | None
    ) -> pb.RecommendResponse:
        """The server's answer; a failed call raises its ``grpc.aio.AioRpcError``."""
        metadata = (("authorization", authorization),) if authorization else None
        return await self._stub.Recommend(request, timeout=self._timeout_s, metadata=metadata)

    async def serving(self) -> bool:
        """Whether the server's health service says SERVING."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close()
